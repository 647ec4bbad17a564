"""The Batch tab: start a job (a file to upload or an S3 URI, a task, a column), the job list with live progress,
a Cancel button for a running job, a Resume button for a failed or cancelled one, and a download link for each
finished one.

:func:`jobs_table_html` is a pure function (jobs in, HTML out) so tests read what a user sees; every value
from the facade is HTML-escaped, and a link is only ever an ``http(s)`` URL.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import panel as pn
import param

from dashboard.batch import SOURCE_S3, SOURCE_UPLOAD, BatchState
from dashboard.client import JobInfo
from dashboard.views.render import STYLESHEET, markdown_literal, shorten
from dashboard.views.widgets import error_alert

BATCH_CSS = """
.mtc-job-state { font-weight: 600; white-space: nowrap; }
.mtc-job-succeeded { color: #2f855a; }
.mtc-job-failed { color: #c53030; }
.mtc-job-cancelled, .mtc-job-cancelling { color: #975a16; }
.mtc-job-running, .mtc-job-queued { color: #2b6cb0; }
.mtc-progress { width: 140px; height: 10px; background: #eef1f5; border-radius: 3px; overflow: hidden; }
.mtc-progress-fill { height: 100%; background: #2b6cb0; }
.mtc-jobs td { font-variant-numeric: tabular-nums; }
"""


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def _progress_html(job: JobInfo) -> str:
    if job.rows_total is None:
        return '<span class="mtc-muted">counting rows…</span>' if job.state in ("queued", "running") else ""
    share = job.rows_done / job.rows_total if job.rows_total else 1.0
    return (
        f'<div class="mtc-progress" title="{share * 100:.0f}%"><div class="mtc-progress-fill" '
        f'style="width:{min(100.0, share * 100):.1f}%"></div></div>'
        f'<span class="mtc-rows">{job.rows_done:,} / {job.rows_total:,} rows</span>'
    )


def _result_html(job: JobInfo, link: str | None) -> str:
    if job.state == "succeeded":
        if link and link.startswith(("http://", "https://")):
            return f'<a class="mtc-download" href="{html.escape(link)}" target="_blank" rel="noopener">Download</a>'
        return '<span class="mtc-muted">preparing the link…</span>'
    if job.state == "failed" and job.error is not None:
        return f'<span class="mtc-job-error">{html.escape(shorten(job.error.detail, 300))}</span>'
    return ""


def jobs_table_html(jobs: Sequence[JobInfo], links: Mapping[str, str]) -> str:
    """The job list: state, progress, rate, ETA, failed rows, the download link or the error."""
    if not jobs:
        return '<p class="mtc-muted">No jobs yet. Start one above; the list shows the API\'s newest jobs.</p>'
    rows = []
    for job in jobs:
        state = html.escape(job.state)
        rate = f"{job.rows_per_s:,.1f} rows/s" if job.rows_per_s else ""
        labels = ", ".join(f"{html.escape(label)} {count:,}" for label, count in job.labels.items())
        rows.append(
            f'<tr class="mtc-job" data-job="{html.escape(job.id)}">'
            f'<td title="{html.escape(job.id)}">{html.escape(job.id[-8:])}</td>'
            f"<td>{html.escape(job.task)}</td>"
            f'<td class="mtc-text" title="{html.escape(job.input)}">{html.escape(shorten(job.input, 60))}</td>'
            f'<td class="mtc-job-state mtc-job-{state}">{state}</td>'
            f"<td>{_progress_html(job)}</td>"
            f"<td>{rate}</td><td>{_eta(job.eta_s)}</td><td>{job.rows_failed:,}</td>"
            f'<td>{_result_html(job, links.get(job.id))}<div class="mtc-muted">{labels}</div></td></tr>'
        )
    return (
        '<table class="mtc-table mtc-jobs"><thead><tr><th>Job</th><th>Task</th><th>Input</th><th>State</th>'
        "<th>Progress</th><th>Rate</th><th>ETA</th><th>Failed rows</th><th>Result</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


class BatchView:
    """The Batch tab's widgets, bound to a :class:`~dashboard.batch.BatchState`."""

    def __init__(self, state: BatchState, refresh_s: float) -> None:
        self.state = state
        self.source = pn.widgets.RadioButtonGroup.from_param(
            state.param.source, label="Input", color="light", css_classes=["mtc-batch-source"]
        )
        self.file_input = pn.widgets.FileInput(
            accept=".csv,.jsonl,.ndjson,.parquet", multiple=False, css_classes=["mtc-batch-file"]
        )
        self.file_input.param.watch(self._on_file, "value")
        self.s3_uri = pn.widgets.TextInput.from_param(
            state.param.s3_uri,
            label="S3 URI of the input (a file or a prefix)",
            placeholder="s3://bucket/reviews/2026-11.csv",
            sizing_mode="stretch_width",
            css_classes=["mtc-batch-uri"],
        )
        self.task = pn.widgets.Select.from_param(
            state.param.task, label="Task", width=200, css_classes=["mtc-batch-task"]
        )
        self.column = pn.widgets.TextInput.from_param(
            state.param.column, label="Column", width=200, css_classes=["mtc-batch-column"]
        )
        self.start_button = pn.widgets.Button(
            label="Start job", color="primary", disabled=state.param.loading, css_classes=["mtc-batch-start"]
        )
        self.start_button.on_click(self._on_start)
        self.cancel_select = pn.widgets.Select(
            label="Running job", options=[], width=260, css_classes=["mtc-batch-pick"]
        )
        self.cancel_button = pn.widgets.Button(label="Cancel job", color="warning", css_classes=["mtc-batch-cancel"])
        self.cancel_button.on_click(self._on_cancel)
        self.cancel_row = pn.Row(self.cancel_select, self.cancel_button, visible=False, align="end")
        self.resume_select = pn.widgets.Select(
            label="Failed or cancelled job", options=[], width=260, css_classes=["mtc-batch-resume-pick"]
        )
        self.resume_button = pn.widgets.Button(label="Resume job", color="primary", css_classes=["mtc-batch-resume"])
        self.resume_button.on_click(self._on_resume)
        self.resume_row = pn.Row(self.resume_select, self.resume_button, visible=False, align="end")
        state.param.watch(self._on_jobs, "jobs")
        self.table = pn.pane.HTML(
            pn.bind(jobs_table_html, state.param.jobs, state.param.links),
            sizing_mode="stretch_width",
            stylesheets=[STYLESHEET, BATCH_CSS],
            css_classes=["mtc-jobs-pane"],
        )
        self.list_error = pn.pane.Alert(
            pn.bind(markdown_literal, state.param.list_error),
            alert_type="warning",
            visible=state.param.list_error.rx.bool(),
            css_classes=["mtc-batch-list-error"],
            sizing_mode="stretch_width",
        )
        self.panel = pn.Column(
            pn.pane.Markdown(
                "Classify a whole file: every row's column goes through the served model, at a lower priority than "
                "the other tabs' requests. The input is a CSV, JSON Lines or Parquet file (uploaded here) or an "
                "S3 URI the API may read; the result is the input plus `label`, `p_<label>` and `error` columns."
            ),
            self.source,
            pn.Row(self.file_input, visible=state.param.source.rx() == SOURCE_UPLOAD),
            pn.Row(self.s3_uri, visible=state.param.source.rx() == SOURCE_S3, sizing_mode="stretch_width"),
            pn.Row(self.task, self.column, self.start_button, align="end"),
            error_alert(state),
            pn.pane.Markdown(f"### Jobs (refreshed every {refresh_s:g} s)"),
            self.list_error,
            self.cancel_row,
            self.resume_row,
            self.table,
            name="Batch",
            sizing_mode="stretch_width",
        )

    def _on_file(self, event: param.parameterized.Event) -> None:
        if isinstance(event.new, bytes):
            self.state.choose_file(self.file_input.filename or "input.csv", event.new)

    async def _on_start(self, event: object) -> None:
        await self.state.start()

    async def _on_cancel(self, event: object) -> None:
        if self.cancel_select.value:
            await self.state.cancel(str(self.cancel_select.value))

    async def _on_resume(self, event: object) -> None:
        if self.resume_select.value:
            await self.state.resume(str(self.resume_select.value))

    def _on_jobs(self, event: param.parameterized.Event) -> None:
        for jobs, select, row in (
            (self.state.active_jobs(), self.cancel_select, self.cancel_row),
            (self.state.resumable_jobs(), self.resume_select, self.resume_row),
        ):
            options = {f"{job.id[-8:]} · {job.task} · {job.state}": job.id for job in jobs}
            if options != select.options:
                select.options = options
            row.visible = bool(jobs)
