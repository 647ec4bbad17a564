"""The Monitoring tab's Bokeh plots: columns computed from the statistics (pure), then figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bokeh.models import BasicTicker, ColumnDataSource, DataRange1d, FactorRange
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from dashboard.client import ModelStats
from dashboard.live import Series


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


def live_figure(title: str, series: Series, y_label: str) -> tuple[figure, dict[str, ColumnDataSource]]:
    """One line per series over time (the last 15 minutes), the legend under the plot; returns the figure and the
    data source of each line (to update in place while the set of lines stays the same)."""
    plot = figure(
        title=title, x_axis_type="datetime", y_range=DataRange1d(start=0), height=230, sizing_mode="stretch_width",
        toolbar_location=None, y_axis_label=y_label,
    )  # fmt: skip
    sources: dict[str, ColumnDataSource] = {}
    for index, (name, (times, values)) in enumerate(sorted(series.items())):
        sources[name] = ColumnDataSource({"t": times, "v": values})
        plot.line(
            x="t", y="v", source=sources[name], line_width=2, color=Category10_10[index % len(Category10_10)],
            legend_label=name,
        )  # fmt: skip
    if sources:
        legend = plot.legend[0]
        legend.orientation = "horizontal"
        legend.ncols = 3  # p50 and p95 of every task would not fit on one line
        legend.click_policy = "hide"
        legend.label_text_font_size = "9pt"
        legend.border_line_alpha = 0
        plot.add_layout(legend, "below")
    else:
        plot.line(x=[], y=[])  # an empty plot still has a renderer (Bokeh warns about one without)
    return plot, sources
