"""Pure ASGI middleware: the request-body cap, request metrics, and the loopback guard of a facade without keys.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which runs the app in a task of its own and
streams the response through a memory channel on every request.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frontend_api.errors import AnonymousNotAllowed, BodyTooLarge
from frontend_api.metrics import ApiMetrics
from frontend_api.problems import problem_response
from frontend_api.settings import is_loopback_host

logger = logging.getLogger("frontend_api")


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
        if server is not None and not is_loopback_host(str(server[0])):
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
