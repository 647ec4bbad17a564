"""A fourth task served end to end through the facade with no edit to the facade: one task spec and one export
registry entry (tests/support/toy_task.py), published through the one publish path, served by a real Triton,
and learnt by a real ``python -m frontend_api`` from ``MTC_TASK_MODULES`` alone."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import onnxruntime as ort
import pytest

import taskspec
from bench.servers import facade_process
from export.registry import register_entry, unregister_entry
from preprocess.probabilities import softmax
from preprocess.text import TextEncoder
from serving.triton import TritonServer
from taskspec import MODEL_FILE, TASK_MODULES_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOY_MODULE = "tests.support.toy_task"


@pytest.fixture(scope="module")
def toy() -> Iterator[ModuleType]:
    """The toy task registered in this process (to publish it) for this module only; the facade learns it on
    its own, from MTC_TASK_MODULES."""
    module = importlib.import_module(TOY_MODULE)
    taskspec.register(module.WEATHER)
    register_entry(module.ENTRY)
    yield module
    unregister_entry(module.WEATHER.name)
    taskspec.unregister(module.WEATHER.name)


@pytest.fixture(scope="module")
def served(toy: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The published toy repository behind a real Triton and the real facade; yields (facade URL, repository)."""
    root = tmp_path_factory.mktemp("toy-facade")
    repository: Path = toy.publish_toy_repository(root)
    with TritonServer.on_free_ports(repository, log_file=root / "triton.log", startup_timeout=180) as triton:
        # The task module is the only thing that tells the facade about the task.
        facade, url = facade_process(
            triton, repository, root, extra_env={TASK_MODULES_ENV: TOY_MODULE}, ready_path="/healthz"
        )
        with facade:
            yield url, repository


def test_the_toy_task_is_listed_classified_and_documented_by_the_facade(
    toy: ModuleType, served: tuple[str, Path]
) -> None:
    url, repository = served
    spec = toy.WEATHER
    texts = [*spec.examples, "Today we expect snow drifts everywhere downtown."]
    with httpx.Client(base_url=url, timeout=60) as client:
        models = {m["task"]: m for m in client.get("/v1/models").json()["models"]}
        response = client.post(f"/v1/{spec.name}", json={"texts": texts})
        too_many = client.post(f"/v1/{spec.name}", json={"texts": ["rain"] * (spec.batching.max_batch_size + 1)})
        schema = client.get("/openapi.json").json()

    # listed beside the built-ins (which this Triton does not serve), with the served version's labels
    assert list(models) == [*(t.name for t in taskspec.BUILTIN_TASKS), spec.name]
    weather = models[spec.name]
    assert weather["ready"] is True and weather["version"] == "1"
    assert weather["labels"] == list(spec.labels)
    assert (weather["max_items"], weather["max_tokens"], weather["examples"]) == (
        spec.batching.max_batch_size,
        spec.text.max_length,
        list(spec.examples),
    )
    assert not any(models[t.name]["ready"] for t in taskspec.BUILTIN_TASKS)

    # classified: the labels of the spec, and the probabilities ONNX Runtime gives for the same token ids
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == spec.name and body["model"] == {"name": spec.model_name, "version": "1"}
    version_dir = repository / spec.name / "1"
    feeds = TextEncoder.from_version_dir(version_dir).batch(texts).inputs(spec.input_names)
    session = ort.InferenceSession(str(version_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    # Triton serves the int8 file (configs/cpu.pbtxt) on this CPU host: compare with model.onnx loosely
    expected = softmax(np.asarray(session.run([spec.output.name], feeds)[0]))
    for prediction, row in zip(body["predictions"], expected, strict=True):
        assert prediction["label"] in spec.labels
        assert list(prediction["probabilities"]) == list(spec.labels)
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(list(prediction["probabilities"].values()), row, atol=0.05)

    # its limits and its route come from its spec
    assert too_many.status_code == 422
    operation = schema["paths"][f"/v1/{spec.name}"]["post"]
    assert operation["operationId"] == f"classify_{spec.name}"
    body_schema = schema["components"]["schemas"]["WeatherRequest"]
    assert body_schema["properties"]["texts"]["maxItems"] == spec.batching.max_batch_size
