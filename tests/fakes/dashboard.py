"""A scripted in-memory facade for the dashboard's unit tests (no network, no browser).

It lists the tasks it is given (by default the task specs' sentiment, disaster and pose, as the facade
would), and answers for any of them. Text predictions are derived from the text (a text containing "good"
gets the task's last label), so a test can tell which text got which row; ``down`` and ``fail_with``
simulate an unreachable facade and an error answer; ``gate`` holds a request open so a test can look at
the page while it runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from dashboard.client import (
    ApiUnavailable,
    DashboardClientError,
    Health,
    ImagePrediction,
    ImageResult,
    JobInfo,
    LabelProbability,
    ModelInfo,
    ModelRef,
    ModelStats,
    TextPrediction,
    TextResult,
)
from taskspec import TASKS, TaskSpec

# What the facade says of a text task's and an image task's request size (its schema's limits).
TEXT_MAX_ITEMS = 64
IMAGE_MAX_ITEMS = 16


def model_info(spec: TaskSpec, max_items: int | None = None, examples: bool = False) -> ModelInfo:
    """What ``GET /v1/models`` says of a task spec (ready, version 1); ``examples`` lists the spec's."""
    if max_items is None:
        max_items = TEXT_MAX_ITEMS if spec.modality == "text" else IMAGE_MAX_ITEMS
    return ModelInfo(
        task=spec.name,
        title=spec.title,
        modality=spec.modality,
        model=spec.model_name,
        version="1",
        labels=list(spec.labels),
        ready=True,
        max_items=max_items,
        examples=list(spec.examples) if examples else [],
        variant_of=spec.variant_of,
        variant=spec.variant,
    )


def default_models() -> list[ModelInfo]:
    return [model_info(spec) for spec in TASKS.values()]


@dataclass
class FakeFacade:
    """Implements :class:`dashboard.client.FacadeAPI` in memory and records every call."""

    base_url: str = "http://fake-facade"
    down: bool = False
    ready: bool = True
    fail_with: DashboardClientError | None = None
    gate: asyncio.Event | None = None
    gated_calls: tuple[str, ...] | None = None
    """The calls ``gate`` holds (None: every call)."""
    model_list: list[ModelInfo] = field(default_factory=default_models)
    stats_result: list[ModelStats] = field(default_factory=list)
    metrics_text: str = ""
    calls: list[tuple[str, object]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    job_list: list[JobInfo] = field(default_factory=list)
    """The facade's jobs, newest first (start_job adds one; tests change them with ``advance``)."""

    async def _enter(self, name: str, argument: object) -> None:
        self.calls.append((name, argument))
        if self.gate is not None and (self.gated_calls is None or name in self.gated_calls):
            await self.gate.wait()
        if self.down:
            raise ApiUnavailable(f"The API at {self.base_url} is unreachable ([Errno 111] Connection refused).")
        if self.fail_with is not None:
            raise self.fail_with

    def _labels(self, task: str) -> list[str]:
        return next(info.labels for info in self.model_list if info.task == task)

    async def models(self) -> list[ModelInfo]:
        await self._enter("models", None)
        return list(self.model_list)

    async def classify_texts(self, task: str, texts: list[str], model: str | None = None) -> TextResult:
        await self._enter("classify_texts", (task, list(texts)) if model is None else (task, list(texts), model))
        labels = self._labels(task)
        predictions = []
        for index, text in enumerate(texts):
            top = len(labels) - 1 if "good" in text.lower() else 0
            probabilities = {label: (0.9 if i == top else 0.1 / (len(labels) - 1)) for i, label in enumerate(labels)}
            predictions.append(TextPrediction(text_index=index, label=labels[top], probabilities=probabilities))
        return TextResult(
            task=task,
            model=ModelRef(name=model or task, version="1"),
            predictions=predictions,
            timings_ms={"tokenize": 0.5, "inference": 4.0, "total": 5.0},
        )

    async def upload_image(self, filename: str, content_type: str, data: bytes) -> str:
        await self._enter("upload_image", (filename, content_type, len(data)))
        url = f"http://storage.test/uploads/{len(self.uploads)}-{filename}?signature=get"
        self.uploads[url] = data
        return url

    async def classify_images(self, task: str, image_urls: list[str], top_k: int) -> ImageResult:
        await self._enter("classify_images", (task, list(image_urls), top_k))
        labels = self._labels(task)
        weights = [float(len(labels) - i) for i in range(len(labels))]
        total = sum(weights)
        probabilities = {label: w / total for label, w in zip(labels, weights, strict=True)}
        ranked = sorted(probabilities.items(), key=lambda item: -item[1])[:top_k]
        prediction = ImagePrediction(
            image_index=0,
            label=ranked[0][0],
            probabilities=probabilities,
            top_k=[LabelProbability(label=label, probability=p) for label, p in ranked],
        )
        return ImageResult(
            task=task,
            model=ModelRef(name=task, version="3"),
            predictions=[prediction.model_copy(update={"image_index": i}) for i in range(len(image_urls))],
            timings_ms={"fetch": 2.0, "preprocess": 3.0, "inference": 9.0, "total": 15.0},
        )

    async def stats(self) -> list[ModelStats]:
        await self._enter("stats", None)
        return list(self.stats_result)

    async def metrics(self) -> str:
        await self._enter("metrics", None)
        return self.metrics_text

    async def health(self) -> Health:
        await self._enter("health", None)
        return Health(ready=self.ready, detail="" if self.ready else "Model not ready (HTTP 503): Triton is not ready")

    async def aclose(self) -> None:
        self.calls.append(("aclose", None))

    # --- batch jobs ---

    async def upload_job_input(self, filename: str, content_type: str, data: bytes) -> str:
        await self._enter("upload_job_input", (filename, content_type, len(data)))
        uri = f"s3://uploads/job-inputs/{len(self.uploads)}.csv"
        self.uploads[uri] = data
        return uri

    async def start_job(self, input_uri: str, task: str, column: str) -> JobInfo:
        await self._enter("start_job", (input_uri, task, column))
        job = JobInfo(
            id=f"{len(self.job_list) + 1:024x}",
            state="queued",
            task=task,
            column=column,
            input=input_uri,
            created_at="2026-12-01T12:00:00+00:00",
        )
        self.job_list.insert(0, job)
        return job

    async def jobs(self, limit: int) -> list[JobInfo]:
        await self._enter("jobs", limit)
        return self.job_list[:limit]

    def advance(self, job_id: str, **fields: object) -> None:
        """Change a job as its runner would (state, rows_done...)."""
        self.job_list = [job.model_copy(update=fields) if job.id == job_id else job for job in self.job_list]

    async def cancel_job(self, job_id: str) -> JobInfo:
        await self._enter("cancel_job", job_id)
        self.advance(job_id, state="cancelling")
        return next(job for job in self.job_list if job.id == job_id)

    async def resume_job(self, job_id: str) -> JobInfo:
        await self._enter("resume_job", job_id)
        self.advance(job_id, state="queued", error=None)
        return next(job for job in self.job_list if job.id == job_id)

    async def job_result_url(self, job_id: str) -> str:
        await self._enter("job_result_url", job_id)
        return f"http://storage.test/jobs/{job_id}/result.csv?signature=get"
