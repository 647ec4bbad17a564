"""What a soak run found: status counts per phase, latency outside the fault windows, memory growth, and
issue 11's pass/fail rules over them. :mod:`bench.soak.report` writes them down."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.loadgen import percentile
from bench.machine import Machine
from bench.soak.rss import Growth, ProcessLife, RssSample, growth, lives
from bench.soak.timeline import Phase, Schedule, Timeline
from bench.soak.traffic import LOST, OK, Outcome

MAX_RSS_GROWTH = 0.05
"""Issue 11's limit: RSS may grow by less than 5% outside the warm-up."""
OUTSIDE_FAULTS = "outside fault windows"


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
    machine: Machine | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    uploads: int = 0
    upload_failures: list[str] = field(default_factory=list)
    started: str = ""
    wall_s: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list, repr=False)
    """Every request, for ``requests.csv`` and the plot."""
    samples: list[RssSample] = field(default_factory=list, repr=False)
    """Every memory sample, for ``rss.csv`` and the plot."""
    idle_memory: list[RssSample] = field(default_factory=list, repr=False)
    """Every process once, ``idle_after_s`` after the traffic ended (empty: not sampled)."""
    idle_after_s: float = 0.0

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
    unplanned_deaths: int = 0,
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
    if unplanned_deaths:
        failures.append(
            f"Triton died on its own {unplanned_deaths} time(s) outside the fault windows (see the timeline)"
        )
    reached = {p.phase: p for p in phases}
    if Phase.RESTARTING in reached and recovery_s is None:
        failures.append("Triton did not serve again after the kill within the restart timeout")
    recovered = reached.get(Phase.RECOVERED)
    if recovered is None:
        failures.append("the run ended before the recovered phase")
    elif not recovered.statuses.get(OK):
        failures.append("no request was answered with 200 in the recovered phase")
    return failures


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
    unplanned_deaths: int = 0,
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
        failures=judge(phases, rss_rows, recovery_s, unplanned_deaths=unplanned_deaths, max_rss_growth=max_rss_growth),
        outcomes=list(outcomes),
        samples=list(samples),
    )
