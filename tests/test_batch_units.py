"""Batch jobs without servers: locations, reading in parts, writing and committing parts, resume decisions and
the command line's errors. The end-to-end runs (real Ray, Triton, S3) are in test_batch_integration.py; here
the model pin (a Triton call) is replaced by a fixed one where a plan needs it."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import batch.runner as runner
from batch.classify import Classifier, ClassifierConfig, text_problem
from batch.cli import main
from batch.errors import InvalidJob, JobConflict
from batch.formats import (
    FILE_COLUMN,
    JSON_COLUMN,
    READ_ERROR_COLUMN,
    ROW_COLUMN,
    VALUE_COLUMN,
    OutputNames,
    encode_part,
)
from batch.manifest import COMMITTED_DIR, JOB_FILE, InputFile, JobManifest, JobParameters, ModelPin
from batch.runner import JobRequest, PartWriter, plan_job, read_parts, root_error, run_job
from batch.settings import BatchSettings
from batch.storage import parse_location
from frontend_api.artifacts import ArtifactStore, make_source
from frontend_api.errors import BackendUnavailable
from taskspec import get_task
from tests.fakes.frontend_api import make_artifact_repository

SETTINGS = BatchSettings(allowed_buckets=["jobs"], s3_endpoint_url="http://127.0.0.1:9", rows_per_part=3)
NAMES = OutputNames("", ("negative", "positive"))


# --- locations ---


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://other/in.csv", "bucket 'other' of the input is not allowed; allowed buckets: jobs"),
        ("s3://jobs", "names a whole bucket"),
        ("s3://jobs/a/../b.csv", "'.' or '..' segments"),
        ("s3://jobs/a//b.csv", "empty, '.' or '..' segments"),
        ("s3://jobs/a\x00b.csv", "control characters"),
        ("s3://me@jobs/a.csv", "not a plain s3://bucket/key"),
        ("s3://jobs/a.csv?versionId=1", "not a plain s3://bucket/key"),
        ("https://example.com/a.csv", "neither a local path nor s3://bucket/key"),
        ("", "empty"),
    ],
)
def test_locations_outside_the_allowed_buckets_or_with_odd_keys_are_refused(uri: str, message: str) -> None:
    with pytest.raises(InvalidJob, match=re.escape(message)):
        parse_location(uri, SETTINGS, what="input")


def test_an_allowed_s3_key_and_a_local_path_are_accepted(tmp_path: Path) -> None:
    location = parse_location("s3://jobs/in/reviews.csv", SETTINGS)
    assert (location.path, location.is_s3) == ("jobs/in/reviews.csv", True)
    assert location.s3 is not None and location.s3.endpoint_url == "http://127.0.0.1:9"
    local = parse_location(str(tmp_path / "x" / ".." / "in.csv"), SETTINGS)
    assert (local.path, local.is_s3) == (str(tmp_path / "in.csv"), False)


def test_no_bucket_is_allowed_by_default() -> None:
    with pytest.raises(InvalidJob, match=r"none \(set MTC_BATCH_ALLOWED_BUCKETS\)"):
        parse_location("s3://mtc-models/x.csv", BatchSettings())


# --- reading in parts ---


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_a_csv_is_read_in_parts_skipping_the_committed_ones_and_keeping_values_as_text(tmp_path: Path) -> None:
    rows = [["id", "text"]] + [[f"{i:03d}", f"line one {i}\nline, two"] for i in range(8)]
    path = write_csv(tmp_path / "in.csv", rows)
    tables = list(read_parts(str(path), None, "csv", ("id", "text"), "text", 4, 8, 3, frozenset({0, 2})))
    assert [t.column(ROW_COLUMN).to_pylist() for t in tables] == [[0, 1, 2], [6, 7]]
    assert {f for t in tables for f in t.column(FILE_COLUMN).to_pylist()} == {4}
    assert tables[0].column("id").to_pylist() == ["000", "001", "002"]  # strings: "000" stays "000"
    assert tables[1].column("text").to_pylist() == ["line one 6\nline, two", "line one 7\nline, two"]


def test_an_input_that_changed_since_the_plan_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [["text"], ["a"], ["b"]])
    with pytest.raises(JobConflict, match="has 2 rows now, 3 when the job started"):
        list(read_parts(str(path), None, "csv", ("text",), "text", 0, 3, 3, frozenset({0})))


def test_json_lines_keep_each_line_and_report_unusable_ones_per_row(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "fine", "n": 1}\n\n[1, 2]\n{"text": 5}\nnot json\n{"other": "x"}\n', encoding="utf-8")
    (table,) = read_parts(str(path), None, "jsonl", (), "text", 0, 5, 10, frozenset({0}))
    assert table.column(VALUE_COLUMN).to_pylist() == ["fine", None, None, None, None]
    errors = table.column(READ_ERROR_COLUMN).to_pylist()
    assert errors[0] is None and errors[4] is None  # a missing field is an empty text, judged by the classifier
    assert errors[1] == "the line is a JSON list, not an object"
    assert errors[2] == "field 'text' is not a string"
    assert errors[3].startswith("the line is not valid JSON")

    classified = table.append_column("label", pa.array(["positive", None, None, None, None]))
    classified = classified.append_column("p_negative", pa.array([0.25, None, None, None, None], pa.float64()))
    classified = classified.append_column("p_positive", pa.array([0.75, None, None, None, None], pa.float64()))
    classified = classified.append_column("error", pa.array([None, "x", "y", "z", "empty text"]))
    lines = [json.loads(line) for line in encode_part(classified, "jsonl", NAMES).decode().splitlines()]
    assert lines[0] == {
        "text": "fine",
        "n": 1,
        "label": "positive",
        "p_negative": 0.25,
        "p_positive": 0.75,
        "error": None,
    }
    assert lines[1] == {"line": "[1, 2]", "label": None, "p_negative": None, "p_positive": None, "error": "x"}
    assert lines[4]["other"] == "x" and lines[4]["error"] == "empty text"
    assert JSON_COLUMN not in lines[0]


# --- writing and committing parts ---


def classified_rows(rows: list[int], file: int = 0) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "id": pa.array([f"r{r}" for r in rows]),
            FILE_COLUMN: pa.array([file] * n, pa.int32()),
            ROW_COLUMN: pa.array(rows, pa.int64()),
            "label": pa.array([None if r == 4 else "positive" for r in rows]),
            "p_negative": pa.array([None if r == 4 else 0.1 for r in rows], pa.float64()),
            "p_positive": pa.array([None if r == 4 else 0.9 for r in rows], pa.float64()),
            "error": pa.array(["empty text" if r == 4 else None for r in rows]),
        }
    )


def manifest_for(tmp_path: Path, rows: int, fmt: str = "csv") -> JobManifest:
    return JobManifest(
        parameters=JobParameters(
            input=str(tmp_path / "in.csv"), task="sentiment", column="text", format=fmt, prefix="", rows_per_part=3
        ),
        files=[InputFile(path=str(tmp_path / "in.csv"), size=1, mtime_ns=1, rows=rows, columns=["id", "text"])],
        model=ModelPin(name="sentiment", version="1", content="sha256:x"),
        labels=["negative", "positive"],
        created_at="now",
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_part_is_written_in_row_order_once_complete_then_committed(tmp_path: Path, fmt: str) -> None:
    output = parse_location(str(tmp_path / "out"), SETTINGS)
    writer = PartWriter(manifest_for(tmp_path, 7, fmt), output, NAMES)
    first = writer.add(classified_rows([4, 6]))  # part 1 lacks rows 3 and 5; part 2 (row 6 alone) is complete
    assert [(c.part, c.rows) for c in first] == [(2, 1)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [COMMITTED_DIR, f"part-00000-000002.{fmt}"]
    commits = writer.add(classified_rows([3, 4, 2, 5, 1, 0]))  # row 4 again: a block delivered twice
    assert sorted((c.file, c.part) for c in commits) == [(0, 0), (0, 1)]
    middle = next(c for c in commits if c.part == 1)
    assert (middle.rows, middle.failed, middle.labels) == (3, 1, {"positive": 2})
    assert [(f.row, f.reason) for f in middle.failures] == [(4, "empty text")]
    path = tmp_path / "out" / f"part-00000-000001.{fmt}"
    table = pq.read_table(path) if fmt == "parquet" else pacsv.read_csv(path)
    assert table.column_names == ["id", "label", "p_negative", "p_positive", "error"]  # no internal columns
    assert table.column("id").to_pylist() == ["r3", "r4", "r5"]
    assert [e or None for e in table.column("error").to_pylist()] == [None, "empty text", None]  # CSV: "" for none
    assert sorted(p.name for p in (tmp_path / "out" / COMMITTED_DIR).iterdir()) == [
        "00000-000000.json",
        "00000-000001.json",
        "00000-000002.json",
    ]


# --- plans and resumes ---


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    async def pin(spec: Any, settings: Any) -> tuple[ModelPin, tuple[str, ...]]:
        return ModelPin(name=spec.model_name, version="3", content="sha256:abc"), spec.labels

    monkeypatch.setattr(runner, "_pin_model", pin)


def csv_input(tmp_path: Path, n: int = 5) -> Path:
    return write_csv(tmp_path / "in.csv", [["id", "text"]] + [[str(i), f"text {i}"] for i in range(n)])


def test_a_plan_is_written_once_and_a_rerun_must_be_the_same_job(tmp_path: Path, pinned: None) -> None:
    source, out = csv_input(tmp_path), str(tmp_path / "out")
    manifest, _, _ = plan_job(JobRequest(input=str(source), output=out, task="sentiment"), SETTINGS)
    assert (manifest.total_rows, manifest.parts(), manifest.model.version) == (5, [(0, 0), (0, 1)], "3")
    assert json.loads((tmp_path / "out" / JOB_FILE).read_text())["files"][0]["columns"] == ["id", "text"]
    again, _, _ = plan_job(JobRequest(input=str(source), output=out, task="sentiment"), SETTINGS)
    assert again == manifest
    with pytest.raises(JobConflict, match="holds another job"):
        plan_job(JobRequest(input=str(source), output=out, task="disaster"), SETTINGS)
    with pytest.raises(JobConflict, match="holds another job"):
        plan_job(
            JobRequest(input=str(source), output=out, task="sentiment"),
            SETTINGS.model_copy(update={"rows_per_part": 2}),
        )
    source.write_text("id,text\n1,changed\n")
    with pytest.raises(JobConflict, match="the input changed since the job started"):
        plan_job(JobRequest(input=str(source), output=out, task="sentiment"), SETTINGS)


def test_an_output_that_is_not_a_jobs_or_lies_inside_the_input_is_refused(tmp_path: Path, pinned: None) -> None:
    source = csv_input(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "report.pdf").write_bytes(b"%PDF")
    with pytest.raises(JobConflict, match=r"holds files but no _job\.json"):
        plan_job(JobRequest(input=str(source), output=str(tmp_path / "taken"), task="sentiment"), SETTINGS)
    with pytest.raises(InvalidJob, match="inside the input"):
        plan_job(JobRequest(input=str(tmp_path), output=str(tmp_path / "out"), task="sentiment"), SETTINGS)


def test_a_label_column_in_the_input_needs_a_prefix(tmp_path: Path, pinned: None) -> None:
    source = write_csv(tmp_path / "in.csv", [["text", "label"], ["great", "1"]])
    with pytest.raises(InvalidJob, match=r"already has column\(s\) label .*--prefix"):
        plan_job(JobRequest(input=str(source), output=str(tmp_path / "o1"), task="sentiment"), SETTINGS)
    manifest, _, _ = plan_job(
        JobRequest(input=str(source), output=str(tmp_path / "o2"), task="sentiment", prefix="pred_"), SETTINGS
    )
    assert manifest.parameters.prefix == "pred_"
    with pytest.raises(InvalidJob, match="prefix of the added columns"):
        plan_job(JobRequest(input=str(source), output=str(tmp_path / "o3"), task="sentiment", prefix='x",\n'), SETTINGS)
    internal = write_csv(tmp_path / "internal.csv", [["text", "__mtc_row"], ["great", "1"]])
    with pytest.raises(InvalidJob, match="__mtc_row"):
        plan_job(JobRequest(input=str(internal), output=str(tmp_path / "o4"), task="sentiment"), SETTINGS)


def test_a_job_whose_parts_are_all_committed_is_summarised_without_running_again(tmp_path: Path, pinned: None) -> None:
    source, out = csv_input(tmp_path, 5), tmp_path / "out"
    request = JobRequest(input=str(source), output=str(out), task="sentiment")
    manifest, _, output = plan_job(request, SETTINGS)
    writer = PartWriter(manifest, output, NAMES)
    writer.add(classified_rows([0, 1, 2, 3, 4]).drop_columns(["id"]))
    # no Ray and no Triton here: a complete job only reads its commit records back
    summary = run_job(request, SETTINGS)
    assert (summary.rows_total, summary.rows_failed, summary.parts, summary.parts_resumed) == (5, 1, 2, 2)
    assert summary.labels == {"negative": 0, "positive": 4}
    assert summary.failures == [{"file": 0, "row": 4, "reason": "empty text"}]
    assert summary.rows_this_run == 0
    assert json.loads((out / "_summary.json").read_text())["failure_reasons"] == {"empty text": 1}


# --- rows and errors ---


def test_empty_and_oversized_texts_are_failed_rows() -> None:
    assert [text_problem(v, 10) for v in ["ok", "", "  \n\t", None, 5, "x" * 11]] == [
        None,
        "empty text",
        "empty text",
        "empty text",
        "empty text",
        "text longer than 10 characters",
    ]


def test_the_error_a_ray_failure_carries_is_found() -> None:
    class WrappedError(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("task failed")
            self.cause = cause

    inner = BackendUnavailable("Triton at x is unreachable")
    try:
        try:
            raise inner
        except BackendUnavailable as exc:
            raise RuntimeError("user code failed") from exc
    except RuntimeError as exc:
        wrapped = WrappedError(exc)
    assert root_error(wrapped) is inner
    assert root_error(RuntimeError("plain")) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "nope"], "unknown task 'nope'; known tasks:"),
        (["--task", "sentiment", "--column", "body"], "no column 'body' (found: id, text)"),
        (["--task", "sentiment", "--rows-per-part", "0"], "rows_per_part: Input should be greater than or equal to 1"),
    ],
)
def test_the_command_line_answers_a_bad_job_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    source = csv_input(tmp_path)
    code = main(["classify", str(source), "--output", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_the_command_line_refuses_a_bucket_that_is_not_allowed_and_a_missing_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["classify", "s3://elsewhere/in.csv", "--task", "sentiment", "--output", str(tmp_path / "o")]) == 2
    assert "bucket 'elsewhere' of the input is not allowed" in capsys.readouterr().err
    assert (
        main(["classify", str(tmp_path / "missing.csv"), "--task", "sentiment", "--output", str(tmp_path / "o")]) == 2
    )
    assert capsys.readouterr().err == f"error: the input {tmp_path / 'missing.csv'} does not exist\n"


# --- what a job sends to Triton ---


class RecordingTriton(ThreadingHTTPServer):
    """Triton's HTTP infer and statistics endpoints, enough for the real client: answers zero logits and records
    each request's ``parameters`` (where tritonclient puts ``priority`` and ``timeout``); its statistics count the
    requests it answered plus ``others`` (someone else's requests, set by a test)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.parameters: list[dict[str, Any]] = []
        self.rows: list[int] = []
        self.delay_s = delay_s
        self.running = 0
        self.most_running = 0
        self.answered = 0
        self.others = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _RecordingHandler(BaseHTTPRequestHandler):
    server: RecordingTriton

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        header = json.loads(body[: int(self.headers.get("Inference-Header-Content-Length", len(body)))])
        self.server.parameters.append(header.get("parameters", {}))
        rows = header["inputs"][0]["shape"][0]
        with self.server.lock:
            self.server.rows.append(rows)
            self.server.running += 1
            self.server.most_running = max(self.server.most_running, self.server.running)
        time.sleep(self.server.delay_s)
        with self.server.lock:
            self.server.running -= 1
            self.server.answered += 1
        self._answer(
            {
                "model_name": "sentiment",
                "model_version": "1",
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [rows, 2], "data": [0.0] * (2 * rows)}],
            }
        )

    def do_GET(self) -> None:
        if self.path != "/v2/models/sentiment/stats":  # the worker asks for its own model's statistics only
            self.send_error(404)
            return
        with self.server.lock:
            finished = self.server.answered + self.server.others
        stats = {"name": "sentiment", "version": "1", "inference_stats": {"success": {"count": finished}}}
        self._answer({"model_stats": [stats]})

    def _answer(self, document: dict[str, Any]) -> None:
        answer = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def classifier_at(tmp_path: Path, triton: RecordingTriton, **settings: Any) -> Iterator[Classifier]:
    """A sentiment :class:`Classifier` whose Triton is ``triton`` (served while the block runs), with
    ``settings`` on top of the environment's :class:`BatchSettings`."""
    repository = make_artifact_repository(tmp_path / "repo", tasks=["sentiment"], manifest=True)
    content = asyncio.run(ArtifactStore(make_source(str(repository), None)).content(get_task("sentiment"), "1"))
    serving = threading.Thread(target=triton.serve_forever, daemon=True)
    serving.start()
    try:
        config = ClassifierConfig(
            task="sentiment",
            model=ModelPin(name="sentiment", version="1", content=content.identity),
            value_column=VALUE_COLUMN,
            names=NAMES,
            settings=BatchSettings(
                triton_protocol="http", triton_url=triton.url, model_repository=str(repository), **settings
            ),
        )
        classifier = Classifier(config)
        try:
            yield classifier
        finally:
            classifier.close()
    finally:
        triton.shutdown()
        triton.server_close()


@pytest.mark.parametrize(("environment", "sent"), [({}, 2), ({"MTC_BATCH_TRITON_PRIORITY": "0"}, None)])
def test_every_triton_request_of_a_job_carries_the_batch_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], sent: int | None
) -> None:
    """Batch requests queue behind interactive ones (level 2 of the models' two priority levels) unless a person
    opts out."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    triton = RecordingTriton()
    with classifier_at(tmp_path, triton) as classifier:
        # two length buckets: two Triton requests
        result = classifier(pa.table({VALUE_COLUMN: ["great", "a long and winding review " * 20, ""]}))
    assert result.column("label").to_pylist()[:2] == ["negative", "negative"]
    assert len(triton.parameters) == 2
    assert [p.get("priority") for p in triton.parameters] == [sent, sent]


def test_a_batch_priority_outside_the_models_levels_is_refused() -> None:
    with pytest.raises(ValueError, match="triton_priority"):
        BatchSettings(triton_priority=3)


def test_a_batch_goes_to_triton_in_requests_of_at_most_request_rows_with_at_most_in_flight_at_once(
    tmp_path: Path,
) -> None:
    """A running request cannot be interrupted by an interactive one: the job's requests stay small, and few."""
    triton = RecordingTriton(delay_s=0.2)
    settings = {"triton_request_rows": 3, "triton_in_flight": 2, "triton_in_flight_idle": 2}
    with classifier_at(tmp_path, triton, **settings) as classifier:
        result = classifier(pa.table({VALUE_COLUMN: [f"review number {i}" for i in range(10)]}))
    assert result.column("label").to_pylist() == ["negative"] * 10
    assert sorted(triton.rows) == [1, 3, 3, 3]
    assert triton.most_running == 2


@pytest.mark.parametrize(("others_per_s", "most"), [(0, 3), (50, 1)])
def test_a_worker_keeps_more_requests_at_triton_only_while_nobody_else_uses_the_model(
    tmp_path: Path, others_per_s: int, most: int
) -> None:
    """Pacing (batch.pacing): ``triton_in_flight_idle`` requests while Triton's statistics count only the worker's
    own, ``triton_in_flight`` while someone else's requests keep arriving."""
    triton = RecordingTriton(delay_s=0.1)
    stop = threading.Event()

    def someone_else() -> None:
        while others_per_s and not stop.wait(1 / others_per_s):
            with triton.lock:
                triton.others += 1

    threading.Thread(target=someone_else, daemon=True).start()
    pacing = {"triton_in_flight": 1, "triton_in_flight_idle": 3, "pacing_interval_s": 0.05, "pacing_window_s": 0.5}
    try:
        with classifier_at(tmp_path, triton, **pacing) as classifier:
            result = classifier(pa.table({VALUE_COLUMN: [f"review number {i}" for i in range(30)]}))
    finally:
        stop.set()
    assert result.column("label").to_pylist() == ["negative"] * 30
    assert triton.most_running == most
