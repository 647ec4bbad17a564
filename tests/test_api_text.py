"""Facade text endpoints against a fake Triton: validation, tokenization buckets, label mapping, errors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from frontend_api.app import create_app
from frontend_api.artifacts import TextArtifacts, parse_artifacts
from frontend_api.errors import InferenceFailed
from frontend_api.schemas import MAX_TEXT_CHARS
from frontend_api.settings import ApiSettings
from preprocess.probabilities import softmax
from taskspec import DISASTER, PREPROCESSING_FILE, SENTIMENT
from tests.fakes.frontend_api import FakeTriton, make_artifact_repository, minilm_tokenizer_file

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact_repository(tmp_path_factory.mktemp("artifacts"))


def make_client(repo: Path, fake: FakeTriton | None = None, **overrides: Any) -> tuple[TestClient, FakeTriton]:
    fake = fake or FakeTriton()
    settings = ApiSettings(model_repository=str(repo), _env_file=None, **overrides)
    return TestClient(create_app(settings, fake), raise_server_exceptions=False), fake


@pytest.fixture
def client(repo: Path):
    client, fake = make_client(repo)
    with client:
        yield client, fake


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == f"/problems/{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


# --- pure functions ---------------------------------------------------------------------------


def test_softmax_is_stable_and_sums_to_one() -> None:
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0], [-5.0, 5.0]], np.float32))
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 0] == pytest.approx(1.0)
    assert probs[1].tolist() == pytest.approx([0.5, 0.5])
    assert probs[2, 1] == pytest.approx(1 / (1 + np.exp(-10)))


def test_encode_pads_each_text_to_its_bucket_and_truncates_at_the_maximum() -> None:
    spec_text = DISASTER.text
    assert spec_text is not None
    artifacts = parse_artifacts(
        DISASTER,
        "1",
        json.dumps(DISASTER.preprocessing_document()).encode(),
        minilm_tokenizer_file().read_bytes(),
    )
    assert isinstance(artifacts, TextArtifacts)
    texts = ["fire", "word " * 20, "short one", "word " * 500]
    groups = artifacts.encoder.groups(texts)
    by_length = {g.length: g for g in groups}
    assert sorted(by_length) == [16, 32, 64]  # buckets (16, 32, 64): 3, 22, 4 and 64 (truncated) tokens
    assert by_length[16].indices == (0, 2)
    assert by_length[32].indices == (1,)
    assert by_length[64].indices == (3,)
    # [CLS] fire [SEP]: three real tokens, then padding with the tokenizer's [PAD] id (0 in BERT's vocabulary)
    first = by_length[16]
    assert first.attention_mask[0].tolist() == [1, 1, 1] + [0] * 13
    assert first.input_ids[0, 0] == 101 and first.input_ids[0, 2] == 102 and first.input_ids[0, 3] == 0
    # The truncated text keeps its closing [SEP] and fills its bucket.
    assert by_length[64].attention_mask.sum() == 64
    assert by_length[64].input_ids[0, -1] == 102
    assert all(g.input_ids.dtype == np.int64 for g in groups)


def test_max_length_padding_uses_one_shape() -> None:
    artifacts = parse_artifacts(
        DISASTER, "1", json.dumps(DISASTER.preprocessing_document()).encode(), minilm_tokenizer_file().read_bytes()
    )
    assert isinstance(artifacts, TextArtifacts)
    groups = artifacts.encoder.groups(["a", "b c d"], "max_length")
    assert [(g.indices, g.length) for g in groups] == [((0, 1), 64)]


# --- endpoints --------------------------------------------------------------------------------


def test_sentiment_maps_logits_to_labels_with_probabilities_and_timings(repo: Path) -> None:
    def logits(model: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        # row 0 -> negative, row 1 -> positive (by number of real tokens)
        tokens = inputs["attention_mask"].sum(axis=1)
        return np.stack([np.where(tokens < 6, 2.0, -1.0), np.where(tokens < 6, 0.0, 3.0)], axis=1)

    client, _ = make_client(repo, FakeTriton(logits=logits))
    with client:
        response = client.post(
            "/v1/sentiment", json={"texts": ["bad", "a truly wonderful and moving film"], "user_id": "ada@example.com"}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "sentiment"
    assert body["model"] == {"name": "sentiment", "version": "1"}
    first, second = body["predictions"]
    assert (first["text_index"], first["label"]) == (0, "negative")
    assert (second["text_index"], second["label"]) == (1, "positive")
    assert first["probabilities"]["negative"] == pytest.approx(1 / (1 + np.exp(-2.0)))
    for prediction in body["predictions"]:
        assert set(prediction["probabilities"]) == {"negative", "positive"}
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
    timings = body["timings_ms"]
    assert set(timings) == {"tokenize", "inference", "total"}
    assert timings["total"] >= timings["inference"] >= 0
    assert float(response.headers["x-total-time-ms"]) == timings["total"]
    assert float(response.headers["x-tokenize-time-ms"]) == timings["tokenize"]
    assert float(response.headers["x-inference-time-ms"]) == timings["inference"]
    assert response.headers["x-model-version"] == "1"


def test_a_request_is_split_by_bucket_and_answers_in_order(repo: Path) -> None:
    client, fake = make_client(repo)
    texts = ["long " * 100, "short", "medium " * 40, "tiny"]
    with client:
        body = client.post("/v1/sentiment", json={"texts": texts}).json()
    # one Triton request per bucket (32, 64, 128), each with its rows only
    shapes = sorted(call.shapes["input_ids"] for call in fake.calls)
    assert shapes == [(1, 64), (1, 128), (2, 32)]
    assert [p["text_index"] for p in body["predictions"]] == [0, 1, 2, 3]
    # the fake's logits grow with the number of real tokens: the longest text is the most positive
    positive = [p["probabilities"]["positive"] for p in body["predictions"]]
    assert positive[0] > positive[2] > positive[1]


def test_fixed_padding_setting_sends_one_max_length_request(repo: Path) -> None:
    client, fake = make_client(repo, text_padding="max_length")
    with client:
        assert client.post("/v1/disaster", json={"texts": ["fire", "word " * 30]}).status_code == 200
    assert [c.shapes["input_ids"] for c in fake.calls] == [(2, 64)]


def test_labels_come_from_the_served_versions_preprocessing_file(tmp_path: Path) -> None:
    repo = make_artifact_repository(tmp_path, tasks=["disaster"], version="3")
    doc = json.loads((repo / "disaster" / "3" / PREPROCESSING_FILE).read_text())
    doc["labels"] = ["calm", "emergency"]
    (repo / "disaster" / "3" / PREPROCESSING_FILE).write_text(json.dumps(doc))
    fake = FakeTriton(versions={"disaster": ["2", "3"]})
    client, _ = make_client(repo, fake, tasks=["disaster"])
    with client:
        response = client.post("/v1/disaster", json={"texts": ["fire"]})
    assert response.status_code == 200, response.text
    assert set(response.json()["predictions"][0]["probabilities"]) == {"calm", "emergency"}
    assert response.json()["model"]["version"] == "3"
    assert fake.calls[0].version == "3"  # the tokenizer's version is the one asked for


def test_a_new_version_is_picked_up_with_its_own_artifacts(tmp_path: Path) -> None:
    repo = make_artifact_repository(tmp_path, tasks=["sentiment"], version="1")
    fake = FakeTriton(versions={"sentiment": ["1"]})
    client, _ = make_client(repo, fake, tasks=["sentiment"], model_refresh_s=0)
    with client:
        assert client.post("/v1/sentiment", json={"texts": ["x"]}).json()["model"]["version"] == "1"
        fake.versions["sentiment"] = ["1", "2"]  # Triton loaded version 2, but its artifacts are missing
        body = assert_problem(client.post("/v1/sentiment", json={"texts": ["x"]}), 503, "model-not-ready")
        assert "sentiment/2/preprocessing.json" in body["detail"]
        make_artifact_repository(tmp_path, tasks=["sentiment"], version="2")
        assert client.post("/v1/sentiment", json={"texts": ["x"]}).json()["model"]["version"] == "2"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"texts": []}, "texts"),
        ({"texts": ["ok"] * (SENTIMENT.batching.max_batch_size + 1)}, "texts"),
        ({"texts": [""]}, "texts"),
        ({"texts": ["   \n"]}, "texts"),
        ({"texts": ["x" * (MAX_TEXT_CHARS + 1)]}, "texts"),
        ({"texts": ["ok"], "user_id": "not-an-email"}, "user_id"),
        ({"texts": ["ok"], "extra": 1}, "extra"),
        ({"texts": "not a list"}, "texts"),
        ({"texts": [42]}, "texts"),
        ({}, "texts"),
    ],
)
def test_invalid_bodies_are_422_problems_naming_the_field(client: Any, payload: dict[str, Any], field: str) -> None:
    http, fake = client
    body = assert_problem(http.post("/v1/sentiment", json=payload), 422, "invalid-request")
    assert any(field in map(str, issue["loc"]) for issue in body["errors"])
    assert fake.calls == []


def test_lone_surrogates_and_broken_json_are_422(client) -> None:
    http, fake = client
    raw = b'{"texts": ["abc \\ud800 def"]}'
    assert_problem(
        http.post("/v1/sentiment", content=raw, headers={"content-type": "application/json"}), 422, "invalid-request"
    )
    assert_problem(
        http.post("/v1/sentiment", content=b'{"texts": [', headers={"content-type": "application/json"}),
        422,
        "invalid-request",
    )
    not_utf8 = http.post(
        "/v1/sentiment", content=b'{"texts": ["\xff\xfe"]}', headers={"content-type": "application/json"}
    )
    assert_problem(not_utf8, 422, "invalid-request")
    assert fake.calls == []


def test_exactly_the_limits_are_accepted(client) -> None:
    http, fake = client
    limit = DISASTER.batching.max_batch_size
    response = http.post("/v1/disaster", json={"texts": ["x" * MAX_TEXT_CHARS] + ["ok"] * (limit - 1)})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == limit
    assert sum(c.shapes["input_ids"][0] for c in fake.calls) == limit


def test_long_texts_are_classified_with_their_truncation_reported(client: Any) -> None:
    """A 6,000- and a 100,000-character review (5,000 was the old per-text limit: 422) are classified; each
    prediction says how many tokens the model read and that the text was cut."""
    http, fake = client
    assert SENTIMENT.text is not None
    max_tokens = SENTIMENT.text.max_length
    texts = ["A slow start. " + "word " * 1197 + ".", "A slow start. " + "good " * 19997 + ".", "fine"]
    assert [len(t) for t in texts] == [6000, 100_000, 4]
    response = http.post("/v1/sentiment", json={"texts": texts})
    assert response.status_code == 200, response.text
    first, second, short = response.json()["predictions"]
    assert (first["truncated"], first["tokens"], first["text_tokens"]) == (True, max_tokens, 1 + 4 + 1197 + 2)
    assert (second["truncated"], second["tokens"], second["text_tokens"]) == (True, max_tokens, 1 + 4 + 19997 + 2)
    assert (short["truncated"], short["tokens"], short["text_tokens"]) == (False, 3, 3)
    # Triton got the two long reviews cut to the maximum length, the short one in the smallest bucket.
    assert sorted(call.shapes["input_ids"] for call in fake.calls) == [(1, SENTIMENT.text.buckets[0]), (2, max_tokens)]
    models = {m["task"]: m for m in http.get("/v1/models").json()["models"]}
    assert models["sentiment"]["max_text_chars"] == SENTIMENT.text.max_chars >= 100_000
    assert models["sentiment"]["truncation"] == SENTIMENT.text.truncation


def test_a_request_over_the_default_body_limit_is_413_not_a_validation_error(client: Any) -> None:
    """Each text within the per-text limit, eleven of them past the 1 MiB body limit: 413 before any work."""
    http, fake = client
    body = json.dumps({"texts": ["x" * MAX_TEXT_CHARS] * 11}).encode()
    assert len(body) > 1024 * 1024
    response = http.post("/v1/sentiment", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 413, "body-too-large")
    assert fake.calls == []


def test_a_body_over_the_byte_limit_is_413_even_without_content_length(repo: Path) -> None:
    client, fake = make_client(repo, max_body_bytes=4096)
    big = json.dumps({"texts": ["word " * 900]}).encode()
    with client:
        assert_problem(
            client.post("/v1/sentiment", content=big, headers={"content-type": "application/json"}),
            413,
            "body-too-large",
        )

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        chunked = client.post("/v1/sentiment", content=chunks(), headers={"content-type": "application/json"})
        assert_problem(chunked, 413, "body-too-large")
        # just under the limit still works
        assert client.post("/v1/sentiment", json={"texts": ["word " * 700]}).status_code == 200
    assert len(fake.calls) == 1


def test_triton_down_is_503_then_recovers_after_the_failure_window(repo: Path) -> None:
    client, fake = make_client(repo, refresh_failure_s=0.3)
    with client:
        fake.down = True
        assert_problem(client.post("/v1/sentiment", json={"texts": ["x"]}), 503, "backend-unavailable")
        fake.down = False
        # within refresh_failure_s the failure is answered at once, without asking Triton again
        asked = fake.counts["model_versions"]
        assert_problem(client.post("/v1/sentiment", json={"texts": ["x"]}), 503, "backend-unavailable")
        assert fake.counts["model_versions"] == asked
        time.sleep(0.35)
        assert client.post("/v1/sentiment", json={"texts": ["x"]}).status_code == 200


def test_model_not_ready_is_503(client) -> None:
    http, fake = client
    fake.not_ready.add("disaster")
    assert_problem(http.post("/v1/disaster", json={"texts": ["x"]}), 503, "model-not-ready")
    assert http.post("/v1/sentiment", json={"texts": ["x"]}).status_code == 200


def test_triton_timeout_is_504(repo: Path) -> None:
    fake = FakeTriton(timeout_s=0.05)
    fake.delay_s = 1.0
    client, _ = make_client(repo, fake)
    with client:
        assert_problem(client.post("/v1/sentiment", json={"texts": ["x"]}), 504, "backend-timeout")


def test_wrong_logits_shape_is_502_inference_failed(repo: Path) -> None:
    client, _ = make_client(repo, FakeTriton(logits=lambda model, inputs: np.zeros((1, 5), np.float32)))
    with client:
        assert_problem(client.post("/v1/sentiment", json={"texts": ["x", "y"]}), 502, "inference-failed")


def test_triton_rejection_is_502(client) -> None:
    http, fake = client
    fake.error = InferenceFailed("Triton rejected an inference request: unexpected shape")
    body = assert_problem(http.post("/v1/sentiment", json={"texts": ["x"]}), 502, "inference-failed")
    assert "unexpected shape" in body["detail"]


def test_an_unexpected_error_is_a_500_problem_without_a_traceback(repo: Path) -> None:
    def broken(model: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        raise RuntimeError("secret internal state")

    client, _ = make_client(repo, FakeTriton(logits=broken))
    with client:
        response = client.post("/v1/sentiment", json={"texts": ["x"]})
    body = assert_problem(response, 500, "internal-error")
    assert "secret" not in response.text and "RuntimeError" not in body["detail"]


def test_too_many_requests_in_flight_are_refused_with_429(repo: Path) -> None:
    fake = FakeTriton()
    fake.delay_s = 0.5
    client, _ = make_client(repo, fake, max_in_flight=1)
    statuses: list[int] = []
    with client:
        slow = threading.Thread(
            target=lambda: statuses.append(client.post("/v1/sentiment", json={"texts": ["x"]}).status_code)
        )
        slow.start()
        for _ in range(100):  # wait until the first request holds the only slot
            if client.app.state.limiter.current == 1:  # type: ignore[attr-defined]
                break
            threading.Event().wait(0.01)
        refused = client.post("/v1/disaster", json={"texts": ["x"]})
        slow.join()
        body = assert_problem(refused, 429, "overloaded")
        assert refused.headers["retry-after"] == "1"
        assert "1 requests are in flight" in body["detail"]
        assert statuses == [200]
        fake.delay_s = 0
        assert client.post("/v1/disaster", json={"texts": ["x"]}).status_code == 200  # the slot was released
