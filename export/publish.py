"""Publish an exported model into the Triton model repository as a new version.

Layout (file names from taskspec)::

    <repository>/<task>/config.pbtxt          generated from the task spec (model level)
    <repository>/<task>/labels.txt
    <repository>/<task>/configs/cpu.pbtxt     tasks with a CPU variant (TaskSpec.cpu)
    <repository>/<task>/<n>/model.onnx
    <repository>/<task>/<n>/model.int8.onnx     tasks with a CPU variant: the file configs/cpu.pbtxt serves
    <repository>/<task>/<n>/preprocessing.json  spec.preprocessing_document()
    <repository>/<task>/<n>/tokenizer.json      text tasks; truncation and padding disabled
    <repository>/<task>/<n>/metrics.json        when given
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

from export.errors import PublishError
from export.raw_text import publish_raw_text
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
from taskspec.manifest import verify_version, version_files, write_manifest


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

    ``extra_files`` (name in the version folder -> source file) carries other files of the version. Tasks
    with a CPU serving variant need its file (``model.int8.onnx``): when it is not among ``extra_files``
    (e.g. a build that did not evaluate it), it is quantized here from ``onnx_path``.
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
        if metrics is not None:
            (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
        if card is not None:
            (staging / MODEL_CARD_FILE).write_text(card)
        for name, source in (extra_files or {}).items():
            if Path(name).name != name or name in {MODEL_FILE, PREPROCESSING_FILE, TOKENIZER_FILE, MANIFEST_FILE}:
                raise PublishError(f"extra file name {name!r} is not a plain, free file name")
            shutil.copyfile(source, staging / name)
        if spec.cpu is not None and not (staging / spec.cpu.model_file).is_file():
            from export.evaluate import quantize_int8

            quantize_int8(onnx_path, staging / spec.cpu.model_file)
        version_dir = _seal_and_rename(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_model_config(spec, model_dir)
    if spec.modality == "text":
        publish_raw_text(spec, repository, version_dir)
    return version_dir


def publish_derived(spec: TaskSpec, source: Path, extra_files: Mapping[str, Path]) -> Path:
    """A new version of ``spec``'s model: the files of the published version ``source`` plus ``extra_files``
    (name in the version folder -> source file), e.g. a TensorRT plan built from its ``model.onnx``.

    Published versions are immutable (their manifest, the facade's cache key, promises their content),
    so a file derived from one is published as the next version, never added to it. ``source`` must
    match its manifest when it has one.
    """
    if (source / MANIFEST_FILE).is_file() and (problems := verify_version(source)):
        raise PublishError(f"{source} does not match its manifest: {'; '.join(problems)}")
    model_dir = source.parent
    if model_dir.name != spec.model_name or not source.name.isdigit():
        raise PublishError(f"{source} is not a version folder of {spec.model_name}")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        for name, path in version_files(source):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staging / name)
        for name, path in extra_files.items():
            if Path(name).name != name or name == MANIFEST_FILE or (staging / name).exists():
                raise PublishError(f"extra file name {name!r} is not a plain, free file name")
            shutil.copyfile(path, staging / name)
        return _seal_and_rename(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
