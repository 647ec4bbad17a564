"""The export command line: one-line errors with exit status 2, validate, push/pull against a real S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tiny_models import build_tiny_repository

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repository(tmp_path_factory.mktemp("cli"))


def test_unknown_task_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli("build", "--tasks", "sentiment,weather", "--repository", str(tmp_path))
    assert_one_line_error(result, "unknown task(s) weather", "known tasks: sentiment, disaster, pose")
    assert not any(tmp_path.iterdir())


def test_unknown_profile_is_a_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("build", "--profile", "huge"), "--profile", "quick", "full")


def test_missing_dataset_is_a_one_line_error(tmp_path: Path) -> None:
    empty = tmp_path / "datasets"
    empty.mkdir()
    result = run_cli("build", "--tasks", "disaster", "--data-dir", str(empty), "--repository", str(tmp_path / "r"))
    assert_one_line_error(result, "dataset for disaster not found", "disaster_tweets/train.csv")
    missing_dir = run_cli("build", "--data-dir", str(tmp_path / "nowhere"))
    assert_one_line_error(missing_dir, "is not a folder")
    env_dir = run_cli("build", "--tasks", "pose", env={"MTC_DATA_DIR": str(empty)})
    assert_one_line_error(env_dir, "dataset for pose not found")


def test_wrong_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli("build", "--tasks", "sentiment", "--checkpoint", str(tmp_path / "missing-model"))
    assert_one_line_error(result, "checkpoint", "does not exist")
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    result = run_cli("build", "--tasks", "disaster", "--checkpoint", f"disaster={not_a_model}")
    assert_one_line_error(result, "has no config.json")
    result = run_cli("build", "--tasks", "pose", "--checkpoint", f"pose={tmp_path / 'weights.pth'}")
    assert_one_line_error(result, "image checkpoint", "does not exist")


def test_validate_reports_a_good_repository_and_catches_a_tampered_one(tiny_repository: Path, tmp_path: Path) -> None:
    good = run_cli("validate", "--repository", str(tiny_repository))
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.split() == [
        *("sentiment:", "ok", "disaster:", "ok", "pose:", "ok"),
        *("sentiment_tiny:", "ok", "disaster_tiny:", "ok"),  # the distilled variants are validated like the others
    ]

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_repository, broken)
    (broken / "pose" / "labels.txt").write_text("walking\n")
    (broken / "sentiment_text" / "1" / "tokenizer.json").unlink()
    result = run_cli("validate", "--repository", str(broken))
    assert result.returncode == 1
    assert "pose: PROBLEMS" in result.stdout and "labels" in result.stdout
    assert "sentiment: PROBLEMS" in result.stdout and "sentiment_text/1/tokenizer.json is missing" in result.stdout
    assert "disaster: ok" in result.stdout

    # A text version without the int8 file its CPU config serves (published before the variant existed).
    (broken / "disaster" / "1" / "model.int8.onnx").unlink()
    result = run_cli("validate", "--repository", str(broken))
    assert "disaster: PROBLEMS" in result.stdout and "model.int8.onnx is missing" in result.stdout


@pytest.mark.integration
def test_push_then_pull_round_trips_the_repository(tiny_repository: Path, s3_endpoint: str, tmp_path: Path) -> None:
    env = {"MTC_S3_ENDPOINT_URL": s3_endpoint, "MTC_S3_URL": "s3://cli-models/repo"}
    pushed = run_cli("push", "--repository", str(tiny_repository), "--create-bucket", env=env)
    assert pushed.returncode == 0, pushed.stderr
    files = sorted(p.relative_to(tiny_repository) for p in tiny_repository.rglob("*") if p.is_file())
    assert f"{len(files)} copied, 0 unchanged" in pushed.stdout
    again = run_cli("push", "--repository", str(tiny_repository), env=env)
    assert f"0 copied, {len(files)} unchanged" in again.stdout

    target = tmp_path / "pulled"
    pulled = run_cli("pull", "--repository", str(target), env=env)
    assert pulled.returncode == 0, pulled.stderr
    for relative in files:
        assert (target / relative).read_bytes() == (tiny_repository / relative).read_bytes()


@pytest.mark.integration
def test_pull_from_an_empty_prefix_is_a_one_line_error(s3_endpoint: str, tmp_path: Path) -> None:
    env = {"MTC_S3_ENDPOINT_URL": s3_endpoint}
    assert (
        run_cli(
            "push", "--repository", str(tmp_path), "--url", "s3://cli-empty/x", "--create-bucket", env=env
        ).returncode
        == 0
    )
    result = run_cli("pull", "--repository", str(tmp_path / "out"), "--url", "s3://cli-empty/nothing", env=env)
    assert_one_line_error(result, "nothing under s3://cli-empty/nothing")
    bad_url = run_cli("pull", "--url", "https://example.com/models", env=env)
    assert_one_line_error(bad_url, "not an s3://bucket/prefix URL")


def test_cli_default_repository_is_the_builds() -> None:
    """The command line does not import export.build (torch) for push/pull: its default must still agree."""
    from export.build import DEFAULT_REPOSITORY
    from export.cli import DEFAULT_REPOSITORY as CLI_DEFAULT

    assert CLI_DEFAULT == DEFAULT_REPOSITORY
