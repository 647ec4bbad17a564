"""Child processes with a bounded start (an HTTP readiness URL) and a clean stop.

Used by ``make run`` (serving.stack) and by the integration tests to run the local S3 server,
the facade and the dashboard the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


class ProcessStartError(RuntimeError):
    """A child process exited or never became ready; the message carries its log tail."""


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


@dataclass
class ManagedProcess:
    """One server process, started in its own process group and logged to a file."""

    name: str
    command: Sequence[str]
    ready_url: str
    log_file: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    startup_timeout: float = 60.0
    stop_timeout: float = 10.0

    def __post_init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> ManagedProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "wb") as log:
            self._process = subprocess.Popen(
                list(self.command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise ProcessStartError(f"{self.name} exited with code {code} during start-up.\n{tail(self.log_file)}")
            if http_ok(self.ready_url):
                return self
            time.sleep(0.2)
        self.stop()
        raise ProcessStartError(
            f"{self.name} was not ready at {self.ready_url} after {self.startup_timeout:.0f}s.\n{tail(self.log_file)}"
        )

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL the whole process group after ``stop_timeout``.

        SIGTERM rather than SIGINT: a process started from a non-interactive shell inherits
        SIGINT as ignored, and uvicorn, panel and moto all shut down cleanly on SIGTERM.
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


def s3_server(host: str, port: int, log_file: Path) -> ManagedProcess:
    """A local S3-compatible server (moto in server mode), in memory: fresh on every start."""
    return ManagedProcess(
        name="S3 server (moto)",
        command=python_module("moto.server", "-H", host, "-p", str(port)),
        ready_url=f"http://{host}:{port}/moto-api/",
        log_file=log_file,
        env={"AWS_EC2_METADATA_DISABLED": "true"},
        startup_timeout=30,
    )
