"""``python -m batch classify INPUT --task sentiment --column text --output OUT``: the command line.

It only parses arguments, calls :func:`batch.runner.run_job` with a progress bar, and prints the summary;
every failure is one line (``error: ...``) and a non-zero exit status: 2 for a job that cannot run as
asked, 1 for a job that stopped (rerun the same command to resume), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from batch.errors import InvalidJob, JobConflict
from batch.formats import FORMATS
from batch.runner import JobProgress, JobRequest, JobSummary, run_job
from batch.settings import BatchSettings
from frontend_api.errors import ApiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batch", description="Batch classification jobs on Ray Data")
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser(
        "classify",
        help="classify a column of a CSV / JSON Lines / Parquet file, folder or S3 prefix",
        description="Classify every row; rerun the same command to resume a job that stopped.",
    )
    classify.add_argument("input", help="a file, a folder, or s3://bucket/key (a file or a prefix)")
    classify.add_argument("--task", required=True, help="task name (sentiment, disaster, pose...)")
    classify.add_argument("--column", default="text", help="column with the texts or image URLs (default: text)")
    classify.add_argument("--output", required=True, help="output folder or s3://bucket/prefix (one job per output)")
    classify.add_argument("--format", choices=FORMATS, default=None, help="input format (default: from extensions)")
    classify.add_argument("--prefix", default="", help="prefix of the added columns (label, p_<label>, error)")
    classify.add_argument("--rows-per-part", type=int, default=None, help="rows per output part (default 1000)")
    classify.add_argument("--concurrency", type=int, default=None, help="classifier workers (batches in flight)")
    classify.add_argument("--batch-rows", type=int, default=None, help="rows per batch (default 64)")
    classify.add_argument("--ray-address", default=None, help="existing Ray cluster (default: a local Ray)")
    classify.add_argument(
        "--triton-protocol", choices=("grpc", "http"), default=None, help="how to call Triton (default grpc)"
    )
    classify.add_argument("--triton-grpc-url", default=None, help="Triton gRPC host:port (default 127.0.0.1:8001)")
    classify.add_argument("--triton-url", default=None, help="Triton HTTP host:port (default 127.0.0.1:8000)")
    classify.add_argument("--model-repository", default=None, help="the repository Triton serves (folder or s3://)")
    classify.add_argument("--no-progress", action="store_true", help="no progress bar")
    classify.add_argument("--json", action="store_true", help="print the summary as JSON")
    run_job_command = commands.add_parser(
        "run-job",
        help="run a job the REST API created (POST /v1/jobs starts this command)",
        description="Run the job in its folder (job.json), keeping status.json current; see batch.jobrun.",
    )
    run_job_command.add_argument("job", help="the job's folder: s3://<jobs bucket>/<prefix><id>")
    return parser


def _settings(args: argparse.Namespace) -> BatchSettings:
    overrides: dict[str, Any] = {
        "rows_per_part": args.rows_per_part,
        "concurrency": args.concurrency,
        "batch_rows": args.batch_rows,
        "ray_address": args.ray_address,
        "triton_protocol": args.triton_protocol,
        "triton_grpc_url": args.triton_grpc_url,
        "triton_url": args.triton_url,
        "model_repository": args.model_repository,
    }
    return BatchSettings(**{k: v for k, v in overrides.items() if v is not None})


def _one_line(error: ValidationError) -> str:
    parts = []
    for issue in error.errors():
        where = ".".join(str(x) for x in issue.get("loc", ()))
        parts.append(f"{where}: {issue.get('msg', '')}" if where else str(issue.get("msg", "")))
    return "; ".join(parts)


def print_summary(summary: JobSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.to_document(), indent=1))
        return
    labels = ", ".join(f"{label} {count}" for label, count in summary.labels.items())
    model = f"{summary.model} v{summary.model_version}"
    print(f"{summary.rows_total} rows -> {summary.output} ({summary.parts} parts, {model})")
    print(f"labels: {labels}; failed: {summary.rows_failed}")
    for reason, count in sorted(summary.failure_reasons.items(), key=lambda item: -item[1]):
        print(f"  {count} x {reason}")
    resumed = f", {summary.parts_resumed} parts resumed" if summary.parts_resumed else ""
    rate = f"{summary.seconds_this_run:.1f} s ({summary.rows_per_s:.1f} rows/s)"
    print(f"this run: {summary.rows_this_run} rows in {rate}{resumed}")


def run_job_main(job: str) -> int:
    """``run-job``: the final state is in the job's status.json; the exit status says it too."""
    from batch.jobrun import run_api_job

    try:
        status = run_api_job(job, BatchSettings())
    except ValidationError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ApiError as exc:  # the job folder cannot be read: no status to write
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2
    print(f"{status.state}: {status.rows_done}/{status.rows_total} rows", file=sys.stderr)
    if status.error is not None:
        print(f"error: {status.error.detail}", file=sys.stderr)
    return 0 if status.state == "succeeded" else 130 if status.state == "cancelled" else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run-job":
        return run_job_main(args.job)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    request = JobRequest(
        input=args.input,
        output=args.output,
        task=args.task,
        column=args.column,
        format=args.format,
        prefix=args.prefix,
    )
    bar: tqdm[Any] | None = None

    def progress(state: JobProgress) -> None:
        nonlocal bar
        if args.no_progress:
            return
        if bar is None:
            bar = tqdm(total=state.rows_total, unit="rows", desc=request.task, initial=state.rows_done)
        bar.set_postfix(failed=state.rows_failed, parts=f"{state.parts_done}/{state.parts_total}")
        bar.update(state.rows_done - bar.n)

    try:
        summary = run_job(request, settings, progress=progress)
    except (InvalidJob, JobConflict) as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the committed parts are kept; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    print_summary(summary, args.json)
    return 0
