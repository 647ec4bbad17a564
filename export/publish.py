"""Write a new version into the Triton model repository: the last step of the one publish path.

Call :func:`export.pipeline.export_validate_publish` (or :func:`export.pipeline.publish_derived`), not
this module: they measure every model file on held-out data first. :func:`publish` refuses to seal a
version whose model files (``*.onnx``, ``*.plan``) lack a passing validation record with their own
SHA-256 in ``metrics.json`` (:func:`export.served.unaccepted_files`), so nothing reaches the
repository unchecked.

Layout (file names from taskspec)::

    <repository>/<task>/config.pbtxt          generated from the task spec (model level)
    <repository>/<task>/labels.txt
    <repository>/<task>/configs/cpu.pbtxt     tasks with a CPU variant (TaskSpec.cpu)
    <repository>/<task>/<n>/model.onnx
    <repository>/<task>/<n>/model.int8.onnx     tasks with a CPU variant: the file configs/cpu.pbtxt serves
    <repository>/<task>/<n>/preprocessing.json  spec.preprocessing_document()
    <repository>/<task>/<n>/tokenizer.json      text tasks; truncation and padding disabled
    <repository>/<task>/<n>/metrics.json        training and held-out validation figures of every model file
    <repository>/<task>/<n>/model_card.md       when given
    <repository>/<task>/<n>/manifest.json       sha256 + size of every other file, and their digest
                                                (format: :mod:`taskspec.manifest`)

A version is assembled in a hidden temporary folder inside ``<task>/`` (same file system), sealed
with its manifest and renamed to ``<n+1>`` in one step, so Triton (poll mode), ``export push`` and
the facade never see a half-written version, and an existing version is never overwritten. A
published version is immutable: ``export push`` refuses to change one in the bucket, the facade
keys its artifact cache by the manifest's digest. Text tasks also refresh their raw-text model
``<task>_text`` (see :mod:`export.raw_text`), whose single version is rewritten in place and has
no manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from export.errors import PublishError, UnvalidatedFileError
from export.raw_text import publish_raw_text
from export.served import unaccepted_files
from export.triton_config import write_model_config
from taskspec import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_FILE,
    PREPROCESSING_FILE,
    TOKENIZER_FILE,
    TaskSpec,
)
from taskspec.manifest import path_problem, write_manifest

_WRITTEN_HERE = frozenset({MANIFEST_FILE, METRICS_FILE, MODEL_CARD_FILE})
"""Files every version gets from the publishing step itself, never from a caller's file list."""


def versions(model_dir: Path) -> list[int]:
    """Numeric version folders of a model, ascending (empty when there are none)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def latest_version_dir(repository: Path, task: str) -> Path | None:
    """The newest version folder of ``task`` that holds a model file, or None."""
    model_dir = repository / task
    for version in reversed(versions(model_dir)):
        if (model_dir / str(version) / MODEL_FILE).is_file():
            return model_dir / str(version)
    return None


def save_tokenizer(tokenizer_dir: Path, target: Path) -> Path:
    """Write ``tokenizer.json`` from a tokenizers / transformers tokenizer folder.

    Truncation and padding are switched off in the saved file: the facade and the raw-text model
    pad to the spec's length buckets and truncate to its maximum length themselves.
    """
    from tokenizers import Tokenizer

    source = tokenizer_dir / TOKENIZER_FILE
    if source.is_file():
        tokenizer = Tokenizer.from_file(str(source))
    else:
        # A slow-tokenizer folder (vocab.txt only): let transformers build the fast equivalent.
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True).backend_tokenizer
        except (OSError, ValueError) as exc:
            raise PublishError(f"no usable tokenizer in {tokenizer_dir}: {exc}") from exc
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.save(str(target))
    return target


def publish(
    spec: TaskSpec,
    onnx_path: Path,
    repository: Path,
    *,
    tokenizer_dir: Path | None = None,
    metrics: Mapping[str, Any] | None = None,
    card: str | None = None,
    extra_files: Mapping[str, Path] | None = None,
) -> Path:
    """Write ``onnx_path`` and its artifacts as a new version of ``spec``'s model; return the version folder.

    ``extra_files`` (name in the version folder -> source file) carries the other files of the version,
    e.g. ``model.int8.onnx`` (tasks with a CPU serving variant must have it). ``metrics`` must hold the
    passing held-out validation record of every model file (:mod:`export.acceptance`); otherwise
    :class:`UnvalidatedFileError` and nothing is written.
    """
    if not onnx_path.is_file():
        raise PublishError(f"{onnx_path} does not exist")
    if spec.modality == "text" and tokenizer_dir is None:
        raise PublishError(f"{spec.name} is a text task: pass tokenizer_dir (the facade needs tokenizer.json)")
    model_dir = repository / spec.model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        shutil.copyfile(onnx_path, staging / MODEL_FILE)
        preprocessing = spec.preprocessing_document()
        (staging / PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=2) + "\n")
        if tokenizer_dir is not None and spec.modality == "text":
            save_tokenizer(tokenizer_dir, staging / TOKENIZER_FILE)
        for name, source in (extra_files or {}).items():
            if Path(name).name != name or name in {MODEL_FILE, PREPROCESSING_FILE, TOKENIZER_FILE, *_WRITTEN_HERE}:
                raise PublishError(f"extra file name {name!r} is not a plain, free file name")
            shutil.copyfile(source, staging / name)
        version_dir = _seal_accepted(spec, staging, model_dir, metrics, card)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_model_config(spec, model_dir)
    if spec.modality == "text":
        publish_raw_text(spec, repository, version_dir)
    return version_dir


def publish_files(
    spec: TaskSpec,
    model_dir: Path,
    files: Mapping[str, Path],
    *,
    metrics: Mapping[str, Any],
    card: str | None,
) -> Path:
    """A new version of ``spec`` in ``model_dir`` made of ``files`` (name in the version -> source file),
    ``metrics.json`` and ``model_card.md``; the same acceptance rule as :func:`publish`."""
    if model_dir.name != spec.model_name:
        raise PublishError(f"{model_dir} is not the model folder of {spec.model_name}")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        for name, path in files.items():
            if path_problem(name) is not None or name in _WRITTEN_HERE:
                raise PublishError(f"file name {name!r} is not a plain, free file name")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staging / name)
        return _seal_accepted(spec, staging, model_dir, metrics, card)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _seal_accepted(
    spec: TaskSpec, staging: Path, model_dir: Path, metrics: Mapping[str, Any] | None, card: str | None
) -> Path:
    """Write metrics and card into ``staging``, refuse unaccepted model files, then seal and rename it."""
    if metrics is not None:
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
    if card is not None:
        (staging / MODEL_CARD_FILE).write_text(card)
    problems = unaccepted_files(spec, staging, metrics)
    if problems:
        raise UnvalidatedFileError(
            f"{spec.name}: not published: {'; '.join(problems)} "
            "(publish through export.pipeline.export_validate_publish, which validates every model file)"
        )
    return _seal_and_rename(staging, model_dir)


def _seal_and_rename(staging: Path, model_dir: Path) -> Path:
    """Write the manifest of every file in ``staging`` and make it the next version."""
    write_manifest(staging)  # last: it seals every file written before
    os.chmod(staging, 0o755)  # mkdtemp makes it 0700; Triton in a container may run as another user
    return _rename_to_next_version(staging, model_dir)


def _rename_to_next_version(staging: Path, model_dir: Path) -> Path:
    """Rename ``staging`` to the next free version number (retrying if another writer took it)."""
    for _ in range(100):
        target = model_dir / str(max(versions(model_dir), default=0) + 1)
        try:
            # os.rename onto an existing non-empty folder fails, so a version is never replaced;
            # the mkdir guards against an empty folder someone created by hand.
            target.mkdir()
        except FileExistsError:
            continue
        try:
            target.rmdir()
            os.rename(staging, target)
        except OSError:
            continue
        return target
    raise PublishError(f"could not find a free version number in {model_dir}")
