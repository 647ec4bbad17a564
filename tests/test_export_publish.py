"""Publishing: versions never overwrite each other, artifacts travel with the weights, unchecked files are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from export.errors import PublishError, UnvalidatedFileError
from export.models import TinyCNN, tiny_bert
from export.onnx_export import dynamic_axes, export_onnx
from export.pipeline import text_batch
from export.publish import publish, versions
from export.raw_text import TEMPLATE, build_raw_text_config
from export.triton_config import check_model_config, parse_model_config
from taskspec import DISASTER, POSE, SENTIMENT, TASKS, get_task
from tests.support.tiny_models import default_tokenizer_dir, publish_tiny_model

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pose_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "pose.onnx"
    sample = {"pixel_values": torch.zeros(1, 3, 224, 224)}
    return export_onnx(TinyCNN(POSE.num_labels), POSE, sample, path)


def test_dynamic_axes_follow_the_spec() -> None:
    axes = dynamic_axes(SENTIMENT)
    assert axes == {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "logits": {0: "batch"},
    }
    assert dynamic_axes(POSE) == {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}


def test_publish_writes_a_new_version_each_time_and_never_overwrites(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = publish_tiny_model(POSE, repo, seed=0).version_dir
    first_bytes = (first / "model.onnx").read_bytes()
    first_metrics = (first / "metrics.json").read_text()
    second = publish_tiny_model(POSE, repo, seed=1).version_dir
    assert (first.name, second.name) == ("1", "2")
    assert versions(repo / "pose") == [1, 2]
    assert (first / "model.onnx").read_bytes() == first_bytes and (first / "metrics.json").read_text() == first_metrics
    assert json.loads((second / "metrics.json").read_text())["seed"] == 1
    assert "# Human pose / action (pose, profile tiny)" in (second / "model_card.md").read_text()
    assert not [p for p in (repo / "pose").iterdir() if p.name.startswith(".")], "staging folder left behind"
    assert json.loads((second / "preprocessing.json").read_text()) == POSE.preprocessing_document()
    assert check_model_config(POSE, repo / "pose") == []


def test_publish_skips_a_version_number_already_taken(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pose" / "3").mkdir(parents=True)
    (repo / "pose" / "3" / "keep.txt").write_text("someone else's")
    version = publish_tiny_model(POSE, repo).version_dir
    assert version.name == "4"
    assert (repo / "pose" / "3" / "keep.txt").read_text() == "someone else's"


def test_publish_refuses_a_model_file_that_was_not_validated(pose_onnx: Path, tmp_path: Path) -> None:
    """Only the one publish path (export.pipeline) can publish: it records each file's held-out check."""
    repo = tmp_path / "repo"
    with pytest.raises(UnvalidatedFileError, match=r"model\.onnx has no held-out validation record"):
        publish(POSE, pose_onnx, repo, metrics={"accuracy": 0.5})
    other = publish_tiny_model(POSE, tmp_path / "other", seed=1)  # other weights: another sha256
    record = json.loads((other.version_dir / "metrics.json").read_text())
    with pytest.raises(UnvalidatedFileError, match="not the file that was validated"):
        publish(POSE, pose_onnx, repo, metrics=record)
    import hashlib

    record["validation"]["files"]["model.onnx"].update(
        sha256=hashlib.sha256(pose_onnx.read_bytes()).hexdigest(), passed=False, problems=["below the floor"]
    )
    with pytest.raises(UnvalidatedFileError, match="did not pass"):
        publish(POSE, pose_onnx, repo, metrics=record)
    assert versions(repo / "pose") == [] and not list((repo / "pose").iterdir())  # no version, no staging
    assert not (repo / "pose" / "config.pbtxt").exists()


def test_publish_refuses_a_text_model_without_tokenizer(pose_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="tokenizer"):
        publish(SENTIMENT, pose_onnx, tmp_path / "repo")
    with pytest.raises(PublishError, match="does not exist"):
        publish(POSE, tmp_path / "missing.onnx", tmp_path / "repo")
    assert not (tmp_path / "repo" / "sentiment" / "1").exists()


def test_text_publish_ships_an_untruncated_unpadded_tokenizer_and_the_raw_text_model(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    published = publish_tiny_model(DISASTER, repo)
    version = published.version_dir
    saved = json.loads((version / "tokenizer.json").read_text())
    assert saved["truncation"] is None and saved["padding"] is None
    tokenizer = Tokenizer.from_file(str(version / "tokenizer.json"))
    long_text = "fire " * 300
    assert len(tokenizer.encode(long_text).ids) == 302  # not cut to the package's 128
    assert tokenizer.encode("Forest FIRE").tokens == ["[CLS]", "forest", "fire", "[SEP]"]  # uncased

    raw = repo / "disaster_text"
    assert (raw / "1" / "model.py").read_bytes() == TEMPLATE.read_bytes()
    assert (raw / "1" / "tokenizer.json").read_bytes() == (version / "tokenizer.json").read_bytes()
    prep = json.loads((raw / "1" / "preprocessing.json").read_text())
    assert prep["text"]["buckets"] == [16, 32, 64] and prep["labels"] == ["not_disaster", "disaster"]
    config = parse_model_config((raw / "config.pbtxt").read_text())
    assert config.backend == "python"
    assert config.parameters["model_name"].string_value == "disaster"
    assert [o.name for o in config.output] == ["label", "probabilities"]
    assert (raw / "labels.txt").read_text().split() == ["not_disaster", "disaster"]
    assert published.validation.max_abs_diff <= DISASTER.export_atol
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["export"]["opset"] >= 17 and metrics["export"]["argmax_agreement"] == 1.0


def test_export_has_dynamic_batch_and_sequence_axes(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = tiny_bert(2, seed=0)
    tok = default_tokenizer_dir()
    sample = text_batch(tok, ["short", "a little longer text"], 16)
    path = export_onnx(model, SENTIMENT, {k: torch.from_numpy(v) for k, v in sample.items()}, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path))
    for rows, length in ((1, 8), (5, 128)):
        batch = text_batch(tok, ["one two three"] * rows, length)
        (logits,) = session.run(["logits"], batch)
        with torch.no_grad():
            expected = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
        assert logits.shape == (rows, 2)
        np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_padding_does_not_change_the_exported_prediction(tmp_path: Path) -> None:
    """The attention mask is part of the graph: padding a text to a larger bucket keeps its logits."""
    import onnxruntime as ort

    published = publish_tiny_model(SENTIMENT, tmp_path / "repo")
    session = ort.InferenceSession(str(published.version_dir / "model.onnx"))
    tok = default_tokenizer_dir()
    short = session.run(["logits"], text_batch(tok, ["a fine film"], 32))[0]
    long = session.run(["logits"], text_batch(tok, ["a fine film"], 256))[0]
    np.testing.assert_allclose(short, long, atol=1e-5)


def test_raw_text_config_is_only_for_text_tasks() -> None:
    for spec in TASKS.values():
        if spec.modality == "text":
            config = build_raw_text_config(spec)
            assert config.name == f"{spec.name}_text"
            assert list(config.output[1].dims) == [spec.num_labels]
        else:
            with pytest.raises(ValueError, match="not a text task"):
                build_raw_text_config(spec)


def test_committed_raw_text_models_match_the_generator() -> None:
    """model_repository/<task>_text in git is what export.raw_text writes (rename one, this fails); its
    model.py is a build output, checked against the template in the publish test above."""
    from export.raw_text import HEADER
    from export.triton_config import render_model_config

    for spec in TASKS.values():
        if spec.modality != "text":
            continue
        folder = PROJECT_ROOT / "model_repository" / spec.raw_text_model_name
        assert (folder / "config.pbtxt").read_text() == HEADER + render_model_config(build_raw_text_config(spec))
        assert (folder / "labels.txt").read_text().split() == list(get_task(spec.name).labels)


def test_text_publish_ships_the_int8_file_that_the_cpu_config_serves(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    repo = tmp_path / "repo"
    version = publish_tiny_model(SENTIMENT, repo).version_dir
    assert SENTIMENT.cpu is not None
    cpu_config = parse_model_config((repo / "sentiment" / "configs" / "cpu.pbtxt").read_text())
    int8_path = version / cpu_config.default_model_filename
    assert int8_path.name == SENTIMENT.cpu.model_file == "model.int8.onnx"
    ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops  # really quantized
    # Same tensors as model.onnx, and close enough to it that the labels agree on these inputs.
    batch = text_batch(version, ["a wonderful film", "dull and far too long " * 8], 64)
    outputs = [
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], batch)[0]
        for path in (version / "model.onnx", int8_path)
    ]
    assert outputs[0].shape == outputs[1].shape == (2, 2)
    assert np.abs(outputs[0] - outputs[1]).max() < 0.1


def test_image_publish_has_no_cpu_variant(tmp_path: Path) -> None:
    version = publish_tiny_model(POSE, tmp_path / "repo").version_dir
    assert not (version / "model.int8.onnx").exists()
    assert not (tmp_path / "repo" / "pose" / "configs").exists()


def test_publish_seals_each_version_with_a_manifest(pose_onnx: Path, tmp_path: Path) -> None:
    """The exact manifest.json format the facade keys its artifact cache by."""
    import hashlib

    from taskspec.manifest import read_manifest, verify_version

    version = publish_tiny_model(POSE, tmp_path / "repo").version_dir
    document = json.loads((version / "manifest.json").read_text())
    assert set(document) == {"format", "files", "digest"} and document["format"] == 1
    on_disk = sorted(p.name for p in version.iterdir() if p.name != "manifest.json")
    assert sorted(document["files"]) == on_disk == ["metrics.json", "model.onnx", "model_card.md", "preprocessing.json"]
    for name, entry in document["files"].items():
        data = (version / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    canonical = json.dumps(document["files"], sort_keys=True, separators=(",", ":"))
    assert document["digest"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert read_manifest(version).digest == document["digest"] and verify_version(version) == []

    second = publish_tiny_model(POSE, tmp_path / "repo", seed=1).version_dir
    assert read_manifest(second).digest != document["digest"]  # other weights, other content
    with pytest.raises(PublishError, match="free file name"):
        publish(POSE, pose_onnx, tmp_path / "repo", extra_files={"manifest.json": pose_onnx})
