"""The tiny models, published through the real export path, are served by a real Triton and match PyTorch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from export.models import TinyCNN, tiny_bert
from export.pipeline import text_batch
from export.triton_config import check_model_config
from frontend_api.settings import ApiSettings
from frontend_api.triton_client import TritonHttpClient, make_triton_client
from serving.triton import TritonServer
from taskspec import BATCH_PRIORITY, DISASTER, POSE, SENTIMENT, get_task
from tests.support.tiny_models import build_tiny_repository, default_tokenizer_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repository(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[TritonServer]:
    with TritonServer.on_free_ports(repository) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: TritonServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(f"{server.host}:{server.http_port}")


def _infer(client: httpclient.InferenceServerClient, model: str, feeds: dict[str, np.ndarray], outputs: list[str]):
    inputs = []
    for name, value in feeds.items():
        wire = "BYTES" if value.dtype == object else {"int64": "INT64", "float32": "FP32"}[str(value.dtype)]
        tensor = httpclient.InferInput(name, list(value.shape), wire)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(n) for n in outputs])
    return [result.as_numpy(n) for n in outputs]


def test_every_published_model_is_ready_and_its_config_matches_the_spec(repository: Path, client) -> None:
    tasks = [get_task(name) for name in ("sentiment", "disaster", "pose", "sentiment_tiny", "disaster_tiny")]
    raw_text = [spec.raw_text_model_name for spec in tasks if spec.text is not None]
    index = {m["name"]: m.get("state") for m in client.get_model_repository_index()}
    assert index == {name: "READY" for name in [spec.name for spec in tasks] + raw_text}
    assert "sentiment_tiny_text" in index
    for spec in tasks:
        assert check_model_config(spec, repository / spec.name) == []


def test_cpu_server_loads_the_cpu_variant_of_the_text_models_only(client) -> None:
    for spec in (SENTIMENT, DISASTER):
        assert spec.cpu is not None
        config = client.get_model_config(spec.name)
        assert config["default_model_filename"] == spec.cpu.model_file
        assert config["instance_group"][0]["count"] == spec.cpu.instance_count
        assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert client.get_model_config("pose")["default_model_filename"] == "model.onnx"
    # labels.txt (model folder) is still found from configs/cpu.pbtxt: the classification extension works.
    batch = text_batch(default_tokenizer_dir(), ["a wonderful film"], 16)
    inputs = []
    for name, value in batch.items():
        inputs.append(httpclient.InferInput(name, list(value.shape), "INT64"))
        inputs[-1].set_data_from_numpy(value)
    result = client.infer("disaster", inputs, outputs=[httpclient.InferRequestedOutput("logits", class_count=1)])
    [[top]] = result.as_numpy("logits")
    assert top.decode().split(":")[-1] in DISASTER.labels


def test_triton_text_logits_are_the_int8_files_and_close_to_pytorch(repository: Path, client) -> None:
    import onnxruntime as ort

    batch = text_batch(default_tokenizer_dir(), ["a wonderful film", "dull and far too long", "meh"], 64)
    (logits,) = _infer(client, "sentiment", batch, ["logits"])
    assert SENTIMENT.cpu is not None
    int8_file = repository / "sentiment" / "1" / SENTIMENT.cpu.model_file
    session = ort.InferenceSession(str(int8_file), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(logits, session.run(["logits"], batch)[0], atol=1e-4)
    with torch.no_grad():
        expected = tiny_bert(2, seed=0)(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    np.testing.assert_allclose(logits, expected, atol=0.05)  # int8 rounding; model.onnx itself is checked at 1e-3


def test_triton_image_logits_match_pytorch(client) -> None:
    pixels = np.random.default_rng(1).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    (logits,) = _infer(client, "pose", {"pixel_values": pixels}, ["logits"])
    with torch.no_grad():
        expected = TinyCNN(POSE.num_labels, seed=0)(torch.from_numpy(pixels)).numpy()
    assert logits.shape == (2, 15)
    np.testing.assert_allclose(logits, expected, atol=POSE.export_atol)


def test_raw_text_model_classifies_utf8_strings_like_the_token_model(client) -> None:
    texts = ["Forest fire near La Ronge Sask. Canada", "I love this new album, it's fire!!", "Zürich — naïve café ☕"]
    raw = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
    labels, probabilities = _infer(client, "disaster_text", {"text": raw}, ["label", "probabilities"])
    # The raw-text model pads the batch to the bucket of its longest row; padding does not change logits.
    batch = text_batch(default_tokenizer_dir(), texts, 32)
    with torch.no_grad():
        logits = tiny_bert(2, seed=0)(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    names = np.array(DISASTER.labels)[expected.argmax(axis=1)]
    assert [label.decode() for label in labels.reshape(-1)] == list(names)


def test_raw_text_model_truncates_very_long_text(client) -> None:
    raw = np.array([[("word " * 2000).encode()]], dtype=object)
    labels, probabilities = _infer(client, "sentiment_text", {"text": raw}, ["label", "probabilities"])
    assert labels.reshape(-1)[0].decode() in SENTIMENT.labels
    assert probabilities.shape == (1, 2)


def test_raw_text_example_over_grpc_defaults_to_the_grpc_port(server: TritonServer) -> None:
    """examples/tritonclient_raw_text.py: --protocol grpc without --url must not dial the HTTP port, and the
    gRPC path classifies like the HTTP one."""
    import importlib.util

    from serving.triton import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location(
        "raw_text_example", PROJECT_ROOT / "examples" / "tritonclient_raw_text.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.DEFAULT_URLS == {"http": "localhost:8000", "grpc": "localhost:8001"}
    ((label, probabilities),) = example.classify(server.grpc_url, "disaster", ["Forest fire near La Ronge"], "grpc")
    assert label in DISASTER.labels
    assert set(probabilities) == set(DISASTER.labels)
    assert abs(sum(probabilities.values()) - 1.0) < 1e-4


def test_models_have_two_priority_levels_and_answer_batch_and_interactive_requests(
    server: TritonServer, client
) -> None:
    """Triton 2.51 loads the generated priority levels (ONNX CPU variant, fp32 config, Python raw-text model) and
    answers a batch job's request (priority 2, as ``batch`` sends it) like an interactive one (no priority)."""
    for model in ("sentiment", "disaster", "pose", "sentiment_text"):
        batching = client.get_model_config(model)["dynamic_batching"]
        assert (batching["priority_levels"], batching["default_priority_level"]) == (2, 1), model
        assert list(batching["priority_queue_policy"]) == ["2"], model
        assert batching["priority_queue_policy"]["2"]["timeout_action"] == "REJECT", model
    batch = text_batch(default_tokenizer_dir(), ["a wonderful film", "dull and far too long"], 16)
    pixels = np.random.default_rng(2).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)

    async def both(model: str, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        triton = TritonHttpClient(f"{server.host}:{server.http_port}", timeout_s=30)
        try:
            interactive = await triton.infer(model, "", inputs, "logits")
            low = await triton.infer(model, "", inputs, "logits", priority=BATCH_PRIORITY)
        finally:
            await triton.close()
        return interactive.logits, low.logits

    for model, inputs in (("sentiment", batch), ("pose", {"pixel_values": pixels})):
        interactive, low = asyncio.run(both(model, inputs))
        assert interactive.shape == (len(next(iter(inputs.values()))), get_task(model).num_labels)
        np.testing.assert_array_equal(low, interactive)
    # ...and over the raw protocol too, on the Python-backend model.
    raw = np.array([[b"a wonderful film"]], dtype=object)
    tensor = httpclient.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(raw)
    labels = [client.infer("sentiment_text", [tensor], priority=p).as_numpy("label") for p in (0, BATCH_PRIORITY)]
    assert labels[0] == labels[1] and labels[0].reshape(-1)[0].decode() in SENTIMENT.labels


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_statistics_of_one_model_or_of_all(server: TritonServer, protocol: str) -> None:
    """``statistics(model)`` asks Triton for that model's rows only (what a batch worker's pacer reads twice a
    second), ``statistics()`` for every loaded model; a request just answered is counted."""
    batch = text_batch(default_tokenizer_dir(), ["a wonderful film"], 16)

    settings = ApiSettings(
        triton_protocol=protocol,
        triton_url=f"{server.host}:{server.http_port}",
        triton_grpc_url=f"{server.host}:{server.grpc_port}",
    )

    async def read() -> tuple[int, list[str], list[str]]:
        triton = make_triton_client(settings)
        try:
            before = sum(s.success_count for s in await triton.statistics("sentiment"))
            await triton.infer("sentiment", "", batch, "logits")
            one = await triton.statistics("sentiment")
            every = await triton.statistics()
        finally:
            await triton.close()
        return sum(s.success_count for s in one) - before, [s.name for s in one], [s.name for s in every]

    answered, one, every = asyncio.run(read())
    assert answered == 1
    assert one and set(one) == {"sentiment"}
    assert {"sentiment", "disaster", "pose"} <= set(every)
