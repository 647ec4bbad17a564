"""The routes: thin handlers that validate (the per-task request models), call one service function and
return a response model. Every task of the settings gets ``POST /v1/<task>``, built from its spec."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from frontend_api.dependencies import ServiceDep, auth_dependencies, in_flight
from frontend_api.errors import (
    AnonymousNotAllowed,
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
    InvalidRequest,
    ModelNotReady,
    Overloaded,
    StorageUnavailable,
    Unauthorized,
    UrlNotAllowed,
    problem_responses,
)
from frontend_api.metrics import ApiMetrics
from frontend_api.schemas import (
    Health,
    ImageRequest,
    ImageResponse,
    ModelsResponse,
    Readiness,
    StatsResponse,
    TextRequest,
    TextResponse,
    UploadRequest,
    UploadResponse,
    image_request_model,
    text_request_model,
)
from frontend_api.settings import ApiSettings
from taskspec import TaskSpec, get_task

TIMING_HEADERS = {
    "tokenize": "x-tokenize-time-ms",
    "fetch": "x-fetch-time-ms",
    "preprocess": "x-preprocess-time-ms",
    "inference": "x-inference-time-ms",
    "total": "x-total-time-ms",
}
TRITON_ERRORS = (ModelNotReady, BackendUnavailable, BackendOverloaded, BackendTimeout, InferenceFailed)
COMMON_ERRORS = (InvalidRequest, BodyTooLarge, Unauthorized, AnonymousNotAllowed, Overloaded)
IMAGE_ERRORS = (BadImage, UrlNotAllowed, ImageTooLarge, EncodedImage, ImageBudgetExceeded, ImageHostError)


def classification_response(result: TextResponse | ImageResponse) -> Response:
    """The result as JSON (serialized by pydantic; it was validated when built), with timing headers."""
    headers = {TIMING_HEADERS[stage]: f"{ms:.3f}" for stage, ms in result.timings_ms.model_dump().items()}
    headers["x-model-version"] = result.model.version
    return Response(result.model_dump_json(), media_type="application/json", headers=headers)


def _with_body(handler: Callable[..., Any], model: type[Any]) -> Callable[..., Any]:
    """``handler`` with its ``body`` parameter annotated as ``model``, a request model built per task at run time
    (FastAPI reads the annotation to validate the body and to write its OpenAPI schema)."""
    handler.__annotations__["body"] = model
    return handler


def _text_route(router: APIRouter, spec: TaskSpec, variants: Sequence[TaskSpec]) -> None:
    models = {variant.model_name: variant for variant in variants}

    async def classify(body: TextRequest, request: Request) -> Response:
        chosen = models.get(body.model or "", spec)  # the request model allows only these names
        async with in_flight(request) as service:  # inline, not a dependency: 0.2-0.3 ms (see in_flight)
            return classification_response(await service.classify_texts(chosen, body.texts))

    router.add_api_route(
        f"/{spec.name}",
        _with_body(classify, text_request_model(spec, variants)),
        methods=["POST"],
        response_model=TextResponse,
        summary=f"Classify texts: {spec.title}",
        description=(
            f"Labels each text with one of the labels of the model version Triton serves for `{spec.name}` "
            "(`labels` in `GET /v1/models`) and the probability of every label. Texts longer than that version's "
            "maximum length (`max_tokens` in `GET /v1/models`) are truncated. Timings are also returned as "
            "`x-tokenize-time-ms`, `x-inference-time-ms`, `x-total-time-ms` headers, the version as `x-model-version`."
            + (
                f" `model` picks a faster variant ({', '.join(f'`{name}`' for name in models)}) instead of "
                f"`{spec.model_name}`; the response's `model` names the one that answered."
                if models
                else ""
            )
        ),
        operation_id=f"classify_{spec.name}",
        responses=problem_responses(*COMMON_ERRORS, *TRITON_ERRORS),
        openapi_extra={
            "requestBody": {
                "content": {"application/json": {"example": {"texts": list(spec.examples) or ["some text"]}}}
            }
        },
    )


def _image_route(router: APIRouter, spec: TaskSpec) -> None:
    async def classify(body: ImageRequest, request: Request) -> Response:
        urls = [str(url) for url in body.image_urls]
        async with in_flight(request) as service:
            return classification_response(await service.classify_images(spec, urls, body.top_k))

    router.add_api_route(
        f"/{spec.name}",
        _with_body(classify, image_request_model(spec)),
        methods=["POST"],
        response_model=ImageResponse,
        summary=f"Classify images from URLs: {spec.title}",
        description=(
            "Downloads each URL (a presigned S3 GET URL from `/v1/uploads`, or an allowed host), decodes it, "
            "applies the served version's preprocessing and returns the top-k of its labels. Only https (plus http "
            "for hosts explicitly allowed), only allowed S3 endpoints/buckets, public addresses, no redirects, no "
            "Content-Encoding (415), a byte cap and a pixel cap."
        ),
        operation_id=f"classify_{spec.name}",
        responses=problem_responses(*COMMON_ERRORS, *IMAGE_ERRORS, *TRITON_ERRORS),
    )


def api_router(settings: ApiSettings) -> APIRouter:
    """``/v1``: one classification route per task of ``settings.tasks``, uploads, models and statistics."""
    router = APIRouter(prefix="/v1", dependencies=auth_dependencies(settings))
    served = [get_task(name) for name in settings.tasks]
    for spec in served:
        if spec.variant_of is not None:
            continue  # served through its task's route (the request's `model`)
        if spec.modality == "text":
            _text_route(router, spec, [variant for variant in served if variant.variant_of == spec.name])
        else:
            _image_route(router, spec)

    @router.post(
        "/uploads",
        response_model=UploadResponse,
        summary="Get a presigned upload form for an image, and the GET URL to classify it",
        description=(
            "POST `multipart/form-data` to `upload_url` with every entry of `fields`, then the image as the field "
            "`file` (at most `max_bytes`, before `expires_in` seconds pass); then send `get_url` to an image route."
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
        summary="Tasks, served model versions with their labels, request limits, examples and ready state",
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


def probes_router(settings: ApiSettings, metrics: ApiMetrics) -> APIRouter:
    """``/healthz`` and ``/readyz`` (always open), ``/metrics`` (behind the API key when keys are set)."""
    router = APIRouter(tags=["probes"])

    @router.get("/healthz", response_model=Health, summary="The process is alive (always open)")
    async def healthz() -> Health:
        return Health()

    @router.get(
        "/readyz",
        response_model=Readiness,
        summary="Triton ready and every task's model ready",
        responses=problem_responses(ModelNotReady),
    )
    async def readyz(service: ServiceDep) -> Readiness:
        readiness = await service.readiness()
        if not readiness.ready:
            missing = [task for task, ready in readiness.models.items() if not ready]
            reason = "Triton is not ready" if not readiness.triton else f"models not ready: {', '.join(missing)}"
            raise ModelNotReady(reason)
        return readiness

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=auth_dependencies(settings),
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
            **problem_responses(Unauthorized),
        },
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router
