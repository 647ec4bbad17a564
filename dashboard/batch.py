"""The Batch tab's state (no widgets): start a job from an uploaded file or an S3 URI, follow the facade's jobs.

The job list is the facade's (``GET /v1/jobs``, refreshed every tick of the page), not this session's: a
reload, another browser or another dashboard replica shows the same jobs. A finished job's download link is
the presigned URL ``GET /v1/jobs/{id}/result`` redirects to; it is asked once and asked again before it
expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import param

from dashboard.client import ApiUnavailable, DashboardClientError, FacadeAPI, JobInfo
from dashboard.state import Connection, RequestState

SOURCE_UPLOAD = "Upload a file"
SOURCE_S3 = "S3 URI"
JOB_MEDIA_TYPES = {
    ".csv": "text/csv",
    ".jsonl": "application/x-ndjson",
    ".ndjson": "application/x-ndjson",
    ".parquet": "application/vnd.apache.parquet",
}
ACTIVE_STATES = ("queued", "running", "cancelling")
RESUMABLE_STATES = ("failed", "cancelled")
JOBS_SHOWN = 10
LINK_REUSE_S = 120.0
"""A download link is asked again after this long (the facade signs it for MTC_API_UPLOAD_EXPIRES_S, 300 s)."""


def media_type(filename: str) -> str | None:
    """The content type of a job input file by its extension, or None for another kind of file."""
    name = filename.lower()
    return next((kind for suffix, kind in JOB_MEDIA_TYPES.items() if name.endswith(suffix)), None)


class BatchState(RequestState):
    """The Batch tab: what to classify (a file or an S3 URI, a task, a column) and the facade's jobs."""

    source = param.Selector[str](default=SOURCE_UPLOAD, objects=[SOURCE_UPLOAD, SOURCE_S3])
    s3_uri = param.String(default="", doc="s3://bucket/key of the input (a file or a prefix)")
    task = param.Selector[str](default="", objects=[""], doc="The task to classify with")
    column = param.String(default="text", doc="The column holding the texts (or image URLs)")
    filename = param.String(default="", doc="The chosen file's name")
    jobs = param.List(default=[], item_type=JobInfo, doc="The facade's newest jobs, newest first")
    links = param.Dict(default={}, doc="Job id -> presigned download URL of its result")
    list_error = param.String(default="", doc="Why the job list could not be read; empty otherwise")
    started = param.String(default="", doc="The id of the job this session started last")

    def __init__(self, client: FacadeAPI, connection: Connection, **params: object) -> None:
        super().__init__(client, connection, **params)
        self.data: bytes = b""
        self.link_times: dict[str, float] = {}
        self.clock: Callable[[], float] = time.monotonic

    def set_tasks(self, names: list[str]) -> None:
        """The tasks the facade serves (from ``GET /v1/models``), the first one chosen."""
        self.param.task.objects = list(names) or [""]
        self.task = names[0] if names else ""

    def choose_file(self, filename: str, data: bytes) -> None:
        self.data = data
        self.filename = filename

    async def start(self) -> None:
        """Start a job from the chosen file (uploaded first, through a presigned form) or from the S3 URI."""
        if not self.task:
            self.error = "The API lists no task yet."
            return
        column = self.column.strip()
        if not column:
            self.error = "Give the column that holds the texts (for example: text)."
            return
        if self.source == SOURCE_UPLOAD:
            if not self.data:
                self.error = "Choose a CSV, JSON Lines or Parquet file first."
                return
            kind = media_type(self.filename)
            if kind is None:
                self.error = f"{self.filename} is not a .csv, .jsonl, .ndjson or .parquet file."
                return
            filename, data = self.filename, self.data

            async def upload_and_start() -> JobInfo:
                uri = await self.client.upload_job_input(filename, kind, data)
                return await self.client.start_job(uri, self.task, column)

            job = await self._call(upload_and_start)
        else:
            uri = self.s3_uri.strip()
            if not uri.startswith("s3://"):
                self.error = "Give the input as s3://bucket/key (a file or a prefix)."
                return
            job = await self._call(lambda: self.client.start_job(uri, self.task, column))
        if job is not None:
            self.started = job.id
            self.jobs = [job, *[j for j in self.jobs if j.id != job.id]][:JOBS_SHOWN]

    async def refresh(self) -> None:
        """Read the job list again; fetch the download link of each newly finished job (never raises)."""
        try:
            jobs = await self.client.jobs(JOBS_SHOWN)
        except ApiUnavailable as exc:
            self.connection.mark_down(exc.message)
            self.list_error = exc.message
            return
        except DashboardClientError as exc:
            self.list_error = exc.message
            return
        links = {job_id: url for job_id, url in self.links.items() if any(job.id == job_id for job in jobs)}
        now = self.clock()
        for job in jobs:
            fresh = now - self.link_times.get(job.id, -LINK_REUSE_S) < LINK_REUSE_S
            if job.result_url is None or (job.id in links and fresh):
                continue
            try:
                links[job.id] = await self.client.job_result_url(job.id)
                self.link_times[job.id] = now
            except DashboardClientError:
                links.pop(job.id, None)
        self.param.update(jobs=jobs, links=links, list_error="")

    async def cancel(self, job_id: str) -> None:
        job = await self._call(lambda: self.client.cancel_job(job_id))
        if job is not None:
            self.jobs = [job if j.id == job_id else j for j in self.jobs]

    async def resume(self, job_id: str) -> None:
        """Resume a failed or cancelled job: the facade starts a runner that skips its committed parts."""
        job = await self._call(lambda: self.client.resume_job(job_id))
        if job is not None:
            self.jobs = [job if j.id == job_id else j for j in self.jobs]

    def resumable_jobs(self) -> list[JobInfo]:
        return [job for job in self.jobs if job.state in RESUMABLE_STATES]

    def active_jobs(self) -> list[JobInfo]:
        return [job for job in self.jobs if job.state in ("queued", "running")]
