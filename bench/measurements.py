"""What a benchmark run measured, as typed records.

:mod:`bench.suite` and :mod:`bench.comparisons` fill them in; :mod:`bench.report` and
:mod:`bench.facade_report` render them. Raw latencies stay inside :class:`bench.loadgen.LoadResult`;
the ratios a report quotes are computed here, once, from the measured numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.config import BenchConfig
from bench.loadgen import LoadResult, percentile
from bench.machine import Machine

# --- python -m bench -------------------------------------------------------------------------------------


@dataclass
class BatchingPoint:
    """One load level on one variant (batching on or off), with the batch sizes Triton executed meanwhile."""

    variant: str
    result: LoadResult
    batches: dict[int, int]
    """executed batch size -> executions"""

    @property
    def mean_batch(self) -> float | None:
        executions = sum(self.batches.values())
        rows = sum(size * count for size, count in self.batches.items())
        return round(rows / executions, 2) if executions else None

    def summary(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            **self.result.summary(),
            "batches": {str(k): v for k, v in self.batches.items()},
            "mean_batch": self.mean_batch,
        }


@dataclass
class StageBreakdown:
    """Where the time of one request goes at one load level (means over the level's answers)."""

    concurrency: int
    client_mean_ms: float
    facade_ms: dict[str, float]
    """The facade's own ``timings_ms`` (tokenize, fetch, preprocess, inference, total)."""
    triton_ms: dict[str, float]
    """Triton's statistics for the model: queue and compute per request."""


@dataclass
class Int8Comparison:
    """int8 vs fp32 of one text task: agreement on the benchmark inputs, sizes, and load levels of each."""

    task: str
    agreement: float
    max_prob_diff: float
    samples: int
    fp32_bytes: int
    int8_bytes: int
    points: list[tuple[str, LoadResult]] = field(default_factory=list)
    """("fp32" or "int8", the load level)"""


# --- the facade comparisons ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of one side of a concurrency-1 comparison."""

    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencyStats:
        ordered = sorted(values)
        return cls(
            requests=len(values),
            p50_ms=percentile(ordered, 50),
            p95_ms=percentile(ordered, 95),
            p99_ms=percentile(ordered, 99),
            mean_ms=statistics.fmean(values) if values else math.nan,
        )


@dataclass(frozen=True)
class OverheadResult:
    """Facade vs a direct tritonclient call (and the minimal proxy), one text, concurrency 1."""

    text_tokens: int
    padded_to: int
    facade: LatencyStats
    direct: LatencyStats
    proxy: LatencyStats | None = None
    target_ratio: float = 1.15

    @property
    def p50_ratio(self) -> float:
        return self.facade.p50_ms / self.direct.p50_ms

    @property
    def proxy_p50_ratio(self) -> float | None:
        return self.proxy.p50_ms / self.direct.p50_ms if self.proxy else None


@dataclass(frozen=True)
class PaddingStatistics:
    """Real tokens per text and the share of padding under each strategy (one text per request)."""

    texts: int
    mean_tokens: float
    mean_padded_buckets: float
    mean_padded_fixed: float
    padding_share_buckets: float
    padding_share_fixed: float


def mean_rps(results: Sequence[LoadResult]) -> float | None:
    return statistics.fmean(r.throughput_rps for r in results) if results else None


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None where it is undefined."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


@dataclass
class ThroughputResult:
    """Requests/s at one concurrency with mixed-length reviews, several servers measured in alternating rounds."""

    concurrency: int
    reviews: int
    runs: dict[str, list[LoadResult]]
    """server run name (``facade``, ``transformers``, ``direct``, references) -> one result per round"""
    review_padding: PaddingStatistics | None = None
    target_ratio: float = 3.0

    def rps(self, name: str) -> float | None:
        """Mean requests/s of ``name`` over the rounds (None when it was not measured)."""
        return mean_rps(self.runs.get(name, []))

    @property
    def throughput_ratio(self) -> float | None:
        """Facade / the original design (FastAPI + transformers pipeline)."""
        return ratio(self.rps("facade"), self.rps("transformers"))

    @property
    def references(self) -> list[str]:
        return [name for name in self.runs if name not in ("facade", "transformers", "direct")]


@dataclass(frozen=True)
class PaddingPoint:
    padding: str
    """``buckets`` or ``max_length``"""
    concurrency: int
    round: int
    result: LoadResult


@dataclass
class PaddingResult:
    """Disaster tweets through a bucketed and a fixed max-length facade, alternating rounds per level."""

    statistics: PaddingStatistics
    points: list[PaddingPoint]

    @property
    def ratios(self) -> dict[int, float | None]:
        """concurrency -> mean req/s with buckets / mean req/s with fixed padding."""
        out = {}
        for concurrency in sorted({p.concurrency for p in self.points}):
            level = [p for p in self.points if p.concurrency == concurrency]
            buckets = mean_rps([p.result for p in level if p.padding == "buckets"])
            out[concurrency] = ratio(buckets, mean_rps([p.result for p in level if p.padding == "max_length"]))
        return out


@dataclass
class FacadeResults:
    """The facade comparisons of one run (each None when not measured) and notes on how they ran."""

    notes: list[str] = field(default_factory=list)
    overhead: OverheadResult | None = None
    throughput: ThroughputResult | None = None
    padding: PaddingResult | None = None


# --- a whole run -------------------------------------------------------------------------------------------


@dataclass
class BenchResults:
    """Everything the report of ``python -m bench`` is written from."""

    config: BenchConfig
    machine: Machine
    model_sources: dict[str, str] = field(default_factory=dict)
    input_sources: dict[str, str] = field(default_factory=dict)
    sweeps: dict[str, list[LoadResult]] = field(default_factory=dict)
    stages: dict[str, list[StageBreakdown]] = field(default_factory=dict)
    batching: dict[str, list[BatchingPoint]] = field(default_factory=dict)
    int8: dict[str, Int8Comparison] = field(default_factory=dict)
    facade: FacadeResults | None = None
    notes: list[str] = field(default_factory=list)
    started: str = ""
    wall_s: float = 0.0
