"""``python -m bench.arena``: ONNX Runtime's CPU arena kept vs shrunk after each run: memory and throughput.

Two scratch copies of ``--repository`` (weights hard-linked), identical but for the parameter
``memory.enable_memory_arena_shrinkage`` in every ONNX model's configs (``config.pbtxt`` and
``configs/cpu.pbtxt``): ``keep`` without it (ONNX Runtime's default: an arena keeps the peak of the largest
batch for the life of the session), ``shrink`` with ``cpu:0``. Each is served by its own real Triton (CPU
configs, as ``make run`` serves them); the two run side by side and are loaded in alternating rounds:
``--clients`` closed-loop clients per task, one pre-tokenized / preprocessed validation input per request,
straight to Triton (the facade is the same on both sides). Afterwards, the resident memory of each Triton
(server and its Python-backend stubs, from ``/proc``) once it has answered everything queued. Writes
``arena.md`` and ``arena.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.inputs import load_samples
from bench.loadgen import LoadResult, run_load, triton_sender
from bench.machine import describe_machine
from bench.servers import request_times
from bench.soak.rss import descendants, label_of, process_table, rss_bytes
from bench.suite import triton_requests
from bench.variants import link_or_copy
from export.publish import latest_version_dir
from export.triton_config import (
    ARENA_SHRINKAGE,
    CPU_ARENA_SHRINKAGE,
    cpu_config_path,
    parse_model_config,
    render_model_config,
)
from serving.processes import stop_on_signals
from serving.triton import PROJECT_ROOT, TritonServer
from taskspec import CONFIG_FILE, get_task

VARIANTS = {"keep": None, "shrink": CPU_ARENA_SHRINKAGE}
ONNX_PLATFORM = "onnxruntime_onnx"


def write_variant(source: Path, target: Path, tasks: Sequence[str], shrinkage: str | None) -> None:
    """``tasks`` of ``source`` into ``target``: files hard-linked, configs rewritten with or without shrinkage."""
    if target.exists():
        shutil.rmtree(target)
    for task in tasks:
        for path in (source / task).rglob("*"):
            if not path.is_file():
                continue
            destination = target / task / path.relative_to(source / task)
            is_config = path.name == CONFIG_FILE or path == cpu_config_path(source / task)
            if not is_config:
                link_or_copy(path, destination)
                continue
            config = parse_model_config(path.read_text())
            if config.platform == ONNX_PLATFORM:
                if shrinkage is None:
                    config.parameters.pop(ARENA_SHRINKAGE, None)
                else:
                    config.parameters[ARENA_SHRINKAGE].string_value = shrinkage
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(f"# bench/arena.py variant: shrinkage {shrinkage}\n" + render_model_config(config))


def triton_rss_mib(server: TritonServer) -> dict[str, float]:
    """Resident MiB of ``tritonserver`` and each of its stubs (by model instance), and their total."""
    assert server.pid is not None
    table = process_table()
    out: dict[str, float] = {}
    for pid in [server.pid, *descendants(server.pid, table)]:
        size = rss_bytes(pid)
        info = table.get(pid)
        if size is None or info is None:
            continue
        name = label_of(info)
        out[name] = out.get(name, 0.0) + round(size / 2**20, 1)
    out["total"] = round(sum(out.values()), 1)
    return out


def wait_idle(server: TritonServer, models: Sequence[str], timeout_s: float = 120.0) -> None:
    """Until Triton has answered every request it queued: a client that stops leaves work behind (a closed-loop
    window cancels its waits, not Triton's queue), and memory read meanwhile would be mid-batch."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        counts = tuple(request_times(server, m)["count"] for m in models)
        if counts == last:
            return
        last = counts
        time.sleep(1.0)


@dataclass
class ArenaResults:
    clients: int
    rounds: list[dict[str, dict[str, LoadResult]]] = field(default_factory=list)
    """one entry per round: variant -> task -> the load level"""
    loads: list[tuple[float, float]] = field(default_factory=list)
    rss_after_first_round: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_at_end: dict[str, dict[str, float]] = field(default_factory=dict)

    def mean_rps(self, variant: str, task: str) -> float:
        values = [r[variant][task].throughput_rps for r in self.rounds]
        return sum(values) / len(values)


async def load_round(
    servers: dict[str, TritonServer],
    requests: dict[str, list[dict[str, np.ndarray]]],
    clients: int,
    duration_s: float,
    warmup_s: float,
) -> dict[str, dict[str, LoadResult]]:
    """One round: each variant in turn, each task in turn, ``clients`` closed-loop clients straight to Triton."""
    import tritonclient.http.aio as aio

    out: dict[str, dict[str, LoadResult]] = {}
    for variant, server in servers.items():
        client = aio.InferenceServerClient(f"{server.host}:{server.http_port}", conn_limit=clients * 2)
        try:
            out[variant] = {}
            for task, feeds in requests.items():
                send = triton_sender(client, task, get_task(task), feeds)
                result = await run_load(send, concurrency=clients, duration_s=duration_s, warmup_s=warmup_s)
                out[variant][task] = result
                print(f"    {variant} {task}: {result.throughput_rps:.1f} req/s, errors {result.errors}", flush=True)
        finally:
            await client.close()
    return out


def run(
    repository: Path,
    out: Path,
    *,
    tasks: Sequence[str] = ("sentiment", "disaster", "pose"),
    clients: int = 16,
    duration_s: float = 8.0,
    warmup_s: float = 1.0,
    rounds: int = 2,
) -> ArenaResults:
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    tasks = [t for t in tasks if latest_version_dir(repository, t) is not None]
    requests = {}
    for task in tasks:
        version_dir = latest_version_dir(repository, task)
        assert version_dir is not None
        requests[task] = triton_requests(get_task(task), version_dir, load_samples(get_task(task)))
    results = ArenaResults(clients=clients)
    with ExitStack() as stack:
        servers = {}
        for variant, shrinkage in VARIANTS.items():
            root = out / f"repository-{variant}"
            write_variant(repository, root, tasks, shrinkage)
            servers[variant] = stack.enter_context(
                TritonServer.on_free_ports(root, log_file=out / "logs" / f"triton-{variant}.log", startup_timeout=300)
            )
        for number in range(rounds):
            print(f"==> round {number + 1} of {rounds}", flush=True)
            before = round(os.getloadavg()[0], 2)
            results.rounds.append(asyncio.run(load_round(servers, requests, clients, duration_s, warmup_s)))
            results.loads.append((before, round(os.getloadavg()[0], 2)))
            for server in servers.values():
                wait_idle(server, tasks)
            if number == 0:
                results.rss_after_first_round = {v: triton_rss_mib(s) for v, s in servers.items()}
        results.rss_at_end = {v: triton_rss_mib(s) for v, s in servers.items()}
    finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    (out / "arena.md").write_text(markdown(results, tasks, f"{machine.summary()}; finished {finished}"))
    document = {
        "machine": machine.summary(),
        "finished": finished,
        "clients": clients,
        "loads": results.loads,
        "rounds": [
            {v: {t: r.summary() for t, r in level.items()} for v, level in rnd.items()} for rnd in results.rounds
        ],
        "rss_after_first_round_mib": results.rss_after_first_round,
        "rss_at_end_mib": results.rss_at_end,
    }
    (out / "arena.json").write_text(json.dumps(document, indent=2))
    return results


def markdown(results: ArenaResults, tasks: Sequence[str], machine_line: str) -> str:
    lines = [
        "# CPU arena kept vs shrunk after each run (python -m bench.arena)",
        "",
        f"Machine: {machine_line}. Load average (1 min) before -> after each round: {results.loads}.",
        f"{results.clients} clients per task, straight to Triton; requests/s are means over {len(results.rounds)} "
        "alternating rounds.",
        "",
        "| task | keep req/s | shrink req/s | shrink / keep |",
        "|---|---:|---:|---:|",
    ]
    for task in tasks:
        keep, shrink = results.mean_rps("keep", task), results.mean_rps("shrink", task)
        lines.append(f"| {task} | {keep:.1f} | {shrink:.1f} | {shrink / keep if keep else float('nan'):.2f} |")
    lines += ["", "| Triton RSS MiB (server + stubs) | keep | shrink |", "|---|---:|---:|"]
    for label, table in (("after the first round", results.rss_after_first_round), ("at the end", results.rss_at_end)):
        lines.append(f"| {label} | {table['keep']['total']:.0f} | {table['shrink']['total']:.0f} |")
    names = sorted(set(results.rss_at_end["keep"]) | set(results.rss_at_end["shrink"]))
    lines += ["", "| process (at the end) | keep MiB | shrink MiB |", "|---|---:|---:|"]
    for name in names:
        keep_mib, shrink_mib = results.rss_at_end["keep"].get(name), results.rss_at_end["shrink"].get(name)
        lines.append(f"| {name} | {keep_mib} | {shrink_mib} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    stop_on_signals()  # SIGTERM / SIGHUP stop the servers this started, like Ctrl-C
    parser = argparse.ArgumentParser(prog="python -m bench.arena", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "model_repository", help="published models")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "arena")
    parser.add_argument("--tasks", default="sentiment,disaster,pose", help="comma-separated task names")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients per task")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per task and variant")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    args = parser.parse_args(argv)
    try:
        run(
            args.repository,
            args.out,
            tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
            clients=args.clients,
            duration_s=args.duration,
            rounds=max(1, args.rounds),
        )
    except KeyboardInterrupt:
        print("==> stopped before the end: no report", file=sys.stderr)
        return 130
    print((args.out / "arena.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
