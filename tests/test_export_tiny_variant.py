"""The distilled tiny text variants: declared once (a variant spec of its parent), a student made by layer
selection and trained on the teacher's logits, exported, validated and published through the one path."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.build import BuildOptions, build, find_teacher
from export.data import resolve_data_dir
from export.errors import CheckpointError, ExportError, RegistryError
from export.models import make_student, tiny_mean_pool_bert
from export.recipes import DistillRecipe, TextRecipe
from export.registry import TaskEntry, recipe_for, register_entry
from export.train import distillation_loss
from export.triton_config import check_model_config, cpu_config_path
from export.validate import validate_repository
from taskspec import (
    DISASTER,
    DISASTER_TINY,
    SENTIMENT,
    SENTIMENT_TINY,
    TASKS,
    TaskRegistrationError,
    register,
    text_task,
    tiny_variant,
    unregister,
    variants_of,
)
from tests.support.tiny_models import TINY_DISTILL_RECIPE, publish_tiny_model


def test_a_tiny_variant_is_its_parent_under_its_own_model_name() -> None:
    assert SENTIMENT_TINY.name == "sentiment_tiny" == SENTIMENT_TINY.model_name
    assert SENTIMENT_TINY.variant_of == "sentiment" == SENTIMENT_TINY.task_name and SENTIMENT_TINY.variant == "tiny"
    same = ("labels", "inputs", "output", "text", "batching", "cpu", "modality")
    assert all(getattr(SENTIMENT_TINY, field) == getattr(SENTIMENT, field) for field in same)
    assert SENTIMENT.variant_of is None and SENTIMENT.task_name == "sentiment"
    assert variants_of("sentiment") == (SENTIMENT_TINY,) and variants_of("pose") == ()
    assert TASKS["sentiment_tiny"] is SENTIMENT_TINY and "disaster_tiny" in TASKS
    for profile in ("quick", "full"):
        assert isinstance(recipe_for(profile, "sentiment_tiny"), DistillRecipe)
        assert not isinstance(recipe_for(profile, "sentiment"), DistillRecipe)
    with pytest.raises(ValueError, match="only a text task"):
        tiny_variant(SENTIMENT_TINY)
    # The tweets' student serves from one CPU instance; everything else about its CPU serving is its parent's.
    assert DISASTER_TINY.cpu is not None and DISASTER.cpu is not None
    assert DISASTER_TINY.cpu.instance_count == 1 and DISASTER.cpu.instance_count == 2
    assert replace(DISASTER_TINY.cpu, instance_count=2) == DISASTER.cpu


def test_a_variant_must_match_a_known_parent() -> None:
    weather = text_task("weatherx", "Weather", ("sunny", "rainy"), buckets=(16,), examples=())
    with pytest.raises(TaskRegistrationError, match="not a known task"):
        register(tiny_variant(weather))  # its parent is not registered
    with pytest.raises(TaskRegistrationError, match="labels and tensors of its parent"):
        register(replace(tiny_variant(DISASTER), name="disaster_other", labels=("a", "b", "c")))
    assert "weatherx_tiny" not in TASKS and "disaster_other" not in TASKS
    register(weather)
    with pytest.raises(RegistryError, match="DistillRecipe"):  # a task (not a variant) is never distilled
        register_entry(TaskEntry("weatherx", local=lambda spec, path: None, recipes={"quick": TINY_DISTILL_RECIPE}))  # type: ignore[arg-type,return-value]


def test_the_student_keeps_the_chosen_layers_of_its_teacher() -> None:
    teacher = tiny_mean_pool_bert(2, layers=3, seed=1)
    student = make_student(teacher, (0, 2))
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for kept, source in ((0, 0), (1, 2)):
        name = "encoder.encoder.layer.{}.attention.self.query.weight"
        assert torch.equal(student_state[name.format(kept)], teacher_state[name.format(source)])
    assert "encoder.encoder.layer.2.attention.self.query.weight" not in student_state
    assert torch.equal(student_state["classifier.weight"], teacher_state["classifier.weight"])
    assert teacher_state.keys() >= {"encoder.encoder.layer.2.attention.self.query.weight"}  # the teacher is unchanged
    ids = torch.tensor([[101, 2023, 2003, 102]])
    mask = torch.ones_like(ids)
    assert student(ids, mask).shape == (1, 2)
    for bad in ((), (2, 0), (0, 0), (0, 3)):
        with pytest.raises(ValueError, match="layers"):
            make_student(teacher, bad)


def test_distillation_loss_pulls_the_student_to_the_teacher() -> None:
    recipe = DistillRecipe(train_size=1, val_size=0, max_length=8, batch_size=1, epochs=1, lr=1e-3)
    teacher = torch.tensor([[2.0, -1.0], [-0.5, 1.5]])
    labels = torch.tensor([0, 1])
    assert float(distillation_loss(teacher, teacher, labels, recipe)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(-teacher, teacher, labels, recipe)) > 0.5
    # With hard labels weighed in, agreeing with the teacher alone no longer gives zero loss.
    hard = replace(recipe, hard_weight=0.5)
    assert float(distillation_loss(teacher, teacher, labels, hard)) > 0.0


def test_a_tiny_variant_goes_through_the_real_export_path(tmp_path: Path) -> None:
    """A 2-layer student distilled from a 3-layer random teacher: ONNX export, int8 file, validation on held-out
    texts, its own Triton model (configs from the spec), card and raw-text model; `export validate` passes."""
    repository = tmp_path / "model_repository"
    published = publish_tiny_model(SENTIMENT_TINY, repository, seed=0)
    model_dir = repository / "sentiment_tiny"
    assert published.version_dir == model_dir / "1"
    names = {p.name for p in published.version_dir.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json", "metrics.json", "model_card.md"} <= names
    assert check_model_config(SENTIMENT_TINY, model_dir) == []
    assert 'name: "sentiment_tiny"' in cpu_config_path(model_dir).read_text()
    assert (repository / "sentiment_tiny_text" / "1" / "tokenizer.json").is_file()
    graph = onnx.load(str(published.version_dir / "model.onnx")).graph
    assert sum(node.op_type == "Softmax" for node in graph.node) == len(TINY_DISTILL_RECIPE.layers)  # 2 of 3 layers
    metrics = json.loads((published.version_dir / "metrics.json").read_text())
    files = metrics["validation"]["files"]
    assert set(files) == {"model.onnx", "model.int8.onnx"} and all(r["passed"] for r in files.values())
    assert "(tiny)" in (published.version_dir / "model_card.md").read_text()
    assert validate_repository(repository, ["sentiment_tiny"]) == {"sentiment_tiny": []}


def test_distillation_recipe_needs_teacher_logits_per_text() -> None:
    from export.train import train_text

    plain = TextRecipe(train_size=None, val_size=0, max_length=8, batch_size=2, epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="DistillRecipe"):
        train_text(
            tiny_mean_pool_bert(2), Path("unused"), SENTIMENT.text, None, None, SENTIMENT.labels, plain,  # type: ignore[arg-type]
            device=torch.device("cpu"), seed=0, teacher_logits=np.zeros((1, 2), np.float32),
        )  # fmt: skip


@pytest.mark.slow  # the build's preflight reads the IMDB files
def test_a_variant_without_a_trained_teacher_is_refused_before_training(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    with pytest.raises(CheckpointError, match="build sentiment first"):
        find_teacher(SENTIMENT_TINY, repository)
    publish_tiny_model(SENTIMENT, repository)  # a version, but no trained checkpoint beside the repository
    with pytest.raises(CheckpointError, match=r"checkpoint .* is missing"):
        find_teacher(SENTIMENT_TINY, repository)
    if not resolve_data_dir().is_dir():
        pytest.skip("the build preflight reads the shared datasets")
    options = BuildOptions(repository=repository, progress=False)
    with pytest.raises(ExportError, match="list sentiment before it"):
        build(["sentiment_tiny", "sentiment"], options)
    with pytest.raises(CheckpointError, match="rebuild sentiment first"):
        build(["sentiment_tiny"], options)


@pytest.fixture(autouse=True)
def _forget_registrations() -> object:
    yield
    for name in ("weatherx", "weatherx_tiny", "disaster_other"):
        unregister(name)
