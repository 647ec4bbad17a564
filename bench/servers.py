"""The servers a benchmark run starts for itself: real Triton, facades, a static image host, uvicorn apps;
and what Triton's statistics say about a measured window.

All on free local ports, logs under the run's output folder, stopped on exit, the same way
``make run`` (serving.stack) starts them.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serving.processes import ManagedProcess, python_module
from serving.triton import PROJECT_ROOT, TritonServer, free_port


@contextmanager
def triton_server(repository: Path, log_dir: Path) -> Iterator[TritonServer]:
    """Real Triton (pip-wheel binary, local onnxruntime backend) serving ``repository``."""
    server = TritonServer.on_free_ports(repository, log_file=log_dir / "triton.log", startup_timeout=300)
    with server:
        yield server


def facade_env(triton: TritonServer, repository: Path, allowed_http_hosts: Sequence[str] = ()) -> dict[str, str]:
    """The facade's environment for a benchmark: the same variables serving/stack.py passes."""
    return {
        "MTC_API_TRITON_URL": f"{triton.host}:{triton.http_port}",
        "MTC_API_TRITON_GRPC_URL": f"{triton.host}:{triton.grpc_port}",
        "MTC_API_MODEL_REPOSITORY": str(repository),
        "MTC_API_ALLOWED_HTTP_HOSTS": json.dumps(list(allowed_http_hosts)),
        # The load generator opens up to 64 concurrent requests; none may be shed with 429.
        "MTC_API_MAX_IN_FLIGHT": "1024",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def facade_process(
    triton: TritonServer,
    repository: Path,
    log_dir: Path,
    *,
    allowed_http_hosts: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    name: str = "facade",
    ready_path: str = "/readyz",
) -> tuple[ManagedProcess, str]:
    """The facade in front of ``triton`` through its checked launcher (``python -m frontend_api``, as ``make run``
    starts it; one uvicorn worker, no access log) on a free loopback port, not started yet: (process, base URL).

    ``extra_env`` adds or overrides ``MTC_API_*`` settings. Ready when ``ready_path`` answers 200: ``/readyz``
    (Triton and every registered task's model ready) or, for a repository of only some tasks, ``/healthz``.
    The benchmarks and the integration tests that need the real launcher start it here.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    listen = {"MTC_API_HOST": "127.0.0.1", "MTC_API_PORT": str(port), "MTC_API_ACCESS_LOG": "false"}
    env = {**facade_env(triton, repository, allowed_http_hosts), **listen, **(extra_env or {})}
    process = ManagedProcess(
        name=name,
        command=python_module("frontend_api"),
        ready_url=f"{url}{ready_path}",
        log_file=log_dir / f"{name}.log",
        env=env,
        cwd=PROJECT_ROOT,
        startup_timeout=120,
    )
    return process, url


@contextmanager
def facade_server(
    triton: TritonServer,
    repository: Path,
    log_dir: Path,
    *,
    allowed_http_hosts: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    name: str = "facade",
) -> Iterator[str]:
    """:func:`facade_process`, started; yields its base URL and stops it on exit."""
    process, url = facade_process(
        triton, repository, log_dir, allowed_http_hosts=allowed_http_hosts, extra_env=extra_env, name=name
    )
    with process:
        yield url


@contextmanager
def image_host(folder: Path, log_dir: Path) -> Iterator[str]:
    """A static HTTP server for ``folder`` (the photos /v1/pose fetches); yields its ``host:port``."""
    port = free_port()
    first = next(p for p in sorted(folder.iterdir()) if p.is_file())
    process = ManagedProcess(
        name="image host",
        command=python_module("http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)),
        ready_url=f"http://127.0.0.1:{port}/{first.name}",
        log_file=log_dir / "image-host.log",
        startup_timeout=30,
    )
    with process:
        yield f"127.0.0.1:{port}"


@contextmanager
def triton_for(
    repository: Path, models: Sequence[str], log_dir: Path, *, config_name: str | None = None
) -> Iterator[TritonServer]:
    """Real Triton serving ``models`` of ``repository`` on free ports; ``config_name`` as in :class:`TritonServer`
    (None: the CPU variants, ``configs/cpu.pbtxt``; "": every model's ``config.pbtxt``)."""
    server = TritonServer.on_free_ports(
        repository,
        model_control_mode="explicit",
        load_models=list(models),
        model_config_name=config_name,
        log_file=log_dir / f"facade-bench-triton-{'cpu' if config_name is None else config_name or 'default'}.log",
        startup_timeout=300,
    )
    with server:
        yield server


@contextmanager
def facade_for(
    triton: TritonServer,
    repository: Path,
    log_dir: Path,
    tasks: Sequence[str],
    *,
    padding: str,
    name: str,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """A facade process (uvicorn, no access log) on ``triton``, with ``env`` added to its settings (e.g.
    ``MTC_API_TRITON_PROTOCOL``); yields its base URL."""
    extra_env = {
        "MTC_API_TASKS": json.dumps(list(tasks)),
        "MTC_API_TEXT_PADDING": padding,
        # Closed-loop load at concurrency 32 on a small CPU queues for seconds; a request the facade gave up on
        # (504) would still be computed by Triton, wasting the capacity being measured.
        "MTC_API_TRITON_TIMEOUT_S": "300",
        **(env or {}),
    }
    with facade_server(triton, repository, log_dir, extra_env=extra_env, name=name) as url:
        yield url


@contextmanager
def factory_server(name: str, factory: str, log_dir: Path, env: Mapping[str, str]) -> Iterator[str]:
    """A uvicorn process serving ``factory`` (``module:function``) on a free port; yields its base URL."""
    port = free_port()
    process = ManagedProcess(
        name=name,
        command=python_module(
            "uvicorn", factory, "--factory", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"
        ),
        ready_url=f"http://127.0.0.1:{port}/healthz",
        log_file=log_dir / f"{name.replace(' ', '-')}.log",
        env=dict(env),
        cwd=PROJECT_ROOT,
        startup_timeout=300,
    )
    with process:
        yield f"http://127.0.0.1:{port}"


def model_stats(triton: TritonServer, model: str) -> dict[str, Any]:
    """Triton's statistics of one model (all versions summed by Triton per version entry)."""
    with urllib.request.urlopen(f"{triton.url}/v2/models/{model}/stats", timeout=10) as response:
        stats: dict[str, Any] = json.load(response)
    return stats


def executed_batches(triton: TritonServer, model: str) -> dict[int, int]:
    """Executed batch size -> number of executions, summed over the model's versions."""
    counts: dict[int, int] = {}
    for entry in model_stats(triton, model).get("model_stats", []):
        for batch in entry.get("batch_stats", []):
            size = int(batch["batch_size"])
            counts[size] = counts.get(size, 0) + int(batch["compute_infer"]["count"])
    return counts


def request_times(triton: TritonServer, model: str) -> dict[str, float]:
    """Cumulative successful requests and their queue / compute nanoseconds (all versions)."""
    totals = {"count": 0.0, "queue_ns": 0.0, "compute_ns": 0.0}
    for entry in model_stats(triton, model).get("model_stats", []):
        stats = entry.get("inference_stats", {})
        totals["count"] += float(stats.get("success", {}).get("count", 0))
        totals["queue_ns"] += float(stats.get("queue", {}).get("ns", 0))
        for part in ("compute_input", "compute_infer", "compute_output"):
            totals["compute_ns"] += float(stats.get(part, {}).get("ns", 0))
    return totals


def triton_split_ms(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float] | None:
    """Mean queue and compute milliseconds per request between two :func:`request_times` snapshots."""
    count = after["count"] - before["count"]
    if count <= 0:
        return None
    return {
        "queue_ms": (after["queue_ns"] - before["queue_ns"]) / count / 1e6,
        "compute_ms": (after["compute_ns"] - before["compute_ns"]) / count / 1e6,
    }


def batches_between(before: Mapping[int, int], after: Mapping[int, int]) -> dict[int, int]:
    """Executions per batch size that happened between two :func:`executed_batches` snapshots."""
    delta = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    return {size: count for size, count in sorted(delta.items()) if count > 0}
