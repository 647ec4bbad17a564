"""The job API end to end: ``python -m frontend_api`` (settings from MTC_API_* variables) against the real Triton
serving the tiny random-weight models, the local S3 server (SeaweedFS) and a real local Ray.

- a CSV uploaded through the presigned form of ``POST /v1/jobs/uploads``, started with ``POST /v1/jobs``, polled
  until it succeeded; its result, downloaded through ``GET /v1/jobs/{id}/result``, holds every row once, in
  order, with the labels and probabilities ``POST /v1/sentiment`` gives the same texts, and the empty text as a
  failed row;
- ``DELETE /v1/jobs/{id}`` on a running job: the runner stops (its process ends), the job says ``cancelled``
  with part of its rows done, and there is no result; ``POST /v1/jobs/{id}/resume`` then starts a runner that
  skips the committed parts and finishes the job: every row once, in order.

The facade starts each job's runner (``python -m batch run-job``) as it does in production; the runners join
this module's Ray (``MTC_API_JOBS_RAY_ADDRESS``: the cluster path) instead of starting one each, which keeps the
module to about a minute.
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.servers import facade_process
from export.s3sync import S3Settings, ensure_bucket, make_client
from serving.triton import TritonServer, free_port
from taskspec import SENTIMENT
from tests.support.local_ray import local_ray
from tests.support.tiny_models import TINY_TEXTS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Stack:
    api_url: str
    s3: Any
    data_bucket: str
    upload_bucket: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[Stack]:
    from tests.support.tiny_models import build_tiny_repository

    root = tmp_path_factory.mktemp("jobs")
    repository = build_tiny_repository(root, tasks=("sentiment",))
    s3 = make_client(S3Settings(endpoint_url=s3_endpoint))
    data_bucket, upload_bucket = f"data-{uuid.uuid4().hex[:8]}", f"uploads-{uuid.uuid4().hex[:8]}"
    for bucket in (data_bucket, upload_bucket):
        ensure_bucket(s3, bucket)
    triton = TritonServer(
        model_repository=str(repository),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        model_control_mode="explicit",
        load_models=["sentiment"],
        startup_timeout=180,
    ).start()
    try:
        with local_ray() as ray_address:
            env = {
                "MTC_API_S3_ENDPOINT_URL": s3_endpoint,
                "MTC_API_UPLOAD_BUCKET": upload_bucket,
                "MTC_API_JOBS_INPUT_BUCKETS": json.dumps([data_bucket]),
                "MTC_API_JOBS_RAY_ADDRESS": ray_address,
                # the runners inherit these: small parts and batches, so a job reports (and can be cancelled) early
                "MTC_BATCH_ROWS_PER_PART": "50",
                "MTC_BATCH_BATCH_ROWS": "8",
                "MTC_BATCH_CONCURRENCY": "1",
            }
            s3_host = s3_endpoint.removeprefix("http://")
            api, api_url = facade_process(
                triton, repository, root, allowed_http_hosts=[s3_host], extra_env=env, ready_path="/healthz"
            )  # a repository of sentiment only: /readyz waits for every task
            with api:
                yield Stack(api_url, s3, data_bucket, upload_bucket)
    finally:
        triton.stop()


def wait_for(stack: Stack, job_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = httpx.get(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10).json()
        if view["state"] in states:
            return view
        assert view["state"] in ("queued", "running", "cancelling"), view
        assert time.monotonic() < deadline, f"job {job_id} still {view['state']} after {timeout} s: {view}"
        time.sleep(0.5)


def runner_pids(job_id: str) -> list[int]:
    """The processes running ``python -m batch run-job`` for ``job_id``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                command = (entry / "cmdline").read_bytes().split(b"\0")
                if b"run-job" in command and any(part.endswith(job_id.encode()) for part in command):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until_exited(job_id: str, timeout: float = 30) -> None:
    """The job's runner exits soon after its final status (a succeeded job's Ray stops after the status says so)."""
    gone_by = time.monotonic() + timeout
    while runner_pids(job_id):
        assert time.monotonic() < gone_by, f"the runner of job {job_id} is still running {timeout} s after its end"
        time.sleep(0.2)


def test_an_uploaded_csv_is_classified_by_a_job_and_its_result_downloaded(stack: Stack) -> None:
    texts = [f"{TINY_TEXTS[i % len(TINY_TEXTS)]} #{i}" for i in range(120)]
    texts[7] = "   "  # a failed row, never a failed job
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "text"])
    writer.writerows([f"r{i:03d}", text] for i, text in enumerate(texts))
    form = httpx.post(f"{stack.api_url}/v1/jobs/uploads", json={"filename": "reviews.csv"}, timeout=10).json()
    uploaded = httpx.post(
        form["upload_url"],
        data=form["fields"],
        files={"file": ("reviews.csv", buffer.getvalue().encode(), "text/csv")},
        timeout=30,
    )
    assert uploaded.status_code in (200, 204), uploaded.text

    created = httpx.post(f"{stack.api_url}/v1/jobs", json={"input": form["input"], "task": "sentiment"}, timeout=30)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.headers["location"] == f"/v1/jobs/{job_id}"
    done = wait_for(stack, job_id, {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    assert (done["rows_total"], done["rows_done"], done["rows_failed"]) == (120, 120, 1)
    assert done["failure_reasons"] == {"empty text": 1} and sum(done["labels"].values()) == 119
    assert done["model_version"] == "1" and done["rows_per_s"] > 0
    assert job_id in [job["id"] for job in httpx.get(f"{stack.api_url}/v1/jobs", timeout=10).json()["jobs"]]

    redirect = httpx.get(f"{stack.api_url}{done['result_url']}", timeout=10)
    assert redirect.status_code == 307
    result = httpx.get(redirect.headers["location"], timeout=30)
    assert result.status_code == 200 and result.headers["content-type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(result.text)))
    assert [row["id"] for row in rows] == [f"r{i:03d}" for i in range(120)]  # every row once, in order, one header
    assert rows[7]["error"] == "empty text" and rows[7]["label"] == ""
    good = [i for i in range(120) if i != 7]
    online = []
    for start in range(0, len(good), 16):  # within the route's max_items
        chunk = [texts[i] for i in good[start : start + 16]]
        answer = httpx.post(f"{stack.api_url}/v1/sentiment", json={"texts": chunk}, timeout=60)
        assert answer.status_code == 200, answer.text
        online += answer.json()["predictions"]
    for i, prediction in zip(good, online, strict=True):
        assert rows[i]["label"] == prediction["label"] and rows[i]["error"] == ""
        for label in SENTIMENT.labels:  # the int8 file on CPU: batch-dependent in the 4th decimal
            assert abs(float(rows[i][f"p_{label}"]) - prediction["probabilities"][label]) < 1e-3
    wait_until_exited(job_id)


def test_delete_cancels_a_running_job(stack: Stack) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["text"])
    writer.writerows([f"{TINY_TEXTS[i % len(TINY_TEXTS)]} #{i}"] for i in range(20_000))
    stack.s3.put_object(Bucket=stack.data_bucket, Key="big/reviews.csv", Body=buffer.getvalue().encode())

    created = httpx.post(
        f"{stack.api_url}/v1/jobs", json={"input": f"s3://{stack.data_bucket}/big/", "task": "sentiment"}, timeout=30
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 120
    while (view := httpx.get(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10).json())["rows_done"] < 200:
        assert view["state"] in ("queued", "running") and time.monotonic() < deadline, view
        time.sleep(0.3)
    assert runner_pids(job_id), "the job's runner is not running"

    cancelling = httpx.delete(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10)
    assert cancelling.status_code == 202 and cancelling.json()["state"] == "cancelling"
    cancelled = wait_for(stack, job_id, {"cancelled", "succeeded", "failed"}, timeout=60)
    assert cancelled["state"] == "cancelled", cancelled
    assert 0 < cancelled["rows_done"] < 20_000 and cancelled["result_url"] is None
    wait_until_exited(job_id)
    assert httpx.get(f"{stack.api_url}/v1/jobs/{job_id}/result", timeout=10).status_code == 404
    assert httpx.delete(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10).status_code == 409

    # resumed: a new runner skips the parts the first one committed, and the result holds every row once
    resumed = httpx.post(f"{stack.api_url}/v1/jobs/{job_id}/resume", timeout=30)
    assert resumed.status_code == 202, resumed.text
    assert resumed.json()["state"] == "queued" and resumed.json()["rows_done"] == cancelled["rows_done"]
    done = wait_for(stack, job_id, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert done["state"] == "succeeded", done
    assert (done["rows_total"], done["rows_done"], done["rows_failed"]) == (20_000, 20_000, 0)
    summary = json.loads(
        stack.s3.get_object(Bucket=stack.upload_bucket, Key=f"jobs/{job_id}/output/_summary.json")["Body"].read()
    )
    assert summary["parts_resumed"] > 0, summary  # the first run's committed parts, not classified again
    assert summary["rows_this_run"] == 20_000 - 50 * summary["parts_resumed"]  # MTC_BATCH_ROWS_PER_PART=50
    redirect = httpx.get(f"{stack.api_url}{done['result_url']}", timeout=10)
    result = httpx.get(redirect.headers["location"], timeout=60)
    rows = list(csv.DictReader(io.StringIO(result.text)))
    assert [row["text"] for row in rows] == [f"{TINY_TEXTS[i % len(TINY_TEXTS)]} #{i}" for i in range(20_000)]
    assert all(row["label"] in SENTIMENT.labels and row["error"] == "" for row in rows)
    wait_until_exited(job_id)
