"""The job runner: plan a job, stream its rows through Ray Data to Triton, commit the output part by part.

:func:`run_job` is the library entry point (the command line, and later a REST job API, call it):

1. **Plan** (first run): list the input files (a file, a folder or an S3 prefix), read each one's columns
   and count its rows, pin the model version Triton serves now and the identity of its artifacts, and
   write the job manifest (:mod:`batch.manifest`) into the output location. A rerun finds the manifest,
   checks that the parameters and the input files are the same (:class:`JobConflict` otherwise), and
   skips every committed part.
2. **Run** on Ray Data: one read task per input file (:class:`PartsDatasource`) streams the rows of the
   parts still to do, tagged with their file and row number; :class:`~batch.classify.Classifier` workers
   (``concurrency`` of them, one by default, each holding two batches of ``batch_rows`` and pacing its Triton
   requests: :mod:`batch.pacing`) classify them.
3. **Commit** on the driver: rows are gathered per part; a complete part is sorted, written in the input's
   format, then committed by its record. The summary is written when every part is committed.

Ray runs locally by default (started for the job, stopped after it: ``num_cpus`` bounded, no dashboard),
or on an existing cluster (``MTC_BATCH_RAY_ADDRESS``; docs/batch.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import ValidationError

from batch.classify import BATCHES_PER_WORKER, Classifier, ClassifierConfig, make_s3_client
from batch.errors import InvalidJob, JobConflict
from batch.formats import (
    FILE_COLUMN,
    FORMATS,
    INTERNAL_PREFIX,
    ROW_COLUMN,
    SUFFIXES,
    Format,
    OutputNames,
    detect_format,
    encode_part,
    inspect_file,
    read_tables,
    value_column,
)
from batch.manifest import (
    COMMITTED_DIR,
    JOB_FILE,
    MAX_RECORD_BYTES,
    SUMMARY_FILE,
    InputFile,
    JobManifest,
    JobParameters,
    ModelPin,
    PartCommit,
    RowFailure,
    part_file_name,
    part_key,
)
from batch.settings import BatchSettings
from batch.storage import Location, S3Access, list_files, list_names, parse_location, read_bytes, write_bytes
from frontend_api.artifacts import ArtifactStore, make_source
from frontend_api.errors import ApiError, InternalError
from frontend_api.settings import ApiSettings
from frontend_api.triton_client import make_triton_client
from taskspec import TaskSpec, get_task

logger = logging.getLogger("batch")

_PREFIX = re.compile(r"[A-Za-z0-9_]{0,32}")


@dataclass(frozen=True)
class JobRequest:
    """One batch job: classify ``column`` of every row of ``input`` with ``task``, write to ``output``."""

    input: str
    output: str
    task: str
    column: str = "text"
    format: Format | None = None
    """None: from the input files' extension."""
    prefix: str = ""
    """Prefix of the added columns (``label``, ``p_<label>``, ``error``), e.g. ``pred_`` when the input
    already has a ``label`` column."""


@dataclass(frozen=True)
class JobProgress:
    """Where a running job stands (passed to the progress callback after each batch of rows comes back)."""

    rows_total: int
    rows_done: int
    """Rows classified: committed in earlier runs, plus those classified in this one (committed or not yet)."""
    rows_failed: int
    """Failed rows in the committed parts."""
    parts_total: int
    parts_done: int
    rows_this_run: int
    seconds_this_run: float

    @property
    def rows_per_s(self) -> float:
        return self.rows_this_run / self.seconds_this_run if self.seconds_this_run > 0 else 0.0


@dataclass(frozen=True)
class JobSummary:
    """The outcome of a job, also written to ``OUT/_summary.json``."""

    input: str
    output: str
    task: str
    model: str
    model_version: str
    format: str
    rows_total: int
    rows_ok: int
    rows_failed: int
    labels: dict[str, int]
    failures: list[dict[str, Any]]
    """The first ``failures_listed`` failed rows: input file index, row in that file, reason."""
    failure_reasons: dict[str, int]
    """Failed rows per kind of reason (``empty text``, ``url-not-allowed``...)."""
    parts: int
    parts_resumed: int
    """Parts that were already committed when this run started (a resumed job)."""
    rows_this_run: int
    seconds_this_run: float
    rows_per_s: float
    part_files: list[str] = field(default_factory=list)

    def to_document(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[JobProgress], None]


# --- planning ---


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _highest(versions: list[str]) -> str:
    """The version the facade serves: the highest ready one."""
    return max(versions, key=lambda v: (int(v) if v.isdigit() else -1, v))


async def _pin_model(spec: TaskSpec, settings: BatchSettings) -> tuple[ModelPin, tuple[str, ...]]:
    triton = make_triton_client(settings)
    try:
        version = _highest(await triton.model_versions(spec.model_name))
    finally:
        await triton.close()
    repository = settings.model_repository
    store = ArtifactStore(make_source(repository, make_s3_client(settings) if repository.startswith("s3://") else None))
    content = await store.content(spec, version)
    artifacts = await store.get(spec, version, content)
    return ModelPin(name=spec.model_name, version=version, content=content.identity), artifacts.labels


def _load_record(location: Location, what: str) -> bytes | None:
    data = read_bytes(location)
    if data is not None and len(data) > MAX_RECORD_BYTES:
        raise JobConflict(f"{location.uri} is larger than {MAX_RECORD_BYTES} bytes: not a {what} of this runner")
    return data


def _input_files(location: Location, fmt: Format | None) -> list[tuple[str, int, int]]:
    suffixes = SUFFIXES[fmt] if fmt else tuple(s for f in FORMATS for s in SUFFIXES[f])
    files = list_files(location, suffixes)
    if not files:
        raise InvalidJob(f"no {fmt or 'csv, jsonl or parquet'} files in {location.uri}")
    return [(f.path, f.size, f.mtime_ns) for f in files]


def _check_output_is_ours(output: Location, input_location: Location) -> None:
    if output.is_s3 == input_location.is_s3 and (
        output.path == input_location.path or output.path.startswith(input_location.path.rstrip("/") + "/")
    ):
        raise InvalidJob("the output location is inside the input: choose an output outside it")
    if list_names(output):
        raise JobConflict(f"{output.uri} holds files but no {JOB_FILE}: choose an empty or new output location")


def plan_job(request: JobRequest, settings: BatchSettings) -> tuple[JobManifest, Location, Location]:
    """The job's manifest: read back from the output location (a rerun), or planned and written there."""
    try:
        spec = get_task(request.task)
    except KeyError as exc:
        raise InvalidJob(str(exc.args[0])) from None
    if not request.column:
        raise InvalidJob("give the column that holds the texts (or image URLs)")
    if not _PREFIX.fullmatch(request.prefix):
        raise InvalidJob("the prefix of the added columns must be up to 32 letters, digits or _")
    input_location = parse_location(request.input, settings, what="input")
    output = parse_location(request.output, settings, what="output")
    parameters = JobParameters(
        input=input_location.uri,
        task=spec.name,
        column=request.column,
        format=request.format or "csv",  # replaced below once the files are known
        prefix=request.prefix,
        rows_per_part=settings.rows_per_part,
    )
    existing = _load_record(output.child(JOB_FILE), "job manifest")
    files = _input_files(input_location, request.format)
    fmt = detect_format([path for path, _, _ in files], request.format)
    parameters = parameters.model_copy(update={"format": fmt})
    if existing is not None:
        try:
            manifest = JobManifest.model_validate_json(existing)
        except ValidationError as exc:
            raise JobConflict(f"{output.child(JOB_FILE).uri} is not a job manifest of this runner: {exc}") from None
        if manifest.parameters != parameters:
            raise JobConflict(
                f"{output.uri} holds another job ({manifest.parameters.model_dump()}); this one is "
                f"{parameters.model_dump()}: choose another output location"
            )
        then = [(f.path, f.size, f.mtime_ns) for f in manifest.files]
        if then != files:
            raise JobConflict(
                f"the input changed since the job started ({len(then)} files then, {len(files)} now, or sizes / "
                "modification times differ): start a new job with a new output location"
            )
        return manifest, input_location, output
    _check_output_is_ours(output, input_location)
    fs = input_location.filesystem()
    shapes = [inspect_file(fs, path, fmt, request.column) for path, _, _ in files]
    pin, labels = asyncio.run(_pin_model(spec, settings))
    names = OutputNames(request.prefix, labels)
    for (path, _, _), shape in zip(files, shapes, strict=True):
        clash = sorted(
            set(shape.columns) & set(names.all()) | {c for c in shape.columns if c.startswith(INTERNAL_PREFIX)}
        )
        if clash:
            raise InvalidJob(
                f"{path} already has column(s) {', '.join(clash)} that the job adds: pass a prefix (--prefix pred_)"
            )
    if fmt != "jsonl" and len({shape.columns for shape in shapes}) > 1:
        raise InvalidJob("the input files do not all have the same columns")
    if sum(shape.rows for shape in shapes) == 0:
        raise InvalidJob(f"the input {input_location.uri} has no rows")
    manifest = JobManifest(
        parameters=parameters,
        files=[
            InputFile(path=path, size=size, mtime_ns=mtime, rows=shape.rows, columns=list(shape.columns))
            for (path, size, mtime), shape in zip(files, shapes, strict=True)
        ],
        model=pin,
        labels=list(labels),
        created_at=_now(),
    )
    write_bytes(output.child(JOB_FILE), manifest.model_dump_json(indent=1).encode())
    return manifest, input_location, output


def committed_parts(output: Location, manifest: JobManifest) -> dict[tuple[int, int], PartCommit]:
    """The commit records in ``OUT/_committed/`` that belong to this job's parts."""
    planned = set(manifest.parts())
    records: dict[tuple[int, int], PartCommit] = {}
    folder = output.child(COMMITTED_DIR)
    for name in list_names(folder):
        key = name.removesuffix(".json")
        file_text, _, part_text = key.partition("-")
        if not (file_text.isdigit() and part_text.isdigit() and name.endswith(".json")):
            continue
        where = (int(file_text), int(part_text))
        if where not in planned or part_key(*where) != key:
            continue
        data = _load_record(folder.child(name), "commit record")
        if data is None:
            continue
        try:
            record = PartCommit.model_validate_json(data)
        except ValidationError as exc:
            raise JobConflict(f"{folder.child(name).uri} is not a commit record of this runner: {exc}") from None
        if (record.file, record.part) != where or record.rows != manifest.part_rows(*where):
            raise JobConflict(f"{folder.child(name).uri} does not match the job's part {key}")
        records[where] = record
    return records


# --- reading: one Ray read task per input file ---


def read_parts(
    path: str,
    s3: S3Access | None,
    fmt: Format,
    columns: tuple[str, ...],
    column: str,
    file_index: int,
    rows: int,
    rows_per_part: int,
    todo: frozenset[int],
) -> Iterator[pa.Table]:
    """The rows of the parts ``todo`` of one input file, one table per part, tagged with file and row.

    Committed parts are read past (parsed, never sent on). The file must still hold ``rows`` rows.
    """
    fs = s3.filesystem() if s3 is not None else Location(path, path).filesystem()
    pending: list[pa.Table] = []
    pending_part = -1
    offset = 0

    def flush() -> pa.Table:
        table = pa.concat_tables(pending)
        start = pending_part * rows_per_part
        table = table.append_column(FILE_COLUMN, pa.array(np.full(table.num_rows, file_index, np.int32)))
        return table.append_column(ROW_COLUMN, pa.array(np.arange(start, start + table.num_rows, dtype=np.int64)))

    for table in read_tables(fs, path, fmt, columns, column):
        position = 0
        while position < table.num_rows:
            part = (offset + position) // rows_per_part
            take = min(table.num_rows - position, (part + 1) * rows_per_part - (offset + position))
            if part in todo:
                if part != pending_part and pending:
                    yield flush()
                    pending = []
                pending_part = part
                pending.append(table.slice(position, take))
            position += take
        offset += table.num_rows
    if pending:
        yield flush()
    if offset != rows:
        raise JobConflict(f"{path} has {offset} rows now, {rows} when the job started: the input changed")


def _datasource(
    manifest: JobManifest, input_location: Location, todo: set[tuple[int, int]], columns: list[tuple[str, ...]]
) -> Any:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    parameters = manifest.parameters

    class PartsDatasource(Datasource):  # type: ignore[misc]
        """One read task per input file that still has parts to do."""

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[ReadTask]:
            tasks = []
            for index, entry in enumerate(manifest.files):
                parts = frozenset(p for f, p in todo if f == index)
                if not parts:
                    continue
                read = functools.partial(
                    read_parts,
                    entry.path,
                    input_location.s3,
                    parameters.format,
                    columns[index],
                    parameters.column,
                    index,
                    entry.rows,
                    parameters.rows_per_part,
                    parts,
                )
                rows = sum(manifest.part_rows(index, p) for p in parts)
                metadata = BlockMetadata(num_rows=rows, size_bytes=None, exec_stats=None, input_files=(entry.path,))
                tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
            return tasks

        @property
        def supports_distributed_reads(self) -> bool:
            return input_location.is_s3  # a local path exists on the driver's machine only

    return PartsDatasource()  # type: ignore[no-untyped-call]


# --- Ray ---


@contextlib.contextmanager
def ray_session(settings: BatchSettings) -> Iterator[None]:
    """Ray for one job: the configured cluster, or a local Ray started now and stopped after the job.
    A Ray this process already started (tests, a notebook) is used as it is, and left running."""
    import ray
    from ray.data import DataContext

    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-execution INFO lines, under our progress bar
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": on purpose
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    if ray.is_initialized():
        yield
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(
            address="local",
            num_cpus=settings.ray_num_cpus,
            object_store_memory=settings.ray_object_store_mib << 20,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    try:
        yield
    finally:
        ray.shutdown()


def root_error(exc: BaseException) -> ApiError | None:
    """The error of ours a Ray exception carries (a worker's exception arrives wrapped), if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ApiError):
            return current
        cause = getattr(current, "cause", None)
        stack.extend([cause if isinstance(cause, BaseException) else None, current.__cause__, current.__context__])
    return None


def innermost(exc: BaseException) -> BaseException:
    """The exception at the bottom of a chain (a Ray task error's ``cause``, ``__cause__``): what really failed."""
    seen: set[int] = set()
    current = exc
    while id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        following = cause if isinstance(cause, BaseException) else current.__cause__
        if following is None:
            break
        current = following
    return current


# --- the driver ---


class PartWriter:
    """Gathers classified rows per part; writes and commits each part once all its rows are there."""

    def __init__(self, manifest: JobManifest, output: Location, names: OutputNames) -> None:
        self.manifest = manifest
        self.output = output
        self.names = names
        self.buffers: dict[tuple[int, int], list[pa.Table]] = {}
        self.seen: dict[tuple[int, int], set[int]] = {}
        self.received = 0
        """Rows classified in this run (each counted once)."""

    def add(self, table: pa.Table) -> list[PartCommit]:
        """Take classified rows; returns the commits of the parts they completed."""
        size = self.manifest.parameters.rows_per_part
        files = table.column(FILE_COLUMN).to_numpy()
        rows = table.column(ROW_COLUMN).to_numpy()
        keys = files.astype(np.int64) * (1 << 40) + rows // size
        done = []
        for key in np.unique(keys):
            where = (int(key >> 40), int(key & ((1 << 40) - 1)))
            piece = table.filter(pa.array(keys == key))
            seen = self.seen.setdefault(where, set())
            new = [r not in seen for r in piece.column(ROW_COLUMN).to_pylist()]
            if not all(new):  # a block delivered twice (a retried task): keep each row once
                piece = piece.filter(pa.array(new))
            seen.update(piece.column(ROW_COLUMN).to_pylist())
            self.received += piece.num_rows
            self.buffers.setdefault(where, []).append(piece)
            if len(seen) == self.manifest.part_rows(*where):
                done.append(self.commit(where))
        return done

    def commit(self, where: tuple[int, int]) -> PartCommit:
        table = pa.concat_tables(self.buffers.pop(where)).sort_by(ROW_COLUMN)
        self.seen.pop(where)
        fmt = self.manifest.parameters.format
        write_bytes(self.output.child(part_file_name(*where, fmt)), encode_part(table, fmt, self.names))
        labels = table.column(self.names.label).to_pylist()
        errors = table.column(self.names.error).to_pylist()
        row_numbers = table.column(ROW_COLUMN).to_pylist()
        counts: dict[str, int] = {}
        for label in labels:
            if label is not None:
                counts[label] = counts.get(label, 0) + 1
        failures = [
            RowFailure(file=where[0], row=row, reason=error)
            for row, error in zip(row_numbers, errors, strict=True)
            if error is not None
        ]
        record = PartCommit(
            file=where[0], part=where[1], rows=table.num_rows, labels=counts, failed=len(failures), failures=failures
        )
        write_bytes(self.output.child(COMMITTED_DIR, f"{part_key(*where)}.json"), record.model_dump_json().encode())
        return record


def _reason_kind(reason: str) -> str:
    head, sep, _ = reason.partition(": ")
    return head if sep and " " not in head else reason


def summarize(
    manifest: JobManifest,
    output: Location,
    records: dict[tuple[int, int], PartCommit],
    settings: BatchSettings,
    *,
    resumed: int,
    rows_this_run: int,
    seconds: float,
) -> JobSummary:
    labels = dict.fromkeys(manifest.labels, 0)
    reasons: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    for where in sorted(records):
        record = records[where]
        for label, count in record.labels.items():
            labels[label] = labels.get(label, 0) + count
        for failure in record.failures:
            kind = _reason_kind(failure.reason)
            reasons[kind] = reasons.get(kind, 0) + 1
            if len(failures) < settings.failures_listed:
                failures.append(failure.model_dump())
    failed = sum(r.failed for r in records.values())
    parameters = manifest.parameters
    return JobSummary(
        input=parameters.input,
        output=output.uri,
        task=parameters.task,
        model=manifest.model.name,
        model_version=manifest.model.version,
        format=parameters.format,
        rows_total=manifest.total_rows,
        rows_ok=manifest.total_rows - failed,
        rows_failed=failed,
        labels=labels,
        failures=failures,
        failure_reasons=reasons,
        parts=len(records),
        parts_resumed=resumed,
        rows_this_run=rows_this_run,
        seconds_this_run=round(seconds, 3),
        rows_per_s=round(rows_this_run / seconds, 2) if seconds > 0 else 0.0,
        part_files=[part_file_name(*where, parameters.format) for where in sorted(records)],
    )


def run_job(
    request: JobRequest,
    settings: BatchSettings | None = None,
    *,
    image_settings: ApiSettings | None = None,
    progress: ProgressCallback | None = None,
    ray_scope: contextlib.ExitStack | None = None,
) -> JobSummary:
    """Run (or resume) a job to its end; returns its summary (also written to ``OUT/_summary.json``).

    Raises :class:`InvalidJob` / :class:`JobConflict` before any work when the job cannot run, and the
    error that stopped it otherwise (Triton unreachable past the retries, storage failing...): the parts
    committed until then stay, and the same call resumes after them.

    Ray (:func:`ray_session`) stops before this returns or raises, unless ``ray_scope`` is given: then it stops
    when the caller closes that stack, so that the caller can record the job's end first (the local Ray takes
    1.4-1.6 s to stop on a 2-core machine, and can take the process with it: see :mod:`batch.jobrun`).
    """
    settings = settings or BatchSettings()
    start = time.perf_counter()
    manifest, input_location, output = plan_job(request, settings)
    records = committed_parts(output, manifest)
    resumed = len(records)
    resumed_rows = sum(r.rows for r in records.values())
    planned = manifest.parts()
    todo = {where for where in planned if where not in records}
    names = OutputNames(manifest.parameters.prefix, tuple(manifest.labels))
    rows_this_run = 0

    def report() -> None:
        if progress is not None:
            progress(
                JobProgress(
                    rows_total=manifest.total_rows,
                    rows_done=resumed_rows + rows_this_run,
                    rows_failed=sum(r.failed for r in records.values()),
                    parts_total=len(planned),
                    parts_done=len(records),
                    rows_this_run=rows_this_run,
                    seconds_this_run=time.perf_counter() - start,
                )
            )

    report()
    if todo:
        spec = get_task(manifest.parameters.task)
        columns = [tuple(entry.columns) for entry in manifest.files]
        config = ClassifierConfig(
            task=spec.name,
            model=manifest.model,
            value_column=value_column(manifest.parameters.format, manifest.parameters.column),
            names=names,
            settings=settings,
            image_settings=(image_settings or ApiSettings()) if spec.modality == "image" else None,
        )
        writer = PartWriter(manifest, output, names)
        with contextlib.ExitStack() as session:
            (session if ray_scope is None else ray_scope).enter_context(ray_session(settings))
            import ray.data

            dataset = ray.data.read_datasource(
                _datasource(manifest, input_location, todo, columns), num_cpus=0.25
            ).map_batches(
                Classifier,
                fn_constructor_kwargs={"config": config},
                batch_size=settings.batch_rows,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(
                    size=settings.concurrency,
                    max_concurrent_calls_per_actor=BATCHES_PER_WORKER,
                    enable_true_multi_threading=True,
                ),
                num_cpus=0.5,
            )
            try:
                for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    for record in writer.add(table):
                        records[(record.file, record.part)] = record
                    rows_this_run = writer.received
                    report()
            except Exception as exc:
                found = root_error(exc)
                note = f" ({len(records)} of {len(planned)} parts committed: run the job again to resume)"
                if found is not None:
                    raise type(found)(found.detail + note) from exc
                inner = innermost(exc)
                raise InternalError(f"the job stopped: {type(inner).__name__}: {str(inner)[:500]}{note}") from exc
        missing = [where for where in planned if where not in records]
        if missing:
            raise InternalError(
                f"the job ended with {len(missing)} parts not written (first: {missing[0]}); run it again"
            )
    summary = summarize(
        manifest,
        output,
        records,
        settings,
        resumed=resumed,
        rows_this_run=rows_this_run,
        seconds=time.perf_counter() - start,
    )
    write_bytes(output.child(SUMMARY_FILE), json.dumps(summary.to_document(), indent=1).encode())
    return summary


__all__ = ["JobProgress", "JobRequest", "JobSummary", "plan_job", "run_job"]
