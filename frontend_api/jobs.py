"""Batch jobs through the REST API (``/v1/jobs``): create, read, list, cancel, resume; the runner runs out of
process.

A job is a folder in S3 (:mod:`batch.jobstate`): the facade writes ``job.json`` and starts
``python -m batch run-job s3://<bucket>/<prefix><id>`` in a session of its own (it outlives a facade
restart, and joins the Ray cluster of ``jobs_ray_address`` when one is set); the runner keeps
``status.json`` current; ``DELETE`` writes the ``cancel`` marker the runner polls for; ``POST .../resume``
starts a new runner for a failed or cancelled job, which skips the parts committed in its output. Every replica
of the facade answers from those objects alone: nothing about a job lives only in one process's memory.

Client input is hostile: the input is an ``s3://`` URI inside ``jobs_input_buckets`` (or an upload of
``POST /v1/jobs/uploads`` in ``upload_bucket``), never a local path or another URL; ids are checked against
their exact shape before they become S3 keys; the number of jobs running at once is bounded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from batch.jobstate import (
    CANCEL_MARKER,
    CONTROL_CHARACTERS,
    FINAL_STATES,
    JOB_RECORD,
    MAX_RECORD_BYTES,
    OUTPUT_DIR,
    PROGRESS_FIELDS,
    RESULT_MEDIA_TYPES,
    STATUS_RECORD,
    JobError,
    JobFormat,
    JobRecord,
    JobStatus,
    is_job_id,
    key_problem,
    new_job_id,
    now_iso,
    parse_status,
)
from frontend_api.errors import ApiError, InternalError, InvalidRequest, NotFound, StorageUnavailable
from frontend_api.schemas import UploadResponse
from frontend_api.settings import PROJECT_ROOT, ApiSettings
from frontend_api.uploads import presigned_form
from taskspec import TASKS, TaskSpec

logger = logging.getLogger("frontend_api.jobs")

JOB_UPLOAD_PREFIX = "job-inputs/"
UPLOAD_EXTENSIONS: dict[str, str] = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/vnd.apache.parquet": "parquet",
}

ViewState = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


# --- errors (the facade's taxonomy) ---


class TooManyJobs(ApiError):
    """``jobs_max_running`` jobs are queued or running already."""

    slug, status, title = "too-many-jobs", 429, "Too many batch jobs running"


class JobFinished(ApiError):
    """The job already ended: there is nothing to cancel."""

    slug, status, title = "job-finished", 409, "Job already finished"


class JobNotResumable(ApiError):
    """The job has a runner (queued, running, cancelling) or nothing left to do (succeeded)."""

    slug, status, title = "job-not-resumable", 409, "Job cannot be resumed"


class JobsUnavailable(ApiError):
    """The facade cannot run jobs here (no ``batch`` extra: Ray and pyarrow are missing)."""

    slug, status, title = "jobs-unavailable", 503, "Batch jobs unavailable"


JOB_ERROR_KINDS: tuple[type[ApiError], ...] = (TooManyJobs, JobFinished, JobNotResumable, JobsUnavailable)
RESUMABLE_STATES = ("failed", "cancelled")


# --- request and response bodies ---


class JobCreate(BaseModel):
    """Start a job: classify ``column`` of every row of ``input`` with ``task``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"input": "s3://my-data/reviews/2026-11.csv", "task": "sentiment", "column": "text"}]
        },
    )

    input: str = Field(
        min_length=6,
        max_length=1024,
        description="s3://bucket/key of a CSV, JSON Lines or Parquet object, or a prefix (every such file below it): "
        "a bucket of MTC_API_JOBS_INPUT_BUCKETS, or the `input` returned by POST /v1/jobs/uploads",
    )
    task: str = Field(description="A task of GET /v1/models")
    column: str = Field("text", min_length=1, max_length=200, description="Column with the texts (or image URLs)")
    format: JobFormat | None = Field(None, description="Input format; default: from the file extensions")
    variant: str | None = Field(
        None, max_length=64, description="A model variant of the task, when the task has any (GET /v1/models)"
    )

    @field_validator("column")
    @classmethod
    def _printable(cls, value: str) -> str:
        if CONTROL_CHARACTERS.search(value):
            raise ValueError("the column name holds control characters")
        return value


class JobUploadRequest(BaseModel):
    """Ask for a presigned form to upload the input file of a job."""

    model_config = ConfigDict(extra="forbid")

    filename: str | None = Field(None, min_length=1, max_length=200, description="Informational; the key is random")
    content_type: Literal["text/csv", "application/x-ndjson", "application/vnd.apache.parquet"] = Field(
        "text/csv", description="The file's format; the upload must be sent with this Content-Type"
    )


class JobUploadResponse(UploadResponse):
    """A presigned POST for the job's input file; once uploaded, send ``input`` to ``POST /v1/jobs``."""

    input: str = Field(description="The uploaded file as a job input: s3://<upload bucket>/job-inputs/<random>.<ext>")


class JobView(BaseModel):
    """A job as every replica of the facade sees it."""

    id: str
    url: str = Field(description="This job: /v1/jobs/{id}")
    state: ViewState = Field(
        description="queued (the runner is starting), running, cancelling (DELETE was asked; the runner stops at "
        "its next report), succeeded, failed (see error), cancelled"
    )
    task: str
    column: str
    input: str
    variant: str | None
    output: str = Field(description="The runner's output location: s3://.../output/ (parts, commit records, summary)")
    created_at: str
    started_at: str | None
    updated_at: str | None = Field(description="The runner's last report")
    finished_at: str | None
    rows_total: int | None = Field(description="Known once the runner has counted the input")
    rows_done: int
    rows_failed: int
    rows_per_s: float = Field(description="Rows classified per second in this run (Ray's start-up included)")
    eta_s: float | None = Field(description="Seconds left at the current rate; null when unknown")
    model_version: str | None
    labels: dict[str, int] = Field(description="Rows per label, when the job succeeded")
    failure_reasons: dict[str, int] = Field(description="Failed rows per reason, when the job succeeded")
    error: JobError | None = Field(description="Why the job failed, as a problem type, title and detail")
    result_url: str | None = Field(
        description="When the job succeeded: /v1/jobs/{id}/result, a redirect to a presigned GET URL of the output "
        "(every row of the input plus label, p_<label> and error, in the input's format)"
    )


class JobList(BaseModel):
    jobs: list[JobView] = Field(description="Newest first")


# --- starting the runner ---


class JobLauncher(Protocol):
    async def start(self, job_id: str, job_uri: str, env: Mapping[str, str]) -> None:
        """Start the runner of ``job_uri``; it must outlive this process."""


class SubprocessLauncher:
    """``python -m batch run-job <job>`` in a new session (a facade restart does not stop it), its output
    in ``<tmp>/mtc-jobs/<id>.log``. The facade reaps the processes it started while it runs."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir or Path(tempfile.gettempdir()) / "mtc-jobs"
        self.waiting: set[asyncio.Task[int]] = set()

    @staticmethod
    def available() -> bool:
        """Whether this host can run a job (the `batch` extra is installed)."""
        try:
            return all(importlib.util.find_spec(name) is not None for name in ("ray", "pyarrow"))
        except ValueError:  # a module set to None in sys.modules (made unimportable on purpose)
            return False

    async def start(self, job_id: str, job_uri: str, env: Mapping[str, str]) -> None:
        if not self.available():
            raise JobsUnavailable("batch jobs need the `batch` extra (ray, pyarrow) where the facade runs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{job_id}.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "batch",
                "run-job",
                job_uri,
                cwd=PROJECT_ROOT,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        task = asyncio.create_task(process.wait())
        self.waiting.add(task)
        task.add_done_callback(self.waiting.discard)


# --- the service ---


def _parse_time(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def available_variants(spec: TaskSpec) -> tuple[str, ...]:
    """The variants a job of ``spec`` may name. None yet: the hook where model variants plug in."""
    del spec
    return ()


class JobService:
    """The job API's work: S3 reads and writes (boto3, in threads) and starting runners."""

    def __init__(self, settings: ApiSettings, s3: Any, presigner: Any, launcher: JobLauncher) -> None:
        self.settings = settings
        self.s3 = s3
        self.presigner = presigner
        self.launcher = launcher
        self.bucket = settings.jobs_bucket or settings.upload_bucket
        self.prefix = settings.jobs_prefix
        self.create_lock = asyncio.Lock()

    # -- S3 --

    def _key(self, job_id: str, name: str) -> str:
        return f"{self.prefix}{job_id}/{name}"

    def folder_uri(self, job_id: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{job_id}"

    def _get(self, key: str) -> bytes | None:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=key)
            if int(response.get("ContentLength", 0)) > MAX_RECORD_BYTES:
                raise StorageUnavailable(f"s3://{self.bucket}/{key} is larger than a job record can be")
            data: bytes = response["Body"].read(MAX_RECORD_BYTES + 1)
            return data
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise StorageUnavailable(f"cannot read the job store: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"cannot read the job store: {exc}") from exc

    def _put(self, key: str, data: bytes) -> None:
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/json")
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"cannot write the job store: {exc}") from exc

    def _delete(self, key: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"cannot write the job store: {exc}") from exc

    def _exists(self, key: str) -> bool:
        return self._get(key) is not None

    def _list_ids(self) -> list[str]:
        """Every job id under the prefix, newest first (ids start with their creation time)."""
        ids: list[str] = []
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    name = str(common["Prefix"])[len(self.prefix) :].rstrip("/")
                    if is_job_id(name):
                        ids.append(name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return []
            raise StorageUnavailable(f"cannot list the job store: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"cannot list the job store: {exc}") from exc
        return sorted(ids, reverse=True)

    def _input_exists(self, bucket: str, key: str) -> bool:
        try:
            listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchBucket", "AccessDenied"):
                return False
            raise StorageUnavailable(f"cannot read the input: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"cannot read the input: {exc}") from exc
        return bool(listed.get("Contents"))

    # -- reading a job --

    def _records(self, job_id: str) -> tuple[JobRecord, JobStatus | None]:
        """The job's ``job.json`` and its ``status.json`` (None before the runner's first report)."""
        if not is_job_id(job_id):
            raise NotFound("no such job")
        data = self._get(self._key(job_id, JOB_RECORD))
        if data is None:
            raise NotFound(f"no job {job_id}")
        try:
            record = JobRecord.model_validate_json(data)
        except ValidationError:
            raise InternalError(f"the record of job {job_id} is not readable") from None
        return record, parse_status(self._get(self._key(job_id, STATUS_RECORD)))

    def _load(self, job_id: str) -> JobView:
        record, status = self._records(job_id)
        return self._view(record, status, self._cancel_asked(job_id, status))

    def _cancel_asked(self, job_id: str, status: JobStatus | None) -> bool:
        """Whether ``DELETE`` asked an unfinished job to stop (its ``cancel`` marker)."""
        if status is not None and status.state in FINAL_STATES:
            return False
        return self._exists(self._key(job_id, CANCEL_MARKER))

    def _view(self, record: JobRecord, status: JobStatus | None, cancel: bool) -> JobView:
        now = dt.datetime.now(dt.UTC)
        stale = dt.timedelta(seconds=self.settings.jobs_stale_s)
        state: ViewState = "queued" if status is None else status.state
        error = status.error if status is not None else None
        last = _parse_time(status.updated_at if status is not None else record.created_at)
        if state in ("queued", "running") and last is not None and now - last > stale:
            state = "failed"
            error = JobError(
                type=InternalError.type_uri(),
                title="Job runner lost",
                detail=f"the job's runner stopped reporting at {last.isoformat(timespec='seconds')} (killed, or its "
                f"machine stopped): its committed parts are kept in the output; POST /v1/jobs/{record.id}/resume "
                "continues it",
            )
        elif cancel and state in ("queued", "running"):
            state = "cancelling"
        rows_total = status.rows_total if status is not None else None
        rows_done = status.rows_done if status is not None else 0
        rate = status.rows_per_s if status is not None else 0.0
        eta = None
        if state == "running" and rows_total is not None and rate > 0:
            eta = round(max(0, rows_total - rows_done) / rate, 1)
        url = f"/v1/jobs/{record.id}"
        return JobView(
            id=record.id,
            url=url,
            state=state,
            task=record.task,
            column=record.column,
            input=record.input,
            variant=record.variant,
            output=f"{self.folder_uri(record.id)}/{OUTPUT_DIR}/",
            created_at=record.created_at,
            started_at=status.started_at if status is not None else None,
            updated_at=status.updated_at if status is not None else None,
            finished_at=status.finished_at if status is not None else None,
            rows_total=rows_total,
            rows_done=rows_done,
            rows_failed=status.rows_failed if status is not None else 0,
            rows_per_s=rate,
            eta_s=eta,
            model_version=status.model_version if status is not None else None,
            labels=status.labels if status is not None else {},
            failure_reasons=status.failure_reasons if status is not None else {},
            error=error,
            result_url=f"{url}/result" if state == "succeeded" and status is not None and status.result else None,
        )

    async def get(self, job_id: str) -> JobView:
        return await asyncio.to_thread(self._load, job_id)

    async def list_jobs(self, limit: int) -> JobList:
        ids = (await asyncio.to_thread(self._list_ids))[:limit]
        views = await asyncio.gather(*(self.get(job_id) for job_id in ids), return_exceptions=True)
        return JobList(jobs=[view for view in views if isinstance(view, JobView)])

    # -- creating, cancelling --

    def _checked_input(self, uri: str) -> tuple[str, str]:
        """``(bucket, key)`` of a client's input URI, or :class:`InvalidRequest`."""
        if CONTROL_CHARACTERS.search(uri) or not uri.startswith("s3://"):
            raise InvalidRequest(
                "a job's input is s3://bucket/key (a file or a prefix); local paths and other URLs are refused"
            )
        parsed = urlsplit(uri)
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        if parsed.query or parsed.fragment or "@" in bucket or ":" in bucket:
            raise InvalidRequest(f"the input {uri!r} is not a plain s3://bucket/key")
        uploads = bucket == self.settings.upload_bucket and key.startswith(JOB_UPLOAD_PREFIX)
        if bucket not in self.settings.jobs_input_buckets and not uploads:
            allowed = ", ".join(self.settings.jobs_input_buckets) or "none (MTC_API_JOBS_INPUT_BUCKETS)"
            raise InvalidRequest(
                f"bucket {bucket!r} is not allowed as a job input; allowed: {allowed}, and files uploaded through "
                "POST /v1/jobs/uploads"
            )
        if not key:
            raise InvalidRequest(f"the input {uri!r} names a whole bucket; give a key or a prefix in it")
        problem = key_problem(key)
        if problem:
            raise InvalidRequest(f"the input {uri!r} has {problem} in its key")
        return bucket, key

    def runner_environment(self) -> dict[str, str]:
        """What the runner is told: the facade's Triton, repository, buckets and image rules (one configuration)."""
        s = self.settings
        env = {
            "MTC_BATCH_TRITON_PROTOCOL": s.triton_protocol,
            "MTC_BATCH_TRITON_URL": s.triton_url,
            "MTC_BATCH_TRITON_GRPC_URL": s.triton_grpc_url,
            "MTC_BATCH_MODEL_REPOSITORY": s.model_repository,
            "MTC_BATCH_ALLOWED_BUCKETS": json.dumps(sorted({self.bucket, s.upload_bucket, *s.jobs_input_buckets})),
            "MTC_BATCH_S3_REGION": s.s3_region,
            # image URLs (pose): the runner fetches them with the facade's rules (batch.settings)
            "MTC_API_UPLOAD_BUCKET": s.upload_bucket,
            "MTC_API_ALLOWED_BUCKETS": json.dumps(s.allowed_buckets),
            "MTC_API_ALLOWED_IMAGE_HOSTS": json.dumps(s.allowed_image_hosts),
            "MTC_API_ALLOWED_HTTP_HOSTS": json.dumps(s.allowed_http_hosts),
            "MTC_API_IMAGE_MAX_BYTES": str(s.image_max_bytes),
            "MTC_API_IMAGE_MAX_PIXELS": str(s.image_max_pixels),
        }
        if s.s3_endpoint_url:
            env["MTC_BATCH_S3_ENDPOINT_URL"] = env["MTC_API_S3_ENDPOINT_URL"] = s.s3_endpoint_url
        if s.s3_public_endpoint_url:
            env["MTC_API_S3_PUBLIC_ENDPOINT_URL"] = s.s3_public_endpoint_url
        if s.jobs_ray_address:
            env["MTC_BATCH_RAY_ADDRESS"] = s.jobs_ray_address
        return env

    def _active(self) -> int:
        active = 0
        for job_id in self._list_ids()[: self.settings.jobs_listed]:
            try:
                if self._load(job_id).state in ("queued", "running", "cancelling"):
                    active += 1
            except NotFound:
                continue
        return active

    async def create(self, body: JobCreate) -> JobView:
        if body.task not in self.settings.tasks:
            raise InvalidRequest(f"unknown task {body.task!r}; tasks: {', '.join(self.settings.tasks)}")
        spec = TASKS[body.task]
        variants = available_variants(spec)
        if body.variant is not None and body.variant not in variants:
            offered = ", ".join(variants) or "none"
            raise InvalidRequest(f"task {body.task!r} has no variant {body.variant!r}; its variants: {offered}")
        bucket, key = self._checked_input(body.input)
        if not await asyncio.to_thread(self._input_exists, bucket, key):
            raise InvalidRequest(f"nothing found at {body.input}")
        async with self.create_lock:  # one replica never starts two jobs past the limit at once
            await self._check_capacity()
            job_id = new_job_id()
            record = JobRecord(
                id=job_id,
                task=spec.name,
                column=body.column,
                input=f"s3://{bucket}/{key}",
                format=body.format,
                variant=body.variant,
                created_at=now_iso(),
            )
            await asyncio.to_thread(self._put, self._key(job_id, JOB_RECORD), record.model_dump_json(indent=1).encode())
            await self._launch(job_id)
        return self._view(record, None, False)

    async def _check_capacity(self) -> None:
        running = await asyncio.to_thread(self._active)
        limit = self.settings.jobs_max_running
        if running >= limit:
            raise TooManyJobs(
                f"{running} job(s) are queued or running; at most {limit} at once (MTC_API_JOBS_MAX_RUNNING): "
                "wait for one to end, or cancel one",
                headers={"Retry-After": "30"},
            )

    async def _launch(self, job_id: str) -> None:
        """Start the job's runner; when it cannot start, the job is failed with the reason (and this raises)."""
        try:
            await self.launcher.start(job_id, self.folder_uri(job_id), self.runner_environment())
        except Exception as exc:
            failed = JobStatus(
                state="failed",
                updated_at=now_iso(),
                finished_at=now_iso(),
                error=JobError(
                    type=JobsUnavailable.type_uri(), title=JobsUnavailable.title, detail=f"not started: {exc}"
                ),
            )
            await asyncio.to_thread(self._put, self._key(job_id, STATUS_RECORD), failed.model_dump_json().encode())
            if isinstance(exc, ApiError):
                raise
            raise JobsUnavailable(f"the job's runner could not be started: {exc}") from exc

    async def cancel(self, job_id: str) -> JobView:
        view = await self.get(job_id)
        if view.state in FINAL_STATES:
            raise JobFinished(f"job {job_id} already ended ({view.state})")
        await asyncio.to_thread(self._put, self._key(job_id, CANCEL_MARKER), b"{}")
        return await self.get(job_id)

    async def resume(self, job_id: str) -> JobView:
        """Start a new runner for a failed or cancelled job (a lost runner included): the same request into the same
        output, so it skips the parts committed there and classifies the rest with the version the job pinned.

        Under the same lock as :meth:`create` and within ``jobs_max_running``. Two replicas resuming one job at the
        same moment would start two runners; both write the same parts under the same names (docs/batch.md)."""
        async with self.create_lock:
            record, status = await asyncio.to_thread(self._records, job_id)
            view = self._view(record, status, await asyncio.to_thread(self._cancel_asked, job_id, status))
            if view.state not in RESUMABLE_STATES:
                raise JobNotResumable(
                    f"job {job_id} is {view.state}: only a failed or cancelled job can be resumed"
                    + (" (it has a runner)" if view.state not in FINAL_STATES else " (it is complete)")
                )
            await self._check_capacity()
            await asyncio.to_thread(self._delete, self._key(job_id, CANCEL_MARKER))
            kept = status.model_dump(include=PROGRESS_FIELDS) if status is not None else {}
            queued = JobStatus(state="queued", updated_at=now_iso(), **kept)  # the runner's progress, until it reports
            await asyncio.to_thread(self._put, self._key(job_id, STATUS_RECORD), queued.model_dump_json().encode())
            await self._launch(job_id)
        return self._view(record, queued, cancel=False)

    async def result_url(self, job_id: str) -> str:
        view = await self.get(job_id)
        if view.result_url is None:
            raise NotFound(f"job {job_id} has no result: it is {view.state}")
        data = await asyncio.to_thread(self._get, self._key(job_id, STATUS_RECORD))
        status = JobStatus.model_validate_json(data or b"{}")
        if status.result is None or status.format is None:
            raise NotFound(f"job {job_id} has no result file")
        try:
            url: str = self.presigner.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self._key(job_id, status.result),
                    "ResponseContentType": RESULT_MEDIA_TYPES[status.format],
                    "ResponseContentDisposition": f'attachment; filename="job-{job_id}-{status.result}"',
                },
                ExpiresIn=self.settings.upload_expires_s,
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"cannot sign the result URL: {exc}") from exc
        return url

    def presign_input(self, body: JobUploadRequest) -> JobUploadResponse:
        """A presigned POST for one input file (random key under ``job-inputs/``, size-capped, short-lived)."""
        s = self.settings
        key = f"{JOB_UPLOAD_PREFIX}{uuid.uuid4().hex}.{UPLOAD_EXTENSIONS[body.content_type]}"
        post, get_url = presigned_form(
            self.presigner, s.upload_bucket, key, body.content_type, s.jobs_max_upload_bytes, s.upload_expires_s
        )
        return JobUploadResponse(
            upload_url=str(post["url"]),
            fields={str(name): str(value) for name, value in post["fields"].items()},
            get_url=str(get_url),
            key=key,
            expires_in=s.upload_expires_s,
            max_bytes=s.jobs_max_upload_bytes,
            input=f"s3://{s.upload_bucket}/{key}",
        )
