"""Fetching images from (presigned) URLs safely, and turning them into model input.

Fetching a URL a client chose is a server-side request forgery surface. Every URL passes
:meth:`UrlPolicy.check` before a byte is sent:

1. scheme ``https``; plain ``http`` only for ``host:port`` in ``allowed_http_hosts`` (local S3);
   no user-info in the URL;
2. the host must be the configured S3 endpoint with an allowed bucket (path-style
   ``endpoint/bucket/key`` or virtual-hosted ``bucket.endpoint/key``), or a host listed in
   ``allowed_image_hosts``;
3. the host is resolved once (in a thread pool of its own, with a timeout) and every address must
   be public (not private, loopback, link-local such as 169.254.169.254, shared, reserved or
   multicast; an IPv6 address that embeds an IPv4 one is judged by that IPv4 address) unless the
   host is in ``allowed_http_hosts``; the request then connects to that checked address (with the
   original Host header and TLS server name), so a second DNS answer cannot point it elsewhere.

:class:`ImageFetcher` then refuses redirects (never followed), applies connect/read timeouts and
one overall deadline (DNS included), asks for ``Accept-Encoding: identity`` and refuses any
``Content-Encoding`` (a 2.6 KB gzip-of-gzip inflates to gigabytes: nothing here ever inflates a
body), checks the content type and the declared length, and counts the raw bytes on the wire
against the per-image cap and the process-wide :class:`ImageBudget`. The downloads of one request
run in one task group: the first failure cancels the others. Decoding is :mod:`preprocess.image`
(magic bytes, pixel cap, decompression bombs, EXIF orientation, resize, normalisation);
:func:`decode_batch` reports its refusals as :class:`BadImage`, and the service runs it in a thread
pool of its own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

import preprocess.image
from frontend_api.errors import (
    BadImage,
    EncodedImage,
    ImageBudgetExceeded,
    ImageHostError,
    ImageTooLarge,
    UrlNotAllowed,
)
from frontend_api.metrics import ApiMetrics
from frontend_api.settings import ApiSettings
from preprocess.errors import InvalidImage
from preprocess.image import IMAGE_MEDIA_TYPES
from preprocess.image import sniff_format as sniff_format
from taskspec import ImagePreprocessing

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> IP addresses (strings)."""

ACCEPTED_CONTENT_TYPES = frozenset({*IMAGE_MEDIA_TYPES, "application/octet-stream", "binary/octet-stream"})
"""Content types an image host may answer with: the formats the decoder takes, and the generic types S3 gives
objects stored without one (the magic bytes decide then)."""


class SystemResolver:
    """The OS resolver (``getaddrinfo``) in a bounded thread pool of its own, with a deadline.

    ``getaddrinfo`` cannot be interrupted: a hung lookup keeps its thread until the OS gives up.
    A pool of its own keeps such lookups from starving the event loop's default pool (tokenizing,
    artifact reads), and bounds how many threads they can take; callers stop waiting after
    ``timeout_s`` either way.
    """

    def __init__(self, timeout_s: float, threads: int, lookup: Callable[..., list[Any]] = socket.getaddrinfo) -> None:
        self.timeout_s = timeout_s
        self.lookup = lookup
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mtc-dns")

    async def __call__(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                infos = await loop.run_in_executor(self.pool, self._resolve, host, port)
        except TimeoutError:
            raise ImageHostError(f"cannot resolve {host} within {self.timeout_s:g} s") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def _resolve(self, host: str, port: int) -> list[Any]:
        return self.lookup(host, port, type=socket.SOCK_STREAM)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
# RFC 6052 section 2.2: where the IPv4 address sits inside a NAT64 address, per prefix length
# (byte 8, the "u" octet, is always skipped). A local-use /48 may be split into any of these.
_RFC6052_SLICES = {48: ((6, 8), (9, 11)), 56: ((7, 8), (9, 12)), 64: ((9, 13),), 96: ((12, 16),)}


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (and may reach through a translator), or [].

    IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96`` and the
    local-use ``64:ff9b:1::/48`` (every RFC 6052 layout its operator may use), 6to4 ``2002::/16``
    and Teredo ``2001::/32`` (the client's address).
    """
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if int(ip) >> 32 == 0:  # ::a.b.c.d (:: and ::1 land on 0.0.0.0 / 0.0.0.1: not public either)
        return [ipaddress.IPv4Address(int(ip))]
    if ip in _NAT64_WELL_KNOWN:
        return [ipaddress.IPv4Address(ip.packed[12:])]
    if ip in _NAT64_LOCAL:
        packed = ip.packed
        return [ipaddress.IPv4Address(b"".join(packed[a:b] for a, b in slices)) for slices in _RFC6052_SLICES.values()]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return [ip.teredo[1]]
    return []


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a globally routable unicast address.

    An IPv6 address that embeds an IPv4 address (see :func:`embedded_ipv4`) is judged by that
    IPv4 address (every candidate must be public): ``64:ff9b::10.0.0.1`` is 10.0.0.1.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded:
            return all(v4.is_global and not v4.is_multicast for v4 in embedded)
    return ip.is_global and not ip.is_multicast


def _host_port(url: httpx.URL) -> tuple[str, int]:
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.host.lower().rstrip("."), port


def _key(host: str, port: int) -> str:
    """``host:port`` as the allow-lists spell it (``[v6]:port`` for an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _norm(entry: str, default_port: int) -> str:
    entry = entry.strip().lower()
    if entry.startswith("["):  # [v6]:port
        return entry if "]:" in entry else f"{entry}:{default_port}"
    return entry if ":" in entry else f"{entry}:{default_port}"


@dataclass(frozen=True)
class Target:
    """A checked URL and the address to connect to."""

    url: httpx.URL
    address: str
    port: int
    scheme: str


class UrlPolicy:
    """Which image URLs the facade may fetch (see the module docstring)."""

    def __init__(self, settings: ApiSettings, resolver: Resolver) -> None:
        self.resolver = resolver
        self.buckets = {settings.upload_bucket, *settings.allowed_buckets}
        self.http_hosts = {_norm(h, 80) for h in settings.allowed_http_hosts}
        self.extra_hosts = {_norm(h, 443) for h in settings.allowed_image_hosts}
        # public S3 host:port -> the internal endpoint the facade connects to instead
        self.public_to_internal: dict[str, httpx.URL] = {}
        if settings.s3_endpoint_url:
            endpoint = httpx.URL(settings.s3_endpoint_url)
            self.s3_endpoints = {_key(*_host_port(endpoint))}
            if settings.s3_public_endpoint_url:
                public = _key(*_host_port(httpx.URL(settings.s3_public_endpoint_url)))
                self.s3_endpoints.add(public)
                self.public_to_internal[public] = endpoint
        else:
            region = settings.s3_region
            self.s3_endpoints = {"s3.amazonaws.com:443", f"s3.{region}.amazonaws.com:443"}

    def _host_allowed(self, url: httpx.URL, host_port: str) -> bool:
        if host_port in self.extra_hosts:
            return True
        if host_port in self.s3_endpoints:  # path-style: /<bucket>/<key>
            parts = url.path.lstrip("/").split("/", 1)
            return len(parts) == 2 and parts[0] in self.buckets and bool(parts[1])
        bucket, _, rest = host_port.partition(".")
        return bucket in self.buckets and rest in self.s3_endpoints and url.path.strip("/") != ""

    async def check(self, raw_url: str) -> Target:
        """Refuse (:class:`UrlNotAllowed`) or return where to connect; never sends a request."""
        try:
            url = httpx.URL(raw_url)
        except (httpx.InvalidURL, ValueError):
            raise UrlNotAllowed("the URL cannot be parsed") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise UrlNotAllowed(f"scheme {url.scheme!r} is not allowed (https only)")
        if url.userinfo:
            raise UrlNotAllowed("URLs with credentials are not allowed")
        host, port = _host_port(url)
        host_port = _key(host, port)
        connect_host, connect_port, connect_scheme = host, port, url.scheme
        internal = self.public_to_internal.get(host_port)
        if internal is not None:
            # Signed for the public S3 endpoint, fetched through the internal one: the signature covers the
            # Host header, which the request keeps. The operator configured both, so they share one trust.
            connect_host, connect_port = _host_port(internal)
            connect_scheme = internal.scheme
        trusted = host_port in self.http_hosts or (
            internal is not None and _key(connect_host, connect_port) in self.http_hosts
        )
        if url.scheme == "http" and not trusted:
            raise UrlNotAllowed(f"plain http is not allowed for {host_port} (https only)")
        if not self._host_allowed(url, host_port):
            raise UrlNotAllowed(f"{host_port} (or the bucket in the URL) is not an allowed image source")
        try:
            addresses = [connect_host] if _is_ip(connect_host) else await self.resolver(connect_host, connect_port)
        except (OSError, UnicodeError) as exc:
            raise ImageHostError(f"cannot resolve {connect_host}: {exc}") from exc
        if not addresses:
            raise ImageHostError(f"{connect_host} has no address")
        if not trusted:
            private = [a for a in addresses if not is_public_address(a)]
            if private:
                raise UrlNotAllowed(f"{connect_host} resolves to a non-public address ({private[0]})")
        return Target(url=url, address=addresses[0], port=connect_port, scheme=connect_scheme)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ImageBudget:
    """Image bytes held across all requests, bounded: past ``limit``, :class:`ImageBudgetExceeded` (429).

    Raw bytes are counted as they arrive, so the budget bounds what downloads hold in memory
    whatever the hosts declare; a request's :class:`Lease` gives them back once its images are
    decoded (or it failed). Runs on the event loop only: no lock needed.
    """

    def __init__(self, limit: int, metrics: ApiMetrics | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.metrics = metrics

    def lease(self) -> Lease:
        return Lease(self)

    def _update(self, delta: int) -> None:
        self.used += delta
        if self.metrics is not None:
            self.metrics.image_bytes.set(self.used)


class Lease:
    """One request's share of the :class:`ImageBudget`."""

    def __init__(self, budget: ImageBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, size: int) -> None:
        budget = self.budget
        if budget.used + size > budget.limit:
            raise ImageBudgetExceeded(
                f"the facade holds {budget.used} image bytes of its {budget.limit}-byte budget; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.held += size
        budget._update(size)

    def release(self) -> None:
        """Give every byte back (idempotent)."""
        held, self.held = self.held, 0
        self.budget._update(-held)


def _encoding_is_identity(value: str) -> bool:
    return all(token.strip().lower() in ("", "identity") for token in value.split(","))


class ImageFetcher:
    """Downloads images through one long-lived ``httpx.AsyncClient`` (created in the lifespan)."""

    def __init__(
        self, client: httpx.AsyncClient, policy: UrlPolicy, settings: ApiSettings, budget: ImageBudget
    ) -> None:
        self.client = client
        self.policy = policy
        self.budget = budget
        self.max_bytes = settings.image_max_bytes
        self.deadline_s = settings.image_read_timeout_s

    @staticmethod
    def make_client(settings: ApiSettings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
        """The HTTP client for image hosts: no redirects, no proxies from the environment, tight timeouts,
        and ``Accept-Encoding: identity`` (httpx would otherwise offer gzip, deflate, br and zstd)."""
        timeout = httpx.Timeout(
            connect=settings.image_connect_timeout_s,
            read=settings.image_read_timeout_s,
            write=settings.image_read_timeout_s,
            pool=settings.image_connect_timeout_s,
        )
        return httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            max_redirects=0,
            headers={"Accept-Encoding": "identity", "Accept": "image/*"},
        )

    async def fetch(self, raw_url: str, lease: Lease) -> bytes:
        """The body of ``raw_url`` if the policy allows it and it looks like an image; its bytes are
        counted in ``lease``. One deadline covers the whole fetch, DNS included."""
        try:
            async with asyncio.timeout(self.deadline_s):
                target = await self.policy.check(raw_url)
                return await self._download(target, lease)
        except TimeoutError:
            raise ImageHostError(f"the image host did not deliver within {self.deadline_s:g} s") from None
        except httpx.HTTPError as exc:
            raise ImageHostError(f"the image host failed: {type(exc).__name__}") from exc

    async def _download(self, target: Target, lease: Lease) -> bytes:
        url = target.url
        host_header = url.netloc.decode("ascii")
        address = target.address
        connect_url = url.copy_with(scheme=target.scheme, host=address, port=target.port)
        extensions = {"sni_hostname": url.host} if target.scheme == "https" else {}
        request = self.client.build_request("GET", connect_url, headers={"Host": host_header}, extensions=extensions)
        response = await self.client.send(request, stream=True, follow_redirects=False)
        try:
            if 300 <= response.status_code < 400:
                raise UrlNotAllowed(
                    f"the image host answered a redirect ({response.status_code}); redirects are not followed"
                )
            if response.status_code != 200:
                hint = " (expired or invalid presigned URL?)" if response.status_code == 403 else ""
                raise ImageHostError(f"the image host answered {response.status_code}{hint}")
            encoding = response.headers.get("content-encoding", "")
            if not _encoding_is_identity(encoding):
                raise EncodedImage(
                    f"the image host sent the image with Content-Encoding {encoding!r}; only unencoded images are "
                    "accepted (upload the image file as it is)"
                )
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type and content_type not in ACCEPTED_CONTENT_TYPES:
                raise BadImage(f"the URL does not point to an image (content type {content_type!r})")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise ImageTooLarge(f"the image is {int(declared)} bytes; the limit is {self.max_bytes}")
            chunks: list[bytes] = []
            received = 0
            # Raw bytes as they came off the wire: never httpx's decoding iterators (aiter_bytes inflates).
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > self.max_bytes:
                    raise ImageTooLarge(f"the image is larger than the limit of {self.max_bytes} bytes")
                lease.take(len(chunk))
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()

    async def fetch_all(self, urls: Sequence[str], lease: Lease) -> tuple[list[bytes], float]:
        """Every URL concurrently in one task group: the first failure cancels the other downloads and
        fails the request. Returns bodies (counted in ``lease``) and elapsed ms."""
        start = time.perf_counter()
        if len(urls) == 1:
            bodies = [await self.fetch(urls[0], lease)]
        else:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self.fetch(url, lease)) for url in urls]
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None  # the first failure; the others were cancelled by it
            bodies = [task.result() for task in tasks]
        return bodies, (time.perf_counter() - start) * 1000


def decode_image(data: bytes, preprocessing: ImagePreprocessing, max_pixels: int) -> np.ndarray:
    """Bytes -> ``(3, size, size)`` float32 (:func:`preprocess.image.decode_image`); raises :class:`BadImage`."""
    pixels: np.ndarray = decode_batch([data], preprocessing, max_pixels)[0]
    return pixels


def decode_batch(bodies: Sequence[bytes], preprocessing: ImagePreprocessing, max_pixels: int) -> np.ndarray:
    """Decode every image into one ``(n, 3, size, size)`` batch (run in a worker thread); raises :class:`BadImage`."""
    try:
        return preprocess.image.decode_batch(bodies, preprocessing, max_pixels)
    except InvalidImage as exc:
        raise BadImage(str(exc)) from exc
