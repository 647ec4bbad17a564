"""A closed-loop async load generator: ``concurrency`` workers, each sending its next request as
soon as the previous one returns, measured over a steady-state window.

Closed loop (rather than a fixed arrival rate) because the question here is "what latency and
throughput does N concurrent clients get", and it cannot overload the 2-core machine it runs on
into measuring its own queueing. Latency is measured around the awaited call only, so the load
generator's own bookkeeping is not counted; the warm-up lasts until every client has had an answer.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from taskspec import TaskSpec

Send = Callable[[int], Awaitable[object]]
"""One request: called with a running request number (use it to pick an input), awaited."""


def triton_sender(client: Any, model: str, spec: TaskSpec, requests: Sequence[Mapping[str, np.ndarray]]) -> Send:
    """A ``send(n)`` that infers request ``n % len(requests)`` (``spec``'s input tensors) on ``model`` through
    ``client`` (``tritonclient.http.aio``); an answer without ``spec``'s output raises."""
    from tritonclient.http import InferRequestedOutput

    from frontend_api.triton_client import infer_inputs

    prepared = [infer_inputs({t.name: feeds[t.name] for t in spec.inputs}) for feeds in requests]
    outputs = [InferRequestedOutput(spec.output.name, binary_data=True)]

    async def send(n: int) -> None:
        result = await client.infer(model, prepared[n % len(prepared)], outputs=outputs)
        if result.as_numpy(spec.output.name) is None:
            raise RuntimeError(f"{model} returned no {spec.output.name}")

    return send


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
    window: tuple[float, float] = (0.0, 0.0)
    """``time.perf_counter()`` at the start and the end of the measured window."""

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
        data = {k: v for k, v in asdict(self).items() if k not in ("latencies_ms", "window")}
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
    min_completions: int | None = None,
    max_duration_s: float | None = None,
    on_window: Callable[[str], object] | None = None,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight and measure the completions in a steady-state window.

    - Warm-up: at least ``warmup_s``, and until every client has had one answer (at high
      concurrency on a slow model the first answers take seconds: a fixed short warm-up would
      measure the ramp-up).
    - Window: from the end of the warm-up, at least ``duration_s`` and at least ``min_completions``
      answers (default: ``concurrency``, at least 10), at most ``max_duration_s`` (default 30 s).
      Clients keep sending until the window closes, so the load is steady throughout it; throughput
      is the answers completed inside the window divided by its length, and the latency of each of
      them is recorded. Requests still in flight when it closes are cancelled and not counted.
    - ``max_requests`` closes the window after that many answers.
    - ``on_window("start")`` / ``on_window("end")`` run when the window opens and closes (to read
      server-side counters for exactly the measured window).

    A request that raises counts as an error (not as a latency); the first error's text is kept so
    that a misconfigured benchmark says why instead of reporting a suspiciously fast result.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    needed = min_completions if min_completions is not None else max(concurrency, 10)
    longest = max_duration_s if max_duration_s is not None else max(30.0, 3 * duration_s)
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    counter = 0
    answered_once = 0
    start = time.perf_counter()
    window_start: float | None = None
    window_end: float | None = None
    stop = asyncio.Event()

    def close_window(now: float) -> None:
        nonlocal window_end
        if window_end is None:
            window_end = now
            stop.set()
            if on_window is not None:
                on_window("end")

    def after_answer(now: float) -> None:
        nonlocal window_start
        if window_start is None:
            if answered_once >= concurrency and now - start >= warmup_s:
                window_start = now
                if on_window is not None:
                    on_window("start")
            elif now - start >= longest:  # a client never got an answer: give up warming up
                window_start = now
                close_window(now)
            return
        done = len(latencies) + errors
        elapsed = now - window_start
        enough = elapsed >= duration_s and done >= needed
        capped = max_requests is not None and done >= max_requests
        if enough or capped or elapsed >= longest:
            close_window(now)

    async def worker() -> None:
        nonlocal counter, errors, first_error, answered_once
        first = True
        while not stop.is_set():
            number = counter
            counter += 1
            t0 = time.perf_counter()
            failure: str | None = None
            try:
                await send(number)
            except Exception as exc:  # a benchmark reports failures, it does not stop on them
                failure = f"{type(exc).__name__}: {exc}"[:300]
            t1 = time.perf_counter()
            if stop.is_set():
                return
            if first:
                first = False
                answered_once += 1
            elif window_start is not None:
                if failure is None:
                    latencies.append((t1 - t0) * 1000.0)
                else:
                    errors += 1
                    first_error = first_error or failure
            after_answer(t1)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.wait_for(stop.wait(), timeout=warmup_s + 2 * longest + 5)
    except TimeoutError:  # every client is stuck on one request
        close_window(time.perf_counter())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert window_end is not None
    opened = window_start if window_start is not None else window_end
    elapsed = max(window_end - opened, 1e-9)
    return LoadResult(
        label=label,
        concurrency=concurrency,
        duration_s=elapsed,
        latencies_ms=latencies,
        errors=errors,
        first_error=first_error,
        items_per_request=items_per_request,
        window=(opened, window_end),
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
