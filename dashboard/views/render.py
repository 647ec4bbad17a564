"""Results as HTML and Markdown: pure functions (state in, markup out), so tests read what a user sees.

User text and every message are escaped: HTML-escaped in HTML, backslash-escaped in Markdown.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from dashboard.client import ImageResult, ModelInfo, ModelRef, ModelStats, TextPrediction, TextResult
from dashboard.drift import (
    CONFIDENCE_SHIFT_THRESHOLD,
    MIN_CONFIDENCE_PREDICTIONS,
    MIN_PREDICTIONS,
    SHIFT_THRESHOLD,
    DriftRow,
)

# The page's own CSS (classes the HTML below uses and the browser tests look for).
STYLESHEET = (Path(__file__).parent / "style.css").read_text(encoding="utf-8")

SHOWN_TEXT_CHARS = 2000
"""Characters of a text the results table shows (a 100,000-character review would bury the table)."""
TIMING_ORDER = ("fetch", "tokenize", "preprocess", "queue", "inference", "total")


def probability_bars_html(probabilities: Mapping[str, float], order: Sequence[str] = ()) -> str:
    """One labelled bar per class; classes in ``order`` first, the most probable one highlighted."""
    names = [name for name in order if name in probabilities] + [n for n in probabilities if n not in order]
    top = max(probabilities, key=lambda n: probabilities[n]) if probabilities else None
    rows = []
    for name in names:
        value = min(max(probabilities[name], 0.0), 1.0)
        css = "mtc-bar-fill mtc-top" if name == top else "mtc-bar-fill"
        rows.append(
            f'<div class="mtc-bar-row" data-label="{html.escape(name)}">'
            f'<span class="mtc-bar-name">{html.escape(name)}</span>'
            f'<span class="mtc-bar-track"><span class="{css}" style="display:block;width:{value * 100:.1f}%">'
            f'</span></span><span class="mtc-bar-value">{value:.3f}</span></div>'
        )
    return "".join(rows)


def text_results_html(texts: Sequence[str], result: TextResult | None, labels: Sequence[str]) -> str:
    """The results table of a text tab: the text, its label and a probability bar per class."""
    if result is None:
        return '<p class="mtc-muted">Results appear here.</p>'
    rows = []
    for prediction in sorted(result.predictions, key=lambda p: p.text_index):
        text = texts[prediction.text_index] if 0 <= prediction.text_index < len(texts) else ""
        rows.append(
            f"<tr><td>{prediction.text_index + 1}</td>"
            f'<td class="mtc-text">{html.escape(shorten(text, SHOWN_TEXT_CHARS))}{truncation_html(prediction)}</td>'
            f'<td class="mtc-label">{html.escape(prediction.label)}</td>'
            f"<td>{probability_bars_html(prediction.probabilities, labels)}</td></tr>"
        )
    return (
        '<table class="mtc-table mtc-results"><thead><tr><th>#</th><th>Text</th><th>Label</th>'
        f"<th>Probabilities</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def truncation_html(prediction: TextPrediction) -> str:
    """A note under a text the model read only part of (nothing for a text it read whole)."""
    if not prediction.truncated:
        return ""
    known = prediction.tokens is not None and prediction.text_tokens is not None
    read = f"{prediction.tokens:,} of its {prediction.text_tokens:,} tokens" if known else "part of it"
    return f'<div class="mtc-truncated mtc-muted">Long text: the model read {read}.</div>'


def timings_text(model: ModelRef | None, timings_ms: Mapping[str, float]) -> str:
    """``model sentiment v1 · tokenize 1.2 ms · inference 5.0 ms · total 7.1 ms``."""
    parts = []
    if model is not None:
        parts.append(f"model {model.name}" + (f" v{model.version}" if model.version else ""))
    names = [n for n in TIMING_ORDER if n in timings_ms] + sorted(n for n in timings_ms if n not in TIMING_ORDER)
    parts += [f"{name} {timings_ms[name]:.1f} ms" for name in names]
    return " · ".join(parts)


def result_timings_html(result: TextResult | ImageResult | None) -> str:
    """The timings line under a result (empty before the first one)."""
    if result is None:
        return ""
    return f'<span class="mtc-muted">{html.escape(timings_text(result.model, result.timings_ms))}</span>'


def image_result_html(result: ImageResult | None, image_src: str, image_name: str) -> str:
    """The classified image beside its top-k labels."""
    if result is None or not result.predictions:
        return '<p class="mtc-muted">Choose a photo or paste an image URL; the predicted labels appear here.</p>'
    prediction = result.predictions[0]
    top = {item.label: item.probability for item in prediction.top_k} or prediction.probabilities
    image = (
        f'<img src="{html.escape(image_src, quote=True)}" alt="{html.escape(image_name, quote=True)}">'
        if image_src
        else ""
    )
    return (
        f'<div class="mtc-image">{image}<div class="mtc-image-result">'
        f'<p>Predicted: <span class="mtc-label">{html.escape(prediction.label)}</span></p>'
        f'<p class="mtc-muted">Top {len(top)} of {len(prediction.probabilities)} labels</p>'
        f"{probability_bars_html(top)}"
        f'<p class="mtc-muted">{html.escape(image_name)}</p></div></div>'
    )


def stats_table_html(stats: Sequence[ModelStats]) -> str:
    """One row per model: readiness, version, counters and average times."""
    if not stats:
        return '<p class="mtc-muted">No statistics yet.</p>'
    rows = []
    for s in stats:
        ready = '<span class="mtc-ready">ready</span>' if s.ready else '<span class="mtc-not-ready">not ready</span>'
        avg_batch = f"{s.inference_count / s.execution_count:.2f}" if s.execution_count else "-"
        rows.append(
            f"<tr><td>{html.escape(s.task)}</td><td>{html.escape(s.version or '-')}</td><td>{ready}</td>"
            f"<td>{s.request_success}</td><td>{s.request_failure}</td><td>{s.inference_count}</td>"
            f"<td>{s.execution_count}</td><td>{avg_batch}</td>"
            f"<td>{s.avg_queue_ms:.2f}</td><td>{s.avg_compute_ms:.2f}</td></tr>"
        )
    return (
        '<table class="mtc-table mtc-stats"><thead><tr><th>Model</th><th>Version</th><th>State</th>'
        "<th>Requests OK</th><th>Failed</th><th>Inferences</th><th>Executions</th><th>Avg batch</th>"
        f"<th>Avg queue (ms)</th><th>Avg compute (ms)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _mix_text(mix: Mapping[str, float] | None, labels: Sequence[str]) -> str:
    if not mix:
        return "-"
    names = [n for n in labels if n in mix] + [n for n in mix if n not in labels]
    return ", ".join(f"{html.escape(name)} {mix[name] * 100:.0f}%" for name in names)


def _verdict_html(distance: float | None, flagged: bool, enough: bool, missing: str, no_traffic: str) -> str:
    """A shift cell: the distance, flagged in red beyond its threshold, muted when there are too few to judge."""
    if distance is None:
        return f'<span class="mtc-muted">{missing or no_traffic}</span>'
    if flagged:
        return f'<span class="mtc-drift-shift">shift {distance:.2f}</span>'
    if not enough:
        return f'<span class="mtc-muted">{distance:.2f} (too few to judge)</span>'
    return f'<span class="mtc-drift-ok">{distance:.2f}</span>'


def _confidence_chart_html(row: DriftRow) -> str:
    """Per bucket of the top-class probability, the live share (blue) beside the card's (grey)."""
    card = row.reference_confidence or {}
    bounds = sorted({b for b in (*row.confidence, *card) if not math.isinf(b)})  # nothing is above 1
    if not row.confidence and not card:
        return "-"
    pairs, lower = [], 0.0
    for bound in bounds:
        live, held_out = row.confidence.get(bound, 0.0), card.get(bound)
        title = f"({lower:g}, {bound:g}]: live {live * 100:.0f}%"
        if held_out is not None:
            title += f", card {held_out * 100:.0f}%"
        bars = f'<span class="mtc-conf-bar mtc-conf-live" style="height:{max(live * 100, 2):.0f}%"></span>'
        if held_out is not None:
            bars += f'<span class="mtc-conf-bar mtc-conf-card" style="height:{max(held_out * 100, 2):.0f}%"></span>'
        pairs.append(f'<span class="mtc-conf-pair" data-le="{bound:g}" title="{title}">{bars}</span>')
        lower = bound
    median = "-" if row.confidence_median is None else f"{row.confidence_median:.2f}"
    p10 = "-" if row.confidence_p10 is None else f"{row.confidence_p10:.2f}"
    return f'<span class="mtc-conf-hist">{"".join(pairs)}</span> median {median}, p10 {p10}'


def drift_table_html(rows: Sequence[DriftRow], span_s: float = 0.0, source: str = "") -> str:
    """One row per served task: predictions of the window, its label mix vs the card's and the distance between
    them, the top-class probability histogram vs the card's and the distance between them (each flagged above its
    threshold). ``source``: where the counts come from (Prometheus; else the page's own samples)."""
    if not rows:
        return '<p class="mtc-muted">No served task with predictions to compare yet.</p>'
    body = []
    for row in rows:
        labels = _verdict_html(
            row.distance,
            row.shifted,
            row.predictions >= MIN_PREDICTIONS,
            "no card figures" if row.reference_mix is None else "",
            "no traffic",
        )
        if row.reference_confidence is None:
            missing = "no card figures (published before they were recorded)"
        elif row.confidence and row.confidence_distance is None:
            missing = "not comparable (other buckets than the card's)"
        else:
            missing = ""
        confidence = _verdict_html(
            row.confidence_distance,
            row.confidence_shifted,
            row.confidence_count >= MIN_CONFIDENCE_PREDICTIONS,
            missing,
            "no traffic",
        )
        body.append(
            f'<tr data-task="{html.escape(row.task)}"><td>{html.escape(row.task)}</td>'
            f"<td>{html.escape(row.version)}</td><td>{row.predictions:.0f}</td>"
            f"<td>{_mix_text(row.live_mix, row.labels)}</td><td>{_mix_text(row.reference_mix, row.labels)}</td>"
            f'<td class="mtc-drift-labels">{labels}</td>'
            f'<td class="mtc-drift-confidence-chart">{_confidence_chart_html(row)}</td>'
            f'<td class="mtc-drift-confidence">{confidence}</td></tr>'
        )
    if source.startswith("from Prometheus"):
        window = f"Over the last hour, {html.escape(source)}."
    else:
        span = f"{span_s:.0f} s" if span_s < 120 else f"{span_s / 60:.0f} min"
        note = source.removeprefix("sampled by this page since it opened").strip()
        window = f"Over the last {span} (up to an hour) this page has sampled{' ' + html.escape(note) if note else ''}."
    return (
        '<table class="mtc-table mtc-drift"><thead><tr><th>Task</th><th>Version</th><th>Predictions</th>'
        "<th>Label mix (live)</th><th>Label mix (card, held-out test)</th><th>Label shift</th>"
        "<th>Top-class probability (live | card)</th><th>Confidence shift</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
        f'<p class="mtc-muted">{window} Shift: total variation distance of the live and the card\'s '
        "distributions (the share of the predictions that would have to change label, or probability bucket, to "
        f"match the card), flagged above {SHIFT_THRESHOLD:g} for the label mix with at least {MIN_PREDICTIONS} "
        f"predictions, above {CONFIDENCE_SHIFT_THRESHOLD:g} for the top-class probability with at least "
        f"{MIN_CONFIDENCE_PREDICTIONS}. Probability buckets up to 0.2, 0.3, … 0.99, 1: live in blue, the card's "
        "held-out test in grey.</p>"
    )


def markdown_literal(text: str) -> str:
    """``text`` shown as is by a Markdown pane: every ASCII punctuation character backslash-escaped.

    Error messages quote the facade and the user (URLs, file names); escaped, a ``<img onerror=...>`` or
    an ``_underscore_`` in them is shown as typed instead of being rendered.
    """
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


def models_note_text(models_error: str) -> str:
    """The note shown until the task tabs exist."""
    if models_error:
        return f"**The tasks could not be listed.** {markdown_literal(models_error)} The page asks again shortly."
    return "Waiting for the API to list its tasks; their tabs appear here as soon as it answers."


def model_choice_label(info: ModelInfo) -> str:
    """How the model picker names a model: its name, what it is, and its card's accuracy and latency when known."""
    kind = "accurate" if info.variant_of is None else info.variant
    figures = []
    if info.accuracy is not None:
        figures.append(f"{info.accuracy:.1%} held-out")
    if info.latency_p50_ms_int8 is not None:
        figures.append(f"{info.latency_p50_ms_int8:.0f} ms/text (int8)")
    return f"{info.model or info.task} ({kind}{': ' + ', '.join(figures) if figures else ''})"


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut."""
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"
