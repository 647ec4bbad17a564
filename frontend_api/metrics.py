"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
        self.in_flight = Gauge("mtc_api_in_flight", "Inference requests being handled", registry=self.registry)
        self.image_bytes = Gauge(
            "mtc_api_image_bytes_in_flight",
            "Image bytes held across requests (downloading or waiting to be decoded)",
            registry=self.registry,
        )

    def observe_stages(self, task: str, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            if stage != "total":
                self.stages.labels(task=task, stage=stage).observe(ms / 1000)
