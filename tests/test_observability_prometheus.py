"""Prometheus: the recording rules (checked and unit-tested by the real ``promtool``), the compose and local
configurations, and a real Prometheus started the way ``make run`` starts it, scraping the facade's metrics and
evaluating the rules."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import start_http_server

from dashboard.client import PrometheusClient
from dashboard.drift import DriftCounts, prometheus_counts
from dashboard.live import LiveCharts, prometheus_charts
from frontend_api.metrics import ApiMetrics
from serving import stack as stack_module
from serving.prometheus import OBSERVABILITY_DIR, RULES_FILE, find_prometheus, prometheus_process, write_local_config
from serving.stack import PROMETHEUS_MISSING, LocalStack, StackSettings
from serving.triton import free_port
from taskspec import TOP_PROBABILITY_BUCKETS

PROMETHEUS_DIR = OBSERVABILITY_DIR / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian's `prometheus` package; `make prometheus` installs it)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, check=False)


def test_recording_rules_are_valid() -> None:
    result = run_promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 15 rules found" in result.stdout


def test_recording_rules_compute_rates_errors_quantiles_and_drift_on_known_series() -> None:
    result = run_promtool("test", "rules", str(PROMETHEUS_DIR / "rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_rule_fails_the_rule_tests(tmp_path: Path) -> None:
    # Guards against rule tests that pass whatever the rules say.
    rules = RULES_FILE.read_text().replace(
        "histogram_quantile(0.5, sum by (endpoint", "histogram_quantile(0.6, sum by (endpoint"
    )
    (tmp_path / "rules.yml").write_text(rules)
    shutil.copy(PROMETHEUS_DIR / "rules_test.yml", tmp_path)
    result = run_promtool("test", "rules", str(tmp_path / "rules_test.yml"))
    assert result.returncode != 0 and "p50_1m" in result.stdout + result.stderr


def test_compose_configuration_is_valid_and_scrapes_the_facade_with_a_key(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("a-metrics-key-not-a-secret")
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    assert "credentials_file: /run/secrets/mtc_metrics_key" in text
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/run/secrets/mtc_metrics_key", str(key)))
    shutil.copy(RULES_FILE, tmp_path)
    result = run_promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 15 rules found" in result.stdout


def test_local_configuration_is_valid(tmp_path: Path) -> None:
    config = write_local_config(
        tmp_path / "prometheus.yml", {"mtc-api": ["127.0.0.1:8080"], "triton": ["127.0.0.1:8002"]}
    )
    result = run_promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_run_says_how_to_install_a_missing_prometheus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack_module, "find_prometheus", lambda: None)
    settings = StackSettings.on_free_ports(log_dir=tmp_path, s3_data_dir=tmp_path, start_prometheus=True)
    stack = LocalStack(settings, echo=lambda _: None)
    assert stack.prometheus is None and stack.prometheus_missing
    assert stack.dashboard is not None and "MTC_DASHBOARD_PROMETHEUS_URL" not in stack.dashboard.env
    assert "apt-get install prometheus" in PROMETHEUS_MISSING and "MTC_START_PROMETHEUS=false" in PROMETHEUS_MISSING
    opted_out = LocalStack(settings.model_copy(update={"start_prometheus": False}), echo=lambda _: None)
    assert opted_out.prometheus is None and not opted_out.prometheus_missing


def test_make_run_scrapes_the_facade_and_triton_metrics_ports(tmp_path: Path) -> None:
    if find_prometheus() is None:
        pytest.skip("prometheus is not installed")
    settings = StackSettings.on_free_ports(
        log_dir=tmp_path, s3_data_dir=tmp_path, start_prometheus=True, prometheus_data_dir=tmp_path / "tsdb"
    )
    stack = LocalStack(settings, echo=lambda _: None)
    assert stack.prometheus is not None
    assert f"--web.listen-address=127.0.0.1:{settings.prometheus_port}" in stack.prometheus.command
    assert stack.prometheus_targets == {
        "mtc-api": [f"127.0.0.1:{settings.api_port}"],
        "triton": [f"127.0.0.1:{settings.triton_metrics_port}"],
    }
    assert stack.prometheus_config.parent == tmp_path  # with the logs, not in the repository
    assert stack.dashboard is not None  # its live charts come from this Prometheus
    assert stack.dashboard.env["MTC_DASHBOARD_PROMETHEUS_URL"] == f"http://127.0.0.1:{settings.prometheus_port}"


def test_make_run_goes_on_without_prometheus_when_its_port_is_taken(tmp_path: Path) -> None:
    if find_prometheus() is None:
        pytest.skip("prometheus is not installed")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = StackSettings.on_free_ports(
            log_dir=tmp_path, s3_data_dir=tmp_path, start_prometheus=True, prometheus_port=taken.getsockname()[1]
        )
        lines: list[str] = []
        stack = LocalStack(settings, echo=lines.append)
        assert stack.prometheus is not None
        stack._start_prometheus(stack.prometheus)
    assert stack.prometheus is None and stack.supervisor.services == []
    assert any(f"port {settings.prometheus_port} is in use" in line for line in lines), lines


@pytest.fixture
def metrics_target() -> Iterator[tuple[ApiMetrics, str]]:
    """The facade's real metrics registry, served over HTTP on a free port."""
    metrics = ApiMetrics()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        yield metrics, f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(5)


def query(base: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


async def dashboard_charts(base: str) -> LiveCharts:
    client = PrometheusClient(base)
    try:
        return await prometheus_charts(client, time.time(), step_s=5)
    finally:
        await client.aclose()


async def dashboard_drift_counts(base: str) -> DriftCounts:
    client = PrometheusClient(base)
    try:
        return await prometheus_counts(client, time.time())
    finally:
        await client.aclose()


@pytest.mark.integration
@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_facade_and_records_per_task_rates(
    tmp_path: Path, metrics_target: tuple[ApiMetrics, str]
) -> None:
    binary = find_prometheus()
    if binary is None:
        pytest.skip("prometheus is not installed (Debian's `prometheus` package)")
    metrics, target = metrics_target
    port = free_port()
    config = write_local_config(tmp_path / "prometheus.yml", {"mtc-api": [target]})
    process = prometheus_process(
        binary, config, host="127.0.0.1", port=port, data_dir=tmp_path / "tsdb", log_file=tmp_path / "prometheus.log"
    )
    base = f"http://127.0.0.1:{port}"
    with process:
        deadline = time.monotonic() + 60
        rates: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not rates:
            # traffic keeps growing between scrapes, so the 1-minute rate becomes positive after two scrapes
            metrics.requests.labels(endpoint="/v1/sentiment", method="POST", status="200").inc(10)
            metrics.requests.labels(endpoint="/v1/models", method="GET", status="200").inc(10)
            metrics.observe_predictions("sentiment", "1", ["negative", "positive"], np.array([[0.1, 0.9]] * 10))
            time.sleep(1)
            rates = query(base, "task:mtc_api_requests:rate1m > 0")
        assert [r["metric"]["task"] for r in rates] == ["sentiment"], rates  # /v1/models is not a task
        up = query(base, 'up{job="mtc-api"}')
        assert [r["value"][1] for r in up] == ["1"]
        rules = httpx.get(f"{base}/api/v1/rules", timeout=5).json()["data"]["groups"]
        # every query of the Grafana dashboard parses and runs on this Prometheus
        dashboard = json.loads((OBSERVABILITY_DIR / "grafana" / "dashboards" / "mtc.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                answer = httpx.get(f"{base}/api/v1/query", params={"query": target["expr"]}, timeout=5)
                assert answer.status_code == 200 and answer.json()["status"] == "success", (panel["title"], answer.text)
        # the dashboard's live charts read the same series from this Prometheus
        charts = asyncio.run(dashboard_charts(base))
        assert set(charts.requests) == {"sentiment"} and max(charts.requests["sentiment"][1]) > 0
        # and its drift panel the hour's increases of the label counter and the confidence histogram
        counts = asyncio.run(dashboard_drift_counts(base))
        assert list(counts.labels) == [("sentiment", "1", "positive")] and min(counts.labels.values()) > 0
        buckets = counts.confidence["sentiment", "1"]
        assert set(buckets) == {*TOP_PROBABILITY_BUCKETS, math.inf}
        assert buckets[0.8] == 0 and buckets[0.9] == pytest.approx(buckets[math.inf]) and buckets[0.9] > 0
    assert {group["name"] for group in rules} == {"mtc-api", "mtc-drift", "triton"}
    assert json.loads(config.read_text())["rule_files"] == [str(RULES_FILE)]


@pytest.mark.integration
@pytest.mark.slow
def test_make_runs_prometheus_scrapes_the_real_facade_and_triton(tmp_path: Path) -> None:
    if find_prometheus() is None:
        pytest.skip("prometheus is not installed (Debian's `prometheus` package)")
    from tests.support.tiny_models import build_tiny_repository

    repository = build_tiny_repository(tmp_path, tasks=("disaster",))
    settings = StackSettings.on_free_ports(
        s3_data_dir=tmp_path / "s3",
        model_repository=repository,
        log_dir=tmp_path / "logs",
        start_dashboard=False,
        start_prometheus=True,
        prometheus_data_dir=tmp_path / "tsdb",
    )
    lines: list[str] = []
    with LocalStack(settings, echo=lines.append) as stack:
        assert stack.prometheus is not None and stack.prometheus.running, lines
        assert f"Prometheus    {stack.prometheus_url}" in stack.summary()
        base = stack.prometheus_url
        deadline = time.monotonic() + 90
        up: dict[str, str] = {}
        batches: list[dict[str, Any]] = []
        rates: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not (up == {"mtc-api": "1", "triton": "1"} and batches and rates):
            for _ in range(5):
                response = httpx.post(f"{stack.api_url}/v1/disaster", json={"texts": ["fire downtown"]}, timeout=30)
                assert response.status_code == 200, response.text
            time.sleep(1)
            up = {r["metric"]["job"]: r["value"][1] for r in query(base, "up")}
            batches = query(base, "model:nv_inference_batch_size:avg1m > 0")
            rates = query(base, "task:mtc_api_requests:rate1m > 0")
        assert up == {"mtc-api": "1", "triton": "1"}, (up, lines)
        # Triton's counters reached the recording rules (rows per batch of the disaster model), and the facade's
        assert [r["metric"]["model"] for r in batches] == ["disaster"], batches
        assert [r["metric"]["task"] for r in rates] == ["disaster"], rates
