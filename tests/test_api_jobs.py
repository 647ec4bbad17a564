"""The job API (``/v1/jobs``) with fakes: S3 is moto's in-process mock, the runner a fake launcher that records
what it was asked to start (the runner writes ``status.json``; these tests write it as a runner would).

The real thing (facade + Triton + SeaweedFS + Ray, a job run and a job cancelled) is tests/test_jobs_integration.py.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config
from fastapi.testclient import TestClient
from moto import mock_aws

from batch.jobstate import JOB_RECORD, STATUS_RECORD, JobRecord, JobStatus, now_iso
from frontend_api.app import create_app
from frontend_api.settings import ApiSettings
from tests.fakes.frontend_api import FakeTriton, make_artifact_repository

PROBLEM = "application/problem+json"
DATA, UPLOADS = "team-data", "mtc-uploads"


class FakeLauncher:
    """Records each start; ``fail`` makes the next start raise (no runner could be started)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str, dict[str, str]]] = []
        self.fail: Exception | None = None

    async def start(self, job_id: str, job_uri: str, env: Mapping[str, str]) -> None:
        if self.fail is not None:
            raise self.fail
        self.started.append((job_id, job_uri, dict(env)))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact_repository(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1", config=Config(signature_version="s3v4"))
        for bucket in (DATA, UPLOADS, "other-team"):
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=DATA, Key="reviews/2026-11.csv", Body=b"text\ngreat film\n")
        client.put_object(Bucket="other-team", Key="secret.csv", Body=b"text\nx\n")
        yield client


def build(repo: Path, s3: Any, launcher: FakeLauncher, **overrides: Any) -> TestClient:
    values: dict[str, Any] = {
        "model_repository": str(repo),
        "upload_bucket": UPLOADS,
        "jobs_input_buckets": [DATA],
        "triton_url": "triton.internal:8000",
        **overrides,
    }
    settings = ApiSettings(_env_file=None, **values)  # type: ignore[call-arg]
    app = create_app(settings, FakeTriton(), s3_client=s3, job_launcher=launcher)
    return TestClient(app, raise_server_exceptions=False)


def write_status(s3: Any, job_id: str, **fields: Any) -> None:
    status = JobStatus(**{"updated_at": now_iso(), **fields})
    s3.put_object(Bucket=UPLOADS, Key=f"jobs/{job_id}/{STATUS_RECORD}", Body=status.model_dump_json().encode())


def start(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"input": f"s3://{DATA}/reviews/2026-11.csv", "task": "sentiment", **body})
    assert response.status_code == 202, response.text
    view: dict[str, Any] = response.json()
    return view


def test_a_job_is_created_in_s3_and_its_runner_started_with_the_facades_configuration(repo: Path, s3: Any) -> None:
    launcher = FakeLauncher()
    with build(repo, s3, launcher, jobs_ray_address="ray://head:10001") as client:
        response = client.post(
            "/v1/jobs", json={"input": f"s3://{DATA}/reviews/", "task": "sentiment", "column": "review"}
        )
    assert response.status_code == 202, response.text
    view = response.json()
    assert response.headers["location"] == view["url"] == f"/v1/jobs/{view['id']}"
    assert view["state"] == "queued" and view["rows_done"] == 0 and view["result_url"] is None
    assert view["output"] == f"s3://{UPLOADS}/jobs/{view['id']}/output/"
    record = JobRecord.model_validate_json(
        s3.get_object(Bucket=UPLOADS, Key=f"jobs/{view['id']}/{JOB_RECORD}")["Body"].read()
    )
    assert (record.task, record.column, record.input) == ("sentiment", "review", f"s3://{DATA}/reviews/")
    [(job_id, job_uri, env)] = launcher.started
    assert job_id == view["id"] and job_uri == f"s3://{UPLOADS}/jobs/{job_id}"
    assert env["MTC_BATCH_TRITON_URL"] == "triton.internal:8000"
    assert env["MTC_BATCH_RAY_ADDRESS"] == "ray://head:10001"
    assert json.loads(env["MTC_BATCH_ALLOWED_BUCKETS"]) == [UPLOADS, DATA]


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("/etc/passwd", "local paths"),
        ("../../etc/passwd", "local paths"),
        ("file:///etc/passwd", "local paths"),
        ("http://169.254.169.254/latest/meta-data/iam/", "local paths"),
        ("https://example.com/reviews.csv", "local paths"),
        ("s3://other-team/secret.csv", "not allowed"),
        (f"s3://{UPLOADS}/jobs/whatever/output/", "not allowed"),  # other jobs' folders: uploads only
        (f"s3://{DATA}", "whole bucket"),
        (f"s3://{DATA}/reviews/../../other-team/secret.csv", "'..'"),
        (f"s3://{DATA}/reviews//2026-11.csv", "empty"),
        (f"s3://{DATA}/reviews/2026-11.csv?versionId=1", "not a plain"),
        (f"s3://user@{DATA}/reviews/2026-11.csv", "not a plain"),
        (f"s3://{DATA}/reviews/\x00.csv", "local paths"),
        (f"s3://{DATA}/nothing-here.csv", "nothing found"),
    ],
)
def test_inputs_outside_the_allowed_buckets_local_paths_and_other_urls_are_refused(
    repo: Path, s3: Any, uri: str, why: str
) -> None:
    launcher = FakeLauncher()
    with build(repo, s3, launcher) as client:
        response = client.post("/v1/jobs", json={"input": uri, "task": "sentiment"})
        listed = client.get("/v1/jobs").json()["jobs"]
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "/problems/invalid-request" and why in response.json()["detail"]
    assert launcher.started == [] and listed == []


def test_unknown_tasks_variants_and_fields_are_refused(repo: Path, s3: Any) -> None:
    launcher = FakeLauncher()
    uri = f"s3://{DATA}/reviews/2026-11.csv"
    with build(repo, s3, launcher) as client:
        unknown = client.post("/v1/jobs", json={"input": uri, "task": "horoscope"})
        variant = client.post("/v1/jobs", json={"input": uri, "task": "sentiment", "variant": "tiny"})
        extra = client.post("/v1/jobs", json={"input": uri, "task": "sentiment", "output": "/tmp/x"})
    assert unknown.status_code == 422 and "unknown task 'horoscope'" in unknown.json()["detail"]
    assert variant.status_code == 422 and "has no variant 'tiny'" in variant.json()["detail"]
    assert extra.status_code == 422 and extra.headers["content-type"] == PROBLEM  # no client-chosen output
    assert launcher.started == []


@pytest.mark.parametrize(
    "job_id",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "..",
        "%2E%2E",
        "0123456789ab0123456789AB",  # upper case: not an id this facade makes
        "0123456789ab0123456789ab0",
        "0123456789ab%00123456789a",
        "job.json",
    ],
)
def test_hostile_job_ids_are_404_and_never_reach_s3(repo: Path, s3: Any, job_id: str) -> None:
    with build(repo, s3, FakeLauncher()) as client:
        responses = [client.get(f"/v1/jobs/{job_id}"), client.delete(f"/v1/jobs/{job_id}")]
        responses.append(client.get(f"/v1/jobs/{job_id}/result"))
    for response in responses:
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == PROBLEM
    assert "cancel" not in str(s3.list_objects_v2(Bucket=UPLOADS).get("Contents", []))


def test_progress_written_by_the_runner_is_served_with_rate_and_eta_by_every_replica(repo: Path, s3: Any) -> None:
    with build(repo, s3, FakeLauncher()) as first:
        view = start(first)
    job_id = view["id"]
    write_status(s3, job_id, state="running", started_at=now_iso(), rows_total=2000, rows_done=500, rows_per_s=50.0)
    with build(repo, s3, FakeLauncher()) as second:  # another replica (or the same facade restarted)
        running = second.get(f"/v1/jobs/{job_id}").json()
        write_status(
            s3,
            job_id,
            state="succeeded",
            rows_total=2000,
            rows_done=2000,
            rows_failed=3,
            labels={"negative": 1000, "positive": 997},
            failure_reasons={"empty text": 3},
            model_version="1",
            result="result.csv",
            format="csv",
            finished_at=now_iso(),
        )
        done = second.get(f"/v1/jobs/{job_id}").json()
        result = second.get(f"/v1/jobs/{job_id}/result", follow_redirects=False)
        listed = second.get("/v1/jobs").json()["jobs"]
    assert (running["state"], running["rows_done"], running["rows_total"], running["eta_s"]) == (
        "running",
        500,
        2000,
        30,
    )
    assert done["state"] == "succeeded" and done["eta_s"] is None and done["rows_failed"] == 3
    assert done["labels"] == {"negative": 1000, "positive": 997} and done["model_version"] == "1"
    assert done["result_url"] == f"/v1/jobs/{job_id}/result"
    assert result.status_code == 307
    location = urlsplit(result.headers["location"])
    assert location.path.endswith(f"/jobs/{job_id}/result.csv")
    query = parse_qs(location.query)
    assert "X-Amz-Signature" in query and query["response-content-type"] == ["text/csv"]
    assert [job["id"] for job in listed] == [job_id]


def test_a_job_without_a_result_has_no_download(repo: Path, s3: Any) -> None:
    with build(repo, s3, FakeLauncher()) as client:
        job_id = start(client)["id"]
        response = client.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 404 and "queued" in response.json()["detail"]


def test_running_jobs_are_bounded_and_a_runner_that_stopped_reporting_frees_its_slot(repo: Path, s3: Any) -> None:
    launcher = FakeLauncher()
    with build(repo, s3, launcher, jobs_max_running=1, jobs_stale_s=60) as client:
        first = start(client)["id"]
        refused = client.post("/v1/jobs", json={"input": f"s3://{DATA}/reviews/2026-11.csv", "task": "sentiment"})
        long_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=61)).isoformat()
        write_status(s3, first, state="running", rows_total=10, rows_done=4, updated_at=long_ago)
        lost = client.get(f"/v1/jobs/{first}").json()
        second = start(client)["id"]
    assert refused.status_code == 429 and refused.headers["content-type"] == PROBLEM
    assert refused.json()["type"] == "/problems/too-many-jobs" and "at most 1 at once" in refused.json()["detail"]
    assert refused.headers["retry-after"] == "30"
    assert lost["state"] == "failed" and "stopped reporting" in lost["error"]["detail"]
    assert [job_id for job_id, _, _ in launcher.started] == [first, second]


def test_delete_asks_the_runner_to_stop_and_a_finished_job_cannot_be_cancelled(repo: Path, s3: Any) -> None:
    with build(repo, s3, FakeLauncher()) as client:
        job_id = start(client)["id"]
        write_status(s3, job_id, state="running", rows_total=10, rows_done=4)
        cancelling = client.delete(f"/v1/jobs/{job_id}")
        marker = s3.get_object(Bucket=UPLOADS, Key=f"jobs/{job_id}/cancel")
        write_status(s3, job_id, state="cancelled", rows_total=10, rows_done=6, finished_at=now_iso())
        cancelled = client.get(f"/v1/jobs/{job_id}").json()
        again = client.delete(f"/v1/jobs/{job_id}")
        missing = client.delete("/v1/jobs/0123456789ab0123456789ab")
    assert cancelling.status_code == 202 and cancelling.json()["state"] == "cancelling" and marker
    assert cancelled["state"] == "cancelled" and cancelled["rows_done"] == 6
    assert again.status_code == 409 and again.json()["type"] == "/problems/job-finished"
    assert missing.status_code == 404


def test_a_cancelled_job_resumes_with_a_new_runner_and_its_figures_so_far(repo: Path, s3: Any) -> None:
    launcher = FakeLauncher()
    with build(repo, s3, launcher) as client:
        job_id = start(client)["id"]
        write_status(s3, job_id, state="running", rows_total=10, rows_done=4, parts_total=5, parts_done=2)
        client.delete(f"/v1/jobs/{job_id}")
        write_status(s3, job_id, state="cancelled", rows_total=10, rows_done=6, parts_total=5, parts_done=3,
                     finished_at=now_iso())  # fmt: skip
        response = client.post(f"/v1/jobs/{job_id}/resume")
        seen = client.get(f"/v1/jobs/{job_id}").json()
    assert response.status_code == 202, response.text
    view = response.json()
    assert response.headers["location"] == view["url"] == f"/v1/jobs/{job_id}"
    assert view["state"] == seen["state"] == "queued"
    assert (seen["rows_total"], seen["rows_done"], seen["finished_at"], seen["error"]) == (10, 6, None, None)
    status = JobStatus.model_validate_json(
        s3.get_object(Bucket=UPLOADS, Key=f"jobs/{job_id}/{STATUS_RECORD}")["Body"].read()
    )
    assert (status.state, status.parts_done, status.parts_total) == ("queued", 3, 5)
    with pytest.raises(s3.exceptions.NoSuchKey):  # else the new runner would stop at once
        s3.get_object(Bucket=UPLOADS, Key=f"jobs/{job_id}/cancel")
    assert [(started, uri) for started, uri, _ in launcher.started] == [(job_id, f"s3://{UPLOADS}/jobs/{job_id}")] * 2


def test_a_job_whose_runner_was_lost_or_failed_resumes(repo: Path, s3: Any) -> None:
    launcher = FakeLauncher()
    with build(repo, s3, launcher, jobs_stale_s=60) as client:
        lost, failed = start(client)["id"], start(client)["id"]
        long_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=61)).isoformat()
        write_status(s3, lost, state="running", rows_total=10, rows_done=4, updated_at=long_ago)
        error = {"type": "/problems/backend-unavailable", "title": "Backend unavailable", "detail": "Triton is down"}
        write_status(s3, failed, state="failed", rows_total=10, rows_done=2, error=error, finished_at=now_iso())
        assert "POST /v1/jobs/" in client.get(f"/v1/jobs/{lost}").json()["error"]["detail"]
        resumed = [client.post(f"/v1/jobs/{job_id}/resume") for job_id in (lost, failed)]
    assert [r.status_code for r in resumed] == [202, 202]
    assert [r.json()["state"] for r in resumed] == ["queued", "queued"]
    assert [r.json()["rows_done"] for r in resumed] == [4, 2]
    assert [job_id for job_id, _, _ in launcher.started] == [lost, failed, lost, failed]


def test_only_a_failed_or_cancelled_job_resumes_and_a_resume_counts_against_the_limit(repo: Path, s3: Any) -> None:
    launcher = FakeLauncher()
    with build(repo, s3, launcher, jobs_max_running=1) as client:
        done = start(client)["id"]
        write_status(s3, done, state="succeeded", rows_total=1, rows_done=1, finished_at=now_iso())
        running = start(client)["id"]
        write_status(s3, running, state="running", rows_total=10, rows_done=4)
        refused_running = client.post(f"/v1/jobs/{running}/resume")
        client.delete(f"/v1/jobs/{running}")
        refused_cancelling = client.post(f"/v1/jobs/{running}/resume")
        refused_done = client.post(f"/v1/jobs/{done}/resume")
        write_status(s3, running, state="cancelled", rows_total=10, rows_done=4, finished_at=now_iso())
        other = start(client)["id"]  # the one slot is taken again
        refused_full = client.post(f"/v1/jobs/{running}/resume")
        missing = client.post("/v1/jobs/0123456789ab0123456789ab/resume")
        hostile = client.post("/v1/jobs/..%2F..%2Fsecret/resume")
    for response, state in (
        (refused_running, "running"),
        (refused_cancelling, "cancelling"),
        (refused_done, "succeeded"),
    ):
        assert response.status_code == 409 and response.headers["content-type"] == PROBLEM
        assert response.json()["type"] == "/problems/job-not-resumable" and f"is {state}" in response.json()["detail"]
    assert refused_full.status_code == 429 and refused_full.json()["type"] == "/problems/too-many-jobs"
    assert missing.status_code == 404 and hostile.status_code == 404
    assert [job_id for job_id, _, _ in launcher.started] == [done, running, other]
    marker = s3.get_object(Bucket=UPLOADS, Key=f"jobs/{running}/cancel")  # a refused resume changes nothing
    assert marker


def test_a_resume_whose_runner_cannot_start_is_503_and_the_job_shows_why(repo: Path, s3: Any) -> None:
    launcher = FakeLauncher()
    with build(repo, s3, launcher) as client:
        job_id = start(client)["id"]
        write_status(s3, job_id, state="cancelled", rows_total=10, rows_done=4, finished_at=now_iso())
        launcher.fail = OSError("no such file: python")
        response = client.post(f"/v1/jobs/{job_id}/resume")
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert response.status_code == 503 and response.json()["type"] == "/problems/jobs-unavailable"
    assert job["state"] == "failed" and "no such file: python" in job["error"]["detail"]


def test_a_runner_that_cannot_start_is_503_and_the_job_shows_why(repo: Path, s3: Any) -> None:
    launcher = FakeLauncher()
    launcher.fail = OSError("no such file: python")
    with build(repo, s3, launcher) as client:
        response = client.post("/v1/jobs", json={"input": f"s3://{DATA}/reviews/2026-11.csv", "task": "sentiment"})
        [job] = client.get("/v1/jobs").json()["jobs"]
    assert response.status_code == 503 and response.json()["type"] == "/problems/jobs-unavailable"
    assert job["state"] == "failed" and "no such file: python" in job["error"]["detail"]


def test_the_job_api_needs_the_api_key_when_keys_are_set(repo: Path, s3: Any) -> None:
    key = "k" * 32
    with build(repo, s3, FakeLauncher(), api_keys=[key]) as client:
        body = {"input": f"s3://{DATA}/reviews/2026-11.csv", "task": "sentiment"}
        anonymous = [
            client.post("/v1/jobs", json=body),
            client.get("/v1/jobs"),
            client.post("/v1/jobs/uploads", json={}),
        ]
        keyed = client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"})
    assert [r.status_code for r in anonymous] == [401, 401, 401]
    assert keyed.status_code == 202


def test_an_input_upload_is_a_presigned_size_limited_form_whose_key_is_a_valid_job_input(repo: Path, s3: Any) -> None:
    with build(repo, s3, FakeLauncher(), jobs_max_upload_bytes=5_000_000) as client:
        response = client.post(
            "/v1/jobs/uploads", json={"filename": "../../etc/reviews.csv", "content_type": "text/csv"}
        )
        body = response.json()
        s3.put_object(Bucket=UPLOADS, Key=body["key"], Body=b"text\ngood\n")  # as the form upload would
        started = client.post("/v1/jobs", json={"input": body["input"], "task": "sentiment"})
        parquet = client.post("/v1/jobs/uploads", json={"content_type": "application/x-sh"})
    assert response.status_code == 200, response.text
    assert body["key"].startswith("job-inputs/") and body["key"].endswith(".csv") and "etc" not in body["key"]
    assert body["input"] == f"s3://{UPLOADS}/{body['key']}" and body["max_bytes"] == 5_000_000
    policy = json.loads(__import__("base64").b64decode(body["fields"]["policy"]))
    assert ["content-length-range", 1, 5_000_000] in policy["conditions"]
    assert {"Content-Type": "text/csv"} in policy["conditions"]
    assert started.status_code == 202, started.text
    assert parquet.status_code == 422
