"""The worker side of a job: one batch of rows in, the same rows with ``label``, ``p_<label>`` and ``error``
out, through the facade's own preprocessing and Triton client.

A :class:`Classifier` is a Ray Data callable class: each Ray worker holds one, with its own Triton client
(:func:`frontend_api.triton_client.make_triton_client`: gRPC by default, as the facade; Triton's failures arrive
as the facade's errors), the pinned version's artifacts (:class:`frontend_api.artifacts.ArtifactStore`: the
tokenizer and preprocessing Triton's model was published with, checked against the version's manifest) and, for
image tasks, the facade's hardened fetcher (:class:`frontend_api.images.ImageFetcher`: SSRF rules, no redirects,
no inflation, byte caps). Texts are tokenized into the task's length buckets (:meth:`TextEncoder.groups`)
and images decoded by :func:`frontend_api.images.decode_image`, exactly as for ``/v1/<task>``.

A row that cannot be classified (empty text, an image URL refused or unreachable, an image that does not
decode) gets its reason in ``error`` and no label; the batch goes on. Triton shedding or not answering
is retried ``triton_retries`` times; after that the batch fails, and with it the job (its committed parts
stay: rerun to resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import httpx
import numpy as np
import pyarrow as pa
from botocore.config import Config

from batch.errors import JobConflict
from batch.formats import READ_ERROR_COLUMN, OutputNames
from batch.manifest import ModelPin
from batch.pacing import InFlightLimit, Pacer
from batch.settings import BatchSettings
from frontend_api.artifacts import ArtifactStore, ImageArtifacts, TextArtifacts, make_source
from frontend_api.errors import (
    ApiError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    InferenceFailed,
    ModelNotReady,
)
from frontend_api.images import ImageBudget, ImageFetcher, SystemResolver, UrlPolicy, decode_image
from frontend_api.settings import ApiSettings
from frontend_api.triton_client import make_triton_client
from preprocess.probabilities import softmax
from taskspec import TaskSpec, get_task

T = TypeVar("T")

BATCHES_PER_WORKER = 2
"""Batches a worker holds at once: the next one is tokenized while the last requests of the current one run."""

RETRIED = (BackendOverloaded, BackendUnavailable, BackendTimeout)
"""Triton failures that pass: a full queue, a restart, a slow moment."""


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything a worker needs (pickled to each Ray worker)."""

    task: str
    model: ModelPin
    value_column: str
    names: OutputNames
    settings: BatchSettings
    image_settings: ApiSettings | None = None
    """The facade's settings whose image rules apply to image URLs (image tasks only)."""


def make_s3_client(settings: BatchSettings) -> Any:
    """boto3 for an ``s3://`` model repository (path-style on a custom endpoint)."""
    addressing = "path" if settings.s3_endpoint_url else "virtual"
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": addressing}),
    )


def text_problem(value: object, max_chars: int) -> str | None:
    """Why ``value`` cannot be classified as a text, or None (the facade's rules, a batch's length cap)."""
    if not isinstance(value, str) or not value.strip():
        return "empty text"
    if len(value) > max_chars:
        return f"text longer than {max_chars} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text is not valid Unicode"
    return None


def reason(exc: ApiError) -> str:
    """A row's failure as its error kind and detail: ``url-not-allowed: ...``."""
    return f"{exc.slug}: {exc.detail}"


class Classifier:
    """Classifies batches of rows (a Ray Data callable class; one instance per worker).

    Its requests to Triton run on one event loop in a thread of its own, so that Ray Data can hand it the next
    batch while the last requests of the current one are still at Triton (:data:`BATCHES_PER_WORKER` calls at
    once): the worker's requests, whichever batch they come from, share one :class:`~batch.pacing.InFlightLimit`
    that its :class:`~batch.pacing.Pacer` sets from Triton's statistics.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        self.config = config
        self.spec: TaskSpec = get_task(config.task)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="classifier-loop", daemon=True)
        self._thread.start()
        self._run(self._open())

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the worker's loop and wait for it (from any thread)."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def _open(self) -> None:
        settings, pin = self.config.settings, self.config.model
        self.triton = make_triton_client(settings)
        repository = settings.model_repository
        store = ArtifactStore(
            make_source(repository, make_s3_client(settings) if repository.startswith("s3://") else None)
        )
        content = await store.content(self.spec, pin.version)
        if content.identity != pin.content:
            raise JobConflict(
                f"the artifacts of {pin.name}/{pin.version} changed since the job started ({pin.content} -> "
                f"{content.identity}); start a new job (new output) to use them"
            )
        self.artifacts = await store.get(self.spec, pin.version, content)
        self.request_rows = min(settings.triton_request_rows, self.spec.batching.max_batch_size)
        self.in_flight = InFlightLimit(settings.triton_in_flight)
        self.finished = 0  # Triton requests of this worker that ended (answered or failed), for the pacer
        self.pacer = Pacer(
            self.in_flight,
            busy=settings.triton_in_flight,
            idle=max(settings.triton_in_flight, settings.triton_in_flight_idle),
            interval_s=settings.pacing_interval_s,
            window_s=settings.pacing_window_s,
            triton_finished=self._triton_finished,
            own_finished=lambda: self.finished,
        )
        self._pacing: asyncio.Task[None] | None = None
        if self.pacer.idle > self.pacer.busy:
            self._pacing = asyncio.create_task(self.pacer.run(), name="pacer")
        self.fetcher: ImageFetcher | None = None
        if self.spec.modality == "image":
            image_settings = self.config.image_settings or ApiSettings()
            self.image_settings = image_settings
            self.resolver = SystemResolver(image_settings.dns_timeout_s, image_settings.dns_threads)
            self.fetcher = ImageFetcher(
                ImageFetcher.make_client(image_settings),
                UrlPolicy(image_settings, self.resolver),
                image_settings,
                ImageBudget(image_settings.image_bytes_in_flight),
            )

    async def _triton_finished(self) -> int:
        """Triton's count of this model's finished requests (every version, answered or failed)."""
        return sum(s.success_count + s.failure_count for s in await self.triton.statistics(self.config.model.name))

    def __call__(self, table: pa.Table) -> pa.Table:
        return self._run(self._classify(table))

    def close(self) -> None:
        async def shut() -> None:
            if self._pacing is not None:
                self._pacing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pacing
            await self.triton.close()
            if self.fetcher is not None:
                await self.fetcher.client.aclose()
                self.resolver.close()

        self._run(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # --- one batch ---

    async def _classify(self, table: pa.Table) -> pa.Table:
        values = table.column(self.config.value_column).to_pylist()
        errors: list[str | None] = (
            table.column(READ_ERROR_COLUMN).to_pylist()
            if READ_ERROR_COLUMN in table.column_names
            else [None] * len(values)
        )
        probabilities = np.full((len(values), self.spec.num_labels), np.nan)
        if self.spec.modality == "text":
            await self._texts(values, errors, probabilities)
        else:
            await self._images(values, errors, probabilities)
        return self._with_outputs(table, errors, probabilities)

    async def _infer(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities of one Triton request, retried while Triton sheds or restarts."""
        pin, spec = self.config.model, self.spec
        attempts, priority = self.config.settings.triton_retries + 1, self.config.settings.triton_priority
        for attempt in range(1, attempts + 1):
            try:
                async with self.in_flight.slot():
                    try:
                        output = await self.triton.infer(
                            pin.name, pin.version, inputs, spec.output.name, priority=priority
                        )
                    finally:
                        self.finished += 1
                break
            except RETRIED:
                if attempt == attempts:
                    raise
                await asyncio.sleep(attempt)
            except ModelNotReady as exc:
                raise ModelNotReady(
                    f"{exc.detail} (the job is pinned to version {pin.version}: serve it again to finish the job)"
                ) from exc
        rows = next(iter(inputs.values())).shape[0]
        if output.logits.shape != (rows, spec.num_labels):
            raise InferenceFailed(
                f"{pin.name} returned logits of shape {output.logits.shape}, expected ({rows}, {spec.num_labels})"
            )
        return softmax(output.logits)

    async def _texts(self, values: Sequence[object], errors: list[str | None], out: np.ndarray) -> None:
        artifacts = self.artifacts
        assert isinstance(artifacts, TextArtifacts)
        limit = self.config.settings.max_text_chars
        for index, value in enumerate(values):
            if errors[index] is None:
                errors[index] = text_problem(value, limit)
        good = [i for i, error in enumerate(errors) if error is None]
        if not good:
            return
        texts = [str(values[i]) for i in good]
        groups = await asyncio.to_thread(artifacts.encoder.groups, texts, self.config.settings.text_padding)
        chunks = [chunk for group in groups for chunk in group.chunks(self.request_rows)]
        results = await asyncio.gather(*(self._infer(chunk.inputs(self.spec.input_names)) for chunk in chunks))
        for chunk, rows in zip(chunks, results, strict=True):
            out[[good[i] for i in chunk.indices]] = rows

    async def _images(self, values: Sequence[object], errors: list[str | None], out: np.ndarray) -> None:
        artifacts, fetcher = self.artifacts, self.fetcher
        assert isinstance(artifacts, ImageArtifacts) and fetcher is not None
        gate = asyncio.Semaphore(self.config.settings.image_fetch_concurrency)
        max_pixels = self.image_settings.image_max_pixels

        async def load(index: int, url: str) -> np.ndarray | None:
            async with gate:
                lease = fetcher.budget.lease()
                try:
                    body = await fetcher.fetch(url, lease)
                    return await asyncio.to_thread(decode_image, body, artifacts.preprocessing, max_pixels)
                except ApiError as exc:
                    errors[index] = reason(exc)
                    return None
                except (httpx.HTTPError, OSError) as exc:  # what the fetcher does not translate itself
                    errors[index] = f"image-host-error: {type(exc).__name__}: {exc}"
                    return None
                finally:
                    lease.release()

        wanted = []
        for index, value in enumerate(values):
            if errors[index] is not None:
                continue
            if not isinstance(value, str) or not value.strip():
                errors[index] = "empty URL"
                continue
            wanted.append((index, value.strip()))
        pixels = await asyncio.gather(*(load(index, url) for index, url in wanted))
        loaded = [(index, p) for (index, _), p in zip(wanted, pixels, strict=True) if p is not None]
        size = self.request_rows
        chunks = [loaded[i : i + size] for i in range(0, len(loaded), size)]
        name = self.spec.input_names[0]
        results = await asyncio.gather(*(self._infer({name: np.stack([p for _, p in chunk])}) for chunk in chunks))
        for chunk, rows in zip(chunks, results, strict=True):
            out[[index for index, _ in chunk]] = rows

    def _with_outputs(self, table: pa.Table, errors: list[str | None], probabilities: np.ndarray) -> pa.Table:
        names, labels = self.config.names, self.artifacts.labels
        failed = np.array([error is not None for error in errors], dtype=bool)
        best = np.argmax(np.nan_to_num(probabilities, nan=-1.0), axis=1)
        table = table.append_column(
            names.label,
            pa.array([None if failed[i] else labels[int(best[i])] for i in range(len(errors))], pa.string()),
        )
        for column, label in enumerate(labels):
            table = table.append_column(
                names.probability(label), pa.array(probabilities[:, column], pa.float64(), mask=failed)
            )
        return table.append_column(names.error, pa.array(errors, pa.string()))
