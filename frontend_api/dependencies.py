"""What routes depend on: the service (an ``Annotated`` alias), the API-key check, and the in-flight slot of
inference routes (a context manager they enter themselves, see :func:`in_flight`).

Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per request for what is an attribute lookup.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from frontend_api.errors import Overloaded, Unauthorized
from frontend_api.metrics import ApiMetrics
from frontend_api.service import PlatformService
from frontend_api.settings import ApiSettings


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


async def get_service(request: Request) -> PlatformService:
    service: PlatformService = request.app.state.service
    return service


ServiceDep = Annotated[PlatformService, Depends(get_service)]
"""The service (created in the lifespan)."""


@asynccontextmanager
async def in_flight(request: Request) -> AsyncIterator[PlatformService]:
    """Hold one of the ``max_in_flight`` slots for the request's work (429 ``overloaded`` when none is free) and
    hand out the service to do it with.

    Entered inline by the inference routes (``async with in_flight(request) as service``) rather than declared
    as a yield dependency (``Annotated[PlatformService, Depends(...)]``): FastAPI's solving and exit stack for a
    yield dependency cost 0.30 ms more per request (median of 3,000 paired requests, 95% CI 0.21-0.43 ms; 0.22
    ms, CI 0.08-0.33, in a second run), 10% of the facade's 2.9 ms overhead over a direct tritonclient call
    (one 60-token review, 2-core CPU shared with other jobs, load average 4-6; docs/benchmarks.md, "The
    request path").
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


_bearer = HTTPBearer(auto_error=False, description="API key, when the facade is configured with MTC_API_API_KEYS")


def auth_dependencies(settings: ApiSettings) -> list[Any]:
    """The API-key check for protected routes, only when keys are configured: then OpenAPI declares the
    bearer scheme, and an open facade neither advertises authentication nor resolves it."""
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
