"""Every launcher stops what it started when it is sent SIGTERM (systemd, Docker and CI runners send it).

Each launcher runs as a subprocess with its own ``MTC_RUN_ID``, which every process it starts inherits
and which Triton puts in its shared-memory region names. After SIGTERM to the launcher alone, no
process with that id may be left (``/proc/*/environ``) and no ``/dev/shm/mtc_<id>_*`` region.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from serving.processes import RUN_ID_ENV, free_ports
from serving.triton import PROJECT_ROOT, shm_regions
from tests.conftest import make_tiny_repository, processes_with_run_id

pytestmark = pytest.mark.integration


class Launcher:
    """A launcher subprocess whose output lines can be awaited."""

    def __init__(self, args: list[str], env: Mapping[str, str], run_id: str) -> None:
        self.run_id = run_id
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env, RUN_ID_ENV: run_id},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.process.poll() is None, f"launcher exited early:\n{''.join(self.output)}"
                continue
            self.output.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} after {timeout:.0f}s:\n{''.join(self.output)}")

    def children(self) -> list[tuple[int, str]]:
        return [(pid, cmd) for pid, cmd in processes_with_run_id(self.run_id) if pid != self.process.pid]


@contextmanager
def launched(args: list[str], env: Mapping[str, str] | None = None) -> Iterator[Launcher]:
    """Start a launcher; whatever it leaves behind is killed afterwards (the test has asserted by then)."""
    launcher = Launcher(args, env or {}, run_id=uuid.uuid4().hex[:12])
    try:
        yield launcher
    finally:
        if launcher.process.poll() is None:
            launcher.process.kill()
        launcher.process.wait()
        for pid, _ in processes_with_run_id(launcher.run_id):
            os.kill(pid, signal.SIGKILL)
        for region in shm_regions(launcher.run_id):
            region.unlink(missing_ok=True)


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def assert_sigterm_stops_everything(launcher: Launcher, started: list[str]) -> None:
    """SIGTERM the launcher alone; it exits cleanly and nothing it started survives."""
    children = launcher.children()
    for name in started:
        assert any(name in command for _, command in children), f"expected a {name} process: {children}"
    launcher.process.send_signal(signal.SIGTERM)
    try:
        code = launcher.process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("the launcher did not exit within 90 s of SIGTERM")
    assert code == 0, "".join(launcher.output)
    assert launcher.children() == [], "processes left running after SIGTERM"
    assert list(shm_regions(launcher.run_id)) == [], "shared-memory regions left after SIGTERM"


def test_triton_launcher_stops_the_server_and_its_stubs_on_sigterm(tiny_repository: Path) -> None:
    http, grpc, metrics = free_ports(3)
    args = ["serving.triton", "--model-repository", str(tiny_repository), "--http-port", str(http)]
    with launched([*args, "--grpc-port", str(grpc), "--metrics-port", str(metrics)]) as launcher:
        launcher.wait_for("Triton ready", timeout=120)
        assert list(shm_regions(launcher.run_id)), "expected the Python backend's shared memory"
        assert_sigterm_stops_everything(launcher, ["tritonserver", "triton_python_backend_stub"])


def test_triton_launcher_sigterm_during_start_up_stops_the_server(tiny_repository: Path) -> None:
    http, grpc, metrics = free_ports(3)
    args = ["serving.triton", "--model-repository", str(tiny_repository), "--http-port", str(http)]
    with launched([*args, "--grpc-port", str(grpc), "--metrics-port", str(metrics)]) as launcher:
        assert wait_until(lambda: any("tritonserver" in c for _, c in launcher.children()), timeout=60)
        assert_sigterm_stops_everything(launcher, ["tritonserver"])


def test_s3_launcher_stops_seaweedfs_on_sigterm(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    args = ["serving.s3", "--data-dir", str(tmp_path / "data"), "--port", str(port)]
    with launched([*args, "--log-file", str(tmp_path / "s3.log")]) as launcher:
        launcher.wait_for("S3 ready", timeout=60)
        assert_sigterm_stops_everything(launcher, ["weed mini"])


def stack_env(tmp_path: Path) -> dict[str, str]:
    repository = make_tiny_repository(tmp_path / "repo")
    names = ["TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT", "API_PORT", "DASHBOARD_PORT", "S3_PORT"]
    return {
        **{f"MTC_{name}": str(port) for name, port in zip(names, free_ports(len(names)), strict=True)},
        "MTC_MODEL_REPOSITORY": str(repository),
        "MTC_BUILD_MISSING_MODELS": "false",
        "MTC_LOG_DIR": str(tmp_path / "logs"),
        "MTC_S3_DATA_DIR": str(tmp_path / "s3"),
    }


@pytest.mark.slow
def test_stack_stops_every_service_on_sigterm(tmp_path: Path) -> None:
    with launched(["serving.stack"], stack_env(tmp_path)) as launcher:
        launcher.wait_for("The platform is up", timeout=300)
        assert_sigterm_stops_everything(
            launcher, ["weed mini", "tritonserver", "triton_python_backend_stub", "-m frontend_api", "-m dashboard"]
        )


@pytest.mark.slow
def test_stack_sigterm_while_triton_starts_stops_what_already_runs(tmp_path: Path) -> None:
    with launched(["serving.stack"], stack_env(tmp_path)) as launcher:
        launcher.wait_for("==> Triton on", timeout=120)
        assert wait_until(lambda: any("tritonserver" in c for _, c in launcher.children()), timeout=60)
        assert_sigterm_stops_everything(launcher, ["weed mini", "tritonserver"])


def test_stack_help_lists_the_settings_and_starts_nothing(tmp_path: Path) -> None:
    """``--help`` used to start the stack (and build the quick models into the repository); it now only prints."""
    env = {**os.environ, "MTC_MODEL_REPOSITORY": str(tmp_path / "empty-repository")}
    shown = subprocess.run(
        [sys.executable, "-m", "serving.stack", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "usage: python -m serving.stack" in shown.stdout and "MTC_API_PORT" in shown.stdout
    assert not (tmp_path / "empty-repository").exists()
    wrong = subprocess.run(
        [sys.executable, "-m", "serving.stack", "--port", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert wrong.returncode == 2 and "unrecognized arguments: --port 1" in wrong.stderr
    assert not (tmp_path / "empty-repository").exists()
