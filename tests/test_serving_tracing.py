"""One trace from the facade into a real Triton: the facade's spans (OTLP/HTTP protobuf, its real exporter) and
Triton's (its OpenTelemetry trace mode, OTLP/HTTP JSON) reach one collector, share one trace id, and Triton's
request span is a child of the facade's inference span (the W3C ``traceparent`` the facade sent)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from frontend_api.app import create_app
from frontend_api.settings import ApiSettings
from frontend_api.tracing import make_tracer_provider
from serving.stack import LocalStack, StackSettings
from serving.triton import TRITON_SERVICE_NAME, TritonServer


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Collector:
    """A real OTLP/HTTP trace receiver on a free port: protobuf or JSON bodies at /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.receive(self.path, self.headers.get("Content-Type", ""), body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.lock = threading.Lock()

    def receive(self, path: str, content_type: str, body: bytes) -> None:
        found: list[Span] = []
        if "json" in content_type:
            document = json.loads(body)
            for resource in document["resourceSpans"]:
                attributes = {a["key"]: a["value"].get("stringValue") for a in resource["resource"]["attributes"]}
                for scope in resource["scopeSpans"]:
                    for s in scope["spans"]:
                        found.append(
                            Span(
                                str(attributes.get("service.name")),
                                s["name"],
                                s["traceId"].lower(),
                                s["spanId"].lower(),
                                s.get("parentSpanId", "").lower(),
                            )
                        )
        else:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    for p in scope_spans.spans:
                        found.append(Span(service, p.name, p.trace_id.hex(), p.span_id.hex(), p.parent_span_id.hex()))
        with self.lock:
            self.paths.append(path)
            self.spans.extend(found)

    def wait_for(self, service: str, name: str, count: int = 1, timeout_s: float = 30) -> list[Span]:
        """Every span received once ``count`` spans of ``service`` called ``name`` are in."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if sum(s.service == service and s.name == name for s in self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.1)
        raise AssertionError(f"not {count} {service} spans {name!r} within {timeout_s} s; got {self.spans}")

    def __enter__(self) -> Collector:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_models import build_tiny_repository

    return build_tiny_repository(tmp_path_factory.mktemp("tracing"), tasks=["disaster"])


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running


def test_triton_starts_no_tracing_without_an_endpoint() -> None:
    assert TritonServer(model_repository="unused").trace_args() == []
    flags = TritonServer(model_repository="unused", otlp_endpoint="http://127.0.0.1:4318/").trace_args()
    assert "--trace-config=mode=opentelemetry" in flags
    assert "--trace-config=opentelemetry,url=http://127.0.0.1:4318/v1/traces" in flags


def test_make_run_traces_only_when_an_endpoint_is_set(tmp_path: Path) -> None:
    def stack(**overrides: str) -> LocalStack:
        settings = StackSettings.on_free_ports(log_dir=tmp_path, s3_data_dir=tmp_path, start_dashboard=False)
        return LocalStack(settings.model_copy(update=overrides), echo=lambda _: None)

    off = stack()
    assert off.triton.trace_args() == [] and "MTC_API_OTLP_ENDPOINT" not in off.api.env
    on = stack(otlp_endpoint="http://127.0.0.1:4318")
    assert on.api.env["MTC_API_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert "--trace-config=opentelemetry,url=http://127.0.0.1:4318/v1/traces" in on.triton.trace_args()


REQUESTS = 5
"""Requests per protocol. Triton 2.51's gRPC server now and then ignores a request's ``traceparent`` metadata
and starts a trace of its own (the facade sent it: logged for the failing requests). Measured on the PyPI wheel:
a new Triton's first request in 6 of about 36 runs of a one-request version of this test, 1 of 50 requests in
10 runs of this one, 2 of 80 straight from ``tritonclient.grpc.aio``; over HTTP none (docs/observability.md)."""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_one_request_is_one_trace_across_the_facade_and_triton(
    repository: Path, collector: Collector, protocol: str
) -> None:
    triton = TritonServer.on_free_ports(
        repository,
        model_control_mode="explicit",
        load_models=["disaster"],
        otlp_endpoint=collector.endpoint,
        extra_args=["--trace-config=opentelemetry,bsp_schedule_delay=200"],  # export within 0.2 s (default 5 s)
        startup_timeout=180,
    )
    settings = ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(repository),
        tasks=["disaster"],
        triton_protocol=protocol,  # the traceparent travels as an HTTP header or as gRPC metadata
        triton_url=f"127.0.0.1:{triton.http_port}",
        triton_grpc_url=triton.grpc_url,
        otlp_endpoint=collector.endpoint,
        otlp_service_name="mtc-api-test",
    )
    provider = make_tracer_provider(settings)
    assert provider is not None
    with triton, TestClient(create_app(settings, tracer_provider=provider)) as client:
        for _ in range(REQUESTS):
            response = client.post("/v1/disaster", json={"texts": ["Forest fire near La Ronge Sask. Canada"]})
            assert response.status_code == 200, response.text
        provider.force_flush()
        spans = collector.wait_for(TRITON_SERVICE_NAME, "InferRequest", count=REQUESTS)
    provider.shutdown()
    assert set(collector.paths) == {"/v1/traces"}
    ours = [s for s in spans if s.service == "mtc-api-test"]
    theirs = [s for s in spans if s.service == TRITON_SERVICE_NAME]
    roots = [s for s in ours if s.name == "POST /v1/disaster"]
    assert len(roots) == REQUESTS and len({r.trace_id for r in roots}) == REQUESTS  # one trace per request
    joined = 0
    for root in roots:
        facade = {s.name: s for s in ours if s.trace_id == root.trace_id}
        assert {"tokenize", "inference"} <= set(facade)
        assert facade["inference"].parent_id == root.span_id and facade["tokenize"].parent_id == root.span_id
        # Triton continued the facade's trace under its inference span ...
        requests = [s for s in theirs if s.name == "InferRequest" and s.trace_id == root.trace_id]
        if not requests:
            continue
        (request,) = requests
        assert request.parent_id == facade["inference"].span_id
        # ... and below it, the model's span and its compute span
        model = next(s for s in theirs if s.name == "disaster" and s.parent_id == request.span_id)
        assert any(s.name == "compute" and s.parent_id == model.span_id for s in theirs)
        joined += 1
    # every request over HTTP; over gRPC most (Triton's lapse above), and never none
    assert joined == REQUESTS if protocol == "http" else joined >= 1, f"{joined} of {REQUESTS} joined"
