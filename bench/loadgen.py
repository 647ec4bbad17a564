"""A closed-loop async load generator: ``concurrency`` workers, each sending its next request as
soon as the previous one returns, for a fixed wall-clock window.

Closed loop (rather than a fixed arrival rate) because the question here is "what latency and
throughput does N concurrent clients get", and it cannot overload the 2-core machine it runs on
into measuring its own queueing. Latency is measured around the awaited call only, so the load
generator's own bookkeeping is not counted; a short warm-up is discarded.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Send = Callable[[int], Awaitable[object]]
"""One request: called with a running request number (use it to pick an input), awaited."""


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass
class LoadResult:
    """Latencies (ms) and counts of one load level."""

    label: str
    concurrency: int
    duration_s: float
    latencies_ms: list[float] = field(repr=False)
    errors: int = 0
    first_error: str | None = None
    items_per_request: int = 1

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        return self.throughput_rps * self.items_per_request

    def p(self, q: float) -> float:
        return percentile(sorted(self.latencies_ms), q)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies_ms) if self.latencies_ms else math.nan

    def summary(self) -> dict[str, Any]:
        """The numbers the report prints (no raw latencies)."""
        data = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        data.update(
            requests=self.requests,
            throughput_rps=round(self.throughput_rps, 2),
            items_per_s=round(self.items_per_s, 2),
            p50_ms=round(self.p(50), 3),
            p95_ms=round(self.p(95), 3),
            p99_ms=round(self.p(99), 3),
            mean_ms=round(self.mean_ms, 3),
        )
        return data


async def run_load(
    send: Send,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.3,
    max_requests: int | None = None,
    label: str = "",
    items_per_request: int = 1,
) -> LoadResult:
    """Run ``concurrency`` workers calling ``send`` back to back for ``duration_s`` after a warm-up.

    A request that raises counts as an error (not as a latency); the first error's text is kept so
    that a misconfigured benchmark says why instead of reporting a suspiciously fast result.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    counter = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    measured_end = measure_from

    async def worker() -> None:
        nonlocal counter, errors, first_error, measured_end
        while True:
            now = time.perf_counter()
            if now >= stop_at or (max_requests is not None and len(latencies) + errors >= max_requests):
                return
            number = counter
            counter += 1
            t0 = time.perf_counter()
            try:
                await send(number)
            except Exception as exc:  # a benchmark reports failures, it does not stop on them
                if t0 >= measure_from:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append((t1 - t0) * 1000.0)
                measured_end = max(measured_end, t1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = max(measured_end - measure_from, 1e-9)
    return LoadResult(
        label=label,
        concurrency=concurrency,
        duration_s=elapsed,
        latencies_ms=latencies,
        errors=errors,
        first_error=first_error,
        items_per_request=items_per_request,
    )


async def sweep(
    send: Send,
    concurrencies: Sequence[int],
    *,
    duration_s: float,
    warmup_s: float = 0.3,
    label: str = "",
    items_per_request: int = 1,
) -> list[LoadResult]:
    """:func:`run_load` at each concurrency level in turn."""
    results = []
    for concurrency in concurrencies:
        results.append(
            await run_load(
                send,
                concurrency=concurrency,
                duration_s=duration_s,
                warmup_s=warmup_s,
                label=label,
                items_per_request=items_per_request,
            )
        )
    return results
