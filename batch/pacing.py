"""How many requests a job's worker keeps at Triton: more while Triton serves nobody else, few as soon as it does.

Throughput wants a queue at Triton: with no request waiting, each instance idles for a round trip between one
job request and the next (measured here: one-row requests, one per instance at a time, left the two CPU instances
busy 75-80% of the time). Interactive latency wants no queue: Triton never interrupts an execution, and its
dynamic batcher fills a batch across priority levels, so a job request waiting in the queue runs inside the next
interactive request's batch.

So a worker keeps ``busy`` requests in flight (:attr:`BatchSettings.triton_in_flight`) while anyone else is using
the model, and ``idle`` (:attr:`BatchSettings.triton_in_flight_idle`) while nobody is. "Anyone else" is read from
Triton's own statistics, every ``interval_s``: the model's finished requests (all versions, success and failure)
minus the ones this worker finished (:class:`OthersWatch` brackets the difference). Two requests of someone else's
in the last ``window_s`` seconds, or statistics that cannot be read, mean ``busy``. It is a per-worker rule: with
several workers on one model each sees the others' requests as someone else's and stays at ``busy`` (one worker, the
default, is enough to keep a CPU Triton's queue full).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

ANSWERS_FIRST = 3
"""Event-loop turns the pacer yields after Triton's statistics arrive, before it reads its own count: an answer
whose bytes came in first has its task resumed (and counted) by then."""


class InFlightLimit:
    """An asyncio semaphore whose limit can change while requests hold it."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"an in-flight limit must be at least 1, got {limit}")
        self._limit = limit
        self._held = 0
        self._changed = asyncio.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def held(self) -> int:
        return self._held

    async def set_limit(self, limit: int) -> None:
        """Change the limit; a lower one lets the requests already in flight finish and admits none until below."""
        if limit < 1:
            raise ValueError(f"an in-flight limit must be at least 1, got {limit}")
        async with self._changed:
            self._limit = limit
            self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the slots for the duration of the block (waiting first-come first-served for it)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._held < self._limit)
            self._held += 1
        try:
            yield
        finally:
            async with self._changed:
                self._held -= 1
                self._changed.notify_all()


class OthersWatch:
    """Whether anyone but this worker finished at least ``min_requests`` requests of a model in the last
    ``window_s`` seconds.

    Fed with Triton's count of the model's finished requests and this worker's own count read twice: just
    before asking Triton and just after its answer. Triton counts a request when it finishes it, the worker
    when the answer arrives, so neither own count is Triton's count of ours, but they bracket it: every answer
    counted before the question had finished at Triton, so ``triton - own_before`` is at least the others' count
    at that moment, and once the answers that came in with the statistics are counted (:meth:`Pacer.step` lets
    them in first), ``triton - own_after`` is at most it. Someone else is there when the latest sample's lower
    figure is above the lowest upper figure in the window by ``min_requests``.

    Measured before the bracket (one own count, read after Triton's): with eight requests in flight, three or
    four of ours finishing while the statistics were on their way read as a dip, and the recovery from it as
    someone else's requests: about one false alarm per minute of a job, each 2 s at one request in flight
    (12,000 reviews, 2026-12-02).
    """

    def __init__(self, window_s: float, min_requests: int = 2) -> None:
        self.window_s = window_s
        self.min_requests = min_requests
        self._samples: deque[tuple[float, int]] = deque()  # (time, the others' count at most)

    def observe(self, now: float, triton_finished: int, own_before: int, own_after: int) -> bool:
        """Record a sample; True when others' requests finished within the window (or it is the first sample)."""
        self._samples.append((now, triton_finished - own_before))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        if len(self._samples) == 1:
            return True
        at_least = triton_finished - own_after
        return at_least - min(at_most for _, at_most in self._samples) >= self.min_requests

    def forget(self) -> None:
        """Drop the samples (statistics could not be read: the next sample starts a new window)."""
        self._samples.clear()


class Pacer:
    """Sets an :class:`InFlightLimit` to ``idle`` or ``busy`` from :class:`OthersWatch` samples, every
    ``interval_s``, until stopped. ``triton_finished`` reads Triton's count for the model (raising when it
    cannot); ``own_finished`` is this worker's count."""

    def __init__(
        self,
        limit: InFlightLimit,
        *,
        busy: int,
        idle: int,
        interval_s: float,
        window_s: float,
        triton_finished: Callable[[], Awaitable[int]],
        own_finished: Callable[[], int],
    ) -> None:
        self.limit, self.busy, self.idle = limit, busy, idle
        self.interval_s = interval_s
        self.watch = OthersWatch(window_s)
        self._triton_finished, self._own_finished = triton_finished, own_finished

    async def step(self) -> None:
        """One sample: read both counts, set the limit."""
        loop = asyncio.get_running_loop()
        own_before = self._own_finished()
        try:
            triton = await self._triton_finished()
        except Exception:  # statistics not readable (HTTP error, permissions, a restart): assume company
            self.watch.forget()
            others = True
        else:
            for _ in range(ANSWERS_FIRST):  # answers that arrived before the statistics are counted first
                await asyncio.sleep(0)
            others = self.watch.observe(loop.time(), triton, own_before, self._own_finished())
        await self.limit.set_limit(self.busy if others else self.idle)

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.interval_s)
