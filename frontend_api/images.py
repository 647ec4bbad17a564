"""Fetching images from (presigned) URLs safely, and turning them into model input.

Fetching a URL a client chose is a server-side request forgery surface. Every URL passes
:meth:`UrlPolicy.check` before a byte is sent:

1. scheme ``https``; plain ``http`` only for ``host:port`` in ``allowed_http_hosts`` (local S3);
   no user-info in the URL;
2. the host must be the configured S3 endpoint with an allowed bucket (path-style
   ``endpoint/bucket/key`` or virtual-hosted ``bucket.endpoint/key``), or a host listed in
   ``allowed_image_hosts``;
3. the host is resolved once and every address must be public (not private, loopback,
   link-local such as 169.254.169.254, shared, reserved or multicast) unless the host is in
   ``allowed_http_hosts``; the request then connects to that checked address (with the original
   Host header and TLS server name), so a second DNS answer cannot point it elsewhere.

:class:`ImageFetcher` then refuses redirects (never followed), applies connect/read timeouts and
an overall deadline, checks the content type and the declared length, and stops reading past the
byte cap. Decoding is :mod:`preprocess.image` (magic bytes, pixel cap, decompression bombs, EXIF
orientation, resize, normalisation); :func:`decode_batch` reports its refusals as :class:`BadImage`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
import numpy as np

import preprocess.image
from frontend_api.errors import BadImage, ImageHostError, ImageTooLarge, UrlNotAllowed
from frontend_api.settings import ApiSettings
from preprocess.errors import InvalidImage
from preprocess.image import sniff_format as sniff_format
from taskspec import ImagePreprocessing

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> IP addresses (strings)."""

ACCEPTED_CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/gif", "application/octet-stream", "binary/octet-stream"}
)


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the OS resolver, off the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a globally routable unicast address (IPv4-mapped IPv6 unwrapped)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
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

    def __init__(self, settings: ApiSettings, resolver: Resolver = system_resolver) -> None:
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
        except OSError as exc:
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


class ImageFetcher:
    """Downloads images through one long-lived ``httpx.AsyncClient`` (created in the lifespan)."""

    def __init__(self, client: httpx.AsyncClient, policy: UrlPolicy, settings: ApiSettings) -> None:
        self.client = client
        self.policy = policy
        self.max_bytes = settings.image_max_bytes
        self.deadline_s = settings.image_read_timeout_s

    @staticmethod
    def make_client(settings: ApiSettings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
        """The HTTP client for image hosts: no redirects, no proxies from the environment, tight timeouts."""
        timeout = httpx.Timeout(
            connect=settings.image_connect_timeout_s,
            read=settings.image_read_timeout_s,
            write=settings.image_read_timeout_s,
            pool=settings.image_connect_timeout_s,
        )
        return httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, trust_env=False, transport=transport, max_redirects=0
        )

    async def fetch(self, raw_url: str) -> bytes:
        """The body of ``raw_url`` if the policy allows it and it looks like an image."""
        target = await self.policy.check(raw_url)
        try:
            async with asyncio.timeout(self.deadline_s):
                return await self._download(target)
        except TimeoutError:
            raise ImageHostError(f"the image host did not deliver within {self.deadline_s:g} s") from None
        except httpx.HTTPError as exc:
            raise ImageHostError(f"the image host failed: {type(exc).__name__}") from exc

    async def _download(self, target: Target) -> bytes:
        url = target.url
        host_header = url.netloc.decode("ascii")
        address = target.address
        connect_url = url.copy_with(scheme=target.scheme, host=address, port=target.port)
        extensions = {"sni_hostname": url.host} if target.scheme == "https" else {}
        request = self.client.build_request(
            "GET", connect_url, headers={"Host": host_header, "Accept": "image/*"}, extensions=extensions
        )
        response = await self.client.send(request, stream=True, follow_redirects=False)
        try:
            if 300 <= response.status_code < 400:
                raise UrlNotAllowed(
                    f"the image host answered a redirect ({response.status_code}); redirects are not followed"
                )
            if response.status_code != 200:
                hint = " (expired or invalid presigned URL?)" if response.status_code == 403 else ""
                raise ImageHostError(f"the image host answered {response.status_code}{hint}")
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type and content_type not in ACCEPTED_CONTENT_TYPES:
                raise BadImage(f"the URL does not point to an image (content type {content_type!r})")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise ImageTooLarge(f"the image is {int(declared)} bytes; the limit is {self.max_bytes}")
            chunks: list[bytes] = []
            received = 0
            # Decoded bytes (after any Content-Encoding): the cap bounds what lands in memory.
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > self.max_bytes:
                    raise ImageTooLarge(f"the image is larger than the limit of {self.max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()

    async def fetch_all(self, urls: Sequence[str]) -> tuple[list[bytes], float]:
        """Every URL concurrently; the first failure fails the request. Returns bodies and elapsed ms."""
        start = time.perf_counter()
        bodies = await asyncio.gather(*(self.fetch(u) for u in urls))
        return list(bodies), (time.perf_counter() - start) * 1000


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
