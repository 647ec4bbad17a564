"""Every error leaves as ``application/problem+json``: the exception handlers of the app.

:class:`~frontend_api.errors.ApiError` subclasses carry their own status and type; FastAPI's validation
errors become 422 ``invalid-request`` listing each field; Starlette's 404/405 (and 400 for a body that
cannot be parsed) become problems too; anything else is a 500 whose details stay in the log. Each
answer is counted in ``mtc_api_errors_total``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from frontend_api.errors import (
    PROBLEM_MEDIA_TYPE,
    ApiError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ValidationIssue,
)
from frontend_api.metrics import ApiMetrics

logger = logging.getLogger("frontend_api")


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem_response(error: ApiError, metrics: ApiMetrics | None = None) -> ProblemResponse:
    """``error`` as a problem document (counted in ``metrics`` when given)."""
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


def add_problem_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as a problem document."""
    handlers: list[tuple[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]] = [
        (ApiError, _on_api_error),
        (RequestValidationError, _on_validation_error),
        (StarletteHTTPException, _on_http_error),
        (Exception, _on_unexpected_error),
    ]
    for exc_type, handler in handlers:
        app.add_exception_handler(exc_type, handler)
