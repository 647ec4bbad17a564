"""What routes depend on, as ``Annotated`` aliases: the service, an in-flight slot, the API-key check.

Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per request for what is an attribute lookup.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
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


async def hold_in_flight_slot(request: Request) -> AsyncIterator[PlatformService]:
    """One of the ``max_in_flight`` slots for the request's work (429 ``overloaded`` when none is free), and the
    service to do it with."""
    limiter: InFlightLimiter = request.app.state.limiter
    if not limiter.try_acquire():
        raise Overloaded(
            f"more than {limiter.limit} requests are in flight; retry shortly", headers={"Retry-After": "1"}
        )
    try:
        yield request.app.state.service
    finally:
        limiter.release()


InFlightDep = Annotated[PlatformService, Depends(hold_in_flight_slot)]
"""The service, with an in-flight slot held until the route returns: what inference routes take."""

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
