"""One path from a trained PyTorch module to a published model version: export, validate, publish.

The training command and the tiny test models both go through :func:`export_validate_publish`, so
the tests exercise exactly what ``export build`` does.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.onnx_export import DEFAULT_OPSET, ValidationReport, export_onnx, validate_onnx
from export.publish import publish
from preprocess.text import TextEncoder
from taskspec import TOKENIZER_FILE, TaskSpec, TextPreprocessing


@dataclass(frozen=True)
class Published:
    """A model version written to the repository, and how its export was checked."""

    task: str
    version_dir: Path
    validation: ValidationReport

    @property
    def version(self) -> int:
        return int(self.version_dir.name)


def text_batch(
    tokenizer_dir: Path, texts: list[str], length: int, *, preprocessing: TextPreprocessing | None = None
) -> dict[str, np.ndarray]:
    """``input_ids`` / ``attention_mask`` of ``texts`` cut and padded to ``length``: trace and validation batches.

    Tokenized by :mod:`preprocess.text` with ``tokenizer_dir``'s ``tokenizer.json`` as ``preprocessing``
    declares (default: the text tasks' lowercase and head truncation), cut at ``length``.
    """
    text = (preprocessing or TextPreprocessing(buckets=(length,))).truncated_at(length)
    return TextEncoder.from_file(tokenizer_dir / TOKENIZER_FILE, text).batch(texts, "max_length").inputs()


def export_validate_publish(
    module: torch.nn.Module,
    spec: TaskSpec,
    *,
    sample: Mapping[str, np.ndarray],
    validation_batch: Mapping[str, np.ndarray],
    repository: Path,
    tokenizer_dir: Path | None = None,
    metrics: Mapping[str, Any] | None = None,
    card: str | None = None,
    onnx_path: Path | None = None,
    opset: int = DEFAULT_OPSET,
) -> Published:
    """Export ``module`` to ONNX, check it against PyTorch on ``validation_batch``, publish a new version.

    ``sample`` is traced; ``validation_batch`` should have another batch size (and, for text,
    another sequence length) so that the dynamic axes are exercised. Raises
    :class:`export.errors.ExportValidationError` and publishes nothing on a mismatch.
    """
    module = module.eval().cpu()
    with tempfile.TemporaryDirectory(prefix=f"mtc-export-{spec.name}-") as scratch:
        path = onnx_path or Path(scratch) / "model.onnx"
        export_onnx(module, spec, {k: torch.from_numpy(np.asarray(v)) for k, v in sample.items()}, path, opset=opset)
        report = validate_onnx(module, path, spec, validation_batch)
        full_metrics = {**(metrics or {}), "export": {"opset": opset, **report.to_dict()}}
        version_dir = publish(spec, path, repository, tokenizer_dir=tokenizer_dir, metrics=full_metrics, card=card)
    return Published(task=spec.name, version_dir=version_dir, validation=report)


def read_metrics(version_dir: Path) -> dict[str, Any]:
    """The ``metrics.json`` of a published version."""
    data: dict[str, Any] = json.loads((version_dir / "metrics.json").read_text())
    return data
