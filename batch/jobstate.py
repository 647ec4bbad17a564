"""A job started through the REST API (``POST /v1/jobs``): its folder in S3 and the records in it.

Every facade replica and the runner read and write the same objects, so no job state lives only in one
process's memory::

    s3://<jobs bucket>/<jobs prefix><id>/job.json      what was asked (written once by the facade)
                                         status.json   where the runner is: state, rows done / total, rate,
                                                       the error that stopped it (rewritten by the runner
                                                       every heartbeat, and once more when it ends)
                                         cancel        present: cancel the job (written by DELETE; the
                                                       runner polls for it; removed by a resume)
                                         output/       the runner's output location (batch.manifest:
                                                       _job.json, part-*, _committed/, _summary.json)
                                         result.<ext>  every part in one file, written when the job succeeded

This module is imported by the facade: it needs neither Ray nor pyarrow.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

JOB_RECORD = "job.json"
STATUS_RECORD = "status.json"
CANCEL_MARKER = "cancel"
OUTPUT_DIR = "output"
RESULT_STEM = "result"
MAX_RECORD_BYTES = 1 << 20

JobFormat = Literal["csv", "jsonl", "parquet"]
"""The input formats of :mod:`batch.formats` (a test checks they are the same; that module needs pyarrow)."""
RESULT_MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
PROGRESS_FIELDS: set[str] = {"rows_total", "rows_done", "rows_failed", "parts_total", "parts_done", "model_version"}
"""What a resumed job's status keeps from its last run until the new runner reports (it counts committed parts
again, so the figures do not drop to zero meanwhile)."""

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

JOB_ID = re.compile(r"[0-9a-f]{24}")
"""12 hex digits of the creation time in ms (ids sort by age), 12 random ones."""


def new_job_id() -> str:
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def is_job_id(value: str) -> bool:
    return JOB_ID.fullmatch(value) is not None


def key_problem(key: str) -> str | None:
    """What makes ``key`` unfit as an S3 key of a job (control characters, empty / ``.`` / ``..`` segments), or
    None. The one rule the runner (batch.storage) and the facade (frontend_api.jobs) apply to client keys."""
    if CONTROL_CHARACTERS.search(key):
        return "control characters"
    segments = key.strip("/").split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "empty, '.' or '..' segments"
    return None


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def result_name(fmt: str) -> str:
    return f"{RESULT_STEM}.{fmt}"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobRecord(_Record):
    """What the client asked for (``job.json``)."""

    format_version: Literal[1] = 1
    id: str = Field(pattern=JOB_ID.pattern)
    task: str
    column: str
    input: str
    """``s3://bucket/key``: a file or a prefix, already checked against the allowed buckets."""
    format: JobFormat | None = None
    variant: str | None = None
    created_at: str


class JobError(_Record):
    """The error that stopped a job, in the facade's taxonomy (``type`` as in a problem document)."""

    type: str
    title: str
    detail: str


class JobStatus(_Record):
    """Where the runner is (``status.json``)."""

    format_version: Literal[1] = 1
    state: JobState
    rows_total: int | None = None
    rows_done: int = 0
    rows_failed: int = 0
    parts_total: int | None = None
    parts_done: int = 0
    rows_per_s: float = 0.0
    model_version: str | None = None
    labels: dict[str, int] = Field(default_factory=dict)
    failure_reasons: dict[str, int] = Field(default_factory=dict)
    result: str | None = None
    """The name of the result file in the job's folder (``result.csv``...), once the job succeeded."""
    format: JobFormat | None = None
    error: JobError | None = None
    started_at: str | None = None
    updated_at: str
    """The runner's last heartbeat: a running job whose status is not rewritten for a while has lost its runner."""
    finished_at: str | None = None


def parse_status(data: bytes | None) -> JobStatus | None:
    """A ``status.json`` as read from storage; None when there is none, or it is too large or unreadable (the
    runner rewrites it at its next heartbeat)."""
    if data is None or len(data) > MAX_RECORD_BYTES:
        return None
    try:
        return JobStatus.model_validate_json(data)
    except ValueError:
        return None
