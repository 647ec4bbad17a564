"""``python -m bench``: start Triton + the facade, measure, write bench/results/report.md."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.config import DEFAULT_CONCURRENCIES, FULL_CONCURRENCIES, QUICK_CONCURRENCIES, BenchConfig
from bench.suite import run
from serving.processes import stop_on_signals


def parse_levels(text: str) -> tuple[int, ...]:
    levels = tuple(int(x) for x in text.split(",") if x.strip())
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("give positive integers, e.g. 1,4,16,64")
    return levels


def main(argv: Sequence[str] | None = None) -> int:
    stop_on_signals()  # SIGTERM / SIGHUP stop the servers this started, like Ctrl-C
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--repository", type=Path, default=defaults.repository, help="published model repository")
    parser.add_argument("--out", type=Path, default=defaults.out, help="where report.md, results.json, plots go")
    parser.add_argument("--tasks", default=",".join(defaults.tasks), help="comma-separated task names")
    parser.add_argument("--concurrency", type=parse_levels, default=None, help="client levels, e.g. 1,4,16,64")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds measured per level")
    parser.add_argument("--quick", action="store_true", help=f"levels {QUICK_CONCURRENCIES}, 1 s each (smoke run)")
    parser.add_argument("--full", action="store_true", help=f"levels {FULL_CONCURRENCIES} (about twice as long)")
    parser.add_argument("--no-facade-comparisons", action="store_true", help="skip bench/facade.py's section")
    args = parser.parse_args(argv)

    levels = args.concurrency or (
        QUICK_CONCURRENCIES if args.quick else FULL_CONCURRENCIES if args.full else DEFAULT_CONCURRENCIES
    )
    # With explicit levels the comparisons run at the sweep's lowest and highest level.
    ends = tuple(sorted({min(levels), max(levels)}))
    config = BenchConfig(
        repository=args.repository,
        out=args.out,
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
        concurrencies=levels,
        duration_s=1.0 if args.quick else args.duration,
        warmup_s=0.3 if args.quick else defaults.warmup_s,
        batching_concurrencies=defaults.batching_concurrencies if args.concurrency is None and not args.quick else ends,
        int8_concurrencies=defaults.int8_concurrencies if args.concurrency is None and not args.quick else ends,
        run_facade_comparisons=not args.no_facade_comparisons,
    )
    try:
        results = run(config)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: every server started is stopped by now
        print("==> stopped before the end: no report", file=sys.stderr)
        return 130
    print(f"==> report: {config.out / 'report.md'} ({results.wall_s:.0f} s)")
    for note in results.notes:
        print(f"    note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
