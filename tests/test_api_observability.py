"""What an operator watches: drift and quality signals on /metrics (per task and model version), and the span tree
of one traced request (in-memory exporter, fake Triton; tests/test_serving_tracing.py runs the real Triton)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from frontend_api.app import create_app
from frontend_api.errors import InferenceFailed
from frontend_api.settings import ApiSettings
from frontend_api.tracing import NO_TRACER, make_tracer_provider
from tests.fakes.frontend_api import FakeTriton, ImageHostTransport, make_artifact_repository


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact_repository(tmp_path_factory.mktemp("artifacts"))


def settings(repo: Path, **overrides: Any) -> ApiSettings:
    return ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(repo),
        s3_endpoint_url=None,
        allowed_image_hosts=["images.example.com"],
        **overrides,
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics document: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def test_text_predictions_record_confidence_labels_and_token_counts_per_model_version(repo: Path) -> None:
    fake = FakeTriton(versions={"sentiment": ["1"], "disaster": ["1"], "pose": ["1"]})
    long_text = " ".join(["word"] * 40)  # 40 tokens + [CLS] + [SEP]
    with TestClient(create_app(settings(repo), fake)) as client:
        body = client.post("/v1/sentiment", json={"texts": ["fine", long_text]}).json()
        found = samples(client.get("/metrics").text)
    labels = [p["label"] for p in body["predictions"]]
    top = sorted(max(p["probabilities"].values()) for p in body["predictions"])
    series = {"task": "sentiment", "model_version": "1"}
    # the label counter matches what the caller was told
    for label in set(labels):
        assert value(found, "mtc_api_predictions_total", label=label, **series) == labels.count(label)
    # one confidence per text, in the buckets its probability falls in
    assert value(found, "mtc_api_top_probability_count", **series) == 2
    assert value(found, "mtc_api_top_probability_sum", **series) == pytest.approx(sum(top), rel=1e-6)
    assert value(found, "mtc_api_top_probability_bucket", le="0.5", **series) == 0  # a top class is never below 1/2
    # token lengths: "fine" is 3 tokens, the long text 42
    assert value(found, "mtc_api_input_tokens_bucket", le="8.0", **series) == 1
    assert value(found, "mtc_api_input_tokens_bucket", le="32.0", **series) == 1
    assert value(found, "mtc_api_input_tokens_bucket", le="64.0", **series) == 2
    assert value(found, "mtc_api_input_tokens_sum", **series) == 45
    # a task nobody called has no series yet
    assert value(found, "mtc_api_top_probability_count", task="disaster", model_version="1") is None


def test_a_new_model_version_gets_series_of_its_own(tmp_path: Path) -> None:
    repo = make_artifact_repository(tmp_path, tasks=["disaster"], version="1")
    make_artifact_repository(tmp_path, tasks=["disaster"], version="2")
    fake = FakeTriton(versions={"disaster": ["1"]})
    with TestClient(create_app(settings(repo, tasks=["disaster"], model_refresh_s=0), fake)) as client:
        client.post("/v1/disaster", json={"texts": ["fire downtown"]})
        fake.versions["disaster"] = ["1", "2"]  # Triton loaded version 2
        client.post("/v1/disaster", json={"texts": ["fire downtown", "calm day"]})
        found = samples(client.get("/metrics").text)
    assert value(found, "mtc_api_top_probability_count", task="disaster", model_version="1") == 1
    assert value(found, "mtc_api_top_probability_count", task="disaster", model_version="2") == 2


def jpeg(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_image_predictions_record_image_bytes_and_pixels(repo: Path) -> None:
    small, large = jpeg((64, 48), (10, 10, 10)), jpeg((640, 480), (250, 250, 250))
    images = {"/small.jpg": small, "/large.jpg": large}

    def host(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=images[request.url.path], headers={"Content-Type": "image/jpeg"})

    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    app = create_app(settings(repo), FakeTriton(), image_transport=ImageHostTransport(host), resolver=resolve)
    urls = [f"https://images.example.com{path}" for path in images]
    with TestClient(app) as client:
        body = client.post("/v1/pose", json={"image_urls": urls}).json()
        found = samples(client.get("/metrics").text)
    series = {"task": "pose", "model_version": "1"}
    assert value(found, "mtc_api_image_size_bytes_count", **series) == 2
    assert value(found, "mtc_api_image_size_bytes_sum", **series) == len(small) + len(large)
    assert value(found, "mtc_api_image_pixels_sum", **series) == 64 * 48 + 640 * 480
    assert value(found, "mtc_api_image_pixels_bucket", le=str(float(128**2)), **series) == 1
    labels = [p["label"] for p in body["predictions"]]
    assert len(set(labels)) == 2  # the fake answers dark and bright images with different labels
    for label in labels:
        assert value(found, "mtc_api_predictions_total", label=label, **series) == 1
    assert value(found, "mtc_api_top_probability_count", **series) == 2


# --- tracing ---


def traced(repo: Path, fake: FakeTriton, **overrides: Any) -> tuple[TestClient, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(settings(repo, **overrides), fake, tracer_provider=provider)
    return TestClient(app), exporter


def tree(spans: Sequence[ReadableSpan]) -> dict[str, list[str]]:
    """Span name -> sorted names of its children ("" for the roots)."""
    names = {span.context.span_id: span.name for span in spans if span.context is not None}
    children: dict[str, list[str]] = {}
    for span in spans:
        parent = names.get(span.parent.span_id, "?") if span.parent is not None else ""
        children.setdefault(parent, []).append(span.name)
    return {name: sorted(kids) for name, kids in children.items()}


def test_one_text_request_is_one_trace_with_tokenize_and_one_inference_per_length_bucket(repo: Path) -> None:
    fake = FakeTriton()
    client, exporter = traced(repo, fake)
    long_text = " ".join(["word"] * 40)
    with client:
        client.get("/healthz")  # probes are not traced
        response = client.post("/v1/sentiment", json={"texts": ["fine", long_text]})
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    assert tree(spans) == {"": ["POST /v1/sentiment"], "POST /v1/sentiment": ["inference", "inference", "tokenize"]}
    assert len({span.context.trace_id for span in spans if span.context is not None}) == 1
    root = next(span for span in spans if span.parent is None)
    assert root.attributes is not None and root.attributes["http.route"] == "/v1/sentiment"
    inferences = [span for span in spans if span.name == "inference"]
    assert [span.attributes["mtc.rows"] for span in inferences if span.attributes] == [1, 1]  # two length buckets
    assert {span.attributes["mtc.model"] for span in inferences if span.attributes} == {"sentiment"}
    assert len(fake.calls) == 2


def test_an_image_request_traces_fetch_preprocess_and_inference(repo: Path) -> None:
    def host(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=jpeg((32, 32), (0, 0, 0)), headers={"Content-Type": "image/jpeg"})

    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(
        settings(repo),
        FakeTriton(),
        image_transport=ImageHostTransport(host),
        resolver=resolve,
        tracer_provider=provider,
    )
    with TestClient(app) as client:
        assert client.post("/v1/pose", json={"image_urls": ["https://images.example.com/a.jpg"]}).status_code == 200
    assert tree(exporter.get_finished_spans()) == {
        "": ["POST /v1/pose"],
        "POST /v1/pose": ["fetch", "inference", "preprocess"],
    }


def test_a_failed_inference_marks_its_span_and_the_request_span_as_errors(repo: Path) -> None:
    fake = FakeTriton()
    fake.down = True
    client, exporter = traced(repo, fake)
    with client:
        assert client.post("/v1/sentiment", json={"texts": ["x"]}).status_code == 503
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["POST /v1/sentiment"].status.status_code is StatusCode.ERROR  # a 5xx answer
    # the version lookup failed before any inference: no inference span, no tokenize span
    assert set(spans) == {"POST /v1/sentiment"}
    fake.down = False
    fake.error = InferenceFailed("Triton rejected an inference request to 'sentiment': boom")
    exporter.clear()
    with client:
        assert client.post("/v1/sentiment", json={"texts": ["x"]}).status_code == 502
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["inference"].status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in spans["inference"].events)


def test_a_clients_traceparent_is_ignored_unless_trusted(repo: Path) -> None:
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for trust, joined in ((False, False), (True, True)):
        client, exporter = traced(repo, FakeTriton(), trace_trust_incoming=trust)
        with client:
            client.post("/v1/disaster", json={"texts": ["x"]}, headers={"traceparent": theirs})
        root = next(span for span in exporter.get_finished_spans() if span.name == "POST /v1/disaster")
        assert root.context is not None
        assert (f"{root.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c") is joined
        assert (root.parent is not None and f"{root.parent.span_id:016x}" == "b7ad6b7169203331") is joined


def test_tracing_is_off_without_an_endpoint_and_the_endpoint_must_be_a_url(repo: Path) -> None:
    assert make_tracer_provider(settings(repo)) is None
    app = create_app(settings(repo), FakeTriton())
    with TestClient(app) as client:
        assert client.post("/v1/sentiment", json={"texts": ["x"]}).status_code == 200
        assert app.state.service.tracer is NO_TRACER
    # no tracing middleware in the stack (the traced app has it outermost)
    traced_app = create_app(settings(repo), FakeTriton(), tracer_provider=TracerProvider())
    outermost = {type(a.build_middleware_stack()).__name__ for a in (app, traced_app)}
    assert outermost == {"ServerErrorMiddleware", "IgnoreIncomingTraceContext"}
    provider = make_tracer_provider(settings(repo, otlp_endpoint="http://127.0.0.1:4318/"))
    assert provider is not None
    provider.shutdown()
    for bad in ("127.0.0.1:4318", "file:///etc/passwd", "http://"):
        with pytest.raises(ValidationError, match="OTLP"):
            settings(repo, otlp_endpoint=bad)
