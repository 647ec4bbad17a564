"""A single-flight, time-bounded cache of one async computation (the served version, /readyz).

Callers that find no fresh value share ONE in-flight computation instead of queueing behind a
lock and each repeating it: when Triton hangs, N concurrent requests wait for one deadline, not
N deadlines one after another. A failure (an :class:`~frontend_api.errors.ApiError`) is kept for a
short time too, so requests in the meantime fail at once instead of asking a dead server again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from frontend_api.errors import ApiError

T = TypeVar("T")


def _retrieve(task: asyncio.Task[object]) -> None:
    # Every waiter may have gone (cancelled requests): mark the outcome as seen so asyncio does not log it.
    if not task.cancelled():
        task.exception()


class SingleFlight(Generic[T]):
    """``await get()`` returns ``compute()``'s latest result while younger than ``ttl_s``; otherwise runs
    it once for every concurrent caller. Its :class:`ApiError` is re-raised for ``error_ttl_s``."""

    def __init__(self, compute: Callable[[], Awaitable[T]], ttl_s: float, error_ttl_s: float) -> None:
        self.compute = compute
        self.ttl_s = ttl_s
        self.error_ttl_s = error_ttl_s
        self._value: T | None = None
        self._fresh_until = 0.0
        self._error: ApiError | None = None
        self._error_until = 0.0
        self._task: asyncio.Task[T] | None = None

    async def get(self) -> T:
        now = time.monotonic()
        if self._value is not None and now < self._fresh_until:
            return self._value
        error = self._error
        if error is not None and now < self._error_until:
            # A fresh instance: re-raising one object would grow its traceback with every request.
            raise type(error)(f"{error.detail} (failed {self.error_ttl_s:g} s ago or less)", headers=error.headers)
        task = self._task
        if task is None:
            task = self._task = asyncio.create_task(self._run())
            task.add_done_callback(_retrieve)
        # shield: a caller that gives up (client gone) must not cancel the computation the others wait for
        return await asyncio.shield(task)

    async def _run(self) -> T:
        try:
            value = await self.compute()
        except ApiError as exc:
            self._error, self._error_until = exc, time.monotonic() + self.error_ttl_s
            raise
        finally:
            self._task = None
        self._value, self._fresh_until = value, time.monotonic() + self.ttl_s
        self._error = None
        return value

    @property
    def last(self) -> T | None:
        """The latest result, fresh or not (None before the first, or after :meth:`invalidate`)."""
        return self._value

    def invalidate(self) -> None:
        """Forget the value (and a remembered failure): the next ``get()`` computes again."""
        self._value, self._error = None, None
