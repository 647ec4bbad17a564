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
from dashboard.drift import MIN_PREDICTIONS, SHIFT_THRESHOLD, DriftRow

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


def _confidence_html(row: DriftRow) -> str:
    if not row.confidence:
        return "-"
    bars = "".join(
        f'<span class="mtc-conf-bar" title="&le; {bound:g}: {share * 100:.0f}%" '
        f'style="height:{max(share * 100, 2):.0f}%"></span>'
        for bound, share in sorted(row.confidence.items())
        if not math.isinf(bound)  # nothing is above a probability of 1
    )
    median = "-" if row.confidence_median is None else f"{row.confidence_median:.2f}"
    p10 = "-" if row.confidence_p10 is None else f"{row.confidence_p10:.2f}"
    return f'<span class="mtc-conf-hist">{bars}</span> median {median}, p10 {p10}'


def drift_table_html(rows: Sequence[DriftRow], span_s: float = 0.0) -> str:
    """One row per served task: predictions of the window, its label mix vs the card's, the distance between
    them (flagged above the threshold) and the confidence histogram."""
    if not rows:
        return '<p class="mtc-muted">No served task with predictions to compare yet.</p>'
    body = []
    for row in rows:
        if row.reference_mix is None:
            verdict = '<span class="mtc-muted">no card figures</span>'
        elif row.distance is None:
            verdict = '<span class="mtc-muted">no traffic</span>'
        elif row.shifted:
            verdict = f'<span class="mtc-drift-shift">shift {row.distance:.2f}</span>'
        elif row.predictions < MIN_PREDICTIONS:
            verdict = f'<span class="mtc-muted">{row.distance:.2f} (too few to judge)</span>'
        else:
            verdict = f'<span class="mtc-drift-ok">{row.distance:.2f}</span>'
        body.append(
            f'<tr data-task="{html.escape(row.task)}"><td>{html.escape(row.task)}</td>'
            f"<td>{html.escape(row.version)}</td><td>{row.predictions:.0f}</td>"
            f"<td>{_mix_text(row.live_mix, row.labels)}</td><td>{_mix_text(row.reference_mix, row.labels)}</td>"
            f"<td>{verdict}</td><td>{_confidence_html(row)}</td></tr>"
        )
    span = f"{span_s:.0f} s" if span_s < 120 else f"{span_s / 60:.0f} min"
    return (
        '<table class="mtc-table mtc-drift"><thead><tr><th>Task</th><th>Version</th><th>Predictions</th>'
        "<th>Label mix (live)</th><th>Label mix (card, held-out test)</th><th>Distance</th>"
        f"<th>Top-class probability</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
        f'<p class="mtc-muted">Over the last {span} (up to an hour) this page has sampled. Distance: total '
        f"variation distance of the two mixes, flagged as a shift above {SHIFT_THRESHOLD:g} with at least "
        f"{MIN_PREDICTIONS} predictions. The model card records no confidence figures: the probability "
        "histogram (buckets up to 0.2, 0.3, … 0.99, 1) has no reference.</p>"
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
