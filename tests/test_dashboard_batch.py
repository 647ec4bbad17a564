"""The Batch tab with a fake facade (no network, no browser): starting a job from a file or an S3 URI, live
progress, cancel, the download link, and a job list that comes from the facade (it survives a reload)."""

from __future__ import annotations

import re

import pytest

from dashboard.app import DashboardPage, build_page
from dashboard.batch import LINK_REUSE_S, SOURCE_S3
from dashboard.client import ApiError, JobFailure, JobInfo
from dashboard.settings import DashboardSettings
from dashboard.views.batch import jobs_table_html
from tests.fakes.dashboard import FakeFacade

pytestmark = pytest.mark.anyio


async def ready_page(fake: FakeFacade) -> DashboardPage:
    page = build_page(fake, DashboardSettings())
    await page.refresh()
    return page


def job_states(page: DashboardPage) -> list[str]:
    return re.findall(r'class="mtc-job-state mtc-job-\w+">(\w+)<', str(page.batch_view.table.object))


async def test_a_job_starts_from_an_uploaded_file_with_the_chosen_task_and_column() -> None:
    fake = FakeFacade()
    page = await ready_page(fake)
    view = page.batch_view
    assert list(view.task.options) == ["sentiment", "disaster", "pose"]

    view.file_input.filename = "tweets.csv"
    view.file_input.value = b"id,tweet\n1,fire downtown\n"
    view.task.value = "disaster"
    view.column.value = "tweet"
    await view._on_start(None)

    assert [call for call in fake.calls if call[0] in ("upload_job_input", "start_job")] == [
        ("upload_job_input", ("tweets.csv", "text/csv", 25)),
        ("start_job", ("s3://uploads/job-inputs/0.csv", "disaster", "tweet")),
    ]
    assert job_states(page) == ["queued"] and page.batch_state.error == ""


async def test_a_job_starts_from_an_s3_uri_and_bad_inputs_are_said_before_any_request() -> None:
    fake = FakeFacade()
    page = await ready_page(fake)
    view, state = page.batch_view, page.batch_state

    view.file_input.filename = "notes.txt"
    view.file_input.value = b"hello"
    await view._on_start(None)
    assert "not a .csv, .jsonl, .ndjson or .parquet file" in state.error

    state.source = SOURCE_S3
    view.s3_uri.value = "/etc/passwd"
    await view._on_start(None)
    assert "s3://bucket/key" in state.error
    assert not [call for call in fake.calls if call[0] in ("upload_job_input", "start_job")]

    view.s3_uri.value = "s3://team-data/reviews/"
    await view._on_start(None)
    assert ("start_job", ("s3://team-data/reviews/", "sentiment", "text")) in fake.calls
    assert state.error == ""


async def test_progress_is_shown_live_and_a_running_job_can_be_cancelled() -> None:
    fake = FakeFacade()
    page = await ready_page(fake)
    job = await fake.start_job("s3://d/r.csv", "sentiment", "text")
    fake.advance(job.id, state="running", rows_total=2000, rows_done=500, rows_per_s=50.0, eta_s=30.0)
    await page.refresh()

    table = str(page.batch_view.table.object)
    assert job_states(page) == ["running"]
    assert "500 / 2,000 rows" in table and "50.0 rows/s" in table and ">30 s<" in table
    assert page.batch_view.cancel_row.visible
    assert list(page.batch_view.cancel_select.options.values()) == [job.id]

    page.batch_view.cancel_select.value = job.id
    await page.batch_view._on_cancel(None)
    assert ("cancel_job", job.id) in fake.calls and job_states(page) == ["cancelling"]
    fake.advance(job.id, state="cancelled")
    await page.refresh()
    assert job_states(page) == ["cancelled"] and not page.batch_view.cancel_row.visible


async def test_a_cancelled_or_failed_job_can_be_resumed_and_a_refusal_is_said() -> None:
    fake = FakeFacade()
    page = await ready_page(fake)
    view = page.batch_view
    cancelled = await fake.start_job("s3://d/a.csv", "sentiment", "text")
    failed = await fake.start_job("s3://d/b.csv", "disaster", "text")
    running = await fake.start_job("s3://d/c.csv", "sentiment", "text")
    fake.advance(cancelled.id, state="cancelled", rows_total=2000, rows_done=500)
    fake.advance(failed.id, state="failed", error=JobFailure(title="Job runner lost", detail="stopped reporting"))
    fake.advance(running.id, state="running")
    await page.refresh()
    assert view.resume_row.visible and view.cancel_row.visible
    assert set(view.resume_select.options.values()) == {cancelled.id, failed.id}
    assert list(view.cancel_select.options.values()) == [running.id]

    view.resume_select.value = cancelled.id
    await view._on_resume(None)
    assert ("resume_job", cancelled.id) in fake.calls and page.batch_state.error == ""
    assert list(view.resume_select.options.values()) == [failed.id]
    assert set(view.cancel_select.options.values()) == {running.id, cancelled.id}  # queued again: cancellable

    fake.fail_with = ApiError("Job cannot be resumed: job is running")
    view.resume_select.value = failed.id
    await view._on_resume(None)
    assert "cannot be resumed" in page.batch_state.error


async def test_a_finished_job_has_a_download_link_asked_again_before_it_expires() -> None:
    fake = FakeFacade()
    page = await ready_page(fake)
    now = [1000.0]
    page.batch_state.clock = lambda: now[0]
    job = await fake.start_job("s3://d/r.csv", "sentiment", "text")
    fake.advance(job.id, state="succeeded", rows_total=10, rows_done=10, result_url=f"/v1/jobs/{job.id}/result")
    await page.refresh()
    await page.refresh()

    links = re.findall(r'class="mtc-download" href="([^"]+)"', str(page.batch_view.table.object))
    assert links == [f"http://storage.test/jobs/{job.id}/result.csv?signature=get"]
    assert [call for call in fake.calls if call[0] == "job_result_url"] == [("job_result_url", job.id)]
    now[0] += LINK_REUSE_S + 1
    await page.refresh()
    assert len([call for call in fake.calls if call[0] == "job_result_url"]) == 2


async def test_the_job_list_comes_from_the_facade_so_a_reload_shows_it() -> None:
    fake = FakeFacade()
    first = await ready_page(fake)
    first.batch_state.s3_uri = "s3://d/r.csv"
    first.batch_state.source = SOURCE_S3
    await first.batch_state.start()
    reloaded = await ready_page(fake)  # a new session: nothing carried over but the facade's list
    assert job_states(reloaded) == ["queued"]


def test_job_values_are_escaped_and_only_http_links_are_links() -> None:
    failed = JobInfo(
        id="0" * 24, state="failed", task="sentiment", input="s3://d/<b>x</b>.csv",
        error=JobFailure(detail="<script>alert(1)</script> no such column"),
    )  # fmt: skip
    done = JobInfo(id="1" * 24, state="succeeded", task="sentiment", result_url="/v1/jobs/x/result")
    markup = jobs_table_html([failed, done], {"1" * 24: "javascript:alert(1)"})
    assert "<script>" not in markup and "&lt;script&gt;alert(1)&lt;/script&gt; no such column" in markup
    assert "&lt;b&gt;x&lt;/b&gt;" in markup
    assert "javascript:" not in markup and "preparing the link" in markup
