"""Model repository in S3: push/pull over real HTTP to the local S3 server (SeaweedFS), Triton serving
s3://, and the S3 behaviour the platform relies on: presigned-POST size limits, Content-Encoding kept,
signatures checked, data kept across a restart."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from botocore.exceptions import ClientError

from export.s3sync import S3Location, S3Settings, ensure_bucket, make_client, pull, push, remote_files
from serving.s3 import S3Server
from serving.triton import TritonServer
from tests.conftest import TINY, tiny_weights, write_tiny_onnx

pytestmark = pytest.mark.integration


def client_for(endpoint: str, secret: str = "test-secret"):  # type: ignore[no-untyped-def]
    return make_client(S3Settings(endpoint_url=endpoint, access_key_id="test", secret_access_key=secret))


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


def test_presigned_post_over_its_content_length_range_is_refused(s3_endpoint: str) -> None:
    """What /v1/uploads relies on: the S3 server itself enforces the size limit signed into the policy."""
    s3 = client_for(s3_endpoint)
    ensure_bucket(s3, "post-limits")
    grant = s3.generate_presigned_post(
        "post-limits", "uploads/photo.jpg", Conditions=[["content-length-range", 1, 100]], ExpiresIn=60
    )

    too_big = httpx.post(grant["url"], data=grant["fields"], files={"file": ("photo.jpg", b"x" * 500)}, timeout=10)
    assert too_big.status_code == 400, too_big.text
    assert "<Code>EntityTooLarge</Code>" in too_big.text
    with pytest.raises(ClientError):
        s3.head_object(Bucket="post-limits", Key="uploads/photo.jpg")

    fits = httpx.post(grant["url"], data=grant["fields"], files={"file": ("photo.jpg", b"x" * 100)}, timeout=10)
    assert fits.status_code == 204, fits.text
    assert s3.head_object(Bucket="post-limits", Key="uploads/photo.jpg")["ContentLength"] == 100


def test_content_encoding_set_on_upload_is_returned_on_get(s3_endpoint: str) -> None:
    """The local server behaves like S3 here, so the facade's defence against encoded bodies is testable."""
    s3 = client_for(s3_endpoint)
    ensure_bucket(s3, "encodings")
    body = gzip.compress(b"not really an image " * 50)
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": "encodings", "Key": "uploads/x.jpg"}, ExpiresIn=60
    )
    assert httpx.put(put_url, content=body, headers={"Content-Encoding": "gzip"}, timeout=10).status_code == 200

    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": "encodings", "Key": "uploads/x.jpg"})
    with httpx.stream("GET", get_url, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"
        assert b"".join(response.iter_raw()) == body  # stored as sent, not decoded


def test_wrong_credentials_are_refused(s3_endpoint: str) -> None:
    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        client_for(s3_endpoint, secret="not-the-secret").list_buckets()
    assert httpx.get(f"{s3_endpoint}/encodings/uploads/x.jpg", timeout=10).status_code == 403  # anonymous


def test_data_survives_a_restart_so_push_copies_nothing(tiny_repository: Path, tmp_path: Path) -> None:
    """`make run` keeps its S3 data in .cache/s3: a restart must not re-push an unchanged repository."""
    server = S3Server(
        tmp_path / "data",
        tmp_path / "s3.log",
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    )
    with server:
        s3 = client_for(server.endpoint)
        ensure_bucket(s3, "kept")
        assert len(push(tiny_repository, "s3://kept/repo", s3, progress=False).copied) == 3
    with server:  # same data folder and ports, a new process
        s3 = client_for(server.endpoint)
        again = push(tiny_repository, "s3://kept/repo", s3, progress=False)
        assert again.copied == [] and len(again.unchanged) == 3
        pulled = pull("s3://kept/repo", tmp_path / "pulled", s3, progress=False)
        assert (tmp_path / "pulled" / "tiny" / "1" / "model.onnx").read_bytes() == (
            tiny_repository / "tiny" / "1" / "model.onnx"
        ).read_bytes()
        assert len(pulled.copied) == 3
