"""The null models of bench/null_models.py: the served text models' contract, no compute, served by a real Triton."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from bench.null_models import build_null_repository, null_logits, null_text_model
from export.publish import latest_version_dir
from preprocess.text import TextEncoder
from serving.triton import TritonServer
from taskspec import DISASTER, POSE, SENTIMENT
from taskspec.manifest import verify_version
from tests.support.tiny_models import build_tiny_repository


def test_the_null_model_answers_token_counts_for_any_batch_and_length() -> None:
    session = ort.InferenceSession(null_text_model(SENTIMENT).SerializeToString())
    assert [i.name for i in session.get_inputs()] == list(SENTIMENT.input_names)
    for rows, tokens in ((1, 3), (64, 256)):
        mask = (np.arange(tokens)[None, :] < np.arange(1, rows + 1)[:, None]).astype(np.int64)
        (logits,) = session.run([SENTIMENT.output.name], {"input_ids": mask * 7, "attention_mask": mask})
        assert logits.shape == (rows, SENTIMENT.num_labels) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, null_logits(mask, SENTIMENT.num_labels))


def test_an_image_task_has_no_null_model() -> None:
    with pytest.raises(ValueError, match="pose"):
        null_text_model(POSE)


@pytest.fixture(scope="module")
def repositories(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    source = build_tiny_repository(tmp_path_factory.mktemp("tiny"), tasks=("sentiment", "disaster"))
    return source, tmp_path_factory.mktemp("null") / "repository"


def test_the_copy_holds_the_real_version_and_the_null_one_next_to_it(repositories: tuple[Path, Path]) -> None:
    source, target = repositories
    repo = build_null_repository(source, target, [SENTIMENT, DISASTER, POSE])
    assert repo.versions == {"sentiment": 2, "disaster": 2} and repo.real_versions == {"sentiment": 1, "disaster": 1}
    assert any("pose" in note for note in repo.notes)
    for task in ("sentiment", "disaster"):
        real, null = target / task / "1", repo.version_dir(task)
        assert (real / "model.onnx").read_bytes() == (source / task / "1" / "model.onnx").read_bytes()
        assert (null / "tokenizer.json").read_bytes() == (real / "tokenizer.json").read_bytes()
        assert verify_version(null) == [] and verify_version(real) == []
        assert not (null / "metrics.json").exists()  # the real model's validation does not describe this one
    assert latest_version_dir(source, "sentiment") == source / "sentiment" / "1"  # the source is untouched


@pytest.mark.integration
@pytest.mark.parametrize("config_name", [None, ""], ids=["cpu-config", "config.pbtxt"])
def test_a_real_triton_serves_the_null_model_under_the_task_name(
    repositories: tuple[Path, Path], config_name: str | None
) -> None:
    source, target = repositories
    repo = build_null_repository(source, target, [SENTIMENT, DISASTER])
    encoder = TextEncoder.from_version_dir(repo.version_dir("sentiment"))
    texts = ["A beautiful, moving film.", "ok", "Two hours of my life I will never get back, and the plot is thin."]
    feeds = encoder.batch(texts).inputs(SENTIMENT.input_names)
    with TritonServer.on_free_ports(target, model_config_name=config_name) as server:
        client = httpclient.InferenceServerClient(f"{server.host}:{server.http_port}")
        for spec in (SENTIMENT, DISASTER):
            assert client.get_model_metadata(spec.name)["versions"] == [str(repo.versions[spec.name])]
        inputs = []
        for name, value in feeds.items():
            tensor = httpclient.InferInput(name, list(value.shape), "INT64")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        result = client.infer("sentiment", inputs)
        assert result.get_response()["model_version"] == "2"
        np.testing.assert_allclose(result.as_numpy("logits"), null_logits(feeds["attention_mask"], 2), rtol=1e-6)


@pytest.mark.integration
def test_the_capacity_run_measures_the_facade_on_null_models_and_writes_its_report(
    repositories: tuple[Path, Path], tmp_path: Path
) -> None:
    from bench.capacity import Variant, run

    source, _ = repositories
    variants = [Variant("grpc"), Variant("http", workers=2)]
    results = run(
        source, tmp_path, variants=variants, duration_s=0.5, warmup_s=0.2, single_levels=(4,), batch_levels=(1,)
    )
    names = [f.name for f in results.figures]
    assert names == [
        "single facade[grpc] c4",
        "single facade[http:2] c4",
        "single direct-http c4",
        "batch64 facade[grpc] c1",
        "batch64 facade[http:2] c1",
        "protocol http c32",
        "protocol grpc c32",
    ]
    assert all(f.result.errors == 0 and f.result.requests > 0 for f in results.figures)
    through_facade = [f for f in results.figures if "facade" in f.name]
    assert all(f.facade_cpu_ms_per_request is not None and f.facade_cpu_ms_per_request > 0 for f in through_facade)
    assert [(name, o.facade.requests) for name, o, _ in results.overheads] == [("grpc", 300), ("http:2", 300)]
    assert results.protocol_latency is not None
    report = (tmp_path / "capacity.md").read_text()
    assert "single-text requests/s at saturation" in report and "HTTP vs gRPC" in report
    assert (tmp_path / "null-repository" / "sentiment" / "2" / "model.onnx").is_file()
