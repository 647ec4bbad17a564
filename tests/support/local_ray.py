"""A local Ray for a test module, and what a stopped Ray leaves behind.

Ray 2.60's two per-node agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) report the raylet's death to
the GCS and wait up to 60 s for a GCS that is already gone (a fixed timeout in ``publish_error_to_driver``). After a
``ray.shutdown()`` or a killed driver they can outlive the test that started them, and the session's leak check,
by a minute (docs/batch.md, "Local Ray"). Every process a Ray starts inherits the environment of the process that
starts it, so a marker variable set for that moment finds them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

MARKER_ENV = "MTC_TEST_RAY_MARKER"
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of the live processes whose environment holds ``MTC_TEST_RAY_MARKER=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
    return found


def stop_leftover_agents(marker: str, timeout: float = 30) -> None:
    """Wait until nothing but Ray's agents carries ``marker`` (failing after ``timeout``), then stop the agents."""
    gone_by = time.monotonic() + timeout
    while any(not command.startswith(RAY_AGENTS) for command in processes_with(marker).values()):
        assert time.monotonic() < gone_by, f"a stopped Ray is still running: {processes_with(marker)}"
        time.sleep(0.5)
    for pid in processes_with(marker):
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
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(environment)
        stop_leftover_agents(marker)
