"""The optional TensorRT plan: its config and trtexec shapes agree with the ONNX model's contract."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from deploy.tensorrt import (
    CONFIG_NAME,
    PLAN_FILE,
    tensorrt_model_config,
    trtexec_shapes,
    write_fp16_accelerator_config,
    write_tensorrt_config,
)
from export.triton_config import build_model_config, parse_model_config
from taskspec import TASKS, get_task

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("task", sorted(TASKS))
def test_plan_config_keeps_the_onnx_contract_on_the_gpu(task: str, tmp_path: Path) -> None:
    spec = get_task(task)
    path = write_tensorrt_config(spec, tmp_path / task)
    assert path == tmp_path / task / "configs" / f"{CONFIG_NAME}.pbtxt"
    plan = parse_model_config(path.read_text())  # strict: Triton's own schema
    onnx = build_model_config(spec)
    assert plan.platform == "tensorrt_plan" and plan.backend == ""
    assert plan.default_model_filename == PLAN_FILE
    assert [g.kind for g in plan.instance_group] == [mc.ModelInstanceGroup.Kind.KIND_GPU]
    # Same name, tensors, labels and batching: the facade cannot tell which config Triton loaded.
    assert plan.name == onnx.name and plan.max_batch_size == onnx.max_batch_size
    assert list(plan.input) == list(onnx.input) and list(plan.output) == list(onnx.output)
    assert plan.dynamic_batching == onnx.dynamic_batching
    assert not plan.HasField("optimization")


def test_trtexec_shapes_cover_every_batch_size_and_bucket() -> None:
    sentiment = get_task("sentiment")
    assert sentiment.text is not None
    shapes = trtexec_shapes(sentiment)
    low, high = sentiment.text.buckets[0], sentiment.text.buckets[-1]
    assert shapes["min"] == f"input_ids:1x{low},attention_mask:1x{low}"
    assert shapes["max"] == f"input_ids:64x{high},attention_mask:64x{high}"
    pose = trtexec_shapes(get_task("pose"))
    assert pose["min"] == "pixel_values:1x3x224x224"
    assert pose["max"] == f"pixel_values:{get_task('pose').batching.max_batch_size}x3x224x224"


def test_plan_config_for_the_tensorrt_release_only() -> None:
    assert tensorrt_model_config(get_task("disaster")).platform == "tensorrt_plan"
    script = (ROOT / "deploy" / "build_trt_plan.sh").read_text()
    triton = (ROOT / "docker" / "triton.Dockerfile").read_text()
    release = triton.split("tritonserver:", 1)[1].split("-py3", 1)[0]
    # The plan must be built by the TensorRT of the Triton image's own NGC release.
    assert f'RELEASE="${{MTC_NGC_RELEASE:-{release}}}"' in script
    assert subprocess.run(["bash", "-n", str(ROOT / "deploy" / "build_trt_plan.sh")], check=False).returncode == 0


def test_fp16_accelerator_config_is_the_onnx_config_plus_tensorrt_fp16(tmp_path: Path) -> None:
    spec = get_task("sentiment")
    config = parse_model_config(write_fp16_accelerator_config(spec, tmp_path / "sentiment").read_text())
    [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    config.ClearField("optimization")
    assert config == build_model_config(spec)


def test_a_plan_is_published_as_the_next_version_never_added_to_a_published_one(tmp_path: Path) -> None:
    import sys

    from taskspec.manifest import read_manifest, verify_version, write_manifest

    source = tmp_path / "repo" / "pose" / "3"
    source.mkdir(parents=True)
    (source / "model.onnx").write_bytes(b"onnx weights")
    (source / "preprocessing.json").write_text("{}\n")
    before = write_manifest(source)
    (tmp_path / "model.plan").write_bytes(b"engine")
    (tmp_path / "info.json").write_text('{"tensorrt": "10.5"}\n')

    def publish_plan(version: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "deploy.tensorrt", "publish-plan", "pose", "--from-version", str(version)]
        command += ["--plan", str(tmp_path / "model.plan"), "--info", str(tmp_path / "info.json")]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)

    result = publish_plan(source)
    assert result.returncode == 0, result.stderr
    published = Path(result.stdout.strip())
    assert published == source.parent / "4"
    assert read_manifest(source) == before and verify_version(source) == []  # the source is untouched
    assert sorted(read_manifest(published).files) == [
        "model.onnx", "model.plan", "model.plan.json", "preprocessing.json"
    ]  # fmt: skip
    assert verify_version(published) == [] and (published / PLAN_FILE).read_bytes() == b"engine"

    (source / "model.onnx").write_bytes(b"other weights")  # a tampered source is not republished
    refused = publish_plan(source)
    assert refused.returncode == 2 and "does not match its manifest" in refused.stderr
    assert not (source.parent / "5").exists()
