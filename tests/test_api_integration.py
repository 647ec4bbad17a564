"""The facade as deployed (uvicorn, settings from MTC_API_* variables) against a real Triton and a real
local S3 server, with the tiny random-weight models published by the real export path.

Covers: correct probabilities end to end (compared with ONNX Runtime on the same model), the presigned
upload -> GET URL -> /v1/pose round trip, per-model statistics, SSRF refusals against real local
services, and Triton stopped mid-test -> 503, then recovery without restarting the facade.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
from serving.processes import ManagedProcess, python_module
from serving.triton import PROJECT_ROOT, TritonServer, free_port
from taskspec import MODEL_FILE, POSE, PREPROCESSING_FILE, SENTIMENT, TOKENIZER_FILE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK_MODELS = ["sentiment", "disaster", "pose"]


@dataclass
class Stack:
    repository: Path
    triton: TritonServer
    api_url: str
    s3_endpoint: str
    upload_bucket: str


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

    triton = start_triton(repository, free_port(), free_port(), free_port())
    api_port = free_port()
    s3_hostport = s3_endpoint.removeprefix("http://")
    env = {
        "MTC_API_TRITON_URL": f"127.0.0.1:{triton.http_port}",
        "MTC_API_MODEL_REPOSITORY": f"s3://{models_bucket}/repo",
        "MTC_API_S3_ENDPOINT_URL": s3_endpoint,
        "MTC_API_UPLOAD_BUCKET": upload_bucket,
        "MTC_API_ALLOWED_HTTP_HOSTS": json.dumps([s3_hostport]),
        "MTC_API_MODEL_REFRESH_S": "1",
        "MTC_API_TRITON_TIMEOUT_S": "5",
    }
    api = ManagedProcess(
        name="facade",
        command=python_module("uvicorn", "frontend_api.app:app", "--host", "127.0.0.1", "--port", str(api_port)),
        ready_url=f"http://127.0.0.1:{api_port}/healthz",
        log_file=root / "api.log",
        env=env,
        cwd=PROJECT_ROOT,
    )
    try:
        with api:
            yield Stack(repository, triton, f"http://127.0.0.1:{api_port}", s3_endpoint, upload_bucket)
    finally:
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


def test_text_probabilities_match_onnx_runtime_on_the_same_model(stack: Stack) -> None:
    texts = ["A beautiful, moving film.", "Two hours of my life I will never get back. " * 8, "ok"]
    response = httpx.post(f"{stack.api_url}/v1/sentiment", json={"texts": texts}, timeout=30)
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


def test_the_benchmarks_minimal_proxy_answers_what_the_facade_answers(stack: Stack, tmp_path: Path) -> None:
    """bench/facade.py's overhead reference forwards token ids to the same Triton: same probabilities."""
    from bench.facade import proxy_for

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


def test_upload_then_pose_round_trip_through_presigned_urls(stack: Stack) -> None:
    images = [photo((30, 120, 200)), photo((220, 40, 10))]
    get_urls = []
    for data in images:
        grant = httpx.post(f"{stack.api_url}/v1/uploads", json={"filename": "me.jpg", "content_type": "image/jpeg"})
        assert grant.status_code == 200, grant.text
        upload = grant.json()
        assert upload["upload_url"].startswith(f"{stack.s3_endpoint}/{stack.upload_bucket}/uploads/")
        put = httpx.request(upload["method"], upload["upload_url"], content=data, headers=upload["headers"], timeout=10)
        assert put.status_code == 200, put.text
        get_urls.append(upload["get_url"])

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
