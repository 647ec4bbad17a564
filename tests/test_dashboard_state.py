"""Dashboard state logic with a fake facade: what a user sees after each click, without a browser."""

from __future__ import annotations

import asyncio

import pytest

from dashboard.client import ApiError, ModelStats, UploadError
from dashboard.settings import DashboardSettings
from dashboard.state import (
    CONNECTION_DOWN,
    CONNECTION_NOT_READY,
    CONNECTION_UP,
    DashboardState,
    split_texts,
)
from dashboard.testing import FakeFacade
from taskspec import DISASTER, SENTIMENT, TASKS

pytestmark = pytest.mark.anyio

JPEG = b"\xff\xd8\xff\xe0" + b"0" * 100


def make_state(fake: FakeFacade, **settings: object) -> DashboardState:
    return DashboardState(fake, DashboardSettings(**settings), list(TASKS.values()))  # type: ignore[arg-type]


def test_split_texts_keeps_one_text_per_non_blank_line() -> None:
    assert split_texts("  good film \n\n\t\nbad film\n") == ["good film", "bad film"]
    assert split_texts(" \n ") == []


def test_a_state_exists_for_each_text_task() -> None:
    state = make_state(FakeFacade())
    assert sorted(state.text_tasks) == sorted(t.name for t in TASKS.values() if t.modality == "text")


async def test_classify_sends_every_line_and_keeps_texts_with_their_predictions() -> None:
    fake = FakeFacade()
    state = make_state(fake)
    sentiment = state.text_tasks["sentiment"]
    sentiment.text = "A good movie\n\nawful\n"

    await sentiment.classify()

    assert fake.calls == [("classify_texts", ("sentiment", ["A good movie", "awful"]))]
    assert sentiment.texts == ["A good movie", "awful"]
    assert sentiment.result is not None
    assert [p.label for p in sentiment.result.predictions] == ["positive", "negative"]
    assert sentiment.error == ""
    assert not sentiment.loading
    assert state.connection.status == CONNECTION_UP


async def test_empty_input_gives_a_hint_and_sends_nothing() -> None:
    fake = FakeFacade()
    disaster = make_state(fake).text_tasks["disaster"]
    disaster.text = "   \n"

    await disaster.classify()

    assert fake.calls == []
    assert disaster.error == "Type a text to classify (one per line for several)."


async def test_too_many_lines_are_refused_before_sending() -> None:
    fake = FakeFacade()
    sentiment = make_state(fake, max_texts=3).text_tasks["sentiment"]
    sentiment.text = "a\nb\nc\nd"

    await sentiment.classify()

    assert fake.calls == []
    assert sentiment.error == "At most 3 texts at once; you typed 4 lines."


async def test_facade_down_shows_a_message_marks_the_connection_and_keeps_the_last_result() -> None:
    fake = FakeFacade()
    state = make_state(fake)
    sentiment = state.text_tasks["sentiment"]
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
    fake = FakeFacade(fail_with=ApiError("Model not ready (HTTP 503): sentiment is loading", status=503))
    state = make_state(fake)
    sentiment = state.text_tasks["sentiment"]
    sentiment.text = "x"

    await sentiment.classify()

    assert sentiment.error == "Model not ready (HTTP 503): sentiment is loading"
    assert sentiment.result is None
    assert state.connection.status != CONNECTION_DOWN


async def test_loading_is_set_while_the_request_runs() -> None:
    fake = FakeFacade(gate=asyncio.Event())
    sentiment = make_state(fake).text_tasks["sentiment"]
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
    state = make_state(fake)
    disaster = state.text_tasks["disaster"]

    await disaster.classify_example(0)

    assert disaster.text == DISASTER.examples[0]
    assert fake.calls == [("classify_texts", ("disaster", [DISASTER.examples[0]]))]
    assert disaster.result is not None
    assert disaster.result.predictions[0].label in DISASTER.labels
    assert state.text_tasks["sentiment"].result is None  # tabs do not share results
    assert SENTIMENT.examples  # every text task ships examples for these buttons


async def test_pose_file_is_uploaded_then_the_stored_url_is_classified() -> None:
    fake = FakeFacade()
    pose = make_state(fake).pose
    pose.top_k = 4

    await pose.classify_file("astronaut.jpg", JPEG, None)

    assert fake.calls[0] == ("upload_image", ("astronaut.jpg", "image/jpeg", len(JPEG)))
    stored_url = next(iter(fake.uploads))
    assert fake.calls[1] == ("classify_images", ([stored_url], 4))
    assert pose.result is not None
    assert len(pose.result.predictions[0].top_k) == 4
    assert pose.image_src.startswith("data:image/jpeg;base64,")
    assert pose.image_name == "astronaut.jpg"
    assert pose.error == ""


@pytest.mark.parametrize(
    ("filename", "data", "content_type", "message"),
    [
        ("notes.txt", b"hello", "text/plain", "notes.txt is not a JPEG, PNG or WebP image"),
        ("anim.gif", b"GIF89a", None, "anim.gif is not a JPEG, PNG or WebP image"),
        ("empty.jpg", b"", "image/jpeg", "empty.jpg is empty."),
    ],
)
async def test_pose_refuses_files_it_cannot_send(filename: str, data: bytes, content_type: str | None, message: str):
    fake = FakeFacade()
    pose = make_state(fake).pose

    await pose.classify_file(filename, data, content_type)

    assert fake.calls == []
    assert pose.error.startswith(message)


async def test_pose_upload_failure_is_readable() -> None:
    fake = FakeFacade(fail_with=UploadError("Storage refused the image upload (HTTP 403)."))
    pose = make_state(fake).pose

    await pose.classify_file("photo.png", b"\x89PNG", "image/png")

    assert pose.error == "Storage refused the image upload (HTTP 403)."
    assert pose.result is None
    assert pose.image_src == ""


async def test_pose_url_is_checked_then_sent_as_is() -> None:
    fake = FakeFacade()
    pose = make_state(fake).pose

    pose.image_url = "ftp://example.com/a.jpg"
    await pose.classify_url()
    assert pose.error == "Paste an image URL starting with http:// or https://."
    assert fake.calls == []

    pose.image_url = " https://images.example.com/people/run.jpg?size=large "
    await pose.classify_url()
    assert fake.calls == [("classify_images", (["https://images.example.com/people/run.jpg?size=large"], 3))]
    assert pose.image_src == "https://images.example.com/people/run.jpg?size=large"
    assert pose.image_name == "run.jpg"


async def test_monitoring_refresh_keeps_the_last_figures_when_the_api_fails() -> None:
    stats = [ModelStats(task="sentiment", version="1", ready=True, request_success=3, batch_sizes={"1": 3})]
    fake = FakeFacade(stats_result=stats)
    monitoring = make_state(fake).monitoring

    await monitoring.refresh()
    assert monitoring.stats == stats
    assert monitoring.updated_at != ""

    fake.down = True
    await monitoring.refresh()
    assert monitoring.stats == stats
    assert "unreachable" in monitoring.error


async def test_connection_check_reports_up_not_ready_and_down() -> None:
    fake = FakeFacade()
    connection = make_state(fake).connection
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
