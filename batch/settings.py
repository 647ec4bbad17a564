"""The batch runner's settings: one pydantic-settings class, environment prefix ``MTC_BATCH_``.

Image URLs (the ``pose`` task) are fetched with the facade's own rules and limits: the runner builds the
facade's :class:`~frontend_api.settings.ApiSettings` (``MTC_API_*``: allowed buckets and hosts, byte caps,
timeouts) for them, so a URL refused by ``POST /v1/pose`` is refused by a job too. S3 credentials come from
the AWS chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role), never from
these settings.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from frontend_api.settings import PROJECT_ROOT, TritonAddress
from taskspec import BATCH_PRIORITY, INTERACTIVE_PRIORITY, PRIORITY_LEVELS

TextPadding = Literal["buckets", "max_length"]


def _default_cpus() -> int:
    return max(1, min(2, os.cpu_count() or 1))


class BatchSettings(TritonAddress):
    """Every knob of the batch runner. Lists are given as JSON in the environment (``'["a", "b"]'``)."""

    model_config = SettingsConfigDict(env_prefix="MTC_BATCH_", env_file=".env", extra="ignore", populate_by_name=True)

    # --- Triton (triton_protocol, triton_url, triton_grpc_url: TritonAddress, as the facade) and the model
    # repository (the same ones the facade uses) ---
    triton_connections: int = Field(
        16, ge=1, description="Connection pool of each worker's HTTP Triton client (gRPC multiplexes one connection)"
    )
    triton_timeout_s: float = Field(
        30.0, gt=0, description="Deadline of one Triton call (queue + compute); Triton drops the request after it"
    )
    triton_retries: int = Field(
        3,
        ge=0,
        description="Retries of a batch Triton shed or could not answer (overloaded, restarting, timed out), "
        "1 s, 2 s, 3 s... apart; past them the job stops (committed parts are kept: rerun to resume)",
    )
    model_repository: str = Field(
        str(PROJECT_ROOT / "model_repository"),
        description="Local folder or s3://bucket/prefix holding <task>/<version>/preprocessing.json and "
        "tokenizer.json (the repository Triton serves)",
    )
    triton_priority: int = Field(
        BATCH_PRIORITY,
        ge=0,
        le=PRIORITY_LEVELS,
        description=f"Triton priority level of every batch request: {BATCH_PRIORITY} (the default) is served after "
        f"every interactive request (level {INTERACTIVE_PRIORITY}, the facade's) and queues under the models' "
        "batch queue policy; 0 or 1 opts out (the job competes with interactive traffic)",
    )
    text_padding: TextPadding = Field("buckets", description="As the facade's MTC_API_TEXT_PADDING")

    # --- Ray ---
    ray_address: str | None = Field(
        None,
        description="An existing Ray cluster (`ray://head:10001`, `head:6379` or `auto`); unset: a local Ray is "
        "started for the job and stopped after it",
    )
    ray_num_cpus: int = Field(
        default_factory=_default_cpus, ge=1, description="CPUs of the local Ray (default min(2, CPU count))"
    )
    ray_object_store_mib: int = Field(512, ge=100, description="Object store of the local Ray, MiB")
    concurrency: int = Field(
        1,
        ge=1,
        description="Classifier workers. One keeps a CPU Triton busy (each holds two batches and paces its requests, "
        "batch.pacing); with more, each counts the others' requests as interactive traffic and keeps to "
        "triton_in_flight",
    )

    triton_request_rows: int = Field(
        1,
        ge=1,
        description="Rows per Triton request (at most the model's max_batch_size). A running request cannot be "
        "interrupted, so this bounds how long an interactive request waits for a CPU instance; raise it on a GPU "
        "(docs/batch.md)",
    )
    triton_in_flight: int = Field(
        1,
        ge=1,
        description="Triton requests each worker keeps in flight while anyone else uses the model. Keep "
        "concurrency x this at most the model's instance count: a job request waiting in Triton's queue is "
        "batched together with the next interactive request, which then waits for its compute",
    )
    triton_in_flight_idle: int = Field(
        8,
        ge=1,
        description="Triton requests each worker keeps in flight while nobody else uses the model (Triton's "
        "statistics, read every pacing_interval_s). More than the instance count keeps a queue, so no instance "
        "waits for a round trip; equal to triton_in_flight turns the pacing off",
    )
    pacing_interval_s: float = Field(
        0.5, gt=0, le=60, description="How often a worker reads Triton's statistics to choose its in-flight bound"
    )
    pacing_window_s: float = Field(
        2.0,
        gt=0,
        le=600,
        description="Others' requests within this many seconds keep a worker at triton_in_flight",
    )

    # --- the job's shape ---
    batch_rows: int = Field(64, ge=1, le=4096, description="Rows per batch a worker classifies at once")
    rows_per_part: int = Field(
        1000, ge=1, description="Rows per output part: the unit committed, and redone after a crash"
    )
    max_text_chars: int = Field(
        100_000, ge=1, description="Longer texts are failed rows (texts are truncated to the model's tokens anyway)"
    )
    image_fetch_concurrency: int = Field(8, ge=1, description="Images one worker downloads at once")
    failures_listed: int = Field(
        1000, ge=0, description="Failed rows listed (row and reason) in the summary; all are counted"
    )

    # --- S3 (input and output locations) ---
    allowed_buckets: list[str] = Field(
        default_factory=list,
        description="Buckets a job may read its input from and write its output to (s3://...); empty: none",
    )
    s3_endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("MTC_BATCH_S3_ENDPOINT_URL", "MTC_S3_ENDPOINT_URL"),
        description="S3 endpoint (MinIO, the local SeaweedFS); unset for AWS. Also read from MTC_S3_ENDPOINT_URL",
    )
    s3_region: str = Field(
        "us-east-1",
        validation_alias=AliasChoices("MTC_BATCH_S3_REGION", "MTC_S3_REGION", "AWS_DEFAULT_REGION"),
        description="S3 region (also read from MTC_S3_REGION and AWS_DEFAULT_REGION)",
    )
