"""Model repository in S3: push/pull over real HTTP to a local S3 server, Triton serving s3://."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from export.s3sync import S3Location, S3Settings, ensure_bucket, make_client, pull, push, remote_files
from serving.triton import TritonServer
from tests.conftest import TINY, tiny_weights, write_tiny_onnx

pytestmark = pytest.mark.integration


def client_for(endpoint: str):  # type: ignore[no-untyped-def]
    return make_client(S3Settings(endpoint_url=endpoint, access_key_id="test", secret_access_key="test-secret"))


def test_push_copies_only_changed_files_and_keeps_versions(tiny_repository: Path, s3_endpoint: str) -> None:
    s3 = client_for(s3_endpoint)
    ensure_bucket(s3, "sync-test")
    url = "s3://sync-test/repo"

    first = push(tiny_repository, url, s3, progress=False)
    assert sorted(first.copied) == ["tiny/1/model.onnx", "tiny/config.pbtxt", "tiny/labels.txt"]

    again = push(tiny_repository, url, s3, progress=False)
    assert again.copied == [] and len(again.unchanged) == 3

    write_tiny_onnx(tiny_repository / "tiny" / "2" / "model.onnx", scale=2.0)
    (tiny_repository / "tiny" / "1" / "model.onnx").unlink()  # gone locally, kept in S3
    third = push(tiny_repository, url, s3, progress=False)
    assert third.copied == ["tiny/2/model.onnx"]
    assert {"tiny/1/model.onnx", "tiny/2/model.onnx"} <= set(remote_files(s3, S3Location.parse(url)))


def test_pull_restores_a_repository_atomically(tiny_repository: Path, s3_endpoint: str, tmp_path: Path) -> None:
    s3 = client_for(s3_endpoint)
    ensure_bucket(s3, "pull-test")
    push(tiny_repository, "s3://pull-test/r", s3, progress=False)
    target = tmp_path / "pulled"
    report = pull("s3://pull-test/r", target, s3, progress=False)
    assert len(report.copied) == 3
    for relative in ("tiny/config.pbtxt", "tiny/labels.txt", "tiny/1/model.onnx"):
        assert (target / relative).read_bytes() == (tiny_repository / relative).read_bytes()
    assert not list(target.rglob("*.partial"))
    assert pull("s3://pull-test/r", target, s3, progress=False).copied == []
    with pytest.raises(FileNotFoundError, match="nothing under"):
        pull("s3://pull-test/missing", target, s3, progress=False)


def test_triton_serves_from_s3_and_polls_new_versions(tiny_repository: Path, s3_endpoint: str) -> None:
    s3 = client_for(s3_endpoint)
    ensure_bucket(s3, "models")
    url = "s3://models/repository"
    push(tiny_repository, url, s3, progress=False)
    triton_url = S3Location.parse(url).triton_url(s3_endpoint)
    assert triton_url == f"s3://{s3_endpoint}/models/repository"

    features = np.ones((1, 4), np.float32)
    server = TritonServer.on_free_ports(triton_url, model_control_mode="poll", repository_poll_secs=1)
    with server:
        client = httpclient.InferenceServerClient(f"{server.host}:{server.http_port}")

        def logits() -> np.ndarray:
            tensor = httpclient.InferInput("features", [1, 4], "FP32")
            tensor.set_data_from_numpy(features)
            out = client.infer(TINY.name, [tensor]).as_numpy("logits")
            assert out is not None
            return out

        weight, bias = tiny_weights()
        np.testing.assert_allclose(logits(), features @ weight + bias, rtol=1e-5)

        w2, b2 = write_tiny_onnx(tiny_repository / "tiny" / "2" / "model.onnx", scale=3.0)
        push(tiny_repository, url, s3, progress=False)
        deadline = time.monotonic() + 30
        while not client.is_model_ready(TINY.name, "2") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.is_model_ready(TINY.name, "2"), "Triton did not pick up version 2 from S3"
        np.testing.assert_allclose(logits(), features @ w2 + b2, rtol=1e-5)
        client.close()
