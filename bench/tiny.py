"""``python -m bench.tiny``: the accurate text models against their tiny variants, through the facade.

For each model (``sentiment`` and ``sentiment_tiny``, ``disaster`` and ``disaster_tiny`` by default) of a
published repository: one real Triton serving every model as CPU hosts do (``configs/cpu.pbtxt``: the int8
file, single-threaded instances), one facade, and closed-loop load of single-text requests
(:func:`bench.loadgen.run_load`) at concurrency 1 (latency) and 32 (throughput), one model at a time; with the
held-out accuracy of each model's card (``metrics.json``). Writes ``tiny.json`` and ``tiny.md`` into ``--out``
and prints the table; the machine's load average is recorded next to every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.inputs import load_samples
from bench.loadgen import run_load
from bench.servers import facade_for, triton_for
from bench.suite import facade_sender
from export.publish import latest_version_dir
from export.served import read_metrics
from taskspec import get_task

DEFAULT_MODELS = ("sentiment", "sentiment_tiny", "disaster", "disaster_tiny")


async def _measure(url: str, model: str, levels: Sequence[int], duration_s: float) -> list[dict[str, Any]]:
    spec = get_task(model)
    samples = load_samples(spec)
    rows = []
    limits = httpx.Limits(max_connections=max(levels) * 2, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        for concurrency in levels:
            send = facade_sender(client, spec, samples, ())
            load_before = os.getloadavg()[0]
            result = await run_load(send, concurrency=concurrency, duration_s=duration_s, label=model)
            summary = result.summary()
            summary.update(model=model, load_average_1m=round(max(load_before, os.getloadavg()[0]), 1))
            rows.append(summary)
            print(json.dumps(summary), flush=True)
    return rows


def _card(repository: Path, model: str) -> dict[str, Any]:
    version = latest_version_dir(repository, model)
    metrics = (read_metrics(version) if version else None) or {}
    return {
        "version": version.name if version else None,
        "accuracy": metrics.get("test", {}).get("accuracy"),
        "accuracy_int8": metrics.get("int8", {}).get("test", {}).get("accuracy"),
        "n": metrics.get("test", {}).get("n"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True, help="published model repository")
    parser.add_argument("--out", type=Path, default=Path("bench/results/tiny"), help="where tiny.json/.md go")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    parser.add_argument("--concurrency", default="1,32", help="client levels")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per level")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    levels = [int(c) for c in args.concurrency.split(",")]
    # The facade serves each variant's task and is ready once that task's own model is: Triton loads the parents
    # too (without them /readyz never answers), and only `models` are measured.
    tasks = sorted({get_task(m).task_name for m in models} | set(models))
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with (
        triton_for(args.repository, tasks, args.out) as triton,
        facade_for(triton, args.repository, args.out, tasks, padding="buckets", name="tiny-bench") as url,
    ):
        for model in models:
            rows += asyncio.run(_measure(url, model, levels, args.duration))
    cards = {model: _card(args.repository, model) for model in models}
    (args.out / "tiny.json").write_text(json.dumps({"cards": cards, "load": rows}, indent=2) + "\n")
    lines = [
        f"| model | held-out accuracy fp32 / int8 (n) | p50 ms, {levels[0]} client(s) | req/s, {levels[-1]} clients "
        "(p50 ms) | load avg |",
        "| --- | --- | --- | --- | --- |",
    ]
    for model in models:
        card = cards[model]
        by_level = {row["concurrency"]: row for row in rows if row["model"] == model}
        one, many = by_level.get(levels[0], {}), by_level.get(levels[-1], {})
        accuracy = (
            f"{card['accuracy']:.2%} / {card['accuracy_int8']:.2%} ({card['n']})"
            if card["accuracy"] is not None and card["accuracy_int8"] is not None
            else "-"
        )
        lines.append(
            f"| `{model}` v{card['version']} | {accuracy} | {one.get('p50_ms', float('nan')):.1f} | "
            f"{many.get('throughput_rps', float('nan')):.1f} ({many.get('p50_ms', float('nan')):.0f}) | "
            f"{one.get('load_average_1m', '-')} / {many.get('load_average_1m', '-')} |"
        )
    (args.out / "tiny.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
