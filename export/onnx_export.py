"""ONNX export with named tensors and dynamic axes.

The tensor names and the dynamic axes come from the task spec, so the exported graph, the
config.pbtxt and the facade agree by construction. Checking an export against its PyTorch reference
(on the held-out data, for every file a version serves) is :mod:`export.acceptance`'s job.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

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
        # export.acceptance checks the result on the held-out batches' other shapes, which is what matters.
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


def check_signature(session: ort.InferenceSession, spec: TaskSpec) -> None:
    """Raise :class:`ExportValidationError` unless the session's input and output names are the spec's."""
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
