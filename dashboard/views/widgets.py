"""The Panel widgets of each tab, bound to the states (``dashboard.state``): inputs in, panes out.

What a pane shows is computed by :mod:`dashboard.views.render` (HTML, Markdown) and
:mod:`dashboard.views.plots` (Bokeh figures).
"""

from __future__ import annotations

from typing import Any

import panel as pn
import param

from dashboard.client import ModelStats
from dashboard.live import LiveCharts, Series
from dashboard.state import (
    CONNECTION_DOWN,
    CONNECTION_NOT_READY,
    Connection,
    ImageTaskState,
    MonitoringState,
    TextTaskState,
)
from dashboard.views.plots import batch_figure, count_figure, live_figure, timing_figure
from dashboard.views.render import (
    STYLESHEET,
    drift_table_html,
    image_result_html,
    markdown_literal,
    model_choice_label,
    result_timings_html,
    shorten,
    stats_table_html,
    text_results_html,
)


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
            # Panel's default max_length (5,000) would cut a pasted review without a word: the box holds what the
            # task accepts per text (GET /v1/models max_text_chars), and the state says when a paste filled it.
            max_length=state.max_chars,
            rows=5,
            sizing_mode="stretch_width",
            css_classes=["mtc-input"],
        )
        self.classify_button = pn.widgets.Button(
            label="Classify", color="primary", disabled=state.param.loading, css_classes=["mtc-classify"]
        )
        self.classify_button.on_click(self._on_classify)
        # The task's model or a faster variant (GET /v1/models), shown with its card's accuracy and latency.
        self.model_select = pn.widgets.Select.from_param(
            state.param.model,
            label="Model",
            options={model_choice_label(info): name for name, info in state.models.items()},
            visible=len(state.models) > 1,
            width=420,
            css_classes=["mtc-model"],
        )
        self.example_buttons = []
        for index, example in enumerate(state.examples):
            button = pn.widgets.Button(
                label=shorten(example, 60),
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
        self.notice = pn.pane.Alert(
            pn.bind(markdown_literal, state.param.notice),
            alert_type="warning",
            visible=state.param.notice.rx.bool(),
            css_classes=["mtc-notice"],
            sizing_mode="stretch_width",
        )
        # Shows a spinner over the results while a request runs.
        self.results_area = pn.Column(
            self.notice, self.results, self.timings, loading=state.param.loading, sizing_mode="stretch_width"
        )
        examples = [pn.pane.Markdown("Examples:", margin=(12, 5, 0, 20)), *self.example_buttons]
        self.panel = pn.Column(
            self.model_select,
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


LIVE_CHARTS = {
    "requests": ("Requests/s per task", "requests/s"),
    "errors": ("Server errors (5xx)/s per task", "errors/s"),
    "latency_ms": ("Facade latency per task (p50, p95)", "ms"),
    "triton_ms": ("Triton: queue vs compute time per request", "ms"),
    "batch_size": ("Triton: average executed batch size", "rows per batch"),
    "in_flight": ("Requests in flight in the facade", "requests"),
}
"""The live charts: field of :class:`~dashboard.live.LiveCharts` -> (title, y-axis label)."""


class LiveChart:
    """One live chart: a new figure when its set of lines changes, new data in the same lines otherwise (a small
    update for the browser every refresh, rather than a whole figure)."""

    def __init__(self, title: str, unit: str) -> None:
        self.title = title
        self.unit = unit
        figure, self.sources = live_figure(title, {}, unit)
        self.pane = pn.pane.Bokeh(figure, sizing_mode="stretch_width")
        self.drawn: Series = {}

    def show(self, series: Series) -> None:
        if series == self.drawn:
            return
        if sorted(series) != sorted(self.drawn):
            figure, self.sources = live_figure(self.title, series, self.unit)
            self.pane.object = figure
        else:
            for name, (times, values) in series.items():
                self.sources[name].data = {"t": times, "v": values}
        self.drawn = {name: (list(times), list(values)) for name, (times, values) in series.items()}


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
        self.live = {name: LiveChart(title, unit) for name, (title, unit) in LIVE_CHARTS.items()}
        self.live_panes = {name: chart.pane for name, chart in self.live.items()}
        self.drift = pn.pane.HTML(
            pn.bind(drift_table_html, state.param.drift, state.param.drift_span_s, state.param.drift_source),
            sizing_mode="stretch_width",
            stylesheets=[STYLESHEET],
        )
        self.error = error_alert(state)
        state.param.watch(self._update_plots, "stats")
        state.param.watch(self._update_live, "live")
        panes = list(self.live_panes.values())
        self.panel = pn.Column(
            self.caption,
            self.error,
            pn.pane.Markdown("### Live: the last 15 minutes", css_classes=["mtc-live-title"]),
            pn.pane.Markdown(pn.bind(self.source_text, state.param.live_source), css_classes=["mtc-live-source"]),
            *(pn.Row(*panes[i : i + 2], sizing_mode="stretch_width") for i in range(0, len(panes), 2)),
            pn.pane.Markdown("### Drift: the last hour against the model card", css_classes=["mtc-drift-title"]),
            self.drift,
            pn.pane.Markdown("### Since Triton started"),
            self.table,
            pn.Row(self.count_pane, self.batch_pane, sizing_mode="stretch_width"),
            self.timing_pane,
            name="Monitoring",
            sizing_mode="stretch_width",
        )

    def _update_live(self, event: param.parameterized.Event) -> None:
        charts: LiveCharts = event.new
        for name, chart in self.live.items():
            chart.show(getattr(charts, name))

    def source_text(self, source: str) -> str:
        return f"Time series {source}." if source else ""

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
