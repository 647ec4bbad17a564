"""The Monitoring tab's time series (last 15 minutes), from the dashboard's own samples of the facade.

Every refresh takes a :class:`Snapshot` of the facade's ``/metrics`` (requests and 5xx answers per task route,
the latency histogram, requests in flight) and of ``/v1/stats`` (Triton's cumulative counters per model);
:class:`LiveHistory` keeps the snapshots of the window and turns each pair of consecutive ones into rates,
the way Prometheus' ``rate()`` and ``histogram_quantile()`` would over one interval. A counter that went
down (a restarted facade or Triton) counts from zero again.

Pure functions and data only: no widget, no network (the state fetches, the views draw).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from dashboard.client import ModelStats, PrometheusClient

WINDOW_S = 15 * 60

Series = dict[str, tuple[list[float], list[float]]]
"""Line name -> (times in epoch milliseconds, values): one chart."""


@dataclass(frozen=True)
class TritonTotals:
    """Triton's cumulative counters of one task's model, every loaded version together."""

    success: float = 0.0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    rows: float = 0.0
    executions: float = 0.0


def triton_totals(stats: Sequence[ModelStats]) -> dict[str, TritonTotals]:
    """``/v1/stats`` rows summed per task (its averages times its request count give the totals)."""
    totals: dict[str, TritonTotals] = {}
    for row in stats:
        t = totals.get(row.task, TritonTotals())
        totals[row.task] = TritonTotals(
            t.success + row.request_success,
            t.queue_ms + row.avg_queue_ms * row.request_success,
            t.compute_ms + row.avg_compute_ms * row.request_success,
            t.rows + row.inference_count,
            t.executions + row.execution_count,
        )
    return totals


@dataclass(frozen=True)
class Snapshot:
    """The cumulative counters at one moment (``at``: epoch seconds)."""

    at: float
    requests: Mapping[str, float] = field(default_factory=dict)
    errors: Mapping[str, float] = field(default_factory=dict)
    latency_buckets: Mapping[str, Mapping[float, float]] = field(default_factory=dict)
    in_flight: float = 0.0
    models: Mapping[str, TritonTotals] = field(default_factory=dict)


def _task_of(endpoint: str, tasks: Collection[str]) -> str | None:
    name = endpoint.removeprefix("/v1/")
    return name if endpoint.startswith("/v1/") and name in tasks else None


def metric_samples(metrics_text: str) -> list[Sample]:
    """Every sample of the facade's ``/metrics`` text, parsed once per refresh for the live charts
    (:func:`snapshot`) and the drift panel (:func:`dashboard.drift.drift_sample`)."""
    return [sample for family in text_string_to_metric_families(metrics_text) for sample in family.samples]


def snapshot(at: float, samples: Iterable[Sample], stats: Sequence[ModelStats], tasks: Collection[str]) -> Snapshot:
    """A :class:`Snapshot` from the facade's ``/metrics`` samples (:func:`metric_samples`) and ``/v1/stats``, for
    the routes of ``tasks``."""
    requests: dict[str, float] = {}
    errors: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    in_flight = 0.0
    for sample in samples:
        if sample.name == "mtc_api_in_flight":
            in_flight = sample.value
            continue
        task = _task_of(sample.labels.get("endpoint", ""), tasks)
        if task is None:
            continue
        if sample.name == "mtc_api_requests_total":
            requests[task] = requests.get(task, 0.0) + sample.value
            if sample.labels.get("status", "").startswith("5"):
                errors[task] = errors.get(task, 0.0) + sample.value
        elif sample.name == "mtc_api_request_duration_seconds_bucket":
            buckets.setdefault(task, {})[float(sample.labels["le"])] = sample.value
    return Snapshot(at, requests, errors, buckets, in_flight, triton_totals(stats))


def increase(before: float, after: float) -> float:
    """How much a counter grew between two samples."""
    return after - before if after >= before else after  # a reset: the counter started again from zero


class Timed(Protocol):
    @property
    def at(self) -> float:
        """When the sample was taken (seconds)."""
        ...


S = TypeVar("S", bound=Timed)


class TimeWindow(Generic[S]):
    """The samples of the last ``window_s`` seconds, oldest first."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[S] = deque()

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def span_s(self) -> float:
        """Seconds between the oldest and the newest sample kept."""
        return self._samples[-1].at - self._samples[0].at if self._samples else 0.0

    def add(self, sample: S) -> None:
        """Keep ``sample`` (ignored unless newer than the last one) and forget those older than the window."""
        if self._samples and sample.at <= self._samples[-1].at:
            return
        self._samples.append(sample)
        while self._samples and self._samples[0].at < sample.at - self.window_s:
            self._samples.popleft()

    def pairs(self) -> Iterator[tuple[S, S]]:
        """Consecutive samples, oldest first."""
        return itertools.pairwise(list(self._samples))


def bucket_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL's ``histogram_quantile`` on cumulative bucket counts (upper bound -> count); None without data."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # in the +Inf bucket: the highest finite bound, as Prometheus answers
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


@dataclass(frozen=True)
class LiveCharts:
    """The series of every chart of the Monitoring tab's live section."""

    requests: Series
    errors: Series
    latency_ms: Series
    triton_ms: Series
    batch_size: Series
    in_flight: Series

    def is_empty(self) -> bool:
        return not any(self.requests.values()) and not any(self.triton_ms.values())


EMPTY_CHARTS = LiveCharts({}, {}, {}, {}, {}, {})


def _append(series: Series, name: str, at: float, value: float | None) -> None:
    if value is None or math.isnan(value):
        return
    times, values = series.setdefault(name, ([], []))
    times.append(at * 1000)
    values.append(value)


class LiveHistory(TimeWindow[Snapshot]):
    """The snapshots of the last ``window_s`` seconds and the charts computed from them."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        super().__init__(window_s)

    def charts(self) -> LiveCharts:
        """Rates per interval between consecutive snapshots, at the later one's time."""
        charts = LiveCharts({}, {}, {}, {}, {}, {})
        for before, after in self.pairs():
            seconds = after.at - before.at
            at = after.at
            for task in sorted(after.requests):
                done = increase(before.requests.get(task, 0.0), after.requests[task])
                _append(charts.requests, task, at, done / seconds)
                failed = increase(before.errors.get(task, 0.0), after.errors.get(task, 0.0))
                _append(charts.errors, task, at, failed / seconds)
                now, then = after.latency_buckets.get(task, {}), before.latency_buckets.get(task, {})
                delta = {le: increase(then.get(le, 0.0), count) for le, count in now.items()}
                for q, label in ((0.5, "p50"), (0.95, "p95")):
                    value = bucket_quantile(q, delta)
                    _append(charts.latency_ms, f"{task} {label}", at, None if value is None else value * 1000)
            for task in sorted(after.models):
                model, previous = after.models[task], before.models.get(task, TritonTotals())
                served = increase(previous.success, model.success)
                if served > 0:
                    queue = increase(previous.queue_ms, model.queue_ms)
                    compute = increase(previous.compute_ms, model.compute_ms)
                    _append(charts.triton_ms, f"{task} queue", at, queue / served)
                    _append(charts.triton_ms, f"{task} compute", at, compute / served)
                executions = increase(previous.executions, model.executions)
                if executions > 0:
                    _append(charts.batch_size, task, at, increase(previous.rows, model.rows) / executions)
            _append(charts.in_flight, "in flight", at, after.in_flight)
        return charts


# Each live chart from Prometheus: the recording rules of observability/prometheus/rules.yml, and a line name
# made from the series' labels (the same names as the page's own samples give).
PROMETHEUS_QUERIES: dict[str, list[tuple[str, str]]] = {
    "requests": [("task:mtc_api_requests:rate1m", "{task}")],
    "errors": [("task:mtc_api_errors:rate1m", "{task}")],
    "latency_ms": [
        ("task:mtc_api_request_duration_seconds:p50_1m * 1000", "{task} p50"),
        ("task:mtc_api_request_duration_seconds:p95_1m * 1000", "{task} p95"),
    ],
    "triton_ms": [
        ("model:nv_inference_queue_ms:avg1m", "{model} queue"),
        ("model:nv_inference_compute_ms:avg1m", "{model} compute"),
    ],
    "batch_size": [("model:nv_inference_batch_size:avg1m", "{model}")],
    "in_flight": [("sum(mtc_api_in_flight)", "in flight")],
}


async def prometheus_charts(
    client: PrometheusClient, now: float, step_s: float, window_s: float = WINDOW_S
) -> LiveCharts:
    """The live charts of the last ``window_s`` seconds from Prometheus; raises what the client raises."""
    charts = LiveCharts({}, {}, {}, {}, {}, {})
    for chart, queries in PROMETHEUS_QUERIES.items():
        series: Series = getattr(charts, chart)
        for expr, name in queries:
            for labels, points in await client.query_range(expr, now - window_s, now, step_s):
                line = name.format_map({"task": "", "model": "", **labels})
                for at, value in points:
                    _append(series, line, at, value)
    return charts
