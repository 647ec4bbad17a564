"""Panel views of the dashboard states: widgets in, HTML and Bokeh plots out.

The ``*_html`` and ``*_data`` functions are pure (state in, markup or columns out) so that unit tests
check what the page shows without a browser. User text is always HTML-escaped.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

import panel as pn
import param
from bokeh.models import BasicTicker, ColumnDataSource, DataRange1d, FactorRange
from bokeh.plotting import figure

from dashboard.client import ImageResult, ModelRef, ModelStats, TextResult
from dashboard.state import (
    CONNECTION_DOWN,
    CONNECTION_NOT_READY,
    Connection,
    ImageTaskState,
    MonitoringState,
    TextTaskState,
)

# Classes the page styles and the browser tests look for.
STYLESHEET = """
.mtc-table { border-collapse: collapse; width: 100%; font-size: 14px; }
.mtc-table th, .mtc-table td { border-bottom: 1px solid #e3e3e3; padding: 6px 8px; text-align: left;
  vertical-align: top; }
.mtc-table th { color: #555; font-weight: 600; }
.mtc-label { font-weight: 700; white-space: nowrap; }
.mtc-bar-row { display: flex; align-items: center; gap: 6px; margin: 2px 0; white-space: nowrap; }
.mtc-bar-name { width: 130px; overflow: hidden; text-overflow: ellipsis; color: #333; }
.mtc-bar-track { width: 160px; height: 12px; background: #eef1f5; border-radius: 3px; overflow: hidden; }
.mtc-bar-fill { height: 100%; background: #2b6cb0; }
.mtc-bar-fill.mtc-top { background: #2f855a; }
.mtc-bar-value { width: 52px; text-align: right; font-variant-numeric: tabular-nums; color: #333; }
.mtc-text { max-width: 520px; overflow-wrap: anywhere; }
.mtc-muted { color: #666; font-size: 13px; }
.mtc-image { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }
.mtc-image img { max-width: 360px; max-height: 360px; border-radius: 6px; border: 1px solid #ddd; }
.mtc-ready { color: #2f855a; font-weight: 600; }
.mtc-not-ready { color: #c53030; font-weight: 600; }
"""

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
            f'<td class="mtc-text">{html.escape(text)}</td>'
            f'<td class="mtc-label">{html.escape(prediction.label)}</td>'
            f"<td>{probability_bars_html(prediction.probabilities, labels)}</td></tr>"
        )
    return (
        '<table class="mtc-table mtc-results"><thead><tr><th>#</th><th>Text</th><th>Label</th>'
        f"<th>Probabilities</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


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


def timing_data(stats: Sequence[ModelStats]) -> dict[str, list[Any]]:
    """Columns of the stacked queue + compute time plot."""
    return {
        "model": [s.task for s in stats],
        "queue": [s.avg_queue_ms for s in stats],
        "compute": [s.avg_compute_ms for s in stats],
    }


def count_data(stats: Sequence[ModelStats]) -> dict[str, list[Any]]:
    """Columns of the requests / inferences plot: one (model, counter) factor per bar."""
    names = (("requests ok", "request_success"), ("failed", "request_failure"), ("inferences", "inference_count"))
    factors = [(s.task, label) for s in stats for label, _ in names]
    values = [getattr(s, field) for s in stats for _, field in names]
    return {"x": factors, "value": values}


def batch_size_data(stats: Sequence[ModelStats]) -> dict[str, list[Any]]:
    """Columns of the executed-batch-size plot: one (model, batch size) factor per bar, sizes ascending."""
    factors: list[tuple[str, str]] = []
    executions: list[int] = []
    for s in stats:
        for size in sorted(s.batch_sizes, key=_as_int):
            factors.append((s.task, size))
            executions.append(s.batch_sizes[size])
    return {"x": factors, "executions": executions}


def _as_int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def markdown_literal(text: str) -> str:
    """``text`` shown as is by a Markdown pane: every ASCII punctuation character backslash-escaped.

    Error messages quote the facade and the user (URLs, file names); escaped, a ``<img onerror=...>`` or
    an ``_underscore_`` in them is shown as typed instead of being rendered.
    """
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


def error_alert(state: param.Parameterized) -> pn.pane.Alert:
    """A red message under the inputs, visible only while ``state.error`` is set."""
    return pn.pane.Alert(
        pn.bind(markdown_literal, state.param.error),
        alert_type="danger",
        visible=state.param.error.rx.bool(),
        css_classes=["mtc-error"],
        sizing_mode="stretch_width",
    )


class ConnectionBanner:
    """The banner above the tabs saying that the API is down or not ready (hidden while it is up)."""

    def __init__(self, connection: Connection, api_url: str, retry_s: float) -> None:
        self.connection = connection
        self.api_url = api_url
        self.retry_s = retry_s
        self.panel = pn.pane.Alert(
            pn.bind(self.text, connection.param.status, connection.param.message),
            alert_type=pn.bind(self.alert_type, connection.param.status),
            visible=pn.bind(self.visible, connection.param.status),
            css_classes=["mtc-connection"],
            sizing_mode="stretch_width",
        )

    def text(self, status: str, message: str) -> str:
        if status == CONNECTION_DOWN:
            return (
                f"**The API is unavailable.** {markdown_literal(message)} The page checks again every "
                f"{self.retry_s:g} s and works again as soon as the API is back."
            )
        if status == CONNECTION_NOT_READY:
            return f"**The API is up but not ready to classify.** {markdown_literal(message)}"
        return ""

    @staticmethod
    def visible(status: str) -> bool:
        return status in (CONNECTION_DOWN, CONNECTION_NOT_READY)

    @staticmethod
    def alert_type(status: str) -> str:
        return "danger" if status == CONNECTION_DOWN else "warning"


class TextTaskView:
    """A text task's tab: a text area, Classify, example buttons, the results table."""

    def __init__(self, state: TextTaskState) -> None:
        self.state = state
        task = state.task
        self.text_input = pn.widgets.TextAreaInput.from_param(
            state.param.text,
            label=f"{task.title}: one text per line (at most {task.max_items})",
            description=None,
            placeholder=state.examples[0] if state.examples else "Type a text",
            rows=5,
            sizing_mode="stretch_width",
            css_classes=["mtc-input"],
        )
        self.classify_button = pn.widgets.Button(
            label="Classify", color="primary", disabled=state.param.loading, css_classes=["mtc-classify"]
        )
        self.classify_button.on_click(self._on_classify)
        self.example_buttons = []
        for index, example in enumerate(state.examples):
            button = pn.widgets.Button(
                label=_shorten(example, 60),
                description=example,
                color="light",
                disabled=state.param.loading,
                css_classes=["mtc-example"],
            )
            button.on_click(self._example_handler(index))
            self.example_buttons.append(button)
        self.results = pn.pane.HTML(
            pn.bind(text_results_html, state.param.texts, state.param.result, list(task.labels)),
            sizing_mode="stretch_width",
            stylesheets=[STYLESHEET],
            css_classes=["mtc-results-pane"],
        )
        self.timings = pn.pane.HTML(
            pn.bind(result_timings_html, state.param.result),
            css_classes=["mtc-timings"],
        )
        self.error = error_alert(state)
        # Shows a spinner over the results while a request runs.
        self.results_area = pn.Column(
            self.results, self.timings, loading=state.param.loading, sizing_mode="stretch_width"
        )
        examples = [pn.pane.Markdown("Examples:", margin=(12, 5, 0, 20)), *self.example_buttons]
        self.panel = pn.Column(
            self.text_input,
            pn.FlexBox(self.classify_button, *(examples if self.example_buttons else []), align_items="center"),
            self.error,
            self.results_area,
            name=task.title,
            sizing_mode="stretch_width",
        )

    async def _on_classify(self, event: object) -> None:
        await self.state.classify()

    def _example_handler(self, index: int) -> Any:
        async def handler(event: object) -> None:
            await self.state.classify_example(index)

        return handler


class ImageTaskView:
    """An image task's tab: a file chooser (uploads right away), a URL box, the top-k labels."""

    def __init__(self, state: ImageTaskState) -> None:
        self.state = state
        task = state.task
        # Any image: which types the facade takes is its to say (it answers the upload request).
        self.file_input = pn.widgets.FileInput(
            accept="image/*", multiple=False, css_classes=["mtc-file"], label="Photo"
        )
        self.file_input.param.watch(self._on_file, "value")
        self.url_input = pn.widgets.TextInput.from_param(
            state.param.image_url,
            label="…or paste an image URL",
            description=None,
            placeholder="https://example.com/photo.jpg",
            sizing_mode="stretch_width",
            css_classes=["mtc-url"],
        )
        self.url_button = pn.widgets.Button(
            label="Classify URL", color="primary", disabled=state.param.loading, css_classes=["mtc-classify-url"]
        )
        self.url_button.on_click(self._on_url)
        self.top_k = pn.widgets.IntSlider.from_param(state.param.top_k, label="Labels shown (top k)", width=220)
        self.result = pn.pane.HTML(
            pn.bind(image_result_html, state.param.result, state.param.image_src, state.param.image_name),
            sizing_mode="stretch_width",
            stylesheets=[STYLESHEET],
            css_classes=["mtc-image-pane"],
        )
        self.timings = pn.pane.HTML(
            pn.bind(result_timings_html, state.param.result),
            css_classes=["mtc-timings"],
        )
        self.error = error_alert(state)
        self.panel = pn.Column(
            pn.pane.Markdown("Choose a photo from your computer: it is uploaded and classified right away."),
            pn.Row(self.file_input, self.top_k),
            pn.Row(self.url_input, self.url_button, sizing_mode="stretch_width"),
            self.error,
            pn.Column(self.result, self.timings, loading=state.param.loading, sizing_mode="stretch_width"),
            name=task.title,
            sizing_mode="stretch_width",
        )

    async def _on_file(self, event: param.parameterized.Event) -> None:
        data = event.new
        if not isinstance(data, bytes):
            return
        await self.state.classify_file(self.file_input.filename or "image", data, self.file_input.mime_type or None)

    async def _on_url(self, event: object) -> None:
        await self.state.classify_url()


def timing_figure(stats: Sequence[ModelStats]) -> figure:
    """Average queue and compute time per request, stacked, one bar per model."""
    data = timing_data(stats)
    plot = figure(
        title="Average time per request (ms)", y_range=FactorRange(*data["model"]), x_range=DataRange1d(start=0),
        height=200, sizing_mode="stretch_width", toolbar_location=None, x_axis_label="ms",
    )  # fmt: skip
    plot.hbar_stack(
        ["queue", "compute"], y="model", height=0.6, source=ColumnDataSource(data),
        color=["#ed8936", "#2b6cb0"], legend_label=["queue", "compute"],
    )  # fmt: skip
    # Beside the plot, where it cannot hide the longest bar.
    legend = plot.legend[0]
    plot.add_layout(legend, "right")
    return plot


def _bar_figure(title: str, data: dict[str, list[Any]], value: str, color: str) -> figure:
    plot = figure(
        title=title, x_range=FactorRange(*data["x"]), y_range=DataRange1d(start=0), height=260,
        sizing_mode="stretch_width", toolbar_location=None,
    )  # fmt: skip
    plot.vbar(x="x", top=value, width=0.8, source=ColumnDataSource(data), color=color)
    plot.xaxis.major_label_orientation = 0.8
    plot.xgrid.grid_line_color = None
    # Counts: no fractional ticks.
    plot.yaxis.ticker = BasicTicker(min_interval=1)
    return plot


def count_figure(stats: Sequence[ModelStats]) -> figure:
    """Successful and failed requests and inferences (rows) per model."""
    return _bar_figure("Requests and inferences", count_data(stats), "value", "#2b6cb0")


def batch_figure(stats: Sequence[ModelStats]) -> figure:
    """How many times Triton executed each batch size, per model."""
    return _bar_figure("Executed batch sizes (executions per size)", batch_size_data(stats), "executions", "#2f855a")


class MonitoringView:
    """The Monitoring tab: a table per model and three plots, redrawn when the statistics change."""

    def __init__(self, state: MonitoringState, refresh_s: float) -> None:
        self.state = state
        self.refresh_s = refresh_s
        self.table = pn.pane.HTML(
            pn.bind(stats_table_html, state.param.stats), sizing_mode="stretch_width", stylesheets=[STYLESHEET]
        )
        self.caption = pn.pane.Markdown(pn.bind(self.caption_text, state.param.updated_at), css_classes=["mtc-updated"])
        self.count_pane = pn.pane.Bokeh(count_figure([]), sizing_mode="stretch_width")
        self.batch_pane = pn.pane.Bokeh(batch_figure([]), sizing_mode="stretch_width")
        self.timing_pane = pn.pane.Bokeh(timing_figure([]), sizing_mode="stretch_width")
        self._drawn: list[ModelStats] = []
        self.error = error_alert(state)
        state.param.watch(self._update_plots, "stats")
        self.panel = pn.Column(
            self.caption,
            self.error,
            self.table,
            pn.Row(self.count_pane, self.batch_pane, sizing_mode="stretch_width"),
            self.timing_pane,
            name="Monitoring",
            sizing_mode="stretch_width",
        )

    def caption_text(self, updated_at: str) -> str:
        if not updated_at:
            return "Waiting for statistics…"
        return f"Updated {updated_at}; refreshes every {self.refresh_s:g} s."

    def _update_plots(self, event: param.parameterized.Event) -> None:
        stats: list[ModelStats] = event.new
        # New figures rather than edited ones: Panel swaps them under the document lock, and an idle
        # server (same figures) causes no redraw at all.
        if stats == self._drawn:
            return
        self._drawn = list(stats)
        self.count_pane.object = count_figure(stats)
        self.batch_pane.object = batch_figure(stats)
        self.timing_pane.object = timing_figure(stats)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"
