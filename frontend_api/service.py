"""What the routes call: one function per use case, between validated input and response models.

The service knows the task specs, the served model version and its artifacts; it talks to Triton
only through a :class:`~frontend_api.triton_client.TritonBackend` and to image hosts only through
an :class:`~frontend_api.images.ImageFetcher`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from frontend_api.artifacts import ArtifactStore, ImageArtifacts, TextArtifacts, VersionContent
from frontend_api.errors import ApiError, InferenceFailed, ModelNotReady, StorageUnavailable
from frontend_api.images import ImageFetcher, Lease, decode_batch
from frontend_api.metrics import ApiMetrics
from frontend_api.schemas import (
    ConfidenceBucket,
    ImagePrediction,
    ImageResponse,
    ImageTimings,
    LabelProbability,
    ModelInfo,
    ModelRef,
    ModelsResponse,
    ModelStats,
    Readiness,
    StatsResponse,
    TextPrediction,
    TextResponse,
    TextTimings,
    UploadResponse,
    model_info,
)
from frontend_api.settings import ApiSettings
from frontend_api.singleflight import SingleFlight
from frontend_api.tracing import NO_TRACER, StageTracer
from frontend_api.triton_client import InferOutput, TritonBackend
from frontend_api.uploads import presign_upload
from preprocess.probabilities import softmax
from taskspec import TaskSpec, get_task

logger = logging.getLogger("frontend_api")


def _ms(start: float, end: float | None = None) -> float:
    return round(((end if end is not None else time.perf_counter()) - start) * 1000, 3)


def _highest(versions: Sequence[str]) -> str:
    return max(versions, key=lambda v: (int(v) if v.isdigit() else -1, v))


@dataclass(frozen=True)
class Served:
    """The version Triton serves for a task and the identity of that version's artifacts."""

    version: str
    content: VersionContent


class PlatformService:
    """Classification, model listing, readiness, statistics and presigned uploads."""

    def __init__(
        self,
        settings: ApiSettings,
        triton: TritonBackend,
        artifacts: ArtifactStore,
        fetcher: ImageFetcher,
        presigner: Any,
        metrics: ApiMetrics,
        decode_pool: Executor,
        tracer: StageTracer = NO_TRACER,
    ) -> None:
        self.settings = settings
        self.triton = triton
        self.artifacts = artifacts
        self.fetcher = fetcher
        self.presigner = presigner  # a boto3 S3 client signing for the endpoint clients reach
        self.metrics = metrics
        self.decode_pool = decode_pool  # images are decoded here, never in the loop's default pool
        self.tracer = tracer  # spans per stage (frontend_api.tracing); records nothing while tracing is off
        self.tasks: tuple[TaskSpec, ...] = tuple(get_task(name) for name in settings.tasks)
        self._served = {
            spec.name: SingleFlight(
                functools.partial(self._refresh, spec), settings.model_refresh_s, settings.refresh_failure_s
            )
            for spec in self.tasks
        }
        self._readiness = SingleFlight(self._probe_readiness, settings.readyz_cache_s, settings.readyz_cache_s)

    # --- the served version and its artifacts ---

    async def served(self, spec: TaskSpec) -> Served:
        """The highest ready version of ``spec``'s model and its content identity, refreshed every
        ``model_refresh_s`` by one call for all concurrent requests (a failure is kept ``refresh_failure_s``)."""
        return await self._served[spec.name].get()

    async def _refresh(self, spec: TaskSpec) -> Served:
        version = _highest(await self.triton.model_versions(spec.model_name))
        try:
            content = await self.artifacts.content(spec, version)
        except StorageUnavailable as exc:
            # The repository is unreachable, the version unchanged: keep serving what was checked last, rather
            # than failing every request while the artifacts sit in memory.
            last = self._served[spec.name].last
            if last is None or last.version != version:
                raise
            logger.warning("cannot re-check %s/%s, serving its cached artifacts: %s", spec.name, version, exc.detail)
            return last
        return Served(version, content)

    def forget_version(self, spec: TaskSpec) -> None:
        """Re-ask Triton on the next request (after the served version failed)."""
        self._served[spec.name].invalidate()

    async def _infer(self, spec: TaskSpec, version: str, inputs: dict[str, np.ndarray]) -> InferOutput:
        rows = next(iter(inputs.values())).shape[0]
        try:
            attributes = {"mtc.model": spec.model_name, "mtc.model_version": version, "mtc.rows": rows}
            with self.tracer.start_as_current_span("inference", attributes=attributes):
                output = await self.triton.infer(spec.model_name, version, inputs, spec.output.name)
        except ModelNotReady:
            self.forget_version(spec)  # e.g. that version was unloaded: pick the current one next time
            raise
        if output.logits.shape != (rows, spec.num_labels):
            raise InferenceFailed(
                f"{spec.model_name} returned logits of shape {output.logits.shape}, "
                f"expected ({rows}, {spec.num_labels})"
            )
        return output

    # --- classification ---

    async def classify_texts(self, spec: TaskSpec, texts: Sequence[str]) -> TextResponse:
        """Label every text with ``spec``'s model (a task's own, or one of its variants): tokenize into length
        buckets, one Triton request per bucket, concurrently."""
        start = time.perf_counter()
        served = await self.served(spec)
        version = served.version
        artifacts = await self.artifacts.get(spec, version, served.content)
        if not isinstance(artifacts, TextArtifacts):
            raise ModelNotReady(f"{spec.name}/{version} has no text preprocessing")
        t_tokenize = time.perf_counter()
        encoder = artifacts.encoder
        # Short requests tokenize faster than a thread hop costs; long ones must not block the loop.
        big = sum(len(t) for t in texts) > self.settings.tokenize_in_thread_chars
        with self.tracer.start_as_current_span("tokenize", attributes={"mtc.texts": len(texts)}):
            encoded = await asyncio.to_thread(encoder.encode, texts) if big else encoder.encode(texts)
            groups = encoder.group_rows([e.ids for e in encoded], self.settings.text_padding)
        t_infer = time.perf_counter()
        ids_name, mask_name = spec.input_names
        requests = [self._infer(spec, version, {ids_name: g.input_ids, mask_name: g.attention_mask}) for g in groups]
        outputs = await asyncio.gather(*requests)
        t_done = time.perf_counter()
        predictions: list[TextPrediction | None] = [None] * len(texts)
        labels = artifacts.labels
        for group, output in zip(groups, outputs, strict=True):
            probabilities = softmax(output.logits)
            self.metrics.observe_tokens(spec.name, output.model_version or version, group.attention_mask)
            self.metrics.observe_predictions(spec.name, output.model_version or version, labels, probabilities)
            for index, row in zip(group.indices, probabilities, strict=True):
                predictions[index] = TextPrediction(
                    text_index=index,
                    label=labels[int(np.argmax(row))],
                    probabilities={label: float(p) for label, p in zip(labels, row, strict=True)},
                    tokens=len(encoded[index].ids),
                    text_tokens=encoded[index].text_tokens,
                    truncated=encoded[index].truncated,
                )
        timings = TextTimings(tokenize=_ms(t_tokenize, t_infer), inference=_ms(t_infer, t_done), total=_ms(start))
        self.metrics.observe_stages(spec.name, timings.model_dump())
        self.metrics.items.labels(task=spec.name).inc(len(texts))
        return TextResponse(
            task=spec.task_name,
            model=ModelRef(name=spec.model_name, version=outputs[0].model_version or version),
            predictions=[p for p in predictions if p is not None],
            timings_ms=timings,
        )

    async def classify_images(self, spec: TaskSpec, urls: Sequence[str], top_k: int) -> ImageResponse:
        """Fetch every image (SSRF-checked), decode and normalise off the loop, one batched Triton call."""
        start = time.perf_counter()
        served = await self.served(spec)
        version = served.version
        artifacts = await self.artifacts.get(spec, version, served.content)
        if not isinstance(artifacts, ImageArtifacts):
            raise ModelNotReady(f"{spec.name}/{version} has no image preprocessing")
        lease = self.fetcher.budget.lease()
        try:
            with self.tracer.start_as_current_span("fetch", attributes={"mtc.images": len(urls)}):
                bodies, fetch_ms = await self.fetcher.fetch_all(urls, lease)
        except BaseException:
            lease.release()
            raise
        t_pre = time.perf_counter()
        with self.tracer.start_as_current_span("preprocess"):
            pixels = await self._decode(bodies, artifacts, lease)
        t_infer = time.perf_counter()
        output = await self._infer(spec, version, {spec.input_names[0]: pixels})
        t_done = time.perf_counter()
        labels = artifacts.labels
        probabilities = softmax(output.logits)
        self.metrics.observe_images(spec.name, output.model_version or version, bodies)
        self.metrics.observe_predictions(spec.name, output.model_version or version, labels, probabilities)
        predictions = []
        for index, row in enumerate(probabilities):
            order = np.argsort(-row, kind="stable")
            predictions.append(
                ImagePrediction(
                    image_index=index,
                    label=labels[int(order[0])],
                    probabilities={label: float(p) for label, p in zip(labels, row, strict=True)},
                    top_k=[LabelProbability(label=labels[int(i)], probability=float(row[i])) for i in order[:top_k]],
                )
            )
        timings = ImageTimings(
            fetch=round(fetch_ms, 3), preprocess=_ms(t_pre, t_infer), inference=_ms(t_infer, t_done), total=_ms(start)
        )
        self.metrics.observe_stages(spec.name, timings.model_dump())
        self.metrics.items.labels(task=spec.name).inc(len(urls))
        return ImageResponse(
            task=spec.name,
            model=ModelRef(name=spec.model_name, version=output.model_version or version),
            predictions=predictions,
            timings_ms=timings,
        )

    async def _decode(self, bodies: list[bytes], artifacts: ImageArtifacts, lease: Lease) -> np.ndarray:
        """Decode in the decode pool; the bytes stay counted in the budget until the decoder is done with them,
        even when this request is cancelled meanwhile."""
        job = asyncio.get_running_loop().run_in_executor(
            self.decode_pool, decode_batch, bodies, artifacts.preprocessing, self.settings.image_max_pixels
        )
        job.add_done_callback(lambda _: lease.release())
        return await asyncio.shield(job)

    # --- state ---

    async def _model_info(self, spec: TaskSpec) -> ModelInfo:
        """``spec`` as served: the version requests are classified with, and the labels and truncation length of
        that version's artifacts (so they agree with predictions); the spec's values while none is served."""
        info = model_info(spec)
        if not await self.triton.model_ready(spec.model_name):
            return info
        try:
            served = await self.served(spec)
            artifacts = await self.artifacts.get(spec, served.version, served.content)
        except ApiError:
            return info
        update: dict[str, Any] = {"version": served.version, "labels": list(artifacts.labels), "ready": True}
        update.update(asdict(artifacts.card))  # accuracy and latency from the version's model card
        if artifacts.validation_label_mix is not None:
            update["validation_label_mix"] = dict(artifacts.validation_label_mix)
        if artifacts.validation_confidence is not None:
            update["validation_confidence"] = [
                ConfidenceBucket(le=le, share=share) for le, share in artifacts.validation_confidence
            ]
        if isinstance(artifacts, TextArtifacts):
            preprocessing = artifacts.encoder.preprocessing
            update.update(max_tokens=preprocessing.max_length, truncation=preprocessing.truncation)
        return info.model_copy(update=update)

    async def models(self) -> ModelsResponse:
        """Every task with its served version, that version's labels, its limits and ready state (Triton down: all
        not ready)."""
        return ModelsResponse(models=list(await asyncio.gather(*(self._model_info(spec) for spec in self.tasks))))

    async def readiness(self) -> Readiness:
        """Triton ready and every served task's model ready: one probe per ``readyz_cache_s`` whatever the
        number of callers (a probe asks Triton 1 + number-of-tasks questions)."""
        return await self._readiness.get()

    async def _probe_readiness(self) -> Readiness:
        triton_ready = await self.triton.server_ready()
        ready = await asyncio.gather(*(self.triton.model_ready(spec.model_name) for spec in self.tasks))
        models = {spec.name: bool(r) for spec, r in zip(self.tasks, ready, strict=True)}
        return Readiness(ready=triton_ready and all(models.values()), triton=triton_ready, models=models)

    async def stats(self) -> StatsResponse:
        """Triton's counters for the served tasks' models (every loaded version)."""
        rows = await self.triton.statistics()
        by_model = {spec.model_name: spec for spec in self.tasks}
        ready = dict(
            zip(
                by_model,
                await asyncio.gather(*(self.triton.model_ready(name) for name in by_model)),
                strict=True,
            )
        )
        return StatsResponse(
            models=[
                ModelStats(
                    task=by_model[row.name].name,
                    model=row.name,
                    version=row.version,
                    ready=ready[row.name],
                    request_success=row.success_count,
                    request_failure=row.failure_count,
                    inference_count=row.inference_count,
                    execution_count=row.execution_count,
                    avg_queue_ms=round(row.avg_queue_ms, 3),
                    avg_compute_ms=round(row.avg_compute_ms, 3),
                    batch_sizes={str(size): count for size, count in sorted(row.batch_sizes.items())},
                )
                for row in rows
                if row.name in by_model
            ]
        )

    def presign(self, content_type: str) -> UploadResponse:
        return presign_upload(self.presigner, self.settings, content_type)
