"""The facade's settings: one pydantic-settings class, environment prefix ``MTC_API_``.

Read once in :func:`frontend_api.app.create_app` (or passed in by tests) and handed to every
component; no other module reads the environment. AWS credentials are not settings here: boto3
reads ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_DEFAULT_REGION`` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskspec import TASKS

PROJECT_ROOT = Path(__file__).resolve().parent.parent

TextPadding = Literal["buckets", "max_length"]


class ApiSettings(BaseSettings):
    """Every knob of the facade. Lists are given as JSON in the environment (``'["a", "b"]'``)."""

    model_config = SettingsConfigDict(env_prefix="MTC_API_", env_file=".env", extra="ignore")

    # --- Triton ---
    triton_url: str = Field("127.0.0.1:8000", description="Triton HTTP endpoint as host:port (no scheme)")
    triton_timeout_s: float = Field(
        10.0, gt=0, description="Deadline of one Triton call (queue + compute); past it the facade answers 504"
    )
    triton_connections: int = Field(64, ge=1, description="Connection pool size of the Triton client")
    model_refresh_s: float = Field(
        5.0, ge=0, description="How long the served model version (and its tokenizer) is cached before re-asking Triton"
    )
    tasks: list[str] = Field(
        default_factory=lambda: list(TASKS), description="Tasks this facade serves (names from taskspec)"
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
    upload_expires_s: int = Field(300, ge=10, le=3600, description="Lifetime of presigned upload and GET URLs")
    allowed_buckets: list[str] = Field(
        default_factory=list, description="Buckets (besides upload_bucket) that /v1/pose may fetch images from"
    )
    allowed_image_hosts: list[str] = Field(
        default_factory=list,
        description="Extra hosts (host or host:port) /v1/pose may fetch from over https, any path",
    )
    allowed_http_hosts: list[str] = Field(
        default_factory=list,
        description="host:port allowed over plain http and on private/loopback addresses (the local S3 server)",
    )
    image_max_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Hard cap on one image download (bytes)")
    image_max_pixels: int = Field(
        40_000_000, ge=1, description="Images with more pixels are refused before decoding (decompression bombs)"
    )
    image_connect_timeout_s: float = Field(3.0, gt=0, description="Connect timeout to an image host")
    image_read_timeout_s: float = Field(10.0, gt=0, description="Read timeout (and overall deadline) of one image")

    # --- protection ---
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest request body accepted (413 above)")
    max_in_flight: int = Field(
        256, ge=1, description="Inference requests handled at once; more are refused with 429 at once"
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Accepted `Authorization: Bearer` keys; empty (the default) switches authentication off. "
        "/healthz, /readyz and the API docs stay open",
    )

    def s3_is_local(self) -> bool:
        """Whether S3 is a custom endpoint (path-style addressing) rather than AWS."""
        return self.s3_endpoint_url is not None
