"""A scratch model repository holding each published model and its benchmark variants.

For every task the latest published version is served three ways, side by side in one Triton:

- ``<task>``: exactly as published (dynamic batching on);
- ``<task>_nobatch``: the same weights, ``dynamic_batching`` removed, so every request executes alone;
- ``<task>_int8``: ONNX Runtime dynamic int8 quantization of the MatMul/Gemm weights (text tasks: the
  version's own ``model.int8.onnx``, quantized here for versions published without one; a convolutional
  image model needs static quantization with calibration data, not done here).

Weight files are hard-linked where the file system allows, so the scratch repository costs no space.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from export.evaluate import quantize_int8
from export.publish import latest_version_dir
from export.triton_config import read_model_config, render_model_config
from taskspec import CONFIG_FILE, INT8_MODEL_FILE, LABELS_FILE, MODEL_FILE, TaskSpec

NOBATCH_SUFFIX = "_nobatch"
INT8_SUFFIX = "_int8"


@dataclass
class VariantRepository:
    """What was built: model names per task and kind, plus notes for the report."""

    root: Path
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    """task -> {"published": name, "nobatch": name, "int8": name}"""
    versions: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def model_names(self) -> list[str]:
        return [name for kinds in self.models.values() for name in kinds.values()]


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (a scratch repository costs no space), or copy across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _copy_version(version_dir: Path, target: Path) -> None:
    for path in version_dir.iterdir():
        if path.is_file():
            link_or_copy(path, target / path.name)


def _write_variant_config(source_model_dir: Path, target_model_dir: Path, name: str, *, batching: bool) -> None:
    config = read_model_config(source_model_dir)
    config.name = name
    if not batching:
        config.ClearField("dynamic_batching")
    target_model_dir.mkdir(parents=True, exist_ok=True)
    header = f"# Benchmark variant {name!r} of {source_model_dir.name!r}, written by bench/variants.py.\n"
    (target_model_dir / CONFIG_FILE).write_text(header + render_model_config(config))
    link_or_copy(source_model_dir / LABELS_FILE, target_model_dir / LABELS_FILE)


def build_variant_repository(
    source: Path, target: Path, specs: list[TaskSpec], *, int8: bool = True
) -> VariantRepository:
    """Fill ``target`` with the published model of each task in ``specs`` and its variants."""
    repo = VariantRepository(root=target)
    for spec in specs:
        version_dir = latest_version_dir(source, spec.name)
        if version_dir is None:
            repo.notes.append(f"{spec.name}: no published version in {source}; skipped")
            continue
        version = version_dir.name
        repo.versions[spec.name] = int(version)
        source_model_dir = source / spec.name
        kinds: dict[str, str] = {}

        published = target / spec.name
        _write_variant_config(source_model_dir, published, spec.name, batching=True)
        _copy_version(version_dir, published / version)
        kinds["published"] = spec.name

        nobatch = spec.name + NOBATCH_SUFFIX
        _write_variant_config(source_model_dir, target / nobatch, nobatch, batching=False)
        _copy_version(version_dir, target / nobatch / version)
        kinds["nobatch"] = nobatch

        if int8 and spec.modality == "text":
            name = spec.name + INT8_SUFFIX
            _write_variant_config(source_model_dir, target / name, name, batching=True)
            for path in version_dir.iterdir():
                if path.is_file() and path.name not in (MODEL_FILE, INT8_MODEL_FILE):
                    link_or_copy(path, target / name / version / path.name)
            shipped = version_dir / INT8_MODEL_FILE  # every text version published now carries it
            if shipped.is_file():
                link_or_copy(shipped, target / name / version / MODEL_FILE)
            else:
                quantize_int8(version_dir / MODEL_FILE, target / name / version / MODEL_FILE)
            kinds["int8"] = name
        repo.models[spec.name] = kinds
    return repo
