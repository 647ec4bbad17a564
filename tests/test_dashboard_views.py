"""What the page renders from a state: tables, bars, timings, banner and plots (Panel objects, no browser)."""

from __future__ import annotations

import asyncio
import html
import re

import pytest
from markdown_it import MarkdownIt

from dashboard.app import DashboardPage, build_page
from dashboard.client import ApiError, ModelInfo, ModelRef, ModelStats, TextPrediction, TextResult
from dashboard.settings import DashboardSettings
from dashboard.state import CONNECTION_DOWN
from dashboard.views.plots import batch_size_data, count_data
from dashboard.views.render import (
    image_result_html,
    markdown_literal,
    probability_bars_html,
    stats_table_html,
    text_results_html,
    timings_text,
)
from dashboard.views.widgets import ImageTaskView, TextTaskView
from taskspec import DISASTER, POSE, SENTIMENT
from tests.fakes.dashboard import FakeFacade

pytestmark = pytest.mark.anyio

# A task only the facade knows: no task spec, no dashboard code mentions it.
TOPICS = ModelInfo(
    task="topics", title="News topics", modality="text", model="topics", version="7",
    labels=["world", "sports", "business", "science"], ready=True, max_items=5,
)  # fmt: skip

STATS = [
    ModelStats(
        task="sentiment",
        version="2",
        ready=True,
        request_success=10,
        request_failure=1,
        inference_count=12,
        execution_count=4,
        avg_queue_ms=0.8,
        avg_compute_ms=3.1,
        batch_sizes={"16": 1, "4": 2, "1": 1},
    ),
    ModelStats(task="pose", version=None, ready=False),
]


def bar_widths(markup: str) -> dict[str, float]:
    rows = re.findall(r'data-label="([^"]+)".*?width:([0-9.]+)%', markup)
    return {label: float(width) for label, width in rows}


def rendered(markdown: str) -> str:
    """What Panel's Markdown pane (markdown-it) makes of ``markdown``."""
    return str(MarkdownIt().render(markdown)).strip()


def test_error_messages_are_shown_literally_not_rendered() -> None:
    message = "URL not allowed (HTTP 403): <img src=x onerror=alert(1)> *not_disaster* http://a.b/c?d=1"

    markup = rendered(markdown_literal(message))

    assert "<img" not in markup and "<em>" not in markup and "<a " not in markup
    assert markup == f"<p>{html.escape(message, quote=False)}</p>"


def test_probability_bars_follow_the_label_order_and_scale_with_probability() -> None:
    markup = probability_bars_html({"positive": 0.75, "negative": 0.25}, SENTIMENT.labels)

    assert list(bar_widths(markup)) == ["negative", "positive"]
    assert bar_widths(markup) == {"negative": 25.0, "positive": 75.0}
    assert "0.750" in markup
    # The winning class is the highlighted bar.
    assert re.search(r'data-label="positive".*?mtc-bar-fill mtc-top', markup)


def test_text_results_show_each_text_with_its_label_and_escape_html() -> None:
    result = TextResult(
        task="disaster",
        model=ModelRef(name="disaster", version="1"),
        predictions=[
            TextPrediction(text_index=1, label="not_disaster", probabilities={"not_disaster": 0.6, "disaster": 0.4}),
            TextPrediction(text_index=0, label="disaster", probabilities={"not_disaster": 0.1, "disaster": 0.9}),
        ],
    )
    texts = ["<script>alert('fire')</script> Forest fire", "nice day"]

    markup = text_results_html(texts, result, DISASTER.labels)

    rows = re.findall(r"<tr><td>(\d+)</td><td class=\"mtc-text\">(.*?)</td><td class=\"mtc-label\">(.*?)</td>", markup)
    assert rows == [
        ("1", "&lt;script&gt;alert(&#x27;fire&#x27;)&lt;/script&gt; Forest fire", "disaster"),
        ("2", "nice day", "not_disaster"),
    ]
    assert "<script>" not in markup


def test_no_result_yet_shows_a_placeholder() -> None:
    assert "Results appear here" in text_results_html([], None, SENTIMENT.labels)
    assert "Choose a photo" in image_result_html(None, "", "")


def test_timings_list_stages_in_pipeline_order() -> None:
    line = timings_text(ModelRef(name="pose", version="3"), {"total": 15.0, "inference": 9.04, "fetch": 2.0})
    assert line == "model pose v3 · fetch 2.0 ms · inference 9.0 ms · total 15.0 ms"


async def test_image_result_shows_the_image_and_the_top_k() -> None:
    fake = FakeFacade()
    result = await fake.classify_images("pose", ["http://storage.test/a.jpg"], top_k=3)

    markup = image_result_html(result, 'http://storage.test/a.jpg?x="1"', "a.jpg")

    assert 'src="http://storage.test/a.jpg?x=&quot;1&quot;"' in markup
    assert list(bar_widths(markup)) == list(POSE.labels[:3])
    assert f"Top 3 of {len(POSE.labels)} labels" in markup
    assert f'<span class="mtc-label">{POSE.labels[0]}</span>' in markup


def test_stats_table_shows_readiness_and_average_batch() -> None:
    markup = stats_table_html(STATS)

    sentiment_row, pose_row = re.findall(r"<tr><td>(?!Model).*?</tr>", markup)
    assert "ready" in sentiment_row and "not ready" not in sentiment_row
    assert "<td>3.00</td>" in sentiment_row  # 12 inferences in 4 executions
    assert "not ready" in pose_row
    assert "<td>-</td>" in pose_row  # no version, no executions


def test_plot_data_orders_batch_sizes_numerically() -> None:
    assert batch_size_data(STATS) == {"x": [("sentiment", "1"), ("sentiment", "4"), ("sentiment", "16")],
                                      "executions": [1, 2, 1]}  # fmt: skip
    counts = count_data(STATS[:1])
    assert counts["value"] == [10, 1, 12]


async def ready_page(fake: FakeFacade, settings: DashboardSettings | None = None) -> DashboardPage:
    """A page after its first tick, with the facade up: the task tabs are built."""
    page = build_page(fake, settings or DashboardSettings())
    await page.refresh()
    return page


def text_view(page: DashboardPage, name: str) -> TextTaskView:
    view = page.task_views[name]
    assert isinstance(view, TextTaskView)
    return view


async def test_the_page_has_a_tab_per_task_the_facade_lists_plus_monitoring() -> None:
    page = await ready_page(FakeFacade())

    assert [tab.name for tab in page.tabs] == [SENTIMENT.title, DISASTER.title, POSE.title, "Batch", "Monitoring"]
    assert [type(view) for view in page.task_views.values()] == [TextTaskView, TextTaskView, ImageTaskView]
    assert not page.models_note.visible


async def test_a_fourth_text_task_declared_only_by_the_facade_is_a_tab_with_its_labels_and_limit() -> None:
    fake = FakeFacade(model_list=[*FakeFacade().model_list, TOPICS])
    page = await ready_page(fake)

    assert [tab.name for tab in page.tabs] == [
        SENTIMENT.title,
        DISASTER.title,
        POSE.title,
        "News topics",
        "Batch",
        "Monitoring",
    ]
    topics = text_view(page, "topics")
    assert topics.text_input.label == "News topics: one text per line (at most 5)"
    assert topics.example_buttons == []

    topics.text_input.value = "good match\nrain"
    await topics._on_classify(None)
    assert re.findall(r'class="mtc-label">(\w+)<', topics.results.object) == ["science", "world"]
    # Every label of the task, in the facade's order, for each text.
    assert re.findall(r'data-label="(\w+)"', topics.results.object) == TOPICS.labels * 2


async def test_the_text_tab_offers_the_tiny_variant_with_its_card_figures_and_sends_the_choice() -> None:
    models = [
        info.model_copy(update={"accuracy": 0.8683, "latency_p50_ms_int8": 21.4})
        if info.task == "sentiment"
        else info.model_copy(update={"accuracy": 0.85, "latency_p50_ms_int8": 9.6})
        if info.task == "sentiment_tiny"
        else info
        for info in FakeFacade().model_list
    ]
    fake = FakeFacade(model_list=models)
    page = await ready_page(fake)
    view = text_view(page, "sentiment")
    assert view.model_select.visible and view.model_select.value == "sentiment"
    assert view.model_select.options == {
        "sentiment (accurate: 86.8% held-out, 21 ms/text (int8))": "sentiment",
        "sentiment_tiny (tiny: 85.0% held-out, 10 ms/text (int8))": "sentiment_tiny",
    }
    view.model_select.value = "sentiment_tiny"
    view.text_input.value = "good stuff"
    await view._on_classify(None)
    assert fake.calls[-1] == ("classify_texts", ("sentiment", ["good stuff"], "sentiment_tiny"))
    assert "model sentiment_tiny v1" in view.timings.object
    assert text_view(page, "disaster").model_select.value == "disaster"  # each tab its own choice


async def test_the_facade_down_at_session_start_shows_the_banner_then_the_tabs_when_it_is_back() -> None:
    fake = FakeFacade(down=True)
    page = build_page(fake, DashboardSettings())

    await page.refresh()
    assert [tab.name for tab in page.tabs] == ["Monitoring"]
    assert page.banner.panel.visible
    assert page.models_note.visible
    assert "Waiting for the API to list its tasks" in page.models_note.object

    fake.down = False
    await page.refresh()
    assert [tab.name for tab in page.tabs] == [SENTIMENT.title, DISASTER.title, POSE.title, "Batch", "Monitoring"]
    assert page.tabs.active == 0
    assert not page.banner.panel.visible
    assert not page.models_note.visible

    await page.refresh()  # built once
    assert len(page.tabs) == 5
    assert [name for name, _ in fake.calls].count("models") == 1


async def test_a_model_list_the_page_cannot_get_is_said_and_asked_again() -> None:
    fake = FakeFacade(fail_with=ApiError("Unauthorized (HTTP 401): missing or invalid API key", status=401))
    page = build_page(fake, DashboardSettings())

    await page.refresh()
    assert [tab.name for tab in page.tabs] == ["Monitoring"]
    assert page.models_note.visible
    assert "The tasks could not be listed." in page.models_note.object
    assert "Unauthorized \\(HTTP 401\\)" in page.models_note.object

    fake.fail_with = None
    fake.model_list = [TOPICS]
    await page.refresh()
    assert [tab.name for tab in page.tabs] == ["News topics", "Batch", "Monitoring"]


async def test_views_follow_the_state_after_a_click() -> None:
    fake = FakeFacade()
    page = await ready_page(fake)
    view = text_view(page, "sentiment")

    view.text_input.value = "good stuff\nbad stuff"
    await view._on_classify(None)

    assert "good stuff" in view.results.object
    assert re.findall(r'class="mtc-label">(\w+)<', view.results.object) == ["positive", "negative"]
    assert "model sentiment v1 · tokenize 0.5 ms · inference 4.0 ms · total 5.0 ms" in view.timings.object
    error = view.error
    assert not error.visible

    view.text_input.value = ""
    await view._on_classify(None)
    assert error.visible
    assert rendered(error.object) == "<p>Type a text to classify (one per line for several).</p>"


async def test_banner_appears_when_the_api_is_down_and_goes_away_when_it_is_back() -> None:
    fake = FakeFacade(stats_result=STATS)
    page = build_page(fake, DashboardSettings(health_interval_s=7))

    fake.down = True
    await page.refresh()
    assert page.banner.panel.visible
    assert page.banner.panel.alert_type == "danger"
    assert "The API is unavailable" in page.banner.panel.object
    assert "every 7 s" in page.banner.panel.object
    assert ("stats", None) not in fake.calls  # no statistics request while the API is down

    fake.down = False
    await page.refresh()
    assert not page.banner.panel.visible
    assert page.state.monitoring.stats == STATS
    assert "sentiment" in page.monitoring_view.table.object
    assert list(page.monitoring_view.batch_pane.object.x_range.factors) == [
        ("sentiment", "1"),
        ("sentiment", "4"),
        ("sentiment", "16"),
    ]

    fake.ready = False
    await page.refresh()
    assert page.banner.panel.visible
    assert page.banner.panel.alert_type == "warning"
    assert "not ready" in page.banner.panel.object


async def test_loading_spinner_and_disabled_buttons_while_a_request_runs() -> None:
    fake = FakeFacade()
    view = text_view(await ready_page(fake), "disaster")
    fake.gate = asyncio.Event()
    view.text_input.value = "Forest fire near the town"

    request = asyncio.create_task(view._on_classify(None))
    await asyncio.sleep(0.01)
    results_area = view.results_area
    assert results_area.loading
    assert view.classify_button.disabled
    assert all(button.disabled for button in view.example_buttons)

    fake.gate.set()  # type: ignore[union-attr]
    await request
    assert not results_area.loading
    assert not view.classify_button.disabled


async def test_a_tick_is_skipped_while_the_previous_one_waits_for_a_slow_api() -> None:
    fake = FakeFacade(gate=asyncio.Event())
    page = build_page(fake, DashboardSettings())

    first = asyncio.create_task(page.refresh())
    await asyncio.sleep(0.01)
    await page.refresh()  # returns at once
    assert fake.calls == [("health", None)]

    fake.gate.set()  # type: ignore[union-attr]
    await first
    assert fake.calls == [("health", None), ("models", None), ("jobs", 10), ("stats", None), ("metrics", None)]


async def test_a_slow_monitoring_refresh_does_not_delay_the_check_that_says_the_api_is_down() -> None:
    fake = FakeFacade(gate=asyncio.Event(), gated_calls=("stats",))
    page = build_page(fake, DashboardSettings())

    first = asyncio.create_task(page.refresh())  # checks, lists the tasks, then waits for the statistics
    await asyncio.sleep(0.05)
    assert fake.calls[-1] == ("stats", None)
    fake.down = True
    await page.refresh()  # the refresh still waits; the check runs anyway
    assert page.state.connection.status == CONNECTION_DOWN
    assert fake.calls.count(("stats", None)) == 1, "no second refresh piled up behind the first"

    fake.gate.set()  # type: ignore[union-attr]
    await first
