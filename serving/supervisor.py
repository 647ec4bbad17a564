"""Keep a set of services running: restart one that dies, stop everything on a crash loop.

One supervisor for every kind of server (the local S3 server, Triton, the facade, the dashboard): it
only needs :class:`serving.processes.Service`. A service that exits is stopped (its whole process
group and shared memory cleaned up) and started again after an exponential backoff (1 s, 2 s, 4 s,
... up to ``max_backoff_s``); the others keep running meanwhile. ``max_restarts`` restarts within
``window_s`` is a crash loop: :meth:`Supervisor.watch` raises :class:`CrashLoop` and the caller stops
everything. Every decision is printed and appended to the service's own log.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from serving.processes import ProcessStartError, Service


class CrashLoop(RuntimeError):
    """A service died too often within the restart window; the message names it and its last exit."""


@dataclass(frozen=True)
class RestartPolicy:
    """How often and how fast a dead service is restarted."""

    max_restarts: int = 5
    """Restarts allowed within ``window_s``; one more death is a crash loop."""
    window_s: float = 300.0
    backoff_s: float = 1.0
    """Delay before the first restart; doubled for each restart still inside the window."""
    max_backoff_s: float = 30.0

    def delay(self, recent_restarts: int) -> float:
        return float(min(self.backoff_s * 2**recent_restarts, self.max_backoff_s))


@dataclass
class _Watched:
    service: Service
    restarts: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    last_exit: int | None = None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        import signal

        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Starts services in order, restarts the ones that die, stops them all in reverse order."""

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        *,
        echo: Callable[[str], None] = lambda line: print(line, flush=True),
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.5,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._echo = echo
        self._clock = clock
        self._poll_s = poll_s
        self._watched: list[_Watched] = []

    @property
    def services(self) -> list[Service]:
        return [w.service for w in self._watched]

    def restarts(self, name: str) -> int:
        """Restarts of the named service still inside the window."""
        return next(len(w.restarts) for w in self._watched if w.service.name == name)

    def start(self, service: Service) -> None:
        """Start ``service`` now (raise if it cannot start) and watch it from then on."""
        service.start()
        self._watched.append(_Watched(service))

    def check(self) -> None:
        """One round: schedule a restart for each dead service, run the restarts that are due."""
        now = self._clock()
        for watched in self._watched:
            service = watched.service
            if watched.restart_at is None:
                if service.running:
                    continue
                self._schedule(watched, now)
            elif now >= watched.restart_at:
                watched.restart_at = None
                self._restart(watched)

    def _schedule(self, watched: _Watched, now: float) -> None:
        service = watched.service
        watched.last_exit = service.returncode
        while watched.restarts and now - watched.restarts[0] > self.policy.window_s:
            watched.restarts.popleft()
        how = describe_exit(watched.last_exit)
        if len(watched.restarts) >= self.policy.max_restarts:
            times = f"{len(watched.restarts)} time{'' if len(watched.restarts) == 1 else 's'}"
            message = (
                f"{service.name} {how}; it was restarted {times} within "
                f"{self.policy.window_s:.0f}s: a crash loop, stopping everything"
            )
            service.note(message)
            raise CrashLoop(message)
        delay = self.policy.delay(len(watched.restarts))
        message = (
            f"{service.name} {how}; restarting in {delay:.0f}s "
            f"(restart {len(watched.restarts) + 1} of at most {self.policy.max_restarts} "
            f"within {self.policy.window_s:.0f}s)"
        )
        self._echo(f"==> {message}")
        service.note(message)
        service.stop()  # its process group and shared memory, before the new one starts
        watched.restarts.append(now)
        watched.restart_at = now + delay

    def _restart(self, watched: _Watched) -> None:
        service = watched.service
        began = self._clock()
        try:
            service.start()
        except ProcessStartError as exc:  # TritonStartError and S3ServerError are ProcessStartErrors too
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._echo(f"==> {service.name} did not come back: {first_line}")
            service.note(f"restart failed: {first_line}")
            return  # not running: the next check counts it as another death
        message = f"{service.name} restarted ({self._clock() - began:.1f}s)"
        self._echo(f"==> {message}")
        service.note(message)

    def watch(self, until: Callable[[], bool] = lambda: False) -> None:
        """Check every ``poll_s`` until ``until()`` is true; raises :class:`CrashLoop`."""
        while not until():
            self.check()
            time.sleep(self._poll_s)

    def stop(self) -> None:
        """Stop every service, last started first, saying how long each took."""
        while self._watched:
            service = self._watched.pop().service
            began = self._clock()
            service.stop()
            self._echo(f"    stopped {service.name} ({self._clock() - began:.1f}s)")

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
