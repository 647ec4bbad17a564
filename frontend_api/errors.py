"""One error taxonomy, one body shape (RFC 9457 ``application/problem+json``), one status map.

Third-party exceptions are translated where they enter the facade (Triton client, image fetcher,
S3) into an :class:`ApiError` subclass; the handlers in :mod:`frontend_api.problems` turn every
:class:`ApiError`, validation error and unexpected exception into a problem document. The ``type``
of each kind is a stable URI (relative to the API's origin) that clients may switch on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "/problems/"


class ValidationIssue(BaseModel):
    """One field that failed validation (422 only)."""

    loc: list[str | int] = Field(description="Where in the request: body, field name, list index...")
    msg: str
    type: str


class Problem(BaseModel):
    """An error body (RFC 9457)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/model-not-ready",
                    "title": "Model not ready",
                    "status": 503,
                    "detail": "model 'sentiment' is not ready in Triton",
                }
            ]
        }
    )

    type: str = Field(description="Stable URI of the error kind, e.g. /problems/bad-image")
    title: str = Field(description="Short, fixed summary of the kind")
    status: int = Field(description="HTTP status code")
    detail: str = Field(description="What happened in this request")
    errors: list[ValidationIssue] | None = Field(None, description="Fields that failed validation (422 only)")


class ApiError(Exception):
    """Base of every error the facade answers on purpose. Subclasses fix ``slug``, ``status``, ``title``."""

    slug: ClassVar[str] = "internal-error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})

    @classmethod
    def type_uri(cls) -> str:
        return PROBLEM_BASE + cls.slug

    def problem(self) -> Problem:
        return Problem(type=self.type_uri(), title=self.title, status=self.status, detail=self.detail)


class InvalidRequest(ApiError):
    slug, status, title = "invalid-request", 422, "Invalid request"


class BodyTooLarge(ApiError):
    slug, status, title = "body-too-large", 413, "Request body too large"


class ImageTooLarge(ApiError):
    slug, status, title = "image-too-large", 413, "Image too large"


class BadImage(ApiError):
    slug, status, title = "bad-image", 400, "Bad image"


class EncodedImage(ApiError):
    """The image host answered with a ``Content-Encoding`` (gzip, br...): never inflated, see images.py."""

    slug, status, title = "encoded-image", 415, "Content-encoded image refused"


class Unauthorized(ApiError):
    slug, status, title = "unauthorized", 401, "Missing or invalid API key"


class UrlNotAllowed(ApiError):
    slug, status, title = "url-not-allowed", 403, "URL not allowed"


class AnonymousNotAllowed(ApiError):
    """A facade without API keys answers loopback connections only (unless anonymous access is set)."""

    slug, status, title = "anonymous-not-allowed", 403, "Anonymous access is limited to loopback"


class NotFound(ApiError):
    slug, status, title = "not-found", 404, "Not found"


class MethodNotAllowed(ApiError):
    slug, status, title = "method-not-allowed", 405, "Method not allowed"


class Overloaded(ApiError):
    slug, status, title = "overloaded", 429, "Too many requests in flight"


class ImageBudgetExceeded(ApiError):
    """The image bytes held across all requests reached ``image_bytes_in_flight``."""

    slug, status, title = "image-budget-exceeded", 429, "Too many image bytes in flight"


class ImageHostError(ApiError):
    slug, status, title = "image-host-error", 502, "Image host failed"


class InferenceFailed(ApiError):
    slug, status, title = "inference-failed", 502, "Inference server rejected the request"


class BackendUnavailable(ApiError):
    slug, status, title = "backend-unavailable", 503, "Inference server unavailable"


class BackendOverloaded(ApiError):
    """Triton shed the request: its queue was full, or the request waited there past its deadline."""

    slug, status, title = "backend-overloaded", 503, "Inference server shed the request"


class ModelNotReady(ApiError):
    slug, status, title = "model-not-ready", 503, "Model not ready"


class StorageUnavailable(ApiError):
    slug, status, title = "storage-unavailable", 503, "Object storage unavailable"


class BackendTimeout(ApiError):
    slug, status, title = "backend-timeout", 504, "Inference server timed out"


class InternalError(ApiError):
    slug, status, title = "internal-error", 500, "Internal error"


ERROR_KINDS: tuple[type[ApiError], ...] = (
    InvalidRequest,
    BodyTooLarge,
    ImageTooLarge,
    BadImage,
    EncodedImage,
    Unauthorized,
    UrlNotAllowed,
    AnonymousNotAllowed,
    NotFound,
    MethodNotAllowed,
    Overloaded,
    ImageBudgetExceeded,
    ImageHostError,
    InferenceFailed,
    BackendUnavailable,
    BackendOverloaded,
    ModelNotReady,
    StorageUnavailable,
    BackendTimeout,
    InternalError,
)


def problem_responses(*kinds: type[ApiError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route: one entry per status, listing the kinds it may answer."""
    by_status: dict[int, list[type[ApiError]]] = {}
    for kind in kinds:
        by_status.setdefault(kind.status, []).append(kind)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        description = "; ".join(f"`{k.type_uri()}`: {k.title}" for k in group)
        responses[status] = {"model": Problem, "description": description}
    return responses
