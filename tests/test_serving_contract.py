"""The model-repository contract: every config.pbtxt parses strictly and matches the task spec."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.triton_config import (
    build_model_config,
    check_model_config,
    cpu_config_path,
    parse_model_config,
    read_model_config,
    render_model_config,
    write_model_config,
)
from serving.triton import PROJECT_ROOT
from taskspec import INT8_MODEL_FILE, TASKS, TaskSpec, get_task

REPOSITORY = PROJECT_ROOT / "model_repository"
ALL_CONFIGS = sorted(REPOSITORY.glob("*/config.pbtxt"))


def test_every_task_has_a_committed_config() -> None:
    assert {p.parent.name for p in ALL_CONFIGS} >= set(TASKS)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.parent.name)
def test_config_parses_strictly_with_tritons_schema(path: Path) -> None:
    config = parse_model_config(path.read_text())
    assert config.name == path.parent.name
    assert config.max_batch_size > 0, "max_batch_size must be explicit"
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    if config.backend == "onnxruntime":  # the raw-text Python models batch whatever arrives
        assert list(config.dynamic_batching.preferred_batch_size)
    for output in config.output:
        if output.label_filename:
            assert (path.parent / output.label_filename).is_file()


@pytest.mark.parametrize("spec", TASKS.values(), ids=lambda s: s.name)
def test_committed_config_matches_the_task_spec(spec: TaskSpec) -> None:
    assert check_model_config(spec, REPOSITORY / spec.name) == []
    committed = read_model_config(REPOSITORY / spec.name)
    assert committed == build_model_config(spec), "regenerate with export.triton_config.write_model_config"


@pytest.mark.parametrize("spec", TASKS.values(), ids=lambda s: s.name)
def test_generated_config_targets_both_servers(spec: TaskSpec) -> None:
    config = build_model_config(spec)
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert [g.kind for g in config.instance_group] == [0]  # KIND_AUTO: GPU when present, CPU otherwise
    assert config.instance_group[0].count >= 1  # explicit: the onnxruntime backend would default to 2 on CPU
    assert [i.name for i in config.input] == list(spec.input_names)
    assert config.output[0].dims == [spec.num_labels]


@pytest.mark.parametrize("spec", TASKS.values(), ids=lambda s: s.name)
def test_committed_cpu_config_matches_the_task_spec(spec: TaskSpec) -> None:
    path = cpu_config_path(REPOSITORY / spec.name)
    if spec.cpu is None:
        assert not path.exists(), "a CPU config without TaskSpec.cpu: remove it"
        return
    committed = parse_model_config(path.read_text())
    assert committed == build_model_config(spec, cpu=True), "regenerate with export.triton_config.write_model_config"
    # The same model to clients (tensors, batching), another file and placement.
    default = build_model_config(spec)
    assert committed.input == default.input and committed.output == default.output
    assert committed.dynamic_batching == default.dynamic_batching
    assert committed.default_model_filename == spec.cpu.model_file == INT8_MODEL_FILE
    [group] = committed.instance_group
    assert group.kind == mc.ModelInstanceGroup.Kind.KIND_CPU and group.count == spec.cpu.instance_count
    assert committed.parameters["intra_op_thread_count"].string_value == str(spec.cpu.intra_op_threads)


def test_cpu_config_needs_a_cpu_variant() -> None:
    with pytest.raises(ValueError, match="no CPU serving variant"):
        build_model_config(get_task("pose"), cpu=True)


def test_strict_parse_rejects_unknown_fields_and_enum_values() -> None:
    text = render_model_config(build_model_config(get_task("sentiment")))
    with pytest.raises(text_format.ParseError):
        parse_model_config(text + "\nmax_batch_sise: 4\n")
    with pytest.raises(text_format.ParseError):
        parse_model_config(text.replace("TYPE_INT64", "TYPE_INT65", 1))


def test_check_reports_a_renamed_tensor(tmp_path: Path) -> None:
    spec = get_task("disaster")
    write_model_config(spec, tmp_path / spec.name)
    config_path = tmp_path / spec.name / "config.pbtxt"
    config_path.write_text(config_path.read_text().replace('"input_ids"', '"ids"'))
    problems = check_model_config(spec, tmp_path / spec.name)
    assert problems and "inputs" in problems[0]


def test_tensorrt_accelerator_is_optional_and_valid() -> None:
    config = build_model_config(get_task("pose"), tensorrt_fp16=True)
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert parse_model_config(render_model_config(config)) == config


def test_unknown_task_error_lists_known_tasks() -> None:
    with pytest.raises(KeyError, match="known tasks: disaster, disaster_tiny, pose, sentiment, sentiment_tiny"):
        get_task("sentimnet")


def test_cpu_only_launcher_asks_for_the_cpu_configs(tmp_path: Path) -> None:
    from serving.triton import TritonInstall, TritonServer

    install = TritonInstall(tmp_path, tmp_path / "server", tmp_path / "libs", "/usr/lib", "3.11")

    def config_flags(server: TritonServer) -> list[str]:
        return [a for a in server.command(install, tmp_path / "backends") if a.startswith("--model-config-name")]

    assert config_flags(TritonServer(str(tmp_path))) == ["--model-config-name=cpu"]
    assert config_flags(TritonServer(str(tmp_path), model_config_name="")) == []
    assert config_flags(TritonServer(str(tmp_path), model_config_name="gpu")) == ["--model-config-name=gpu"]
    assert config_flags(TritonServer(str(tmp_path), cpu_only=False)) == []


def test_make_run_rebuilds_text_models_published_without_their_cpu_file(tmp_path: Path) -> None:
    from serving.stack import missing_models

    repository = tmp_path / "model_repository"
    for task in TASKS:
        (repository / task / "1").mkdir(parents=True)
        (repository / task / "1" / "model.onnx").write_bytes(b"weights")
    for variant in ("sentiment_tiny", "disaster_tiny"):
        (repository / variant / "1" / INT8_MODEL_FILE).write_bytes(b"int8")
    # Text versions published before the CPU variant existed: Triton on a CPU host could not load them.
    assert missing_models(repository) == ["sentiment", "disaster"]
    (repository / "sentiment" / "1" / INT8_MODEL_FILE).write_bytes(b"int8")
    assert missing_models(repository) == ["disaster"]
    (repository / "disaster" / "2").mkdir()
    (repository / "disaster" / "2" / "model.onnx").write_bytes(b"weights")
    (repository / "disaster" / "2" / INT8_MODEL_FILE).write_bytes(b"int8")
    assert missing_models(repository) == []
    # A missing tiny variant is distilled from its task's trained checkpoint: without one, the task is rebuilt first.
    shutil.rmtree(repository / "sentiment_tiny")
    assert missing_models(repository) == ["sentiment", "sentiment_tiny"]
    (tmp_path / "checkpoints" / "sentiment" / "1").mkdir(parents=True)
    (tmp_path / "checkpoints" / "sentiment" / "1" / "config.json").write_text("{}")
    assert missing_models(repository) == ["sentiment_tiny"]


@pytest.mark.parametrize("path", ALL_CONFIGS + sorted(REPOSITORY.glob("*/configs/*.pbtxt")), ids=str)
def test_every_committed_config_bounds_its_queue_and_rejects_stale_work(path: Path) -> None:
    """Work the facade gave up on (its deadline is 10 s) must be dropped by Triton, not run."""
    policy = parse_model_config(path.read_text()).dynamic_batching.default_queue_policy
    assert policy.timeout_action == mc.ModelQueuePolicy.TimeoutAction.REJECT
    assert 0 < policy.default_timeout_microseconds <= 10_000_000
    assert policy.allow_timeout_override, "the facade passes its remaining deadline per request"
    assert 0 < policy.max_queue_size <= 4 * parse_model_config(path.read_text()).max_batch_size


@pytest.mark.parametrize("spec", TASKS.values(), ids=lambda s: s.name)
def test_generated_text_spells_out_the_queue_policy(spec: TaskSpec) -> None:
    expected = (
        "  default_queue_policy {\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {spec.batching.queue_timeout_us}\n"
        "    allow_timeout_override: true\n"
        f"    max_queue_size: {spec.batching.max_queue_size}\n"
        "  }\n"
    )
    configs = [build_model_config(spec)] + ([build_model_config(spec, cpu=True)] if spec.cpu else [])
    if spec.modality == "text":
        from export.raw_text import build_raw_text_config

        configs.append(build_raw_text_config(spec))
    for config in configs:
        text = render_model_config(config)
        assert expected in text.split("dynamic_batching {\n", 1)[1]
        assert parse_model_config(text) == config


def test_queue_policy_comes_from_the_task_spec() -> None:
    import dataclasses

    spec = get_task("pose")
    assert (spec.batching.max_queue_size, spec.batching.queue_timeout_us) == (64, 10_000_000)
    assert get_task("sentiment").batching.max_queue_size == 256
    changed = dataclasses.replace(
        spec, batching=dataclasses.replace(spec.batching, max_queue_size=8, queue_timeout_us=2_000_000)
    )
    policy = build_model_config(changed).dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (8, 2_000_000)
    with pytest.raises(ValueError, match="0 means unbounded"):
        dataclasses.replace(spec.batching, max_queue_size=0)


def test_check_reports_a_config_without_the_queue_policy(tmp_path: Path) -> None:
    spec = get_task("pose")
    write_model_config(spec, tmp_path / spec.name)
    config_path = tmp_path / spec.name / "config.pbtxt"
    config_path.write_text(config_path.read_text().replace("max_queue_size: 64", "max_queue_size: 0"))
    assert [p for p in check_model_config(spec, tmp_path / spec.name) if "default_queue_policy" in p]


@pytest.mark.parametrize("path", ALL_CONFIGS + sorted(REPOSITORY.glob("*/configs/*.pbtxt")), ids=str)
def test_every_committed_config_serves_interactive_requests_before_batch_jobs(path: Path) -> None:
    """Two priority levels: requests without one (the facade's) are level 1, batch jobs send level 2."""
    config = parse_model_config(path.read_text())
    batching = config.dynamic_batching
    assert (batching.priority_levels, batching.default_priority_level) == (2, 1)
    assert list(batching.priority_queue_policy) == [2], "interactive requests keep default_queue_policy"
    batch = batching.priority_queue_policy[2]
    assert batch.timeout_action == mc.ModelQueuePolicy.TimeoutAction.REJECT
    assert batch.default_timeout_microseconds == 30_000_000, "the batch runner's deadline (MTC_BATCH_TRITON_TIMEOUT_S)"
    assert batch.allow_timeout_override, "the batch runner passes its remaining deadline per request"
    assert batch.max_queue_size == 2 * config.max_batch_size


@pytest.mark.parametrize("spec", TASKS.values(), ids=lambda s: s.name)
def test_generated_text_spells_out_the_batch_queue_policy(spec: TaskSpec) -> None:
    expected = (
        "  priority_levels: 2\n  default_priority_level: 1\n  default_queue_policy {\n    timeout_action: REJECT\n"
    )
    batch_policy = (
        "  priority_queue_policy {\n"
        "    key: 2\n"
        "    value {\n"
        "      timeout_action: REJECT\n"
        "      default_timeout_microseconds: 30000000\n"
        "      allow_timeout_override: true\n"
        f"      max_queue_size: {spec.batching.batch_queue_size}\n"
        "    }\n"
        "  }\n"
    )
    text = render_model_config(build_model_config(spec))
    assert expected in text and batch_policy in text
    assert parse_model_config(text) == build_model_config(spec)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("  priority_levels: 2\n", "", "priority_levels"),
        ("  default_priority_level: 1\n", "  default_priority_level: 2\n", "priority_levels"),
        ("      max_queue_size: 32\n", "      max_queue_size: 0\n", "priority_queue_policy"),
        ("    key: 2\n", "    key: 1\n", "priority_queue_policy"),
    ],
)
def test_check_reports_a_config_without_the_spec_priorities(tmp_path: Path, old: str, new: str, problem: str) -> None:
    spec = get_task("pose")
    write_model_config(spec, tmp_path / spec.name)
    config_path = tmp_path / spec.name / "config.pbtxt"
    text = config_path.read_text()
    assert old in text
    config_path.write_text(text.replace(old, new, 1))
    assert [p for p in check_model_config(spec, tmp_path / spec.name) if problem in p]
