"""``python -m bench.capacity``: what one facade process carries when the model costs nothing (issue 14).

Serves the null models of :mod:`bench.null_models` (the text tasks' tensors, no compute) from a scratch copy
of ``--repository`` in a real Triton, puts one facade process per ``--facades`` variant in front (``python -m
frontend_api`` as ``make run`` starts it; a variant names the facade's protocol to Triton and its number of
worker processes: ``grpc``, ``http``, ``grpc:2``), and measures, for each variant in turn within every round
(A/B/A/B: background load on a shared machine hits all alike):

1. **single-text capacity**: requests/s at saturation, one short text per request (``POST /v1/sentiment``),
   closed loop at each ``--concurrency`` level; the same requests sent pre-tokenized straight to Triton
   beside it say how much of the ceiling is Triton's;
2. **64-text capacity**: requests/s (and texts/s) with 64 short texts per request;
3. **added latency**: p50 at concurrency 1 of one ~60-token text, facade vs a direct pre-tokenized
   ``tritonclient`` call, alternating (:func:`bench.comparisons.compare_overhead`);
4. **gRPC vs HTTP to Triton**: the same pre-tokenized request through ``tritonclient``'s asyncio HTTP and
   gRPC clients, p50 at concurrency 1 (alternating) and requests/s plus the client's CPU time per request
   at saturation: what the facade's Triton hop would cost over either protocol.

Every figure carries the 1-minute load average before and after it (the machine may be shared: a figure
taken while it was busy says so), and the facade's CPU time per answer (all its worker processes). Writes
``capacity.md`` and ``capacity.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.comparisons import alternating_latency, closed_loop, compare_overhead, load_texts
from bench.loadgen import LoadResult, Send, run_load, triton_sender
from bench.machine import describe_machine
from bench.measurements import LatencyStats, OverheadResult
from bench.null_models import NullRepository, build_null_repository
from bench.servers import facade_for, triton_for
from bench.soak.rss import descendants, process_table
from preprocess.text import TextEncoder
from serving.processes import stop_on_signals
from serving.triton import PROJECT_ROOT, TritonServer
from taskspec import DISASTER, SENTIMENT, TaskSpec

BATCH_TEXTS = 64
SINGLE_LEVELS = (16, 64)
BATCH_LEVELS = (2, 8)
PROTOCOL_CONCURRENCY = 32


@dataclass(frozen=True)
class Variant:
    """One facade configuration: its protocol to Triton and its number of worker processes."""

    protocol: str
    workers: int = 1

    @property
    def name(self) -> str:
        return self.protocol if self.workers == 1 else f"{self.protocol}:{self.workers}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        protocol, _, workers = text.strip().partition(":")
        if protocol not in ("grpc", "http") or (workers and not workers.isdigit()) or workers == "0":
            raise argparse.ArgumentTypeError(f"{text!r}: give grpc or http, optionally :<workers> (e.g. grpc:2)")
        return cls(protocol, int(workers or 1))

    def env(self) -> dict[str, str]:
        return {"MTC_API_TRITON_PROTOCOL": self.protocol, "MTC_API_WORKERS": str(self.workers)}


def facade_pid(port: int) -> int | None:
    """The facade process this run started on ``port`` (a descendant running ``python -m frontend_api``)."""
    table = process_table()
    for pid in descendants(os.getpid(), table):
        if "frontend_api" in table[pid].argv:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"MTC_API_PORT={port}".encode() in environ:
                return pid
    return None


def _own_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds so far of ``pid`` and its live descendants (a facade's worker processes;
    ``/proc/<pid>/stat``); None when unknown."""
    if pid is None or not Path(f"/proc/{pid}").exists():
        return None
    return _own_cpu_seconds(pid) + sum(_own_cpu_seconds(child) for child in descendants(pid, process_table()))


def load_average() -> float:
    """The 1-minute load average (what else runs on the cores the benchmark shares)."""
    return round(os.getloadavg()[0], 2)


@dataclass
class Figure:
    """One measured load level, with the machine's load average around it and the client's CPU per request."""

    name: str
    result: LoadResult
    load_before: float
    load_after: float
    client_cpu_ms_per_request: float | None = None
    facade_cpu_ms_per_request: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.result.summary(),
            "load_before": self.load_before,
            "load_after": self.load_after,
            "client_cpu_ms_per_request": self.client_cpu_ms_per_request,
            "facade_cpu_ms_per_request": self.facade_cpu_ms_per_request,
        }


@dataclass
class ProtocolLatency:
    """HTTP vs gRPC, concurrency 1, alternating request by request."""

    http: LatencyStats
    grpc: LatencyStats
    load_before: float
    load_after: float


@dataclass
class CapacityResults:
    """Everything ``capacity.md`` is written from."""

    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    overheads: list[tuple[str, OverheadResult, tuple[float, float]]] = field(default_factory=list)
    """(variant, facade vs direct at concurrency 1, load average before and after), one per variant and round."""
    protocol_latency: ProtocolLatency | None = None

    def best(self, prefix: str) -> Figure | None:
        """The highest-throughput figure whose name starts with ``prefix`` (saturation)."""
        matching = [f for f in self.figures if f.name.startswith(prefix) and f.result.requests]
        return max(matching, key=lambda f: f.result.throughput_rps, default=None)


async def measured(
    name: str,
    run: Callable[[], Awaitable[LoadResult]],
    results: CapacityResults,
    *,
    cpu: bool = False,
    facade: int | None = None,
) -> Figure:
    """Run one load level, note the load average around it, the facade's CPU per answer (``facade``: its pid)
    and, with ``cpu``, this process's (the client's)."""
    before, cpu_before, facade_before = load_average(), time.process_time(), cpu_seconds(facade)
    result = await run()
    answers = max(result.requests, 1)
    cpu_ms = (time.process_time() - cpu_before) * 1000 / answers if cpu else None
    facade_after = cpu_seconds(facade)
    facade_ms = (
        (facade_after - facade_before) * 1000 / answers
        if facade_after is not None and facade_before is not None
        else None
    )
    figure = Figure(name, result, before, load_average(), round(cpu_ms, 3) if cpu_ms is not None else None)
    figure.facade_cpu_ms_per_request = round(facade_ms, 3) if facade_ms is not None else None
    results.figures.append(figure)
    print(
        f"    {name}: {result.throughput_rps:.1f} req/s, p50 {result.p(50):.2f} ms, errors {result.errors}, "
        f"load {figure.load_before} -> {figure.load_after}",
        flush=True,
    )
    return figure


def grpc_sender(client: Any, model: str, spec: TaskSpec, requests: Sequence[Mapping[str, np.ndarray]]) -> Send:
    """:func:`bench.loadgen.triton_sender` over ``tritonclient.grpc.aio``."""
    from tritonclient.grpc import InferInput, InferRequestedOutput
    from tritonclient.utils import np_to_triton_dtype

    def tensors(feeds: Mapping[str, np.ndarray]) -> list[Any]:
        out = []
        for t in spec.inputs:
            tensor = InferInput(t.name, list(feeds[t.name].shape), np_to_triton_dtype(feeds[t.name].dtype))
            tensor.set_data_from_numpy(feeds[t.name])
            out.append(tensor)
        return out

    prepared = [tensors(feeds) for feeds in requests]
    outputs = [InferRequestedOutput(spec.output.name)]

    async def send(n: int) -> None:
        result = await client.infer(model, prepared[n % len(prepared)], outputs=outputs)
        if result.as_numpy(spec.output.name) is None:
            raise RuntimeError(f"{model} returned no {spec.output.name}")

    return send


async def measure(
    facades: Mapping[str, str],
    triton: TritonServer,
    null: NullRepository,
    *,
    duration_s: float,
    warmup_s: float,
    single_levels: Sequence[int],
    batch_levels: Sequence[int],
    rounds: int,
) -> CapacityResults:
    """The four measurements on running servers (Triton serving ``null``; ``facades``: variant name -> base URL of
    a facade in front of it)."""
    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http.aio as http_aio

    results = CapacityResults()
    tweets, source = load_texts(DISASTER, limit=BATCH_TEXTS)
    reviews, review_source = load_texts(SENTIMENT)
    results.notes.append(f"Short texts: {len(tweets)} tweets from {source}; the 60-token text from {review_source}.")
    encoder = TextEncoder.from_version_dir(null.version_dir("sentiment"))
    single_bodies = [{"texts": [t]} for t in tweets]
    batch_body = [{"texts": list(tweets[:BATCH_TEXTS])}]
    tokenized = [encoder.batch([t]).inputs(SENTIMENT.input_names) for t in tweets]
    pids = {name: facade_pid(int(url.rsplit(":", 1)[1])) for name, url in facades.items()}
    for name, pid in pids.items():
        if pid is None:
            results.notes.append(f"The process of facade {name} was not found: no facade CPU figures for it.")
    http = http_aio.InferenceServerClient(f"{triton.host}:{triton.http_port}", conn_limit=256)
    grpc = grpc_aio.InferenceServerClient(f"{triton.host}:{triton.grpc_port}")
    try:
        direct_http = triton_sender(http, "sentiment", SENTIMENT, tokenized)
        direct_grpc = grpc_sender(grpc, "sentiment", SENTIMENT, tokenized)
        for round_number in range(1, rounds + 1):
            print(f"==> round {round_number}: single-text and 64-text capacity", flush=True)
            # Variants in turn, their order reversed every other round (A/B, B/A, ...).
            order = list(facades.items())[:: 1 if round_number % 2 else -1]
            for level in single_levels:
                for name, url in order:
                    await measured(
                        f"single facade[{name}] c{level}",
                        partial(closed_loop, f"{url}/v1/sentiment", single_bodies, level, duration_s, warmup_s, "1"),
                        results,
                        facade=pids[name],
                    )
                await measured(
                    f"single direct-http c{level}",
                    partial(run_load, direct_http, concurrency=level, duration_s=duration_s, warmup_s=warmup_s),
                    results,
                )
            for level in batch_levels:
                for name, url in order:
                    await measured(
                        f"batch64 facade[{name}] c{level}",
                        partial(closed_loop, f"{url}/v1/sentiment", batch_body, level, duration_s, warmup_s, "64"),
                        results,
                        facade=pids[name],
                    )
            print(f"==> round {round_number}: gRPC vs HTTP to Triton", flush=True)
            for name, send in (("http", direct_http), ("grpc", direct_grpc)):
                await measured(
                    f"protocol {name} c{PROTOCOL_CONCURRENCY}",
                    partial(run_load, send, concurrency=PROTOCOL_CONCURRENCY, duration_s=duration_s, warmup_s=warmup_s),
                    results,
                    cpu=True,
                )
            print(f"==> round {round_number}: p50 at concurrency 1, facade vs direct", flush=True)
            for name, url in order:
                before = load_average()
                overhead = await compare_overhead(url, triton, null.version_dir("sentiment"), reviews)
                results.overheads.append((name, overhead, (before, load_average())))
                print(f"    {name}: {overhead.facade.p50_ms:.2f} vs {overhead.direct.p50_ms:.2f} ms", flush=True)
        print("==> p50 at concurrency 1: HTTP vs gRPC, direct", flush=True)
        before = load_average()
        latencies = await alternating_latency({"http": direct_http, "grpc": direct_grpc}, 500)
        results.protocol_latency = ProtocolLatency(
            LatencyStats.of(latencies["http"]), LatencyStats.of(latencies["grpc"]), before, load_average()
        )
    finally:
        await http.close()
        await grpc.close()
    return results


def markdown(results: CapacityResults, machine_line: str) -> str:
    """The report: headline figures first, then every load level with its load average."""
    lines = ["# Facade capacity on null models (python -m bench.capacity)", "", f"Machine: {machine_line}", ""]
    lines += [f"- {note}" for note in results.notes]
    lines += ["", "| headline | figure | load average (1 min) before -> after |", "|---|---:|---|"]
    variants = sorted({f.name.split("[", 1)[1].split("]", 1)[0] for f in results.figures if "[" in f.name})
    headlines = [("single direct-http", "single-text requests/s, pre-tokenized straight to Triton (HTTP)", 1)]
    for variant in variants:
        headlines += [
            (f"single facade[{variant}]", f"single-text requests/s at saturation, facade {variant}", 1),
            (
                f"batch64 facade[{variant}]",
                f"{BATCH_TEXTS}-text requests/s at saturation, facade {variant} (texts/s)",
                BATCH_TEXTS,
            ),
        ]
    for prefix, label, items in headlines:
        best = results.best(prefix)
        if best is not None:
            rps = best.result.throughput_rps
            shown = f"{rps:.1f} ({rps * items:.0f})" if items > 1 else f"{rps:.1f}"
            lines.append(
                f"| {label} (best of its levels and rounds: c{best.result.concurrency}) | {shown} | "
                f"{best.load_before} -> {best.load_after} |"
            )
    for name, o, (before, after) in results.overheads:
        lines.append(
            f"| p50 at concurrency 1, {o.text_tokens}-token text: facade {name} vs direct tritonclient | "
            f"{o.facade.p50_ms:.2f} vs {o.direct.p50_ms:.2f} ms (added {o.facade.p50_ms - o.direct.p50_ms:.2f} ms) | "
            f"{before} -> {after} |"
        )
    if results.protocol_latency is not None:
        p = results.protocol_latency
        lines.append(
            f"| p50 at concurrency 1, pre-tokenized: HTTP vs gRPC client | "
            f"{p.http.p50_ms:.2f} vs {p.grpc.p50_ms:.2f} ms | "
            f"{p.load_before} -> {p.load_after} |"
        )
    lines += [
        "",
        "| load level | requests/s | p50 ms | p99 ms | errors | facade CPU ms/request | client CPU ms/request "
        "| load before -> after |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for f in results.figures:
        r = f.result
        cpu = f"{f.client_cpu_ms_per_request:.3f}" if f.client_cpu_ms_per_request is not None else "-"
        own = f"{f.facade_cpu_ms_per_request:.3f}" if f.facade_cpu_ms_per_request is not None else "-"
        lines.append(
            f"| {f.name} | {r.throughput_rps:.1f} | {r.p(50):.2f} | {r.p(99):.2f} | {r.errors} | {own} | {cpu} | "
            f"{f.load_before} -> {f.load_after} |"
        )
    return "\n".join(lines) + "\n"


def run(
    repository: Path,
    out: Path,
    *,
    variants: Sequence[Variant] = (Variant("grpc"), Variant("http")),
    duration_s: float = 8.0,
    warmup_s: float = 1.0,
    single_levels: Sequence[int] = SINGLE_LEVELS,
    batch_levels: Sequence[int] = BATCH_LEVELS,
    rounds: int = 1,
) -> CapacityResults:
    """Build the null repository, start Triton and one facade per variant, measure, write ``capacity.md`` /
    ``.json``."""
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "logs"
    machine = describe_machine()
    null = build_null_repository(repository, out / "null-repository", [SENTIMENT, DISASTER])
    if "sentiment" not in null.versions:
        raise SystemExit(f"no published sentiment model in {repository}: nothing to copy the null model beside")
    tasks = sorted(null.versions)
    with triton_for(null.root, tasks, log_dir) as triton, ExitStack() as facades:
        urls = {
            v.name: facades.enter_context(
                facade_for(triton, null.root, log_dir, tasks, padding="buckets", name=f"facade-{v.name}", env=v.env())
            )
            for v in variants
        }
        results = asyncio.run(
            measure(
                urls,
                triton,
                null,
                duration_s=duration_s,
                warmup_s=warmup_s,
                single_levels=single_levels,
                batch_levels=batch_levels,
                rounds=rounds,
            )
        )
    results.notes[:0] = [
        f"Null models (bench/null_models.py) as version {null.versions} beside the real {null.real_versions} of "
        f"{repository}; Triton with --model-config-name=cpu; one facade (python -m frontend_api) per variant: "
        f"{', '.join(v.name for v in variants)} (protocol to Triton[:worker processes]).",
        f"Load generator, facade and Triton share the machine's {machine.cores} cores.",
    ]
    finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    (out / "capacity.md").write_text(markdown(results, f"{machine.summary()}; finished {finished}"))
    document = {
        "machine": asdict(machine),
        "finished": finished,
        "notes": results.notes,
        "figures": [f.summary() for f in results.figures],
        "overheads": [{"variant": name, **asdict(o), "load": list(load)} for name, o, load in results.overheads],
        "protocol_latency": asdict(results.protocol_latency) if results.protocol_latency else None,
    }
    (out / "capacity.json").write_text(json.dumps(document, indent=2))
    return results


def _levels(text: str) -> tuple[int, ...]:
    levels = tuple(int(x) for x in text.split(",") if x.strip())
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("give positive integers, e.g. 16,64")
    return levels


def main(argv: Sequence[str] | None = None) -> int:
    stop_on_signals()  # SIGTERM / SIGHUP stop the servers this started, like Ctrl-C
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "model_repository", help="published models")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "capacity")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per load level")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds discarded before each")
    parser.add_argument("--concurrency", type=_levels, default=SINGLE_LEVELS, help="single-text client levels")
    parser.add_argument("--batch-concurrency", type=_levels, default=BATCH_LEVELS, help="64-text client levels")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the capacity levels (noisy, shared machines)")
    parser.add_argument(
        "--facades",
        type=lambda text: [Variant.parse(v) for v in text.split(",") if v.strip()],
        default=[Variant("grpc"), Variant("http")],
        help="facade variants measured in turn: protocol to Triton[:workers], e.g. grpc,http or grpc:1,grpc:2",
    )
    args = parser.parse_args(argv)
    try:
        results = run(
            args.repository,
            args.out,
            variants=args.facades,
            duration_s=args.duration,
            warmup_s=args.warmup,
            single_levels=args.concurrency,
            batch_levels=args.batch_concurrency,
            rounds=max(1, args.rounds),
        )
    except KeyboardInterrupt:
        print("==> stopped before the end: no report", file=sys.stderr)
        return 130
    print(markdown(results, "see capacity.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
