"""Which files of a version are served, and whether each was accepted on held-out data (no torch here).

Every model file of a version (``*.onnx``, ``*.plan``) must carry a passing held-out validation record in
the version's ``metrics.json`` (``validation.files.<name>``, written by :mod:`export.acceptance`) whose
SHA-256 is the file's own. :func:`export.publish.publish` refuses to seal a version otherwise, and
``export validate`` reports a published version that lacks them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskspec import (
    CONFIG_FILE,
    CONFIGS_DIR,
    CPU_CONFIG_NAME,
    INT8_FLOOR,
    INT8_MODEL_FILE,
    METRICS_FILE,
    MODEL_FILE,
    QualityFloor,
    TaskSpec,
)
from taskspec.manifest import file_entry

MODEL_SUFFIXES = (".onnx", ".plan")
"""Files Triton runs: each one a version holds must have been accepted before the version was published."""


@dataclass(frozen=True)
class ServedFile:
    """A model file of a version, the config that serves it, and the floor it must reach."""

    name: str
    config: str | None
    """Path of the serving config in the model folder (``configs/cpu.pbtxt``); None: shipped, not served."""
    floor: QualityFloor


def served_files(spec: TaskSpec, *, int8: bool = False) -> tuple[ServedFile, ...]:
    """The model files a new version of ``spec`` holds, ``model.onnx`` first.

    Tasks with a CPU variant get its file (``configs/cpu.pbtxt`` serves it); ``int8`` ships the
    dynamic-int8 file for a task without one too (no config serves it; it is held to the int8 floor).
    """
    files = [ServedFile(MODEL_FILE, CONFIG_FILE, spec.model_floor)]
    if spec.cpu is not None:
        files.append(ServedFile(spec.cpu.model_file, f"{CONFIGS_DIR}/{CPU_CONFIG_NAME}.pbtxt", spec.cpu.floor))
    elif int8:
        files.append(ServedFile(INT8_MODEL_FILE, None, INT8_FLOOR))
    return tuple(files)


def validation_records(metrics: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """``validation.files`` of a ``metrics.json`` document (empty when there is none)."""
    validation = (metrics or {}).get("validation")
    files = validation.get("files") if isinstance(validation, Mapping) else None
    return files if isinstance(files, Mapping) else {}


def unaccepted_files(spec: TaskSpec, version_dir: Path, metrics: Mapping[str, Any] | None) -> list[str]:
    """Why the model files of ``version_dir`` are not all accepted by ``metrics`` (empty when they are).

    Checked: every ``*.onnx`` / ``*.plan`` file has a record that passed, with its own SHA-256; and the
    files the spec's configs serve (``model.onnx``, the CPU variant's) are there.
    """
    records = validation_records(metrics)
    problems = []
    expected = {served.name for served in served_files(spec)}
    present = {p.name for p in version_dir.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES}
    for name in sorted(expected - present):
        problems.append(f"{name} is missing (a config of {spec.name} serves it)")
    for name in sorted(present):
        record = records.get(name)
        if not isinstance(record, Mapping):
            problems.append(f"{name} has no held-out validation record in {METRICS_FILE}")
        elif record.get("passed") is not True:
            problems.append(f"{name} did not pass its held-out validation: {record.get('problems')}")
        elif record.get("sha256") != file_entry(version_dir / name).sha256:
            problems.append(f"{name} is not the file that was validated (sha256 differs from {METRICS_FILE})")
    return problems


def read_metrics(version_dir: Path) -> dict[str, Any] | None:
    """The ``metrics.json`` of a version folder (None when it has none or it is not a JSON object)."""
    path = version_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
