"""A fourth task is one spec and one registry entry: registered from a test module, built through the one
publish path, checked by ``export validate``, known to the command line through ``MTC_TASK_MODULES``."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

import taskspec
from export.errors import RegistryError
from export.recipes import ImageRecipe
from export.registry import (
    ENTRIES,
    TaskEntry,
    entry_for,
    load_dataset,
    recipe_for,
    register_entry,
    unregister_entry,
)
from export.validate import validate_repository
from taskspec import SENTIMENT, TASKS, TaskModuleError, TaskRegistrationError, get_task, load_task_modules, text_tasks

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TOY_MODULES = {"MTC_TASK_MODULES": "tests.support.toy_task"}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "MTC_TASK_MODULES"}
    return subprocess.run(
        [sys.executable, "-m", "export", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**environment, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="module", autouse=True)
def toy() -> Iterator[ModuleType]:
    """tests.support.toy_task, registered for this module's tests only (other tests see the built-ins)."""
    module = importlib.import_module("tests.support.toy_task")  # the first import registers
    taskspec.register(module.WEATHER)  # later ones: register again (a no-op when still there)
    register_entry(module.ENTRY)
    yield module
    unregister_entry("weather")
    taskspec.unregister("weather")


@pytest.fixture(scope="module")
def toy_repository(toy: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy task published (tiny random model, its own held-out split) through the one publish path."""
    repository: Path = toy.publish_toy_repository(tmp_path_factory.mktemp("toy"))
    return repository


def test_the_toy_task_is_known_everywhere_the_exporter_looks(toy: ModuleType, tmp_path: Path) -> None:
    weather, entry = toy.WEATHER, toy.ENTRY
    assert get_task("weather") is weather and weather in text_tasks()
    assert entry_for("weather") is entry and recipe_for("quick", "weather").max_length == 16  # type: ignore[union-attr]
    data = load_dataset("weather", data_dir=tmp_path)  # synthetic rows: no dataset folder needed
    assert len(data.test) == 12 and sorted(set(data.test.labels.tolist())) == [0, 1, 2]


def test_the_toy_task_is_published_with_every_file_validated(toy_repository: Path) -> None:
    assert validate_repository(toy_repository, ["weather"]) == {"weather": []}
    version = toy_repository / "weather" / "1"
    records = json.loads((version / "metrics.json").read_text())["validation"]["files"]
    assert {name: r["passed"] for name, r in records.items()} == {"model.onnx": True, "model.int8.onnx": True}
    assert records["model.int8.onnx"]["test"]["n"] == 12  # its own held-out split
    assert (toy_repository / "weather" / "labels.txt").read_text().split() == ["sunny", "rainy", "snowy"]
    assert (toy_repository / "weather" / "configs" / "cpu.pbtxt").is_file()
    assert (toy_repository / "weather_text" / "1" / "tokenizer.json").is_file()


def test_the_command_line_learns_the_task_from_mtc_task_modules(toy_repository: Path) -> None:
    good = run_cli("validate", "--repository", str(toy_repository), "--tasks", "weather", env=TOY_MODULES)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.split() == ["weather:", "ok"]
    unknown = run_cli("validate", "--repository", str(toy_repository), "--tasks", "weather")
    assert unknown.returncode == 2 and "unknown task(s) weather" in unknown.stderr
    broken = run_cli("validate", env={"MTC_TASK_MODULES": "tests.support.no_such_module"})
    assert broken.returncode == 2
    assert broken.stderr.strip().splitlines() == [
        "error: MTC_TASK_MODULES: cannot import 'tests.support.no_such_module': No module named "
        "'tests.support.no_such_module'"
    ]


def test_registration_refuses_clashes_and_unsafe_names(toy: ModuleType) -> None:
    weather = toy.WEATHER
    assert taskspec.register(weather) is weather  # importing the module twice is harmless
    with pytest.raises(TaskRegistrationError, match="already registered"):
        taskspec.register(replace(SENTIMENT, title="Another sentiment"))
    for name in ("Weather", "../weather", "weather/x", "w" * 49, "sentiment_text", "rain_text", ""):
        with pytest.raises(TaskRegistrationError, match="cannot register"):
            taskspec.register(replace(weather, name=name))
    with pytest.raises(TaskRegistrationError, match=r"output dims \(3,\) do not match 2 labels"):
        taskspec.register(replace(weather, name="rain", labels=("a", "b")))
    with pytest.raises(TaskRegistrationError, match="built-in"):
        taskspec.unregister("sentiment")
    assert "rain" not in TASKS
    with pytest.raises(TaskModuleError, match="not a dotted Python module name"):
        load_task_modules("tests.support.toy_task, /tmp/evil.py")
    assert load_task_modules("") == [] and load_task_modules(["tests.support.toy_task"]) == ["tests.support.toy_task"]


def test_an_entry_needs_a_known_task_and_recipes_of_its_modality(toy: ModuleType) -> None:
    weather, entry = toy.WEATHER, toy.ENTRY
    with pytest.raises(RegistryError, match="unknown task 'hail'"):
        register_entry(replace(entry, task="hail"))
    with pytest.raises(RegistryError, match="already has a registry entry"):
        register_entry(replace(entry, checkpoint="elsewhere"))
    assert ENTRIES["weather"] is entry
    image_recipe = ImageRecipe(val_fraction=0.1, epochs=1, batch_size=8, lr=1e-3, weight_decay=0.0,
                               label_smoothing=0.0, dropout=0.0)  # fmt: skip
    taskspec.register(replace(weather, name="hail"))
    try:
        with pytest.raises(RegistryError, match="has no export registry entry"):
            entry_for("hail")
        with pytest.raises(RegistryError, match="give a TextRecipe for every profile"):
            register_entry(TaskEntry("hail", local=entry.local, recipes={"quick": image_recipe}))
        assert "hail" not in ENTRIES
    finally:
        taskspec.unregister("hail")


@pytest.mark.slow
def test_export_build_trains_and_publishes_the_toy_task(tmp_path: Path) -> None:
    """The real build (MiniLM fine-tuned on the synthetic rows, about a minute on 2 cores): nothing but the
    spec and the registry entry tells it about the task."""
    result = run_cli("build", "--tasks", "weather", "--repository", str(tmp_path), "--no-progress", env=TOY_MODULES)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "weather: test accuracy" in result.stdout
    metrics = json.loads((tmp_path / "weather" / "1" / "metrics.json").read_text())
    assert metrics["profile"] == "quick" and metrics["test"]["n"] == 12
    assert all(record["passed"] for record in metrics["validation"]["files"].values())
    check = run_cli("validate", "--repository", str(tmp_path), "--tasks", "weather", env=TOY_MODULES)
    assert check.returncode == 0, check.stdout


@pytest.mark.integration
def test_a_real_triton_serves_the_toy_task_as_published(toy: ModuleType, toy_repository: Path) -> None:
    """The serving half of the exporter's contract: Triton loads the toy task's token model (its CPU config,
    int8) and its raw-text model, which answers with one of the spec's labels."""
    import numpy as np
    import tritonclient.http as httpclient

    from serving.triton import TritonServer

    with TritonServer.on_free_ports(toy_repository) as server:
        client = httpclient.InferenceServerClient(f"{server.host}:{server.http_port}")
        index = {m["name"]: m.get("state") for m in client.get_model_repository_index()}
        assert index == {"weather": "READY", "weather_text": "READY"}
        assert client.get_model_config("weather")["default_model_filename"] == "model.int8.onnx"
        text = httpclient.InferInput("text", [2, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"Snow drifts on the pass"], [b"Sunshine all day"]], dtype=object))
        outputs = [httpclient.InferRequestedOutput(n) for n in ("label", "probabilities")]
        result = client.infer("weather_text", [text], outputs=outputs)
    labels = [label.decode() for label in result.as_numpy("label").reshape(-1)]
    assert all(label in toy.WEATHER.labels for label in labels) and len(labels) == 2
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, atol=1e-5)
