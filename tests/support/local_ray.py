"""A local Ray for a test module, and what a stopped Ray leaves behind.

Ray 2.60's two per-node agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) report the raylet's death to
the GCS and wait up to 60 s for a GCS that is already gone (a fixed timeout in ``publish_error_to_driver``). After a
``ray.shutdown()`` or a killed driver they can outlive the test that started them, and the session's leak check,
by a minute (docs/batch.md, "Local Ray").

A Ray's processes are found by its session folder (``/tmp/ray/session_...``): the raylet and GCS name it on their
command line, and every process of that Ray keeps log files open in it. Not by an environment variable: the agents
retitle themselves (setproctitle), which overwrites the start of what ``/proc/<pid>/environ`` shows.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

MARKER_ENV = "MTC_TEST_RAY_MARKER"
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
_SESSION_ARGUMENT = re.compile(r"--session[-_]dir=(\S+)")


def _command(entry: Path) -> str:
    return (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()


def session_of(marker: str) -> str:
    """The session folder of the Ray started by a process whose environment held ``MTC_TEST_RAY_MARKER=marker``
    (read from its raylet's or GCS's command line, while they run)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                found = _SESSION_ARGUMENT.search(_command(entry))
                if found is not None:
                    return found.group(1)
        except OSError:
            continue
    raise AssertionError(f"no running Ray process carries {MARKER_ENV}={marker}")


def processes_of(session: str) -> dict[int, str]:
    """pid -> command line of the live processes of the Ray whose session folder is ``session`` (this one, a driver
    that may keep Ray's log files open, left out)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = _command(entry)
            if session in command or any(
                os.readlink(fd).startswith(session) for fd in (entry / "fd").iterdir() if fd.is_symlink()
            ):
                found[int(entry.name)] = command
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def stop_leftover_agents(session: str, timeout: float = 30) -> None:
    """Wait until nothing but its agents is left of the Ray of ``session`` (failing after ``timeout``), then stop
    the agents."""
    gone_by = time.monotonic() + timeout
    while any(not command.startswith(RAY_AGENTS) for command in processes_of(session).values()):
        assert time.monotonic() < gone_by, f"a stopped Ray is still running: {processes_of(session)}"
        time.sleep(0.5)
    for pid in processes_of(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def local_ray() -> Iterator[str]:
    """This process's own local Ray (2 CPUs, no dashboard) for the block; yields its GCS address. Afterwards Ray is
    shut down, the environment ``ray.init`` changed (RAY_AUTH_MODE, PYTHONBREAKPOINT...) restored, and its agents
    stopped."""
    import ray

    environment = dict(os.environ)
    marker = uuid.uuid4().hex
    os.environ[MARKER_ENV] = marker
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 << 20, log_to_driver=False)
    session: str | None = None
    try:
        session = session_of(marker)
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(environment)
        if session is not None:  # None: session_of failed, and its error is the one to see
            stop_leftover_agents(session)
