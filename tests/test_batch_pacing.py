"""The job's pacing (batch.pacing): how many requests a worker keeps at Triton, from Triton's statistics."""

from __future__ import annotations

import asyncio

import pytest

from batch.pacing import InFlightLimit, OthersWatch, Pacer


def test_nobody_else_reads_as_idle_after_the_first_sample() -> None:
    watch = OthersWatch(window_s=2.0)
    assert watch.observe(0.0, triton_finished=100, own_before=0, own_after=0)  # no history yet: assume company
    assert not watch.observe(0.5, triton_finished=110, own_before=10, own_after=10)
    assert not watch.observe(1.0, triton_finished=130, own_before=30, own_after=30)


def test_others_requests_within_the_window_read_as_company_until_they_age_out() -> None:
    watch = OthersWatch(window_s=2.0)
    watch.observe(0.0, 0, 0, 0)
    assert not watch.observe(0.5, 10, 10, 10)
    assert watch.observe(1.0, 25, 20, 20)  # 5 requests of someone else's
    assert watch.observe(2.5, 35, 30, 30)  # still within 2 s of the lower count
    assert not watch.observe(3.5, 45, 40, 40)  # 2 s later nobody else came


def test_ours_finishing_while_the_statistics_travel_never_read_as_someone_else() -> None:
    """Triton counts a request when it finishes it, the worker when the answer arrives. The case measured with
    eight requests in flight: four of ours finished after Triton's count and were counted by the worker before
    the statistics arrived (a dip of four), the next sample back in step. A single own count read after Triton's
    saw the dip and then a rise of four: someone else, for 2 s."""
    watch = OthersWatch(window_s=2.0)
    watch.observe(0.0, 100, 100, 100)
    assert not watch.observe(0.5, 200, 197, 204)  # three answered but not yet counted before the question
    assert not watch.observe(1.0, 300, 300, 300)
    assert not watch.observe(1.5, 400, 396, 400)
    assert watch.observe(2.0, 503, 500, 500)  # then three of someone else's


def test_one_request_of_someone_else_is_not_enough() -> None:
    watch = OthersWatch(window_s=2.0)
    watch.observe(0.0, 0, 0, 0)
    assert not watch.observe(0.5, 11, 10, 10)
    assert watch.observe(1.0, 22, 20, 20)


def test_a_lower_limit_admits_nobody_until_the_requests_in_flight_are_below_it() -> None:
    async def scenario() -> list[str]:
        limit = InFlightLimit(3)
        events: list[str] = []
        release = asyncio.Event()

        async def request(name: str) -> None:
            async with limit.slot():
                events.append(f"{name} in")
                await release.wait()

        first = [asyncio.create_task(request(f"r{i}")) for i in range(3)]
        await asyncio.sleep(0)
        await limit.set_limit(1)
        late = asyncio.create_task(request("late"))
        await asyncio.sleep(0.01)
        assert limit.held == 3 and "late in" not in events
        release.set()
        await asyncio.gather(*first, late)
        return events

    assert asyncio.run(scenario())[-1] == "late in"


def test_a_raised_limit_admits_the_waiting_requests() -> None:
    async def scenario() -> int:
        limit = InFlightLimit(1)
        most = 0
        gate = asyncio.Event()

        async def request() -> None:
            nonlocal most
            async with limit.slot():
                most = max(most, limit.held)
                await gate.wait()

        tasks = [asyncio.create_task(request()) for _ in range(4)]
        await asyncio.sleep(0.01)
        assert limit.held == 1
        await limit.set_limit(3)
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(*tasks)
        return most

    assert asyncio.run(scenario()) == 3


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InFlightLimit(0)


def test_the_pacer_keeps_the_busy_limit_when_triton_statistics_cannot_be_read() -> None:
    async def scenario() -> tuple[int, int, int]:
        limit = InFlightLimit(1)
        counts = iter([0, 10])
        failing = False

        async def triton_finished() -> int:
            if failing:
                raise ConnectionError("Triton went away")
            return next(counts)

        own = {"n": 0}
        pacer = Pacer(
            limit,
            busy=1,
            idle=4,
            interval_s=0.01,
            window_s=1.0,
            triton_finished=triton_finished,
            own_finished=lambda: own["n"],
        )
        await pacer.step()  # first sample: company assumed
        first = limit.limit
        own["n"] = 10
        await pacer.step()  # only our requests since: idle
        second = limit.limit
        failing = True
        await pacer.step()
        return first, second, limit.limit

    assert asyncio.run(scenario()) == (1, 4, 1)
