"""The soak's clients: mixed requests over the three tasks, each with a client-side deadline.

Every client sends its next request when the previous one has ended (closed loop), cycling through the
tasks: a review to ``/v1/sentiment``, a tweet to ``/v1/disaster``, a photo's presigned GET URL to
``/v1/pose``. The photos are uploaded once through the presigned-POST flow of ``/v1/uploads`` (and again
when half of their URLs' lifetime has passed, so a long run never sends an expired URL).

A request ends in an HTTP status, a connection error, or is **lost**: no answer within ``timeout_s``,
which is set well above the facade's own deadlines, so only a request the stack let hang gets there. A
client behaves like a polite one: after a 429, 502 or 503 it waits what ``Retry-After`` asks, or
``backoff_s`` when the answer does not say (capped at ``max_backoff_s`` either way), and ``backoff_s``
after a connection error, so a restarting Triton is not met with a tight loop of retries from 64 clients
(the facade's 503 for an unreachable Triton carries no ``Retry-After``: without the default pause the
clients send hundreds of requests a second at it, on the cores Triton needs to restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

LOST = "lost"
CONNECTION_ERROR = "connection error"
BAD_ANSWER = "200 without predictions"
OK = "200"


@dataclass(frozen=True)
class Outcome:
    """How one request ended, in seconds from the start of the traffic."""

    task: str
    start_s: float
    end_s: float
    status: str
    """The HTTP status code ("200", "503", ...), :data:`LOST`, :data:`CONNECTION_ERROR` or :data:`BAD_ANSWER`."""

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def latency_ms(self) -> float:
        return (self.end_s - self.start_s) * 1000.0


@dataclass(frozen=True)
class TrafficSettings:
    """Who is called, by how many clients, and how long a request may take before it counts as lost."""

    url: str
    tasks: tuple[str, ...] = ("sentiment", "disaster", "pose")
    clients: int = 64
    timeout_s: float = 60.0
    api_key: str | None = None
    backoff_s: float = 1.0
    max_backoff_s: float = 2.0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class Inputs:
    """The raw inputs the clients cycle through."""

    texts: dict[str, tuple[str, ...]]
    """task -> texts, for the text tasks"""
    images: tuple[bytes, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, tasks: Sequence[str], limit: int = 64) -> Inputs:
        """The tasks' validation data from the shared datasets (bench.inputs), or its stand-ins."""
        from bench.inputs import load_samples
        from taskspec import get_task

        texts: dict[str, tuple[str, ...]] = {}
        images: tuple[bytes, ...] = ()
        sources = {}
        for task in tasks:
            samples = load_samples(get_task(task), limit)
            sources[task] = samples.source
            if samples.images:
                images = samples.images[: min(limit, 16)]
            else:
                texts[task] = samples.texts
        return cls(texts=texts, images=images, sources=sources)


def content_type(data: bytes) -> str:
    return "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


class UploadError(RuntimeError):
    """An image could not be uploaded through ``/v1/uploads`` and its presigned POST form."""


async def upload(
    session: aiohttp.ClientSession, settings: TrafficSettings, data: bytes, name: str
) -> tuple[str, float]:
    """Upload ``data`` through the facade's presigned POST flow; returns its GET URL and the URL's lifetime (s)."""
    kind = content_type(data)
    async with session.post(
        f"{settings.url}/v1/uploads", json={"filename": name, "content_type": kind}, headers=settings.headers
    ) as response:
        if response.status != 200:
            raise UploadError(f"POST /v1/uploads answered {response.status}: {(await response.text())[:200]}")
        grant: dict[str, Any] = await response.json()
    form = aiohttp.FormData()
    for key, value in grant["fields"].items():  # the signed policy first, the file last
        form.add_field(key, value)
    form.add_field("file", data, filename=name, content_type=kind)
    async with session.post(grant["upload_url"], data=form) as stored:  # no API key: the form is signed
        if stored.status >= 300:
            raise UploadError(f"the S3 server refused the upload: {stored.status} {(await stored.text())[:200]}")
    return str(grant["get_url"]), float(grant["expires_in"])


class ImageUrls:
    """Presigned GET URLs of the photos, renewed when half their lifetime has passed."""

    def __init__(self, session: aiohttp.ClientSession, settings: TrafficSettings, images: Sequence[bytes]) -> None:
        self._session, self._settings, self._images = session, settings, list(images)
        self.urls: list[str] = []
        self.renew_at = 0.0
        self.uploads = 0
        self.failures: list[str] = []

    async def refresh(self) -> None:
        """Upload every photo again (raises :class:`UploadError` when one cannot be uploaded)."""
        urls, lifetime = [], 0.0
        for index, data in enumerate(self._images):
            url, lifetime = await upload(self._session, self._settings, data, f"soak{index:03d}.jpg")
            urls.append(url)
            self.uploads += 1
        self.urls = urls
        self.renew_at = time.monotonic() + lifetime / 2

    async def keep_fresh(self, stop: asyncio.Event) -> None:
        """Renew the URLs until ``stop``; a failed renewal is recorded and retried 10 s later."""
        while not stop.is_set():
            if await wait_or_stop(stop, max(0.0, self.renew_at - time.monotonic())):
                return
            try:
                await self.refresh()
            except (UploadError, aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}"[:300])
                self.renew_at = time.monotonic() + 10.0

    def pick(self, n: int) -> str:
        return self.urls[n % len(self.urls)]


def request_for(
    n: int, settings: TrafficSettings, inputs: Inputs, images: ImageUrls | None
) -> tuple[str, dict[str, Any]]:
    """Request number ``n``: its task (round-robin) and JSON body (one input each)."""
    task = settings.tasks[n % len(settings.tasks)]
    turn = n // len(settings.tasks)
    if task in inputs.texts:
        texts = inputs.texts[task]
        return task, {"texts": [texts[turn % len(texts)]]}
    if images is None or not images.urls:
        raise ValueError(f"{task}: no text inputs and no uploaded images")
    return task, {"image_urls": [images.pick(turn)], "top_k": 3}


RETRYABLE = (429, 502, 503)


def pause_after(status: int, headers: Any, settings: TrafficSettings) -> float:
    """Seconds to wait before the next request after an answer with ``status``: what ``Retry-After`` (in
    seconds) asks of a 429/502/503, else ``backoff_s``; at most ``max_backoff_s``; 0 after any other status."""
    if status not in RETRYABLE:
        return 0.0
    try:
        asked = float(headers.get("Retry-After", settings.backoff_s))
    except ValueError:  # an HTTP date: not sent by the facade
        asked = settings.backoff_s
    return min(max(asked, 0.0), settings.max_backoff_s)


async def send(
    session: aiohttp.ClientSession, settings: TrafficSettings, task: str, body: dict[str, Any]
) -> tuple[str, float]:
    """POST one request under the client's deadline; returns how it ended and how long to wait before the next."""
    deadline = asyncio.timeout(settings.timeout_s)
    url = f"{settings.url}/v1/{task}"
    try:
        async with deadline, session.post(url, json=body, headers=settings.headers) as response:
            payload = await response.read()
            status = str(response.status)
            if response.status == 200 and b'"predictions"' not in payload:
                return BAD_ANSWER, 0.0
            return status, pause_after(response.status, response.headers, settings)
    except TimeoutError:
        if deadline.expired():
            return LOST, 0.0
        return CONNECTION_ERROR, settings.backoff_s  # a timeout inside aiohttp, not ours
    except (aiohttp.ClientError, OSError):
        return CONNECTION_ERROR, settings.backoff_s


async def run_clients(
    session: aiohttp.ClientSession,
    settings: TrafficSettings,
    inputs: Inputs,
    images: ImageUrls | None,
    *,
    clock: Callable[[], float],
    stop: asyncio.Event,
    record: Callable[[Outcome], None],
) -> None:
    """``settings.clients`` closed-loop clients until ``stop``; every request that was sent is recorded
    once it has ended (this returns only when every client's last request has ended)."""
    numbers = itertools.count()

    async def client() -> None:
        while not stop.is_set():
            task, body = request_for(next(numbers), settings, inputs, images)
            start = clock()
            status, pause = await send(session, settings, task, body)
            record(Outcome(task, start, clock(), status))
            if pause > 0:
                await wait_or_stop(stop, pause)

    await asyncio.gather(*(client() for _ in range(settings.clients)))


def make_session(settings: TrafficSettings) -> aiohttp.ClientSession:
    """One connection pool for all clients; no aiohttp timeout (each request has its own deadline)."""
    connector = aiohttp.TCPConnector(limit=settings.clients * 2, limit_per_host=settings.clients * 2)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
