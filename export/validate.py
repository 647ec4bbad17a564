"""``export validate``: check a published model repository against the task specs.

For each task's latest version: config.pbtxt parses strictly and matches the spec, labels.txt
matches, preprocessing.json equals the spec's document, text tasks carry an untruncated,
unpadded tokenizer.json, and model.onnx has the spec's tensor names, opset >= 17 and runs on a
padded batch with the expected output shape. Text tasks' raw-text models are checked too, and so is
their CPU variant (``configs/cpu.pbtxt`` as generated, and its ``model.int8.onnx``). Every model file
of the version must carry a passing held-out validation record with its own SHA-256 in
``metrics.json`` (:func:`export.served.unaccepted_files`): a version published before files were
validated, or a file swapped after, is reported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.onnx_export import MIN_OPSET, onnx_opset
from export.publish import latest_version_dir
from export.raw_text import RAW_TEXT_VERSION, build_raw_text_config, shipped_code
from export.served import read_metrics, unaccepted_files
from export.triton_config import (
    build_model_config,
    check_model_config,
    cpu_config_path,
    parse_model_config,
    read_model_config,
)
from taskspec import MODEL_FILE, PREPROCESSING_FILE, TOKENIZER_FILE, CpuServing, TaskSpec, get_task


def _check_onnx(spec: TaskSpec, path: Path) -> list[str]:
    import onnxruntime as ort

    problems: list[str] = []
    opset = onnx_opset(path)
    if opset < MIN_OPSET:
        problems.append(f"{path.name} uses opset {opset} (< {MIN_OPSET})")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = sorted(i.name for i in session.get_inputs())
    if names != sorted(spec.input_names):
        return [*problems, f"{path.name} inputs {names} != spec {sorted(spec.input_names)}"]
    feeds: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        dims = [3 if d == -1 else d for d in tensor.dims]
        if tensor.name == "attention_mask":
            feeds[tensor.name] = np.ones((2, *dims), dtype=tensor.numpy_dtype)
        else:
            feeds[tensor.name] = np.zeros((2, *dims), dtype=tensor.numpy_dtype)
    (out,) = session.run([spec.output.name], feeds)
    if out.shape != (2, *spec.output.dims):
        problems.append(f"{path.name} output shape {out.shape} != {(2, *spec.output.dims)}")
    return problems


def validate_task(repository: Path, spec: TaskSpec) -> list[str]:
    """Problems with ``spec``'s published model (empty when it is fine)."""
    model_dir = repository / spec.model_name
    if not (model_dir / "config.pbtxt").is_file():
        return [f"{model_dir}/config.pbtxt is missing (build or pull the model)"]
    try:
        problems = check_model_config(spec, model_dir)
    except Exception as exc:  # a strict-parse error names the bad field
        return [f"config.pbtxt does not parse: {exc}"]
    version = latest_version_dir(repository, spec.model_name)
    if version is None:
        return [*problems, f"no version folder with model.onnx under {model_dir}"]
    prep_path = version / PREPROCESSING_FILE
    if not prep_path.is_file():
        problems.append(f"{prep_path} is missing")
    elif json.loads(prep_path.read_text()) != spec.preprocessing_document():
        problems.append(f"{prep_path} differs from the task spec (republish the model)")
    if spec.modality == "text":
        tokenizer = version / TOKENIZER_FILE
        if not tokenizer.is_file():
            problems.append(f"{tokenizer} is missing")
        else:
            saved = json.loads(tokenizer.read_text())
            if saved.get("truncation") is not None or saved.get("padding") is not None:
                problems.append(f"{tokenizer} has truncation/padding enabled (the facade pads itself)")
        problems += _check_raw_text(repository, spec)
    problems += _check_onnx(spec, version / MODEL_FILE)
    if spec.cpu is not None:
        problems += _check_cpu_variant(spec, spec.cpu, model_dir, version)
    problems += [f"{version}: {problem}" for problem in unaccepted_files(spec, version, read_metrics(version))]
    return problems


def _check_cpu_variant(spec: TaskSpec, variant: CpuServing, model_dir: Path, version: Path) -> list[str]:
    """``configs/cpu.pbtxt`` as the spec generates it, and the file it serves in the latest version."""
    path = cpu_config_path(model_dir)
    if not path.is_file():
        return [f"{path} is missing (republish the model)"]
    try:
        if parse_model_config(path.read_text()) != build_model_config(spec, cpu=True):
            return [f"{path} differs from the task spec (republish the model)"]
    except Exception as exc:  # a strict-parse error names the bad field
        return [f"{path} does not parse: {exc}"]
    served = version / variant.model_file
    if not served.is_file():
        return [f"{served} is missing: CPU hosts serve it (configs/cpu.pbtxt); republish the model"]
    return _check_onnx(spec, served)


def _check_raw_text(repository: Path, spec: TaskSpec) -> list[str]:
    folder = repository / spec.raw_text_model_name
    version = folder / str(RAW_TEXT_VERSION)
    problems = []
    for path in (folder / "config.pbtxt", version / "model.py", version / TOKENIZER_FILE, version / PREPROCESSING_FILE):
        if not path.is_file():
            problems.append(f"{path} is missing")
    if problems:
        return problems
    if read_model_config(folder) != build_raw_text_config(spec):
        problems.append(f"{folder}/config.pbtxt differs from export.raw_text")
    for relative, source in shipped_code().items():  # model.py and the preprocess/taskspec code it runs
        copy = version / relative
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            problems.append(f"{copy} differs from {source} (republish the model)")
    return problems


def validate_repository(repository: Path, tasks: Sequence[str]) -> dict[str, list[str]]:
    """task -> problems, for every task in ``tasks``."""
    return {task: validate_task(repository, get_task(task)) for task in tasks}
