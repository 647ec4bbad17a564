"""The artifact cache is keyed by each version's content: a version republished with another tokenizer or
other labels is served with them after the next refresh (``model_refresh_s``), never stale.

With ``manifest.json`` (what ``export publish`` writes) the key is its digest and every artifact is checked
against it; without one, the files' stats (local mtime + size here; the ETag on S3, see
tests/test_api_integration.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from frontend_api.app import create_app
from frontend_api.errors import StorageUnavailable
from frontend_api.settings import ApiSettings
from preprocess.probabilities import softmax
from taskspec import DISASTER, MANIFEST_FILE, PREPROCESSING_FILE, TOKENIZER_FILE
from taskspec.manifest import FileEntry, digest_of
from tests.fakes.frontend_api import FakeTriton, make_artifact_repository, write_manifest

REFRESH_S = 1.0


def client_for(repo: Path, fake: FakeTriton) -> TestClient:
    settings = ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(repo),
        tasks=["disaster"],
        model_refresh_s=REFRESH_S,
    )
    return TestClient(create_app(settings, fake), raise_server_exceptions=False)


def classify(client: TestClient) -> dict[str, Any]:
    response = client.post("/v1/disaster", json={"texts": ["fire"]})
    assert response.status_code == 200, response.text
    probabilities: dict[str, Any] = response.json()["predictions"][0]["probabilities"]
    return probabilities


def expected(labels: tuple[str, ...], tokens: int) -> dict[str, float]:
    # FakeTriton: the last label's logit is 0.1 x the number of real tokens
    row = softmax(np.array([[0.0, 0.1 * tokens]], np.float32))[0]
    return dict(zip(labels, (float(p) for p in row), strict=True))


def republish(version_dir: Path, *, manifest: bool) -> None:
    """Other labels and a tokenizer without [CLS]/[SEP] (one token for "fire" instead of three)."""
    doc = json.loads((version_dir / PREPROCESSING_FILE).read_text())
    doc["labels"] = ["calm", "emergency"]
    (version_dir / PREPROCESSING_FILE).write_text(json.dumps(doc))
    tokenizer = json.loads((version_dir / TOKENIZER_FILE).read_text())
    tokenizer["post_processor"] = None
    (version_dir / TOKENIZER_FILE).write_text(json.dumps(tokenizer))
    if manifest:
        write_manifest(version_dir)


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest-digest", "file-stats"])
def test_a_republished_version_is_served_with_its_new_artifacts_after_the_refresh(
    tmp_path: Path, manifest: bool
) -> None:
    repo = make_artifact_repository(tmp_path, tasks=["disaster"], manifest=manifest)
    version_dir = repo / "disaster" / "1"
    fake = FakeTriton(versions={"disaster": ["1"]})
    with client_for(repo, fake) as client:
        assert classify(client) == pytest.approx(expected(DISASTER.labels, tokens=3))
        republish(version_dir, manifest=manifest)
        time.sleep(REFRESH_S + 0.1)
        assert classify(client) == pytest.approx(expected(("calm", "emergency"), tokens=1))
        # served from the cache until the next change
        assert classify(client) == pytest.approx(expected(("calm", "emergency"), tokens=1))


def test_models_reports_the_labels_and_truncation_length_predictions_are_made_with(tmp_path: Path) -> None:
    # A version published with other labels and a shorter maximum length than the task spec declares:
    # /v1/models must describe the version requests are classified with, not the spec.
    repo = make_artifact_repository(tmp_path, tasks=["disaster"], manifest=True)
    version_dir = repo / "disaster" / "1"
    doc = json.loads((version_dir / PREPROCESSING_FILE).read_text())
    doc["text"]["buckets"], doc["text"]["max_length"] = [8, 16], 16
    (version_dir / PREPROCESSING_FILE).write_text(json.dumps(doc))
    republish(version_dir, manifest=True)
    fake = FakeTriton(versions={"disaster": ["1"]})
    with client_for(repo, fake) as client:
        (model,) = client.get("/v1/models").json()["models"]
        predicted = classify(client)
        long_text = client.post("/v1/disaster", json={"texts": ["fire " * 100]})
    assert model["labels"] == list(predicted) == ["calm", "emergency"] != list(DISASTER.labels)
    assert model["version"] == "1" and model["ready"] is True
    assert model["max_tokens"] == 16 != (DISASTER.text.max_length if DISASTER.text else None)
    assert long_text.status_code == 200 and fake.calls[-1].shapes["input_ids"] == (1, model["max_tokens"])


def test_artifacts_that_do_not_match_the_manifest_are_refused_until_they_do(tmp_path: Path) -> None:
    repo = make_artifact_repository(tmp_path, tasks=["disaster"], manifest=True)
    version_dir = repo / "disaster" / "1"
    fake = FakeTriton(versions={"disaster": ["1"]})
    with client_for(repo, fake) as client:
        classify(client)
        republish(version_dir, manifest=False)  # files changed, manifest not (yet): half a republish
        manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
        manifest["files"]["extra.txt"] = {"sha256": "0" * 64, "size": 1}  # a new manifest whose files do not match
        files = {name: FileEntry(**entry) for name, entry in manifest["files"].items()}
        manifest["digest"] = digest_of(files)
        (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
        time.sleep(REFRESH_S + 0.1)
        refused = client.post("/v1/disaster", json={"texts": ["fire"]})
        assert refused.status_code == 503 and refused.json()["type"] == "/problems/model-not-ready"
        assert "does not match its manifest.json" in refused.json()["detail"]
        write_manifest(version_dir)
        time.sleep(REFRESH_S + 0.1)
        assert classify(client) == pytest.approx(expected(("calm", "emergency"), tokens=1))


def test_a_manifest_whose_digest_does_not_match_its_file_list_is_refused(tmp_path: Path) -> None:
    repo = make_artifact_repository(tmp_path, tasks=["disaster"], manifest=True)
    path = repo / "disaster" / "1" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["digest"] = "f" * 64
    path.write_text(json.dumps(manifest))
    with client_for(repo, FakeTriton(versions={"disaster": ["1"]})) as client:
        refused = client.post("/v1/disaster", json={"texts": ["fire"]})
    assert refused.status_code == 503 and refused.json()["type"] == "/problems/model-not-ready"
    assert "digest does not match" in refused.json()["detail"]


class Outage:
    """An artifact source that fails like an unreachable S3 while ``down``."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.down = False

    def read(self, relative: str) -> bytes | None:
        if self.down:
            raise StorageUnavailable(f"cannot read {relative}: EndpointConnectionError")
        data: bytes | None = self.source.read(relative)
        return data

    def fingerprint(self, relative: str) -> str | None:
        if self.down:
            raise StorageUnavailable(f"cannot stat {relative}: EndpointConnectionError")
        value: str | None = self.source.fingerprint(relative)
        return value


def test_a_repository_outage_keeps_serving_the_checked_artifacts_of_the_same_version(tmp_path: Path) -> None:
    repo = make_artifact_repository(tmp_path, tasks=["disaster"], manifest=True)
    fake = FakeTriton(versions={"disaster": ["1"]})
    with client_for(repo, fake) as client:
        store = client.app.state.service.artifacts  # type: ignore[attr-defined]
        store.source = outage = Outage(store.source)
        classify(client)
        outage.down = True
        time.sleep(REFRESH_S + 0.1)
        assert classify(client) == pytest.approx(expected(DISASTER.labels, tokens=3))  # re-check failed: cached
        fake.versions["disaster"] = ["1", "2"]  # a new version cannot be served without its artifacts
        time.sleep(REFRESH_S + 0.1)
        refused = client.post("/v1/disaster", json={"texts": ["fire"]})
        assert refused.status_code == 503 and refused.json()["type"] == "/problems/storage-unavailable"
