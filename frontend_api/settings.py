"""The facade's settings: one pydantic-settings class, environment prefix ``MTC_API_``.

Read once in :func:`frontend_api.app.create_app` (or passed in by tests) and handed to every
component; no other module reads the environment. AWS credentials are not settings here: boto3
reads ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_DEFAULT_REGION`` itself.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskspec import TASK_MODULES_ENV, TASKS, TaskModuleError, load_task_modules

PROJECT_ROOT = Path(__file__).resolve().parent.parent

TextPadding = Literal["buckets", "max_length"]
TritonProtocol = Literal["grpc", "http"]

MIN_KEY_CHARS = 16
KEYGEN_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def is_loopback_host(host: str) -> bool:
    """Whether binding to ``host`` keeps the facade on this machine (127.0.0.0/8, ::1, ``localhost``)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to any interface


def _default_decode_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def describe_settings_error(error: ValidationError) -> str:
    """A pydantic error on :class:`ApiSettings` as one line naming the environment variables."""
    parts = []
    for issue in error.errors():
        message = str(issue.get("msg", "")).removeprefix("Value error, ")
        loc = issue.get("loc", ())
        parts.append(f"MTC_API_{str(loc[0]).upper()}: {message}" if loc else message)
    return "; ".join(parts)


class TritonAddress(BaseSettings):
    """Where Triton listens and how to call it: the fields the facade (``MTC_API_*``) and the batch runner
    (``MTC_BATCH_*``) share, so both read the same names with the same defaults."""

    triton_protocol: TritonProtocol = Field(
        "grpc",
        description="How to call Triton: `grpc` (tritonclient.grpc.aio at triton_grpc_url) or `http` "
        "(tritonclient.http.aio at triton_url); same requests, same errors (docs/benchmarks.md: which is faster)",
    )
    triton_url: str = Field("127.0.0.1:8000", description="Triton HTTP endpoint as host:port (no scheme)")
    triton_grpc_url: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint as host:port (no scheme)")


class ApiSettings(TritonAddress):
    """Every knob of the facade. Lists are given as JSON in the environment (``'["a", "b"]'``)."""

    model_config = SettingsConfigDict(env_prefix="MTC_API_", env_file=".env", extra="ignore", populate_by_name=True)

    # --- where `python -m frontend_api` listens (also what the exposure check reads) ---
    host: str = Field(
        "127.0.0.1",
        description="Address the facade binds to (`python -m frontend_api`; `uvicorn frontend_api.app:app` must be "
        "given the same). Not loopback: API keys are required unless allow_anonymous is set",
    )
    port: int = Field(8080, ge=1, le=65535, description="Port the facade listens on (`python -m frontend_api`)")
    access_log: bool = Field(True, description="Log one line per request (`python -m frontend_api`)")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes of `python -m frontend_api` (uvicorn's), sharing the port. Each has its own "
        "in-flight limit (max_in_flight), Triton client and caches; /metrics sums over all of them",
    )

    # --- Triton (triton_protocol, triton_url, triton_grpc_url: TritonAddress) ---
    triton_timeout_s: float = Field(
        10.0, gt=0, description="Deadline of one Triton call (queue + compute); past it the facade answers 504"
    )
    triton_connections: int = Field(
        64, ge=1, description="Connection pool size of the HTTP Triton client (gRPC multiplexes one connection)"
    )
    model_refresh_s: float = Field(
        5.0,
        ge=0,
        description="How long the served model version (and the digest of its artifacts) is cached before re-asking "
        "Triton and re-reading the version's manifest",
    )
    refresh_failure_s: float = Field(
        1.0,
        ge=0,
        description="After a failed version refresh (Triton down or hung), requests get the same error at once for "
        "this long instead of each waiting for Triton again",
    )
    readyz_cache_s: float = Field(
        1.0, ge=0, description="How long one /readyz answer is reused (one probe of Triton per period at most)"
    )
    task_modules: str = Field(
        "",
        validation_alias=AliasChoices("MTC_API_TASK_MODULES", TASK_MODULES_ENV),
        description=f"Comma-separated Python modules that register tasks beyond the built-ins, imported at start-up "
        f"(taskspec.load_task_modules); also read from {TASK_MODULES_ENV}, which the exporter and the stack read too",
    )
    tasks: list[str] = Field(
        default_factory=list,
        description="Tasks this facade serves (names from taskspec); empty (the default): every known task, the "
        "built-ins and those the task modules register. A variant (e.g. `sentiment_tiny`) is served on its task's "
        "route (the request's `model`) and needs its task listed too",
    )

    # --- artifacts that travel with the weights ---
    model_repository: str = Field(
        str(PROJECT_ROOT / "model_repository"),
        description="Local folder or s3://bucket/prefix holding <task>/<version>/preprocessing.json and tokenizer.json",
    )

    # --- text ---
    text_padding: TextPadding = Field(
        "buckets",
        description="`buckets`: pad to the smallest length bucket of the task (batches well in Triton); "
        "`max_length`: always pad to the model's maximum (for comparison)",
    )
    tokenize_in_thread_chars: int = Field(
        2048, ge=0, description="Requests with more characters than this are tokenized in a worker thread"
    )

    # --- S3: uploads and image fetching ---
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (moto, MinIO); unset for AWS")
    s3_public_endpoint_url: str | None = Field(
        None,
        description="Endpoint clients reach S3 at when it differs from s3_endpoint_url (e.g. http://localhost:9000 "
        "outside docker compose): presigned URLs are signed for it, and the facade fetches such URLs through "
        "s3_endpoint_url with the signed Host header",
    )
    s3_region: str = Field(
        "us-east-1",
        validation_alias=AliasChoices("MTC_API_S3_REGION", "AWS_DEFAULT_REGION"),
        description="S3 region (also read from AWS_DEFAULT_REGION)",
    )
    upload_bucket: str = Field("mtc-uploads", description="Bucket that presigned upload URLs point to")
    upload_expires_s: int = Field(
        300, ge=10, le=3600, description="Lifetime of presigned upload (POST) and GET URLs, in seconds"
    )
    allowed_buckets: list[str] = Field(
        default_factory=list, description="Buckets (besides upload_bucket) that the image routes may fetch images from"
    )
    allowed_image_hosts: list[str] = Field(
        default_factory=list,
        description="Extra hosts (host or host:port) the image routes may fetch from over https, any path",
    )
    allowed_http_hosts: list[str] = Field(
        default_factory=list,
        description="host:port allowed over plain http and on private/loopback addresses (the local S3 server)",
    )
    image_max_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description="Hard cap on one image: bytes on the wire while downloading, and the size limit of "
        "presigned uploads",
    )
    image_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Image bytes held across all requests (downloading or waiting to be decoded); past it, 429",
    )
    image_max_pixels: int = Field(
        40_000_000, ge=1, description="Images with more pixels are refused before decoding (decompression bombs)"
    )
    image_connect_timeout_s: float = Field(3.0, gt=0, description="Connect timeout to an image host")
    image_read_timeout_s: float = Field(
        10.0, gt=0, description="Read timeout, and overall deadline of one image (DNS, connect and download)"
    )
    dns_timeout_s: float = Field(2.0, gt=0, description="Deadline of resolving an image host's name")
    dns_threads: int = Field(4, ge=1, description="Threads resolving image hosts (a pool of their own)")
    decode_threads: int = Field(
        default_factory=_default_decode_threads,
        ge=1,
        description="Threads decoding images (a pool of their own); default min(4, CPU count)",
    )

    # --- protection ---
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest request body accepted (413 above)")
    max_in_flight: int = Field(
        256,
        ge=1,
        description="Inference requests handled at once by one worker process (workers x this in all); more are "
        "refused with 429 at once",
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description=f"Accepted `Authorization: Bearer` keys (at least {MIN_KEY_CHARS} characters, no whitespace). "
        "Empty (the default): no authentication, allowed only on loopback or with allow_anonymous. "
        "/healthz, /readyz and the API docs stay open",
    )
    allow_anonymous: bool = Field(
        False,
        description="Serve without API keys on a non-loopback address (on purpose, e.g. behind an authenticating "
        "proxy). Without it and without keys, the facade refuses to start there, and answers loopback "
        "connections only",
    )

    # --- batch jobs: /v1/jobs (docs/batch.md) ---
    jobs_bucket: str = Field(
        "", description="Bucket holding the jobs' folders (records, status, output); empty: upload_bucket"
    )
    jobs_prefix: str = Field("jobs/", description="Key prefix of the jobs' folders in jobs_bucket (ends with /)")
    jobs_input_buckets: list[str] = Field(
        default_factory=list,
        description="Buckets a job may read its input from (s3:// URIs only; besides uploads of /v1/jobs/uploads)",
    )
    jobs_max_running: int = Field(2, ge=1, description="Jobs queued or running at once; more are refused with 429")
    jobs_max_upload_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Largest input file a presigned job upload accepts"
    )
    jobs_stale_s: float = Field(
        120.0, gt=0, description="A job whose runner has not reported for this long is shown as failed (runner lost)"
    )
    jobs_listed: int = Field(100, ge=1, le=1000, description="Newest jobs that GET /v1/jobs and the limit look at")
    jobs_ray_address: str | None = Field(
        None, description="Ray cluster the job runners join (MTC_BATCH_RAY_ADDRESS); unset: a local Ray per job"
    )

    # --- tracing (docs/observability.md) ---
    otlp_endpoint: str | None = Field(
        None,
        description="OpenTelemetry collector (OTLP over HTTP) as http(s)://host:port; spans go to "
        "<endpoint>/v1/traces. Unset (the default): no tracing at all, nothing built or exported",
    )
    otlp_service_name: str = Field("mtc-api", min_length=1, description="`service.name` of the facade's spans")
    trace_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of requests traced (a request whose parent was sampled always is)"
    )
    trace_trust_incoming: bool = Field(
        False,
        description="Continue the trace of a client's `traceparent` header (behind a tracing gateway); by default "
        "such headers are ignored and every request starts a trace of its own",
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if not value:
            return None
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment:
            raise ValueError(f"{value!r} is not an http(s)://host:port URL of an OTLP/HTTP collector")
        return value.rstrip("/")

    @field_validator("jobs_prefix")
    @classmethod
    def _a_plain_prefix(cls, value: str) -> str:
        segments = value.split("/")
        if not value.endswith("/") or any(seg in ("", ".", "..") for seg in segments[:-1]) or value.isspace():
            raise ValueError(f"{value!r} is not a key prefix like 'jobs/' (ends with /, no empty, . or .. segments)")
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_are_strong(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for number, key in enumerate(keys, start=1):
            value = key.get_secret_value()
            problem = None
            if not value:
                problem = "is empty"
            elif any(c.isspace() for c in value):
                problem = "contains whitespace"
            elif len(value) < MIN_KEY_CHARS:
                problem = f"is shorter than {MIN_KEY_CHARS} characters"
            if problem:  # never echo the key: it is a secret, and logs are not
                raise ValueError(
                    f"key {number} of {len(keys)} {problem}; every key needs {MIN_KEY_CHARS}+ characters without "
                    f"whitespace ({KEYGEN_HINT})"
                )
        return keys

    @model_validator(mode="after")
    def _known_tasks(self) -> ApiSettings:
        try:
            load_task_modules(self.task_modules)
        except TaskModuleError as exc:
            raise ValueError(str(exc)) from None
        if not self.tasks:
            self.tasks = list(TASKS)
        unknown = [name for name in self.tasks if name not in TASKS]
        if unknown:
            raise ValueError(
                f"MTC_API_TASKS names unknown tasks {', '.join(map(repr, unknown))}; known: {', '.join(TASKS)} "
                f"(a task outside the built-ins needs its module in {TASK_MODULES_ENV})"
            )
        orphans = [name for name in self.tasks if (TASKS[name].variant_of or name) not in self.tasks]
        if orphans:
            raise ValueError(
                f"MTC_API_TASKS names variants without their task: {', '.join(orphans)} (a variant is chosen per "
                f"request on its task's route: add {', '.join(sorted({str(TASKS[n].variant_of) for n in orphans}))})"
            )
        return self

    @model_validator(mode="after")
    def _not_open_beyond_loopback(self) -> ApiSettings:
        if not self.api_keys and not self.allow_anonymous and not is_loopback_host(self.host):
            raise ValueError(
                f"MTC_API_HOST={self.host} is not a loopback address and no API keys are set: set "
                f"MTC_API_API_KEYS='[\"<key>\"]' ({KEYGEN_HINT}), or MTC_API_ALLOW_ANONYMOUS=true to serve "
                "without authentication on purpose"
            )
        if self.image_bytes_in_flight < self.image_max_bytes:
            raise ValueError(
                f"MTC_API_IMAGE_BYTES_IN_FLIGHT ({self.image_bytes_in_flight}) must be at least "
                f"MTC_API_IMAGE_MAX_BYTES ({self.image_max_bytes})"
            )
        return self

    def s3_is_local(self) -> bool:
        """Whether S3 is a custom endpoint (path-style addressing) rather than AWS."""
        return self.s3_endpoint_url is not None
