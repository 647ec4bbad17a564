"""ONNX export with named tensors and dynamic axes, and validation against the PyTorch reference.

The tensor names and the dynamic axes come from the task spec, so the exported graph, the
config.pbtxt and the facade agree by construction. :func:`validate_onnx` runs the ONNX model with
ONNX Runtime on the same batch as the PyTorch module and raises :class:`ExportValidationError` when
the logits differ by more than the spec's tolerance or the predicted labels disagree: a model that
fails it is never published.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.errors import ExportValidationError
from taskspec import TaskSpec

MIN_OPSET = 17
DEFAULT_OPSET = 17


def dynamic_axes(spec: TaskSpec) -> dict[str, dict[int, str]]:
    """Axis 0 of every tensor is the batch; text inputs also have a dynamic sequence axis."""
    axes: dict[str, dict[int, str]] = {}
    for tensor in spec.inputs:
        axes[tensor.name] = {0: "batch"}
        for i, dim in enumerate(tensor.dims, start=1):
            if dim == -1:
                axes[tensor.name][i] = "sequence"
    axes[spec.output.name] = {0: "batch"}
    return axes


def export_onnx(
    module: torch.nn.Module,
    spec: TaskSpec,
    sample: Mapping[str, torch.Tensor],
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``module`` (called as ``module(**inputs) -> logits``) to ``path``.

    ``sample`` must hold every input of the spec. For text models it should contain padding
    (an attention mask with zeros): the tracer would otherwise be free to drop the mask.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below the minimum {MIN_OPSET}")
    missing = [name for name in spec.input_names if name not in sample]
    if missing:
        raise ValueError(f"sample lacks inputs {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    args = tuple(sample[name] for name in spec.input_names)
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy tracer warns about Python control flow on shapes in transformers' mask code;
        # validate_onnx checks the result on other shapes, which is what matters.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(spec.input_names),
            output_names=[spec.output.name],
            dynamic_axes=dynamic_axes(spec),  # type: ignore[arg-type]
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return path


@dataclass(frozen=True)
class ValidationReport:
    """How closely the ONNX model reproduces the PyTorch reference on one batch."""

    batch_size: int
    max_abs_diff: float
    argmax_agreement: float
    atol: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _check_signature(session: ort.InferenceSession, spec: TaskSpec) -> None:
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if sorted(inputs) != sorted(spec.input_names):
        raise ExportValidationError(f"ONNX inputs {inputs} != task spec inputs {list(spec.input_names)}")
    if outputs != [spec.output.name]:
        raise ExportValidationError(f"ONNX outputs {outputs} != task spec output [{spec.output.name!r}]")


def onnx_opset(path: Path) -> int:
    """The default-domain opset of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return max(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def validate_onnx(
    module: torch.nn.Module,
    onnx_path: Path,
    spec: TaskSpec,
    batch: Mapping[str, np.ndarray],
    *,
    atol: float | None = None,
    min_agreement: float = 1.0,
) -> ValidationReport:
    """Compare ONNX Runtime and PyTorch logits on ``batch``; raise :class:`ExportValidationError` on mismatch.

    Checks: input/output names, opset >= 17, output shape, max abs difference <= ``atol`` (the
    spec's ``export_atol`` by default) and the share of rows with the same argmax >= ``min_agreement``.
    """
    atol = spec.export_atol if atol is None else atol
    opset = onnx_opset(onnx_path)
    if opset < MIN_OPSET:
        raise ExportValidationError(f"{onnx_path} uses opset {opset}; at least {MIN_OPSET} is required")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    _check_signature(session, spec)
    feeds = {name: np.ascontiguousarray(batch[name]).astype(spec_dtype) for name, spec_dtype in _dtypes(spec).items()}
    (onnx_logits,) = session.run([spec.output.name], feeds)
    module = module.eval()
    device = next(module.parameters()).device
    with torch.no_grad():
        torch_logits = module(**{k: torch.from_numpy(v).to(device) for k, v in feeds.items()}).float().cpu().numpy()
    rows = int(next(iter(feeds.values())).shape[0])
    expected_shape = (rows, *spec.output.dims)
    if onnx_logits.shape != expected_shape:
        raise ExportValidationError(f"ONNX output shape {onnx_logits.shape} != expected {expected_shape}")
    if torch_logits.shape != onnx_logits.shape:
        raise ExportValidationError(f"PyTorch output shape {torch_logits.shape} != ONNX {onnx_logits.shape}")
    diff = float(np.max(np.abs(onnx_logits.astype(np.float64) - torch_logits.astype(np.float64))))
    agreement = float(np.mean(onnx_logits.argmax(axis=1) == torch_logits.argmax(axis=1)))
    report = ValidationReport(batch_size=rows, max_abs_diff=diff, argmax_agreement=agreement, atol=atol)
    if not np.isfinite(diff) or diff > atol:
        raise ExportValidationError(
            f"{spec.name}: ONNX logits differ from PyTorch by {diff:.3g} (> atol {atol:g}) on a batch of {rows}"
        )
    if agreement < min_agreement:
        raise ExportValidationError(
            f"{spec.name}: ONNX and PyTorch predict the same label for only {agreement:.1%} of {rows} rows"
        )
    return report


def _dtypes(spec: TaskSpec) -> dict[str, np.dtype[np.generic]]:
    return {t.name: np.dtype(t.numpy_dtype) for t in spec.inputs}
