"""The facade as deployed (``python -m frontend_api``, settings from MTC_API_* variables, an address-space
limit) against a real Triton and a real local S3 server, with the tiny random-weight models published by
the real export path.

Covers: correct probabilities end to end (compared with ONNX Runtime on the same model), the presigned
POST upload -> GET URL -> /v1/pose round trip, S3 refusing an oversized upload, stacked-gzip bombs from a
real HTTP server and from S3 refused without inflating them (the facade's memory stays flat), a version's
artifacts republished in S3 picked up after the refresh, Triton shedding requests from a full queue (503 +
Retry-After) and dropping a request the facade gave up on, per-model statistics, SSRF refusals against
real local services, and Triton stopped mid-test -> 503, then recovery without restarting the facade.

The facade calls Triton over its default protocol (gRPC); a second facade on the same Triton calls it over HTTP,
and the protocol-sensitive tests (probabilities, shedding and the dropped request) run against both.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import struct
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from export.s3sync import S3Settings, ensure_bucket, make_client, push
from frontend_api.artifacts import TextArtifacts, parse_artifacts
from frontend_api.images import decode_image
from preprocess.probabilities import softmax
from preprocess.text import TextEncoder
from serving.processes import ManagedProcess
from serving.triton import PROJECT_ROOT, TritonServer, free_port
from taskspec import (
    DISASTER,
    INT8_MODEL_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    POSE,
    PREPROCESSING_FILE,
    SENTIMENT,
    TOKENIZER_FILE,
)
from tests.fakes.frontend_api import write_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK_MODELS = ["sentiment", "disaster", "pose", "sentiment_tiny", "disaster_tiny"]
# The facade's address space is capped (RLIMIT_AS): it needs ~0.5 GiB; the bombs below inflate to 2 GiB.
FACADE_ADDRESS_SPACE = 3 << 29  # 1.5 GiB
BOMB_INFLATED = 2 << 30
IMAGE_MAX_BYTES = 1 << 20


def gzip_of_zeros(size: int, segment: int = 1 << 24) -> bytes:
    """A gzip stream of ``size`` zero bytes, built without compressing them all: after a full flush the
    compressor's state is reset, so every further segment of zeros compresses to the same bytes."""
    assert size % segment == 0 and size >= 2 * segment
    chunk = bytes(segment)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_block = compressor.flush()[:-8]  # without the trailer of these two segments: the whole stream's follows
    crc = 0
    for _ in range(size // segment):
        crc = zlib.crc32(chunk, crc)
    return first + repeat * (size // segment - 1) + final_block + struct.pack("<II", crc, size & 0xFFFFFFFF)


def stacked_bomb() -> bytes:
    """gzip of gzip of 2 GiB of zeros: about 3.4 KB, served as ``Content-Encoding: gzip, gzip``."""
    return gzip.compress(gzip_of_zeros(BOMB_INFLATED), compresslevel=9)


class BombServer:
    """A real HTTP server (a socket, a thread) serving the bomb at /bomb.jpg; records each request's headers."""

    def __init__(self, bomb: bytes) -> None:
        self.requests: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Encoding", "gzip, gzip")
                self.send_header("Content-Length", str(len(bomb)))
                self.end_headers()
                self.wfile.write(bomb)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host_port = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BombServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack:
    repository: Path
    triton: TritonServer
    api_url: str
    """The facade with the default settings: Triton over gRPC."""
    http_api_url: str
    """The same facade calling Triton over HTTP (``MTC_API_TRITON_PROTOCOL=http``)."""
    s3_endpoint: str
    upload_bucket: str
    models_bucket: str
    api: ManagedProcess
    bomb: bytes
    bomb_server: BombServer


def limited_facade_command(address_space: int) -> list[str]:
    """``python -m frontend_api`` (the documented launcher) with its address space capped."""
    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({address_space}, {address_space})); "
        "os.execv(sys.executable, [sys.executable, '-m', 'frontend_api'])"
    )
    return [sys.executable, "-c", code]


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set), VmRSS and VmSize of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS", "VmSize", "VmPeak"):
            fields[name] = int(value.split()[0])
    return fields


def is_moto(s3_endpoint: str) -> bool:
    """moto's server (a mock) answers its own API; a real S3 server does not."""
    try:
        return httpx.get(f"{s3_endpoint}/moto-api/", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def start_triton(repository: Path, http_port: int, grpc_port: int, metrics_port: int) -> TritonServer:
    server = TritonServer(
        model_repository=str(repository),
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        # the token-level models only: the raw-text BLS models are not used by the facade
        model_control_mode="explicit",
        load_models=TASK_MODELS,
        startup_timeout=180,
    )
    return server.start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[Stack]:
    from tests.support.tiny_models import build_tiny_repository

    root = tmp_path_factory.mktemp("facade-stack")
    repository = build_tiny_repository(root)
    client = make_client(S3Settings(endpoint_url=s3_endpoint))
    models_bucket, upload_bucket = f"models-{uuid.uuid4().hex[:8]}", f"uploads-{uuid.uuid4().hex[:8]}"
    for bucket in (models_bucket, upload_bucket):
        ensure_bucket(client, bucket)
    # the facade reads its artifacts from S3, as on a host without the local repository
    push(repository, f"s3://{models_bucket}/repo", client, progress=False)
    bomb = stacked_bomb()

    triton = start_triton(repository, free_port(), free_port(), free_port())
    api_port, http_api_port = free_port(), free_port()
    s3_hostport = s3_endpoint.removeprefix("http://")
    with BombServer(bomb) as bomb_server:
        env = {
            "MTC_API_HOST": "127.0.0.1",
            "MTC_API_PORT": str(api_port),
            "MTC_API_TRITON_URL": f"127.0.0.1:{triton.http_port}",
            "MTC_API_TRITON_GRPC_URL": f"127.0.0.1:{triton.grpc_port}",
            "MTC_API_MODEL_REPOSITORY": f"s3://{models_bucket}/repo",
            "MTC_API_S3_ENDPOINT_URL": s3_endpoint,
            "MTC_API_UPLOAD_BUCKET": upload_bucket,
            "MTC_API_ALLOWED_HTTP_HOSTS": json.dumps([s3_hostport, bomb_server.host_port]),
            "MTC_API_ALLOWED_IMAGE_HOSTS": json.dumps([bomb_server.host_port]),
            "MTC_API_IMAGE_MAX_BYTES": str(IMAGE_MAX_BYTES),
            "MTC_API_MODEL_REFRESH_S": "1",
            "MTC_API_TRITON_TIMEOUT_S": "5",
            "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MiB of address space per arena otherwise
        }
        api = ManagedProcess(
            name="facade",
            command=limited_facade_command(FACADE_ADDRESS_SPACE),
            ready_url=f"http://127.0.0.1:{api_port}/healthz",
            log_file=root / "api.log",
            env=env,
            cwd=PROJECT_ROOT,
        )
        http_api = ManagedProcess(
            name="facade-http",
            command=limited_facade_command(FACADE_ADDRESS_SPACE),
            ready_url=f"http://127.0.0.1:{http_api_port}/healthz",
            log_file=root / "api-http.log",
            env={**env, "MTC_API_PORT": str(http_api_port), "MTC_API_TRITON_PROTOCOL": "http"},
            cwd=PROJECT_ROOT,
        )
        stack = Stack(
            repository,
            triton,
            f"http://127.0.0.1:{api_port}",
            f"http://127.0.0.1:{http_api_port}",
            s3_endpoint,
            upload_bucket,
            models_bucket,
            api,
            bomb,
            bomb_server,
        )
        try:
            with api, http_api:
                yield stack
        finally:
            # stack.triton, not triton: the restart test replaces it, and the replacement must stop too
            stack.triton.stop()
            triton.stop()


def ort_logits(repository: Path, task: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(repository / task / "1" / MODEL_FILE), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], feeds)
    return np.asarray(logits)


def test_ready_and_models_report_the_published_versions(stack: Stack) -> None:
    ready = httpx.get(f"{stack.api_url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    models = {m["task"]: m for m in httpx.get(f"{stack.api_url}/v1/models", timeout=10).json()["models"]}
    assert {t: (m["ready"], m["version"]) for t, m in models.items()} == {t: (True, "1") for t in TASK_MODELS}


def facade_url(stack: Stack, protocol: str) -> str:
    return {"grpc": stack.api_url, "http": stack.http_api_url}[protocol]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_text_probabilities_match_onnx_runtime_on_the_same_model(stack: Stack, protocol: str) -> None:
    texts = ["A beautiful, moving film.", "Two hours of my life I will never get back. " * 8, "ok"]
    response = httpx.post(f"{facade_url(stack, protocol)}/v1/sentiment", json={"texts": texts}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "sentiment", "version": "1"}
    assert float(response.headers["x-inference-time-ms"]) > 0

    version_dir = stack.repository / "sentiment" / "1"
    artifacts = parse_artifacts(
        SENTIMENT, "1", (version_dir / PREPROCESSING_FILE).read_bytes(), (version_dir / TOKENIZER_FILE).read_bytes()
    )
    assert isinstance(artifacts, TextArtifacts)
    for group in artifacts.encoder.groups(texts):
        expected = softmax(
            ort_logits(
                stack.repository,
                "sentiment",
                {"input_ids": group.input_ids, "attention_mask": group.attention_mask},
            )
        )
        for index, row in zip(group.indices, expected, strict=True):
            prediction = body["predictions"][index]
            assert prediction["text_index"] == index
            got = [prediction["probabilities"][label] for label in SENTIMENT.labels]
            assert got == pytest.approx(row.tolist(), abs=1e-4)
            assert prediction["label"] == SENTIMENT.labels[int(np.argmax(row))]


def test_the_tiny_variant_is_chosen_per_request_and_answers_with_its_own_triton_model(stack: Stack) -> None:
    """`model: sentiment_tiny` on /v1/sentiment: the response names that model, its probabilities are those of
    sentiment_tiny's own published file in ONNX Runtime (not sentiment's); a model the task lacks is 422."""
    texts = ["A beautiful, moving film.", "Two hours of my life I will never get back."]
    url = f"{stack.api_url}/v1/sentiment"
    tiny = httpx.post(url, json={"texts": texts, "model": "sentiment_tiny"}, timeout=30)
    default = httpx.post(url, json={"texts": texts}, timeout=30)
    assert tiny.status_code == 200 and default.status_code == 200, (tiny.text, default.text)
    assert tiny.json()["task"] == "sentiment" and tiny.json()["model"] == {"name": "sentiment_tiny", "version": "1"}
    assert default.json()["model"]["name"] == "sentiment"
    encoder = TextEncoder.from_version_dir(stack.repository / "sentiment_tiny" / "1")
    for model, body in (("sentiment_tiny", tiny.json()), ("sentiment", default.json())):
        # This CPU-only Triton serves configs/cpu.pbtxt: each model's int8 file
        served = stack.repository / model / "1" / INT8_MODEL_FILE
        session = ort.InferenceSession(str(served), providers=["CPUExecutionProvider"])
        for group in encoder.groups(texts):
            feeds = {"input_ids": group.input_ids, "attention_mask": group.attention_mask}
            expected = softmax(np.asarray(session.run(["logits"], feeds)[0]))
            for index, row in zip(group.indices, expected, strict=True):
                got = [body["predictions"][index]["probabilities"][label] for label in SENTIMENT.labels]
                assert got == pytest.approx(row.tolist(), abs=1e-4), model
    assert tiny.json()["predictions"] != default.json()["predictions"]  # two different models answered
    wrong = httpx.post(url, json={"texts": texts, "model": "disaster_tiny"}, timeout=30)
    assert wrong.status_code == 422 and "'sentiment' or 'sentiment_tiny'" in wrong.text
    models = {m["model"]: m for m in httpx.get(f"{stack.api_url}/v1/models", timeout=10).json()["models"]}
    assert models["sentiment_tiny"]["variant_of"] == "sentiment" and models["sentiment_tiny"]["ready"]
    assert models["sentiment_tiny"]["latency_p50_ms"] > 0 and 0 <= models["sentiment_tiny"]["accuracy"] <= 1


def test_long_reviews_are_classified_and_say_they_were_truncated(stack: Stack) -> None:
    """6,000 and 100,000 characters through the deployed facade and a real Triton: 200, the truncation reported,
    the probabilities those of the published model on the declared strategy's tokens; past 1 MiB: 413."""
    assert SENTIMENT.text is not None
    texts = [("The opening drags. " + "word " * 1200)[:6000], ("The opening drags. " + "scene " * 16700)[:100_000]]
    assert [len(t) for t in texts] == [6000, 100_000]
    response = httpx.post(f"{stack.api_url}/v1/sentiment", json={"texts": texts}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    encoder = TextEncoder.from_version_dir(stack.repository / "sentiment" / "1")
    for prediction, encoded in zip(predictions, encoder.encode(texts), strict=True):
        assert prediction["truncated"] is True and prediction["tokens"] == SENTIMENT.text.max_length
        assert prediction["text_tokens"] == encoded.text_tokens > SENTIMENT.text.max_length
        feeds = encoder.pad([encoded.ids])
        expected = softmax(ort_logits(stack.repository, "sentiment", feeds.inputs(SENTIMENT.input_names)))[0]
        got = [prediction["probabilities"][label] for label in SENTIMENT.labels]
        assert got == pytest.approx(expected.tolist(), abs=1e-4)
    too_big = httpx.post(f"{stack.api_url}/v1/sentiment", json={"texts": [texts[1]] * 11}, timeout=60)
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["type"] == "/problems/body-too-large"


def test_the_benchmarks_minimal_proxy_answers_what_the_facade_answers(stack: Stack, tmp_path: Path) -> None:
    """bench/baselines.py's overhead reference forwards token ids to the same Triton: same probabilities."""
    from bench.baselines import proxy_for

    text = "A beautiful, moving film with a career-best performance from the lead."
    facade = httpx.post(f"{stack.api_url}/v1/sentiment", json={"texts": [text]}, timeout=30)
    assert facade.status_code == 200, facade.text
    expected = [facade.json()["predictions"][0]["probabilities"][label] for label in SENTIMENT.labels]
    feeds = TextEncoder.from_version_dir(stack.repository / "sentiment" / "1").batch([text]).inputs()
    body = {"model": "sentiment", "inputs": {k: v.tolist() for k, v in feeds.items()}, "output": SENTIMENT.output.name}
    with proxy_for(stack.triton, tmp_path) as proxy_url:
        response = httpx.post(f"{proxy_url}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    (got,) = response.json()["probabilities"]
    assert got == pytest.approx(expected, abs=1e-6)


def photo(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (320, 240), color)
    for x in range(0, 320, 20):  # some structure, so the CNN sees more than a flat colour
        image.paste((255 - color[0], color[1], 255 - color[2]), (x, 0, x + 10, 240))
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def upload(stack: Stack, data: bytes, extra_fields: dict[str, str] | None = None) -> tuple[dict[str, Any], int]:
    """Ask the facade for an upload form and POST ``data`` with it; returns the grant and S3's status."""
    grant = httpx.post(f"{stack.api_url}/v1/uploads", json={"filename": "me.jpg", "content_type": "image/jpeg"})
    assert grant.status_code == 200, grant.text
    form = grant.json()
    assert form["method"] == "POST" and form["max_bytes"] == IMAGE_MAX_BYTES
    fields = {**form["fields"], **(extra_fields or {})}
    posted = httpx.post(form["upload_url"], data=fields, files={"file": ("me.jpg", data, "image/jpeg")}, timeout=30)
    return form, posted.status_code


def test_upload_then_pose_round_trip_through_presigned_urls(stack: Stack) -> None:
    images = [photo((30, 120, 200)), photo((220, 40, 10))]
    get_urls = []
    for data in images:
        form, status = upload(stack, data)
        assert form["upload_url"] == f"{stack.s3_endpoint}/{stack.upload_bucket}"
        assert status in (200, 201, 204), status
        get_urls.append(form["get_url"])

    response = httpx.post(f"{stack.api_url}/v1/pose", json={"image_urls": get_urls, "top_k": 3}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert POSE.image is not None
    pixels = np.stack([decode_image(data, POSE.image, 10_000_000) for data in images])
    expected = softmax(ort_logits(stack.repository, "pose", {"pixel_values": pixels}))
    for prediction, row in zip(body["predictions"], expected, strict=True):
        got = [prediction["probabilities"][label] for label in POSE.labels]
        assert got == pytest.approx(row.tolist(), abs=1e-4)
        assert [t["label"] for t in prediction["top_k"]] == [POSE.labels[i] for i in np.argsort(-row)[:3]]
    assert body["timings_ms"]["fetch"] > 0


def test_an_upload_over_the_size_limit_is_refused_by_the_s3_server(stack: Stack) -> None:
    if is_moto(stack.s3_endpoint):
        pytest.skip("moto's server ignores presigned POST policies (it stores 500 bytes through a 100-byte policy)")
    form, status = upload(stack, b"\xff\xd8\xff" + bytes(IMAGE_MAX_BYTES))
    assert status == 400, status  # EntityTooLarge
    s3 = make_client(S3Settings(endpoint_url=stack.s3_endpoint))
    assert "Contents" not in s3.list_objects_v2(Bucket=stack.upload_bucket, Prefix=form["key"])
    _, status = upload(stack, photo((1, 2, 3)))
    assert status in (200, 201, 204)  # the same form within the limit is accepted


def pose_status(stack: Stack, url: str) -> httpx.Response:
    return httpx.post(f"{stack.api_url}/v1/pose", json={"image_urls": [url]}, timeout=60)


def test_a_stacked_gzip_bomb_from_an_http_server_is_refused_without_inflating_it(stack: Stack) -> None:
    assert stack.api.pid is not None
    before = memory_kb(stack.api.pid)
    response = pose_status(stack, f"http://{stack.bomb_server.host_port}/bomb.jpg")
    after = memory_kb(stack.api.pid)
    assert response.status_code == 415, response.text
    assert response.json()["type"] == "/problems/encoded-image"
    assert "gzip, gzip" in response.json()["detail"]
    assert stack.bomb_server.requests[-1]["accept-encoding"] == "identity"
    # 3.4 KB on the wire, 2 GiB inflated: the facade's peak resident memory did not move
    assert after["VmHWM"] - before["VmHWM"] < 50_000, (before, after)
    assert httpx.get(f"{stack.api_url}/healthz", timeout=10).status_code == 200
    form, status = upload(stack, photo((90, 90, 90)))
    assert status in (200, 201, 204)
    assert pose_status(stack, form["get_url"]).status_code == 200  # and it still classifies


def test_a_stacked_gzip_bomb_uploaded_to_s3_is_refused_without_inflating_it(stack: Stack) -> None:
    assert stack.api.pid is not None
    s3 = make_client(S3Settings(endpoint_url=stack.s3_endpoint))
    # Through the presigned POST if the server lets the form set Content-Encoding (the policy does not list
    # it: S3 refuses it), else as someone with write access to the bucket would.
    form, status = upload(stack, stack.bomb, {"Content-Encoding": "gzip, gzip"})
    if not is_moto(stack.s3_endpoint):
        assert status == 403, status  # the policy pins Content-Encoding: identity
    stored = s3.head_object(Bucket=stack.upload_bucket, Key=form["key"]) if status in (200, 201, 204) else {}
    if stored.get("ContentEncoding") != "gzip, gzip":
        s3.put_object(
            Bucket=stack.upload_bucket,
            Key=form["key"],
            Body=stack.bomb,
            ContentType="image/jpeg",
            ContentEncoding="gzip, gzip",
        )
    with httpx.stream("GET", form["get_url"], timeout=10) as served:  # headers only: reading would inflate it
        assert served.headers["content-encoding"] == "gzip, gzip"  # S3 sends the object back as stored
    before = memory_kb(stack.api.pid)
    response = pose_status(stack, form["get_url"])
    after = memory_kb(stack.api.pid)
    assert response.status_code == 415, response.text
    assert response.json()["type"] == "/problems/encoded-image"
    assert after["VmHWM"] - before["VmHWM"] < 50_000, (before, after)
    assert httpx.get(f"{stack.api_url}/healthz", timeout=10).status_code == 200


def test_ssrf_against_real_local_services_is_refused(stack: Stack) -> None:
    triton_url = f"http://127.0.0.1:{stack.triton.http_port}/v2/models/pose"
    other_bucket = f"{stack.s3_endpoint}/not-the-upload-bucket/x.jpg"
    for url in (triton_url, other_bucket, "http://169.254.169.254/latest/meta-data/", "https://127.0.0.1/x.jpg"):
        response = httpx.post(f"{stack.api_url}/v1/pose", json={"image_urls": [url]}, timeout=10)
        assert response.status_code == 403, (url, response.text)
        assert response.json()["type"] == "/problems/url-not-allowed"
    missing = f"{stack.s3_endpoint}/{stack.upload_bucket}/uploads/missing.jpg"
    response = httpx.post(f"{stack.api_url}/v1/pose", json={"image_urls": [missing]}, timeout=10)
    assert response.status_code == 502 and response.json()["type"] == "/problems/image-host-error"


def test_stats_count_the_requests_and_batches(stack: Stack) -> None:
    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
            texts = [f"tweet number {i} about a fire" for i in range(12)]
            responses = await asyncio.gather(*(client.post("/v1/disaster", json={"texts": [t]}) for t in texts))
            return [r.status_code for r in responses]

    before = {m["model"]: m for m in httpx.get(f"{stack.api_url}/v1/stats", timeout=10).json()["models"]}
    assert asyncio.run(burst()) == [200] * 12
    after = {m["model"]: m for m in httpx.get(f"{stack.api_url}/v1/stats", timeout=10).json()["models"]}
    disaster = after["disaster"]
    assert disaster["request_success"] - before.get("disaster", {}).get("request_success", 0) == 12
    assert sum(int(size) * n for size, n in disaster["batch_sizes"].items()) == disaster["inference_count"]
    assert disaster["avg_compute_ms"] > 0 and disaster["ready"] is True


def disaster_labels(stack: Stack) -> set[str] | None:
    response = httpx.post(f"{stack.api_url}/v1/disaster", json={"texts": ["fire downtown"]}, timeout=30)
    return set(response.json()["predictions"][0]["probabilities"]) if response.status_code == 200 else None


def publish_labels(stack: Stack, labels: list[str]) -> None:
    """Rewrite disaster/1's preprocessing.json (and its manifest, when the version has one) in S3."""
    version_dir = stack.repository / "disaster" / "1"
    doc = json.loads((version_dir / PREPROCESSING_FILE).read_text())
    doc["labels"] = labels
    (version_dir / PREPROCESSING_FILE).write_text(json.dumps(doc, indent=2))
    changed = [PREPROCESSING_FILE]
    if (version_dir / MANIFEST_FILE).exists():
        write_manifest(version_dir)
        changed.append(MANIFEST_FILE)  # last, as export publish does
    s3 = make_client(S3Settings(endpoint_url=stack.s3_endpoint))
    for name in changed:
        s3.put_object(Bucket=stack.models_bucket, Key=f"repo/disaster/1/{name}", Body=(version_dir / name).read_bytes())


def wait_for_labels(stack: Stack, labels: set[str], within_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        if disaster_labels(stack) == labels:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"the facade still serves {disaster_labels(stack)} after {within_s} s")


def test_artifacts_republished_into_a_version_in_s3_are_served_after_the_refresh(stack: Stack) -> None:
    assert disaster_labels(stack) == set(DISASTER.labels)
    try:
        publish_labels(stack, ["calm", "emergency"])
        # model_refresh_s is 1 s here: the new labels within a few refreshes, not never
        wait_for_labels(stack, {"calm", "emergency"}, within_s=10)
    finally:
        publish_labels(stack, list(DISASTER.labels))
    wait_for_labels(stack, set(DISASTER.labels), within_s=10)


def triton_stats(stack: Stack, model: str) -> dict[str, Any]:
    document = httpx.get(f"{stack.triton.url}/v2/models/{model}/stats", timeout=10).json()
    stats: dict[str, Any] = document["model_stats"][0]
    return stats


def load_disaster(stack: Stack, config: dict[str, Any]) -> None:
    """Reload the disaster model with ``config`` instead of its config.pbtxt; wait until it is ready."""
    body = {"parameters": {"config": json.dumps(config)}}
    loaded = httpx.post(f"{stack.triton.url}/v2/repository/models/disaster/load", json=body, timeout=120)
    assert loaded.status_code == 200, loaded.text
    deadline = time.monotonic() + 60
    while httpx.get(f"{stack.triton.url}/v2/models/disaster/versions/1/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "disaster did not become ready"
        time.sleep(0.2)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_sheds_a_full_queue_with_503_and_drops_what_the_facade_gave_up_on(stack: Stack, protocol: str) -> None:
    original = httpx.get(f"{stack.triton.url}/v2/models/disaster/config", timeout=10).json()
    config = json.loads(json.dumps(original))
    # One request may wait; it waits for a batch up to 6 s, longer than the facade's 5 s deadline. The per-request
    # timeout only ever lowers a non-zero default (Triton 2.51, PolicyQueue::Enqueue): the default is 60 s.
    config["dynamic_batching"]["max_queue_delay_microseconds"] = 6_000_000
    config["dynamic_batching"]["default_queue_policy"] = {
        "timeout_action": "REJECT",
        "default_timeout_microseconds": 60_000_000,
        "allow_timeout_override": True,
        "max_queue_size": 1,
    }
    load_disaster(stack, config)
    try:
        executed = triton_stats(stack, "disaster")["execution_count"]

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=facade_url(stack, protocol), timeout=30) as client:
                first = asyncio.create_task(client.post("/v1/disaster", json={"texts": ["first"]}))
                await asyncio.sleep(0.5)  # it is in Triton's queue now
                others = [client.post("/v1/disaster", json={"texts": [f"more {i}"]}) for i in range(3)]
                return list(await asyncio.gather(first, *others))

        start = time.monotonic()
        first, *others = asyncio.run(burst())
        for response in others:  # the queue holds one request: the others are shed at once
            assert response.status_code == 503, response.text
            assert response.json()["type"] == "/problems/backend-overloaded"
            assert "Exceeds maximum queue size" in response.json()["detail"]
            assert response.headers["retry-after"] == "1"
        # the first waited for the facade's 5 s deadline: Triton rejects it then (503), or the facade gave up (504)
        assert first.status_code in (503, 504), first.text
        # ... and Triton never ran it: not when the facade gave up, not at the 6 s queue delay either
        time.sleep(max(0.0, 7.0 - (time.monotonic() - start)))
        stats = triton_stats(stack, "disaster")
        assert stats["execution_count"] == executed
        assert stats["inference_stats"]["fail"]["count"] >= 1
    finally:
        # back to the committed config (a load without one keeps the override: config.pbtxt did not change)
        load_disaster(stack, original)
    deadline = time.monotonic() + 30
    while disaster_labels(stack) is None:
        last = httpx.post(f"{stack.api_url}/v1/disaster", json={"texts": ["fire"]}, timeout=30)
        assert time.monotonic() < deadline, f"disaster is not served again: {last.text}"
        time.sleep(0.5)


def test_triton_stopped_gives_503_then_the_facade_recovers_without_restart(stack: Stack) -> None:
    payload = {"texts": ["still there?"]}
    assert httpx.post(f"{stack.api_url}/v1/disaster", json=payload, timeout=30).status_code == 200
    ports = (stack.triton.http_port, stack.triton.grpc_port, stack.triton.metrics_port)
    stack.triton.stop()
    down = httpx.post(f"{stack.api_url}/v1/disaster", json=payload, timeout=30)
    assert down.status_code == 503, down.text
    assert down.headers["content-type"].startswith("application/problem+json")
    assert down.json()["type"] in {"/problems/backend-unavailable", "/problems/model-not-ready"}
    assert httpx.get(f"{stack.api_url}/readyz", timeout=10).status_code == 503
    assert httpx.get(f"{stack.api_url}/healthz", timeout=10).status_code == 200

    stack.triton = start_triton(stack.repository, *ports)
    deadline = time.monotonic() + 30
    status = 0
    while time.monotonic() < deadline:
        status = httpx.post(f"{stack.api_url}/v1/disaster", json=payload, timeout=30).status_code
        if status == 200:
            break
        time.sleep(0.5)
    assert status == 200
    assert httpx.get(f"{stack.api_url}/readyz", timeout=10).status_code == 200
