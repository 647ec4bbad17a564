"""The FastAPI facade: ``python -m frontend_api`` (or ``frontend_api.app:app`` for uvicorn) to serve it,
:func:`create_app` for tests.

Long-lived clients (Triton, the image-host HTTP client, S3) and thread pools (DNS, image decoding)
are created in the lifespan and reached through typed dependencies. Handlers are thin: validate
(Pydantic), call one service function, return a response model; every error leaves as
``application/problem+json``.
"""

from __future__ import annotations

import functools
import hmac
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frontend_api.artifacts import ArtifactStore, make_source
from frontend_api.errors import (
    PROBLEM_MEDIA_TYPE,
    AnonymousNotAllowed,
    ApiError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    BadImage,
    BodyTooLarge,
    EncodedImage,
    ImageBudgetExceeded,
    ImageHostError,
    ImageTooLarge,
    InferenceFailed,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotReady,
    NotFound,
    Overloaded,
    StorageUnavailable,
    Unauthorized,
    UrlNotAllowed,
    ValidationIssue,
    problem_responses,
)
from frontend_api.images import ImageBudget, ImageFetcher, Resolver, SystemResolver, UrlPolicy
from frontend_api.metrics import ApiMetrics
from frontend_api.schemas import (
    Health,
    ModelsResponse,
    PoseRequest,
    PoseResponse,
    Readiness,
    StatsResponse,
    TextRequest,
    TextResponse,
    UploadRequest,
    UploadResponse,
)
from frontend_api.service import PlatformService
from frontend_api.settings import ApiSettings, describe_settings_error, is_loopback_host
from frontend_api.triton_client import TritonBackend, TritonHttpClient
from frontend_api.uploads import make_s3_client
from taskspec import TaskSpec, get_task

logger = logging.getLogger("frontend_api")

API_VERSION = "1.0.0"
TIMING_HEADERS = {
    "tokenize": "x-tokenize-time-ms",
    "fetch": "x-fetch-time-ms",
    "preprocess": "x-preprocess-time-ms",
    "inference": "x-inference-time-ms",
    "total": "x-total-time-ms",
}


# --- error responses ---------------------------------------------------------------------------


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem_response(error: ApiError, metrics: ApiMetrics | None = None) -> ProblemResponse:
    if metrics is not None:
        metrics.errors.labels(kind=error.slug, status=str(error.status)).inc()
    return ProblemResponse(
        error.problem().model_dump(exclude_none=True), status_code=error.status, headers=error.headers or None
    )


def _metrics_of(request: Request) -> ApiMetrics | None:
    return getattr(request.app.state, "metrics", None)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status >= 500:
        logger.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.slug, exc.detail)
    return problem_response(exc, _metrics_of(request))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = [
        ValidationIssue(
            loc=[p if isinstance(p, int) else str(p) for p in err.get("loc", ())],
            msg=str(err.get("msg", "")),
            type=str(err.get("type", "")),
        )
        for err in exc.errors()
    ]
    first = issues[0] if issues else None
    detail = f"{'.'.join(map(str, first.loc))}: {first.msg}" if first else "invalid request"
    error = InvalidRequest(detail)
    metrics = _metrics_of(request)
    if metrics is not None:
        metrics.errors.labels(kind=error.slug, status="422").inc()
    body = error.problem().model_copy(update={"errors": issues})
    return ProblemResponse(jsonable_encoder(body.model_dump(exclude_none=True)), status_code=422)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: ApiError
    if exc.status_code == 404:
        error = NotFound(f"no route {request.url.path}")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    else:
        # FastAPI raises 400 for a body it cannot parse (e.g. not UTF-8): an invalid body, 422 like the rest.
        error = InvalidRequest(f"the request body cannot be parsed: {exc.detail}")
    response = problem_response(error, _metrics_of(request))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _on_unexpected_error(request: Request, exc: Exception) -> Response:
    # Logged with its traceback here; the client only learns that it happened.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(InternalError("unexpected error; see the facade's log"), _metrics_of(request))


# --- pure ASGI middleware ----------------------------------------------------------------------


class BodyLimitMiddleware:
    """Refuse request bodies above ``max_bytes`` with 413 before the app parses them.

    The body is read here (it is small by construction) and replayed to the app, so a client
    that sends no Content-Length, or a false one, is cut off at the same limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ApiMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = BodyTooLarge(f"the request body exceeds {self.max_bytes} bytes")
        await problem_response(error, self.metrics)(scope, receive, send)


class MetricsMiddleware:
    """Count requests and observe latency per route template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint=endpoint, method=scope["method"], status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)


_is_loopback = functools.lru_cache(maxsize=64)(is_loopback_host)


class LoopbackOnlyMiddleware:
    """Without API keys (and without ``allow_anonymous``), answer only connections that arrived on a loopback
    address: 403 ``anonymous-not-allowed`` for the others.

    ``python -m frontend_api`` refuses to bind beyond loopback in that configuration at start-up; this
    covers ``uvicorn frontend_api.app:app --host 0.0.0.0``, whose address the app cannot see before it
    serves. ``scope["server"]`` is the local address the connection came in on (None on a Unix socket).
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server") if scope["type"] == "http" else None
        if server is not None and not _is_loopback(str(server[0])):
            if not self.warned:
                self.warned = True
                logger.warning(
                    "refusing requests on %s: no API keys are set, so this facade answers on loopback only "
                    "(set MTC_API_API_KEYS, or MTC_API_ALLOW_ANONYMOUS=true)",
                    server[0],
                )
            error = AnonymousNotAllowed(
                "this facade has no API keys and answers on loopback only; its operator must set MTC_API_API_KEYS "
                "(or MTC_API_ALLOW_ANONYMOUS=true)"
            )
            await problem_response(error, self.metrics)(scope, receive, send)
            return
        await self.app(scope, receive, send)


# --- dependencies ------------------------------------------------------------------------------


class InFlightLimiter:
    """Bounded in-flight work: past ``limit`` concurrent inference requests, answer 429 at once."""

    def __init__(self, limit: int, metrics: ApiMetrics) -> None:
        self.limit = limit
        self.current = 0
        self.metrics = metrics

    def try_acquire(self) -> bool:
        if self.current >= self.limit:
            return False
        self.current += 1  # no await between the check and the increment: atomic on the event loop
        self.metrics.in_flight.set(self.current)
        return True

    def release(self) -> None:
        self.current -= 1
        self.metrics.in_flight.set(self.current)


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in its thread pool,
# a thread hop per request that would cost more than the whole lookup.
async def get_service(request: Request) -> PlatformService:
    service: PlatformService = request.app.state.service
    return service


ServiceDep = Annotated[PlatformService, Depends(get_service)]
_bearer = HTTPBearer(auto_error=False, description="API key, when the facade is configured with MTC_API_API_KEYS")


def auth_dependencies(settings: ApiSettings) -> list[Any]:
    """The API-key check for protected routes, only when keys are configured: then OpenAPI declares the
    bearer scheme, and an open facade neither advertises authentication nor pays for resolving it."""
    if not settings.api_keys:
        return []
    keys = [key.get_secret_value().encode() for key in settings.api_keys]

    async def require_api_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        """Check ``Authorization: Bearer <key>`` (constant-time comparison with every key)."""
        offered = credentials.credentials.encode() if credentials is not None else b""
        if not any(hmac.compare_digest(offered, key) for key in keys):
            raise Unauthorized(
                "send a valid API key as `Authorization: Bearer <key>`", headers={"WWW-Authenticate": "Bearer"}
            )

    return [Depends(require_api_key)]


@asynccontextmanager
async def in_flight(request: Request) -> AsyncIterator[PlatformService]:
    """Hold one of the in-flight slots (429 when none is free) and hand out the service.

    Used inline by the inference routes rather than as dependencies: FastAPI's dependency solving
    costs more per request than the whole lookup (see docs/api.md, facade overhead).
    """
    limiter: InFlightLimiter = request.app.state.limiter
    if not limiter.try_acquire():
        raise Overloaded(
            f"more than {limiter.limit} requests are in flight; retry shortly", headers={"Retry-After": "1"}
        )
    try:
        yield request.app.state.service
    finally:
        limiter.release()


def classification_response(result: TextResponse | PoseResponse) -> Response:
    """The result as JSON, serialized once by pydantic (it was validated when built), with timing headers."""
    headers = {TIMING_HEADERS[stage]: f"{ms:.3f}" for stage, ms in result.timings_ms.model_dump().items()}
    headers["x-model-version"] = result.model.version
    return Response(result.model_dump_json(), media_type="application/json", headers=headers)


# --- routes ------------------------------------------------------------------------------------

TRITON_ERRORS = (ModelNotReady, BackendUnavailable, BackendOverloaded, BackendTimeout, InferenceFailed)
COMMON_ERRORS = (InvalidRequest, BodyTooLarge, Unauthorized, AnonymousNotAllowed, Overloaded)


def _text_route(router: APIRouter, spec: TaskSpec) -> None:
    async def classify(body: TextRequest, request: Request) -> Response:
        async with in_flight(request) as service:
            return classification_response(await service.classify_texts(spec, body.texts))

    router.add_api_route(
        f"/{spec.name}",
        classify,
        methods=["POST"],
        response_model=TextResponse,
        summary=f"Classify texts: {spec.title} ({' / '.join(spec.labels)})",
        description=(
            f"Labels each text with one of {list(spec.labels)} and the probability of every label. Texts are "
            f"truncated at {spec.text.max_length if spec.text else '?'} tokens. Timings are also returned as "
            "`x-tokenize-time-ms`, `x-inference-time-ms`, `x-total-time-ms` headers, the version as `x-model-version`."
        ),
        operation_id=f"classify_{spec.name}",
        responses=problem_responses(*COMMON_ERRORS, *TRITON_ERRORS),
        openapi_extra={
            "requestBody": {
                "content": {"application/json": {"example": {"texts": list(spec.examples) or ["some text"]}}}
            }
        },
    )


def _build_router(settings: ApiSettings) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=auth_dependencies(settings))
    specs = [get_task(name) for name in settings.tasks]
    for spec in specs:
        if spec.modality == "text":
            _text_route(router, spec)
    image_specs = [s for s in specs if s.modality == "image"]

    if image_specs:
        pose = image_specs[0]

        @router.post(
            f"/{pose.name}",
            response_model=PoseResponse,
            summary=f"Classify images from URLs: {pose.title}",
            description=(
                "Downloads each URL (a presigned S3 GET URL from `/v1/uploads`, or an allowed host), decodes it, "
                "applies the model's preprocessing and returns the top-k labels. Only https (plus http for hosts "
                "explicitly allowed), only allowed S3 endpoints/buckets, public addresses, no redirects, no "
                "Content-Encoding (415), a byte cap and a pixel cap."
            ),
            operation_id=f"classify_{pose.name}",
            responses=problem_responses(
                *COMMON_ERRORS,
                BadImage,
                UrlNotAllowed,
                ImageTooLarge,
                EncodedImage,
                ImageBudgetExceeded,
                ImageHostError,
                *TRITON_ERRORS,
            ),
        )
        async def classify_images(body: PoseRequest, request: Request) -> Response:
            async with in_flight(request) as service:
                urls = [str(u) for u in body.image_urls]
                return classification_response(await service.classify_images(pose, urls, body.top_k))

    @router.post(
        "/uploads",
        response_model=UploadResponse,
        summary="Get a presigned upload form for an image, and the GET URL to classify it",
        description=(
            "POST `multipart/form-data` to `upload_url` with every entry of `fields`, then the image as the field "
            "`file` (at most `max_bytes`, before `expires_in` seconds pass); then send `get_url` to `/v1/pose`."
        ),
        operation_id="create_upload",
        responses=problem_responses(
            InvalidRequest, BodyTooLarge, Unauthorized, AnonymousNotAllowed, StorageUnavailable
        ),
    )
    async def create_upload(body: UploadRequest, service: ServiceDep) -> UploadResponse:
        return service.presign(body.content_type)

    @router.get(
        "/models",
        response_model=ModelsResponse,
        summary="Tasks, served model versions, labels and ready state",
        operation_id="list_models",
        responses=problem_responses(Unauthorized, AnonymousNotAllowed),
    )
    async def list_models(service: ServiceDep) -> ModelsResponse:
        return await service.models()

    @router.get(
        "/stats",
        response_model=StatsResponse,
        summary="Triton's per-model counters: requests, queue and compute time, executed batch sizes",
        operation_id="model_stats",
        responses=problem_responses(
            Unauthorized, AnonymousNotAllowed, BackendUnavailable, BackendTimeout, InferenceFailed
        ),
    )
    async def model_stats(service: ServiceDep) -> StatsResponse:
        return await service.stats()

    return router


def _problem_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """OpenAPI generator that declares error bodies as ``application/problem+json``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if status.isdigit() and int(status) >= 400 and "application/json" in content:
                        content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
        app.openapi_schema = schema
        return schema

    return openapi


def create_app(
    settings: ApiSettings | None = None,
    triton: TritonBackend | None = None,
    *,
    image_transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver | None = None,
    s3_client: Any | None = None,
) -> FastAPI:
    """Build the facade. Tests pass a fake ``triton``, an ``httpx.MockTransport`` for image hosts,
    a ``resolver`` (host -> addresses) and/or an S3 client; anything not given is created from settings.

    Serving it to a network: :func:`served_app` (it adds the loopback guard for a facade without keys)."""
    settings = settings or ApiSettings()
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned_triton = triton is None
        backend: TritonBackend = triton or TritonHttpClient(
            settings.triton_url, timeout_s=settings.triton_timeout_s, connections=settings.triton_connections
        )
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
        app.state.service = PlatformService(settings, backend, store, fetcher, presigner, metrics, decode_pool)
        try:
            yield
        finally:
            await http.aclose()
            decode_pool.shutdown(wait=False, cancel_futures=True)
            if dns is not None:
                dns.close()
            if owned_triton:
                await backend.close()

    app = FastAPI(
        title="Multi-task classification API",
        version=API_VERSION,
        description=(
            "Sentiment of movie reviews, disaster tweets and human pose/action in photos, served by NVIDIA Triton. "
            "Errors are `application/problem+json` (RFC 9457) with a stable `type`."
        ),
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.limiter = InFlightLimiter(settings.max_in_flight, metrics)

    exception_handler = Callable[[Request, Exception], Awaitable[Response]]
    handlers: list[tuple[type[Exception], exception_handler]] = [
        (ApiError, _on_api_error),
        (RequestValidationError, _on_validation_error),
        (StarletteHTTPException, _on_http_error),
        (Exception, _on_unexpected_error),
    ]
    for exc_type, handler in handlers:
        app.add_exception_handler(exc_type, handler)

    @app.get("/healthz", response_model=Health, summary="The process is alive (always open)", tags=["probes"])
    async def healthz() -> Health:
        return Health()

    @app.get(
        "/readyz",
        response_model=Readiness,
        summary="Triton ready and every task's model ready",
        tags=["probes"],
        responses=problem_responses(ModelNotReady),
    )
    async def readyz(service: ServiceDep) -> Readiness:
        readiness = await service.readiness()
        if not readiness.ready:
            missing = [task for task, ready in readiness.models.items() if not ready]
            reason = "Triton is not ready" if not readiness.triton else f"models not ready: {', '.join(missing)}"
            raise ModelNotReady(reason)
        return readiness

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        tags=["probes"],
        response_class=Response,
        dependencies=auth_dependencies(settings),
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
            **problem_responses(Unauthorized),
        },
    )
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(_build_router(settings))
    app.openapi = _problem_openapi(app)  # type: ignore[method-assign]
    # Outermost first: metrics see every answer, including the body-limit refusals.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def served_app(settings: ApiSettings | None = None) -> FastAPI:
    """The facade as served to a network (``python -m frontend_api``, ``frontend_api.app:app``).

    Settings are validated first (a non-loopback ``host`` without API keys is refused there); a
    facade without keys and without ``allow_anonymous`` also refuses connections that do not arrive
    on a loopback address, whatever address uvicorn was told to bind.
    """
    settings = settings or ApiSettings()
    app = create_app(settings)
    if not settings.api_keys and not settings.allow_anonymous:
        app.add_middleware(LoopbackOnlyMiddleware, metrics=app.state.metrics)
    return app


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
