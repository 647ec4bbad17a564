"""Choosing a task's model per request (`model`: the task's own or its tiny variant) against a fake Triton:
routing, the response's model, 422 for a model the task does not serve, and /v1/models' accuracy and latency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from frontend_api.app import create_app
from frontend_api.artifacts import card_figures
from frontend_api.settings import ApiSettings
from taskspec import METRICS_FILE
from tests.fakes.frontend_api import FakeTriton, make_artifact_repository

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact_repository(tmp_path_factory.mktemp("artifacts"))


def make_client(repo: Path, **overrides: Any) -> tuple[TestClient, FakeTriton]:
    fake = FakeTriton()
    settings = ApiSettings(model_repository=str(repo), _env_file=None, **overrides)
    return TestClient(create_app(settings, fake), raise_server_exceptions=False), fake


@pytest.mark.parametrize(
    ("route", "model", "served_by"),
    [
        ("sentiment", None, "sentiment"),
        ("sentiment", "sentiment", "sentiment"),
        ("sentiment", "sentiment_tiny", "sentiment_tiny"),
        ("disaster", "disaster_tiny", "disaster_tiny"),
    ],
)
def test_the_request_picks_the_triton_model_and_the_response_names_it(
    repo: Path, route: str, model: str | None, served_by: str
) -> None:
    client, fake = make_client(repo)
    body: dict[str, Any] = {"texts": ["a fine film", "a long and boring film, I left early"]}
    if model is not None:
        body["model"] = model
    with client:
        response = client.post(f"/v1/{route}", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["task"] == route
    assert result["model"] == {"name": served_by, "version": "1"}
    assert response.headers["x-model-version"] == "1"
    assert {call.model for call in fake.calls} == {served_by}  # every bucket went to the chosen model
    assert [p["text_index"] for p in result["predictions"]] == [0, 1]


@pytest.mark.parametrize("model", ["sentiment_large", "disaster_tiny", "pose", "", "SENTIMENT_TINY"])
def test_a_model_the_task_does_not_serve_is_a_422_naming_the_choices(repo: Path, model: str) -> None:
    client, fake = make_client(repo)
    with client:
        response = client.post("/v1/sentiment", json={"texts": ["ok"], "model": model})
    assert response.status_code == 422 and response.headers["content-type"].startswith(PROBLEM)
    (issue,) = response.json()["errors"]
    assert issue["loc"][-1] == "model"
    assert "'sentiment' or 'sentiment_tiny'" in issue["msg"]
    assert fake.calls == []


def test_a_variant_the_facade_does_not_serve_is_refused(repo: Path) -> None:
    client, fake = make_client(repo, tasks=["sentiment", "disaster", "disaster_tiny"])
    with client:
        refused = client.post("/v1/sentiment", json={"texts": ["ok"], "model": "sentiment_tiny"})
        served = client.post("/v1/disaster", json={"texts": ["ok"], "model": "disaster_tiny"})
        assert client.post("/v1/sentiment_tiny", json={"texts": ["ok"]}).status_code == 404  # no route of its own
        schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert refused.status_code == 422 and "'sentiment'" in refused.json()["errors"][0]["msg"]
    assert served.status_code == 200 and served.json()["model"]["name"] == "disaster_tiny"
    assert {call.model for call in fake.calls} == {"disaster_tiny"}
    assert schema["DisasterRequest"]["properties"]["model"]["anyOf"][0]["enum"] == ["disaster", "disaster_tiny"]
    assert schema["SentimentRequest"]["properties"]["model"]["anyOf"][0]["const"] == "sentiment"


def test_a_variant_needs_its_task_in_the_settings(repo: Path) -> None:
    with pytest.raises(ValueError, match="variants without their task: sentiment_tiny"):
        ApiSettings(model_repository=str(repo), _env_file=None, tasks=["disaster", "sentiment_tiny"])


def _card(accuracy: float, int8: float, p50: float, p50_int8: float) -> dict[str, Any]:
    return {
        "test": {"accuracy": accuracy, "confusion_matrix": [[5, 1], [2, 4]]},
        "int8": {"file": "model.int8.onnx", "test": {"accuracy": int8}},
        "latency": {"files": {"model.onnx": {"p50_ms": p50}, "model.int8.onnx": {"p50_ms": p50_int8}}},
    }


def test_models_list_both_variants_with_accuracy_and_latency_from_their_cards(tmp_path: Path) -> None:
    repo = make_artifact_repository(tmp_path, tasks=["sentiment", "sentiment_tiny"])
    (repo / "sentiment" / "1" / METRICS_FILE).write_text(json.dumps(_card(0.868, 0.863, 21.5, 9.8)))
    (repo / "sentiment_tiny" / "1" / METRICS_FILE).write_text(json.dumps(_card(0.84, 0.835, 11.0, 5.1)))
    client, _ = make_client(repo, tasks=["sentiment", "sentiment_tiny"])
    with client:
        models = {m["model"]: m for m in client.get("/v1/models").json()["models"]}
    teacher, tiny = models["sentiment"], models["sentiment_tiny"]
    assert (teacher["variant_of"], teacher["variant"]) == (None, "default")
    assert (tiny["task"], tiny["variant_of"], tiny["variant"]) == ("sentiment_tiny", "sentiment", "tiny")
    assert (teacher["accuracy"], teacher["accuracy_int8"]) == (0.868, 0.863)
    assert (tiny["accuracy"], tiny["accuracy_int8"], tiny["latency_p50_ms"], tiny["latency_p50_ms_int8"]) == (
        0.84,
        0.835,
        11.0,
        5.1,
    )
    assert tiny["ready"] and tiny["labels"] == teacher["labels"] and tiny["max_tokens"] == teacher["max_tokens"]


def test_card_figures_ignore_what_is_missing_or_not_a_number() -> None:
    assert card_figures(None).accuracy is None
    assert card_figures(b"not json").latency_p50_ms is None
    broken = {"test": {"accuracy": "high"}, "int8": {"file": 3}, "latency": {"files": {"model.onnx": {"p50_ms": True}}}}
    figures = card_figures(json.dumps(broken).encode())
    assert (figures.accuracy, figures.accuracy_int8, figures.latency_p50_ms, figures.latency_p50_ms_int8) == (
        None,
        None,
        None,
        None,
    )
