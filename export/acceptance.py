"""Acceptance of every file a version serves: measured on held-out data before anything is published.

Each served file (``model.onnx`` for ``config.pbtxt``, ``model.int8.onnx`` for ``configs/cpu.pbtxt``,
a file derived later such as a TensorRT plan for its own config) runs on the same held-out batches,
made by :mod:`preprocess` exactly as the facade makes them (text padded to its length bucket). Per
file this measures:

- top-1 agreement with a reference and the largest |logit difference|. The first file checked
  (``model.onnx``) is compared with the trained PyTorch module on a seeded stratified sample of the
  held-out split (at most :data:`AGREEMENT_SAMPLE` rows; PyTorch sees the very same rows of the very
  same batches): it is the same function in another runtime, so its logits must stay within
  ``export_atol``. Every other file (the int8 file, a TensorRT plan) is compared with that
  ``model.onnx`` on *every* held-out row: what its users would see change. For a file derived from a
  published version, the first file is that version's ``model.onnx`` (accepted within ``export_atol``
  of PyTorch when it was published) and the reference runner is that same file;
- accuracy and the other classification metrics on the whole held-out split, and the accuracy lost
  against the first file checked (``model.onnx``).

Each file is held to its floor (:class:`taskspec.QualityFloor`: ``TaskSpec.model_floor`` for
``model.onnx``, ``CpuServing.floor`` for the int8 file). :func:`raise_below_floor` raises
:class:`export.errors.QualityFloorError` naming every file below its floor, and the caller publishes
nothing. The reports go into ``metrics.json`` (``validation``) and the model card.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from export.data import Split, TextSplit
from export.errors import ExportValidationError, QualityFloorError
from export.evaluate import image_inputs, session, text_inputs
from export.metrics import classification_metrics, confidence_distribution
from export.onnx_export import MIN_OPSET, check_signature, onnx_opset
from export.served import ServedFile
from export.train import stratified_sample
from taskspec import TaskSpec
from taskspec.manifest import file_entry

AGREEMENT_SAMPLE = 200
"""Most held-out rows PyTorch runs on to check ``model.onnx`` (seeded, stratified). An export fault moves every
logit (a faithful export stays within 1e-5 of PyTorch: 2.6e-06 for the quick sentiment model), so 200 rows show
one; the files whose labels may legitimately move (int8) are compared with ``model.onnx`` on every held-out row
instead. PyTorch on 600 reviews of 256 tokens was 52 s of a 2-core CPU build (2026-12-01), on 200 about a third."""
PYTORCH_REFERENCE = "pytorch"

Runner = Callable[[Mapping[str, np.ndarray]], np.ndarray]
"""Model inputs (by tensor name, one batch) -> logits (rows, labels)."""


@dataclass(frozen=True)
class FileReport:
    """How one file did on the held-out data, and whether it reached its floor."""

    served: ServedFile
    sha256: str
    size: int
    reference: str
    sample_rows: int
    agreement: float
    max_abs_diff: float
    test: dict[str, Any]
    accuracy_drop: float
    """Accuracy of the first file checked (``model.onnx``) minus this file's, on the whole held-out split."""
    agreement_with_first: float
    """Top-1 agreement with the first file checked on the whole held-out split."""
    confidence: dict[str, Any] = field(default_factory=dict)
    """Top-class probability on the whole held-out split (:func:`export.metrics.confidence_distribution`)."""
    problems: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def accuracy(self) -> float:
        return float(self.test["accuracy"])

    def to_dict(self) -> dict[str, Any]:
        """The entry of ``metrics.json``'s ``validation.files``."""
        return {
            "config": self.served.config,
            "sha256": self.sha256,
            "size_mb": round(self.size / 1e6, 2),
            "reference": self.reference,
            "sample_rows": self.sample_rows,
            "agreement": round(self.agreement, 4),
            "max_abs_diff": float(f"{self.max_abs_diff:.3g}"),
            "accuracy": self.accuracy,
            "accuracy_drop": round(self.accuracy_drop, 4),
            "agreement_with_model_onnx": round(self.agreement_with_first, 4),
            "floor": self.served.floor.to_document(),
            "passed": self.passed,
            "problems": list(self.problems),
            "test": self.test,
            "confidence": self.confidence,
        }


def onnx_runner(path: Path, spec: TaskSpec) -> Runner:
    """ONNX Runtime (CPU) on ``path``; its opset and tensor names are checked first."""
    opset = onnx_opset(path)
    if opset < MIN_OPSET:
        raise ExportValidationError(f"{path.name} uses opset {opset}; at least {MIN_OPSET} is required")
    onnx_session = session(path)
    check_signature(onnx_session, spec)

    def run(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        (logits,) = onnx_session.run([spec.output.name], dict(feeds))
        return np.asarray(logits)

    return run


def torch_runner(module: torch.nn.Module) -> Runner:
    """The PyTorch module (``module(**inputs) -> logits``) in eval mode on its own device, float32 out."""
    module = module.eval()
    device = next(module.parameters()).device

    def run(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in feeds.items()}
            return np.asarray(module(**inputs).float().cpu().numpy())

    return run


def plan_runner(path: Path, spec: TaskSpec) -> Runner:
    """A TensorRT plan through the ``tensorrt`` Python package on the first CUDA GPU (GPU hosts only).

    The plan must come from the same TensorRT version as the package. Without the package or a GPU
    this raises :class:`ExportValidationError`: a plan that cannot be checked is not published.
    """
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ExportValidationError(
            f"checking {path.name} needs the tensorrt Python package of the plan's TensorRT version and a GPU"
        ) from exc
    if not torch.cuda.is_available():
        raise ExportValidationError(f"checking {path.name} needs a CUDA GPU (PyTorch sees none)")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ExportValidationError(f"{path.name} does not load in TensorRT {trt.__version__}")
    context = engine.create_execution_context()

    def run(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        keep = []
        for name, array in feeds.items():
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype)).cuda()
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
        out_dtype = torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(spec.output.name)))).dtype
        out = torch.empty(tuple(context.get_tensor_shape(spec.output.name)), dtype=out_dtype, device="cuda")
        context.set_tensor_address(spec.output.name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportValidationError(f"TensorRT failed to run {path.name}")
        stream.synchronize()
        return np.asarray(out.float().cpu().numpy())

    return run


def runner_for(path: Path, spec: TaskSpec) -> Runner:
    """The runner of a served file, by its kind (``.onnx``: ONNX Runtime, ``.plan``: TensorRT)."""
    if path.suffix == ".onnx":
        return onnx_runner(path, spec)
    if path.suffix == ".plan":
        return plan_runner(path, spec)
    raise ExportValidationError(f"no way to check {path.name}: served files are .onnx or .plan")


def held_out_batches(
    spec: TaskSpec, split: Split, *, tokenizer_file: Path | None, batch_size: int = 32
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(row indices, inputs) of the held-out split, preprocessed as served (text: bucketed like the facade)."""
    if isinstance(split, TextSplit):
        if tokenizer_file is None:
            raise ExportValidationError(f"{spec.name} is a text task: the held-out check needs its tokenizer.json")
        for batch in text_inputs(tokenizer_file, spec, split.texts, batch_size=batch_size):
            yield np.asarray(batch.indices, dtype=np.int64), batch.inputs(spec.input_names)
        return
    name = spec.inputs[0].name
    size = min(batch_size, 16)
    for start, pixels in zip(range(0, len(split), size), image_inputs(spec, split.paths, batch_size=size), strict=True):
        yield np.arange(start, start + len(pixels)), {name: pixels}


def _shape_checked(name: str, logits: np.ndarray, rows: int, spec: TaskSpec) -> np.ndarray:
    expected = (rows, *spec.output.dims)
    if logits.shape != expected:
        raise ExportValidationError(f"{spec.name}: {name} output shape {logits.shape} != expected {expected}")
    return logits


def check_files(
    spec: TaskSpec,
    files: Sequence[tuple[ServedFile, Path]],
    reference: Runner,
    held_out: Split,
    *,
    tokenizer_file: Path | None,
    reference_name: str = PYTORCH_REFERENCE,
    first_name: str | None = None,
    sample_size: int = AGREEMENT_SAMPLE,
    seed: int = 0,
    progress: bool = False,
) -> list[FileReport]:
    """Measure every file of ``files`` (``model.onnx`` first) on ``held_out``; one report per file.

    The first file is compared with ``reference`` (named ``reference_name``) on the sample, every other file with
    the first on every row; ``first_name`` is what their reports call it (default: its file name).
    Does not raise on a floor (see :func:`raise_below_floor`); raises :class:`ExportValidationError`
    on a file that cannot run (wrong names, opset, output shape) or an empty held-out split.
    """
    rows = len(held_out)
    if rows == 0 or not files:
        raise ExportValidationError(f"{spec.name}: the held-out check needs held-out rows and files to check")
    runners = [runner_for(path, spec) for _, path in files]
    in_sample = np.zeros(rows, dtype=bool)
    in_sample[stratified_sample(held_out.labels, sample_size, seed)] = True
    logits = [np.full((rows, spec.num_labels), np.nan, dtype=np.float32) for _ in files]
    expected = np.full((rows, spec.num_labels), np.nan, dtype=np.float32)
    batches = held_out_batches(spec, held_out, tokenizer_file=tokenizer_file)
    for indices, feeds in tqdm(batches, desc=f"check {spec.name}", unit="batch", disable=not progress):
        for (served, _), run, out in zip(files, runners, logits, strict=True):
            out[indices] = _shape_checked(served.name, np.asarray(run(feeds)), len(indices), spec)
        picked = in_sample[indices]
        if picked.any():
            sub = {name: value[picked] for name, value in feeds.items()}
            expected[indices[picked]] = _shape_checked(reference_name, reference(sub), int(picked.sum()), spec)
    first = logits[0].argmax(axis=1)
    first_accuracy = float(np.mean(first == held_out.labels))
    every_row = np.ones(rows, dtype=bool)
    first_name = first_name or files[0][0].name
    reports = []
    for position, ((served, path), out) in enumerate(zip(files, logits, strict=True)):
        # model.onnx against the reference on the sample; every other file against model.onnx on every row.
        compared, against, against_name = (
            (in_sample, expected, reference_name) if position == 0 else (every_row, logits[0], first_name)
        )
        predicted = out.argmax(axis=1)
        diff = float(np.max(np.abs(out[compared].astype(np.float64) - against[compared].astype(np.float64))))
        agreement = float(np.mean(predicted[compared] == against[compared].argmax(axis=1)))
        test = classification_metrics(held_out.labels, predicted, spec.labels)
        drop = first_accuracy - float(np.mean(predicted == held_out.labels))
        entry = file_entry(path)
        report = FileReport(
            served=served,
            sha256=entry.sha256,
            size=entry.size,
            reference=against_name,
            sample_rows=int(compared.sum()),
            agreement=agreement,
            max_abs_diff=diff,
            test=test,
            accuracy_drop=drop,
            agreement_with_first=float(np.mean(predicted == first)),
            confidence=confidence_distribution(out),
        )
        reports.append(judge(report))
    return reports


def judge(report: FileReport) -> FileReport:
    """``report`` with the problems that put it below its floor (none: it passed)."""
    floor, problems = report.served.floor, []
    if not np.isfinite(report.max_abs_diff):
        problems.append("non-finite logits")
    if report.agreement < floor.min_agreement:
        problems.append(
            f"top-1 agreement with {report.reference} {report.agreement:.2%} on {report.sample_rows} held-out rows "
            f"< floor {floor.min_agreement:.2%}"
        )
    if floor.max_abs_diff is not None and not report.max_abs_diff <= floor.max_abs_diff:
        problems.append(f"max |logit difference| {report.max_abs_diff:.3g} > floor {floor.max_abs_diff:g}")
    # A hair of slack: accuracies are ratios of counts, the floor a decimal.
    if floor.max_accuracy_drop is not None and report.accuracy_drop > floor.max_accuracy_drop + 1e-9:
        problems.append(
            f"held-out accuracy {report.accuracy:.2%} is {report.accuracy_drop * 100:.2f} points below model.onnx "
            f"(floor: {floor.max_accuracy_drop * 100:.1f})"
        )
    return replace(report, problems=tuple(problems))


def raise_below_floor(spec: TaskSpec, reports: Sequence[FileReport]) -> None:
    """Raise :class:`QualityFloorError` naming every file below its floor (and why the floor is what it is)."""
    failed = [r for r in reports if not r.passed]
    if failed:
        details = "; ".join(
            f"{r.served.name} ({r.served.config or 'shipped'}): {', '.join(r.problems)} "
            f"[floor: {r.served.floor.reason}]"
            for r in failed
        )
        raise QualityFloorError(f"{spec.name}: not published, below the quality floor: {details}")


def validation_document(reports: Sequence[FileReport], *, sample_size: int, seed: int) -> dict[str, Any]:
    """``metrics.json``'s ``validation`` part."""
    return {
        "held_out_rows": reports[0].test["n"] if reports else 0,
        "sample": {"max_rows": sample_size, "seed": seed, "stratified": True},
        "compared": "model.onnx with the reference on the sample; every other file with model.onnx on every row",
        "files": {report.served.name: report.to_dict() for report in reports},
    }
