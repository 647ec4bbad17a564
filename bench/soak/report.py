"""A soak run's findings (:mod:`bench.soak.findings`) as ``report.md``, ``report.json``, ``requests.csv``,
``rss.csv`` and ``soak.png``."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.soak.findings import MAX_RSS_GROWTH, SoakReport
from bench.soak.rss import ALL_SERVICES, RssSample, pss_totals, totals
from bench.soak.traffic import TrafficSettings

POLITE = TrafficSettings(url="")
"""The clients' pauses after errors (not configurable from the command line)."""


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def idle_totals(samples: Sequence[RssSample]) -> tuple[dict[str, int], dict[str, int | None]]:
    """RSS and PSS per service, the whole stack last, from one sample of every process (one sample time)."""

    def stack_last(service: str) -> tuple[bool, str]:
        return service == ALL_SERVICES, service

    rss_table, pss_table = totals(samples), pss_totals(samples)
    services = sorted(rss_table, key=stack_last)
    return (
        {service: next(iter(rss_table[service].values())) for service in services},
        {service: next(iter(pss_table[service].values())) for service in services},
    )


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in counts.items()) or "-"


def markdown(report: SoakReport) -> str:
    """``report.md``."""
    schedule, machine = report.schedule, report.machine
    verdict = "**PASSED**" if report.passed else "**FAILED**"
    md = [
        "# Soak and fault report",
        "",
        f"{verdict}: issue 11's done-criteria (errors only inside the fault windows, no hung request, RSS growth "
        f"under {MAX_RSS_GROWTH:.0%} outside the warm-up).",
        "",
    ]
    md += [f"- {failure}" for failure in report.failures]
    md += [
        "",
        f"Run {report.started}, {report.wall_s:.0f} s wall time, by `python -m bench.soak` (`make soak`). Stack: "
        f"{report.stack}. {report.clients} concurrent clients, mixed tasks round-robin, one input per request; "
        f"client deadline {report.client_timeout_s:g} s (a request without an answer by then is lost). After a "
        f"429/502/503 a client waits what Retry-After says, else {POLITE.backoff_s:g} s (at most "
        f"{POLITE.max_backoff_s:g} s), and {POLITE.backoff_s:g} s after a connection error.",
        "",
        f"Machine: {machine.summary() if machine else '?'}.",
        "",
        "Inputs: " + "; ".join(f"{task}: {source}" for task, source in report.inputs.items()) + ".",
        f"Photos uploaded through `/v1/uploads` (presigned POST): {report.uploads}"
        + (
            f"; failed renewals: {len(report.upload_failures)} ({report.upload_failures[0]})"
            if report.upload_failures
            else ""
        )
        + ".",
        "",
        "## Timeline",
        "",
        f"Planned: {schedule.duration_s:g} s, warm-up {schedule.warmup_s:g} s, Triton frozen (SIGSTOP of its process "
        f"group) at {schedule.freeze_at_s:g} s for {schedule.freeze_s:g} s, killed (SIGKILL) at "
        f"{schedule.kill_at_s:g} s and restarted by the stack's supervisor; a fault window lasts until "
        f"{schedule.settle_s:g} s after the fault is lifted (a Triton that dies within that time of the thaw died "
        "of the freeze: the freeze's window then lasts until a new Triton serves). A request belongs to the fault "
        "window its lifetime overlaps, otherwise to the phase it started in.",
        "",
    ]
    md += [f"- {event.at_s:7.1f} s: {event.what}" for event in report.timeline.events]
    if report.recovery_s is not None:
        md.append(f"\nTriton served again {report.recovery_s:.1f} s after the kill.")
    md += [
        "",
        "## Status per phase",
        "",
        "| phase | from s | to s | requests | statuses | per task |",
        "|---|---:|---:|---:|---|---|",
    ]
    for p in report.phases:
        per_task = "; ".join(f"{task} {_statuses(c)}" for task, c in p.by_task.items())
        fault = " (fault)" if p.phase.is_fault else ""
        md.append(
            f"| {p.phase}{fault} | {p.start_s:.1f} | {p.end_s:.1f} | {p.requests} | {_statuses(p.statuses)} | "
            f"{per_task} |"
        )
    md += [
        "",
        f"Requests lost (no answer within {report.client_timeout_s:g} s): **{report.lost}**. Errors outside the fault "
        f"windows: **{sum(sum(c.values()) for c in report.errors_outside_faults.values())}**.",
        "",
        "## Latency of answered requests outside the fault windows (ms)",
        "",
        "Warm-up excluded. Closed loop: with 64 clients on a small machine, latency is mostly queueing.",
        "",
        "| task | over | requests | p50 | p95 | p99 | max |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report.latency:
        md.append(
            f"| {row.task} | {row.scope} | {row.requests} | {_ms(row.p50_ms)} | {_ms(row.p95_ms)} | "
            f"{_ms(row.p99_ms)} | {_ms(row.max_ms)} |"
        )
    baseline, end = report.rss_windows["baseline"], report.rss_windows["end"]
    md += [
        "",
        "## Memory (RSS and PSS from /proc, every process of the stack)",
        "",
        f"Per service, the sum over its processes (Triton with its Python-backend stubs); median over the baseline "
        f"window ({baseline[0]:.0f}-{baseline[1]:.0f} s, start of the steady phase) and the end window "
        f"({end[0]:.0f}-{end[1]:.0f} s). Triton's end figure is its restarted instance. RSS counts a page shared "
        "by several processes (shared libraries, files every stub maps) once per process; PSS divides it among "
        "them, so the sum of PSS is what the stack occupies. Growth is judged on RSS.",
        "",
        "| service | baseline MiB (RSS) | end MiB (RSS) | peak MiB (RSS, after warm-up) | growth | baseline MiB (PSS) "
        "| end MiB (PSS) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for grown in report.rss_growth:
        flag = " **(>= limit)**" if grown.growth >= MAX_RSS_GROWTH else ""
        md.append(
            f"| {grown.service} | {_mib(grown.baseline_bytes)} | {_mib(grown.end_bytes)} | {_mib(grown.peak_bytes)} | "
            f"{grown.growth:+.1%}{flag} | {_mib(grown.baseline_pss_bytes)} | {_mib(grown.end_pss_bytes)} |"
        )
    if report.idle_memory:
        rss, pss = idle_totals(report.idle_memory)
        md += [
            "",
            f"After the traffic, {report.idle_after_s:g} s without requests (one sample of every process):",
            "",
            "| service | MiB (RSS) | MiB (PSS) |",
            "|---|---:|---:|",
        ]
        md += [f"| {service} | {_mib(rss[service])} | {_mib(pss[service])} |" for service in rss]
    md += [
        "",
        "Every process seen after the warm-up:",
        "",
        "| service | process | pid | seen s | first MiB | last MiB | peak MiB | last MiB (PSS) |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for life in report.processes:
        md.append(
            f"| {life.service} | {life.label} | {life.pid} | {life.first_s:.0f}-{life.last_s:.0f} | "
            f"{_mib(life.first_bytes)} | {_mib(life.last_bytes)} | {_mib(life.peak_bytes)} | "
            f"{_mib(life.last_pss_bytes)} |"
        )
    md += ["", "![requests and memory over time](soak.png)", ""]
    return "\n".join(md)


def to_json(report: SoakReport) -> dict[str, Any]:
    idle = idle_totals(report.idle_memory) if report.idle_memory else None
    return {
        "passed": report.passed,
        "failures": report.failures,
        "started": report.started,
        "wall_s": round(report.wall_s, 1),
        "stack": report.stack,
        "clients": report.clients,
        "client_timeout_s": report.client_timeout_s,
        "schedule": asdict(report.schedule),
        "events": [asdict(e) for e in report.timeline.events],
        "recovery_s": report.recovery_s,
        "phases": [
            {
                "phase": str(p.phase),
                "fault": p.phase.is_fault,
                "start_s": round(p.start_s, 2),
                "end_s": round(p.end_s, 2),
                "requests": p.requests,
                "errors": p.errors,
                "statuses": p.statuses,
                "by_task": p.by_task,
            }
            for p in report.phases
        ],
        "lost": report.lost,
        "errors_outside_faults": report.errors_outside_faults,
        "latency_ms": [
            {
                k: (None if isinstance(v, float) and math.isnan(v) else round(v, 2) if isinstance(v, float) else v)
                for k, v in asdict(row).items()
            }
            for row in report.latency
        ],
        "rss_windows_s": report.rss_windows,
        "rss_growth": [{**asdict(row), "growth": round(row.growth, 4)} for row in report.rss_growth],
        "processes": [asdict(life) for life in report.processes],
        "idle_after_s": report.idle_after_s,
        "idle_memory": {"rss_bytes": idle[0], "pss_bytes": idle[1]} if idle else None,
        "machine": asdict(report.machine) if report.machine else None,
        "inputs": report.inputs,
        "uploads": report.uploads,
        "upload_failures": report.upload_failures,
    }


def plot(report: SoakReport, path: Path) -> None:
    """Requests per second by outcome and RSS per service over time, fault windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = report.timeline.end_s or report.schedule.duration_s
    bins = max(1, math.ceil(end / 2.0))
    kinds = {"200": [0] * bins, "4xx": [0] * bins, "5xx": [0] * bins, "lost / connection": [0] * bins}
    for o in report.outcomes:
        index = min(bins - 1, int(o.end_s / 2.0))
        kind = (
            "200"
            if o.ok
            else "4xx"
            if o.status.startswith("4")
            else "5xx"
            if o.status.startswith("5")
            else "lost / connection"
        )
        kinds[kind][index] += 1
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    xs = [2.0 * i for i in range(bins)]
    for kind, counts in kinds.items():
        if any(counts):
            top.plot(xs, [c / 2.0 for c in counts], label=kind)
    top.set(ylabel="requests / s (by end time)", title="Soak: answers and memory over time")
    top.legend(fontsize=8)
    for service, series in sorted(totals(report.samples).items()):
        if service != ALL_SERVICES:
            times = sorted(series)
            bottom.plot(times, [series[t] / 2**20 for t in times], label=service)
    bottom.set(xlabel="seconds from the start of the traffic", ylabel="RSS (MiB)")
    bottom.legend(fontsize=8)
    for axis in (top, bottom):
        for phase, start, stop in report.timeline.windows():
            if phase.is_fault:
                axis.axvspan(start, min(stop, end), color="tab:red", alpha=0.12)
        axis.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(report: SoakReport, out: Path) -> Path:
    """``report.md``, ``report.json``, ``requests.csv``, ``rss.csv`` and ``soak.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(to_json(report), indent=2, default=str))
    with open(out / "requests.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "start_s", "end_s", "status", "phase"])
        for o in report.outcomes:
            writer.writerow(
                [o.task, f"{o.start_s:.3f}", f"{o.end_s:.3f}", o.status, report.timeline.classify(o.start_s, o.end_s)]
            )
    with open(out / "rss.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "service", "pid", "process", "rss_bytes", "pss_bytes"])
        for s in report.samples:
            writer.writerow(
                [f"{s.t_s:.1f}", s.service, s.pid, s.label, s.rss_bytes, "" if s.pss_bytes is None else s.pss_bytes]
            )
    plot(report, out / "soak.png")
    path = out / "report.md"
    path.write_text(markdown(report))
    return path
