"""The soak's findings: status counts per phase, latency outside the fault windows, memory growth, the
pass/fail rules of issue 11, and how they are written (``report.md``, ``report.json``, CSVs, a plot)."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import percentile
from bench.soak.rss import ALL_SERVICES, Growth, ProcessLife, RssSample, growth, lives, totals
from bench.soak.timeline import Phase, Schedule, Timeline
from bench.soak.traffic import LOST, OK, Outcome, TrafficSettings

MAX_RSS_GROWTH = 0.05
"""Issue 11's limit: RSS may grow by less than 5% outside the warm-up."""
OUTSIDE_FAULTS = "outside fault windows"
POLITE = TrafficSettings(url="")
"""The clients' pauses after errors (not configurable from the command line)."""


@dataclass(frozen=True)
class PhaseCounts:
    """How the requests of one phase ended."""

    phase: Phase
    start_s: float
    end_s: float
    statuses: dict[str, int]
    """status ("200", "503", "lost", ...) -> requests"""
    by_task: dict[str, dict[str, int]]

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        """Requests that did not end in 200 (lost ones included)."""
        return self.requests - self.statuses.get(OK, 0)


@dataclass(frozen=True)
class Latency:
    """Percentiles of the answered (200) requests of one task or all, over one phase or all outside faults."""

    task: str
    scope: str
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, task: str, scope: str, outcomes: Sequence[Outcome]) -> Latency:
        values = sorted(o.latency_ms for o in outcomes)
        return cls(
            task=task,
            scope=scope,
            requests=len(values),
            p50_ms=percentile(values, 50),
            p95_ms=percentile(values, 95),
            p99_ms=percentile(values, 99),
            max_ms=values[-1] if values else math.nan,
        )


@dataclass
class SoakReport:
    """Everything ``report.md`` and ``report.json`` are written from."""

    schedule: Schedule
    stack: str
    """What was soaked (the stack started here, or the URL of a running one)."""
    clients: int
    client_timeout_s: float
    timeline: Timeline
    phases: list[PhaseCounts]
    latency: list[Latency]
    rss_growth: list[Growth]
    processes: list[ProcessLife]
    rss_windows: dict[str, tuple[float, float]]
    recovery_s: float | None
    """Seconds from the kill until Triton served again (None: it did not within the restart timeout)."""
    failures: list[str]
    machine: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    uploads: int = 0
    upload_failures: list[str] = field(default_factory=list)
    started: str = ""
    wall_s: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list, repr=False)
    """Every request, for ``requests.csv`` and the plot."""
    samples: list[RssSample] = field(default_factory=list, repr=False)
    """Every memory sample, for ``rss.csv`` and the plot."""

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def lost(self) -> int:
        return sum(p.statuses.get(LOST, 0) for p in self.phases)

    @property
    def errors_outside_faults(self) -> dict[str, dict[str, int]]:
        """phase -> status -> count, for every non-200 outside the fault windows."""
        return {
            str(p.phase): {s: n for s, n in p.statuses.items() if s != OK}
            for p in self.phases
            if not p.phase.is_fault and p.errors
        }


def phase_counts(outcomes: Sequence[Outcome], timeline: Timeline) -> list[PhaseCounts]:
    """Requests per phase (see :meth:`Timeline.classify`), each phase that began, in order."""
    by_phase: dict[Phase, list[Outcome]] = {}
    for outcome in outcomes:
        by_phase.setdefault(timeline.classify(outcome.start_s, outcome.end_s), []).append(outcome)
    out = []
    for phase, start, end in timeline.windows():
        members = by_phase.get(phase, [])
        tasks: dict[str, Counter[str]] = {}
        for o in members:
            tasks.setdefault(o.task, Counter())[o.status] += 1
        out.append(
            PhaseCounts(
                phase=phase,
                start_s=start,
                end_s=end,
                statuses=dict(sorted(Counter(o.status for o in members).items())),
                by_task={task: dict(sorted(c.items())) for task, c in sorted(tasks.items())},
            )
        )
    return out


def latencies(outcomes: Sequence[Outcome], timeline: Timeline) -> list[Latency]:
    """Answered requests outside the warm-up and the fault windows: per task over all those phases, then all
    tasks per phase."""
    measured = [Phase.STEADY, Phase.AFTER_THAW, Phase.RECOVERED]
    placed = [(timeline.classify(o.start_s, o.end_s), o) for o in outcomes if o.ok]
    outside = [o for phase, o in placed if phase in measured]
    rows = [
        Latency.of(task, OUTSIDE_FAULTS, [o for o in outside if o.task == task])
        for task in sorted({o.task for o in outcomes})
    ]
    rows.append(Latency.of("all", OUTSIDE_FAULTS, outside))
    rows += [Latency.of("all", str(phase), [o for p, o in placed if p == phase]) for phase in measured]
    return rows


def rss_windows(timeline: Timeline, schedule: Schedule) -> dict[str, tuple[float, float]]:
    """Where memory growth is measured: ``baseline``, the first stretch of the steady phase, and ``end``,
    the last stretch of the run, each 10% of the planned duration (at least 10 s)."""
    width = max(10.0, 0.10 * schedule.duration_s)
    steady = next((s for p, s, _ in timeline.windows() if p == Phase.STEADY), schedule.warmup_s)
    end = timeline.end_s if timeline.end_s is not None else schedule.duration_s
    return {"baseline": (steady, steady + width), "end": (end - width, end)}


def judge(
    phases: Sequence[PhaseCounts],
    rss_growth: Sequence[Growth],
    recovery_s: float | None,
    *,
    max_rss_growth: float = MAX_RSS_GROWTH,
) -> list[str]:
    """Issue 11's done-criteria, each failure as a sentence: no error outside the fault windows, no request
    left hanging, RSS growth under ``max_rss_growth`` for every service; and the stack must have come back
    after the kill and answered in the recovered phase."""
    failures = []
    outside = {str(p.phase): p for p in phases if not p.phase.is_fault and p.errors}
    if outside:
        parts = [
            f"{name}: " + ", ".join(f"{n} x {s}" for s, n in p.statuses.items() if s != OK)
            for name, p in outside.items()
        ]
        failures.append(
            f"{sum(p.errors for p in outside.values())} errors outside the fault windows ({'; '.join(parts)})"
        )
    lost = {str(p.phase): p.statuses[LOST] for p in phases if p.statuses.get(LOST)}
    if lost:
        where = ", ".join(f"{n} in {name}" for name, n in lost.items())
        failures.append(f"{sum(lost.values())} requests lost (no answer within the client's deadline): {where}")
    for row in rss_growth:
        if row.growth >= max_rss_growth:
            failures.append(
                f"RSS of {row.service} grew {row.growth:.1%} outside the warm-up "
                f"({row.baseline_bytes / 2**20:.0f} -> {row.end_bytes / 2**20:.0f} MiB; limit {max_rss_growth:.0%})"
            )
    if not rss_growth:
        failures.append("no memory samples in the baseline and end windows: RSS growth not measured")
    reached = {p.phase: p for p in phases}
    if Phase.RESTARTING in reached and recovery_s is None:
        failures.append("Triton did not serve again after the kill within the restart timeout")
    recovered = reached.get(Phase.RECOVERED)
    if recovered is None:
        failures.append("the run ended before the recovered phase")
    elif not recovered.statuses.get(OK):
        failures.append("no request was answered with 200 in the recovered phase")
    return failures


# --- writing -----------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


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
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {machine.get('memory_gib', '?')} GiB; "
        f"load average at start {machine.get('load_average_at_start')}.",
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
        f"{schedule.settle_s:g} s after the fault is lifted. A request belongs to the fault window its lifetime "
        "overlaps, otherwise to the phase it started in.",
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
        "## Memory (RSS from /proc, every process of the stack)",
        "",
        f"Per service, the sum over its processes (Triton with its Python-backend stubs); median over the baseline "
        f"window ({baseline[0]:.0f}-{baseline[1]:.0f} s, start of the steady phase) and the end window "
        f"({end[0]:.0f}-{end[1]:.0f} s). Triton's end figure is its restarted instance.",
        "",
        "| service | baseline MiB | end MiB | peak MiB (after warm-up) | growth |",
        "|---|---:|---:|---:|---:|",
    ]
    for grown in report.rss_growth:
        flag = " **(>= limit)**" if grown.growth >= MAX_RSS_GROWTH else ""
        md.append(
            f"| {grown.service} | {_mib(grown.baseline_bytes)} | {_mib(grown.end_bytes)} | {_mib(grown.peak_bytes)} | "
            f"{grown.growth:+.1%}{flag} |"
        )
    md += [
        "",
        "Every process seen after the warm-up:",
        "",
        "| service | process | pid | seen s | first MiB | last MiB | peak MiB |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for life in report.processes:
        md.append(
            f"| {life.service} | {life.label} | {life.pid} | {life.first_s:.0f}-{life.last_s:.0f} | "
            f"{_mib(life.first_bytes)} | {_mib(life.last_bytes)} | {_mib(life.peak_bytes)} |"
        )
    md += ["", "![requests and memory over time](soak.png)", ""]
    return "\n".join(md)


def to_json(report: SoakReport) -> dict[str, Any]:
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
        "machine": report.machine,
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
        writer.writerow(["t_s", "service", "pid", "process", "rss_bytes"])
        for s in report.samples:
            writer.writerow([f"{s.t_s:.1f}", s.service, s.pid, s.label, s.rss_bytes])
    plot(report, out / "soak.png")
    path = out / "report.md"
    path.write_text(markdown(report))
    return path


def summarise(
    outcomes: Sequence[Outcome],
    samples: Sequence[RssSample],
    timeline: Timeline,
    schedule: Schedule,
    *,
    stack: str,
    clients: int,
    client_timeout_s: float,
    recovery_s: float | None,
    max_rss_growth: float = MAX_RSS_GROWTH,
) -> SoakReport:
    """Count, measure and judge a finished run."""
    phases = phase_counts(outcomes, timeline)
    windows = rss_windows(timeline, schedule)
    rss_rows = growth(samples, windows["baseline"], windows["end"], after=windows["baseline"][0])
    return SoakReport(
        schedule=schedule,
        stack=stack,
        clients=clients,
        client_timeout_s=client_timeout_s,
        timeline=timeline,
        phases=phases,
        latency=latencies(outcomes, timeline),
        rss_growth=rss_rows,
        processes=lives(samples, after=windows["baseline"][0]),
        rss_windows=windows,
        recovery_s=recovery_s,
        failures=judge(phases, rss_rows, recovery_s, max_rss_growth=max_rss_growth),
        outcomes=list(outcomes),
        samples=list(samples),
    )
