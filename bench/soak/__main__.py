"""``python -m bench.soak``: the soak and fault benchmark (see bench/soak/__init__.py, docs/benchmarks.md).

Exit status: 0 when issue 11's done-criteria hold, 1 when they fail, 2 when the soak could not run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.soak.findings import MAX_RSS_GROWTH
from bench.soak.report import write
from bench.soak.run import DEFAULT_OUT, DEFAULT_S3_DATA, SoakConfig, SoakSetupError, run
from bench.soak.timeline import Schedule
from serving.processes import ProcessStartError, stop_on_signals
from serving.triton import PROJECT_ROOT

API_KEY_ENV = "MTC_SOAK_API_KEY"


def parse_args(argv: Sequence[str] | None) -> tuple[SoakConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Mixed traffic at 64 clients with Triton frozen, then killed; report in bench/results/soak/.",
    )
    target = parser.add_argument_group("what to soak (default: a stack started here on --repository)")
    target.add_argument("--repository", type=Path, default=PROJECT_ROOT / "model_repository", help="published models")
    target.add_argument("--url", help="a running stack's facade instead (make run), e.g. http://127.0.0.1:8080")
    target.add_argument("--stack-pid", type=int, help="with --url: the pid of its `python -m serving.stack`")
    target.add_argument("--s3-data", type=Path, default=DEFAULT_S3_DATA, help="the started S3 server's data folder")
    load = parser.add_argument_group("traffic")
    load.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    load.add_argument("--clients", type=int, default=64, help="concurrent closed-loop clients (default 64)")
    load.add_argument(
        "--client-timeout", type=float, default=60.0, help="a request without an answer after this long is lost (s)"
    )
    load.add_argument("--tasks", default="sentiment,disaster,pose", help="tasks, round-robin")
    faults = parser.add_argument_group("faults (seconds from the start of the traffic; defaults scale with --duration)")
    faults.add_argument("--warmup", type=float, help="default 10%% of the duration (at least 5 s)")
    faults.add_argument("--freeze-at", type=float, help="SIGSTOP Triton's process group; default 25%%")
    faults.add_argument("--freeze-for", type=float, help="default 5%% (at least 3 s)")
    faults.add_argument("--kill-at", type=float, help="SIGKILL Triton's process group; default 50%%")
    faults.add_argument("--settle", type=float, default=3.0, help="a fault window ends this long after the fault")
    faults.add_argument("--restart-timeout", type=float, default=240.0, help="longest wait for Triton to serve again")
    faults.add_argument(
        "--min-recovered", type=float, help="extend the run until recovered this long; default 15%% of the duration"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder (default bench/results/soak)")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between memory samples")
    parser.add_argument(
        "--idle-after",
        type=float,
        default=5.0,
        help="seconds without requests after the traffic before the last memory sample (the stack idle)",
    )
    args = parser.parse_args(argv)
    if args.stack_pid is not None and args.url is None:
        parser.error("--stack-pid goes with --url")
    overrides = {
        name: value
        for name, value in (
            ("warmup_s", args.warmup),
            ("freeze_at_s", args.freeze_at),
            ("freeze_s", args.freeze_for),
            ("kill_at_s", args.kill_at),
            ("min_recovered_s", args.min_recovered),
        )
        if value is not None
    }
    schedule = Schedule.for_duration(
        args.duration, settle_s=args.settle, restart_timeout_s=args.restart_timeout, **overrides
    )
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    config = SoakConfig(
        schedule=schedule,
        repository=None if args.url else args.repository,
        url=args.url.rstrip("/") if args.url else None,
        stack_pid=args.stack_pid,
        tasks=tasks,
        clients=args.clients,
        client_timeout_s=args.client_timeout,
        api_key=os.environ.get(API_KEY_ENV) or None,
        out=args.out,
        s3_data_dir=args.s3_data,
        sample_every_s=args.sample_every,
        idle_after_s=args.idle_after,
        max_rss_growth=MAX_RSS_GROWTH,
    )
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    stop_on_signals()  # SIGTERM / SIGHUP stop the stack this started, like Ctrl-C
    config, _ = parse_args(argv)
    try:
        report = run(config)
    except (SoakSetupError, ProcessStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("==> stopped before the end: no report", file=sys.stderr)
        return 130
    path = write(report, config.out)
    print(f"==> report: {path}")
    for failure in report.failures:
        print(f"    FAILED: {failure}")
    print("==> PASSED" if report.passed else "==> FAILED")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
