"""Every file a version serves is checked on held-out data before it is published, against its floor.

The int8 file that CPU hosts serve (``configs/cpu.pbtxt``) used to be quantised at publish time and never
checked: here a broken one stops the whole version, and the figures of a good one are in metrics.json
and the model card.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import export.pipeline
from export.acceptance import FileReport, judge
from export.data import TextSplit
from export.errors import ExportValidationError, PublishError, QualityFloorError
from export.evaluate import quantize_int8, text_logits
from export.models import TextClassifier, tiny_bert
from export.onnx_export import export_onnx
from export.pipeline import export_validate_publish, publish_derived, trace_sample
from export.publish import versions
from export.served import ServedFile
from export.validate import validate_task
from frontend_api.metrics import ApiMetrics
from preprocess.probabilities import softmax
from taskspec import INT8_FLOOR, SENTIMENT, TOP_PROBABILITY_BUCKETS, QualityFloor
from taskspec.manifest import read_manifest, verify_version
from tests.support.tiny_models import default_tokenizer_dir, publish_tiny_model, tiny_text_split


def _negated(module: TextClassifier) -> TextClassifier:
    """The same model with its head negated: every label flips."""
    flipped = copy.deepcopy(module)
    with torch.no_grad():
        head = flipped.model.classifier
        assert isinstance(head, torch.nn.Module)
        for parameter in head.parameters():
            parameter.neg_()
    return flipped


def _export(module: torch.nn.Module, path: Path) -> Path:
    sample = trace_sample(SENTIMENT, tiny_text_split(SENTIMENT), default_tokenizer_dir())
    return export_onnx(module, SENTIMENT, {k: torch.from_numpy(v) for k, v in sample.items()}, path)


def test_the_int8_file_is_validated_and_its_figures_are_in_the_metrics_and_the_card(tmp_path: Path) -> None:
    published = publish_tiny_model(SENTIMENT, tmp_path / "repo")
    version = published.version_dir
    records = json.loads((version / "metrics.json").read_text())["validation"]["files"]
    manifest = read_manifest(version).files
    assert set(records) == {"model.onnx", "model.int8.onnx"}
    int8 = records["model.int8.onnx"]
    assert records["model.onnx"]["reference"] == "pytorch"  # model.onnx against PyTorch, the int8 file against it
    assert int8["config"] == "configs/cpu.pbtxt" and int8["passed"] and int8["reference"] == "model.onnx"
    assert int8["sample_rows"] == int8["test"]["n"] == len(tiny_text_split(SENTIMENT).texts)
    assert int8["floor"]["min_agreement"] == INT8_FLOOR.min_agreement and int8["agreement"] >= 0.97
    for name, record in records.items():  # each record is bound to the very file published
        assert record["sha256"] == manifest[name].sha256
    card = (version / "model_card.md").read_text()
    assert "| `model.int8.onnx` | `configs/cpu.pbtxt` | 100.00% vs model.onnx (6) |" in card
    assert INT8_FLOOR.reason in card
    assert validate_task(tmp_path / "repo", SENTIMENT) == []


def test_each_files_held_out_confidence_is_recorded_in_the_facades_histogram_buckets(tmp_path: Path) -> None:
    published = publish_tiny_model(SENTIMENT, tmp_path / "repo")
    version = published.version_dir
    metrics = json.loads((version / "metrics.json").read_text())
    split = tiny_text_split(SENTIMENT)
    # What the facade's mtc_api_top_probability histogram counts for the same rows through model.onnx.
    facade = ApiMetrics()
    logits = text_logits(version / "model.onnx", version / "tokenizer.json", SENTIMENT, split.texts, progress=False)
    facade.observe_predictions("sentiment", "1", list(SENTIMENT.labels), softmax(logits))
    cumulative = {
        float(s.labels["le"]): s.value
        for family in facade.top_probability.collect()
        for s in family.samples
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    }
    counts = np.diff([0.0, *(cumulative[le] for le in TOP_PROBABILITY_BUCKETS)])
    reference = metrics["validation_confidence"]
    assert reference["le"] == sorted(cumulative) == list(TOP_PROBABILITY_BUCKETS)
    assert reference["n"] == len(split.texts)
    assert reference["shares"] == pytest.approx(list(counts / len(split.texts)), abs=1e-4)
    files = metrics["validation"]["files"]
    assert files["model.onnx"]["confidence"] == reference  # each file's own figures, model.onnx's the reference
    assert files["model.int8.onnx"]["confidence"]["n"] == len(split.texts)
    assert sum(files["model.int8.onnx"]["confidence"]["shares"]) == pytest.approx(1.0, abs=1e-3)
    assert "- top-class probability (share of the predictions per bucket" in (version / "model_card.md").read_text()


def test_an_int8_file_below_its_floor_stops_the_whole_version(tmp_path: Path, monkeypatch) -> None:
    module = tiny_bert(2, seed=0)
    broken = _export(_negated(module), tmp_path / "broken.onnx")

    def broken_quantizer(onnx_path: Path, target: Path) -> Path:  # a quantiser that corrupts the weights
        return quantize_int8(broken, target)

    monkeypatch.setattr(export.pipeline, "quantize_int8", broken_quantizer)
    repo = tmp_path / "repo"
    with pytest.raises(QualityFloorError, match=r"model\.int8\.onnx \(configs/cpu\.pbtxt\): top-1 agreement") as info:
        export_validate_publish(
            module,
            SENTIMENT,
            held_out=tiny_text_split(SENTIMENT),
            repository=repo,
            tokenizer_dir=default_tokenizer_dir(),
        )
    assert "model.onnx (" not in str(info.value)  # the fp32 file itself was fine
    assert not repo.exists() or not any(repo.rglob("*")), "something of the refused version was written"


def test_model_onnx_must_match_pytorch_within_the_export_tolerance(tmp_path: Path, monkeypatch) -> None:
    module = tiny_bert(2, seed=0)
    other = _export(tiny_bert(2, seed=1), tmp_path / "other.onnx")
    from export.onnx_export import export_onnx as real_export

    def wrong_export(module: torch.nn.Module, spec, sample, path: Path, **kwargs) -> Path:
        real_export(module, spec, sample, path, **kwargs)
        return Path(shutil.copyfile(other, path))  # an exporter bug: another model's weights

    monkeypatch.setattr(export.pipeline, "export_onnx", wrong_export)
    with pytest.raises(QualityFloorError, match=r"model\.onnx \(config\.pbtxt\): .*max \|logit difference\|"):
        export_validate_publish(
            module, SENTIMENT, held_out=tiny_text_split(SENTIMENT), repository=tmp_path / "repo",
            tokenizer_dir=default_tokenizer_dir(),
        )  # fmt: skip
    assert not (tmp_path / "repo" / "sentiment").exists()


def _report(floor: QualityFloor, *, agreement: float, drop: float, diff: float = 0.1) -> FileReport:
    served = ServedFile("model.int8.onnx", "configs/cpu.pbtxt", floor)
    test = {"accuracy": 0.8, "n": 1000}
    return FileReport(served, "0" * 64, 1, "pytorch", 1000, agreement, diff, test, drop, agreement)


def test_the_floor_holds_agreement_accuracy_drop_and_logit_difference() -> None:
    assert judge(_report(INT8_FLOOR, agreement=0.97, drop=0.015)).passed  # exactly at the floor passes
    low = judge(_report(INT8_FLOOR, agreement=0.969, drop=0.0))
    assert not low.passed and "top-1 agreement with pytorch 96.90% on 1000 held-out rows < floor 97.00%" in low.problems
    dropped = judge(_report(INT8_FLOOR, agreement=0.99, drop=0.016))
    assert not dropped.passed and "1.60 points below model.onnx (floor: 1.5)" in dropped.problems[0]
    strict = replace(INT8_FLOOR, max_abs_diff=0.05)
    assert "max |logit difference| 0.1 > floor 0.05" in judge(_report(strict, agreement=1.0, drop=0.0)).problems
    assert not judge(_report(INT8_FLOOR, agreement=1.0, drop=0.0, diff=float("nan"))).passed
    with pytest.raises(ValueError, match="reason"):
        QualityFloor(min_agreement=0.9, reason=" ")


def test_validate_reports_versions_whose_files_were_not_validated(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    version = publish_tiny_model(SENTIMENT, repo).version_dir
    int8 = version / "model.int8.onnx"
    int8.chmod(0o644)
    quantize_int8(_export(_negated(tiny_bert(2, seed=0)), tmp_path / "n.onnx"), int8)  # swapped after publishing
    assert any("model.int8.onnx is not the file that was validated" in p for p in validate_task(repo, SENTIMENT))
    metrics = json.loads((version / "metrics.json").read_text())
    del metrics["validation"]  # a version published before files were validated
    (version / "metrics.json").write_text(json.dumps(metrics))
    problems = validate_task(repo, SENTIMENT)
    assert any("model.onnx has no held-out validation record" in p for p in problems)
    assert any("model.int8.onnx has no held-out validation record" in p for p in problems)


def test_a_derived_file_is_validated_and_published_as_the_next_version(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    source = publish_tiny_model(SENTIMENT, repo).version_dir
    before = read_manifest(source)
    held_out = tiny_text_split(SENTIMENT)
    copy_of_model = Path(shutil.copyfile(source / "model.onnx", tmp_path / "model.copy.onnx"))
    served = ServedFile("model.copy.onnx", "configs/copy.pbtxt", INT8_FLOOR)
    derived = publish_derived(SENTIMENT, source, {served: copy_of_model}, held_out=held_out)
    assert derived.version_dir == source.parent / "2" and read_manifest(source) == before  # the source untouched
    assert verify_version(derived.version_dir) == [] and validate_task(repo, SENTIMENT) == []
    metrics = json.loads((derived.version_dir / "metrics.json").read_text())
    record = metrics["validation"]["files"]["model.copy.onnx"]
    assert record["passed"] and record["reference"] == "model.onnx of version 1" and record["agreement"] == 1.0
    assert metrics["derived_from_version"] == 1 and set(metrics["validation"]["files"]) == {
        "model.onnx", "model.int8.onnx", "model.copy.onnx"
    }  # fmt: skip

    flipped = _export(_negated(tiny_bert(2, seed=0)), tmp_path / "model.flipped.onnx")
    with pytest.raises(QualityFloorError, match=r"model\.flipped\.onnx"):
        publish_derived(SENTIMENT, source, {replace(served, name="model.flipped.onnx"): flipped}, held_out=held_out)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(ExportValidationError, match="tensorrt"):  # no TensorRT here: the plan cannot be checked
        publish_derived(SENTIMENT, source, {replace(served, name="model.plan"): plan}, held_out=held_out)
    assert versions(repo / "sentiment") == [1, 2]

    (source / "model.onnx").chmod(0o644)
    (source / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(PublishError, match="does not match its manifest"):
        publish_derived(SENTIMENT, source, {served: copy_of_model}, held_out=held_out)
    assert versions(repo / "sentiment") == [1, 2]


def test_held_out_sample_is_stratified_and_capped(tmp_path: Path) -> None:
    texts = [f"review number {i}" for i in range(40)]
    held_out = TextSplit(texts, np.array([0] * 30 + [1] * 10, dtype=np.int64))
    published = export_validate_publish(
        tiny_bert(2, seed=0), SENTIMENT, held_out=held_out, repository=tmp_path / "repo",
        tokenizer_dir=default_tokenizer_dir(), sample_size=8,
    )  # fmt: skip
    assert published.validation.sample_rows == 8 and published.validation.test["n"] == 40
    int8 = published.report("model.int8.onnx")  # compared with model.onnx on every row, not on PyTorch's sample
    assert int8.reference == "model.onnx" and int8.sample_rows == 40
    assert published.metrics["validation"]["sample"] == {"max_rows": 8, "seed": 0, "stratified": True}
