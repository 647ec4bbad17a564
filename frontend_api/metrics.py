"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

Besides traffic (requests, latency, errors), the facade records what it sees and answers per task and
served model version: the top-class probability, the predicted labels, and the size of the inputs (tokens
per text, bytes and pixels per image). A shift in these against the model card's validation figures is the
first sign that the inputs changed (drift) or that the model is less sure of itself than it was.
Every label value is bounded: task names and versions come from the task specs and Triton, predicted labels
from the served version's own label list.

With several worker processes (``MTC_API_WORKERS``), ``python -m frontend_api`` runs them in prometheus_client's
multiprocess mode: it sets ``PROMETHEUS_MULTIPROC_DIR`` to a folder of its own before the workers start, each
worker's values live in files there, and ``/metrics`` (:meth:`ApiMetrics.exposition`, answered by whichever worker
gets the request) sums them over every worker; the gauges sum over live workers (``livesum``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from taskspec import TOP_PROBABILITY_BUCKETS

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's own variable: set (by ``python -m frontend_api`` with workers), values go to files there."""


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Real tokens per text (after truncation to the model's max length, special tokens included).
_TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512)
_IMAGE_BYTE_BUCKETS = (16e3, 64e3, 256e3, 1e6, 4e6, 16e6)
_IMAGE_PIXEL_BUCKETS = (64**2, 128**2, 256**2, 512**2, 1024**2, 2048**2, 4096**2, 8192**2)


class ApiMetrics:
    """Requests, latency per endpoint and per stage, errors by kind, work in flight."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mtc_api_requests",
            "HTTP requests by route template, method and status code",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mtc_api_request_duration_seconds",
            "Request latency inside the facade by route template",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "mtc_api_stage_duration_seconds",
            "Time per pipeline stage (tokenize, fetch, preprocess, inference) by task",
            ["task", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "mtc_api_errors", "Error responses by problem type", ["kind", "status"], registry=self.registry
        )
        self.items = Counter("mtc_api_items", "Texts or images classified by task", ["task"], registry=self.registry)
        self.in_flight = Gauge(
            "mtc_api_in_flight", "Inference requests being handled", registry=self.registry, multiprocess_mode="livesum"
        )
        self.image_bytes = Gauge(
            "mtc_api_image_bytes_in_flight",
            "Image bytes held across requests (downloading or waiting to be decoded)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )

        self.top_probability = Histogram(
            "mtc_api_top_probability",
            "Probability of the predicted (top) class per classified item, by task and model version",
            ["task", "model_version"],
            buckets=TOP_PROBABILITY_BUCKETS,  # the model cards' validation_confidence buckets
            registry=self.registry,
        )
        self.predictions = Counter(
            "mtc_api_predictions",
            "Predicted (top) labels by task and model version",
            ["task", "model_version", "label"],
            registry=self.registry,
        )
        self.input_tokens = Histogram(
            "mtc_api_input_tokens",
            "Tokens per text as sent to the model (truncated to its max length), by task and model version",
            ["task", "model_version"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.image_bytes_in = Histogram(
            "mtc_api_image_size_bytes",
            "Encoded size of each classified image, by task and model version",
            ["task", "model_version"],
            buckets=_IMAGE_BYTE_BUCKETS,
            registry=self.registry,
        )
        self.image_pixels = Histogram(
            "mtc_api_image_pixels",
            "Width x height of each classified image before resizing, by task and model version",
            ["task", "model_version"],
            buckets=_IMAGE_PIXEL_BUCKETS,
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The Prometheus text of ``/metrics``: this process's registry, or in multiprocess mode the sum over every
        worker's files (read by prometheus_client from the folder of :data:`MULTIPROCESS_DIR_ENV`)."""
        if MULTIPROCESS_DIR_ENV not in os.environ:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def process_exit(self) -> None:
        """In multiprocess mode, drop this worker's gauges from the sums (called when the worker stops)."""
        if MULTIPROCESS_DIR_ENV in os.environ:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def observe_predictions(self, task: str, version: str, labels: Sequence[str], probabilities: np.ndarray) -> None:
        """Top-class probability and predicted label of every row of ``probabilities`` (rows x labels)."""
        if probabilities.size == 0:
            return
        confidence = self.top_probability.labels(task=task, model_version=version)
        for index, top in zip(probabilities.argmax(axis=1), probabilities.max(axis=1), strict=True):
            confidence.observe(float(top))
            self.predictions.labels(task=task, model_version=version, label=labels[int(index)]).inc()

    def observe_tokens(self, task: str, version: str, attention_mask: np.ndarray) -> None:
        """Real tokens of every row of a padded batch (the attention mask's ones)."""
        lengths = self.input_tokens.labels(task=task, model_version=version)
        for count in attention_mask.sum(axis=1):
            lengths.observe(int(count))

    def observe_images(self, task: str, version: str, bodies: Sequence[bytes]) -> None:
        """Encoded bytes and pixels of every image (called after they decoded: the header read here is valid)."""
        sizes = self.image_bytes_in.labels(task=task, model_version=version)
        pixels = self.image_pixels.labels(task=task, model_version=version)
        for body in bodies:
            sizes.observe(len(body))
            try:
                with Image.open(io.BytesIO(body)) as image:  # reads the header only
                    width, height = image.size
            except (OSError, Image.DecompressionBombError):  # pragma: no cover - it decoded a moment ago
                continue
            pixels.observe(width * height)

    def observe_stages(self, task: str, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            if stage != "total":
                self.stages.labels(task=task, stage=stage).observe(ms / 1000)
