"""The FastAPI facade: ``python -m frontend_api`` (or ``frontend_api.app:app`` for uvicorn) to serve it,
:func:`create_app` for tests.

This module builds the app: the lifespan creates the long-lived clients (Triton, the image-host HTTP
client, S3) and thread pools (DNS, image decoding) and the service that holds them; routes
(:mod:`~frontend_api.routes`) reach it through the dependencies of :mod:`~frontend_api.dependencies`;
every error leaves as ``application/problem+json`` (:mod:`~frontend_api.problems`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from pydantic import ValidationError
from starlette.middleware import Middleware

from frontend_api.artifacts import ArtifactStore, make_source
from frontend_api.dependencies import InFlightLimiter
from frontend_api.images import ImageBudget, ImageFetcher, Resolver, SystemResolver, UrlPolicy
from frontend_api.job_routes import jobs_router
from frontend_api.jobs import JobLauncher, JobService, SubprocessLauncher
from frontend_api.metrics import ApiMetrics
from frontend_api.middleware import BodyLimitMiddleware, LoopbackOnlyMiddleware, MetricsMiddleware
from frontend_api.openapi import problem_openapi
from frontend_api.problems import add_problem_handlers
from frontend_api.routes import api_router, probes_router
from frontend_api.service import PlatformService
from frontend_api.settings import ApiSettings, describe_settings_error
from frontend_api.tracing import NO_TRACER, TRACER_NAME, StageTracer, instrument, make_tracer_provider
from frontend_api.triton_client import TritonBackend, make_triton_client
from frontend_api.uploads import make_s3_client

API_VERSION = "1.0.0"


def create_app(
    settings: ApiSettings | None = None,
    triton: TritonBackend | None = None,
    *,
    image_transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver | None = None,
    s3_client: Any | None = None,
    loopback_only: bool = False,
    tracer_provider: TracerProvider | None = None,
    job_launcher: JobLauncher | None = None,
) -> FastAPI:
    """Build the facade. Tests pass a fake ``triton``, an ``httpx.MockTransport`` for image hosts,
    a ``resolver`` (host -> addresses), an S3 client and/or a ``tracer_provider`` (e.g. with an in-memory
    exporter) and/or a ``job_launcher`` (what starts a batch job's runner); anything not given is created from
    settings (no tracing unless ``otlp_endpoint`` is set; job runners as subprocesses).
    ``loopback_only`` adds the guard that answers loopback connections only (:func:`served_app` sets it for
    a facade without API keys)."""
    settings = settings or ApiSettings()
    metrics = ApiMetrics()
    provider = tracer_provider or make_tracer_provider(settings)
    tracer: StageTracer = provider.get_tracer(TRACER_NAME) if provider is not None else NO_TRACER

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned_triton = triton is None
        backend: TritonBackend = triton or make_triton_client(settings)
        http = ImageFetcher.make_client(settings, transport=image_transport)
        s3 = s3_client if s3_client is not None else make_s3_client(settings)
        dns: SystemResolver | None = None
        lookup: Resolver
        if resolver is None:
            dns = lookup = SystemResolver(settings.dns_timeout_s, settings.dns_threads)
        else:
            lookup = resolver
        budget = ImageBudget(settings.image_bytes_in_flight, metrics)
        fetcher = ImageFetcher(http, UrlPolicy(settings, lookup), settings, budget)
        store = ArtifactStore(make_source(settings.model_repository, s3))
        presigner = make_s3_client(settings, public=True) if settings.s3_public_endpoint_url else s3
        decode_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="mtc-decode")
        app.state.service = PlatformService(
            settings, backend, store, fetcher, presigner, metrics, decode_pool, tracer=tracer
        )
        app.state.jobs = JobService(settings, s3, presigner, job_launcher or SubprocessLauncher())
        try:
            yield
        finally:
            if provider is not None:
                provider.force_flush(timeout_millis=5000)  # the spans of the last requests
            await http.aclose()
            decode_pool.shutdown(wait=False, cancel_futures=True)
            if dns is not None:
                dns.close()
            if owned_triton:
                await backend.close()
            metrics.process_exit()

    # Listed outermost first (Starlette wraps the app in this order): the metrics see every answer, the
    # loopback guard's and the body limit's refusals included.
    middleware = [Middleware(MetricsMiddleware, metrics=metrics)]
    if loopback_only:
        middleware.append(Middleware(LoopbackOnlyMiddleware, metrics=metrics))
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics))
    app = FastAPI(
        title="Multi-task classification API",
        version=API_VERSION,
        description=(
            "Text and image classifiers served by NVIDIA Triton, one route per task (`GET /v1/models` lists them). "
            "Errors are `application/problem+json` (RFC 9457) with a stable `type`."
        ),
        lifespan=lifespan,
        middleware=middleware,
    )
    app.state.metrics = metrics
    app.state.limiter = InFlightLimiter(settings.max_in_flight, metrics)
    add_problem_handlers(app)
    app.include_router(probes_router(settings, metrics))
    app.include_router(api_router(settings))
    app.include_router(jobs_router(settings))
    app.openapi = problem_openapi(app)  # type: ignore[method-assign]
    if provider is not None:
        instrument(app, provider, trust_incoming=settings.trace_trust_incoming)
    return app


def served_app(settings: ApiSettings | None = None) -> FastAPI:
    """The facade as served to a network (``python -m frontend_api``, ``frontend_api.app:app``).

    Settings are validated first (a non-loopback ``host`` without API keys is refused there); a
    facade without keys and without ``allow_anonymous`` also refuses connections that do not arrive
    on a loopback address, whatever address uvicorn was told to bind.
    """
    settings = settings or ApiSettings()
    return create_app(settings, loopback_only=not settings.api_keys and not settings.allow_anonymous)


@functools.cache
def _module_app() -> FastAPI:
    try:
        return served_app()
    except ValidationError as exc:
        print(f"frontend_api: refusing to start: {describe_settings_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


def __getattr__(name: str) -> Any:
    """``frontend_api.app:app`` (uvicorn), built from the environment on first access, so importing this
    module (``create_app`` in tests) reads no settings."""
    if name == "app":
        return _module_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
