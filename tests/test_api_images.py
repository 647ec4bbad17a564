"""/v1/pose and the image fetcher: SSRF refusals, limits, decoding; image hosts are an httpx.MockTransport."""

from __future__ import annotations

import asyncio
import gzip
import io
import ipaddress
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from frontend_api.app import create_app
from frontend_api.errors import BadImage, ImageHostError
from frontend_api.images import (
    SystemResolver,
    decode_batch,
    decode_image,
    embedded_ipv4,
    is_public_address,
    sniff_format,
)
from frontend_api.settings import ApiSettings
from preprocess.image import IMAGE_FORMATS, ImageFormat
from taskspec import POSE
from tests.fakes.frontend_api import FakeTriton, HostHandler, ImageHostTransport, asgi_client, make_artifact_repository

PROBLEM = "application/problem+json"
S3 = "127.0.0.1:9000"
DNS = {
    "images.example.com": ["93.184.216.34"],
    "mtc-uploads.s3.us-east-1.amazonaws.com": ["52.216.1.1"],
    "internal.example.com": ["10.1.2.3"],
    "metadata.example.com": ["169.254.169.254"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "evil.example.com": ["93.184.216.35"],
    "v6.example.com": ["2606:4700::6810:84e5"],
}


def jpeg(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_bomb(side: int = 10_000) -> bytes:
    """A 1-bit PNG of side x side pixels: a few KB on the wire, 100 M pixels decoded."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class Hosts:
    """Image hosts behind an httpx.MockTransport; records every request that left the facade."""

    def __init__(self) -> None:
        self.routes: dict[str, HostHandler] = {}
        self.seen: list[str] = []
        self.connected: list[str] = []

    def add(self, url: str, handler: HostHandler) -> str:
        parsed = httpx.URL(url)
        self.routes[f"{parsed.netloc.decode()}{parsed.path}"] = handler
        return url

    def __call__(self, request: httpx.Request) -> httpx.Response | Awaitable[httpx.Response]:
        key = f"{request.headers['host']}{request.url.path}"
        self.seen.append(f"{request.url.host}|{key}")
        self.connected.append(f"{request.url.scheme}://{request.url.host}:{request.url.port}")
        handler = self.routes.get(key)
        return handler(request) if handler else httpx.Response(404)


async def fake_resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError(f"unknown host {host}")
    return DNS[host]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact_repository(tmp_path_factory.mktemp("artifacts"), tasks=["pose"])


@pytest.fixture
def hosts() -> Hosts:
    return Hosts()


@pytest.fixture
def api(repo: Path, hosts: Hosts):
    fake = FakeTriton()
    settings = ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(repo),
        tasks=["pose"],
        s3_endpoint_url=None,
        s3_region="us-east-1",
        upload_bucket="mtc-uploads",
        allowed_image_hosts=[
            "images.example.com",
            "internal.example.com",
            "metadata.example.com",
            "mapped.example.com",
            "v6.example.com",
        ],
        image_max_bytes=50_000,
        image_max_pixels=4_000_000,
    )
    app = create_app(settings, fake, image_transport=ImageHostTransport(hosts), resolver=fake_resolver)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, fake


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == f"/problems/{slug}"
    return body


def ok_image(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=jpeg(), headers={"content-type": "image/jpeg"})


def test_pose_downloads_each_url_and_returns_top_k(api, hosts: Hosts) -> None:
    client, fake = api
    url_a = hosts.add("https://images.example.com/a.jpg", ok_image)
    url_b = hosts.add(
        "https://mtc-uploads.s3.us-east-1.amazonaws.com/uploads/b.png",
        lambda r: httpx.Response(200, content=_png((10, 10, 10)), headers={"content-type": "binary/octet-stream"}),
    )
    response = client.post("/v1/pose", json={"image_urls": [url_a, url_b], "top_k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "pose" and body["model"]["version"] == "1"
    assert [p["image_index"] for p in body["predictions"]] == [0, 1]
    for prediction in body["predictions"]:
        assert set(prediction["probabilities"]) == set(POSE.labels)
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
        top = prediction["top_k"]
        assert len(top) == 4
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert top[0]["label"] == prediction["label"]
    # one batched Triton call with both images, preprocessed to the model's input
    assert [c.shapes["pixel_values"] for c in fake.calls] == [(2, 3, 224, 224)]
    # the fake's logits follow the mean normalised pixel: a red and a dark image get different labels
    assert body["predictions"][0]["label"] != body["predictions"][1]["label"]
    assert set(body["timings_ms"]) == {"fetch", "preprocess", "inference", "total"}
    assert float(response.headers["x-fetch-time-ms"]) == body["timings_ms"]["fetch"]
    # the facade connected to the checked address and kept the original Host header
    assert hosts.seen[0].startswith("93.184.216.34|images.example.com/a.jpg")


@pytest.mark.parametrize("fmt", IMAGE_FORMATS, ids=lambda f: f.media_type)
def test_every_image_format_the_decoder_declares_is_fetched_and_classified(api, hosts: Hosts, fmt: ImageFormat) -> None:
    client, _ = api
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (90, 160, 30)).save(buffer, format=fmt.pillow)
    data = buffer.getvalue()
    assert sniff_format(data) == fmt.pillow
    headers = {"content-type": fmt.media_type}
    url = hosts.add(
        f"https://images.example.com/photo.{fmt.extension}",
        lambda r: httpx.Response(200, content=data, headers=headers),
    )
    response = client.post("/v1/pose", json={"image_urls": [url]})
    assert response.status_code == 200, response.text


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (30, 30), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/latest/a.jpg",
        "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://10.0.0.7/a.jpg",
        "https://[::1]/a.jpg",
        "https://evil.example.com/a.jpg",  # public, but not an allowed host
        "http://images.example.com/a.jpg",  # plain http to a host not allowed for it
        "https://user:pass@images.example.com/a.jpg",
        "https://internal.example.com/a.jpg",  # allowed name, private address
        "https://metadata.example.com/latest/meta-data/",  # allowed name, link-local address
        "https://mapped.example.com/a.jpg",  # IPv4-mapped loopback
        "https://other-bucket.s3.us-east-1.amazonaws.com/a.jpg",  # S3, but not an allowed bucket
        "https://s3.us-east-1.amazonaws.com/other-bucket/a.jpg",
        "https://2130706433/a.jpg",  # 127.0.0.1 written as a number
    ],
)
def test_ssrf_targets_are_refused_with_403_and_never_fetched(api, hosts: Hosts, url: str) -> None:
    client, fake = api
    problem(client.post("/v1/pose", json={"image_urls": [url]}), 403, "url-not-allowed")
    assert hosts.seen == []
    assert fake.calls == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://images.example.com/a.jpg", "gopher://x/", "not a url"])
def test_non_http_urls_fail_validation(api, hosts: Hosts, url: str) -> None:
    client, _ = api
    problem(client.post("/v1/pose", json={"image_urls": [url]}), 422, "invalid-request")
    assert hosts.seen == []


@pytest.mark.parametrize(
    "target", ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:9000/x.jpg", "http://10.0.0.1/"]
)
def test_redirects_are_not_followed(api, hosts: Hosts, target: str) -> None:
    client, _ = api
    url = hosts.add("https://images.example.com/r.jpg", lambda r: httpx.Response(302, headers={"location": target}))
    body = problem(client.post("/v1/pose", json={"image_urls": [url]}), 403, "url-not-allowed")
    assert "redirect" in body["detail"]
    assert len(hosts.seen) == 1 and "images.example.com/r.jpg" in hosts.seen[0]


def test_declared_oversized_body_is_413_before_reading(api, hosts: Hosts) -> None:
    client, _ = api
    url = hosts.add(
        "https://images.example.com/big.jpg",
        lambda r: httpx.Response(200, content=b"\xff\xd8\xff" + b"0" * 60_000, headers={"content-type": "image/jpeg"}),
    )
    problem(client.post("/v1/pose", json={"image_urls": [url]}), 413, "image-too-large")


def test_streamed_oversized_body_without_length_is_cut_off(api, hosts: Hosts) -> None:
    client, _ = api
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1000):
            sent.append(1)
            yield b"\xff" * 10_000

    url = hosts.add(
        "https://images.example.com/stream.jpg",
        lambda r: httpx.Response(200, content=endless(), headers={"content-type": "image/jpeg"}),
    )
    problem(client.post("/v1/pose", json={"image_urls": [url]}), 413, "image-too-large")
    assert len(sent) <= 7  # stopped just past the 50,000-byte cap, not after 10 MB


def test_decompression_bomb_is_refused_as_bad_image(repo: Path, hosts: Hosts) -> None:
    bomb = png_bomb()
    assert len(bomb) < 50_000
    settings = ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(repo),
        tasks=["pose"],
        allowed_image_hosts=["images.example.com"],
        image_max_pixels=4_000_000,
    )
    fake = FakeTriton()
    url = hosts.add(
        "https://images.example.com/bomb.png",
        lambda r: httpx.Response(200, content=bomb, headers={"content-type": "image/png"}),
    )
    app = create_app(settings, fake, image_transport=ImageHostTransport(hosts), resolver=fake_resolver)
    with TestClient(app) as client:
        body = problem(client.post("/v1/pose", json={"image_urls": [url]}), 400, "bad-image")
    assert "decompression bomb" in body["detail"]  # Pillow's own limit (89 M pixels) caught it at open()
    assert fake.calls == []


def test_images_over_the_configured_pixel_limit_are_refused_before_decoding() -> None:
    assert POSE.image is not None
    big = png_bomb(3000)  # 9 M pixels: under Pillow's limit, over ours
    with pytest.raises(BadImage, match="3000x3000 pixels; the limit is 4000000"):
        decode_image(big, POSE.image, 4_000_000)
    assert decode_image(big, POSE.image, 10_000_000).shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("content", "content_type", "expected"),
    [
        (b"<html>hello</html>", "text/html", "content type"),
        (b"GIF8" + b"not really", "image/gif", "magic bytes"),
        (b"plain bytes that are no image", "image/jpeg", "magic bytes"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "image/jpeg", "cannot be decoded"),
    ],
)
def test_non_images_are_400(api, hosts: Hosts, content: bytes, content_type: str, expected: str) -> None:
    client, fake = api
    url = hosts.add(
        "https://images.example.com/x",
        lambda r: httpx.Response(200, content=content, headers={"content-type": content_type}),
    )
    body = problem(client.post("/v1/pose", json={"image_urls": [url]}), 400, "bad-image")
    assert expected in body["detail"]
    assert fake.calls == []


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (lambda r: httpx.Response(403, text="<Error>AccessDenied</Error>"), "403 (expired or invalid presigned URL?)"),
        (lambda r: httpx.Response(500), "answered 500"),
        (lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r)), "ReadTimeout"),
        (lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)), "ConnectError"),
    ],
)
def test_image_host_failures_are_502(api, hosts: Hosts, handler, expected: str) -> None:
    client, _ = api
    url = hosts.add("https://images.example.com/f.jpg", handler)
    body = problem(client.post("/v1/pose", json={"image_urls": [url]}), 502, "image-host-error")
    assert expected in body["detail"]


def test_unresolvable_host_is_502(repo: Path, hosts: Hosts) -> None:
    settings = ApiSettings(
        _env_file=None, model_repository=str(repo), tasks=["pose"], allowed_image_hosts=["nowhere.example.com"]
    )  # type: ignore[call-arg]
    app = create_app(settings, FakeTriton(), image_transport=ImageHostTransport(hosts), resolver=fake_resolver)
    with TestClient(app) as client:
        problem(
            client.post("/v1/pose", json={"image_urls": ["https://nowhere.example.com/a.jpg"]}), 502, "image-host-error"
        )
    assert hosts.seen == []


def test_local_s3_over_http_is_allowed_only_for_the_configured_endpoint_and_bucket(repo: Path, hosts: Hosts) -> None:
    settings = ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(repo),
        tasks=["pose"],
        s3_endpoint_url=f"http://{S3}",
        upload_bucket="mtc-uploads",
        allowed_http_hosts=[S3],
    )
    good = hosts.add(f"http://{S3}/mtc-uploads/uploads/a.jpg", ok_image)
    app = create_app(settings, FakeTriton(), image_transport=ImageHostTransport(hosts), resolver=fake_resolver)
    with TestClient(app) as client:
        assert client.post("/v1/pose", json={"image_urls": [good]}).status_code == 200
        for bad in (
            f"http://{S3}/other-bucket/a.jpg",
            "http://127.0.0.1:9001/mtc-uploads/a.jpg",
            f"http://{S3}/mtc-uploads",
        ):
            problem(client.post("/v1/pose", json={"image_urls": [bad]}), 403, "url-not-allowed")
    assert len(hosts.seen) == 1


def test_too_many_urls_or_bad_top_k_are_422(api) -> None:
    client, _ = api
    urls = [f"https://images.example.com/{i}.jpg" for i in range(POSE.batching.max_batch_size + 1)]
    problem(client.post("/v1/pose", json={"image_urls": urls}), 422, "invalid-request")
    problem(
        client.post("/v1/pose", json={"image_urls": urls[:1], "top_k": POSE.num_labels + 1}), 422, "invalid-request"
    )
    problem(client.post("/v1/pose", json={"image_urls": urls[:1], "top_k": 0}), 422, "invalid-request")


def test_decode_image_normalises_like_the_task_spec() -> None:
    assert POSE.image is not None
    pixels = decode_image(jpeg((255, 0, 127), (300, 200)), POSE.image, 1_000_000)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    # (x - 127) / 128 per channel; JPEG is lossy, so compare with a tolerance
    assert pixels[0].mean() == pytest.approx(1.0, abs=0.03)
    assert pixels[1].mean() == pytest.approx(-127 / 128, abs=0.03)
    assert pixels[2].mean() == pytest.approx(0.0, abs=0.03)


def test_sniff_and_address_helpers() -> None:
    assert sniff_format(jpeg()) == "JPEG"
    assert sniff_format(_png((1, 2, 3))) == "PNG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"BM....") is None
    assert is_public_address("93.184.216.34")
    for private in (
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
    ):
        assert not is_public_address(private), private
    with pytest.raises(BadImage):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, POSE.image, 1000)  # type: ignore[arg-type]


def test_urls_signed_for_the_public_s3_endpoint_are_fetched_through_the_internal_one(repo: Path, hosts: Hosts) -> None:
    # docker compose: clients reach MinIO at localhost:9000, the facade at minio:9000 (a private address)
    settings = ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(repo),
        tasks=["pose"],
        s3_endpoint_url="http://minio:9000",
        s3_public_endpoint_url="http://localhost:9000",
        upload_bucket="mtc-uploads",
        allowed_http_hosts=["minio:9000"],
    )
    url = hosts.add("http://localhost:9000/mtc-uploads/uploads/a.jpg", ok_image)

    async def resolver(host: str, port: int) -> list[str]:
        return {"minio": ["172.18.0.5"]}[host]

    app = create_app(settings, FakeTriton(), image_transport=ImageHostTransport(hosts), resolver=resolver)
    with TestClient(app) as client:
        upload = client.post("/v1/uploads", json={"content_type": "image/jpeg"}).json()
        assert upload["upload_url"] == "http://localhost:9000/mtc-uploads"
        assert upload["get_url"].startswith(f"http://localhost:9000/mtc-uploads/{upload['key']}?")
        assert client.post("/v1/pose", json={"image_urls": [url]}).status_code == 200
        problem(
            client.post("/v1/pose", json={"image_urls": ["http://localhost:9000/other/a.jpg"]}), 403, "url-not-allowed"
        )
        problem(
            client.post("/v1/pose", json={"image_urls": ["http://localhost:9001/mtc-uploads/a.jpg"]}),
            403,
            "url-not-allowed",
        )
    # connected to MinIO's internal address, with the Host header the URL was signed for
    assert hosts.seen == ["172.18.0.5|localhost:9000/mtc-uploads/uploads/a.jpg"]
    assert hosts.connected == ["http://172.18.0.5:9000"]


# --- content encodings: never inflated ------------------------------------------------------------


def stacked_gzip(size: int, layers: int = 2) -> bytes:
    data = bytes(size)
    for _ in range(layers):
        data = gzip.compress(data, compresslevel=9)
    return data


@pytest.mark.parametrize("encoding", ["gzip", "gzip, gzip", "br", "deflate", "zstd", "identity, gzip", "x-anything"])
def test_content_encoded_images_are_refused_with_415_and_never_inflated(api, hosts: Hosts, encoding: str) -> None:
    client, fake = api
    bomb = stacked_gzip(20_000_000)  # 20 MB of zeros in a few KB: inflated, it would blow the 50 KB cap
    assert len(bomb) < 50_000
    sent_headers: list[httpx.Headers] = []

    def host(request: httpx.Request) -> httpx.Response:
        sent_headers.append(request.headers)
        headers = {"content-type": "image/jpeg", "content-encoding": encoding}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(bomb))

    url = hosts.add("https://images.example.com/bomb.jpg", host)
    body = problem(client.post("/v1/pose", json={"image_urls": [url]}), 415, "encoded-image")
    assert encoding in body["detail"]
    assert sent_headers[0]["accept-encoding"] == "identity"
    assert fake.calls == []


def test_identity_encoding_is_accepted_and_raw_bytes_are_what_count(api, hosts: Hosts) -> None:
    client, _ = api
    url = hosts.add(
        "https://images.example.com/plain.jpg",
        lambda r: httpx.Response(
            200, headers={"content-type": "image/jpeg", "content-encoding": "identity"}, stream=httpx.ByteStream(jpeg())
        ),
    )
    assert client.post("/v1/pose", json={"image_urls": [url]}).status_code == 200


# --- IPv6 addresses that carry an IPv4 address --------------------------------------------------

EMBEDDED_PRIVATE = [
    ("::ffff:10.0.0.1", "10.0.0.1"),  # IPv4-mapped
    ("::127.0.0.1", "127.0.0.1"),  # IPv4-compatible
    ("::a9fe:a9fe", "169.254.169.254"),  # IPv4-compatible, the metadata address
    ("64:ff9b::10.0.0.1", "10.0.0.1"),  # NAT64 well-known prefix
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
    ("64:ff9b:1:a00:0:100::", "10.0.0.1"),  # local-use NAT64, /48 layout (u octet skipped)
    ("64:ff9b:1::7f00:1", "127.0.0.1"),  # local-use NAT64, /96 layout
    ("2002:a00:1::", "10.0.0.1"),  # 6to4
    ("2002:7f00:1::1", "127.0.0.1"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1"),  # Teredo: the client address (obfuscated)
]


@pytest.mark.parametrize(("address", "ipv4"), EMBEDDED_PRIVATE)
def test_ipv6_forms_embedding_a_private_ipv4_address_are_judged_by_it(address: str, ipv4: str) -> None:
    assert ipaddress.IPv4Address(ipv4) in embedded_ipv4(ipaddress.IPv6Address(address))
    assert not is_public_address(address)


@pytest.mark.parametrize(
    "address", ["::ffff:93.184.216.34", "64:ff9b::93.184.216.34", "2002:5db8:d822::1", "2606:4700::6810:84e5"]
)
def test_ipv6_forms_embedding_a_public_ipv4_address_stay_public(address: str) -> None:
    assert is_public_address(address)


@pytest.mark.parametrize(("address", "ipv4"), EMBEDDED_PRIVATE)
def test_hosts_resolving_to_an_embedded_private_ipv4_are_refused_and_never_fetched(
    api, hosts: Hosts, monkeypatch: pytest.MonkeyPatch, address: str, ipv4: str
) -> None:
    client, fake = api
    monkeypatch.setitem(DNS, "v6.example.com", [address])
    url = hosts.add("https://v6.example.com/a.jpg", ok_image)
    body = problem(client.post("/v1/pose", json={"image_urls": [url]}), 403, "url-not-allowed")
    assert "non-public address" in body["detail"]
    assert hosts.seen == [] and fake.calls == []


def test_a_host_on_a_public_ipv6_address_is_fetched(api, hosts: Hosts) -> None:
    client, _ = api
    url = hosts.add("https://v6.example.com/a.jpg", ok_image)
    assert client.post("/v1/pose", json={"image_urls": [url]}).status_code == 200
    assert hosts.seen == ["2606:4700::6810:84e5|v6.example.com/a.jpg"]


# --- concurrency: cancellation, deadlines, the byte budget, thread pools ------------------------


def pose_settings(repo: Path, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "model_repository": str(repo),
        "tasks": ["pose"],
        "allowed_image_hosts": ["images.example.com"],
        "image_max_bytes": 50_000,
        **overrides,
    }
    return ApiSettings(_env_file=None, **values)  # type: ignore[call-arg]


def test_a_failed_download_cancels_the_other_downloads_of_its_request(repo: Path, hosts: Hosts) -> None:
    async def scenario() -> None:
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def hanging(request: httpx.Request) -> httpx.Response:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return httpx.Response(200, content=jpeg())

        async def failing(request: httpx.Request) -> httpx.Response:
            await started.wait()
            return httpx.Response(404)

        slow = hosts.add("https://images.example.com/slow.jpg", hanging)
        broken = hosts.add("https://images.example.com/broken.jpg", failing)
        app = create_app(
            pose_settings(repo), FakeTriton(), image_transport=ImageHostTransport(hosts), resolver=fake_resolver
        )
        async with asgi_client(app) as client:
            start = time.monotonic()
            response = await client.post("/v1/pose", json={"image_urls": [slow, broken]})
            elapsed = time.monotonic() - start
            problem(response, 502, "image-host-error")
            assert "answered 404" in response.json()["detail"]
            assert elapsed < 5  # not the slow download's 10 s deadline
            # the sibling download is cancelled, not left running until its own deadline
            await asyncio.wait_for(cancelled.wait(), timeout=2)

    asyncio.run(scenario())


def test_dns_resolution_runs_under_the_fetchs_deadline(repo: Path, hosts: Hosts) -> None:
    async def stuck_dns(host: str, port: int) -> list[str]:
        await asyncio.sleep(60)
        return ["93.184.216.34"]

    async def scenario() -> None:
        settings = pose_settings(repo, image_read_timeout_s=0.5)
        app = create_app(settings, FakeTriton(), image_transport=ImageHostTransport(hosts), resolver=stuck_dns)
        async with asgi_client(app) as client:
            start = time.monotonic()
            request = client.post("/v1/pose", json={"image_urls": ["https://images.example.com/a.jpg"]})
            response = await asyncio.wait_for(request, timeout=10)
            body = problem(response, 502, "image-host-error")
            assert "within 0.5 s" in body["detail"]
            assert time.monotonic() - start < 5
        assert hosts.seen == []

    asyncio.run(scenario())


def test_the_system_resolver_uses_its_own_bounded_pool_and_times_out() -> None:
    release = threading.Event()
    threads: list[str] = []

    def lookup(host: str, port: int, type: int) -> list[Any]:
        threads.append(threading.current_thread().name)
        if host == "stuck.example.com":
            release.wait(10)
        return [(2, 1, 6, "", ("93.184.216.34", port)), (2, 1, 6, "", ("93.184.216.34", port))]

    resolver = SystemResolver(timeout_s=0.2, threads=1, lookup=lookup)

    async def scenario() -> None:
        assert await resolver("images.example.com", 443) == ["93.184.216.34"]
        start = time.monotonic()
        with pytest.raises(ImageHostError, match=r"cannot resolve stuck.example.com within 0.2 s"):
            await resolver("stuck.example.com", 443)
        assert time.monotonic() - start < 2
        # the pool holds one thread, taken by the stuck lookup: the next one queues, and times out too
        with pytest.raises(ImageHostError):
            await resolver("images.example.com", 443)

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        resolver.close()
    assert threads and all(name.startswith("mtc-dns") for name in threads)


def noise_jpeg(side: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_image_bytes_in_flight_across_requests_are_bounded_with_429(repo: Path, hosts: Hosts) -> None:
    held, second = noise_jpeg(200), noise_jpeg(160, seed=1)
    assert 30_000 < len(held) < 50_000 and 20_000 < len(second) < 30_000  # each fits; 30 KB of one + the other not

    async def scenario() -> None:
        release = asyncio.Event()
        halfway = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield held[:30_000]
            halfway.set()
            await release.wait()
            yield held[30_000:]

        slow = hosts.add(
            "https://images.example.com/slow.jpg",
            lambda r: httpx.Response(200, headers={"content-type": "image/jpeg"}, content=slow_body()),
        )
        other = hosts.add("https://images.example.com/other.jpg", lambda r: httpx.Response(200, content=second))
        settings = pose_settings(repo, image_bytes_in_flight=50_000)
        app = create_app(settings, FakeTriton(), image_transport=ImageHostTransport(hosts), resolver=fake_resolver)
        async with asgi_client(app) as client:
            first = asyncio.create_task(client.post("/v1/pose", json={"image_urls": [slow]}))
            await asyncio.wait_for(halfway.wait(), 5)
            refused = await client.post("/v1/pose", json={"image_urls": [other]})
            body = problem(refused, 429, "image-budget-exceeded")
            assert refused.headers["retry-after"] == "1"
            assert "50000-byte budget" in body["detail"]
            release.set()
            assert (await first).status_code == 200
            # every byte was given back: the same request now fits
            assert (await client.post("/v1/pose", json={"image_urls": [other]})).status_code == 200
            metrics = (await client.get("/metrics")).text
            assert "mtc_api_image_bytes_in_flight 0.0" in metrics
            assert app.state.service.fetcher.budget.used == 0

    asyncio.run(scenario())


def test_images_are_decoded_in_a_pool_of_their_own(api, hosts: Hosts, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = api
    threads: list[str] = []

    def recording(*args: Any) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return decode_batch(*args)

    monkeypatch.setattr("frontend_api.service.decode_batch", recording)
    url = hosts.add("https://images.example.com/a.jpg", ok_image)
    assert client.post("/v1/pose", json={"image_urls": [url, url]}).status_code == 200
    assert len(threads) == 1 and threads[0].startswith("mtc-decode")
