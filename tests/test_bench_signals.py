"""Every benchmark launcher stops the servers it started when it is sent SIGTERM (a CI runner cancelling
`make bench` or `make soak`), as the serving launchers do (tests/test_serving_signals.py)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from serving.triton import shm_regions
from tests.test_serving_signals import launched, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_models import build_tiny_repository

    return build_tiny_repository(tmp_path_factory.mktemp("tiny-models"))


@pytest.mark.parametrize("launcher", ["bench", "bench.facade", "bench.soak"])
def test_sigterm_stops_every_server_a_bench_launcher_started(launcher: str, tiny_models: Path, tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "out")]
    args = {
        "bench": ["bench", "--quick", "--no-facade-comparisons", "--repository", str(tiny_models), *out],
        "bench.facade": ["bench.facade", "--repository", str(tiny_models), *out],
        "bench.soak": ["bench.soak", "--repository", str(tiny_models), "--s3-data", str(tmp_path / "s3"), *out],
    }[launcher]
    with launched(args) as running:
        if launcher == "bench.soak":
            running.wait_for("==> soaking", timeout=300)  # the stack is up and 64 clients are sending
        assert wait_until(lambda: any("tritonserver" in c for _, c in running.children()), timeout=300), "".join(
            running.output
        )
        running.process.send_signal(signal.SIGTERM)
        try:
            code = running.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{launcher} did not exit within 120 s of SIGTERM")
        assert code == 130, "".join(running.output)
        assert running.children() == [], "processes left running after SIGTERM"
        assert list(shm_regions(running.run_id)) == [], "shared-memory regions left after SIGTERM"
