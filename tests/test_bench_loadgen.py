"""The load generator's numbers: percentiles, throughput, concurrency and error accounting."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from bench.loadgen import LoadResult, percentile, run_load, sweep


def test_percentile_interpolates_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 100.0
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))


def test_closed_loop_latency_and_throughput_follow_the_service_time() -> None:
    in_flight = 0
    most = 0

    async def send(n: int) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1

    result = asyncio.run(run_load(send, concurrency=4, duration_s=0.5, warmup_s=0.05))
    assert most == 4, "exactly `concurrency` requests are in flight"
    # 4 clients x (1 / 20 ms) = ~200 req/s at best; a busy machine only makes the answers slower, so the
    # bounds that hold whatever the load are the ceiling of the rate and the floor of the latency.
    assert 0 < result.throughput_rps < 210
    assert result.throughput_rps == pytest.approx(result.requests / result.duration_s)
    assert result.p(50) > 19
    assert result.p(50) <= result.p(95) <= result.p(99)
    assert result.errors == 0


def test_slow_first_answers_are_warm_up_and_the_window_waits_for_enough_answers() -> None:
    calls = 0

    async def send(n: int) -> None:
        nonlocal calls
        calls += 1
        # A cold model: the first answer of every client is slow.
        await asyncio.sleep(0.25 if n < 4 else 0.01)

    result = asyncio.run(
        run_load(send, concurrency=4, duration_s=0.05, warmup_s=0.0, min_completions=40, max_duration_s=5)
    )
    assert result.requests >= 40
    assert max(result.latencies_ms) < 200, "cold-start answers were measured"
    # A loaded machine only slows the 10 ms answers down: the bound that holds whatever the load is the top.
    assert result.throughput_rps == pytest.approx(result.requests / result.duration_s)
    assert result.throughput_rps < 420  # 4 clients / 10 ms


def test_a_window_is_bounded_when_answers_are_slow() -> None:
    async def send(n: int) -> None:
        await asyncio.sleep(0.05)

    result = asyncio.run(
        run_load(send, concurrency=2, duration_s=0.01, warmup_s=0.0, min_completions=10_000, max_duration_s=0.3)
    )
    assert 0.25 <= result.duration_s <= 0.3 + 0.05 + 0.5  # the bound, one answer, slack for a loaded machine
    assert 2 <= result.requests <= 14


def test_errors_are_counted_with_the_first_message_and_not_timed() -> None:
    async def send(n: int) -> None:
        await asyncio.sleep(0.001)
        if n % 2:
            raise RuntimeError(f"HTTP 503 for request {n}")

    result = asyncio.run(run_load(send, concurrency=2, duration_s=0.2, warmup_s=0.0))
    assert result.errors > 0 and result.requests > 0
    assert abs(result.errors - result.requests) <= 2
    assert result.first_error is not None and result.first_error.startswith("RuntimeError: HTTP 503")
    assert result.summary()["errors"] == result.errors


def test_max_requests_bounds_the_run() -> None:
    async def send(n: int) -> None:
        await asyncio.sleep(0)

    result = asyncio.run(run_load(send, concurrency=3, duration_s=10.0, warmup_s=0.0, max_requests=30))
    assert 30 <= result.requests <= 32  # workers past the check may finish the request they started


def test_sweep_runs_each_level_and_summary_has_no_raw_latencies() -> None:
    async def send(n: int) -> None:
        await asyncio.sleep(0.005)

    results = asyncio.run(sweep(send, [1, 3], duration_s=0.1, warmup_s=0.0, label="x"))
    assert [r.concurrency for r in results] == [1, 3]
    summary = results[1].summary()
    assert "latencies_ms" not in summary
    assert summary["label"] == "x" and summary["requests"] == results[1].requests
    assert results[1].throughput_rps > results[0].throughput_rps


def test_items_per_second_counts_batched_requests() -> None:
    result = LoadResult("t", 1, duration_s=2.0, latencies_ms=[1.0] * 10, items_per_request=8)
    assert result.throughput_rps == 5.0 and result.items_per_s == 40.0


def test_invalid_concurrency_is_refused() -> None:
    async def send(n: int) -> None:
        return None

    with pytest.raises(ValueError, match="concurrency"):
        asyncio.run(run_load(send, concurrency=0, duration_s=0.1))


def test_window_callbacks_bracket_exactly_the_measured_answers() -> None:
    events: list[tuple[str, float]] = []
    finished: list[float] = []

    async def send(n: int) -> None:
        await asyncio.sleep(0.005)
        finished.append(time.perf_counter())

    def on_window(edge: str) -> None:
        events.append((edge, time.perf_counter()))

    result = asyncio.run(run_load(send, concurrency=3, duration_s=0.1, warmup_s=0.02, on_window=on_window))
    assert [edge for edge, _ in events] == ["start", "end"]
    start, end = result.window
    assert events[0][1] >= start and events[1][1] >= end
    inside = [t for t in finished if start < t <= end]
    assert abs(len(inside) - result.requests) <= 3  # the sender's clock reads just before the generator's
    assert result.duration_s == pytest.approx(end - start)
