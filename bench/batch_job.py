"""A batch job vs a client loop, and what a running job does to interactive latency (issue 15).

``python -m bench.batch_job --rows 20000`` starts its own servers (the local S3 server, Triton serving the
``sentiment`` model of ``--repository``, ``python -m frontend_api`` with the job API) and measures, on the same
``--rows`` reviews:

1. **idle**: the interactive p50 of ``POST /v1/sentiment`` (one review) at concurrency 1, nothing else running;
2. **REST loop**: the rows sent through ``POST /v1/sentiment`` by ``--clients`` (32) closed-loop clients,
   ``--texts-per-request`` (1) reviews per request: wall time and rows/s;
3. **job**: the same rows as a CSV in S3, ``POST /v1/jobs`` polled to ``succeeded``: wall time from the POST to
   the end (Ray's start-up included) and the runner's own rows/s. Nothing else runs, as in the REST loop: this is
   the throughput comparison;
4. **job + interactive**: a job of the first ``--probe-rows`` rows with the interactive client at concurrency 1
   beside it, from the job's first classified rows to its end: the interactive p50 and its ratio to idle (the
   job's requests run at Triton priority 2, the interactive ones at 1, so the job yields to them by design and
   its own rate in this phase is lower).

It prints the figures and writes them to ``OUT/batch_job.json``. It uses the whole machine for minutes: run it
at full size on a quiet machine (``--rows 500`` shows that it works).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import itertools
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.inputs import load_samples
from bench.loadgen import LoadResult, run_load
from bench.servers import facade_server, triton_for
from serving.s3 import S3Server
from taskspec import SENTIMENT

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def review_rows(rows: int) -> tuple[list[str], str]:
    """``rows`` reviews (the benchmark samples: IMDB validation reviews where present, repeated when fewer)."""
    samples = load_samples(SENTIMENT, limit=rows)
    return [text for text, _ in zip(itertools.cycle(samples.texts), range(rows), strict=False)], samples.source


def csv_bytes(texts: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "text"])
    writer.writerows([i, text] for i, text in enumerate(texts))
    return buffer.getvalue().encode()


async def interactive_idle(api: str, text: str, duration_s: float) -> LoadResult:
    """Concurrency 1 on ``POST /v1/sentiment`` (one review) for ``duration_s``, nothing else running."""
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:

        async def send(n: int) -> None:
            response = await client.post("/v1/sentiment", json={"texts": [text]})
            response.raise_for_status()

        return await run_load(send, concurrency=1, duration_s=duration_s, label="interactive, idle")


async def interactive_until(api: str, text: str, stop: asyncio.Event) -> LoadResult:
    """Concurrency 1 on ``POST /v1/sentiment`` until ``stop`` is set (the job ended)."""
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        start = time.perf_counter()
        while not stop.is_set():
            t0 = time.perf_counter()
            response = await client.post("/v1/sentiment", json={"texts": [text]})
            if response.status_code == 200:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1
        return LoadResult("interactive, during the job", 1, time.perf_counter() - start, latencies, errors)


async def rest_loop(api: str, texts: Sequence[str], clients: int, per_request: int) -> dict[str, Any]:
    """Every row through ``POST /v1/sentiment`` by ``clients`` closed-loop clients; wall time and rows/s."""
    chunks = [list(texts[i : i + per_request]) for i in range(0, len(texts), per_request)]
    queue = iter(chunks)
    errors = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for chunk in queue:
            response = await client.post("/v1/sentiment", json={"texts": chunk})
            if response.status_code != 200:
                errors += 1

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=api, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        seconds = time.perf_counter() - start
    return {
        "rows": len(texts),
        "seconds": round(seconds, 2),
        "rows_per_s": round(len(texts) / seconds, 1),
        "errors": errors,
    }


async def job_run(api: str, s3: Any, bucket: str, texts: Sequence[str], probe_text: str | None) -> dict[str, Any]:
    """The rows as one job; with ``probe_text``, the interactive p50 measured while it runs."""
    key = f"bench/{uuid.uuid4().hex}.csv"
    s3.put_object(Bucket=bucket, Key=key, Body=csv_bytes(texts))
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        start = time.perf_counter()
        created = await client.post("/v1/jobs", json={"input": f"s3://{bucket}/{key}", "task": "sentiment"})
        created.raise_for_status()
        job_id = created.json()["id"]
        running_at: float | None = None
        running = asyncio.Event()

        async def poll() -> dict[str, Any]:
            nonlocal running_at
            while True:
                view: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()
                if running_at is None and view["rows_done"] > 0:
                    running_at = time.perf_counter()
                    running.set()
                if view["state"] in ("succeeded", "failed", "cancelled"):
                    running.set()
                    stop.set()
                    return view
                await asyncio.sleep(0.5)

        async def probe_once_running() -> LoadResult | None:
            if probe_text is None:
                return None
            await running.wait()  # from the first classified rows on
            return await interactive_until(api, probe_text, stop)

        view, during = await asyncio.gather(poll(), probe_once_running())
        seconds = time.perf_counter() - start
    if view["state"] != "succeeded":
        raise SystemExit(f"the job ended {view['state']}: {view.get('error')}")
    return {
        "rows": len(texts),
        "seconds_from_post": round(seconds, 2),
        "rows_per_s_from_post": round(len(texts) / seconds, 1),
        "runner_rows_per_s": view["rows_per_s"],
        "seconds_to_first_rows": round((running_at or time.perf_counter()) - start, 2),
        **({"interactive_during": during.summary()} if during is not None else {}),
    }


def job_line(what: str, job: dict[str, Any]) -> str:
    return (
        f"{what}: {job['rows']} rows in {job['seconds_from_post']} s from the POST ({job['rows_per_s_from_post']} "
        f"rows/s; the runner's own {job['runner_rows_per_s']} rows/s; "
        f"first rows after {job['seconds_to_first_rows']} s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_job", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="reviews in the job and in the REST loop")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients of the REST loop")
    parser.add_argument("--texts-per-request", type=int, default=1, help="reviews per request of the REST loop")
    parser.add_argument("--idle-s", type=float, default=20.0, help="seconds of the idle interactive measurement")
    parser.add_argument(
        "--probe-rows", type=int, default=4000, help="rows of the job run beside the interactive client (0: skip it)"
    )
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench-results" / "batch_job")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    texts, source = review_rows(args.rows)
    probe = texts[0]
    # The local S3 server takes any key pair it is started with; these never leave the machine.
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret-key"}
    os.environ.update({**credentials, "AWS_EC2_METADATA_DISABLED": "true"})
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    s3_server = S3Server(
        args.out / "s3-data",
        args.out / "s3.log",
        access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
    )
    with s3_server, triton_for(args.repository, ["sentiment"], args.out) as triton:
        from export.s3sync import S3Settings, ensure_bucket, make_client

        s3 = make_client(S3Settings(endpoint_url=s3_server.endpoint))
        ensure_bucket(s3, bucket)
        env = {
            "MTC_API_TASKS": '["sentiment"]',
            "MTC_API_S3_ENDPOINT_URL": s3_server.endpoint,
            "MTC_API_UPLOAD_BUCKET": bucket,
            "MTC_API_JOBS_INPUT_BUCKETS": json.dumps([bucket]),
            "MTC_API_TRITON_TIMEOUT_S": "300",
        }
        with facade_server(triton, args.repository, args.out, extra_env=env) as api:
            print(f"{args.rows} rows ({source})", flush=True)
            idle = asyncio.run(interactive_idle(api, probe, args.idle_s))
            print(f"idle interactive p50: {idle.p(50):.1f} ms ({idle.requests} requests)", flush=True)
            loop = asyncio.run(rest_loop(api, texts, args.clients, args.texts_per_request))
            print(
                f"REST loop, {args.clients} clients x {args.texts_per_request} review(s) per request: "
                f"{loop['seconds']} s, {loop['rows_per_s']} rows/s ({loop['errors']} errors)",
                flush=True,
            )
            job = asyncio.run(job_run(api, s3, bucket, texts, None))
            print(job_line("job", job), flush=True)
            probed = None
            if args.probe_rows > 0:
                probed = asyncio.run(job_run(api, s3, bucket, texts[: args.probe_rows], probe))
                print(job_line("job beside the interactive client", probed), flush=True)
    report: dict[str, Any] = {
        "rows": args.rows,
        "inputs": source,
        "batch_settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MTC_BATCH_")},
        "idle_interactive": idle.summary(),
        "rest_loop": {**loop, "clients": args.clients, "texts_per_request": args.texts_per_request},
        "job": job,
        "job_over_rest_loop": round(job["rows_per_s_from_post"] / loop["rows_per_s"], 2),
    }
    print(f"job / REST loop: {report['job_over_rest_loop']}x")
    if probed is not None:
        during = probed["interactive_during"]
        report["job_beside_interactive"] = probed
        report["p50_during_job_over_idle"] = round(during["p50_ms"] / idle.p(50), 2) if idle.latencies_ms else None
        print(
            f"interactive p50 during the job: {during['p50_ms']:.1f} ms ({during['requests']} requests), "
            f"{report['p50_during_job_over_idle']}x idle"
        )
    (args.out / "batch_job.json").write_text(json.dumps(report, indent=1))
    print(f"-> {args.out / 'batch_job.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
