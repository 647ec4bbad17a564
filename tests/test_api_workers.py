"""``MTC_API_WORKERS``: one facade port served by several uvicorn worker processes, and ``/metrics`` counting the
requests of all of them (prometheus_client's multiprocess mode, in a folder the launcher makes and removes)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from bench.soak.rss import descendants, process_table
from frontend_api.metrics import MULTIPROCESS_DIR_ENV
from serving.processes import ManagedProcess, python_module
from serving.triton import PROJECT_ROOT, free_port

WORKERS = 2
REQUESTS = 60


def environment(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


def healthz_count(metrics: str) -> float:
    match = re.search(r'^mtc_api_requests_total\{endpoint="/healthz",method="GET",status="200"\} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.integration
def test_two_workers_share_the_port_and_metrics_count_the_requests_of_both(tmp_path: Path) -> None:
    port = free_port()
    facade = ManagedProcess(
        name="facade",
        command=python_module("frontend_api"),
        ready_url=f"http://127.0.0.1:{port}/healthz",
        log_file=tmp_path / "facade.log",
        env={
            "MTC_API_HOST": "127.0.0.1",
            "MTC_API_PORT": str(port),
            "MTC_API_WORKERS": str(WORKERS),
            "MTC_API_ACCESS_LOG": "false",
            "MTC_API_TRITON_URL": f"127.0.0.1:{free_port()}",  # no Triton needed: /healthz and /metrics only
            "MTC_API_TRITON_GRPC_URL": f"127.0.0.1:{free_port()}",
        },
        cwd=PROJECT_ROOT,
        startup_timeout=120,
    )
    with facade:
        assert facade.pid is not None
        table = process_table()
        workers = [pid for pid in descendants(facade.pid, table) if any("spawn_main" in arg for arg in table[pid].argv)]
        assert len(workers) == WORKERS
        metrics_dir = Path(environment(workers[0])[MULTIPROCESS_DIR_ENV])
        before = healthz_count(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)  # start-up probes
        # A new connection per request: the kernel hands each to whichever worker accepts it first.
        for _ in range(REQUESTS):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        # Every request is counted, whichever worker answers /metrics.
        counts = {healthz_count(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text) for _ in range(6)}
        assert counts == {before + REQUESTS}
        # Both workers answered some of them: each wrote its own counter file.
        writers = {path.name for path in metrics_dir.glob("counter_*.db")}
        assert writers == {f"counter_{pid}.db" for pid in workers}
    assert not metrics_dir.exists(), "the launcher leaves no metrics folder behind"
