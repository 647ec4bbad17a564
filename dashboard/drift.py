"""The Monitoring tab's drift panel: the label mix and confidence of the last hour against the model card.

The reference is the served version's model card as ``GET /v1/models`` gives it: ``validation_label_mix`` (the
share of each predicted label on the held-out test set) and ``validation_confidence`` (the share of the held-out
predictions per bucket of the top-class probability, in the buckets of the facade's histogram). The live side
is the increase over the last hour of the facade's counter ``mtc_api_predictions_total{task,model_version,label}``
and histogram ``mtc_api_top_probability{task,model_version}``: from Prometheus (``increase(...[1h])``,
:func:`prometheus_counts`) when the dashboard has one, so a restarted dashboard keeps its hour; otherwise from
the page's own samples at every refresh: :class:`DriftHistory` keeps the samples of the last hour and sums the
increases between consecutive ones (a counter that went down, a restarted facade, counts from zero again).

Both shifts are the total variation distance (TVD) between two distributions over the same bins, half the sum
of the absolute differences of the shares: 0 the same, 1 nothing in common; it reads as the share of the
predictions that would have to change label (or confidence bucket) to match the card. It is flagged above
:data:`SHIFT_THRESHOLD` once the hour holds :data:`MIN_PREDICTIONS` predictions (labels), above
:data:`CONFIDENCE_SHIFT_THRESHOLD` once it holds :data:`MIN_CONFIDENCE_PREDICTIONS` (confidence). A card
without confidence figures (a version published before the exporter recorded them) leaves the confidence
without a reference, never flagged.

Pure functions and data only: no widget, no network but :func:`prometheus_counts`' queries.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.samples import Sample

from dashboard.client import PrometheusClient
from dashboard.live import TimeWindow, bucket_quantile, increase

DRIFT_WINDOW_S = 60 * 60

SHIFT_THRESHOLD = 0.15
"""Total variation distance above which the label mix is flagged as shifted.

0.15 means 15% of the predictions would have to change label to match the card's mix: a binary task whose
held-out mix is 57/43 is flagged beyond 72/28 or 42/58. It sits well above sampling noise once
:data:`MIN_PREDICTIONS` are counted (for a binary task the distance is the gap of one share, whose standard
error is at most 0.5/sqrt(n) = 0.05 at n = 100, so 0.15 is three of them) and well below a real change of
traffic (a stream of only one label is 0.43 or more away from that card)."""

MIN_PREDICTIONS = 100
"""Fewer predictions in the window than this are shown but the label mix is never flagged (too few to tell a shift
from noise)."""

CONFIDENCE_SHIFT_THRESHOLD = 0.2
"""Total variation distance above which the top-class probability distribution is flagged as shifted.

The confidence spreads over more bins than a label mix (7 buckets above 0.5 for a binary task, up to 11), so
its distance is noisier: with no shift at all (the live hour and the card's held-out set drawn from the same
distribution), 20,000 simulated draws at :data:`MIN_CONFIDENCE_PREDICTIONS` = 200 live predictions gave a 99.9th
percentile of 0.15 (the disaster card, 1,222 held-out tweets), 0.17 (sentiment, 600 reviews) and 0.19 (11
equally likely buckets, 900 images): 0.2 stays above the noise. A model whose every answer falls one bucket
lower (the disaster card: a distance of 0.28) is flagged in 99.7% of such hours."""

MIN_CONFIDENCE_PREDICTIONS = 200
"""Fewer predictions in the window than this are shown but the confidence is never flagged (at 100, no shift
exceeds 0.2 by chance in 2% of hours for 11 equally likely buckets)."""

LabelCounts = Mapping[tuple[str, str, str], float]
"""(task, model version, label) -> predictions counted."""
ConfidenceBuckets = Mapping[tuple[str, str], Mapping[float, float]]
"""(task, model version) -> cumulative histogram buckets (upper bound -> count) of the top-class probability."""

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class DriftCounts:
    """How much the facade's drift counters grew over a window."""

    labels: LabelCounts = field(default_factory=dict)
    confidence: ConfidenceBuckets = field(default_factory=dict)


@dataclass(frozen=True)
class DriftSample:
    """The facade's drift counters at one moment (``at``: epoch seconds)."""

    at: float
    labels: LabelCounts = field(default_factory=dict)
    confidence: ConfidenceBuckets = field(default_factory=dict)


def drift_sample(at: float, samples: Iterable[Sample]) -> DriftSample:
    """A :class:`DriftSample` from the facade's ``/metrics`` samples (:func:`dashboard.live.metric_samples`)."""
    labels: dict[tuple[str, str, str], float] = {}
    confidence: dict[tuple[str, str], dict[float, float]] = {}
    for sample in samples:
        task, version = sample.labels.get("task", ""), sample.labels.get("model_version", "")
        if sample.name == "mtc_api_predictions_total":
            key = (task, version, sample.labels.get("label", ""))
            labels[key] = labels.get(key, 0.0) + sample.value
        elif sample.name == "mtc_api_top_probability_bucket":
            confidence.setdefault((task, version), {})[float(sample.labels["le"])] = sample.value
    return DriftSample(at, labels, confidence)


def total_variation(live: Mapping[K, float], reference: Mapping[K, float]) -> float:
    """Half the sum of the absolute differences of two distributions (shares), over the keys of either."""
    return 0.5 * sum(abs(live.get(key, 0.0) - reference.get(key, 0.0)) for key in set(live) | set(reference))


def label_mix(counts: Mapping[str, float]) -> dict[str, float]:
    """Counts per label as shares of their total (empty when nothing was counted)."""
    total = sum(counts.values())
    return {label: count / total for label, count in counts.items()} if total > 0 else {}


@dataclass(frozen=True)
class DriftRow:
    """One task's served version: the last hour's traffic against its card."""

    task: str
    version: str
    labels: Sequence[str]
    predictions: float
    live_mix: Mapping[str, float]
    reference_mix: Mapping[str, float] | None
    distance: float | None
    """Total variation distance of ``live_mix`` from ``reference_mix``; None without predictions or card."""
    confidence: Mapping[float, float]
    """Share of the predictions per top-probability bucket (upper bound -> share, not cumulative)."""
    confidence_median: float | None
    confidence_p10: float | None
    confidence_count: float = 0.0
    """Predictions the confidence histogram counted in the window (its ``+Inf`` bucket)."""
    reference_confidence: Mapping[float, float] | None = None
    """The card's share of the held-out predictions per bucket; None when the card records none."""
    confidence_distance: float | None = None
    """Total variation distance of ``confidence`` from ``reference_confidence``; None without predictions, card
    figures, or when the live histogram lacks a bucket of the card's."""

    @property
    def shifted(self) -> bool:
        """The mix moved beyond :data:`SHIFT_THRESHOLD` with enough predictions to say so."""
        return self.distance is not None and self.predictions >= MIN_PREDICTIONS and self.distance > SHIFT_THRESHOLD

    @property
    def confidence_shifted(self) -> bool:
        """The confidence distribution moved beyond :data:`CONFIDENCE_SHIFT_THRESHOLD` with enough predictions."""
        return (
            self.confidence_distance is not None
            and self.confidence_count >= MIN_CONFIDENCE_PREDICTIONS
            and self.confidence_distance > CONFIDENCE_SHIFT_THRESHOLD
        )


@dataclass(frozen=True)
class Reference:
    """What the panel compares a task with: its served version, its labels and the card's figures (if any)."""

    version: str
    labels: Sequence[str]
    mix: Mapping[str, float] | None
    confidence: Mapping[float, float] | None = None
    """Share of the held-out predictions per top-probability bucket (upper bound -> share)."""


def drift_rows(
    counts: DriftCounts, references: Mapping[str, Reference], tasks: Collection[str] | None = None
) -> list[DriftRow]:
    """One row per task of ``references`` (in its order), for its served version only, from the window's
    increases ``counts``."""
    rows = []
    for task, ref in references.items():
        if tasks is not None and task not in tasks:
            continue
        per_label = {label: counts.labels.get((task, ref.version, label), 0.0) for label in ref.labels}
        per_label |= {k[2]: v for k, v in counts.labels.items() if k[:2] == (task, ref.version) and v > 0}
        predictions = sum(per_label.values())
        live = label_mix(per_label)
        cumulative = counts.confidence.get((task, ref.version), {})
        shares = _bucket_shares(cumulative)
        rows.append(
            DriftRow(
                task=task,
                version=ref.version,
                labels=list(ref.labels),
                predictions=predictions,
                live_mix=live,
                reference_mix=ref.mix,
                distance=total_variation(live, ref.mix) if live and ref.mix else None,
                confidence=shares,
                confidence_count=max(cumulative.values(), default=0.0),
                confidence_median=bucket_quantile(0.5, cumulative),
                confidence_p10=bucket_quantile(0.1, cumulative),
                reference_confidence=ref.confidence,
                confidence_distance=_confidence_distance(shares, ref.confidence),
            )
        )
    return rows


def _confidence_distance(live: Mapping[float, float], reference: Mapping[float, float] | None) -> float | None:
    """TVD of two bucketed distributions, when the live histogram has every bucket of the card's (the same bounds:
    the facade's histogram and the card share :data:`taskspec.TOP_PROBABILITY_BUCKETS`)."""
    if not live or not reference:
        return None
    finite = {bound for bound in live if not math.isinf(bound)}
    if finite != set(reference):
        return None
    return total_variation(live, reference)


class DriftHistory(TimeWindow[DriftSample]):
    """The drift samples of the last ``window_s`` seconds and their increases."""

    def __init__(self, window_s: float = DRIFT_WINDOW_S) -> None:
        super().__init__(window_s)

    def increases(self) -> DriftCounts:
        """How much every counter and bucket grew over the window (sum of the increases between samples)."""
        counts: dict[tuple[str, str, str], float] = {}
        buckets: dict[tuple[str, str], dict[float, float]] = {}
        for before, after in self.pairs():
            for key, value in after.labels.items():
                counts[key] = counts.get(key, 0.0) + increase(before.labels.get(key, 0.0), value)
            for pair, now in after.confidence.items():
                then = before.confidence.get(pair, {})
                total = buckets.setdefault(pair, {})
                for le, count in now.items():
                    total[le] = total.get(le, 0.0) + increase(then.get(le, 0.0), count)
        return DriftCounts(counts, buckets)

    def rows(self, references: Mapping[str, Reference], tasks: Collection[str] | None = None) -> list[DriftRow]:
        """One row per task of ``references`` (in its order), for its served version only."""
        return drift_rows(self.increases(), references, tasks)


PROMETHEUS_LABELS_QUERY = "sum by (task, model_version, label) (increase(mtc_api_predictions_total[{window}]))"
PROMETHEUS_CONFIDENCE_QUERY = "sum by (task, model_version, le) (increase(mtc_api_top_probability_bucket[{window}]))"


async def prometheus_counts(client: PrometheusClient, now: float, window_s: float = DRIFT_WINDOW_S) -> DriftCounts:
    """The increases of the drift counters over the ``window_s`` seconds before ``now``, from Prometheus (summed
    over the facade's instances); raises what the client raises."""
    window = f"{int(window_s)}s"
    labels: dict[tuple[str, str, str], float] = {}
    for series, value in await client.query(PROMETHEUS_LABELS_QUERY.format(window=window), now):
        if math.isfinite(value):
            labels[(series.get("task", ""), series.get("model_version", ""), series.get("label", ""))] = value
    confidence: dict[tuple[str, str], dict[float, float]] = {}
    for series, value in await client.query(PROMETHEUS_CONFIDENCE_QUERY.format(window=window), now):
        try:
            le = float(series.get("le", ""))
        except ValueError:
            continue
        if math.isfinite(value):
            confidence.setdefault((series.get("task", ""), series.get("model_version", "")), {})[le] = value
    return DriftCounts(labels, confidence)


def _bucket_shares(cumulative: Mapping[float, float]) -> dict[float, float]:
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return {}
    shares, below = {}, 0.0
    for bound in bounds:
        shares[bound] = max(cumulative[bound] - below, 0.0) / total
        below = cumulative[bound]
    return shares
