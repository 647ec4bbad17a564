"""The Monitoring tab's drift panel: the last hour's label mix and confidence (the facade's real drift metrics,
sampled by the page) against the served version's model card, flagged beyond the stated threshold."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import generate_latest

from dashboard.app import build_page
from dashboard.drift import (
    DRIFT_WINDOW_S,
    MIN_PREDICTIONS,
    SHIFT_THRESHOLD,
    DriftHistory,
    DriftSample,
    Reference,
    drift_sample,
    total_variation,
)
from dashboard.settings import DashboardSettings
from dashboard.views.render import drift_table_html
from frontend_api.metrics import ApiMetrics
from taskspec import SENTIMENT
from tests.fakes.dashboard import FakeFacade, default_models

CARD = {"negative": 0.57, "positive": 0.43}
SENTIMENT_REF = {"sentiment": Reference("2", ["negative", "positive"], CARD)}


def predict(metrics: ApiMetrics, negative: int, positive: int, version: str = "2", top: float = 0.9) -> None:
    """The facade's own bookkeeping of ``negative`` + ``positive`` sentiment predictions of probability ``top``."""
    rows = [[top, 1 - top]] * negative + [[1 - top, top]] * positive
    metrics.observe_predictions("sentiment", version, ["negative", "positive"], np.array(rows))


def text(metrics: ApiMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_a_sample_reads_the_facades_label_counter_and_confidence_histogram() -> None:
    metrics = ApiMetrics()
    predict(metrics, negative=3, positive=1, top=0.85)
    sample = drift_sample(10.0, text(metrics))
    assert sample.labels == {("sentiment", "2", "negative"): 3, ("sentiment", "2", "positive"): 1}
    assert sample.confidence[("sentiment", "2")][0.8] == 0 and sample.confidence[("sentiment", "2")][0.9] == 4


def test_total_variation_is_half_the_summed_share_gaps_over_every_label() -> None:
    assert total_variation(CARD, CARD) == 0
    assert total_variation({"negative": 0.72, "positive": 0.28}, CARD) == pytest.approx(0.15)
    assert total_variation({"neutral": 1.0}, CARD) == pytest.approx(1.0)  # a label the card never predicted


def test_the_last_hour_of_the_served_version_is_compared_and_a_shift_beyond_the_threshold_is_flagged() -> None:
    metrics, history = ApiMetrics(), DriftHistory()
    predict(metrics, negative=500, positive=500, version="1")  # an older version: not compared with v2's card
    history.add(drift_sample(0.0, text(metrics)))
    predict(metrics, negative=57, positive=43)  # the card's mix
    history.add(drift_sample(5.0, text(metrics)))
    (row,) = history.rows(SENTIMENT_REF)
    assert row.predictions == 100 and row.live_mix == pytest.approx(CARD)
    assert row.distance == pytest.approx(0.0) and not row.shifted
    assert row.confidence_median == pytest.approx(0.85)  # all in the (0.8, 0.9] bucket
    assert row.confidence == {**dict.fromkeys(row.confidence, 0.0), 0.9: 1.0}
    predict(metrics, negative=100, positive=0)  # 157 of 200 negative: 0.785 vs 0.57
    history.add(drift_sample(10.0, text(metrics)))
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
    assert "records no confidence figures" in markup


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
