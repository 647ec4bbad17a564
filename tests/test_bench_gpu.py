"""The GPU benchmark step, exercised on this CPU machine: wheel pieces, and a tiny model-level run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_GPU = ROOT / "bench" / "gpu" / "run_gpu.sh"
WHEEL_NAME = "mtcfake-0.1-py3-none-any.whl"


def make_wheel(path: Path) -> bytes:
    """A minimal valid pure-Python wheel (big enough to be split into pieces)."""
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mtcfake/__init__.py", "VALUE = 42\n# " + "x" * 3000 + "\n")
        wheel.writestr("mtcfake-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: mtcfake\nVersion: 0.1\n")
        wheel.writestr(
            "mtcfake-0.1.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr("mtcfake-0.1.dist-info/RECORD", "")
    return path.read_bytes()


def split_into_pieces(data: bytes, wheel_dir: Path, pieces: int = 3) -> None:
    """The layout bench/gpu/prepare_wheels.sh writes: ort-gpu-<i>/<name>.part-<i>, sums and list in piece 1."""
    size = -(-len(data) // pieces)
    for i in range(1, pieces + 1):
        folder = wheel_dir / f"ort-gpu-{i}"
        folder.mkdir(parents=True)
        (folder / f"{WHEEL_NAME}.part-{i}").write_bytes(data[(i - 1) * size : i * size])
    first = wheel_dir / "ort-gpu-1"
    (first / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  {WHEEL_NAME}\n")
    (first / "PARTS").write_text("".join(f"{WHEEL_NAME}.part-{i}\n" for i in range(1, pieces + 1)))


def run_prepare_only(tmp_path: Path, wheel_dir: Path) -> tuple[str, Path]:
    site = tmp_path / "site"
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "PYTHON": sys.executable,
        "MTC_WHEEL_DIR": str(wheel_dir),
        "MTC_GPU_SITE": str(site),
        "MTC_GPU_PREPARE_ONLY": "1",
    }
    result = subprocess.run(["bash", str(RUN_GPU)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    log = (tmp_path / "out" / "run_gpu.log").read_text()
    return log, site


def test_pieces_are_joined_checked_and_installed(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "whl"
    split_into_pieces(make_wheel(tmp_path / WHEEL_NAME), wheel_dir)
    log, site = run_prepare_only(tmp_path, wheel_dir)
    assert f"joined {WHEEL_NAME}" in log
    assert (site / "mtcfake" / "__init__.py").read_text().startswith("VALUE = 42")
    assert "providers" in log  # the installed onnxruntime's providers are listed


def test_a_missing_piece_is_reported_and_nothing_installed(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "whl"
    split_into_pieces(make_wheel(tmp_path / WHEEL_NAME), wheel_dir)
    for piece in (wheel_dir / "ort-gpu-2").iterdir():
        piece.unlink()
    log, site = run_prepare_only(tmp_path, wheel_dir)
    assert "pieces missing: 2 of 3" in log
    assert not (site / "mtcfake").exists()


def test_a_corrupted_piece_fails_the_checksum(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "whl"
    split_into_pieces(make_wheel(tmp_path / WHEEL_NAME), wheel_dir)
    piece = next((wheel_dir / "ort-gpu-3").iterdir())
    piece.write_bytes(piece.read_bytes()[:-1] + b"!")
    log, site = run_prepare_only(tmp_path, wheel_dir)
    assert "fails its checksum" in log
    assert not (site / "mtcfake").exists()


@pytest.mark.slow
def test_model_bench_on_cpu_writes_report_and_names_missing_providers(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    command = [
        sys.executable, str(ROOT / "bench" / "gpu" / "model_bench.py"), "--tiny", "--out", str(out),
        "--tasks", "disaster,pose", "--batches", "1,4", "--point-budget-s", "0.05",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((out / "gpu_results.json").read_text())
    measured = {(p["task"], p["runtime"], p["precision"], p["batch"]) for p in data["points"]}
    assert measured == {(task, "onnxruntime CPU", "fp32", batch) for task in ("disaster", "pose") for batch in (1, 4)}
    assert all(p["median_ms"] > 0 and p["runs"] >= 3 for p in data["points"])
    # No GPU here: the report must say what it could not measure rather than stay silent.
    assert "CUDAExecutionProvider" in data["unavailable"]
    report = (out / "gpu_report.md").read_text()
    assert "GPU: none" in report and "## disaster: median latency ms" in report
    assert (out / "gpu_latency.png").read_bytes()[:4] == b"\x89PNG"
