"""Write a benchmark run as ``report.md`` + ``results.json`` + PNG plots."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt

from bench import facade_report
from bench.loadgen import LoadResult
from bench.measurements import BatchingPoint, BenchResults, StageBreakdown, ratio

PRE_STAGES = ("tokenize", "fetch", "preprocess")
STAGE_PARTS = (
    "preprocessing",
    "Triton queue",
    "Triton compute",
    "Triton call (HTTP, (de)serialisation)",
    "rest of the facade",
    "outside the facade (HTTP, uvicorn, client)",
)
"""The parts of a request that :func:`stage_columns` splits the client's latency into, in table/plot order."""


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def load_table(results: list[LoadResult], first_column: str = "concurrency") -> list[str]:
    lines = [
        f"| {first_column} | requests | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        error = f"{r.errors} ({r.first_error})" if r.errors else "0"
        lines.append(
            f"| {r.concurrency} | {r.requests} | {_fmt(r.throughput_rps)} | {_fmt(r.p(50), 2)} | "
            f"{_fmt(r.p(95), 2)} | {_fmt(r.p(99), 2)} | {error} |"
        )
    return lines


def plot_sweep(task: str, results: list[LoadResult], path: Path) -> None:
    levels = [r.concurrency for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for q, style in ((50, "o-"), (95, "s--"), (99, "^:")):
        left.plot(levels, [r.p(q) for r in results], style, label=f"p{q}")
    left.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)", title=f"{task}: latency")
    left.set_xticks(levels, [str(x) for x in levels])
    left.legend()
    left.grid(True, which="both", alpha=0.3)
    right.plot(levels, [r.throughput_rps for r in results], "o-", color="tab:green")
    right.set(xscale="log", xlabel="concurrent clients", ylabel="requests / s", title=f"{task}: throughput")
    right.set_xticks(levels, [str(x) for x in levels])
    right.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_batching(task: str, points: list[BatchingPoint], path: Path) -> None:
    on = [p for p in points if p.variant.endswith("on")]
    off = [p for p in points if p.variant.endswith("off")]
    levels = [p.result.concurrency for p in on]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.38
    xs = range(len(levels))
    left.bar([x - width / 2 for x in xs], [p.result.throughput_rps for p in on], width, label="batching on")
    left.bar([x + width / 2 for x in xs], [p.result.throughput_rps for p in off], width, label="batching off")
    left.set_xticks(list(xs), [str(c) for c in levels])
    left.set(xlabel="concurrent clients", ylabel="requests / s", title=f"{task}: dynamic batching")
    left.legend()
    busiest = on[-1] if on else None
    if busiest and busiest.batches:
        sizes = sorted(busiest.batches)
        right.bar([str(s) for s in sizes], [busiest.batches[s] for s in sizes], color="tab:purple")
    right.set(
        xlabel="executed batch size",
        ylabel="executions",
        title=f"batch sizes Triton ran (on, {levels[-1] if levels else '?'} clients)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stage_columns(stage: StageBreakdown) -> dict[str, float]:
    """Mean ms per part of a request, each part once (they add up to the client-observed mean)."""
    facade = stage.facade_ms
    pre = sum(facade.get(name, 0.0) for name in PRE_STAGES)
    inference = facade.get("inference", math.nan)
    queue = stage.triton_ms.get("queue_ms", math.nan)
    compute = stage.triton_ms.get("compute_ms", math.nan)
    total = facade.get("total", math.nan)
    return {
        "client": stage.client_mean_ms,
        "facade total": total,
        "preprocessing": pre,
        "Triton queue": queue,
        "Triton compute": compute,
        "Triton call (HTTP, (de)serialisation)": inference - queue - compute,
        "rest of the facade": total - pre - inference,
        "outside the facade (HTTP, uvicorn, client)": stage.client_mean_ms - total,
    }


def stage_table(stages: list[StageBreakdown]) -> list[str]:
    lines = [
        "| clients | client mean | facade total | preprocessing | Triton queue | Triton compute | Triton call | "
        "rest of facade | outside facade |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage in stages:
        c = stage_columns(stage)
        cells = " | ".join(_fmt(c[name], 2) for name in ("client", "facade total", *STAGE_PARTS))
        lines.append(f"| {stage.concurrency} | {cells} |")
    return lines


def plot_stages(task: str, stages: list[StageBreakdown], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.8))
    labels = [str(s.concurrency) for s in stages]
    columns = [stage_columns(stage) for stage in stages]
    bottom = [0.0] * len(stages)
    for part in STAGE_PARTS:
        shares = []
        for c in columns:
            value, total = c[part], c["client"]
            shares.append(100.0 * max(0.0, value) / total if total and not math.isnan(value) else 0.0)
        ax.bar(labels, shares, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, shares, strict=True)]
    ax.set(xlabel="concurrent clients", ylabel="% of the client's latency", title=f"{task}: where the time goes")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def headlines(results: BenchResults) -> list[str]:
    """The ratios a reader wants first, each computed from this run's numbers."""
    lines: list[str] = []
    for task, points in results.batching.items():
        on = {p.result.concurrency: p for p in points if p.variant.endswith("on")}
        off = {p.result.concurrency: p for p in points if p.variant.endswith("off")}
        top = max(set(on) & set(off), default=None)
        if top is None:
            continue
        gain = ratio(on[top].result.throughput_rps, off[top].result.throughput_rps)
        mean_batch = on[top].mean_batch
        lines.append(
            f"**{task}**: dynamic batching gives **{_fmt(gain, 2)}x** the throughput at {top} clients "
            f"(p99 {_fmt(on[top].result.p(99))} ms vs {_fmt(off[top].result.p(99))} ms without; "
            f"mean executed batch {mean_batch})"
        )
    for task, comparison in results.int8.items():
        by = {(label, r.concurrency): r for label, r in comparison.points}
        c_low = min(c for _, c in by)
        c_high = max(c for _, c in by)
        speed = ratio(by[("fp32", c_low)].p(50), by[("int8", c_low)].p(50))
        tput = ratio(by[("int8", c_high)].throughput_rps, by[("fp32", c_high)].throughput_rps)
        lines.append(
            f"**{task}**: int8 is **{_fmt(speed, 2)}x** faster at p50 (1 client), {_fmt(tput, 2)}x the throughput "
            f"at {c_high} clients, {comparison.int8_bytes / max(comparison.fp32_bytes, 1):.0%} of the size; "
            f"same top label on {comparison.agreement:.0%} of {comparison.samples} inputs"
        )
    if results.facade is not None:
        lines.extend(facade_report.headlines(results.facade))
    return lines


def write_report(results: BenchResults, out: Path) -> Path:
    """Write ``report.md``, ``results.json`` and the plots into ``out``; returns the report path."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    machine = results.machine
    md: list[str] = [
        "# Benchmark report",
        "",
        f"Run {results.started}, {results.wall_s:.0f} s wall time, by `python -m bench` (`make bench`).",
        "",
        "## Machine",
        "",
        f"- CPU: {machine.cpu} - {machine.cores} cores, {machine.memory_gib} GiB memory",
        f"- GPU: {', '.join(machine.gpus) or 'none (Triton runs the models on the CPU)'}",
        f"- OS: {machine.os}, Python {machine.python}, Triton {machine.triton or '?'}",
        f"- Packages: {', '.join(f'{k} {v}' for k, v in machine.packages.items())}",
        f"- Load average at start: {machine.load_average_at_start}",
        "",
        "The load generator, Triton, the facade and the image host all share this machine's cores, so "
        "absolute numbers are low and noisy; compare the **ratios within one run**. Model-level GPU "
        "figures are measured separately (bench/gpu/, see docs/benchmarks.md).",
        "",
        "## Models and inputs",
        "",
    ]
    for task, source in results.model_sources.items():
        md.append(f"- `{task}`: {source}; inputs: {results.input_sources.get(task, '?')}")
    if results.notes:
        md += ["", "Notes:", ""] + [f"- {n}" for n in results.notes]

    md += ["", "## Headline ratios", ""]
    md += [f"- {line}" for line in headlines(results)] or ["- (none measured)"]

    md += [
        "",
        "## Latency and throughput per task (through the facade)",
        "",
        "One input per request, `concurrency` clients each sending the next request as soon as the previous "
        "one is answered. Each level warms up until every client has had an answer, then measures for at least "
        f"{results.config.duration_s:g} s and at least as many answers as clients. Errors are answers other than "
        "200 (a 504 means the facade's Triton deadline passed: the machine is overloaded at that level).",
    ]
    for task, sweep_results in results.sweeps.items():
        plot = f"sweep_{task}.png"
        plot_sweep(task, sweep_results, out / plot)
        md += ["", f"### {task}", "", *load_table(sweep_results), "", f"![{task} latency and throughput]({plot})"]

    if results.stages:
        md += [
            "",
            "## Where the time goes (through the facade)",
            "",
            "Mean milliseconds per request at each level. *Preprocessing*, *facade total* and the facade's view of "
            "inference come from the facade's own `timings_ms`; *Triton queue* and *compute* from Triton's "
            "statistics for the model; *Triton call* is the facade's inference time minus both (HTTP and tensor "
            "(de)serialisation between facade and Triton); *outside facade* is what the client saw minus the "
            "facade's total (HTTP, uvicorn, the event loop, the load generator). Triton's counters cover the requests "
            "it finished inside the window, the facade's the answers that arrived in it: with queues of seconds "
            "the two sets differ and a derived column can come out negative.",
        ]
        for task, stages in results.stages.items():
            plot = f"stages_{task}.png"
            plot_stages(task, stages, out / plot)
            md += ["", f"### {task}", "", *stage_table(stages), "", f"![{task}: where the time goes]({plot})"]

    md += [
        "",
        "## Dynamic batching on vs off (direct to Triton)",
        "",
        "The same model twice in one Triton: as published (dynamic batching, preferred sizes and queue delay "
        "from the task spec) and with `dynamic_batching` removed. Batch sizes are Triton's own statistics "
        "(`/v2/models/<model>/stats`, executions per batch size) over the warm-up and the measured window. "
        "On and off are measured back to back at each level. With one client, batching on waits up to the "
        "queue delay for company that never comes: that is its latency cost.",
    ]
    for task, points in results.batching.items():
        plot = f"batching_{task}.png"
        plot_batching(task, points, out / plot)
        md += [
            "",
            f"### {task}",
            "",
            "| variant | clients | req/s | p50 ms | p99 ms | mean batch | executed batch sizes (size: count) |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for point in points:
            r = point.result
            sizes = ", ".join(f"{k}: {v}" for k, v in point.batches.items()) or "-"
            md.append(
                f"| {point.variant} | {r.concurrency} | {_fmt(r.throughput_rps)} | {_fmt(r.p(50), 2)} | "
                f"{_fmt(r.p(99), 2)} | {point.mean_batch or '-'} | {sizes} |"
            )
        md += ["", f"![{task} dynamic batching]({plot})"]

    if results.int8:
        md += [
            "",
            "## int8 vs fp32 (direct to Triton)",
            "",
            "ONNX Runtime dynamic quantization (int8 MatMul/Gemm weights, activations quantized per call) of the "
            "published model. Agreement: same top label as fp32 on the benchmark inputs.",
            "",
            "| task | variant | clients | req/s | p50 ms | p99 ms | model size | agreement | max prob diff |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for task, comparison in results.int8.items():
            for label, r in comparison.points:
                size = comparison.int8_bytes if label == "int8" else comparison.fp32_bytes
                md.append(
                    f"| {task} | {label} | {r.concurrency} | {_fmt(r.throughput_rps)} | {_fmt(r.p(50), 2)} | "
                    f"{_fmt(r.p(99), 2)} | {size / 1e6:.1f} MB | {comparison.agreement:.1%} | "
                    f"{comparison.max_prob_diff:.4f} |"
                )

    if results.facade is not None:
        md += ["", facade_report.markdown(results.facade).strip()]

    md.append("")
    report = out / "report.md"
    report.write_text("\n".join(md))
    (out / "results.json").write_text(json.dumps(to_json(results), indent=2, default=str))
    return report


def to_json(results: BenchResults) -> dict[str, Any]:
    """Machine-readable results (summaries, no raw latency lists)."""
    return {
        "started": results.started,
        "wall_s": round(results.wall_s, 1),
        "machine": asdict(results.machine),
        "model_sources": results.model_sources,
        "input_sources": results.input_sources,
        "notes": results.notes,
        "headlines": headlines(results),
        "sweeps": {task: [r.summary() for r in rs] for task, rs in results.sweeps.items()},
        "stages": {
            task: [{"concurrency": st.concurrency, **stage_columns(st)} for st in stages]
            for task, stages in results.stages.items()
        },
        "batching": {task: [p.summary() for p in ps] for task, ps in results.batching.items()},
        "int8": {
            task: {
                "agreement": c.agreement,
                "max_prob_diff": c.max_prob_diff,
                "samples": c.samples,
                "fp32_bytes": c.fp32_bytes,
                "int8_bytes": c.int8_bytes,
                "points": [{"variant": label, **r.summary()} for label, r in c.points],
            }
            for task, c in results.int8.items()
        },
        "facade": facade_report.to_json(results.facade) if results.facade is not None else None,
    }
