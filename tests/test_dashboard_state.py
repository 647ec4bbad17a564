"""Dashboard state logic with a fake facade: what a user sees after each click, without a browser."""

from __future__ import annotations

import asyncio

import pytest

from dashboard.client import ApiError, ModelInfo, ModelStats, UploadError
from dashboard.settings import DashboardSettings
from dashboard.state import (
    CONNECTION_DOWN,
    CONNECTION_NOT_READY,
    CONNECTION_UP,
    DashboardState,
    ImageTaskState,
    TextTaskState,
    split_texts,
)
from taskspec import DISASTER, POSE, SENTIMENT, TASKS
from tests.fakes.dashboard import FakeFacade, model_info

pytestmark = pytest.mark.anyio

JPEG = b"\xff\xd8\xff\xe0" + b"0" * 100
# A task only the facade knows: no task spec, no dashboard code mentions it.
TOPICS = ModelInfo(
    task="topics", title="News topics", modality="text", model="topics", version="7",
    labels=["world", "sports", "business", "science"], ready=True, max_items=5, examples=["Stocks rally"],
)  # fmt: skip


async def loaded_state(fake: FakeFacade, **settings: object) -> DashboardState:
    state = DashboardState(fake, DashboardSettings(**settings))  # type: ignore[arg-type]
    assert await state.load_tasks()
    return state


async def text_task(fake: FakeFacade, name: str, **settings: object) -> TextTaskState:
    task = (await loaded_state(fake, **settings)).tasks[name]
    assert isinstance(task, TextTaskState)
    return task


async def image_task(fake: FakeFacade, name: str = "pose", **settings: object) -> ImageTaskState:
    task = (await loaded_state(fake, **settings)).tasks[name]
    assert isinstance(task, ImageTaskState)
    return task


def test_split_texts_keeps_one_text_per_non_blank_line() -> None:
    assert split_texts("  good film \n\n\t\nbad film\n") == ["good film", "bad film"]
    assert split_texts(" \n ") == []


async def test_a_state_per_task_the_facade_lists_in_its_order() -> None:
    state = await loaded_state(FakeFacade())

    assert list(state.tasks) == [name for name, spec in TASKS.items() if spec.variant_of is None]
    assert [type(task) for task in state.tasks.values()] == [TextTaskState, TextTaskState, ImageTaskState]


async def test_a_tiny_variant_is_a_model_choice_in_its_tasks_tab_not_a_tab() -> None:
    fake = FakeFacade()
    state = await loaded_state(fake)
    assert "sentiment_tiny" not in state.tasks
    sentiment = state.tasks["sentiment"]
    assert isinstance(sentiment, TextTaskState)
    assert list(sentiment.models) == ["sentiment", "sentiment_tiny"] and sentiment.model == "sentiment"
    fake.calls.clear()
    sentiment.text = "A good movie"
    await sentiment.classify()  # the default model: the request names none
    sentiment.model = "sentiment_tiny"
    await sentiment.classify()
    assert fake.calls == [
        ("classify_texts", ("sentiment", ["A good movie"])),
        ("classify_texts", ("sentiment", ["A good movie"], "sentiment_tiny")),
    ]
    assert sentiment.result is not None and sentiment.result.model.name == "sentiment_tiny"
    with pytest.raises(ValueError):
        sentiment.model = "disaster_tiny"  # only the task's own models


async def test_a_fourth_task_declared_only_by_the_facade_gets_a_state_with_its_labels_and_limit() -> None:
    fake = FakeFacade(model_list=[*FakeFacade().model_list, TOPICS])
    state = await loaded_state(fake)

    topics = state.tasks["topics"]
    assert isinstance(topics, TextTaskState)
    assert topics.examples == ["Stocks rally"]
    topics.text = "good news from the lab"
    await topics.classify()
    assert fake.calls[-1] == ("classify_texts", ("topics", ["good news from the lab"]))
    assert topics.result is not None
    assert topics.result.predictions[0].label == "science"

    topics.text = "\n".join(str(i) for i in range(6))
    await topics.classify()
    assert topics.error == "At most 5 texts at once; you typed 6 lines."


async def test_a_task_of_another_modality_is_skipped() -> None:
    audio = TOPICS.model_copy(update={"task": "speech", "modality": "audio"})
    state = await loaded_state(FakeFacade(model_list=[TOPICS, audio]))

    assert list(state.tasks) == ["topics"]
    assert [info.task for info in state.skipped] == ["speech"]


async def test_the_facade_down_at_session_start_leaves_no_task_until_it_answers() -> None:
    fake = FakeFacade(down=True)
    state = DashboardState(fake, DashboardSettings())

    assert not await state.load_tasks()
    assert state.tasks == {}
    assert not state.loaded
    assert "unreachable" in state.models_error
    assert state.connection.status == CONNECTION_DOWN

    fake.down = False
    assert await state.load_tasks()
    assert list(state.tasks) == ["sentiment", "disaster", "pose"]
    assert state.loaded
    assert state.models_error == ""


async def test_an_error_listing_the_models_is_kept_as_a_message() -> None:
    fake = FakeFacade(fail_with=ApiError("Unauthorized (HTTP 401): missing or invalid API key", status=401))
    state = DashboardState(fake, DashboardSettings())

    assert not await state.load_tasks()
    assert state.models_error == "Unauthorized (HTTP 401): missing or invalid API key"
    assert state.connection.status != CONNECTION_DOWN


async def test_examples_come_from_the_facade_or_else_from_the_task_spec() -> None:
    from_facade = model_info(SENTIMENT).model_copy(update={"examples": ["Loved it"]})
    fake = FakeFacade(model_list=[from_facade, model_info(DISASTER), TOPICS.model_copy(update={"examples": []})])
    state = await loaded_state(fake)

    examples = {name: task.examples for name, task in state.tasks.items() if isinstance(task, TextTaskState)}
    assert examples == {"sentiment": ["Loved it"], "disaster": list(DISASTER.examples), "topics": []}


async def test_the_image_tab_lists_at_most_every_label() -> None:
    two_labels = model_info(POSE).model_copy(update={"task": "cats", "labels": ["cat", "not_cat"]})
    fake = FakeFacade(model_list=[model_info(POSE), two_labels])

    pose = await image_task(fake, "pose", default_top_k=4)
    assert (pose.top_k, pose.param.top_k.bounds) == (4, (1, len(POSE.labels)))
    cats = await image_task(fake, "cats", default_top_k=4)
    assert (cats.top_k, cats.param.top_k.bounds) == (2, (1, 2))
    assert pose.param.top_k.bounds == (1, len(POSE.labels))  # each tab has its own bounds
    with pytest.raises(ValueError, match="must be at most 2"):
        cats.top_k = 3


async def test_classify_sends_every_line_and_keeps_texts_with_their_predictions() -> None:
    fake = FakeFacade()
    sentiment = await text_task(fake, "sentiment")
    fake.calls.clear()
    sentiment.text = "A good movie\n\nawful\n"

    await sentiment.classify()

    assert fake.calls == [("classify_texts", ("sentiment", ["A good movie", "awful"]))]
    assert sentiment.texts == ["A good movie", "awful"]
    assert sentiment.result is not None
    assert [p.label for p in sentiment.result.predictions] == ["positive", "negative"]
    assert sentiment.error == ""
    assert not sentiment.loading
    assert sentiment.connection.status == CONNECTION_UP


async def test_empty_input_gives_a_hint_and_sends_nothing() -> None:
    fake = FakeFacade()
    disaster = await text_task(fake, "disaster")
    disaster.text = "   \n"

    await disaster.classify()

    assert fake.calls == [("models", None)]
    assert disaster.error == "Type a text to classify (one per line for several)."


async def test_too_many_lines_for_the_facades_limit_are_refused_before_sending() -> None:
    fake = FakeFacade(model_list=[model_info(SENTIMENT, max_items=3)])
    sentiment = await text_task(fake, "sentiment")
    sentiment.text = "a\nb\nc\nd"

    await sentiment.classify()

    assert fake.calls == [("models", None)]
    assert sentiment.error == "At most 3 texts at once; you typed 4 lines."


async def test_facade_down_shows_a_message_marks_the_connection_and_keeps_the_last_result() -> None:
    fake = FakeFacade()
    state = await loaded_state(fake)
    sentiment = state.tasks["sentiment"]
    assert isinstance(sentiment, TextTaskState)
    sentiment.text = "good"
    await sentiment.classify()
    previous = sentiment.result

    fake.down = True
    sentiment.text = "another one"
    await sentiment.classify()

    assert "unreachable" in sentiment.error
    assert state.connection.status == CONNECTION_DOWN
    assert "Connection refused" in state.connection.message
    assert sentiment.result is previous
    assert sentiment.texts == ["good"]
    assert not sentiment.loading

    fake.down = False
    await sentiment.classify()
    assert sentiment.error == ""
    assert state.connection.status == CONNECTION_UP
    assert sentiment.texts == ["another one"]


async def test_an_error_answer_is_shown_but_the_api_counts_as_up() -> None:
    fake = FakeFacade()
    sentiment = await text_task(fake, "sentiment")
    fake.fail_with = ApiError("Model not ready (HTTP 503): sentiment is loading", status=503)
    sentiment.text = "x"

    await sentiment.classify()

    assert sentiment.error == "Model not ready (HTTP 503): sentiment is loading"
    assert sentiment.result is None
    assert sentiment.connection.status != CONNECTION_DOWN


async def test_loading_is_set_while_the_request_runs() -> None:
    fake = FakeFacade()
    sentiment = await text_task(fake, "sentiment")
    fake.gate = asyncio.Event()
    sentiment.text = "good"

    request = asyncio.create_task(sentiment.classify())
    await asyncio.sleep(0.01)
    assert sentiment.loading
    fake.gate.set()  # type: ignore[union-attr]
    await request

    assert not sentiment.loading
    assert sentiment.result is not None


async def test_example_buttons_fill_the_text_area_and_classify() -> None:
    fake = FakeFacade()
    state = await loaded_state(fake)
    disaster, sentiment = state.tasks["disaster"], state.tasks["sentiment"]
    assert isinstance(disaster, TextTaskState)

    await disaster.classify_example(0)

    assert disaster.text == DISASTER.examples[0]
    assert fake.calls[-1] == ("classify_texts", ("disaster", [DISASTER.examples[0]]))
    assert disaster.result is not None
    assert disaster.result.predictions[0].label in DISASTER.labels
    assert sentiment.result is None  # tabs do not share results
    assert SENTIMENT.examples  # every text task ships examples for these buttons


async def test_pose_file_is_uploaded_then_the_stored_url_is_classified() -> None:
    fake = FakeFacade()
    pose = await image_task(fake)
    fake.calls.clear()
    pose.top_k = 4

    await pose.classify_file("astronaut.jpg", JPEG, None)

    assert fake.calls[0] == ("upload_image", ("astronaut.jpg", "image/jpeg", len(JPEG)))
    stored_url = next(iter(fake.uploads))
    assert fake.calls[1] == ("classify_images", ("pose", [stored_url], 4))
    assert pose.result is not None
    assert len(pose.result.predictions[0].top_k) == 4
    assert pose.image_src.startswith("data:image/jpeg;base64,")
    assert pose.image_name == "astronaut.jpg"
    assert pose.error == ""


@pytest.mark.parametrize(
    ("filename", "data", "content_type", "message"),
    [
        ("notes.txt", b"hello", "text/plain", "notes.txt is not an image"),
        ("report.pdf", b"%PDF-1.7", None, "report.pdf is not an image"),
        ("empty.jpg", b"", "image/jpeg", "empty.jpg is empty."),
    ],
)
async def test_pose_refuses_files_it_cannot_send(filename: str, data: bytes, content_type: str | None, message: str):
    fake = FakeFacade()
    pose = await image_task(fake)

    await pose.classify_file(filename, data, content_type)

    assert fake.calls == [("models", None)]
    assert pose.error.startswith(message)


async def test_pose_upload_failure_is_readable() -> None:
    fake = FakeFacade()
    pose = await image_task(fake)
    fake.fail_with = UploadError("Storage refused the image upload (HTTP 403).")

    await pose.classify_file("photo.png", b"\x89PNG", "image/png")

    assert pose.error == "Storage refused the image upload (HTTP 403)."
    assert pose.result is None
    assert pose.image_src == ""


async def test_pose_url_is_checked_then_sent_as_is() -> None:
    fake = FakeFacade()
    pose = await image_task(fake)
    fake.calls.clear()

    pose.image_url = "ftp://example.com/a.jpg"
    await pose.classify_url()
    assert pose.error == "Paste an image URL starting with http:// or https://."
    assert fake.calls == []

    pose.image_url = " https://images.example.com/people/run.jpg?size=large "
    await pose.classify_url()
    assert fake.calls == [("classify_images", ("pose", ["https://images.example.com/people/run.jpg?size=large"], 3))]
    assert pose.image_src == "https://images.example.com/people/run.jpg?size=large"
    assert pose.image_name == "run.jpg"


async def test_monitoring_refresh_keeps_the_last_figures_when_the_api_fails() -> None:
    stats = [ModelStats(task="sentiment", version="1", ready=True, request_success=3, batch_sizes={"1": 3})]
    fake = FakeFacade(stats_result=stats)
    monitoring = DashboardState(fake, DashboardSettings()).monitoring

    await monitoring.refresh()
    assert monitoring.stats == stats
    assert monitoring.updated_at != ""

    fake.down = True
    await monitoring.refresh()
    assert monitoring.stats == stats
    assert "unreachable" in monitoring.error


async def test_connection_check_reports_up_not_ready_and_down() -> None:
    fake = FakeFacade()
    connection = DashboardState(fake, DashboardSettings()).connection
    assert connection.status == "unknown"

    await connection.check()
    assert (connection.status, connection.message) == (CONNECTION_UP, "")

    fake.ready = False
    await connection.check()
    assert connection.status == CONNECTION_NOT_READY
    assert "Triton is not ready" in connection.message

    fake.down = True
    await connection.check()
    assert connection.status == CONNECTION_DOWN

    fake.down, fake.ready = False, True
    await connection.check()
    assert connection.status == CONNECTION_UP
