"""What an operator watches: drift and quality signals on /metrics (per task and model version)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from frontend_api.app import create_app
from frontend_api.settings import ApiSettings
from tests.fakes.frontend_api import FakeTriton, ImageHostTransport, make_artifact_repository


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact_repository(tmp_path_factory.mktemp("artifacts"))


def settings(repo: Path, **overrides: Any) -> ApiSettings:
    return ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(repo),
        s3_endpoint_url=None,
        allowed_image_hosts=["images.example.com"],
        **overrides,
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics document: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def test_text_predictions_record_confidence_labels_and_token_counts_per_model_version(repo: Path) -> None:
    fake = FakeTriton(versions={"sentiment": ["1"], "disaster": ["1"], "pose": ["1"]})
    long_text = " ".join(["word"] * 40)  # 40 tokens + [CLS] + [SEP]
    with TestClient(create_app(settings(repo), fake)) as client:
        body = client.post("/v1/sentiment", json={"texts": ["fine", long_text]}).json()
        found = samples(client.get("/metrics").text)
    labels = [p["label"] for p in body["predictions"]]
    top = sorted(max(p["probabilities"].values()) for p in body["predictions"])
    series = {"task": "sentiment", "model_version": "1"}
    # the label counter matches what the caller was told
    for label in set(labels):
        assert value(found, "mtc_api_predictions_total", label=label, **series) == labels.count(label)
    # one confidence per text, in the buckets its probability falls in
    assert value(found, "mtc_api_top_probability_count", **series) == 2
    assert value(found, "mtc_api_top_probability_sum", **series) == pytest.approx(sum(top), rel=1e-6)
    assert value(found, "mtc_api_top_probability_bucket", le="0.5", **series) == 0  # a top class is never below 1/2
    # token lengths: "fine" is 3 tokens, the long text 42
    assert value(found, "mtc_api_input_tokens_bucket", le="8.0", **series) == 1
    assert value(found, "mtc_api_input_tokens_bucket", le="32.0", **series) == 1
    assert value(found, "mtc_api_input_tokens_bucket", le="64.0", **series) == 2
    assert value(found, "mtc_api_input_tokens_sum", **series) == 45
    # a task nobody called has no series yet
    assert value(found, "mtc_api_top_probability_count", task="disaster", model_version="1") is None


def test_a_new_model_version_gets_series_of_its_own(tmp_path: Path) -> None:
    repo = make_artifact_repository(tmp_path, tasks=["disaster"], version="1")
    make_artifact_repository(tmp_path, tasks=["disaster"], version="2")
    fake = FakeTriton(versions={"disaster": ["1"]})
    with TestClient(create_app(settings(repo, tasks=["disaster"], model_refresh_s=0), fake)) as client:
        client.post("/v1/disaster", json={"texts": ["fire downtown"]})
        fake.versions["disaster"] = ["1", "2"]  # Triton loaded version 2
        client.post("/v1/disaster", json={"texts": ["fire downtown", "calm day"]})
        found = samples(client.get("/metrics").text)
    assert value(found, "mtc_api_top_probability_count", task="disaster", model_version="1") == 1
    assert value(found, "mtc_api_top_probability_count", task="disaster", model_version="2") == 2


def jpeg(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_image_predictions_record_image_bytes_and_pixels(repo: Path) -> None:
    small, large = jpeg((64, 48), (10, 10, 10)), jpeg((640, 480), (250, 250, 250))
    images = {"/small.jpg": small, "/large.jpg": large}

    def host(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=images[request.url.path], headers={"Content-Type": "image/jpeg"})

    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    app = create_app(settings(repo), FakeTriton(), image_transport=ImageHostTransport(host), resolver=resolve)
    urls = [f"https://images.example.com{path}" for path in images]
    with TestClient(app) as client:
        body = client.post("/v1/pose", json={"image_urls": urls}).json()
        found = samples(client.get("/metrics").text)
    series = {"task": "pose", "model_version": "1"}
    assert value(found, "mtc_api_image_size_bytes_count", **series) == 2
    assert value(found, "mtc_api_image_size_bytes_sum", **series) == len(small) + len(large)
    assert value(found, "mtc_api_image_pixels_sum", **series) == 64 * 48 + 640 * 480
    assert value(found, "mtc_api_image_pixels_bucket", le=str(float(128**2)), **series) == 1
    labels = [p["label"] for p in body["predictions"]]
    assert len(set(labels)) == 2  # the fake answers dark and bright images with different labels
    for label in labels:
        assert value(found, "mtc_api_predictions_total", label=label, **series) == 1
    assert value(found, "mtc_api_top_probability_count", **series) == 2
