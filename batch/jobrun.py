"""Run one job the REST API created: ``python -m batch run-job s3://<jobs bucket>/<prefix><id>``.

The facade writes the job's ``job.json`` (:mod:`batch.jobstate`) and starts this command in a process of its own (a
new session: it outlives a facade restart). The command runs :func:`batch.runner.run_job` into the job's ``output/``
and, beside it, keeps ``status.json`` current: a heartbeat thread rewrites it every ``heartbeat_s`` with the
progress and polls for the ``cancel`` marker. On cancel the next progress report stops the job (and, should none
come, e.g. while Ray starts, the main thread is interrupted like Ctrl-C), and the committed parts stay. When every
part is committed the parts are streamed into one ``result.<ext>`` file. The final status (succeeded, failed with
the error in the facade's taxonomy, or cancelled) is the last thing written; Ray is shut down after it, whatever the
end. A resumed job (``POST /v1/jobs/{id}/resume``) is this command again: :func:`~batch.runner.run_job` skips the
parts committed in the output, and the status starts from the last run's figures.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import threading
import time
from typing import Any

import pyarrow.parquet as pq

from batch.errors import InvalidJob
from batch.jobstate import (
    CANCEL_MARKER,
    JOB_RECORD,
    MAX_RECORD_BYTES,
    OUTPUT_DIR,
    PROGRESS_FIELDS,
    STATUS_RECORD,
    JobError,
    JobRecord,
    JobStatus,
    now_iso,
    parse_status,
    result_name,
)
from batch.runner import JobProgress, JobRequest, JobSummary, run_job
from batch.settings import BatchSettings
from batch.storage import Location, parse_location, read_bytes, write_bytes
from frontend_api.errors import ApiError, InternalError

logger = logging.getLogger("batch.jobrun")


class JobCancelled(ApiError):
    """The job was cancelled (``DELETE /v1/jobs/{id}``)."""

    slug, status, title = "job-cancelled", 409, "Job cancelled"


def _error(exc: ApiError) -> JobError:
    return JobError(type=exc.type_uri(), title=exc.title, detail=exc.detail)


def write_result(output: Location, folder: Location, summary: JobSummary) -> str:
    """Stream every part, in order, into ``folder/result.<ext>`` (CSV: one header); returns its name."""
    name = result_name(summary.format)
    fs = folder.filesystem()
    target = folder.child(name)
    with fs.open_output_stream(target.path) as sink:  # on S3 a multipart upload: the object appears on close
        if summary.format == "parquet":
            writer: pq.ParquetWriter | None = None
            for part in summary.part_files:
                table = pq.read_table(output.child(part).path, filesystem=fs)
                if writer is None:
                    writer = pq.ParquetWriter(sink, table.schema)
                writer.write_table(table.cast(writer.schema))
            if writer is not None:
                writer.close()
            return name
        header = b""
        for index, part in enumerate(summary.part_files):
            data = read_bytes(output.child(part)) or b""
            if summary.format == "csv":
                if index == 0:
                    header = data[: data.index(b"\n") + 1] if b"\n" in data else data
                elif data.startswith(header):
                    data = data[len(header) :]  # every part starts with the same header line (pyarrow's writer)
            sink.write(data)
    return name


class JobRun:
    """The state shared by the job's main thread (progress reports) and its heartbeat thread."""

    def __init__(self, folder: Location, heartbeat_s: float, previous: JobStatus | None = None) -> None:
        self.folder = folder
        self.heartbeat_s = heartbeat_s
        self.lock = threading.Lock()
        kept = previous.model_dump(include=PROGRESS_FIELDS) if previous is not None else {}  # a resumed job's
        self.status = JobStatus(state="running", started_at=now_iso(), updated_at=now_iso(), **kept)
        self.cancel = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="mtc-job-heartbeat", daemon=True)

    def cancel_requested(self) -> bool:
        return read_bytes(self.folder.child(CANCEL_MARKER)) is not None

    def update(self, **fields: Any) -> JobStatus:
        with self.lock:
            self.status = self.status.model_copy(update={**fields, "updated_at": now_iso()})
            return self.status

    def write(self, status: JobStatus) -> None:
        write_bytes(self.folder.child(STATUS_RECORD), status.model_dump_json(indent=1).encode())

    def progress(self, state: JobProgress) -> None:
        self.update(
            rows_total=state.rows_total,
            rows_done=state.rows_done,
            rows_failed=state.rows_failed,
            parts_total=state.parts_total,
            parts_done=state.parts_done,
            rows_per_s=round(state.rows_per_s, 2),
        )
        if self.cancel.is_set():
            raise JobCancelled("the job was cancelled")

    def _beat(self) -> None:
        cancel_seen = 0.0
        interrupted = False
        while not self.stopped.wait(self.heartbeat_s):
            try:
                self.write(self.update())
                if not self.cancel.is_set() and self.cancel_requested():
                    self.cancel.set()
                    cancel_seen = time.monotonic()
            except ApiError as exc:  # storage failing for a moment: the next beat tries again
                logger.warning("job heartbeat: %s", exc.detail)
            # No progress report came to stop the job (Ray starting, planning): interrupt it like Ctrl-C.
            if cancel_seen and not interrupted and time.monotonic() - cancel_seen > 3 * self.heartbeat_s:
                if not self.stopped.is_set():
                    _thread.interrupt_main()
                interrupted = True

    def __enter__(self) -> JobRun:
        self.write(self.status)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


def run_api_job(job_uri: str, settings: BatchSettings, *, heartbeat_s: float = 1.0) -> JobStatus:
    """Run the job in ``job_uri`` (its folder) to its end; returns (and writes) its final status."""
    folder = parse_location(job_uri, settings, what="job folder")
    data = read_bytes(folder.child(JOB_RECORD))
    if data is None or len(data) > MAX_RECORD_BYTES:
        raise InvalidJob(f"{folder.child(JOB_RECORD).uri} is missing or too large")
    record = JobRecord.model_validate_json(data)
    output = folder.child(OUTPUT_DIR)
    request = JobRequest(
        input=record.input, output=output.uri, task=record.task, column=record.column, format=record.format
    )
    run = JobRun(folder, heartbeat_s, parse_status(read_bytes(folder.child(STATUS_RECORD))))  # a resume's figures
    if run.cancel_requested():
        final = run.update(state="cancelled", finished_at=now_iso())
        run.write(final)
        return final
    summary: JobSummary | None = None
    error: ApiError | None = None
    # Ray stops after the final status is written, whatever the end. Stopping it can take the process with it:
    # Ray 2.60 sometimes aborts when a job is cancelled mid-run ("The core worker has already been shutdown ...
    # The process will exit", from one of Ray Data's threads), which left jobs in "cancelling" for good when the
    # status came after. Nothing is written after the status: requests of ours still at Triton are lost work.
    with contextlib.ExitStack() as ray_scope:
        try:
            with run:
                try:
                    summary = run_job(request, settings, progress=run.progress, ray_scope=ray_scope)
                    run.update(
                        state="succeeded",
                        rows_total=summary.rows_total,
                        rows_done=summary.rows_total,
                        rows_failed=summary.rows_failed,
                        parts_total=summary.parts,
                        parts_done=summary.parts,
                        model_version=summary.model_version,
                        labels=summary.labels,
                        failure_reasons=summary.failure_reasons,
                        format=summary.format,
                        result=write_result(output, folder, summary),
                    )
                except ApiError as exc:
                    error = exc
                except Exception as exc:  # a bug of ours: still a final status, never a job stuck in "running"
                    logger.exception("job %s stopped", record.id)
                    error = InternalError(f"the job stopped: {type(exc).__name__}: {str(exc)[:500]}")
        except KeyboardInterrupt:
            if not run.cancel.is_set():
                raise
            error = JobCancelled("the job was cancelled")
        if run.cancel.is_set() and (summary is None or isinstance(error, JobCancelled)):
            final = run.update(state="cancelled", finished_at=now_iso(), error=None)
        elif error is not None:
            final = run.update(state="failed", finished_at=now_iso(), error=_error(error))
        else:
            final = run.update(finished_at=now_iso())
        run.write(final)
    return final


__all__ = ["JobCancelled", "run_api_job", "write_result"]
