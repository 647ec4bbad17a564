"""The benchmark report: tables, headline ratios and plots from a run's numbers."""

from __future__ import annotations

import json
from pathlib import Path

from bench.config import BenchConfig
from bench.loadgen import LoadResult
from bench.machine import Machine
from bench.measurements import (
    BatchingPoint,
    BenchResults,
    FacadeResults,
    Int8Comparison,
    LatencyStats,
    OverheadResult,
    StageBreakdown,
)
from bench.report import headlines, stage_columns, write_report


def result(label: str, concurrency: int, latency_ms: float, requests: int, duration_s: float = 1.0) -> LoadResult:
    return LoadResult(label, concurrency, duration_s, latencies_ms=[latency_ms] * requests)


def sample_results(tmp_path: Path) -> BenchResults:
    results = BenchResults(
        config=BenchConfig(out=tmp_path),
        machine=Machine(
            cpu="Test CPU",
            cores=2,
            memory_gib=8.0,
            gpus=[],
            os="Linux",
            python="3.11.7",
            load_average_at_start=[0.5, 0.4, 0.3],
            triton="2.51.0",
        ),
    )
    results.started = "2026-01-01 00:00:00 UTC"
    results.model_sources = {"sentiment": "trained model from model_repository/"}
    results.input_sources = {"sentiment": "64 texts"}
    results.sweeps["sentiment"] = [result("s", 1, 10.0, 100), result("s", 16, 40.0, 400)]
    results.batching["sentiment"] = [
        BatchingPoint("dynamic batching on", result("on", 1, 3.0, 300), {1: 300}),
        BatchingPoint("dynamic batching on", result("on", 16, 20.0, 800), {4: 150, 8: 25}),
        BatchingPoint("dynamic batching off", result("off", 1, 2.0, 500), {1: 500}),
        BatchingPoint("dynamic batching off", result("off", 16, 40.0, 400), {1: 400}),
    ]
    comparison = Int8Comparison(
        "sentiment", agreement=0.96875, max_prob_diff=0.05, samples=64, fp32_bytes=90, int8_bytes=23
    )
    comparison.points = [
        ("fp32", result("fp32", 1, 10.0, 100)),
        ("fp32", result("fp32", 16, 50.0, 320)),
        ("int8", result("int8", 1, 5.0, 200)),
        ("int8", result("int8", 16, 30.0, 480)),
    ]
    results.int8["sentiment"] = comparison
    results.stages["sentiment"] = [
        StageBreakdown(
            concurrency=1,
            client_mean_ms=12.0,
            facade_ms={"tokenize": 1.0, "inference": 8.0, "total": 10.0},
            triton_ms={"queue_ms": 2.0, "compute_ms": 5.0},
        )
    ]
    results.facade = FacadeResults(
        notes=["Model: test"],
        overhead=OverheadResult(
            text_tokens=60,
            padded_to=64,
            facade=LatencyStats(requests=10, p50_ms=11.0, p95_ms=12.0, p99_ms=13.0, mean_ms=11.5),
            direct=LatencyStats(requests=10, p50_ms=10.0, p95_ms=11.0, p99_ms=12.0, mean_ms=10.5),
        ),
    )
    return results


def test_headline_ratios_are_computed_from_the_run() -> None:
    lines = headlines(sample_results(Path(".")))
    batching, int8, facade = lines
    # 800 vs 400 req/s at 16 clients; p99 40 vs 20 ms; mean batch (4*150 + 8*25) / 175.
    assert "**2.00x** the throughput at 16 clients" in batching and "p99 20.0 ms vs 40.0 ms" in batching
    assert "mean executed batch 4.57" in batching
    assert "**2.00x** faster at p50" in int8 and "1.50x the throughput at 16 clients" in int8
    assert "26% of the size" in int8 and "same top label on 97% of 64 inputs" in int8
    assert facade == "Facade p50 11.00 ms vs direct tritonclient 10.00 ms (x1.100, target <= 1.15) for a 60-token text"


def test_report_has_the_machine_tables_and_plots(tmp_path: Path) -> None:
    report = write_report(sample_results(tmp_path), tmp_path)
    text = report.read_text()
    assert "Test CPU - 2 cores" in text and "Triton 2.51.0" in text
    assert "GPU: none" in text
    assert "| 16 | 400 | 400.0 | 40.00 | 40.00 | 40.00 | 0 |" in text
    assert "| dynamic batching on | 16 | 800.0 | 20.00 | 20.00 | 4.57 | 4: 150, 8: 25 |" in text
    assert "## Facade comparisons (bench/facade.py)" in text and "p50 ratio facade / direct: **1.100**" in text
    for plot in ("sweep_sentiment.png", "batching_sentiment.png"):
        assert f"]({plot})" in text
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["sweeps"]["sentiment"][1]["throughput_rps"] == 400.0
    assert data["batching"]["sentiment"][1]["batches"] == {"4": 150, "8": 25}
    assert data["int8"]["sentiment"]["agreement"] == 0.96875
    assert data["facade"]["overhead"]["p50_ratio"] == 1.1 and data["machine"]["cpu"] == "Test CPU"


def test_errors_show_in_the_table(tmp_path: Path) -> None:
    results = sample_results(tmp_path)
    results.sweeps["sentiment"][0].errors = 3
    results.sweeps["sentiment"][0].first_error = "RuntimeError: HTTP 503"
    text = write_report(results, tmp_path).read_text()
    assert "| 3 (RuntimeError: HTTP 503) |" in text


def test_stage_breakdown_parts_add_up_to_what_the_client_saw(tmp_path: Path) -> None:
    stage = sample_results(tmp_path).stages["sentiment"][0]
    columns = stage_columns(stage)
    assert columns["preprocessing"] == 1.0
    assert columns["Triton call (HTTP, (de)serialisation)"] == 1.0  # 8 - 2 - 5
    assert columns["rest of the facade"] == 1.0  # 10 - 1 - 8
    assert columns["outside the facade (HTTP, uvicorn, client)"] == 2.0  # 12 - 10
    parts = [v for k, v in columns.items() if k not in ("client", "facade total")]
    assert sum(parts) == columns["client"]
    text = write_report(sample_results(tmp_path), tmp_path).read_text()
    assert "## Where the time goes (through the facade)" in text
    assert "| 1 | 12.00 | 10.00 | 1.00 | 2.00 | 5.00 | 1.00 | 1.00 | 2.00 |" in text
    assert (tmp_path / "stages_sentiment.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["stages"]["sentiment"][0]["Triton compute"] == 5.0
