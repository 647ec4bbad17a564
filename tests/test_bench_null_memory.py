"""The memory parameters of the local onnxruntime backend (issue 14, item 3), on a real Triton.

Whether they save memory is a benchmark's question (docs/benchmarks.md, "Facade capacity"); these tests
check that the parameters the config writer emits reach ONNX Runtime: a model with them answers the same,
and a value ONNX Runtime would choke on later fails the load with a message naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from export.triton_config import ARENA_SHRINKAGE, build_model_config, render_model_config
from serving.triton import TritonServer, TritonStartError
from taskspec import SENTIMENT
from tests.conftest import TINY, make_tiny_repository, tiny_weights

pytestmark = pytest.mark.integration


def with_parameters(repository: Path, parameters: dict[str, str]) -> Path:
    config = repository / TINY.name / "config.pbtxt"
    blocks = "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in parameters.items())
    config.write_text(config.read_text() + blocks)
    return repository


def test_a_model_with_arena_shrinkage_answers_like_one_without(tmp_path: Path) -> None:
    repository = with_parameters(make_tiny_repository(tmp_path / "repo"), {ARENA_SHRINKAGE: "cpu:0"})
    weight, bias = tiny_weights()
    rows = np.random.default_rng(2).normal(size=(8, 4)).astype(np.float32)
    with TritonServer.on_free_ports(repository) as server:
        client = httpclient.InferenceServerClient(f"{server.host}:{server.http_port}")
        tensor = httpclient.InferInput("features", [8, 4], "FP32")
        tensor.set_data_from_numpy(rows)
        logits = client.infer("tiny", [tensor]).as_numpy("logits")
        parameters = client.get_model_config("tiny")["parameters"]
        client.close()
    np.testing.assert_allclose(logits, rows @ weight + bias, rtol=1e-5, atol=1e-5)
    assert parameters[ARENA_SHRINKAGE]["string_value"] == "cpu:0"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"enable_mem_arena": "maybe"}, "enable_mem_arena: expected 0, 1, false or true"),
        ({"enable_mem_arena": "0", ARENA_SHRINKAGE: "cpu:0"}, "needs enable_mem_arena"),
    ],
    ids=["not-a-flag", "shrink-without-arena"],
)
def test_a_memory_parameter_onnx_runtime_cannot_honour_fails_the_load(
    tmp_path: Path, parameters: dict[str, str], message: str
) -> None:
    repository = with_parameters(make_tiny_repository(tmp_path / "repo"), parameters)
    with pytest.raises(TritonStartError, match=message), TritonServer.on_free_ports(repository, startup_timeout=120):
        pass


def test_the_cpu_variant_shrinks_the_arena_and_config_pbtxt_keeps_it() -> None:
    cpu = build_model_config(SENTIMENT, cpu=True)
    assert cpu.parameters[ARENA_SHRINKAGE].string_value == "cpu:0"
    assert ARENA_SHRINKAGE in render_model_config(cpu)
    assert ARENA_SHRINKAGE not in build_model_config(SENTIMENT).parameters
