"""A scripted in-memory facade for the dashboard's unit tests (no network, no browser).

Text predictions are derived from the text (a text containing "good" is positive/disaster-like), so a
test can tell which text got which row; ``down`` and ``fail_with`` simulate an unreachable facade
and an error answer; ``gate`` holds a request open so a test can look at the page while it runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from dashboard.client import (
    ApiUnavailable,
    DashboardClientError,
    Health,
    ImagePrediction,
    LabelProbability,
    ModelRef,
    ModelStats,
    PoseResult,
    TextPrediction,
    TextResult,
)
from taskspec import POSE, TASKS


@dataclass
class FakeFacade:
    """Implements :class:`dashboard.client.FacadeAPI` in memory and records every call."""

    base_url: str = "http://fake-facade"
    down: bool = False
    ready: bool = True
    fail_with: DashboardClientError | None = None
    gate: asyncio.Event | None = None
    stats_result: list[ModelStats] = field(default_factory=list)
    calls: list[tuple[str, object]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)

    async def _enter(self, name: str, argument: object) -> None:
        self.calls.append((name, argument))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ApiUnavailable(f"The API at {self.base_url} is unreachable ([Errno 111] Connection refused).")
        if self.fail_with is not None:
            raise self.fail_with

    async def classify_texts(self, task: str, texts: list[str]) -> TextResult:
        await self._enter("classify_texts", (task, list(texts)))
        negative, positive = TASKS[task].labels
        predictions = []
        for index, text in enumerate(texts):
            p = 0.9 if "good" in text.lower() else 0.2
            label = positive if p > 0.5 else negative
            predictions.append(
                TextPrediction(text_index=index, label=label, probabilities={negative: 1 - p, positive: p})
            )
        return TextResult(
            task=task,
            model=ModelRef(name=task, version="1"),
            predictions=predictions,
            timings_ms={"tokenize": 0.5, "inference": 4.0, "total": 5.0},
        )

    async def upload_image(self, filename: str, content_type: str, data: bytes) -> str:
        await self._enter("upload_image", (filename, content_type, len(data)))
        url = f"http://storage.test/uploads/{len(self.uploads)}-{filename}?signature=get"
        self.uploads[url] = data
        return url

    async def classify_images(self, image_urls: list[str], top_k: int) -> PoseResult:
        await self._enter("classify_images", (list(image_urls), top_k))
        weights = [float(len(POSE.labels) - i) for i in range(len(POSE.labels))]
        total = sum(weights)
        probabilities = {label: w / total for label, w in zip(POSE.labels, weights, strict=True)}
        ranked = sorted(probabilities.items(), key=lambda item: -item[1])[:top_k]
        prediction = ImagePrediction(
            image_index=0,
            label=ranked[0][0],
            probabilities=probabilities,
            top_k=[LabelProbability(label=label, probability=p) for label, p in ranked],
        )
        return PoseResult(
            task="pose",
            model=ModelRef(name="pose", version="3"),
            predictions=[prediction.model_copy(update={"image_index": i}) for i in range(len(image_urls))],
            timings_ms={"fetch": 2.0, "preprocess": 3.0, "inference": 9.0, "total": 15.0},
        )

    async def stats(self) -> list[ModelStats]:
        await self._enter("stats", None)
        return list(self.stats_result)

    async def health(self) -> Health:
        await self._enter("health", None)
        return Health(ready=self.ready, detail="" if self.ready else "Model not ready (HTTP 503): Triton is not ready")

    async def aclose(self) -> None:
        self.calls.append(("aclose", None))
