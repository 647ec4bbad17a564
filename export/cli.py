"""``python -m export``: the command line over the export library.

    python -m export build --profile quick --tasks sentiment,disaster,pose
    python -m export validate [--repository DIR]
    python -m export push [--url s3://bucket/prefix] [--create-bucket] [--force]
    python -m export pull [--url s3://bucket/prefix]

A problem the user can fix (unknown task, missing dataset, wrong checkpoint, bad flag, a version
below its quality floor) prints one ``error: ...`` line on stderr and exits with status 2;
``validate`` exits with 1 when it finds a problem in the repository. Tasks registered by the modules
named in ``MTC_TASK_MODULES`` (:func:`taskspec.load_task_modules`) are known to every command.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from export.errors import ExportError
from export.recipes import PRECISIONS, PROFILES
from taskspec import TASKS, TaskModuleError, TaskRegistrationError, load_task_modules

EXIT_USAGE = 2
DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
"""Same as ``export.build.DEFAULT_REPOSITORY`` (a test checks), without importing torch for push/pull/validate."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see `python -m export {self.prog.split()[-1]} --help`)\n")


def _tasks(value: str) -> list[str]:
    tasks = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task(s) {', '.join(unknown)}; known tasks: {', '.join(TASKS)}")
    if not tasks:
        raise argparse.ArgumentTypeError("no task given")
    return tasks


def _checkpoints(values: Sequence[str], tasks: Sequence[str]) -> dict[str, str]:
    """``task=PATH`` for one task, or a bare ``PATH`` for every text task being built."""
    chosen: dict[str, str] = {}
    for value in values:
        task, sep, path = value.partition("=")
        if sep and task in TASKS:
            chosen[task] = path
        else:
            for name in tasks:
                if TASKS[name].modality == "text":
                    chosen[name] = value
    return chosen


def parser() -> argparse.ArgumentParser:
    from export.data import DATA_DIR_ENV, DEFAULT_DATA_DIR

    main = _Parser(prog="python -m export", description="Build, validate and sync the Triton model repository.")
    commands = main.add_subparsers(dest="command", required=True, parser_class=_Parser)

    build = commands.add_parser("build", help="train, export, validate and publish models")
    build.add_argument("--profile", choices=PROFILES, default="quick", help="quick: 10 min on 2 CPU cores; full: GPU")
    build.add_argument("--tasks", type=_tasks, default=list(TASKS), help="comma-separated (default: all)")
    build.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository to publish into")
    build.add_argument(
        "--data-dir", type=Path, default=None, help=f"datasets folder (default: ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})"
    )
    build.add_argument("--data-source", choices=("local", "hub"), default="local", help="hub needs network + datasets")
    build.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="[TASK=]PATH_OR_HUB_ID",
        help="pretrained model: a folder or hub id for text tasks, a .pth for pose; repeatable",
    )
    build.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    build.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="training precision: auto = bf16 autocast on a GPU or a CPU with native bf16 (AVX512-BF16/AMX), "
        "else fp32; the exported model and its checks are float32 either way",
    )
    build.add_argument("--seed", type=int, default=0)
    build.add_argument(
        "--int8",
        action="store_true",
        help="also measure and ship a dynamic-int8 variant of the image model (text tasks always get one)",
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    build.add_argument("--limit", type=int, default=None, help="cap examples per split (smoke runs only)")
    build.add_argument("--max-steps", type=int, default=None, help="cap optimizer steps (smoke runs only)")

    validate = commands.add_parser("validate", help="check a model repository against the task specs")
    validate.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    validate.add_argument("--tasks", type=_tasks, default=list(TASKS))

    for name, verb in (("push", "upload model_repository/ to"), ("pull", "download model_repository/ from")):
        sync = commands.add_parser(name, help=f"{verb} S3 (MTC_S3_URL, MTC_S3_ENDPOINT_URL, credentials)")
        sync.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
        sync.add_argument("--url", default=None, help="s3://bucket/prefix (default: $MTC_S3_URL)")
        sync.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: $MTC_S3_ENDPOINT_URL)")
        if name == "push":
            sync.add_argument("--create-bucket", action="store_true", help="create the bucket if missing")
            sync.add_argument(
                "--force",
                action="store_true",
                help="overwrite files of versions already published in the bucket (refused without it)",
            )
    return main


def _build(args: argparse.Namespace) -> int:
    from export.build import BuildOptions, build

    for flag in ("limit", "max_steps"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ExportError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise ExportError(f"--data-dir {args.data_dir} is not a folder")
    options = BuildOptions(
        profile=args.profile,
        repository=args.repository.resolve(),
        data_dir=args.data_dir,
        data_source=args.data_source,
        checkpoints=_checkpoints(args.checkpoint, args.tasks),
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        int8=args.int8,
        progress=not args.no_progress,
        limit=args.limit,
        max_steps=args.max_steps,
    )
    started = time.monotonic()
    results = build(args.tasks, options)
    print(f"==> built {len(results)} model(s) in {time.monotonic() - started:.0f} s (profile {args.profile})")
    for result in results:
        print(f"    {result.summary()}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from export.validate import validate_repository

    if not args.repository.is_dir():
        raise ExportError(f"model repository {args.repository} does not exist")
    problems = validate_repository(args.repository, args.tasks)
    for task in args.tasks:
        found = problems.get(task, [])
        print(f"{task}: {'ok' if not found else 'PROBLEMS'}")
        for problem in found:
            print(f"  - {problem}")
    return 1 if any(problems.values()) else 0


def _sync(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from export import s3sync

    overrides = {k: v for k, v in (("url", args.url), ("endpoint_url", args.endpoint_url)) if v}
    settings = s3sync.S3Settings(**overrides)  # type: ignore[arg-type]
    try:
        s3sync.S3Location.parse(settings.url)
        client = s3sync.make_client(settings)
        if args.command == "push":
            if args.create_bucket:
                s3sync.ensure_bucket(client, s3sync.S3Location.parse(settings.url).bucket)
            report = s3sync.push(args.repository, settings.url, client, force=args.force)
        else:
            report = s3sync.pull(settings.url, args.repository, client)
    except (ValueError, FileNotFoundError) as exc:
        raise ExportError(str(exc)) from None
    except (BotoCoreError, ClientError) as exc:
        raise ExportError(f"S3 {args.command} {settings.url} failed: {exc}") from None
    print(f"{args.command} {settings.url}: {report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        load_task_modules()
    except (TaskModuleError, TaskRegistrationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = parser().parse_args(argv)
    handlers = {"build": _build, "validate": _validate, "push": _sync, "pull": _sync}
    try:
        return handlers[args.command](args)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
