"""Optional TensorRT plans: the config and the ``trtexec`` shapes for one task's published model.

``deploy/build_trt_plan.sh`` runs ``trtexec`` inside NGC's TensorRT container of the same release as
the Triton image on the latest version's ``model.onnx``, and publishes the result as the next version
(published versions are immutable: ``python -m deploy.tensorrt publish-plan``). Publishing goes through
the exporter's one path (:func:`export.pipeline.publish_derived`): the plan first runs on the task's
held-out split (``--data-dir``; the profile and seed of the source version) and is held to
``taskspec.TENSORRT_FLOOR`` against the version's ``model.onnx``; that needs the ``tensorrt`` Python
package of the plan's TensorRT version and a GPU where ``publish-plan`` runs, else nothing is published::

    <task>/<version+1>/...                 every file of <version>, and:
    <task>/<version+1>/model.plan          the engine (GPU model and TensorRT version specific)
    <task>/<version+1>/model.plan.json     what it was built with (TensorRT version, GPU, shapes)
    <task>/<version+1>/manifest.json       sealing all of them
    <task>/configs/tensorrt.pbtxt          platform tensorrt_plan, KIND_GPU, same tensors and batching

Triton uses the plan only when started with ``--model-config-name=tensorrt``; without the flag (CPU
hosts, the local server) every model keeps its ONNX ``config.pbtxt``, and models without a
``configs/tensorrt.pbtxt`` (the raw-text models) fall back to theirs.

A plan runs only on the TensorRT version that built it (and the GPU architecture): rebuild it
whenever the Triton image changes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from export.triton_config import build_model_config, render_model_config
from taskspec import TENSORRT_FLOOR, TaskSpec, get_task

PLAN_FILE = "model.plan"
PLAN_INFO_FILE = "model.plan.json"
CONFIG_NAME = "tensorrt"
FP16_CONFIG_NAME = "gpu"
"""``configs/gpu.pbtxt``: the ONNX model with ONNX Runtime's TensorRT FP16 accelerator (no plan to build)."""
NGC_RELEASE = "24.10"
"""Triton 2.51 = NGC 24.10 = TensorRT 10.5: the plan must be built by this release's TensorRT."""


def tensorrt_model_config(spec: TaskSpec) -> mc.ModelConfig:
    """The task's config with the plan as its model: same name, tensors and dynamic batching; on the GPU."""
    config = build_model_config(spec)
    config.platform = "tensorrt_plan"
    config.backend = ""
    config.default_model_filename = PLAN_FILE
    config.ClearField("optimization")  # ONNX Runtime's accelerator settings mean nothing to a plan
    config.ClearField("parameters")
    del config.instance_group[:]
    config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.KIND_GPU, count=spec.instance_count)
    return config


def trtexec_shapes(spec: TaskSpec) -> dict[str, str]:
    """``--minShapes/--optShapes/--maxShapes`` covering batch 1..max_batch_size (and every text bucket)."""
    max_batch = spec.batching.max_batch_size
    opt_batch = max(spec.batching.preferred_batch_sizes or (1,))

    def shapes(batch: int, length: int | None) -> str:
        parts = []
        for tensor in spec.inputs:
            dims = [batch, *(length if d == -1 else d for d in tensor.dims)]
            parts.append(f"{tensor.name}:{'x'.join(str(int(d)) for d in dims if d is not None)}")
        return ",".join(parts)

    if spec.text is not None:
        buckets = spec.text.buckets
        return {
            "min": shapes(1, buckets[0]),
            "opt": shapes(opt_batch, buckets[len(buckets) // 2]),
            "max": shapes(max_batch, buckets[-1]),
        }
    return {"min": shapes(1, None), "opt": shapes(opt_batch, None), "max": shapes(max_batch, None)}


def write_tensorrt_config(spec: TaskSpec, model_dir: Path) -> Path:
    """``<model_dir>/configs/tensorrt.pbtxt``."""
    path = model_dir / "configs" / f"{CONFIG_NAME}.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# TensorRT plan config, written by deploy/tensorrt.py. Used only with --model-config-name=tensorrt.\n"
        f"# The plan must be built by the TensorRT of NGC {NGC_RELEASE} (the Triton image's release).\n"
    )
    path.write_text(header + render_model_config(tensorrt_model_config(spec)))
    return path


def write_fp16_accelerator_config(spec: TaskSpec, model_dir: Path) -> Path:
    """``<model_dir>/configs/gpu.pbtxt``: the ONNX config plus the ONNX Runtime TensorRT FP16 accelerator.

    ONNX Runtime builds the TensorRT engine itself when the model loads (minutes for a BERT; no
    version matching to manage), on GPU hosts started with ``--model-config-name=gpu``.
    """
    path = model_dir / "configs" / f"{FP16_CONFIG_NAME}.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# GPU config (ONNX Runtime + TensorRT FP16), written by deploy/tensorrt.py; --model-config-name=gpu.\n"
    path.write_text(header + render_model_config(build_model_config(spec, tensorrt_fp16=True)))
    return path


def publish_plan(spec: TaskSpec, source: Path, plan: Path, info: Path, *, data_dir: Path | None = None) -> Path:
    """Publish ``source`` + ``plan`` (+ its build ``info``) as the next version, once the plan has passed
    :data:`taskspec.TENSORRT_FLOOR` against ``source``'s ``model.onnx`` on the held-out split."""
    from export.build import held_out_split
    from export.errors import ExportError
    from export.pipeline import publish_derived
    from export.registry import load_dataset, recipe_for
    from export.served import ServedFile, read_metrics

    metrics = read_metrics(source) or {}
    profile, seed = metrics.get("profile"), metrics.get("seed")
    if profile not in ("quick", "full") or not isinstance(seed, int):
        raise ExportError(f"{source}/metrics.json does not say which profile and seed built it: rebuild it first")
    held_out = held_out_split(
        load_dataset(spec.name, data_dir=data_dir).test, recipe_for(profile, spec.name), seed=seed
    )
    served = ServedFile(PLAN_FILE, f"configs/{CONFIG_NAME}.pbtxt", TENSORRT_FLOOR)
    published = publish_derived(spec, source, {served: plan}, held_out=held_out, extra_files={PLAN_INFO_FILE: info})
    return published.version_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.tensorrt", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    shapes = sub.add_parser("shapes", help="print the trtexec shape flags for a task")
    shapes.add_argument("task")
    config = sub.add_parser("config", help="write <repository>/<task>/configs/tensorrt.pbtxt")
    config.add_argument("task")
    config.add_argument("--repository", type=Path, default=Path("model_repository"))
    fp16 = sub.add_parser("fp16-config", help="write <repository>/<task>/configs/gpu.pbtxt (ORT TensorRT FP16)")
    fp16.add_argument("task")
    fp16.add_argument("--repository", type=Path, default=Path("model_repository"))
    plan = sub.add_parser("publish-plan", help="publish <version> + a plan built from it as the next version")
    plan.add_argument("task")
    plan.add_argument("--from-version", type=Path, required=True, help="the version folder the plan was built from")
    plan.add_argument("--plan", type=Path, required=True, help="the engine trtexec wrote")
    plan.add_argument("--info", type=Path, required=True, help="model.plan.json: TensorRT version, GPU, shapes")
    plan.add_argument("--data-dir", type=Path, default=None, help="datasets folder (default: $MTC_DATA_DIR)")
    args = parser.parse_args(argv)
    spec = get_task(args.task)
    if args.command == "shapes":
        s = trtexec_shapes(spec)
        print(f"--minShapes={s['min']} --optShapes={s['opt']} --maxShapes={s['max']}")
    elif args.command == "config":
        print(write_tensorrt_config(spec, args.repository / spec.name))
    elif args.command == "publish-plan":
        from export.errors import ExportError

        try:
            print(publish_plan(spec, args.from_version, args.plan, args.info, data_dir=args.data_dir))
        except (ExportError, OSError) as exc:
            parser.exit(2, f"error: {exc}\n")
    else:
        print(write_fp16_accelerator_config(spec, args.repository / spec.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
