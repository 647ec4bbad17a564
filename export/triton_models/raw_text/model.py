"""Raw-text classifier for direct Triton clients (Python backend, BLS).

Input ``text`` (TYPE_STRING, one UTF-8 string per row); outputs ``label`` (TYPE_STRING) and
``probabilities`` (TYPE_FP32, one per label, in ``labels.txt`` order). Each batch is tokenized
here, padded to the smallest length bucket that holds its longest row, and sent to the
token-level ONNX model named by the ``model_name`` parameter through a BLS request; the logits
come back and are turned into probabilities with a softmax.

Tokenization and softmax are :mod:`preprocess` (the code the facade and the evaluation run), read
with the tokenizer and the preprocessing parameters from this model's own version folder
(``tokenizer.json``, ``preprocessing.json``), never from the sibling model's folder: with an
``s3://`` repository Triton downloads each model into its own temporary directory.

This file runs inside the Triton Python stub, whose environment has numpy and tokenizers but not
this project (the local stub's ``.venv-triton``; on the NGC container the deployment image adds
``tokenizers``): :mod:`export.raw_text` publishes copies of the ``preprocess`` and ``taskspec``
packages next to it, and ``export validate`` checks that they equal the sources.
Copied from export/triton_models/raw_text/model.py by export.raw_text - edit that file.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# The Python backend appends this version folder to sys.path; put it first so that the packages
# published with this version run, not an installed package of the same name.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from preprocess.errors import PreprocessingError
from preprocess.probabilities import softmax
from preprocess.text import TextEncoder, TokenBatch
from taskspec import PREPROCESSING_FILE

INPUT_NAME = "text"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"


class TritonPythonModel:
    """Tokenize, call the token-level model, return label and probabilities."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        prep_path = os.path.join(folder, PREPROCESSING_FILE)
        if not os.path.isfile(prep_path):
            raise pb_utils.TritonModelException(f"{prep_path} is missing: publish the text model first")
        with open(prep_path, encoding="utf-8") as handle:
            prep = json.load(handle)
        self.labels: list[str] = list(prep["labels"])
        self.input_names: list[str] = list(prep["inputs"])
        try:
            self.encoder = TextEncoder.from_version_dir(folder)
        except (OSError, PreprocessingError) as exc:
            raise pb_utils.TritonModelException(f"{folder}: {exc} (publish the text model first)") from exc
        params = config.get("parameters", {})
        self.target = str(params.get("model_name", {}).get("string_value", ""))
        if not self.target:
            raise pb_utils.TritonModelException("parameter model_name (the token-level model) is not set")
        self.target_version = int(params.get("model_version", {}).get("string_value", "-1") or -1)

    def _logits(self, batch: TokenBatch) -> np.ndarray:
        tensors = batch.inputs(self.input_names)
        request = pb_utils.InferenceRequest(
            model_name=self.target,
            model_version=self.target_version,
            requested_output_names=["logits"],
            inputs=[pb_utils.Tensor(name, tensor) for name, tensor in tensors.items()],
        )
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{self.target}: {response.error().message()}")
        logits: np.ndarray = pb_utils.get_output_tensor_by_name(response, "logits").as_numpy()
        return logits

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        rows: list[int] = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy().reshape(-1)
            for value in values:
                texts.append(value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value))
            rows.append(len(values))
        try:
            # One BLS call for everything Triton batched together: the token-level model sees
            # one padded batch instead of one request per row.
            probabilities = softmax(self._logits(self.encoder.batch(texts))).astype(np.float32)
        except Exception as exc:  # every request of the batch gets the same error
            error = pb_utils.TritonError(f"{self.target}: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        labels = np.array([self.labels[i].encode("utf-8") for i in probabilities.argmax(axis=1)], dtype=np.object_)
        responses = []
        start = 0
        for n in rows:
            stop = start + n
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(LABEL_OUTPUT, labels[start:stop].reshape(n, 1)),
                        pb_utils.Tensor(PROBABILITIES_OUTPUT, probabilities[start:stop]),
                    ]
                )
            )
            start = stop
        return responses
