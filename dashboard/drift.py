"""The Monitoring tab's drift panel: the label mix and confidence of the last hour against the model card.

The reference is the served version's model card as ``GET /v1/models`` gives it (``validation_label_mix``:
the share of each predicted label on the held-out test set). The live side is the facade's ``/metrics``
counters ``mtc_api_predictions_total{task,model_version,label}`` and the histogram
``mtc_api_top_probability{task,model_version}``, sampled by the page at every refresh: :class:`DriftHistory`
keeps the samples of the last hour and sums the increases between consecutive ones (a counter that went down,
a restarted facade, counts from zero again), the way ``increase(...[1h])`` would.

The shift is the total variation distance between the two label mixes, half the sum of the absolute
differences of the shares (0: the same mix, 1: no label in common); it is flagged above
:data:`SHIFT_THRESHOLD` once the hour holds :data:`MIN_PREDICTIONS` predictions. The card records no
confidence figures, so the confidence distribution is shown (shares per histogram bucket, median and 10th
percentile) without a reference and never flagged.

Pure functions and data only: no widget, no network.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

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
"""Fewer predictions in the window than this are shown but never flagged (too few to tell a shift from noise)."""

LabelCounts = Mapping[tuple[str, str, str], float]
"""(task, model version, label) -> predictions counted."""
ConfidenceBuckets = Mapping[tuple[str, str], Mapping[float, float]]
"""(task, model version) -> cumulative histogram buckets (upper bound -> count) of the top-class probability."""


@dataclass(frozen=True)
class DriftSample:
    """The facade's drift counters at one moment (``at``: epoch seconds)."""

    at: float
    labels: LabelCounts = field(default_factory=dict)
    confidence: ConfidenceBuckets = field(default_factory=dict)


def drift_sample(at: float, metrics_text: str) -> DriftSample:
    """A :class:`DriftSample` from the facade's ``/metrics`` text."""
    labels: dict[tuple[str, str, str], float] = {}
    confidence: dict[tuple[str, str], dict[float, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            task, version = sample.labels.get("task", ""), sample.labels.get("model_version", "")
            if sample.name == "mtc_api_predictions_total":
                key = (task, version, sample.labels.get("label", ""))
                labels[key] = labels.get(key, 0.0) + sample.value
            elif sample.name == "mtc_api_top_probability_bucket":
                confidence.setdefault((task, version), {})[float(sample.labels["le"])] = sample.value
    return DriftSample(at, labels, confidence)


def total_variation(live: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """Half the sum of the absolute differences of two label mixes (shares), over the labels of either."""
    return 0.5 * sum(abs(live.get(label, 0.0) - reference.get(label, 0.0)) for label in set(live) | set(reference))


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

    @property
    def shifted(self) -> bool:
        """The mix moved beyond :data:`SHIFT_THRESHOLD` with enough predictions to say so."""
        return self.distance is not None and self.predictions >= MIN_PREDICTIONS and self.distance > SHIFT_THRESHOLD


@dataclass(frozen=True)
class Reference:
    """What the panel compares a task with: its served version, its labels and the card's mix (if any)."""

    version: str
    labels: Sequence[str]
    mix: Mapping[str, float] | None


class DriftHistory(TimeWindow[DriftSample]):
    """The drift samples of the last ``window_s`` seconds and the rows computed from them."""

    def __init__(self, window_s: float = DRIFT_WINDOW_S) -> None:
        super().__init__(window_s)

    def rows(self, references: Mapping[str, Reference], tasks: Collection[str] | None = None) -> list[DriftRow]:
        """One row per task of ``references`` (in its order), for its served version only."""
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
        rows = []
        for task, ref in references.items():
            if tasks is not None and task not in tasks:
                continue
            per_label = {label: counts.get((task, ref.version, label), 0.0) for label in ref.labels}
            per_label |= {k[2]: v for k, v in counts.items() if k[:2] == (task, ref.version) and v > 0}
            predictions = sum(per_label.values())
            live = label_mix(per_label)
            distance = total_variation(live, ref.mix) if live and ref.mix else None
            cumulative = buckets.get((task, ref.version), {})
            rows.append(
                DriftRow(
                    task=task,
                    version=ref.version,
                    labels=list(ref.labels),
                    predictions=predictions,
                    live_mix=live,
                    reference_mix=ref.mix,
                    distance=distance,
                    confidence=_bucket_shares(cumulative),
                    confidence_median=bucket_quantile(0.5, cumulative),
                    confidence_p10=bucket_quantile(0.1, cumulative),
                )
            )
        return rows


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
