"""Facade endpoints besides classification: uploads, models, stats, probes, metrics, auth, OpenAPI."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient

import taskspec
from frontend_api.app import create_app
from frontend_api.errors import ERROR_KINDS
from frontend_api.schemas import MAX_TEXT_CHARS
from frontend_api.settings import ApiSettings
from preprocess.image import IMAGE_FORMATS, IMAGE_MEDIA_TYPES
from taskspec import DISASTER, POSE, SENTIMENT, TASKS
from tests.fakes.frontend_api import FakeTriton, make_artifact_repository

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact_repository(tmp_path_factory.mktemp("artifacts"))


def build(repo: Path, fake: FakeTriton | None = None, **overrides: Any) -> tuple[TestClient, FakeTriton]:
    fake = fake or FakeTriton()
    settings = ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(repo),
        s3_endpoint_url="http://127.0.0.1:9000",
        upload_bucket="mtc-uploads",
        **overrides,
    )
    return TestClient(create_app(settings, fake), raise_server_exceptions=False), fake


def test_uploads_return_a_size_limited_short_lived_presigned_post_and_the_matching_get_url(repo: Path) -> None:
    client, _ = build(repo, upload_expires_s=120, image_max_bytes=2_000_000)
    with client:
        before = datetime.now(UTC)
        response = client.post("/v1/uploads", json={"filename": "../../etc/photo.png", "content_type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"upload_url", "method", "fields", "get_url", "key", "expires_in", "max_bytes"}
    assert body["method"] == "POST" and body["expires_in"] == 120 and body["max_bytes"] == 2_000_000
    # path-style on the configured endpoint; random key (the filename is not used in it)
    assert body["upload_url"] == "http://127.0.0.1:9000/mtc-uploads"
    assert body["key"].startswith("uploads/") and body["key"].endswith(".png") and "etc" not in body["key"]
    fields = body["fields"]
    assert fields["key"] == body["key"] and fields["Content-Type"] == "image/png"
    assert fields["Content-Encoding"] == "identity"
    assert fields["x-amz-signature"] and fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    # the signed policy: exactly this key and content type, 1 byte to max_bytes, expiring with the URLs
    policy = json.loads(base64.b64decode(fields["policy"]))
    conditions = policy["conditions"]
    assert ["content-length-range", 1, 2_000_000] in conditions
    assert {"Content-Type": "image/png"} in conditions
    assert {"Content-Encoding": "identity"} in conditions  # no gzip-encoded object through this form
    assert {"key": body["key"]} in conditions and {"bucket": "mtc-uploads"} in conditions
    expires = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert timedelta(seconds=100) < expires - before <= timedelta(seconds=121)
    get = urlparse(body["get_url"])
    assert get.netloc == "127.0.0.1:9000" and get.path == f"/mtc-uploads/{body['key']}"
    assert parse_qs(get.query)["X-Amz-Expires"] == ["120"] and parse_qs(get.query)["X-Amz-Signature"]
    with client:
        other = client.post("/v1/uploads", json={"content_type": "image/png"}).json()
    assert other["key"] != body["key"]


def test_uploads_refuse_non_image_content_types(repo: Path) -> None:
    client, _ = build(repo)
    with client:
        response = client.post("/v1/uploads", json={"content_type": "text/html"})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM)


def test_models_lists_every_task_with_version_labels_limits_and_ready_state(tmp_path: Path) -> None:
    repo = make_artifact_repository(tmp_path, version="1")
    make_artifact_repository(tmp_path, tasks=["sentiment"], version="2")
    fake = FakeTriton(versions={"sentiment": ["1", "2"], "disaster": ["1", "3"], "pose": ["4"]})
    fake.not_ready.add("pose")
    client, _ = build(repo, fake)
    with client:
        body = client.get("/v1/models").json()
    models = {m["task"]: m for m in body["models"]}
    # disaster/3 is served by Triton, but its artifacts are not published: requests would fail, so not ready
    assert models["disaster"]["ready"] is False and models["disaster"]["version"] is None
    assert list(models) == list(TASKS)
    assert models["sentiment"] | {"labels": None} == {
        "task": "sentiment",
        "title": TASKS["sentiment"].title,
        "modality": "text",
        "model": "sentiment",
        "version": "2",
        "labels": None,
        "ready": True,
        "max_items": SENTIMENT.batching.max_batch_size,
        "max_text_chars": MAX_TEXT_CHARS,
        "max_tokens": SENTIMENT.text.max_length if SENTIMENT.text else None,
        "truncation": SENTIMENT.text.truncation if SENTIMENT.text else None,
        "examples": list(SENTIMENT.examples),
        "validation_label_mix": None,  # no metrics.json published with this version
        "validation_confidence": None,
        "variant_of": None,
        "variant": "default",
        "accuracy": None,  # nor accuracy and latency figures
        "accuracy_int8": None,
        "latency_p50_ms": None,
        "latency_p50_ms_int8": None,
    }
    assert models["sentiment"]["labels"] == ["negative", "positive"]
    assert models["pose"]["ready"] is False and models["pose"]["version"] is None
    assert models["pose"]["modality"] == "image" and models["pose"]["labels"] == list(POSE.labels)
    assert models["pose"]["max_items"] == POSE.batching.max_batch_size and models["pose"]["max_tokens"] is None


def test_models_give_the_served_versions_validation_label_mix_from_its_model_card(tmp_path: Path) -> None:
    repo = make_artifact_repository(tmp_path, tasks=["sentiment", "disaster"], version="1")
    # rows: true label, columns: predicted label (export.metrics); 343 of 600 predicted negative
    card = {"test": {"n": 600, "confusion_matrix": [[270, 30], [73, 227]]}}
    (repo / "sentiment" / "1" / taskspec.METRICS_FILE).write_text(json.dumps(card))
    (repo / "disaster" / "1" / taskspec.METRICS_FILE).write_text('{"test": {"confusion_matrix": [[1, -2], [3]]}}')
    client, _ = build(repo, FakeTriton(versions={"sentiment": ["1"], "disaster": ["1"]}))
    with client:
        models = {m["task"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["sentiment"]["validation_label_mix"] == {"negative": 0.5717, "positive": 0.4283}
    # a malformed card gives no reference and never stops serving
    assert models["disaster"]["ready"] is True and models["disaster"]["validation_label_mix"] is None


def test_models_give_the_served_versions_held_out_confidence_in_the_facades_histogram_buckets(tmp_path: Path) -> None:
    repo = make_artifact_repository(tmp_path, tasks=["sentiment", "disaster", "pose"], version="1")
    shares = [0.0, 0.0, 0.0, 0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.2, 0.3]
    card = {"validation_confidence": {"n": 600, "le": list(taskspec.TOP_PROBABILITY_BUCKETS), "shares": shares}}
    (repo / "sentiment" / "1" / taskspec.METRICS_FILE).write_text(json.dumps(card))
    other_buckets = {"validation_confidence": {"le": [0.5, 1.0], "shares": [0.2, 0.8]}}
    (repo / "disaster" / "1" / taskspec.METRICS_FILE).write_text(json.dumps(other_buckets))
    # a card published before the exporter recorded confidence figures: its label mix only
    identity = [[int(i == j) for j in range(POSE.num_labels)] for i in range(POSE.num_labels)]
    (repo / "pose" / "1" / taskspec.METRICS_FILE).write_text(json.dumps({"test": {"confusion_matrix": identity}}))
    versions = {"sentiment": ["1"], "disaster": ["1"], "pose": ["1"]}
    client, _ = build(repo, FakeTriton(versions=versions))
    with client:
        models = {m["task"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["sentiment"]["validation_confidence"] == [
        {"le": le, "share": share} for le, share in zip(taskspec.TOP_PROBABILITY_BUCKETS, shares, strict=True)
    ]
    # buckets the facade's histogram does not have compare with nothing: no reference
    assert models["disaster"]["ready"] is True and models["disaster"]["validation_confidence"] is None
    assert models["pose"]["ready"] is True and models["pose"]["validation_confidence"] is None
    assert models["pose"]["validation_label_mix"] == dict.fromkeys(POSE.labels, round(1 / POSE.num_labels, 4))


def test_models_still_answers_when_triton_is_down(repo: Path) -> None:
    client, fake = build(repo)
    fake.down = True
    with client:
        response = client.get("/v1/models")
    assert response.status_code == 200
    assert all(not m["ready"] for m in response.json()["models"])


def test_readyz_requires_triton_and_every_model(repo: Path) -> None:
    client, fake = build(repo, readyz_cache_s=0)
    with client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        fake.not_ready.add("disaster")
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["type"] == "/problems/model-not-ready"
        assert "disaster" in not_ready.json()["detail"]
        fake.down = True
        assert "Triton is not ready" in client.get("/readyz").json()["detail"]
        assert client.get("/healthz").json() == {"status": "ok"}  # alive regardless


def test_stats_report_batches_per_model(repo: Path) -> None:
    client, fake = build(repo)
    with client:
        client.post("/v1/disaster", json={"texts": ["a", "b", "c"]})
        client.post("/v1/disaster", json={"texts": ["d"]})
        body = client.get("/v1/stats").json()
        fake.down = True
        down = client.get("/v1/stats")
    disaster = next(m for m in body["models"] if m["task"] == "disaster")
    assert disaster["request_success"] == 2
    assert disaster["inference_count"] == 4
    assert disaster["execution_count"] == 2
    assert disaster["batch_sizes"] == {"1": 1, "3": 1}
    assert disaster["ready"] is True and disaster["avg_compute_ms"] == 1.0
    assert down.status_code == 503 and down.json()["type"] == "/problems/backend-unavailable"


def test_api_keys_protect_everything_but_the_probes_and_docs(repo: Path) -> None:
    client, _ = build(repo, api_keys=["s3cret-s3cret-s3cret", "other-key-of-16-chars"])
    with client:
        for method, path, payload in (
            ("GET", "/v1/models", None),
            ("POST", "/v1/sentiment", {"texts": ["x"]}),
            ("GET", "/metrics", None),
        ):
            refused = client.request(method, path, json=payload)
            assert refused.status_code == 401, path
            assert refused.json()["type"] == "/problems/unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
            wrong = client.request(method, path, json=payload, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            allowed = client.request(
                method, path, json=payload, headers={"Authorization": "Bearer other-key-of-16-chars"}
            )
            assert allowed.status_code == 200, path
        for open_path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            assert client.get(open_path).status_code == 200, open_path
        schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/sentiment"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_without_api_keys_openapi_declares_no_authentication(repo: Path) -> None:
    client, _ = build(repo)
    with client:
        schema = client.get("/openapi.json").json()
        assert client.post("/v1/sentiment", json={"texts": ["x"]}).status_code == 200
    assert "securitySchemes" not in schema.get("components", {})
    assert all("security" not in op for path in schema["paths"].values() for op in path.values())


def test_metrics_count_requests_stages_and_errors(repo: Path) -> None:
    client, fake = build(repo)
    with client:
        client.post("/v1/sentiment", json={"texts": ["x", "y"]})
        client.post("/v1/sentiment", json={"texts": []})
        fake.down = True
        client.post("/v1/sentiment", json={"texts": ["x"]})
        text = client.get("/metrics").text
    assert 'mtc_api_requests_total{endpoint="/v1/sentiment",method="POST",status="200"} 1.0' in text
    assert 'mtc_api_requests_total{endpoint="/v1/sentiment",method="POST",status="422"} 1.0' in text
    assert 'mtc_api_errors_total{kind="backend-unavailable",status="503"} 1.0' in text
    assert 'mtc_api_errors_total{kind="invalid-request",status="422"} 1.0' in text
    assert 'mtc_api_stage_duration_seconds_count{stage="tokenize",task="sentiment"} 1.0' in text
    assert 'mtc_api_stage_duration_seconds_count{stage="inference",task="sentiment"} 1.0' in text
    assert 'mtc_api_items_total{task="sentiment"} 2.0' in text
    assert 'mtc_api_request_duration_seconds_bucket{endpoint="/v1/sentiment"' in text


def test_unknown_routes_and_methods_are_problems(repo: Path) -> None:
    client, _ = build(repo)
    with client:
        missing = client.get("/v1/nothing")
        wrong_method = client.get("/v1/sentiment")
    assert missing.status_code == 404 and missing.json()["type"] == "/problems/not-found"
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "/problems/method-not-allowed"


def test_openapi_declares_every_error_as_problem_json_with_examples(repo: Path) -> None:
    client, _ = build(repo)
    with client:
        schema = client.get("/openapi.json").json()
    pose = schema["paths"]["/v1/pose"]["post"]
    assert {"400", "401", "403", "413", "422", "429", "502", "503", "504"} <= set(pose["responses"])
    for path in schema["paths"].values():
        for operation in path.values():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == [PROBLEM], (status, operation["operationId"])
    assert "/problems/bad-image" in pose["responses"]["400"]["description"]
    assert schema["components"]["schemas"]["SentimentRequest"]["examples"]
    sentiment_example = schema["paths"]["/v1/sentiment"]["post"]["requestBody"]["content"]["application/json"]
    assert sentiment_example["example"]["texts"] == list(TASKS["sentiment"].examples)
    assert len({kind.type_uri() for kind in ERROR_KINDS}) == len(ERROR_KINDS)  # one stable type per kind


def test_the_facade_never_imports_torch_or_transformers() -> None:
    # The serving image installs the `api` extra only; torch would add gigabytes and minutes of start-up.
    import subprocess
    import sys

    code = "import sys, frontend_api.app; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_uploads_without_s3_credentials_are_503_storage_unavailable(
    repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import boto3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # a session of its own: boto3's default one may hold credentials resolved by an earlier test
    s3 = boto3.session.Session().client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1")
    settings = ApiSettings(_env_file=None, model_repository=str(repo), s3_endpoint_url="http://127.0.0.1:9000")  # type: ignore[call-arg]
    with TestClient(create_app(settings, FakeTriton(), s3_client=s3), raise_server_exceptions=False) as client:
        response = client.post("/v1/uploads", json={"content_type": "image/jpeg"})
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "/problems/storage-unavailable"


def test_request_limits_come_from_each_tasks_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two tasks whose specs batch fewer items than the built-ins: each route takes its own task's limits.
    short = replace(DISASTER, name="short_tweets", batching=replace(DISASTER.batching, max_batch_size=4))
    few = replace(POSE, name="few_photos", labels=POSE.labels[:5], batching=replace(POSE.batching, max_batch_size=2))
    few = replace(few, output=replace(few.output, dims=(few.num_labels,)))
    for spec in (short, few):
        monkeypatch.setitem(taskspec.TASKS, spec.name, spec)
    tasks = ["disaster", short.name, few.name]
    repo = make_artifact_repository(tmp_path, tasks=tasks)
    client, _ = build(repo, FakeTriton(versions={name: ["1"] for name in tasks}), tasks=tasks)
    with client:
        schema = client.get("/openapi.json").json()
        models = {m["task"]: m for m in client.get("/v1/models").json()["models"]}
        four, five = ["a", "b", "c", "d"], ["a", "b", "c", "d", "e"]
        assert client.post(f"/v1/{short.name}", json={"texts": four}).status_code == 200
        refused = client.post(f"/v1/{short.name}", json={"texts": five})
        assert client.post("/v1/disaster", json={"texts": five}).status_code == 200
        too_high = client.post(f"/v1/{few.name}", json={"image_urls": ["https://x.example/a.jpg"], "top_k": 6})
    assert refused.status_code == 422 and refused.json()["errors"][0]["loc"] == ["body", "texts"]
    assert too_high.status_code == 422 and too_high.json()["errors"][0]["loc"] == ["body", "top_k"]

    def body_schema(task: str) -> dict[str, Any]:
        ref = schema["paths"][f"/v1/{task}"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        found: dict[str, Any] = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
        return found

    assert body_schema("disaster")["properties"]["texts"]["maxItems"] == DISASTER.batching.max_batch_size
    assert body_schema(short.name)["properties"]["texts"]["maxItems"] == 4
    assert body_schema(few.name)["properties"]["image_urls"]["maxItems"] == 2
    assert body_schema(few.name)["properties"]["top_k"]["maximum"] == 5
    assert (models[short.name]["max_items"], models[few.name]["max_items"]) == (4, 2)
    assert models["disaster"]["max_items"] == DISASTER.batching.max_batch_size


def test_uploads_take_exactly_the_image_formats_the_decoder_declares(repo: Path) -> None:
    client, _ = build(repo)
    with client:
        schema = client.get("/openapi.json").json()
        keys = {
            fmt.media_type: client.post("/v1/uploads", json={"content_type": fmt.media_type}) for fmt in IMAGE_FORMATS
        }
    content_type = schema["components"]["schemas"]["UploadRequest"]["properties"]["content_type"]
    assert content_type["enum"] == list(IMAGE_MEDIA_TYPES) == [fmt.media_type for fmt in IMAGE_FORMATS]
    for fmt in IMAGE_FORMATS:
        response = keys[fmt.media_type]
        assert response.status_code == 200, response.text
        assert response.json()["key"].endswith(f".{fmt.extension}")
        assert response.json()["fields"]["Content-Type"] == fmt.media_type
