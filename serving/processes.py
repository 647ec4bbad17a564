"""Child processes with a bounded start, a clean stop, and the protocol the stack's supervisor uses.

Used by ``make run`` (serving.stack) and by the integration tests to run the local S3 server,
the facade and the dashboard the same way. :class:`Service` is what the supervisor needs from any
server this project starts (a :class:`ManagedProcess`, ``serving.triton.TritonServer``,
``serving.s3.S3Server``); :func:`stop_on_signals` makes a launcher stop its children when it is
asked to stop by SIGTERM or SIGHUP (systemd, Docker, CI runners, a closed terminal), not only on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Protocol

RUN_ID_ENV = "MTC_RUN_ID"
"""Set by the test session (tests/conftest.py) and inherited by every process it starts: the session-end
leak check finds survivors by it in ``/proc/<pid>/environ``, and Triton's shared-memory regions carry it
in their names (``serving.triton``)."""


class ProcessStartError(RuntimeError):
    """A child process exited or never became ready; the message carries its log tail."""


class Service(Protocol):
    """A server process the stack starts, watches and restarts (see ``serving.supervisor``)."""

    name: str

    @property
    def running(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def returncode(self) -> int | None:
        """Exit status of a process that has exited and not been stopped yet; None otherwise."""
        ...

    def start(self) -> object:
        """Start and wait until ready; raise (after cleaning up) when it cannot."""
        ...

    def stop(self) -> None:
        """Stop it and everything it started; safe to call at any time, also after a crash."""
        ...

    def note(self, message: str) -> None:
        """Append a line to the service's log (restarts are recorded next to the crash they follow)."""
        ...


def serve_until_stopped(service: Service, ready: Callable[[], str], died: Callable[[], str]) -> int:
    """A launcher's main loop: start ``service``, print ``ready()``, wait until Ctrl-C / SIGTERM / SIGHUP
    (0) or until the service dies on its own (``died()`` on stderr, 1); stop it in every case.

    Call :func:`stop_on_signals` first. A start-up failure prints ``error: ...`` and returns 1.
    """
    try:
        service.start()
        print(ready(), flush=True)
        while service.running:
            time.sleep(0.5)
        print(died(), file=sys.stderr)
        return 1
    except ProcessStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP through stop_on_signals
        return 0
    finally:
        service.stop()


def stop_on_signals() -> None:
    """In a launcher's main(): SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does.

    Python's default SIGTERM kills the interpreter at once: no ``finally``, no ``__exit__``, so every
    child is left running (re-parented to init). Raising KeyboardInterrupt instead unwinds through the
    same clean-up as Ctrl-C. Once one of these signals has arrived, further ones are only reported, so
    a second Ctrl-C or SIGTERM cannot interrupt the stopping itself (each stop is bounded: SIGKILL after
    a timeout). A signal ignored when the process started (``nohup``, SIGINT in a background job) stays
    ignored.
    """
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]

    def while_stopping(signum: int, frame: FrameType | None) -> None:
        print(f"({signal.Signals(signum).name} received: already stopping)", file=sys.stderr, flush=True)

    def first(signum: int, frame: FrameType | None) -> None:
        for other in signals:
            if signal.getsignal(other) is first:
                signal.signal(other, while_stopping)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in signals:
        if signum != signal.SIGTERM and signal.getsignal(signum) is signal.SIG_IGN:
            continue
        signal.signal(signum, first)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return f"--- last {min(lines, len(text))} lines of {path} ---\n" + "\n".join(text[-lines:])


def append_note(log_file: Path | None, message: str) -> None:
    """One timestamped line at the end of a service log (nothing when there is no log yet)."""
    if log_file is None or not log_file.parent.is_dir():
        return
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"[mtc {stamp}] {message}\n")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that nothing listens on right now (all held open while choosing)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until_ready(
    process: subprocess.Popen[bytes],
    is_ready: Callable[[], bool],
    timeout_s: float,
    *,
    exited: Callable[[int], Exception],
    timed_out: Callable[[], Exception],
) -> None:
    """Poll ``is_ready`` until it is true; raise ``exited(code)`` if the process ends first, ``timed_out()``
    after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise exited(code)
        if is_ready():
            return
        time.sleep(0.2)
    raise timed_out()


@dataclass
class ManagedProcess:
    """One server process, started in its own process group and logged to a file.

    The first start truncates the log; a restart of the same object appends to it, so the crash
    stays readable above the restart.
    """

    name: str
    command: Sequence[str]
    ready_url: str
    log_file: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    startup_timeout: float = 60.0
    stop_timeout: float = 10.0
    probe_timeout: float = 10.0
    """HTTP timeout of one readiness probe: a dashboard page takes seconds to render on a busy 2-core
    machine, and a probe that gives up sooner only adds another render to the queue."""

    def __post_init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def is_ready(self) -> bool:
        """Readiness probe: ``ready_url`` answers 2xx (subclasses may check more)."""
        return http_ok(self.ready_url, timeout=self.probe_timeout)

    def note(self, message: str) -> None:
        append_note(self.log_file, message)

    def start(self) -> ManagedProcess:
        if self._process is not None:
            raise ProcessStartError(f"{self.name} already started")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        with open(self.log_file, "wb" if self._starts == 1 else "ab") as log:
            self._process = subprocess.Popen(
                list(self.command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:  # also Ctrl-C / SIGTERM during start-up: never leave a half-started child
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        wait_until_ready(
            self._process,
            self.is_ready,
            self.startup_timeout,
            exited=lambda code: ProcessStartError(
                f"{self.name} exited with code {code} during start-up.\n{tail(self.log_file)}"
            ),
            timed_out=lambda: ProcessStartError(
                f"{self.name} was not ready at {self.ready_url} after {self.startup_timeout:.0f}s.\n"
                + tail(self.log_file)
            ),
        )

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL the whole process group after ``stop_timeout``.

        SIGTERM rather than SIGINT: a process started from a non-interactive shell inherits
        SIGINT as ignored, and uvicorn, panel and SeaweedFS all shut down cleanly on SIGTERM. The
        group is killed even when its leader has already exited (a crash can leave children behind).
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def python_module(module: str, *args: str) -> list[str]:
    """A command line running ``python -m module`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
