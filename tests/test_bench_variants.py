"""Benchmark variants of a published model, and a whole `python -m bench` run on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bench.inputs import load_samples
from bench.suite import int8_agreement, triton_requests
from bench.variants import build_variant_repository
from export.triton_config import check_model_config, read_model_config
from taskspec import MODEL_FILE, get_task

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_models import build_tiny_repository

    return build_tiny_repository(tmp_path_factory.mktemp("tiny"), tasks=("disaster", "pose"))


@pytest.mark.slow
def test_variants_share_weights_and_differ_only_where_intended(tiny_repository: Path, tmp_path: Path) -> None:
    specs = [get_task("disaster"), get_task("pose")]
    repo = build_variant_repository(tiny_repository, tmp_path / "variants", specs)
    assert repo.models == {
        "disaster": {"published": "disaster", "nobatch": "disaster_nobatch", "int8": "disaster_int8"},
        "pose": {"published": "pose", "nobatch": "pose_nobatch"},
    }
    for spec in specs:
        version = str(repo.versions[spec.name])
        published = read_model_config(repo.root / spec.name)
        nobatch = read_model_config(repo.root / f"{spec.name}_nobatch")
        assert published.HasField("dynamic_batching") and not nobatch.HasField("dynamic_batching")
        assert nobatch.name == f"{spec.name}_nobatch"
        assert nobatch.max_batch_size == published.max_batch_size
        assert check_model_config(spec, repo.root / spec.name) == []
        source = tiny_repository / spec.name / version / MODEL_FILE
        linked = repo.root / f"{spec.name}_nobatch" / version / MODEL_FILE
        assert linked.read_bytes() == source.read_bytes()

    version = str(repo.versions["disaster"])
    int8_file = repo.root / "disaster_int8" / version / MODEL_FILE
    ops = {node.op_type for node in __import__("onnx").load(str(int8_file)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}, "the int8 model is really quantized"
    assert int8_file.read_bytes() == (tiny_repository / "disaster" / version / "model.int8.onnx").read_bytes()
    # The artifacts the facade reads travel with the int8 model too.
    assert (repo.root / "disaster_int8" / version / "tokenizer.json").is_file()


@pytest.mark.slow
def test_int8_agreement_and_inputs_match_the_model(tiny_repository: Path, tmp_path: Path) -> None:
    spec = get_task("disaster")
    repo = build_variant_repository(tiny_repository, tmp_path / "variants", [spec])
    version_dir = repo.root / "disaster" / str(repo.versions["disaster"])
    requests = triton_requests(spec, version_dir, load_samples(spec, limit=8))
    assert spec.text is not None
    padded = [r["input_ids"].shape[1] for r in requests]
    assert padded == [spec.text.bucket_for(int(r["attention_mask"].sum())) for r in requests]  # as the facade pads
    agreement, worst = int8_agreement(
        version_dir / MODEL_FILE, repo.root / "disaster_int8" / version_dir.name / MODEL_FILE, requests
    )
    assert 0.0 <= agreement <= 1.0 and 0.0 <= worst <= 1.0
    same, _ = int8_agreement(version_dir / MODEL_FILE, version_dir / MODEL_FILE, requests)
    assert same == 1.0

    pose = get_task("pose")
    pixels = triton_requests(pose, version_dir, load_samples(pose, limit=1))[0]["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == np.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0  # (x - 127) / 128 on 0-255
    session = ort.InferenceSession(str(tiny_repository / "pose" / "1" / MODEL_FILE), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"pixel_values": pixels})
    assert logits.shape == (1, pose.num_labels)


@pytest.mark.integration
@pytest.mark.slow
def test_python_m_bench_writes_the_report(tmp_path: Path) -> None:
    """The whole run on an empty repository: falls back to tiny models and says so."""
    empty = tmp_path / "empty_repository"
    empty.mkdir()
    out = tmp_path / "results"
    command = [
        sys.executable, "-m", "bench", "--repository", str(empty), "--out", str(out),
        "--tasks", "disaster", "--concurrency", "1,8", "--duration", "0.4", "--no-facade-comparisons",
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "TINY RANDOM MODEL" in report
    assert "### disaster" in report and "dynamic batching off" in report and "int8" in report
    data = json.loads((out / "results.json").read_text())
    sweep = data["sweeps"]["disaster"]
    assert [p["concurrency"] for p in sweep] == [1, 8]
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in sweep), sweep
    batching = {(p["variant"], p["concurrency"]): p for p in data["batching"]["disaster"]}
    # Without dynamic batching Triton only ever executes single requests.
    assert set(batching[("dynamic batching off", 8)]["batches"]) == {"1"}
    assert batching[("dynamic batching on", 8)]["requests"] > 0
    assert data["machine"]["triton"].startswith("2.")
    assert (out / "sweep_disaster.png").is_file() and (out / "batching_disaster.png").is_file()
    # Where the time goes: the facade's own timings and Triton's statistics were collected per level.
    stages = data["stages"]["disaster"]
    assert [s["concurrency"] for s in stages] == [1, 8]
    for stage in stages:
        assert 0 < stage["Triton compute"] < stage["facade total"] <= stage["client"]
        assert stage["preprocessing"] > 0
