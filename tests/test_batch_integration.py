"""Batch jobs end to end: a real Ray (local), the real Triton serving the tiny random-weight models, the local
S3 server (SeaweedFS).

- a CSV of reviews in S3 -> sentiment -> parts in S3: every row once, in order, probabilities equal to
  ONNX Runtime's on the same model and tokenization, empty texts failed with their reason;
- a Parquet file of image URLs (presigned S3 URLs, and URLs refused, unreachable, missing or not an image)
  -> pose -> local Parquet parts, the input's column types kept;
- ``python -m batch classify`` killed (SIGKILL) after its first committed parts, then run again: it resumes
  after them, with no row missing or written twice, and the killed run's local Ray is gone. The second run
  connects to an existing Ray (``--ray-address``: the cluster path).

Two Rays start here (this process's, reused by the in-process jobs; the killed command's own); the whole
module takes about a minute on an idle 2-core machine.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from batch.manifest import COMMITTED_DIR, JOB_FILE, SUMMARY_FILE
from batch.runner import JobRequest, run_job
from batch.settings import BatchSettings
from export.s3sync import S3Settings, ensure_bucket, make_client
from frontend_api.images import decode_image
from frontend_api.settings import ApiSettings
from preprocess.probabilities import softmax
from preprocess.text import TextEncoder
from serving.triton import PROJECT_ROOT, TritonServer, free_port
from taskspec import MODEL_FILE, POSE, SENTIMENT
from tests.support.local_ray import MARKER_ENV, local_ray, session_of, stop_leftover_agents
from tests.support.tiny_models import TINY_TEXTS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Env:
    repository: Path
    triton: TritonServer
    s3_endpoint: str
    bucket: str
    s3: Any
    ray_address: str

    def settings(self, **overrides: Any) -> BatchSettings:
        values: dict[str, Any] = {
            "triton_url": f"127.0.0.1:{self.triton.http_port}",
            "triton_grpc_url": f"127.0.0.1:{self.triton.grpc_port}",
            "model_repository": str(self.repository),
            "allowed_buckets": [self.bucket],
            "s3_endpoint_url": self.s3_endpoint,
            "rows_per_part": 40,
            "batch_rows": 16,
        }
        return BatchSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[Env]:
    from tests.support.tiny_models import build_tiny_repository

    root = tmp_path_factory.mktemp("batch")
    repository = build_tiny_repository(root, tasks=("sentiment", "pose"))
    s3 = make_client(S3Settings(endpoint_url=s3_endpoint))
    bucket = f"batch-{uuid.uuid4().hex[:8]}"
    ensure_bucket(s3, bucket)
    triton = TritonServer(
        model_repository=str(repository),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        model_control_mode="explicit",
        load_models=["sentiment", "pose"],
        # config.pbtxt (fp32 model.onnx), not the CPU hosts' int8 file: dynamic int8 quantises each batch with
        # its own scale, so a row's probabilities there depend on the rows Triton batched it with (~1e-4)
        model_config_name="",
        startup_timeout=180,
    ).start()
    try:
        with local_ray() as ray_address:  # this process's Ray: run_job uses a Ray that is already up (and leaves it)
            yield Env(repository, triton, s3_endpoint, bucket, s3, ray_address)
    finally:
        triton.stop()


def review(i: int) -> str:
    text = TINY_TEXTS[i % len(TINY_TEXTS)]
    return f'{text} "Quoted", with a comma,\nand a second line #{i}' if i % 3 == 0 else f"{text} #{i}"


def onnx_session(path: Path) -> ort.InferenceSession:
    """ONNX Runtime as Triton's CPU backend runs it (serving/backends/onnxruntime: every graph optimisation)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def served_file(env: Env, model: str) -> Path:
    """The file Triton serves for ``model`` (its config's ``default_model_filename``: the int8 file on CPU hosts)."""
    config = httpx.get(f"{env.triton.url}/v2/models/{model}/config", timeout=10).json()
    return env.repository / model / "1" / str(config.get("default_model_filename") or MODEL_FILE)


def expected_text_probabilities(env: Env, texts: list[str]) -> np.ndarray:
    """ONNX Runtime on the served file, with the published tokenizer (no Triton, no Ray)."""
    encoder = TextEncoder.from_version_dir(env.repository / "sentiment" / "1")
    session = onnx_session(served_file(env, "sentiment"))
    out = np.zeros((len(texts), SENTIMENT.num_labels))
    for group in encoder.groups(texts):
        (logits,) = session.run(["logits"], group.inputs(SENTIMENT.input_names))
        out[list(group.indices)] = softmax(np.asarray(logits))
    return out


def s3_parts(env: Env, prefix: str, suffix: str) -> list[bytes]:
    listed = env.s3.list_objects_v2(Bucket=env.bucket, Prefix=prefix)
    keys = sorted(o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(suffix) and "/part-" in o["Key"])
    return [env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read() for key in keys]


def read_csv_strings(data: bytes) -> pa.Table:
    names = pacsv.read_csv(io.BytesIO(data)).column_names
    return pacsv.read_csv(
        io.BytesIO(data),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True),
    )


def test_a_csv_in_s3_is_classified_in_parts_with_bad_rows_reported(env: Env) -> None:
    blank = {4, 41, 77}  # empty or whitespace-only texts: failed rows, never a failed job
    rows = [{"id": f"{i:03d}", "text": ("" if i % 2 else "   \n ") if i in blank else review(i)} for i in range(100)]
    for name, chunk in (("reviews-a.csv", rows[:60]), ("reviews-b.csv", rows[60:])):  # a prefix of two files
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(chunk)
        env.s3.put_object(Bucket=env.bucket, Key=f"in/{name}", Body=buffer.getvalue().encode())
    env.s3.put_object(Bucket=env.bucket, Key="in/_notes.csv", Body=b"text\nnot an input\n")  # skipped: leading _

    summary = run_job(
        JobRequest(input=f"s3://{env.bucket}/in/", output=f"s3://{env.bucket}/out/reviews", task="sentiment"),
        env.settings(),
    )

    parts = s3_parts(env, "out/reviews/", ".csv")
    assert len(parts) == 3  # file a: 40 + 20 rows, file b: 40 rows
    table = pa.concat_tables([read_csv_strings(part) for part in parts])
    assert table.column_names == ["id", "text", "label", "p_negative", "p_positive", "error"]
    assert table.column("id").to_pylist() == [row["id"] for row in rows]  # every row once, in input order
    assert table.column("text").to_pylist() == [row["text"] or None for row in rows]  # the input, unchanged
    errors = table.column("error").to_pylist()
    assert [i for i, error in enumerate(errors) if error] == sorted(blank)
    assert {errors[i] for i in blank} == {"empty text"}
    good = [i for i in range(len(rows)) if i not in blank]
    got = np.array([[float(table.column(f"p_{label}")[i].as_py()) for label in SENTIMENT.labels] for i in good])
    expected = expected_text_probabilities(env, [rows[i]["text"] for i in good])
    # the random tiny model's probabilities differ from row to row by ~1e-5: a row given another's result shows
    assert np.ptp(expected[:, 0]) > 1e-5
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    labels = table.column("label").to_pylist()
    assert [labels[i] for i in good] == [SENTIMENT.labels[int(k)] for k in np.argmax(expected, axis=1)]
    assert all(labels[i] is None and table.column("p_negative")[i].as_py() is None for i in blank)

    assert summary.rows_total == 100 and summary.rows_failed == 3 and summary.parts == 3
    assert sum(summary.labels.values()) == 97
    assert summary.failure_reasons == {"empty text": 3}
    assert [(f["file"], f["row"], f["reason"]) for f in summary.failures] == [
        (0, 4, "empty text"),
        (0, 41, "empty text"),
        (1, 77 - 60, "empty text"),
    ]
    stored = json.loads(env.s3.get_object(Bucket=env.bucket, Key=f"out/reviews/{SUMMARY_FILE}")["Body"].read())
    assert stored["labels"] == summary.labels and stored["rows_per_s"] > 0
    assert stored["part_files"] == ["part-00000-000000.csv", "part-00000-000001.csv", "part-00001-000000.csv"]
    assert (
        json.loads(env.s3.get_object(Bucket=env.bucket, Key=f"out/reviews/{JOB_FILE}")["Body"].read())["model"][
            "version"
        ]
        == "1"
    )


def photo(color: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (96, 80), color)
    for x in range(0, 96, 12):
        image.paste((255 - color[0], color[1], 255 - color[2]), (x, 0, x + 6, 80))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_a_parquet_file_of_image_urls_is_classified_and_bad_urls_are_reported(env: Env, tmp_path: Path) -> None:
    def presign(key: str) -> str:
        url: str = env.s3.generate_presigned_url("get_object", Params={"Bucket": env.bucket, "Key": key}, ExpiresIn=600)
        return url

    images = {f"photos/{i}.jpg": photo((40 * i, 200 - 30 * i, 90)) for i in range(3)}
    for key, data in images.items():
        env.s3.put_object(Bucket=env.bucket, Key=key, Body=data, ContentType="image/jpeg")
    env.s3.put_object(Bucket=env.bucket, Key="photos/notes.txt", Body=b"not an image", ContentType="text/plain")
    dead = f"127.0.0.1:{free_port()}"  # allowed, but nothing listens there
    urls = [
        presign("photos/0.jpg"),
        "",
        "http://169.254.169.254/latest/meta-data/iam/",  # cloud metadata: refused before any request
        presign("photos/1.jpg"),
        f"http://{dead}/photo.jpg",
        presign("photos/notes.txt"),
        presign("photos/missing.jpg"),
        presign("photos/2.jpg"),
    ]
    source = tmp_path / "in" / "photos.parquet"
    source.parent.mkdir()
    pq.write_table(
        pa.table({"id": pa.array(range(len(urls)), pa.int64()), "score": [0.5] * len(urls), "image_url": urls}), source
    )
    s3_host = env.s3_endpoint.removeprefix("http://")
    image_settings = ApiSettings(
        s3_endpoint_url=env.s3_endpoint,
        upload_bucket=env.bucket,
        allowed_http_hosts=[s3_host, dead],
        allowed_image_hosts=[dead],
        image_read_timeout_s=5,
    )

    summary = run_job(
        JobRequest(input=str(source), output=str(tmp_path / "out"), task="pose", column="image_url"),
        env.settings(rows_per_part=5),
        image_settings=image_settings,
    )

    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000-000000.parquet", "part-00000-000001.parquet"]
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    assert table.schema.field("id").type == pa.int64() and table.schema.field("score").type == pa.float64()
    assert table.column("id").to_pylist() == list(range(len(urls)))
    errors = table.column("error").to_pylist()
    kinds = [error.split(":")[0] if error else None for error in errors]
    assert kinds == [
        None,
        "empty URL",
        "url-not-allowed",
        None,
        "image-host-error",
        "bad-image",
        "image-host-error",
        None,
    ]
    assert "404" in errors[6]
    assert POSE.image is not None
    pixels = np.stack([decode_image(images[f"photos/{i}.jpg"], POSE.image, 10_000_000) for i in range(3)])
    session = onnx_session(served_file(env, "pose"))
    expected = softmax(np.asarray(session.run(["logits"], {"pixel_values": pixels})[0]))
    got = np.array([[table.column(f"p_{label}")[i].as_py() for label in POSE.labels] for i in (0, 3, 7)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert [table.column("label")[i].as_py() for i in (0, 3, 7)] == [POSE.labels[int(k)] for k in expected.argmax(1)]
    assert summary.rows_failed == 5 and summary.rows_ok == 3
    assert summary.failure_reasons == {"empty URL": 1, "url-not-allowed": 1, "image-host-error": 2, "bad-image": 1}


def test_a_killed_job_resumes_after_its_committed_parts_without_losing_or_repeating_rows(
    env: Env, tmp_path: Path
) -> None:
    source, output = tmp_path / "many.csv", tmp_path / "out"
    total, per_part = 600, 20
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([f"{i:05d}", review(i)] for i in range(total))
    marker = uuid.uuid4().hex
    environment = {
        **os.environ,
        MARKER_ENV: marker,
        "MTC_BATCH_TRITON_GRPC_URL": f"127.0.0.1:{env.triton.grpc_port}",
        "MTC_BATCH_MODEL_REPOSITORY": str(env.repository),
    }
    command = [
        sys.executable, "-m", "batch", "classify", str(source), "--task", "sentiment", "--output", str(output),
        "--rows-per-part", str(per_part), "--batch-rows", "8", "--concurrency", "1", "--no-progress",
    ]  # fmt: skip

    runner = subprocess.Popen(
        command, env=environment, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    committed = output / COMMITTED_DIR
    deadline = time.monotonic() + 240
    while runner.poll() is None and time.monotonic() < deadline:
        if committed.is_dir() and len(list(committed.glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert runner.poll() is None, f"the job ended before it could be killed: {runner.communicate()[1].decode()[-2000:]}"
    session = session_of(marker)  # the runner's own local Ray
    runner.send_signal(signal.SIGKILL)
    runner.communicate()
    before = len(list(committed.glob("*.json")))
    assert 2 <= before < total // per_part
    # The killed driver takes its local Ray with it: raylet, GCS and workers at once. Its two agents first report the
    # raylet's death to the dead GCS, which Ray 2.60 waits up to 60 s for (a fixed timeout in publish_error_to_driver):
    # not worth a minute here, so they are stopped once they are all that is left.
    stop_leftover_agents(session)

    # the second run joins an existing Ray (this process's) instead of starting one
    again = subprocess.run(
        [*command, "--json", "--ray-address", env.ray_address],
        env=environment,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert summary["parts_resumed"] >= before and summary["parts"] == total // per_part
    assert summary["rows_this_run"] == total - per_part * summary["parts_resumed"]
    table = pa.concat_tables([read_csv_strings(p.read_bytes()) for p in sorted(output.glob("part-*.csv"))])
    assert table.column("id").to_pylist() == [f"{i:05d}" for i in range(total)]  # none missing, none twice
    assert table.column("error").null_count == total and summary["rows_failed"] == 0
    assert sum(summary["labels"].values()) == total
