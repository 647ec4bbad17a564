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


def test_a_plan_is_published_only_once_it_passes_its_check_on_held_out_data(tmp_path: Path) -> None:
    """publish-plan goes through the exporter's one publish path: the plan must run on the task's held-out
    split and reach taskspec.TENSORRT_FLOOR first. Without TensorRT (this machine) nothing is published.
    The derived-version mechanics themselves are tested in test_export_validation.py."""
    import sys

    from export.data import resolve_data_dir
    from export.models import tiny_bert
    from export.pipeline import export_validate_publish
    from tests.support.tiny_models import default_tokenizer_dir, publish_tiny_model, tiny_text_split

    repo = tmp_path / "repo"
    (tmp_path / "model.plan").write_bytes(b"engine")
    (tmp_path / "info.json").write_text('{"tensorrt": "10.5"}\n')

    def publish_plan(version: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "deploy.tensorrt", "publish-plan", "disaster", "--from-version", str(version)]
        command += ["--plan", str(tmp_path / "model.plan"), "--info", str(tmp_path / "info.json")]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)

    tiny = publish_tiny_model(get_task("disaster"), repo).version_dir  # profile "tiny": no held-out split to use
    refused = publish_plan(tiny)
    assert refused.returncode == 2 and "does not say which profile and seed built it" in refused.stderr
    if not (resolve_data_dir() / "disaster_tweets").is_dir():
        pytest.skip("shared datasets not found: the held-out tweets are needed for the next step")
    quick = export_validate_publish(
        tiny_bert(2), get_task("disaster"), held_out=tiny_text_split(get_task("disaster")), repository=repo,
        tokenizer_dir=default_tokenizer_dir(), metrics={"profile": "quick", "seed": 0},
    ).version_dir  # fmt: skip
    refused = publish_plan(quick)
    assert refused.returncode == 2 and "needs the tensorrt Python package" in refused.stderr, refused.stderr
    assert sorted(p.name for p in (repo / "disaster").iterdir() if p.name.isdigit()) == ["1", "2"]
