"""The Monitoring tab's live time series: samples of the facade's real metrics turned into rates and quantiles,
and the charts drawn from them."""

from __future__ import annotations

import math

import httpx
import pytest
from prometheus_client import generate_latest

from dashboard.app import DashboardPage, build_page
from dashboard.client import ModelStats, PrometheusClient
from dashboard.live import (
    WINDOW_S,
    LiveHistory,
    Snapshot,
    TritonTotals,
    bucket_quantile,
    metric_samples,
    snapshot,
)
from dashboard.settings import DashboardSettings
from dashboard.state import DashboardState
from frontend_api.metrics import ApiMetrics
from tests.fakes.dashboard import FakeFacade

TASKS = {"sentiment", "disaster", "pose"}


def facade_metrics(metrics: ApiMetrics) -> str:
    """What the facade's /metrics answers for these metrics (the facade's own registry and exposition)."""
    return generate_latest(metrics.registry).decode()


def serve(metrics: ApiMetrics, endpoint: str, status: int, seconds: float, times: int = 1) -> None:
    for _ in range(times):
        metrics.requests.labels(endpoint=endpoint, method="POST", status=str(status)).inc()
        metrics.latency.labels(endpoint=endpoint).observe(seconds)


def test_a_snapshot_reads_the_facades_own_metrics_per_task_route() -> None:
    metrics = ApiMetrics()
    serve(metrics, "/v1/sentiment", 200, 0.004, times=3)
    serve(metrics, "/v1/sentiment", 503, 0.001)
    serve(metrics, "/v1/sentiment", 422, 0.001)
    metrics.requests.labels(endpoint="/v1/models", method="GET", status="200").inc(7)  # not a task
    metrics.in_flight.set(2)
    stats = [
        ModelStats(task="sentiment", version="1", request_success=10, avg_queue_ms=2.0, avg_compute_ms=1.0),
        ModelStats(task="sentiment", version="2", request_success=30, avg_queue_ms=1.0, avg_compute_ms=3.0),
    ]
    snap = snapshot(100.0, metric_samples(facade_metrics(metrics)), stats, TASKS)
    assert snap.requests == {"sentiment": 5} and snap.errors == {"sentiment": 1}
    assert snap.in_flight == 2
    assert snap.latency_buckets["sentiment"][0.005] == 5 and snap.latency_buckets["sentiment"][math.inf] == 5
    # versions together: 40 requests, 50 ms queued, 100 ms computing
    assert snap.models["sentiment"] == TritonTotals(success=40, queue_ms=50.0, compute_ms=100.0)


def test_quantiles_follow_prometheus_histogram_quantile() -> None:
    # the same buckets as the p50/p95 recording rules' promtool test (0.04 s and 0.05 s there)
    buckets = {0.01: 0.2, 0.05: 0.6, math.inf: 1.0}
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.04)
    assert bucket_quantile(0.95, buckets) == 0.05  # in the +Inf bucket: the highest finite bound
    assert bucket_quantile(0.5, {0.01: 0.0, math.inf: 0.0}) is None  # no requests in the interval


def test_history_turns_consecutive_samples_into_rates_latency_and_triton_times() -> None:
    metrics = ApiMetrics()
    history = LiveHistory()
    history.add(snapshot(1000.0, metric_samples(facade_metrics(metrics)), [], TASKS))
    serve(metrics, "/v1/sentiment", 200, 0.003, times=40)
    serve(metrics, "/v1/sentiment", 200, 0.2, times=10)  # the slowest fifth
    serve(metrics, "/v1/sentiment", 504, 10.0, times=5)
    stats = [
        ModelStats(
            task="sentiment", version="1", request_success=50, inference_count=200, execution_count=25,
            avg_queue_ms=4.0, avg_compute_ms=6.0,
        )
    ]  # fmt: skip
    history.add(snapshot(1005.0, metric_samples(facade_metrics(metrics)), stats, TASKS))
    charts = history.charts()
    assert charts.requests == {"sentiment": ([1005_000.0], [11.0])}  # 55 requests in 5 s
    assert charts.errors == {"sentiment": ([1005_000.0], [1.0])}
    p50 = charts.latency_ms["sentiment p50"][1][0]
    p95 = charts.latency_ms["sentiment p95"][1][0]
    assert 2.5 < p50 <= 5.0 and 250 < p95 <= 10_000  # the buckets 2.5-5 ms and 0.25-10 s
    assert charts.triton_ms == {
        "sentiment queue": ([1005_000.0], [4.0]),
        "sentiment compute": ([1005_000.0], [6.0]),
    }
    assert charts.batch_size == {"sentiment": ([1005_000.0], [8.0])}
    assert charts.in_flight == {"in flight": ([1005_000.0], [0.0])}


def test_a_restarted_facade_counts_from_zero_and_old_samples_leave_the_window() -> None:
    history = LiveHistory()
    history.add(Snapshot(0.0, requests={"disaster": 100.0}))
    history.add(Snapshot(10.0, requests={"disaster": 150.0}))
    history.add(Snapshot(20.0, requests={"disaster": 20.0}))  # restarted: 20 since
    history.add(Snapshot(15.0, requests={"disaster": 999.0}))  # out of order: ignored
    assert history.charts().requests["disaster"][1] == [5.0, 2.0]
    history.add(Snapshot(20.0 + WINDOW_S, requests={"disaster": 30.0}))
    assert len(history) == 2  # the first two are older than 15 minutes
    assert history.charts().requests["disaster"] == ([(20.0 + WINDOW_S) * 1000], [10 / WINDOW_S])


@pytest.mark.anyio
async def test_the_monitoring_tab_draws_a_line_per_task_from_two_refreshes() -> None:
    metrics = ApiMetrics()
    fake = FakeFacade(metrics_text=facade_metrics(metrics))
    page = build_page(fake, DashboardSettings())
    clock = iter([1000.0, 1005.0, 1010.0])
    page.state.monitoring.clock = lambda: next(clock)
    await page.refresh()
    view = page.monitoring_view
    assert view.live["requests"].sources == {}  # one sample: no rate yet
    serve(metrics, "/v1/sentiment", 200, 0.01, times=20)
    serve(metrics, "/v1/disaster", 200, 0.01, times=5)
    fake.metrics_text = facade_metrics(metrics)
    await page.refresh()
    figure = view.live_panes["requests"].object
    assert len(figure.renderers) == 2  # disaster and sentiment
    assert [item.label["value"] for item in figure.legend[0].items] == ["disaster", "sentiment"]
    assert view.live["requests"].sources["sentiment"].data["v"] == [4.0]  # 20 requests in 5 s
    assert ("metrics", None) in fake.calls
    # the same lines, one more point each: the figure stays, its data grows
    serve(metrics, "/v1/sentiment", 200, 0.01, times=10)
    fake.metrics_text = facade_metrics(metrics)
    await page.refresh()
    assert view.live_panes["requests"].object is figure
    assert view.live["requests"].sources["sentiment"].data["v"] == [4.0, 2.0]
    assert view.live["requests"].sources["disaster"].data["v"] == [1.0, 0.0]


def prometheus_answer(request: httpx.Request) -> httpx.Response:
    """A Prometheus answering range queries: one series per recording rule, labelled like the real ones (and the
    drift panel's instant queries with no series)."""
    query = request.url.params["query"]
    if request.url.path == "/api/v1/query":
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": []}})
    assert request.url.path == "/api/v1/query_range" and request.url.params["step"] == "5"
    labels = {"task": "sentiment", "endpoint": "/v1/sentiment"} if query.startswith("task:") else {"model": "pose"}
    if query.startswith("sum("):
        labels = {}
    values = [[1000.0, "2.5"], [1005.0, "NaN"], [1010.0, "3"]]
    body = {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": labels, "values": values}]}}
    return httpx.Response(200, json=body)


@pytest.mark.anyio
async def test_live_charts_come_from_prometheus_when_it_answers_and_from_samples_otherwise() -> None:
    fake = FakeFacade(metrics_text=facade_metrics(ApiMetrics()))
    prometheus = PrometheusClient("http://prometheus:9090", transport=httpx.MockTransport(prometheus_answer))
    page = DashboardPage(DashboardState(fake, DashboardSettings(stats_interval_s=5), prometheus))
    await page.refresh()
    live = page.state.monitoring.live
    assert live.requests == {"sentiment": ([1000_000.0, 1010_000.0], [2.5, 3.0])}  # NaN (no data) is a gap
    assert set(live.latency_ms) == {"sentiment p50", "sentiment p95"}
    assert set(live.triton_ms) == {"pose queue", "pose compute"} and set(live.in_flight) == {"in flight"}
    assert page.state.monitoring.live_source == "from Prometheus at http://prometheus:9090"
    assert page.monitoring_view.live["requests"].sources["sentiment"].data["v"] == [2.5, 3.0]

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    page.state.monitoring.prometheus = PrometheusClient("http://prometheus:9090", transport=httpx.MockTransport(down))
    await page.refresh()
    assert page.state.monitoring.live_source.startswith("sampled by this page since it opened (Prometheus at")
    assert page.state.monitoring.live.requests == {}  # two samples of an idle facade: no traffic to draw
