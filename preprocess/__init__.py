"""The one implementation of how raw inputs become model tensors, and of how logits become probabilities.

Training and evaluation (``export``), the facade, the raw-text Triton models, the benchmarks and the
tests all call these functions, so a model is served exactly the transformation it was trained and
measured on (the parity test, ``tests/test_preprocess_parity.py``, holds every path to it):

- :mod:`preprocess.text`: the published ``tokenizer.json`` with truncation per the declared strategy,
  lowercasing when declared, the tokenizer's own pad id, and padding to the task's length buckets;
- :mod:`preprocess.image`: magic-byte sniffing, pixel cap and decompression-bomb refusal, EXIF
  orientation, RGB, bilinear resize, ``(x - mean) / std``, NCHW float32;
- :mod:`preprocess.probabilities`: a numerically stable softmax.

What to do is declared per task in :mod:`taskspec` (``TextPreprocessing``, ``ImagePreprocessing``) and
published with every model version in ``preprocessing.json``.

Dependencies: numpy, tokenizers (text) and Pillow (image); never torch. The raw-text Triton model
carries a copy of this package (and of ``taskspec``) in its version folder, because its Python stub
environment has neither installed (see :mod:`export.raw_text`); that copy must not need Pillow, so
nothing here imports :mod:`preprocess.image` but callers that ask for it.
"""

from preprocess.errors import InvalidArtifacts, InvalidImage, PreprocessingError

__all__ = ["InvalidArtifacts", "InvalidImage", "PreprocessingError"]
