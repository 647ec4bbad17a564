"""Null models: the served text models with their compute taken out, to measure the facade's own ceiling.

A null model has exactly the tensors of a task's token model (``input_ids`` and ``attention_mask`` in,
``logits`` out, the batch dimension first) and almost no arithmetic: the logits of each row are its number
of real tokens times a fixed vector,

    logits[b, j] = NULL_SLOPE * j * sum(attention_mask[b, :])

one reduction and one multiply, microseconds for a batch of 64. Served by the same Triton, config and
backend as the real model, it leaves the facade, the HTTP hops and Triton's own request handling as the
only costs, so ``python -m bench.capacity`` measures what one facade process can carry when the model is
free (on a GPU host it nearly is: bench/gpu measured 64 reviews in 5.4 ms).

:func:`build_null_repository` publishes one per text task in a scratch copy of a repository, as the next
version after the real one (hard-linked beside it): Triton serves the latest version, so the null model
answers under the task's own name, with the real version's tokenizer, preprocessing and labels, and the
facade needs no setting to use it. Never written into the repository it copies.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.variants import link_or_copy
from export.publish import latest_version_dir
from export.triton_config import cpu_config_path, parse_model_config, read_model_config
from taskspec import INT8_MODEL_FILE, MANIFEST_FILE, METRICS_FILE, MODEL_CARD_FILE, MODEL_FILE, TaskSpec
from taskspec.manifest import write_manifest

NULL_SLOPE = 1e-3
"""Logit of label ``j`` per real token, times ``j``: the last label wins any non-empty row."""
NULL_OPSET = 17
"""An opset every ONNX Runtime on the serving paths runs (the NGC 24.10 container's 1.19 included)."""
NULL_IR_VERSION = 8


def null_logits(attention_mask: np.ndarray, num_labels: int) -> np.ndarray:
    """What the null model answers for ``attention_mask`` (rows x tokens): the reference for tests."""
    tokens = attention_mask.sum(axis=1, keepdims=True).astype(np.float32)
    weights = (NULL_SLOPE * np.arange(num_labels, dtype=np.float32))[None, :]
    return np.asarray(tokens * weights, dtype=np.float32)


def null_text_model(spec: TaskSpec) -> onnx.ModelProto:
    """The null model of a text task: ``spec``'s inputs and output, logits from :func:`null_logits`."""
    if spec.modality != "text" or "attention_mask" not in spec.input_names:
        raise ValueError(f"task {spec.name!r} is not a token model with an attention_mask input")
    inputs = [
        helper.make_tensor_value_info(
            t.name,
            helper.np_dtype_to_tensor_dtype(np.dtype(t.numpy_dtype)),
            ["batch", *(f"{t.name}_{i}" for i, _ in enumerate(t.dims))],
        )
        for t in spec.inputs
    ]
    out = spec.output
    output = helper.make_tensor_value_info(
        out.name, helper.np_dtype_to_tensor_dtype(np.dtype(out.numpy_dtype)), ["batch", *out.dims]
    )
    weights = (NULL_SLOPE * np.arange(spec.num_labels, dtype=np.float32))[None, :]
    initializers = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "sequence_axis"),
        numpy_helper.from_array(weights, "label_weights"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["attention_mask", "sequence_axis"], ["tokens"], keepdims=1),
        helper.make_node("Cast", ["tokens"], ["tokens_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["tokens_f", "label_weights"], [out.name]),
    ]
    graph = helper.make_graph(nodes, f"{spec.name}_null", inputs, [output], initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", NULL_OPSET)],
        producer_name="mtc-bench-null",
        doc_string=f"Null model of {spec.name!r} (bench/null_models.py): no weights, logits from token counts.",
    )
    model.ir_version = NULL_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass
class NullRepository:
    """A scratch repository whose text tasks serve null models: where, which versions, what was skipped."""

    root: Path
    versions: dict[str, int] = field(default_factory=dict)
    """task -> the version holding its null model (the real one is the version before)."""
    real_versions: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def version_dir(self, task: str) -> Path:
        return self.root / task / str(self.versions[task])


def _served_model_files(model_dir: Path) -> set[str]:
    """The model file names the task's configs load (``config.pbtxt`` and, if any, ``configs/cpu.pbtxt``)."""
    names = {read_model_config(model_dir).default_model_filename or MODEL_FILE}
    cpu = cpu_config_path(model_dir)
    if cpu.is_file():
        names.add(parse_model_config(cpu.read_text()).default_model_filename or INT8_MODEL_FILE)
    return names


def build_null_repository(source: Path, target: Path, specs: list[TaskSpec]) -> NullRepository:
    """Copy each text task of ``specs`` from ``source`` into ``target`` (model-level files and its latest
    version, hard-linked where possible) and publish a null model as the next version.

    The null version holds the real version's files except the model files, which are the null model under
    every name the task's configs load, and a fresh ``manifest.json``. ``target`` is emptied first.
    """
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    repo = NullRepository(root=target)
    for spec in specs:
        if spec.modality != "text":
            repo.notes.append(f"{spec.name}: not a text task; no null model")
            continue
        real = latest_version_dir(source, spec.name)
        if real is None:
            repo.notes.append(f"{spec.name}: no published version in {source}; skipped")
            continue
        model_dir = target / spec.name
        for path in (source / spec.name).rglob("*"):
            relative = path.relative_to(source / spec.name)
            if path.is_file() and not relative.parts[0].isdigit():
                link_or_copy(path, model_dir / relative)
        for path in real.iterdir():
            if path.is_file():
                link_or_copy(path, model_dir / real.name / path.name)
        version = int(real.name) + 1
        null_dir = model_dir / str(version)
        null_dir.mkdir()
        model_files = _served_model_files(model_dir) | {MODEL_FILE}
        # The real version's inputs travel (tokenizer.json, preprocessing.json); what describes its weights
        # (metrics.json with their validation, the model card) does not.
        for path in real.iterdir():
            if path.is_file() and path.name not in model_files | {MANIFEST_FILE, METRICS_FILE, MODEL_CARD_FILE}:
                link_or_copy(path, null_dir / path.name)
        (null_dir / MODEL_CARD_FILE).write_text(
            f"# Null model of {spec.name} (benchmark only)\n\nWritten by bench/null_models.py next to version "
            f"{real.name}: no weights, logits from token counts. Never publish it.\n"
        )
        serialized = null_text_model(spec).SerializeToString()
        for name in sorted(model_files):
            (null_dir / name).write_bytes(serialized)
        write_manifest(null_dir)
        repo.versions[spec.name] = version
        repo.real_versions[spec.name] = int(real.name)
    return repo
