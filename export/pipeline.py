"""The one path from a trained model to a published version: export, validate every served file, publish.

:func:`export_validate_publish` is what ``export build``, the tiny test models (``tests/support``)
and the benchmarks' model (``bench/facade.py``) call; :func:`publish_derived` is the same path for a
file made later from a published version (a TensorRT plan, ``python -m deploy.tensorrt publish-plan``).
Either way:

1. the ONNX file is exported with the spec's tensor names and dynamic axes, and the files the
   version's configs serve are made from it (``model.int8.onnx`` for ``configs/cpu.pbtxt``);
2. every one of them runs on the held-out data as served (:mod:`export.acceptance`): top-1 agreement
   and largest logit difference (``model.onnx`` against PyTorch on a held-out sample, every other file
   against ``model.onnx`` on every held-out row), and accuracy on the held-out split;
3. a file below its floor (:class:`taskspec.QualityFloor`, declared in the task spec) raises
   :class:`export.errors.QualityFloorError` and nothing of the version is written;
4. otherwise the figures go into ``metrics.json`` (``validation``) and the model card, and
   :func:`export.publish.publish` seals the version (it refuses model files without a passing record).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.acceptance import (
    AGREEMENT_SAMPLE,
    FileReport,
    check_files,
    onnx_runner,
    raise_below_floor,
    torch_runner,
    validation_document,
)
from export.data import Split, TextSplit
from export.errors import PublishError
from export.evaluate import image_inputs, quantize_int8
from export.latency import latency_document
from export.metrics import model_card
from export.onnx_export import DEFAULT_OPSET, export_onnx
from export.publish import publish, publish_files, save_tokenizer
from export.served import ServedFile, read_metrics, served_files, unaccepted_files, validation_records
from preprocess.text import TextEncoder
from taskspec import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    TaskSpec,
    TextPreprocessing,
)
from taskspec.manifest import verify_version, version_files


@dataclass(frozen=True)
class Published:
    """A model version written to the repository, and how each of its model files did on held-out data."""

    task: str
    version_dir: Path
    reports: tuple[FileReport, ...]
    metrics: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.version_dir.name)

    @property
    def validation(self) -> FileReport:
        """The report of ``model.onnx`` (the first file checked)."""
        return self.reports[0]

    def report(self, name: str) -> FileReport:
        """The report of the model file ``name``."""
        for report in self.reports:
            if report.served.name == name:
                return report
        raise KeyError(f"no report for {name}; checked: {', '.join(r.served.name for r in self.reports)}")


def text_batch(
    tokenizer_dir: Path, texts: list[str], length: int, *, preprocessing: TextPreprocessing | None = None
) -> dict[str, np.ndarray]:
    """``input_ids`` / ``attention_mask`` of ``texts`` cut and padded to ``length``: trace and test batches.

    Tokenized by :mod:`preprocess.text` with ``tokenizer_dir``'s ``tokenizer.json`` as ``preprocessing``
    declares (default: the text tasks' lowercase and head truncation), cut at ``length``.
    """
    text = (preprocessing or TextPreprocessing(buckets=(length,))).truncated_at(length)
    return TextEncoder.from_file(tokenizer_dir / TOKENIZER_FILE, text).batch(texts, "max_length").inputs()


def trace_sample(spec: TaskSpec, held_out: Split, tokenizer_dir: Path | None) -> dict[str, np.ndarray]:
    """The batch the exporter traces: two texts at the smallest bucket (one short, so the mask has zeros),
    or one image, from the held-out split (whose other batch shapes then exercise the dynamic axes)."""
    if isinstance(held_out, TextSplit):
        assert spec.text is not None and tokenizer_dir is not None
        first = held_out.texts[0]
        short = first.split()[0] if first.split() else "ok"
        return text_batch(tokenizer_dir, [first, short], spec.text.buckets[0], preprocessing=spec.text)
    return {spec.inputs[0].name: next(image_inputs(spec, held_out.paths[:1]))}


def _compat_metrics(spec: TaskSpec, reports: Sequence[FileReport], opset: int) -> dict[str, Any]:
    """The summary keys of ``model.onnx`` (each file's own are in ``validation.files``): ``export`` (vs PyTorch),
    ``test``, ``validation_confidence`` (its top-class probability on the held-out split: the facade's drift
    reference) and ``int8``."""
    model = reports[0]
    result: dict[str, Any] = {
        "export": {
            "opset": opset,
            "max_abs_diff": model.max_abs_diff,
            "argmax_agreement": model.agreement,
            "batch_size": model.sample_rows,
            "atol": spec.export_atol,
        },
        "test": model.test,
        "validation_confidence": model.confidence,
    }
    for report in reports[1:]:
        if report.served.name.endswith(".int8.onnx"):
            result["int8"] = {
                "file": report.served.name,
                "size_mb": round(report.size / 1e6, 2),
                "fp32_size_mb": round(model.size / 1e6, 2),
                "test": report.test,
            }
    return result


def export_validate_publish(
    module: torch.nn.Module,
    spec: TaskSpec,
    *,
    held_out: Split,
    repository: Path,
    tokenizer_dir: Path | None = None,
    metrics: Mapping[str, Any] | None = None,
    int8: bool = False,
    sample_size: int = AGREEMENT_SAMPLE,
    seed: int = 0,
    progress: bool = False,
    opset: int = DEFAULT_OPSET,
) -> Published:
    """Export ``module``, validate every file the new version serves on ``held_out``, publish it.

    ``module`` is called as ``module(**inputs) -> logits`` with the spec's tensor names. ``held_out``
    is the held-out split (texts or image paths, and labels): ``model.onnx``'s agreement with ``module``
    is measured on a seeded stratified sample of at most ``sample_size`` rows of it, the other files'
    agreement with ``model.onnx`` and every file's accuracy on all of it.
    Text tasks need ``tokenizer_dir`` (its ``tokenizer.json`` is what the version publishes and what
    the check tokenizes with). ``int8`` also ships a dynamic-int8 file for a task without a CPU
    variant. ``metrics`` (training figures) go into ``metrics.json`` with the validation figures.

    Raises :class:`export.errors.QualityFloorError` (a file below its floor) or
    :class:`export.errors.ExportValidationError` (a file that does not run as the spec says), and
    writes nothing then.
    """
    if spec.modality == "text" and tokenizer_dir is None:
        raise PublishError(f"{spec.name} is a text task: pass tokenizer_dir (the facade needs tokenizer.json)")
    module = module.eval().cpu()
    with tempfile.TemporaryDirectory(prefix=f"mtc-export-{spec.name}-") as scratch_name:
        scratch = Path(scratch_name)
        tokenizer_file = None
        if spec.modality == "text":
            assert tokenizer_dir is not None
            tokenizer_file = save_tokenizer(tokenizer_dir, scratch / TOKENIZER_FILE)
        sample = trace_sample(spec, held_out, scratch if tokenizer_file else None)
        onnx_path = scratch / MODEL_FILE
        export_onnx(
            module, spec, {k: torch.from_numpy(np.asarray(v)) for k, v in sample.items()}, onnx_path, opset=opset
        )
        files: list[tuple[ServedFile, Path]] = []
        for served in served_files(spec, int8=int8):
            files.append(
                (served, onnx_path if served.name == MODEL_FILE else quantize_int8(onnx_path, scratch / served.name))
            )
        reports = check_files(
            spec, files, torch_runner(module), held_out,
            tokenizer_file=tokenizer_file, sample_size=sample_size, seed=seed, progress=progress,
        )  # fmt: skip
        raise_below_floor(spec, reports)
        full = {**(metrics or {}), "task": spec.name, **_compat_metrics(spec, reports, opset)}
        full["validation"] = validation_document(reports, sample_size=sample_size, seed=seed)
        full["latency"] = latency_document(
            spec, [(served.name, path) for served, path in files], held_out, tokenizer_file=tokenizer_file
        )
        version_dir = publish(
            spec,
            onnx_path,
            repository,
            tokenizer_dir=scratch if tokenizer_file else None,
            metrics=full,
            card=model_card(spec.title, spec.labels, full),
            extra_files={served.name: path for served, path in files[1:]},
        )
    return Published(task=spec.name, version_dir=version_dir, reports=tuple(reports), metrics=full)


def publish_derived(
    spec: TaskSpec,
    source: Path,
    derived: Mapping[ServedFile, Path],
    *,
    held_out: Split,
    extra_files: Mapping[str, Path] | None = None,
    sample_size: int = AGREEMENT_SAMPLE,
    seed: int = 0,
    progress: bool = False,
) -> Published:
    """A new version of ``spec``'s model: the files of the published version ``source``, plus ``derived``
    model files (e.g. a TensorRT plan built from its ``model.onnx``) validated on ``held_out`` first,
    plus ``extra_files`` (non-model files, e.g. the plan's build info).

    Published versions are immutable (their manifest, the facade's cache key, promises their content),
    so a file derived from one is published as the next version, never added to it. ``source`` must
    match its manifest when it has one, and its own model files must carry passing validation records.
    The reference of a derived file is ``source``'s ``model.onnx`` (accepted within ``export_atol`` of
    PyTorch when ``source`` was published), on every row of ``held_out``, and so is its accuracy. Below its
    floor: :class:`export.errors.QualityFloorError`, nothing published.
    """
    if (source / MANIFEST_FILE).is_file() and (problems := verify_version(source)):
        raise PublishError(f"{source} does not match its manifest: {'; '.join(problems)}")
    model_dir = source.parent
    if model_dir.name != spec.model_name or not source.name.isdigit() or not (source / MODEL_FILE).is_file():
        raise PublishError(f"{source} is not a version folder of {spec.model_name} with a {MODEL_FILE}")
    metrics: dict[str, Any] = read_metrics(source) or {}
    if problems := unaccepted_files(spec, source, metrics):
        raise PublishError(f"{source} was not accepted on held-out data ({'; '.join(problems)}): rebuild it first")
    files = {name: path for name, path in version_files(source) if name not in {METRICS_FILE, MODEL_CARD_FILE}}
    clashes = [s.name for s in derived if s.name in files] + [n for n in (extra_files or {}) if n in files]
    if clashes:
        raise PublishError(f"{source} already holds {', '.join(sorted(clashes))}: derived files must be new")
    model = served_files(spec)[0]
    tokenizer_file = source / TOKENIZER_FILE if spec.modality == "text" else None
    source_model = f"{MODEL_FILE} of version {source.name}"
    reports = check_files(
        spec, [(model, source / MODEL_FILE), *derived.items()], onnx_runner(source / MODEL_FILE, spec), held_out,
        tokenizer_file=tokenizer_file, reference_name=source_model, first_name=source_model,
        sample_size=sample_size, seed=seed, progress=progress,
    )  # fmt: skip
    raise_below_floor(spec, reports[1:])
    records = dict(validation_records(metrics))
    records.update({report.served.name: report.to_dict() for report in reports[1:]})
    metrics["validation"] = {**metrics.get("validation", {}), "files": records}
    metrics["derived_from_version"] = int(source.name)
    card = model_card(spec.title, spec.labels, metrics) if "test" in metrics else None
    version_dir = publish_files(
        spec, model_dir, {**files, **{s.name: p for s, p in derived.items()}, **(extra_files or {})},
        metrics=metrics, card=card,
    )  # fmt: skip
    return Published(task=spec.name, version_dir=version_dir, reports=tuple(reports[1:]), metrics=metrics)
