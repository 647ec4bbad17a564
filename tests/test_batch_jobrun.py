"""The runner of a REST-started job (``python -m batch run-job``) without Ray: its records, the result file, a
cancel that arrives before the job starts. The whole path (facade, Ray, Triton, S3) is tests/test_jobs_integration.py.
"""

from __future__ import annotations

import typing
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batch.jobrun
from batch.formats import FORMATS
from batch.jobrun import run_api_job, write_result
from batch.jobstate import (
    CANCEL_MARKER,
    JOB_RECORD,
    MAX_RECORD_BYTES,
    STATUS_RECORD,
    JobFormat,
    JobRecord,
    JobStatus,
    now_iso,
    parse_status,
)
from batch.runner import JobRequest, JobSummary, innermost
from batch.settings import BatchSettings
from batch.storage import parse_location
from frontend_api.errors import InternalError


def summary(fmt: str, parts: list[str]) -> JobSummary:
    return JobSummary(
        input="in", output="out", task="sentiment", model="sentiment", model_version="1", format=fmt,
        rows_total=3, rows_ok=3, rows_failed=0, labels={}, failures=[], failure_reasons={}, parts=len(parts),
        parts_resumed=0, rows_this_run=3, seconds_this_run=1.0, rows_per_s=3.0, part_files=parts,
    )  # fmt: skip


def test_the_job_formats_are_the_runners() -> None:
    assert typing.get_args(JobFormat) == FORMATS


def test_csv_parts_become_one_result_with_one_header(tmp_path: Path) -> None:
    output = tmp_path / "job" / "output"
    output.mkdir(parents=True)
    (output / "part-00000-000000.csv").write_text('"id","text","label"\n"1","a, b","x"\n"2","c","y"\n')
    (output / "part-00000-000001.csv").write_text('"id","text","label"\n"3","d\ne","x"\n')
    folder = parse_location(str(tmp_path / "job"), BatchSettings())

    name = write_result(
        folder.child("output"), folder, summary("csv", ["part-00000-000000.csv", "part-00000-000001.csv"])
    )

    assert name == "result.csv"
    text = (tmp_path / "job" / "result.csv").read_text()
    assert text == '"id","text","label"\n"1","a, b","x"\n"2","c","y"\n"3","d\ne","x"\n'


def test_parquet_parts_become_one_parquet_result(tmp_path: Path) -> None:
    output = tmp_path / "job" / "output"
    output.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2], "label": ["x", None]}), output / "part-00000-000000.parquet")
    pq.write_table(pa.table({"id": [3], "label": ["y"]}), output / "part-00001-000000.parquet")
    folder = parse_location(str(tmp_path / "job"), BatchSettings())

    write_result(
        folder.child("output"), folder, summary("parquet", ["part-00000-000000.parquet", "part-00001-000000.parquet"])
    )

    table = pq.read_table(tmp_path / "job" / "result.parquet")
    assert table.column("id").to_pylist() == [1, 2, 3] and table.column("label").to_pylist() == ["x", None, "y"]


def job_folder(tmp_path: Path, job_id: str, input_name: str = "in.csv") -> Path:
    """A job's folder as the facade leaves it for the runner: its ``job.json`` (sentiment, column ``text``)."""
    folder = tmp_path / "jobs" / job_id
    folder.mkdir(parents=True)
    record = JobRecord(
        id=job_id, task="sentiment", column="text", input=str(tmp_path / input_name), created_at=now_iso()
    )
    (folder / JOB_RECORD).write_text(record.model_dump_json())
    return folder


def test_a_job_cancelled_before_its_runner_starts_ends_cancelled_without_running(tmp_path: Path) -> None:
    folder = job_folder(tmp_path, "0123456789ab0123456789ab")
    (folder / CANCEL_MARKER).write_text("{}")

    status = run_api_job(str(folder), BatchSettings(triton_url="127.0.0.1:9"))  # nothing listens: never asked

    assert status.state == "cancelled" and status.finished_at is not None
    assert JobStatus.model_validate_json((folder / STATUS_RECORD).read_text()) == status
    assert not (folder / "output").exists()


def test_a_job_that_cannot_run_ends_failed_with_the_reason(tmp_path: Path) -> None:
    folder = job_folder(tmp_path, "0123456789ab0123456789ac")
    (tmp_path / "in.csv").write_text("review\ngood\n")

    status = run_api_job(str(folder), BatchSettings(triton_url="127.0.0.1:9"), heartbeat_s=0.05)

    assert status.state == "failed" and status.error is not None
    assert status.error.type == "/problems/invalid-job" and "text" in status.error.detail
    assert JobStatus.model_validate_json((folder / STATUS_RECORD).read_text()).state == "failed"


def test_the_innermost_cause_is_what_a_stopped_job_reports() -> None:
    class Wrapper(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("ray::MapWorker.submit() ... a long traceback")
            self.cause = cause

    try:
        try:
            raise TimeoutError("Triton did not answer")
        except TimeoutError as root:
            raise RuntimeError("user code failed") from root
    except RuntimeError as middle:
        wrapped = Wrapper(middle)
    found = innermost(wrapped)
    assert isinstance(found, TimeoutError) and str(found) == "Triton did not answer"


def test_a_job_records_its_end_before_its_ray_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's local shutdown takes 1.4-1.6 s here, and Ray 2.60 sometimes aborts the process while stopping after a
    cancel: the final status is written first, whatever the end."""
    seen_when_ray_stopped: list[str] = []

    def run_job(request: JobRequest, settings: BatchSettings, *, progress: object, ray_scope: ExitStack) -> JobSummary:
        status = Path(request.output).parent / STATUS_RECORD
        ray_scope.callback(
            lambda: seen_when_ray_stopped.append(JobStatus.model_validate_json(status.read_text()).state)
        )
        if request.input.endswith("bad.csv"):
            raise InternalError("Triton went away")
        Path(request.output).mkdir(parents=True)
        (Path(request.output) / "part-00000-000000.csv").write_text('"text","label"\n"a","x"\n')
        return summary("csv", ["part-00000-000000.csv"])

    monkeypatch.setattr(batch.jobrun, "run_job", run_job)
    good = job_folder(tmp_path, "0123456789ab0123456789ad")
    assert run_api_job(str(good), BatchSettings()).state == "succeeded"
    bad = job_folder(tmp_path, "0123456789ab0123456789ae", input_name="bad.csv")
    assert run_api_job(str(bad), BatchSettings()).state == "failed"

    assert seen_when_ray_stopped == ["succeeded", "failed"]


def test_a_resumed_job_reports_its_last_figures_until_its_runner_counts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``POST /v1/jobs/{id}/resume`` leaves a ``queued`` status with the last run's figures: the new runner's first
    status keeps them (not zeros while Ray starts), with a new start time, no error and no end."""
    folder = job_folder(tmp_path, "0123456789ab0123456789af")
    queued = JobStatus(state="queued", rows_total=10, rows_done=4, rows_failed=1, parts_total=5, parts_done=2,
                       model_version="3", updated_at=now_iso())  # fmt: skip
    (folder / STATUS_RECORD).write_text(queued.model_dump_json())
    first_written: list[JobStatus] = []

    def run_job(request: JobRequest, settings: BatchSettings, *, progress: object, ray_scope: ExitStack) -> JobSummary:
        first_written.append(JobStatus.model_validate_json((folder / STATUS_RECORD).read_text()))
        raise InternalError("Triton went away")

    monkeypatch.setattr(batch.jobrun, "run_job", run_job)
    final = run_api_job(str(folder), BatchSettings())

    [first] = first_written
    assert first.state == "running" and first.started_at is not None and first.finished_at is None
    kept = ("rows_total", "rows_done", "rows_failed", "parts_total", "parts_done", "model_version")
    assert [getattr(first, name) for name in kept] == [10, 4, 1, 5, 2, "3"]
    assert final.state == "failed" and final.rows_done == 4


def test_a_status_record_that_is_missing_too_large_or_unreadable_is_none() -> None:
    status = JobStatus(state="running", rows_done=3, updated_at=now_iso())
    assert parse_status(status.model_dump_json().encode()) == status
    assert parse_status(None) is None
    assert parse_status(b'{"state": "running"') is None  # cut short mid-write
    assert parse_status(b'{"state": "exploded", "updated_at": "x"}') is None
    assert parse_status(b" " * (MAX_RECORD_BYTES + 1)) is None
