"""The memory parameters of the local onnxruntime backend (issue 14, item 3), on a real Triton.

Whether they save memory is a benchmark's question (docs/benchmarks.md, "Facade capacity"); these tests
check that the parameters the config writer emits reach ONNX Runtime: a model with them answers the same,
and a value ONNX Runtime would choke on later fails the load with a message naming it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from export.triton_config import (
    ARENA_SHRINKAGE,
    MALLOC_TRIM_INTERVAL,
    MAX_ROWS_PER_CPU_RUN,
    build_model_config,
    render_model_config,
)
from serving.triton import TritonServer, TritonStartError
from taskspec import BUILTIN_TASKS, POSE, SENTIMENT
from tests.conftest import TINY, make_tiny_repository, tiny_weights

pytestmark = pytest.mark.integration


def with_parameters(repository: Path, parameters: dict[str, str]) -> Path:
    config = repository / TINY.name / "config.pbtxt"
    blocks = "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in parameters.items())
    config.write_text(config.read_text() + blocks)
    return repository


def test_a_model_with_arena_shrinkage_heap_trimming_and_short_runs_answers_like_one_without(tmp_path: Path) -> None:
    repository = with_parameters(
        make_tiny_repository(tmp_path / "repo"),
        {ARENA_SHRINKAGE: "cpu:0", MALLOC_TRIM_INTERVAL: "0.05", MAX_ROWS_PER_CPU_RUN: "3"},
    )
    weight, bias = tiny_weights()
    rows = np.random.default_rng(2).normal(size=(8, 4)).astype(np.float32)
    with TritonServer.on_free_ports(repository) as server:
        client = httpclient.InferenceServerClient(f"{server.host}:{server.http_port}")
        tensor = httpclient.InferInput("features", [8, 4], "FP32")
        tensor.set_data_from_numpy(rows)
        logits = client.infer("tiny", [tensor]).as_numpy("logits")
        time.sleep(0.2)  # the stub trims its heap meanwhile; the next answer is the same
        again = client.infer("tiny", [tensor]).as_numpy("logits")
        parameters = client.get_model_config("tiny")["parameters"]
        client.close()
    np.testing.assert_allclose(logits, rows @ weight + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(again, logits)
    assert parameters[ARENA_SHRINKAGE]["string_value"] == "cpu:0"
    assert parameters[MALLOC_TRIM_INTERVAL]["string_value"] == "0.05"
    assert parameters[MAX_ROWS_PER_CPU_RUN]["string_value"] == "3"  # 8 rows: runs of 3, 3 and 2, answered as one


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"enable_mem_arena": "maybe"}, "enable_mem_arena: expected 0, 1, false or true"),
        ({"enable_mem_arena": "0", ARENA_SHRINKAGE: "cpu:0"}, "needs enable_mem_arena"),
        ({MALLOC_TRIM_INTERVAL: "often"}, "malloc_trim_interval_s: expected seconds"),
        ({MALLOC_TRIM_INTERVAL: "0"}, "malloc_trim_interval_s: expected seconds"),
        ({MAX_ROWS_PER_CPU_RUN: "0"}, "max_rows_per_cpu_run: expected a positive integer"),
    ],
    ids=["not-a-flag", "shrink-without-arena", "trim-not-a-number", "trim-zero", "rows-zero"],
)
def test_a_memory_parameter_onnx_runtime_cannot_honour_fails_the_load(
    tmp_path: Path, parameters: dict[str, str], message: str
) -> None:
    repository = with_parameters(make_tiny_repository(tmp_path / "repo"), parameters)
    with pytest.raises(TritonStartError, match=message), TritonServer.on_free_ports(repository, startup_timeout=120):
        pass


def test_the_cpu_variant_shrinks_the_arena_and_trims_the_heap_and_config_pbtxt_does_neither() -> None:
    cpu = build_model_config(SENTIMENT, cpu=True)
    assert cpu.parameters[ARENA_SHRINKAGE].string_value == "cpu:0"
    assert cpu.parameters[MALLOC_TRIM_INTERVAL].string_value == "1"
    assert ARENA_SHRINKAGE in render_model_config(cpu)
    assert ARENA_SHRINKAGE not in build_model_config(SENTIMENT).parameters
    assert MALLOC_TRIM_INTERVAL not in build_model_config(SENTIMENT).parameters


def test_pose_runs_at_most_four_photos_per_cpu_call_in_every_config_and_no_text_task_splits() -> None:
    assert build_model_config(POSE).parameters[MAX_ROWS_PER_CPU_RUN].string_value == "4"
    for spec in BUILTIN_TASKS:
        configs = [build_model_config(spec)] + ([build_model_config(spec, cpu=True)] if spec.cpu else [])
        for config in configs:
            assert (MAX_ROWS_PER_CPU_RUN in config.parameters) == (spec.max_rows_per_cpu_run is not None)
    assert SENTIMENT.max_rows_per_cpu_run is None


def test_bench_arena_variants_differ_only_in_the_shrinkage_parameter(tmp_path: Path) -> None:
    from bench.arena import write_variant
    from export.triton_config import cpu_config_path, parse_model_config, write_model_config

    source = tmp_path / "source"
    write_model_config(SENTIMENT, source / "sentiment")
    (source / "sentiment" / "1").mkdir()
    (source / "sentiment" / "1" / "model.int8.onnx").write_bytes(b"weights")
    for shrinkage in (None, "cpu:0"):
        target = tmp_path / str(shrinkage)
        write_variant(source, target, ["sentiment"], shrinkage)
        assert (target / "sentiment" / "1" / "model.int8.onnx").read_bytes() == b"weights"
        for name in ("config.pbtxt", "configs/cpu.pbtxt"):
            config = parse_model_config((target / "sentiment" / name).read_text())
            original = parse_model_config((source / "sentiment" / name).read_text())
            got = config.parameters[ARENA_SHRINKAGE].string_value if ARENA_SHRINKAGE in config.parameters else None
            assert got == shrinkage
            config.parameters.pop(ARENA_SHRINKAGE, None)
            original.parameters.pop(ARENA_SHRINKAGE, None)
            assert config == original
    assert cpu_config_path(tmp_path / "None" / "sentiment").is_file()
