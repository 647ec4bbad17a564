"""Model-level benchmark: ONNX Runtime execution providers, fp32 vs fp16, batch 1..64.

Run by ``bench/gpu/run_gpu.sh`` on a GPU machine (or here, CPU only, for a smoke run). For each
model it measures the latency of one ``session.run`` per batch size with every execution provider
that loads - CPU always; CUDA and TensorRT when ``onnxruntime-gpu`` (and TensorRT's libraries) are
installed - and, where PyTorch sees a GPU, the same module in PyTorch eager fp32/fp16 as a
framework reference. fp16 models are made with ONNX Runtime's own converter (inputs and outputs
kept fp32); TensorRT runs the fp32 graph with its fp16 flag. Each fp16 result is checked against
CPU fp32 (largest logit difference and top-label agreement).

Models, first found wins per task: ``--models DIR`` (``<task>.onnx``), the latest published
``model_repository/<task>/<n>/model.onnx``, else an architecture-equivalent stand-in exported on the
spot through the project's export path (``export.onnx_export``): a MiniLM-L6-shaped BERT (6 layers,
384 wide, 12 heads, 30,522 tokens) and EfficientNet-Lite0 + a 15-class head, random weights.
Latency does not depend on the weight values, so the stand-ins time the same graphs as the
trained models; the correctness columns then compare random-weight logits.

Writes ``gpu_results.json``, ``gpu_report.md`` and ``gpu_latency.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
TEXT_LENGTHS = {"sentiment": 256, "disaster": 32}  # each task's typical (largest used) length bucket
MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}


@dataclass
class ModelUnderTest:
    task: str
    path: Path
    source: str
    inputs: Callable[[int], dict[str, np.ndarray]]
    torch_module: Any = None


@dataclass
class Point:
    task: str
    runtime: str
    precision: str
    batch: int
    median_ms: float
    p90_ms: float
    runs: int

    @property
    def items_per_s(self) -> float:
        return self.batch / (self.median_ms / 1000.0) if self.median_ms > 0 else math.nan


@dataclass
class Results:
    machine: dict[str, Any]
    models: dict[str, str] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    wall_s: float = 0.0


# --- machine ---------------------------------------------------------------------------------------


def describe_machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "gpus": [],
    }
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        info["gpus"] = [line.strip() for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    import onnxruntime as ort

    info["onnxruntime"] = f"{ort.__version__} ({', '.join(ort.get_available_providers())})"
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    return info


# --- models ----------------------------------------------------------------------------------------


def text_inputs(length: int, vocab: int = 30522) -> Callable[[int], dict[str, np.ndarray]]:
    def make(batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(batch)
        ids = rng.integers(1000, vocab, size=(batch, length), dtype=np.int64)
        ids[:, 0] = 101  # [CLS]
        mask = np.ones((batch, length), dtype=np.int64)
        mask[:, length - max(1, length // 8) :] = 0  # some padding, as real buckets have
        ids[mask == 0] = 0
        return {"input_ids": ids, "attention_mask": mask}

    return make


def image_inputs(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {"pixel_values": rng.uniform(-1, 1, size=(batch, 3, 224, 224)).astype(np.float32)}


def published_model(task: str) -> Path | None:
    folder = ROOT / "model_repository" / task
    versions = sorted((int(p.name) for p in folder.glob("[0-9]*") if p.name.isdigit()), reverse=True)
    for version in versions:
        path = folder / str(version) / "model.onnx"
        if path.is_file():
            return path
    return None


def standin_module(task: str, tiny: bool) -> Any:
    """An architecture-equivalent PyTorch module with random weights (tiny: a few layers, for tests)."""
    import torch

    torch.manual_seed(0)
    if task in TEXT_LENGTHS:
        from transformers import BertConfig, BertForSequenceClassification

        from export.models import TextClassifier

        shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
        dims = shape if tiny else MINILM
        config = BertConfig(
            vocab_size=30522,
            max_position_embeddings=512,
            hidden_size=dims["hidden_size"],
            num_hidden_layers=dims["num_hidden_layers"],
            num_attention_heads=dims["num_attention_heads"],
            intermediate_size=dims["intermediate_size"],
        )
        config.num_labels = 2
        config._attn_implementation = "eager"
        return TextClassifier(BertForSequenceClassification(config)).eval()
    from export.models import ImageClassifier, TinyCNN

    if tiny:
        return TinyCNN(15).eval()
    try:
        from efficientnet_lite_pytorch import EfficientNet

        from export.models import EfficientNetFeatures

        backbone: Any = EfficientNetFeatures(EfficientNet.from_name("efficientnet-lite0"))
    except ImportError:
        import timm  # the GPU image has timm: the same EfficientNet-Lite0 architecture

        backbone = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    return ImageClassifier(backbone, torch.nn.Linear(1280, 15)).eval()


def export_standin(task: str, module: Any, path: Path) -> Path:
    """Export through the project's own exporter (named tensors, dynamic axes from taskspec)."""
    import torch

    from export.onnx_export import export_onnx
    from taskspec import get_task

    spec = get_task(task)
    sample_np = text_inputs(TEXT_LENGTHS[task])(2) if task in TEXT_LENGTHS else image_inputs(2)
    sample = {k: torch.from_numpy(v) for k, v in sample_np.items()}
    try:
        return export_onnx(module, spec, sample, path)
    except Exception as exc:  # a PyTorch without the TorchScript exporter: use the dynamo one
        print(f"note: the project's exporter failed here ({type(exc).__name__}: {exc}); trying dynamo=True")
        from export.onnx_export import dynamic_axes

        with torch.no_grad():
            torch.onnx.export(
                module,
                tuple(sample[name] for name in spec.input_names),
                str(path),
                input_names=list(spec.input_names),
                output_names=[spec.output.name],
                dynamic_axes=dynamic_axes(spec),  # type: ignore[arg-type]
                dynamo=True,
            )
        return path


def collect_models(tasks: Sequence[str], models_dir: Path | None, scratch: Path, tiny: bool) -> list[ModelUnderTest]:
    found: list[ModelUnderTest] = []
    for task in tasks:
        inputs = text_inputs(TEXT_LENGTHS[task]) if task in TEXT_LENGTHS else image_inputs
        candidate = models_dir / f"{task}.onnx" if models_dir else None
        if candidate is not None and candidate.is_file():
            found.append(ModelUnderTest(task, candidate, f"given: {candidate}", inputs))
            continue
        published = None if tiny else published_model(task)
        if published is not None:
            found.append(ModelUnderTest(task, published, f"published: {published.relative_to(ROOT)}", inputs))
            continue
        module = standin_module(task, tiny)
        path = export_standin(task, module, scratch / f"{task}.onnx")
        kind = "tiny stand-in" if tiny else "architecture-equivalent stand-in (random weights)"
        found.append(ModelUnderTest(task, path, kind, inputs, torch_module=module))
    return found


def to_fp16(path: Path, target: Path) -> Path:
    """fp16 weights and compute, fp32 inputs/outputs (ONNX Runtime's converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True, disable_shape_infer=False)
    onnx.save(model, str(target))
    return target


# --- timing ----------------------------------------------------------------------------------------


def time_calls(call: Callable[[], object], *, budget_s: float, min_runs: int = 3, max_runs: int = 50) -> list[float]:
    """Latencies (ms) of back-to-back calls after two warm-ups, within ``budget_s``."""
    call()
    call()
    latencies: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(latencies) < max_runs and (len(latencies) < min_runs or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t0) * 1000.0)
    return latencies


def point(task: str, runtime: str, precision: str, batch: int, latencies: list[float]) -> Point:
    ordered = sorted(latencies)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return Point(task, runtime, precision, batch, round(statistics.median(ordered), 4), round(p90, 4), len(ordered))


def session_for(path: Path, provider: str, *, fp16: bool, cache_dir: Path, max_batch: int, task: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers: list[Any]
    if provider == "TensorrtExecutionProvider":
        # One engine for every batch size (a profile), cached: without it TensorRT rebuilds per shape.
        def shape(batch: int) -> str:
            if task in TEXT_LENGTHS:
                length = TEXT_LENGTHS[task]
                return f"input_ids:{batch}x{length},attention_mask:{batch}x{length}"
            return f"pixel_values:{batch}x3x224x224"

        trt = {
            "trt_fp16_enable": fp16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(16),
            "trt_profile_max_shapes": shape(max_batch),
        }
        providers = [(provider, trt), "CUDAExecutionProvider", "CPUExecutionProvider"]
    elif provider == "CUDAExecutionProvider":
        providers = [(provider, {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"{provider} did not load (session runs on {session.get_providers()[0]})")
    return session


def runner(session: Any, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    """One inference call on fixed inputs, for :func:`time_calls`."""
    return lambda: session.run(None, feeds)


def bench_model(
    model: ModelUnderTest,
    results: Results,
    *,
    providers: Sequence[str],
    batches: Sequence[int],
    budget_s: float,
    deadline: float,
    scratch: Path,
) -> None:
    from preprocess.probabilities import softmax

    fp16_path = scratch / f"{model.task}.fp16.onnx"
    if not fp16_path.exists() and any(p != "CPUExecutionProvider" for p in providers):
        to_fp16(model.path, fp16_path)
    check_batch = min(8, max(batches))
    check_feeds = model.inputs(check_batch)
    cpu = session_for(model.path, "CPUExecutionProvider", fp16=False, cache_dir=scratch, max_batch=1, task=model.task)
    reference = softmax(np.asarray(cpu.run(None, check_feeds)[0], dtype=np.float32))
    del cpu
    for provider in providers:
        short = provider.replace("ExecutionProvider", "")
        for precision in ("fp32", "fp16"):
            if provider == "CPUExecutionProvider" and precision == "fp16":
                continue  # ONNX Runtime's CPU kernels are fp32: fp16 there only adds casts
            path = model.path if precision == "fp32" or provider == "TensorrtExecutionProvider" else fp16_path
            label = f"onnxruntime {short}"
            try:
                session = session_for(
                    path,
                    provider,
                    fp16=precision == "fp16",
                    cache_dir=scratch / "trt",
                    max_batch=max(batches),
                    task=model.task,
                )
            except Exception as exc:
                results.unavailable[f"{label} {precision}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            if not (provider == "CPUExecutionProvider" and precision == "fp32"):
                probs = softmax(np.asarray(session.run(None, check_feeds)[0], dtype=np.float32))
                results.accuracy.append(
                    {
                        "task": model.task,
                        "runtime": label,
                        "precision": precision,
                        "batch": check_batch,
                        "max_prob_diff_vs_cpu_fp32": round(float(np.abs(probs - reference).max()), 6),
                        "top_label_agreement": float((probs.argmax(-1) == reference.argmax(-1)).mean()),
                    }
                )
            for batch in batches:
                if time.perf_counter() > deadline:
                    results.skipped.append(f"{model.task} {label} {precision} batch {batch}: time budget spent")
                    continue
                feeds = model.inputs(batch)
                latencies = time_calls(runner(session, feeds), budget_s=budget_s)
                results.points.append(point(model.task, label, precision, batch, latencies))
                print(
                    f"  {model.task:9} {label:24} {precision} batch {batch:3}: {results.points[-1].median_ms:9.3f} ms"
                )
            del session


def bench_torch(
    model: ModelUnderTest, results: Results, *, batches: Sequence[int], budget_s: float, deadline: float
) -> None:
    """The stand-in module in PyTorch eager on the GPU, fp32 and fp16 (a framework reference)."""
    import torch

    if model.torch_module is None or not torch.cuda.is_available():
        return
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        module = model.torch_module.to("cuda", dtype=dtype)
        for batch in batches:
            if time.perf_counter() > deadline:
                results.skipped.append(f"{model.task} torch cuda {precision} batch {batch}: time budget spent")
                continue
            feeds = {
                k: torch.from_numpy(v).to("cuda", dtype=dtype if v.dtype == np.float32 else None)
                for k, v in model.inputs(batch).items()
            }

            def call(m: Any = module, f: dict[str, Any] = feeds) -> None:
                with torch.inference_mode():
                    m(**f)
                torch.cuda.synchronize()

            results.points.append(
                point(model.task, "torch CUDA (eager)", precision, batch, time_calls(call, budget_s=budget_s))
            )
            median = results.points[-1].median_ms
            print(f"  {model.task:9} torch CUDA (eager) {precision} batch {batch:3}: {median:9.3f} ms")
        model.torch_module = module.to("cpu", dtype=torch.float32)


# --- report ----------------------------------------------------------------------------------------


def write_outputs(results: Results, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": results.machine,
        "models": results.models,
        "points": [{**asdict(p), "items_per_s": round(p.items_per_s, 1)} for p in results.points],
        "accuracy": results.accuracy,
        "unavailable": results.unavailable,
        "skipped": results.skipped,
        "wall_s": round(results.wall_s, 1),
    }
    (out / "gpu_results.json").write_text(json.dumps(data, indent=2))

    gpus = ", ".join(results.machine.get("gpus") or []) or "none"
    lines = [
        "# Model-level benchmark (ONNX Runtime execution providers)",
        "",
        f"- GPU: {gpus}",
        f"- Host: {results.machine.get('cpu_count')} CPU cores, Python {results.machine.get('python')}",
        f"- onnxruntime {results.machine.get('onnxruntime')}; torch {results.machine.get('torch')} "
        f"(CUDA {results.machine.get('torch_cuda')})",
        f"- Wall time {results.wall_s:.0f} s. Latency = median of back-to-back `session.run` calls (one batch);"
        " items/s = batch / median latency.",
        "",
        "## Models",
        "",
        *[f"- `{task}`: {source}" for task, source in results.models.items()],
    ]
    for task in results.models:
        rows = [p for p in results.points if p.task == task]
        if not rows:
            continue
        combos = sorted({(p.runtime, p.precision) for p in rows})
        batches = sorted({p.batch for p in rows})
        lines += ["", f"## {task}: median latency ms (items/s)", ""]
        lines.append("| runtime | precision | " + " | ".join(f"batch {b}" for b in batches) + " |")
        lines.append("|---|---|" + "---:|" * len(batches))
        for runtime, precision in combos:
            cells = []
            for b in batches:
                match = [p for p in rows if p.runtime == runtime and p.precision == precision and p.batch == b]
                cells.append(f"{match[0].median_ms:.2f} ({match[0].items_per_s:,.0f})" if match else "-")
            lines.append(f"| {runtime} | {precision} | " + " | ".join(cells) + " |")
    if results.accuracy:
        lines += [
            "",
            "## fp16 / GPU vs CPU fp32 (same inputs)",
            "",
            "| task | runtime | precision | max prob diff | top-label agreement |",
            "|---|---|---|---:|---:|",
        ]
        for a in results.accuracy:
            lines.append(
                f"| {a['task']} | {a['runtime']} | {a['precision']} | {a['max_prob_diff_vs_cpu_fp32']:.5f} | "
                f"{a['top_label_agreement']:.0%} |"
            )
    if results.unavailable:
        lines += ["", "## Not available on this machine", ""]
        lines += [f"- {k}: {v}" for k, v in results.unavailable.items()]
    if results.skipped:
        lines += ["", f"Skipped for time: {len(results.skipped)} points (see gpu_results.json)."]
    (out / "gpu_report.md").write_text("\n".join(lines) + "\n")
    plot(results, out / "gpu_latency.png")


def plot(results: Results, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    tasks = [t for t in results.models if any(p.task == t for p in results.points)]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [p for p in results.points if p.task == task]
        for runtime, precision in sorted({(p.runtime, p.precision) for p in rows}):
            series = sorted((p.batch, p.items_per_s) for p in rows if p.runtime == runtime and p.precision == precision)
            ax.plot([b for b, _ in series], [v for _, v in series], "o-", label=f"{runtime} {precision}")
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="items / s", title=task)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    parser.add_argument("--tasks", default="sentiment,disaster,pose")
    parser.add_argument("--models", type=Path, default=None, help="folder of <task>.onnx to use first")
    parser.add_argument("--batches", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--providers", default="TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider")
    parser.add_argument("--point-budget-s", type=float, default=0.6, help="seconds of timed calls per point")
    parser.add_argument("--total-budget-s", type=float, default=240.0, help="stop measuring after this")
    parser.add_argument("--tiny", action="store_true", help="tiny stand-in models (smoke test on a CPU machine)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    deadline = start + args.total_budget_s
    try:
        # PyTorch first: it loads the CUDA and cuDNN libraries of its nvidia-* packages into the
        # process, where onnxruntime-gpu's CUDA provider then finds them by name.
        import torch

        print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu finds CUDA/cuDNN in the nvidia-* pip packages (the torch image has them).
            ort.preload_dlls()
    except Exception as exc:
        print(f"note: preloading CUDA libraries failed: {exc}")
    results = Results(machine=describe_machine())
    print(f"machine: {json.dumps(results.machine)}")
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"mtc-gpu-bench-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    batches = [int(b) for b in args.batches.split(",")]
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    providers = []
    for provider in (p.strip() for p in args.providers.split(",")):
        if provider in available:
            providers.append(provider)
        else:
            results.unavailable[provider] = "not in onnxruntime.get_available_providers() (onnxruntime-gpu missing?)"
    try:
        models = collect_models(tasks, args.models, scratch, args.tiny)
        for model in models:
            results.models[model.task] = model.source
        # GPU first for every model, the CPU last: if the time budget runs out, it cuts CPU points.
        gpu_providers = [p for p in providers if p != "CPUExecutionProvider"]
        cpu_providers = [p for p in providers if p == "CPUExecutionProvider"]
        for phase in (gpu_providers, cpu_providers):
            for model in models:
                print(f"==> {model.task} ({', '.join(phase) or 'PyTorch only'}): {model.source}", flush=True)
                bench_model(
                    model,
                    results,
                    providers=phase,
                    batches=batches,
                    budget_s=args.point_budget_s,
                    deadline=deadline,
                    scratch=scratch,
                )
                if phase is gpu_providers:
                    bench_torch(model, results, batches=batches, budget_s=args.point_budget_s, deadline=deadline)
    except Exception:
        results.unavailable["run"] = traceback.format_exc()[-2000:]
        print(traceback.format_exc())
    finally:
        results.wall_s = time.perf_counter() - start
        write_outputs(results, args.out)
        print(f"==> wrote {args.out}/gpu_report.md ({results.wall_s:.0f} s)")
    return 0 if results.points else 1


if __name__ == "__main__":
    raise SystemExit(main())
