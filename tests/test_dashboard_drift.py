"""The Monitoring tab's drift panel: the last hour's label mix and confidence (the facade's real drift metrics,
sampled by the page or read from Prometheus) against the served version's model card, flagged beyond the stated
thresholds."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.samples import Sample

from dashboard.app import DashboardPage, build_page
from dashboard.client import ConfidenceBucket, PrometheusClient
from dashboard.drift import (
    CONFIDENCE_SHIFT_THRESHOLD,
    DRIFT_WINDOW_S,
    MIN_CONFIDENCE_PREDICTIONS,
    MIN_PREDICTIONS,
    SHIFT_THRESHOLD,
    DriftHistory,
    DriftSample,
    Reference,
    drift_sample,
    total_variation,
)
from dashboard.live import metric_samples
from dashboard.settings import DashboardSettings
from dashboard.state import DashboardState
from dashboard.views.render import drift_table_html
from frontend_api.metrics import ApiMetrics
from taskspec import SENTIMENT, TOP_PROBABILITY_BUCKETS
from tests.fakes.dashboard import FakeFacade, default_models

CARD = {"negative": 0.57, "positive": 0.43}
SENTIMENT_REF = {"sentiment": Reference("2", ["negative", "positive"], CARD)}
# The card's held-out top-class probability: a fifth of the predictions in each bucket from (0.6, 0.7] to (0.95, 0.99].
CARD_CONFIDENCE = {**dict.fromkeys(TOP_PROBABILITY_BUCKETS, 0.0), 0.7: 0.2, 0.8: 0.2, 0.9: 0.2, 0.95: 0.2, 0.99: 0.2}
CONFIDENT_REF = {"sentiment": Reference("2", ["negative", "positive"], CARD, CARD_CONFIDENCE)}


def predict(metrics: ApiMetrics, negative: int, positive: int, version: str = "2", top: float = 0.9) -> None:
    """The facade's own bookkeeping of ``negative`` + ``positive`` sentiment predictions of probability ``top``."""
    rows = [[top, 1 - top]] * negative + [[1 - top, top]] * positive
    metrics.observe_predictions("sentiment", version, ["negative", "positive"], np.array(rows))


def text(metrics: ApiMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def samples(metrics: ApiMetrics) -> list[Sample]:
    """The samples the page reads from the facade's ``/metrics`` text."""
    return metric_samples(text(metrics))


def test_a_sample_reads_the_facades_label_counter_and_confidence_histogram() -> None:
    metrics = ApiMetrics()
    predict(metrics, negative=3, positive=1, top=0.85)
    sample = drift_sample(10.0, samples(metrics))
    assert sample.labels == {("sentiment", "2", "negative"): 3, ("sentiment", "2", "positive"): 1}
    assert sample.confidence[("sentiment", "2")][0.8] == 0 and sample.confidence[("sentiment", "2")][0.9] == 4


def test_total_variation_is_half_the_summed_share_gaps_over_every_label() -> None:
    assert total_variation(CARD, CARD) == 0
    assert total_variation({"negative": 0.72, "positive": 0.28}, CARD) == pytest.approx(0.15)
    assert total_variation({"neutral": 1.0}, CARD) == pytest.approx(1.0)  # a label the card never predicted


def test_the_last_hour_of_the_served_version_is_compared_and_a_shift_beyond_the_threshold_is_flagged() -> None:
    metrics, history = ApiMetrics(), DriftHistory()
    predict(metrics, negative=500, positive=500, version="1")  # an older version: not compared with v2's card
    history.add(drift_sample(0.0, samples(metrics)))
    predict(metrics, negative=57, positive=43)  # the card's mix
    history.add(drift_sample(5.0, samples(metrics)))
    (row,) = history.rows(SENTIMENT_REF)
    assert row.predictions == 100 and row.live_mix == pytest.approx(CARD)
    assert row.distance == pytest.approx(0.0) and not row.shifted
    assert row.confidence_median == pytest.approx(0.85)  # all in the (0.8, 0.9] bucket
    assert row.confidence == {**dict.fromkeys(row.confidence, 0.0), 0.9: 1.0}
    predict(metrics, negative=100, positive=0)  # 157 of 200 negative: 0.785 vs 0.57
    history.add(drift_sample(10.0, samples(metrics)))
    (row,) = history.rows(SENTIMENT_REF)
    assert row.distance == pytest.approx(0.215) and row.shifted and SHIFT_THRESHOLD < 0.215


def test_too_few_predictions_or_no_card_are_never_flagged() -> None:
    history = DriftHistory()
    history.add(DriftSample(0.0))
    history.add(DriftSample(5.0, labels={("sentiment", "2", "negative"): MIN_PREDICTIONS - 1}))
    (row,) = history.rows(SENTIMENT_REF)
    assert row.distance == pytest.approx(0.43) and not row.shifted  # every one negative, but too few
    (row,) = history.rows({"sentiment": Reference("2", ["negative", "positive"], None)})
    assert row.distance is None and not row.shifted and row.live_mix == {"negative": 1.0, "positive": 0.0}


def test_a_facade_restart_counts_from_zero_and_samples_older_than_an_hour_are_forgotten() -> None:
    history = DriftHistory()
    negative = ("sentiment", "2", "negative")
    history.add(DriftSample(0.0, labels={negative: 0}))
    history.add(DriftSample(5.0, labels={negative: 400}))
    history.add(DriftSample(10.0, labels={negative: 30}))  # restarted: 30 since
    assert history.rows(SENTIMENT_REF)[0].predictions == 430
    history.add(DriftSample(6.0 + DRIFT_WINDOW_S, labels={negative: 40}))
    assert len(history) == 2  # the first two are older than the hour
    assert history.rows(SENTIMENT_REF)[0].predictions == 10


def test_the_panel_shows_both_mixes_and_flags_the_shift_visibly() -> None:
    history = DriftHistory()
    history.add(DriftSample(0.0))
    history.add(DriftSample(600.0, labels={("sentiment", "2", "negative"): 190, ("sentiment", "2", "positive"): 10}))
    markup = drift_table_html(history.rows(SENTIMENT_REF), history.span_s)
    assert "negative 95%, positive 5%" in markup and "negative 57%, positive 43%" in markup
    assert '<span class="mtc-drift-shift">shift 0.38</span>' in markup
    assert "last 10 min (up to an hour)" in markup and f"above {SHIFT_THRESHOLD:g}" in markup
    # a card published before the exporter recorded confidence figures: said so, never flagged
    assert "no card figures (published before they were recorded)" in markup


@pytest.mark.anyio
async def test_the_monitoring_tab_compares_the_facades_traffic_with_the_card_it_lists() -> None:
    metrics = ApiMetrics()
    models = default_models()
    models = [
        m.model_copy(update={"version": "2", "validation_label_mix": CARD}) if m.task == SENTIMENT.name else m
        for m in models
    ]
    fake = FakeFacade(model_list=models, metrics_text=text(metrics))
    page = build_page(fake, DashboardSettings())
    clock = iter([1000.0, 1005.0])
    page.state.monitoring.clock = lambda: next(clock)
    await page.refresh()
    predict(metrics, negative=0, positive=150)
    fake.metrics_text = text(metrics)
    await page.refresh()
    rows = {row.task: row for row in page.state.monitoring.drift}
    assert rows["sentiment"].shifted and rows["sentiment"].distance == pytest.approx(0.57)
    assert rows["disaster"].reference_mix is None  # the facade lists no card figures for it
    markup = page.monitoring_view.drift.object
    assert '<span class="mtc-drift-shift">shift 0.57</span>' in markup
    assert "negative 0%, positive 100%" in markup and "the last 5 s (up to an hour)" in markup


def predict_confidence(metrics: ApiMetrics, per_top: dict[float, int], version: str = "2") -> None:
    """``count`` negative predictions of top-class probability ``top``, for each ``top: count``."""
    for top, count in per_top.items():
        predict(metrics, negative=count, positive=0, version=version, top=top)


def test_the_confidence_is_compared_with_the_cards_buckets_and_a_shift_beyond_the_threshold_is_flagged() -> None:
    metrics, history = ApiMetrics(), DriftHistory()
    history.add(drift_sample(0.0, samples(metrics)))
    predict_confidence(metrics, {0.65: 40, 0.75: 40, 0.85: 40, 0.93: 40, 0.97: 40})  # the card's distribution
    history.add(drift_sample(5.0, samples(metrics)))
    (row,) = history.rows(CONFIDENT_REF)
    assert row.confidence_count == MIN_CONFIDENCE_PREDICTIONS == 200
    assert row.reference_confidence == CARD_CONFIDENCE
    assert row.confidence_distance == pytest.approx(0.0) and not row.confidence_shifted
    # the model grows unsure: 100 more answers in (0.5, 0.6]; 100 of 300 would have to move to match the card
    predict_confidence(metrics, {0.55: 100})
    history.add(drift_sample(10.0, samples(metrics)))
    (row,) = history.rows(CONFIDENT_REF)
    assert row.confidence[0.6] == pytest.approx(1 / 3)
    assert row.confidence_distance == pytest.approx(1 / 3) and row.confidence_shifted
    assert CONFIDENCE_SHIFT_THRESHOLD < 1 / 3
    # the same shares from too few predictions are shown but not flagged
    few = DriftHistory()
    few.add(DriftSample(0.0))
    cumulative = {le: c / 2 for le, c in history.increases().confidence[("sentiment", "2")].items()}
    few.add(DriftSample(5.0, confidence={("sentiment", "2"): cumulative}))
    (row,) = few.rows(CONFIDENT_REF)
    assert row.confidence_count == 150 < MIN_CONFIDENCE_PREDICTIONS
    assert row.confidence_distance == pytest.approx(1 / 3) and not row.confidence_shifted


def test_a_card_without_confidence_figures_or_in_other_buckets_gives_no_confidence_distance() -> None:
    metrics, history = ApiMetrics(), DriftHistory()
    history.add(drift_sample(0.0, samples(metrics)))
    predict_confidence(metrics, {0.55: 300})
    history.add(drift_sample(5.0, samples(metrics)))
    (old_card,) = history.rows(SENTIMENT_REF)  # a version published before the exporter recorded them
    assert old_card.confidence[0.6] == 1.0 and old_card.reference_confidence is None
    assert old_card.confidence_distance is None and not old_card.confidence_shifted
    other = {"sentiment": Reference("2", ["negative", "positive"], CARD, {0.5: 0.5, 1.0: 0.5})}
    (row,) = history.rows(other)
    assert row.confidence_distance is None and not row.confidence_shifted
    assert "not comparable (other buckets than the card's)" in drift_table_html([row])


def test_the_panel_draws_the_live_confidence_beside_the_cards_and_flags_its_shift() -> None:
    metrics, history = ApiMetrics(), DriftHistory()
    history.add(drift_sample(0.0, samples(metrics)))
    predict_confidence(metrics, {0.55: 150, 0.97: 150})
    history.add(drift_sample(30.0, samples(metrics)))
    markup = drift_table_html(history.rows(CONFIDENT_REF), history.span_s)
    # (0.5, 0.6]: half the live answers, none of the card's; (0.95, 0.99]: half the live ones, a fifth of the card's
    assert (
        '<span class="mtc-conf-pair" data-le="0.6" title="(0.5, 0.6]: live 50%, card 0%">'
        '<span class="mtc-conf-bar mtc-conf-live" style="height:50%"></span>'
        '<span class="mtc-conf-bar mtc-conf-card" style="height:2%"></span></span>'
    ) in markup
    assert 'title="(0.95, 0.99]: live 50%, card 20%"' in markup
    assert markup.count('class="mtc-conf-pair"') == len(TOP_PROBABILITY_BUCKETS)
    assert '<td class="mtc-drift-confidence"><span class="mtc-drift-shift">shift 0.80</span></td>' in markup
    assert f"above {CONFIDENCE_SHIFT_THRESHOLD:g} for the top-class probability with at least 200" in markup


@pytest.mark.anyio
async def test_the_monitoring_tab_compares_the_confidence_with_the_card_the_facade_lists() -> None:
    metrics = ApiMetrics()
    card = [ConfidenceBucket(le=le, share=share) for le, share in CARD_CONFIDENCE.items()]
    models = [
        m.model_copy(update={"version": "2", "validation_label_mix": CARD, "validation_confidence": card})
        if m.task == SENTIMENT.name
        else m
        for m in default_models()
    ]
    fake = FakeFacade(model_list=models, metrics_text=text(metrics))
    page = build_page(fake, DashboardSettings())
    clock = iter([1000.0, 1005.0])
    page.state.monitoring.clock = lambda: next(clock)
    await page.refresh()
    predict_confidence(metrics, {0.55: 100, 0.65: 50, 0.75: 50})
    fake.metrics_text = text(metrics)
    await page.refresh()
    rows = {row.task: row for row in page.state.monitoring.drift}
    assert rows["sentiment"].reference_confidence == CARD_CONFIDENCE
    # half the answers in (0.5, 0.6] where the card has none, a quarter in each of the next two buckets
    assert rows["sentiment"].confidence_distance == pytest.approx(0.6) and rows["sentiment"].confidence_shifted
    assert rows["disaster"].reference_confidence is None
    markup = page.monitoring_view.drift.object
    assert '<td class="mtc-drift-confidence"><span class="mtc-drift-shift">shift 0.60</span></td>' in markup
    assert 'title="(0.6, 0.7]: live 25%, card 20%"' in markup


def prometheus_drift(request: httpx.Request) -> httpx.Response:
    """A Prometheus holding an hour of the facade's drift counters: 150 sentiment v2 predictions, all negative,
    with a top-class probability in (0.5, 0.6]; range queries (the live charts) answer no series."""
    query = request.url.params["query"]
    if request.url.path == "/api/v1/query_range":
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": []}})
    assert request.url.path == "/api/v1/query" and "[3600s]" in query
    base = {"task": "sentiment", "model_version": "2"}
    if "mtc_api_predictions_total" in query:
        series = [(base | {"label": "negative"}, 150.0), (base | {"label": "positive"}, 0.0)]
    else:
        assert "mtc_api_top_probability_bucket" in query
        series = [(base | {"le": f"{le}"}, 0.0 if le < 0.6 else 150.0) for le in TOP_PROBABILITY_BUCKETS]
        series.append((base | {"le": "+Inf"}, 150.0))
    result = [{"metric": labels, "value": [1000.0, f"{value}"]} for labels, value in series]
    return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})


@pytest.mark.anyio
async def test_with_prometheus_the_hour_comes_from_its_increases_and_survives_a_dashboard_restart() -> None:
    card = [ConfidenceBucket(le=le, share=share) for le, share in CARD_CONFIDENCE.items()]
    models = [
        m.model_copy(update={"version": "2", "validation_label_mix": CARD, "validation_confidence": card})
        if m.task == SENTIMENT.name
        else m
        for m in default_models()
    ]
    fake = FakeFacade(model_list=models, metrics_text=text(ApiMetrics()))  # this facade counted nothing yet
    prometheus = PrometheusClient("http://prometheus:9090", transport=httpx.MockTransport(prometheus_drift))
    page = DashboardPage(DashboardState(fake, DashboardSettings(), prometheus))  # a page just opened
    await page.refresh()
    monitoring = page.state.monitoring
    (row,) = [row for row in monitoring.drift if row.task == "sentiment"]
    assert row.predictions == 150 and row.live_mix == {"negative": 1.0, "positive": 0.0}
    assert row.distance == pytest.approx(0.43) and row.shifted
    assert row.confidence_count == 150 and row.confidence[0.6] == 1.0
    assert row.confidence_distance == pytest.approx(1.0) and not row.confidence_shifted  # 150 < 200
    assert monitoring.drift_source == "from Prometheus at http://prometheus:9090"
    markup = page.monitoring_view.drift.object
    assert "Over the last hour, from Prometheus at http://prometheus:9090." in markup
    assert "1.00 (too few to judge)" in markup

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    monitoring.prometheus = PrometheusClient("http://prometheus:9090", transport=httpx.MockTransport(down))
    await page.refresh()  # Prometheus gone: the page's own samples (an idle facade), and it says why
    assert monitoring.drift_source.startswith("sampled by this page since it opened (Prometheus at")
    assert [row.predictions for row in monitoring.drift if row.task == "sentiment"] == [0]
