"""Repository integrity: pull never writes outside its target, published versions are immutable and
verified against their manifest.json (push and pull against real local S3 servers)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from export.errors import ImmutableVersionError, ManifestMismatchError, UnsafeKeyError
from export.s3sync import S3Settings, ensure_bucket, key_problem, make_client, pull, push
from serving.triton import free_port
from taskspec.manifest import FileEntry, Manifest, ManifestError, path_problem, verify_version, write_manifest
from tests.conftest import make_tiny_repository, write_tiny_onnx
from tests.test_export_cli import assert_one_line_error, run_cli

# --- the key checker -------------------------------------------------------------------------------

UNSAFE_KEYS = {
    "../../../../x": "'.' or '..' segment",
    "tiny/../../x": "'.' or '..' segment",
    "tiny/./1/model.onnx": "'.' or '..' segment",
    "/etc/cron.d/x": "absolute path",
    "": "empty key",
    "tiny//x": "empty path segment",
    "tiny/": "empty path segment",
    "tiny\\..\\..\\x": "backslash",
    "tiny/x\x00.onnx": "NUL character",
    "tiny/\x1b[2Jx": "control character",
}


@pytest.mark.parametrize(("key", "reason"), UNSAFE_KEYS.items(), ids=ascii)
def test_key_checker_refuses_keys_that_are_not_plain_relative_paths(key: str, reason: str, tmp_path: Path) -> None:
    assert path_problem(key) == reason
    assert key_problem(tmp_path / "target", key) == reason


@pytest.mark.parametrize("key", ["tiny/1/model.onnx", "tiny/configs/cpu.pbtxt", "a..b/c", "tiny/1/.hidden", "é/1/x"])
def test_key_checker_accepts_repository_paths(key: str, tmp_path: Path) -> None:
    assert key_problem(tmp_path / "target", key) is None


def test_key_checker_follows_symlinks_out_of_the_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (target / "tiny").symlink_to(tmp_path / "elsewhere")
    (target / "inside").symlink_to(target / "tiny" / ".." / "..")  # a loop back above the target
    problem = key_problem(target, "tiny/config.pbtxt")
    assert problem is not None and "outside" in problem
    assert key_problem(target, "inside/x") is not None
    assert key_problem(target, "other/config.pbtxt") is None


# --- the manifest ----------------------------------------------------------------------------------


def sealed_version(root: Path) -> Path:
    version = root / "tiny" / "1"
    write_tiny_onnx(version / "model.onnx")
    (version / "tokenizer.json").write_text('{"model": {}}\n')
    write_manifest(version)
    return version


def test_manifest_round_trips_and_matches_the_documented_digest(tmp_path: Path) -> None:
    version = sealed_version(tmp_path)
    text = (version / "manifest.json").read_text()
    document = json.loads(text)
    files: dict[str, Any] = {}
    for name in ("model.onnx", "tokenizer.json"):
        data = (version / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert document == {
        "format": 1,
        "files": files,
        "digest": hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest(),
    }
    assert Manifest.from_json(text) == Manifest.of_files({n: FileEntry(**e) for n, e in files.items()})


def _tampered(text: str, change: Any) -> str:
    document = json.loads(text)
    change(document)
    return json.dumps(document)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["files"]["model.onnx"].update(size=1), "digest does not match"),
        (lambda d: d.update(format=2), "format is not 1"),
        (lambda d: d["files"].update({"../../x": d["files"]["model.onnx"]}), "'.' or '..' segment"),
        (lambda d: d["files"].update({"manifest.json": d["files"]["model.onnx"]}), "the manifest itself"),
        (lambda d: d["files"]["model.onnx"].update(sha256="ABC"), "64 lowercase hex"),
        (lambda d: d["files"]["model.onnx"].update(size=True), "non-negative integer"),
        (lambda d: d["files"]["model.onnx"].update(mode=755), "must be"),
        (lambda d: d.pop("digest"), "'digest' string"),
    ],
)
def test_manifest_reader_refuses_what_it_cannot_trust(change: Any, message: str, tmp_path: Path) -> None:
    text = (sealed_version(tmp_path) / "manifest.json").read_text()
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(_tampered(text, change))


def test_manifest_reader_refuses_non_json_and_huge_documents() -> None:
    with pytest.raises(ManifestError, match="not JSON"):
        Manifest.from_json(b"\xff{")
    with pytest.raises(ManifestError, match="bytes"):
        Manifest.from_json(b" " * (2 << 20))


def test_verify_version_names_every_difference(tmp_path: Path) -> None:
    version = sealed_version(tmp_path)
    assert verify_version(version) == []
    data = bytearray((version / "model.onnx").read_bytes())
    data[-1] ^= 1
    (version / "model.onnx").write_bytes(bytes(data))  # same size, other bytes
    (version / "tokenizer.json").unlink()
    (version / "model.py").write_text("import os\n")
    assert verify_version(version) == [
        "tokenizer.json: missing",
        "model.py: not in the manifest",
        "model.onnx: sha256 differs from the manifest",
    ]


# --- push and pull against real servers ------------------------------------------------------------


def client_for(endpoint: str) -> Any:
    return make_client(
        S3Settings(
            endpoint_url=endpoint,
            access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        )
    )


@pytest.fixture
def sealed_repository(tmp_path: Path) -> Path:
    """``tiny/`` with a published, sealed version 1, and a raw-text model's mutable version."""
    root = make_tiny_repository(tmp_path / "repo")
    (root / "tiny" / "1" / "tokenizer.json").write_text('{"model": {}}\n')
    write_manifest(root / "tiny" / "1")
    (root / "sentiment_text" / "1").mkdir(parents=True)
    (root / "sentiment_text" / "1" / "tokenizer.json").write_text('{"v": 1}\n')
    return root


def remote_bytes(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def republish_in_place(root: Path) -> None:
    """What a rebuild that reuses version number 1 looks like: other weights, a fresh, valid manifest."""
    write_tiny_onnx(root / "tiny" / "1" / "model.onnx", scale=2.0)
    write_manifest(root / "tiny" / "1")


@pytest.mark.integration
def test_push_refuses_to_alter_an_existing_version(sealed_repository: Path, s3_endpoint: str) -> None:
    s3 = client_for(s3_endpoint)
    ensure_bucket(s3, "immutable")
    url = "s3://immutable/repo"
    push(sealed_repository, url, s3, progress=False)
    published = remote_bytes(s3, "immutable", "repo/tiny/1/model.onnx")

    republish_in_place(sealed_repository)
    (sealed_repository / "tiny" / "labels.txt").write_text("red\ngreen\nblue\nteal\n")  # model level: mutable
    with pytest.raises(ImmutableVersionError) as refused:
        push(sealed_repository, url, s3, progress=False)
    message = str(refused.value)
    assert "'tiny/1/model.onnx'" in message and "'tiny/1/manifest.json'" in message
    assert "labels.txt" not in message and "nothing was uploaded" in message and "--force" in message
    assert remote_bytes(s3, "immutable", "repo/tiny/1/model.onnx") == published
    assert remote_bytes(s3, "immutable", "repo/tiny/labels.txt") == b"red\ngreen\nblue\n"  # nothing at all went up

    forced = push(sealed_repository, url, s3, progress=False, force=True)
    assert sorted(forced.replaced) == ["tiny/1/manifest.json", "tiny/1/model.onnx"]
    assert "2 replaced in published versions (--force)" in str(forced)
    assert (
        remote_bytes(s3, "immutable", "repo/tiny/1/model.onnx")
        == (sealed_repository / "tiny" / "1" / "model.onnx").read_bytes()
    )


@pytest.mark.integration
def test_push_completes_an_interrupted_version_with_the_manifest_last(
    sealed_repository: Path, s3_endpoint: str
) -> None:
    s3 = client_for(s3_endpoint)
    ensure_bucket(s3, "interrupted")
    url = "s3://interrupted/repo"
    # An earlier push died after the weights: the version is in the bucket without its manifest.
    s3.upload_file(str(sealed_repository / "tiny" / "1" / "model.onnx"), "interrupted", "repo/tiny/1/model.onnx")

    class Recording:
        def __init__(self, client: Any) -> None:
            self.client, self.keys = client, list[str]()

        def upload_file(self, path: str, bucket: str, key: str, **kwargs: Any) -> None:
            self.keys.append(key)
            self.client.upload_file(path, bucket, key, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.client, name)

    recording = Recording(s3)
    report = push(sealed_repository, url, recording, progress=False)  # type: ignore[arg-type]
    assert report.unchanged == ["tiny/1/model.onnx"] and not report.replaced
    assert recording.keys[-1] == "repo/tiny/1/manifest.json"
    assert set(recording.keys) >= {"repo/tiny/1/tokenizer.json", "repo/tiny/config.pbtxt"}

    # Sealed in the bucket now: even a new file is a change to the published version.
    (sealed_repository / "tiny" / "1" / "model.py").write_text("import os\n")
    write_manifest(sealed_repository / "tiny" / "1")
    with pytest.raises(ImmutableVersionError, match=r"'tiny/1/model.py' \(not in the published version"):
        push(sealed_repository, url, s3, progress=False)


@pytest.mark.integration
def test_raw_text_version_and_model_level_files_stay_mutable(sealed_repository: Path, s3_endpoint: str) -> None:
    s3 = client_for(s3_endpoint)
    ensure_bucket(s3, "mutable")
    url = "s3://mutable/repo"
    push(sealed_repository, url, s3, progress=False)
    (sealed_repository / "sentiment_text" / "1" / "tokenizer.json").write_text('{"v": 2}\n')
    (sealed_repository / "tiny" / "config.pbtxt").write_text("# changed\n")
    report = push(sealed_repository, url, s3, progress=False)
    assert sorted(report.copied) == ["sentiment_text/1/tokenizer.json", "tiny/config.pbtxt"] and not report.replaced


@pytest.mark.integration
def test_push_refuses_a_local_version_that_does_not_match_its_manifest(
    sealed_repository: Path, s3_endpoint: str
) -> None:
    s3 = client_for(s3_endpoint)
    ensure_bucket(s3, "localcheck")
    (sealed_repository / "tiny" / "1" / "tokenizer.json").write_text('{"model": {"edited": true}}\n')
    with pytest.raises(ManifestMismatchError, match=r"tiny/1: tokenizer.json: \d+ bytes, manifest says"):
        push(sealed_repository, "s3://localcheck/repo", s3, progress=False)
    assert "Contents" not in s3.list_objects_v2(Bucket="localcheck")


@pytest.mark.integration
def test_pull_verifies_versions_against_their_manifest(
    sealed_repository: Path, s3_endpoint: str, tmp_path: Path
) -> None:
    s3 = client_for(s3_endpoint)
    ensure_bucket(s3, "verify")
    url = "s3://verify/repo"
    push(sealed_repository, url, s3, progress=False)
    target = tmp_path / "pulled"
    assert len(pull(url, target, s3, progress=False).copied) == 6
    assert verify_version(target / "tiny" / "1") == []
    shutil.rmtree(target)

    # The weights swapped in the bucket for others of the same size: only the hash can tell.
    original = (sealed_repository / "tiny" / "1" / "model.onnx").read_bytes()
    swapped = bytearray(original)
    swapped[-1] ^= 1
    s3.put_object(Bucket="verify", Key="repo/tiny/1/model.onnx", Body=bytes(swapped))
    with pytest.raises(ManifestMismatchError, match=r"'tiny/1/model.onnx' \(\d+ bytes, sha256 .*nothing was written"):
        pull(url, target, s3, progress=False)
    assert not target.exists()

    # A file slipped into the sealed version (a Python model in a Triton repository is code) and
    # another size: refused from the listing, before anything is downloaded.
    s3.put_object(Bucket="verify", Key="repo/tiny/1/model.py", Body=b"import os\n")
    s3.put_object(Bucket="verify", Key="repo/tiny/1/tokenizer.json", Body=b"{}")
    with pytest.raises(ManifestMismatchError) as refused:
        pull(url, target, s3, progress=False)
    assert "tiny/1/model.py: not in the manifest" in str(refused.value)
    assert "tiny/1/tokenizer.json: 2 bytes, manifest says" in str(refused.value)
    assert not target.exists()


@pytest.mark.integration
def test_pull_refuses_empty_keys_and_segments(s3_endpoint: str, tmp_path: Path) -> None:
    """Folder markers ("repo/" itself, "repo/tiny/") have empty names: refused, nothing written."""
    s3 = client_for(s3_endpoint)
    ensure_bucket(s3, "emptykeys")
    s3.put_object(Bucket="emptykeys", Key="repo/tiny/labels.txt", Body=b"red\n")
    s3.put_object(Bucket="emptykeys", Key="repo/tiny/", Body=b"")
    target = tmp_path / "pulled"
    with pytest.raises(UnsafeKeyError, match=r"'tiny/' \(empty path segment\).*nothing was written"):
        pull("s3://emptykeys/repo", target, s3, progress=False)
    assert not target.exists()


@pytest.fixture(scope="module")
def aws_like_s3() -> Iterator[str]:
    """moto's S3 server: it stores any key, like AWS S3 does.

    SeaweedFS and MinIO refuse ``..`` segments and fold ``//`` when an object is written, so a bucket
    on them cannot hold the keys below; one on AWS can, which is where the puller must hold its ground.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.mark.integration
def test_pull_refuses_keys_that_escape_the_target(aws_like_s3: str, tmp_path: Path) -> None:
    s3 = client_for(aws_like_s3)
    ensure_bucket(s3, "hostile")
    hostile = [
        "model_repository/../../../../x",
        "model_repository//tmp/absolute",
        "model_repository/tiny\\..\\..\\y",
    ]
    for key in ["model_repository/tiny/labels.txt", *hostile]:
        s3.put_object(Bucket="hostile", Key=key, Body=b"written by whoever can write the bucket\n")
    target = tmp_path / "a" / "b" / "c" / "d" / "pulled"
    escaped = (target / "../../../../x").resolve()

    with pytest.raises(UnsafeKeyError) as refused:
        pull("s3://hostile/model_repository", target, s3, progress=False)
    for key, reason in (("'../../../../x'", "'.' or '..' segment"), ("'/tmp/absolute'", "absolute path")):
        assert f"{key} ({reason})" in str(refused.value)
    assert "backslash" in str(refused.value)
    assert not escaped.exists() and not target.exists()

    # The command line: one named error line, exit status 2, nothing written.
    env = {"MTC_S3_ENDPOINT_URL": aws_like_s3, "MTC_S3_URL": "s3://hostile/model_repository"}
    result = run_cli("pull", "--repository", str(target), env=env)
    assert_one_line_error(
        result, "refusing to pull s3://hostile/model_repository", "'../../../../x'", "3 object key(s)"
    )
    assert not escaped.exists() and not target.exists()


@pytest.mark.integration
def test_cli_push_refuses_a_changed_version_unless_forced(sealed_repository: Path, s3_endpoint: str) -> None:
    env = {"MTC_S3_ENDPOINT_URL": s3_endpoint, "MTC_S3_URL": "s3://cli-immutable/repo"}
    first = run_cli("push", "--repository", str(sealed_repository), "--create-bucket", env=env)
    assert first.returncode == 0, first.stderr
    republish_in_place(sealed_repository)
    refused = run_cli("push", "--repository", str(sealed_repository), env=env)
    assert_one_line_error(refused, "would change published versions", "'tiny/1/model.onnx'", "--force")
    forced = run_cli("push", "--repository", str(sealed_repository), "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert "2 copied" in forced.stdout and "2 replaced in published versions (--force)" in forced.stdout
