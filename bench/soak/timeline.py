"""The soak run's timeline: the planned schedule of faults, the phases as they happened, and which phase
each request belongs to.

Phases, in order: warm-up, steady, frozen (Triton stopped with SIGSTOP), after thaw, killed/restarting
(Triton killed with SIGKILL until the stack's supervisor has it serving again), recovered. A fault phase
lasts from the fault until ``settle_s`` after it was lifted (the thaw, or Triton seen ready again): the
facade's short caches (``/readyz``, the negative cache of a failed version refresh, about a second each)
may still answer from before. A Triton that dies within ``settle_s`` of the thaw died of the freeze (Triton
2.51's Python backend can abort after a long SIGSTOP): the frozen phase then lasts until a new Triton
serves, plus ``settle_s``. A request belongs to the fault phase its lifetime overlaps, otherwise to
the phase it started in: a request sent just before the freeze that ends in a 504 is the freeze's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Phase(StrEnum):
    WARMUP = "warm-up"
    STEADY = "steady"
    FROZEN = "frozen"
    AFTER_THAW = "after thaw"
    RESTARTING = "killed/restarting"
    RECOVERED = "recovered"

    @property
    def is_fault(self) -> bool:
        return self in (Phase.FROZEN, Phase.RESTARTING)


PHASE_ORDER = tuple(Phase)


@dataclass(frozen=True)
class Schedule:
    """When the faults happen, in seconds from the start of the traffic."""

    duration_s: float
    warmup_s: float
    freeze_at_s: float
    freeze_s: float
    kill_at_s: float
    settle_s: float = 3.0
    restart_timeout_s: float = 240.0
    """How long Triton may take to serve again after the kill before the run says it did not recover."""
    min_recovered_s: float = 0.0
    """The run is extended until the recovered phase has lasted this long (a slow restart still leaves a
    window to measure latency and memory after it)."""

    @classmethod
    def for_duration(cls, duration_s: float, **overrides: float) -> Schedule:
        """The default plan for a run of ``duration_s``: warm-up 10%, freeze at 25% for 5%, kill at 50%,
        at least 15% of the run recovered; any field can be given instead."""
        plan = {
            "duration_s": duration_s,
            "warmup_s": max(5.0, 0.10 * duration_s),
            "freeze_at_s": 0.25 * duration_s,
            "freeze_s": max(3.0, 0.05 * duration_s),
            "kill_at_s": 0.50 * duration_s,
            "min_recovered_s": 0.15 * duration_s,
        }
        plan.update(overrides)
        return cls(**plan)

    def problems(self) -> list[str]:
        """What makes this plan impossible (empty when it is fine)."""
        out = []
        if self.warmup_s <= 0 or self.freeze_s <= 0 or self.settle_s < 0:
            out.append("warm-up and freeze must be positive, settle not negative")
        if not self.warmup_s < self.freeze_at_s:
            out.append(f"the freeze ({self.freeze_at_s:g} s) must come after the warm-up ({self.warmup_s:g} s)")
        thawed = self.freeze_at_s + self.freeze_s + self.settle_s
        if not thawed < self.kill_at_s:
            out.append(f"the kill ({self.kill_at_s:g} s) must come after the freeze and its settling ({thawed:g} s)")
        if not self.kill_at_s < self.duration_s:
            out.append(f"the kill ({self.kill_at_s:g} s) must come before the end ({self.duration_s:g} s)")
        return out


@dataclass(frozen=True)
class Event:
    """Something the run did or saw, at ``at_s`` seconds from the start of the traffic."""

    at_s: float
    what: str


@dataclass
class Timeline:
    """The phases as they happened: each phase's start, in order; the end of the run once known."""

    starts: list[tuple[float, Phase]] = field(default_factory=lambda: [(0.0, Phase.WARMUP)])
    events: list[Event] = field(default_factory=list)
    end_s: float | None = None

    def begin(self, phase: Phase, at_s: float) -> None:
        if at_s < self.starts[-1][0]:
            raise ValueError(f"{phase} at {at_s:.1f} s begins before {self.starts[-1][1]} ({self.starts[-1][0]:.1f} s)")
        self.starts.append((at_s, phase))

    def note(self, at_s: float, what: str) -> None:
        self.events.append(Event(at_s, what))

    @property
    def current(self) -> Phase:
        return self.starts[-1][1]

    def phase_at(self, t_s: float) -> Phase:
        """The phase running at ``t_s``."""
        phase = self.starts[0][1]
        for start, candidate in self.starts:
            if start > t_s:
                break
            phase = candidate
        return phase

    def windows(self) -> list[tuple[Phase, float, float]]:
        """(phase, start, end) of every phase that began; the last one ends at ``end_s`` (or never)."""
        ends = [start for start, _ in self.starts[1:]] + [self.end_s if self.end_s is not None else float("inf")]
        return [(phase, start, end) for (start, phase), end in zip(self.starts, ends, strict=True)]

    def classify(self, start_s: float, end_s: float) -> Phase:
        """The phase a request from ``start_s`` to ``end_s`` belongs to: the last fault phase its lifetime
        overlaps, else the phase it started in."""
        overlapped = [p for p, s, e in self.windows() if p.is_fault and start_s < e and end_s >= s]
        return overlapped[-1] if overlapped else self.phase_at(start_s)
