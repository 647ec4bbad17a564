"""Fast unit tests of the exporter's building blocks (no training, no servers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import export.train
from export.build import resolve_image_checkpoint, resolve_text_checkpoint
from export.cli import _checkpoints
from export.data import har_local, imdb_local, stratified_split
from export.errors import CheckpointError, DatasetError
from export.metrics import classification_metrics, confidence_distribution, model_card
from export.recipes import ImageRecipe, TextRecipe
from export.registry import recipe_for
from export.train import autocast_dtype, length_grouped_batches, precision_name, stratified_sample
from taskspec import POSE, SENTIMENT, TOP_PROBABILITY_BUCKETS


def test_length_grouped_batches_cover_every_example_once_with_little_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(5, 200, size=1000))
    batches = length_grouped_batches(lengths, 16, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert all(len(b) == 16 for b in batches[:-1] if len(b) != 1000 % 16)
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 20  # random batches of 16 would spread over ~170 tokens
    again = length_grouped_batches(lengths, 16, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


def test_stratified_helpers_keep_class_shares_and_are_deterministic() -> None:
    labels = np.array([0] * 80 + [1] * 20)
    train, test = stratified_split(labels, 0.25, seed=7)
    assert len(test) == 25 and np.sum(labels[test] == 1) == 5
    assert not set(train) & set(test)
    assert np.array_equal(test, stratified_split(labels, 0.25, seed=7)[1])
    sample = stratified_sample(labels, 10, seed=3)
    assert len(sample) == 10 and np.sum(labels[sample] == 1) == 2


def test_classification_metrics_and_card() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    predictions = np.array([0, 1, 1, 1, 0])
    metrics = classification_metrics(labels, predictions, ("not_disaster", "disaster"))
    assert metrics["accuracy"] == 0.6
    assert metrics["confusion_matrix"] == [[1, 1], [1, 2]]
    assert metrics["f1"] == pytest.approx(2 / 3, abs=1e-4)
    card = model_card(
        "Disaster tweets",
        ("not_disaster", "disaster"),
        {
            "task": "disaster",
            "profile": "quick",
            "data": "tweets",
            "checkpoint": "minilm",
            "recipe_summary": "r",
            "device": "cpu",
            "train_seconds": 3.0,
            "seed": 0,
            "test": metrics,
        },
    )
    assert "accuracy **60.00%** on 5 examples" in card
    assert "| disaster | 1 | 2 |" in card


def test_confidence_distribution_counts_top_probabilities_in_the_facades_histogram_buckets() -> None:
    # top-class probabilities 0.5 (a tie), 0.7, 0.7, 0.999 and 1.0 (logits far apart)
    logit_07 = float(np.log(0.7 / 0.3))
    logits = np.array([[0.0, 0.0], [logit_07, 0.0], [0.0, logit_07], [0.0, 7.0], [0.0, 80.0]])
    confidence = confidence_distribution(logits)
    assert confidence["n"] == 5 and confidence["le"] == list(TOP_PROBABILITY_BUCKETS)
    shares = dict(zip(confidence["le"], confidence["shares"], strict=True))
    # a value on a bound belongs to that bound's bucket (Prometheus' le: less or equal)
    assert shares == {**dict.fromkeys(TOP_PROBABILITY_BUCKETS, 0.0), 0.5: 0.2, 0.7: 0.4, 1.0: 0.4}
    card = model_card(
        "Disaster tweets",
        ("not_disaster", "disaster"),
        {"task": "disaster", "test": classification_metrics(np.array([0, 1]), np.array([0, 1]), ("a", "b")),
         "validation_confidence": confidence},
    )  # fmt: skip
    assert "top-class probability" in card and "(0.4, 0.5] 20.0%, (0.6, 0.7] 40.0%, (0.99, 1] 40.0%" in card


def test_profiles_cover_every_task_with_the_right_recipe_kind() -> None:
    for profile in ("quick", "full"):
        assert isinstance(recipe_for(profile, "sentiment"), TextRecipe)
        assert isinstance(recipe_for(profile, "disaster"), TextRecipe)
        assert isinstance(recipe_for(profile, "pose"), ImageRecipe)
    assert recipe_for("full", "pose").finetune_epochs > 0  # type: ignore[union-attr]


def test_checkpoint_flag_parsing() -> None:
    tasks = ["sentiment", "disaster", "pose"]
    assert _checkpoints(["/m"], tasks) == {"sentiment": "/m", "disaster": "/m"}
    assert _checkpoints(["pose=/w.pth", "disaster=org/model"], tasks) == {"pose": "/w.pth", "disaster": "org/model"}


def test_checkpoint_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_text_checkpoint(str(tmp_path / "nope"), tmp_path)
    (tmp_path / "model").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        resolve_text_checkpoint(str(tmp_path / "model"), tmp_path)
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="tokenizer"):
        resolve_text_checkpoint(str(tmp_path / "model"), tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_image_checkpoint(str(tmp_path / "w.pth"))


def _har_folder(root: Path, part: str, per_class: int) -> None:
    for label in POSE.labels:
        (root / "human_action" / part / label).mkdir(parents=True)
        for i in range(per_class):
            (root / "human_action" / part / label / f"{i}.jpg").write_bytes(b"")


def test_har_train_extra_photos_are_training_data_never_test(tmp_path: Path) -> None:
    """``train_extra/`` (when present) joins the training split; the held-out ``val/`` stays as it is."""
    _har_folder(tmp_path, "train", 2)
    _har_folder(tmp_path, "val", 1)
    without = har_local(POSE, tmp_path)
    assert len(without.train) == 2 * POSE.num_labels and without.description.endswith(": train/ to train, val/ as test")
    _har_folder(tmp_path, "train_extra", 3)
    data = har_local(POSE, tmp_path)
    assert len(data.train) == 5 * POSE.num_labels and len(data.test) == POSE.num_labels
    assert sum("train_extra" in p.parts for p in data.train.paths) == 3 * POSE.num_labels
    assert not any("train_extra" in p.parts for p in data.test.paths)
    assert np.bincount(data.train.labels).tolist() == [5] * POSE.num_labels  # labels follow the folders
    assert "train/ + train_extra/ to train" in data.description


def test_missing_dataset_layout_is_a_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "human_action" / "train" / "calling").mkdir(parents=True)
    (tmp_path / "human_action" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match="lacks class folders"):
        har_local(POSE, tmp_path)
    (tmp_path / "imdb").mkdir()
    (tmp_path / "imdb" / "train.csv.gz").write_bytes(b"not gzip")
    (tmp_path / "imdb" / "val.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match="cannot read"):
        imdb_local(SENTIMENT, tmp_path)


def test_flip_averaged_export_gives_a_photo_and_its_mirror_image_the_same_logits(tmp_path: Path) -> None:
    """Test-time flip averaging lives in the exported graph: every serving path feeding the ONNX file gets it."""
    import onnxruntime as ort
    import torch

    from export.models import FlipAveraged, TinyCNN
    from export.onnx_export import export_onnx

    model = TinyCNN(POSE.num_labels).eval()
    path = export_onnx(FlipAveraged(model), POSE, {"pixel_values": torch.zeros(2, 3, 224, 224)}, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32)
    mirror = np.ascontiguousarray(pixels[..., ::-1])
    (logits,) = session.run(["logits"], {"pixel_values": pixels})
    (mirrored,) = session.run(["logits"], {"pixel_values": mirror})
    with torch.no_grad():
        plain, flipped = model(torch.from_numpy(pixels)).numpy(), model(torch.from_numpy(mirror)).numpy()
    assert not np.allclose(plain, flipped, atol=1e-3)  # the inner model alone tells them apart
    np.testing.assert_allclose(logits, (plain + flipped) / 2, atol=1e-5)
    np.testing.assert_allclose(mirrored, logits, atol=1e-5)


def test_training_precision_auto_is_bf16_on_a_gpu_and_on_a_cpu_with_native_bf16_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("fp32", cuda) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(export.train, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype("auto", cpu) is None and precision_name("auto", cpu) == "fp32"
    monkeypatch.setattr(export.train, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype("auto", cpu) is torch.bfloat16 and precision_name("auto", cpu) == "bf16 autocast"
    assert precision_name("fp32", cpu) == "fp32"


def test_the_quick_build_estimate_sums_the_measured_tasks_and_names_the_others() -> None:
    from export.recipes import QUICK_BUILD_SECONDS, quick_build_estimate

    fast = sum(f for f, _ in QUICK_BUILD_SECONDS.values())
    slow = sum(s for _, s in QUICK_BUILD_SECONDS.values())
    everything = quick_build_estimate(list(QUICK_BUILD_SECONDS))
    assert everything == f"about {round(fast / 60)}-{round(slow / 60)} minutes on an idle 2-core CPU"
    assert all(f <= s for f, s in QUICK_BUILD_SECONDS.values())  # (faster machine, slower machine)
    assert quick_build_estimate(["disaster_tiny"]) == "about 1 minute on an idle 2-core CPU"
    assert (
        quick_build_estimate(["pose", "weather"])
        == "about 1-3 minutes on an idle 2-core CPU plus weather (not measured)"
    )
    assert quick_build_estimate(["weather"]) == "weather (not measured)"
