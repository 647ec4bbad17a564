"""The benchmark run behind ``python -m bench`` / ``make bench``.

1. Picks the models: the trained ones published in ``model_repository/``; a task with none gets a
   tiny random model from ``tests.support.tiny_models.build_tiny_repository`` (the report says so: its
   numbers then describe the serving path, not the real model).
2. Builds a scratch repository with each model and its variants (:mod:`bench.variants`).
3. Starts real Triton, the facade and a static image host (:mod:`bench.servers`).
4. Measures, with the async closed-loop load generator (:mod:`bench.loadgen`):
   - per task, through the facade: latency p50/p95/p99 and throughput over concurrency 1-64;
   - dynamic batching on vs off, direct to Triton, with the executed batch sizes from Triton's
     statistics;
   - int8 vs fp32 (text tasks), direct to Triton, plus how often the two agree;
   - the facade comparisons of :mod:`bench.facade` (facade vs direct Triton, bucketed vs fixed
     padding, the original design's in-process ``transformers`` pipeline).
5. Writes ``report.md``, ``results.json`` and PNG plots (:mod:`bench.report`).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.config import BenchConfig
from bench.inputs import Samples, load_samples
from bench.loadgen import LoadResult, Send, run_load, triton_sender
from bench.machine import describe_machine
from bench.measurements import BatchingPoint, BenchResults, Int8Comparison, StageBreakdown
from bench.report import write_report
from bench.servers import (
    batches_between,
    executed_batches,
    facade_server,
    image_host,
    request_times,
    triton_server,
    triton_split_ms,
)
from bench.variants import VariantRepository, build_variant_repository
from preprocess.image import DEFAULT_MAX_PIXELS, decode_batch
from preprocess.probabilities import softmax
from preprocess.text import TextEncoder
from serving.triton import TritonServer
from taskspec import MODEL_FILE, TaskSpec, get_task

# --- picking the models --------------------------------------------------------------------------


def has_published_model(repository: Path, task: str) -> bool:
    from export.publish import latest_version_dir

    return latest_version_dir(repository, task) is not None


def prepare_repository(config: BenchConfig, scratch: Path, results: BenchResults) -> VariantRepository:
    """The variant repository of each task's published model (a tiny random one where none is published)."""
    specs = [get_task(t) for t in config.tasks]
    trained = [s for s in specs if has_published_model(config.repository, s.name)]
    missing = [s for s in specs if s not in trained]
    sources = {s.name: config.repository for s in trained}
    for spec in trained:
        results.model_sources[spec.name] = f"trained model from {config.repository.name}/"
    if missing:
        from tests.support.tiny_models import build_tiny_repository

        tiny = build_tiny_repository(scratch / "tiny", tasks=[s.name for s in missing])
        for spec in missing:
            sources[spec.name] = tiny
            results.model_sources[spec.name] = (
                "TINY RANDOM MODEL (no trained model published): serving-path numbers only"
            )
        results.notes.append(
            f"No trained model for {', '.join(s.name for s in missing)} in {config.repository}: "
            "benchmarked tests.support.tiny_models.build_tiny_repository's random tiny models instead."
        )
    variants = VariantRepository(root=scratch / "repository")
    for source in sorted(set(sources.values())):
        part = build_variant_repository(source, variants.root, [s for s in specs if sources[s.name] == source])
        variants.models.update(part.models)
        variants.versions.update(part.versions)
        variants.notes.extend(part.notes)
    return variants


# --- request builders ------------------------------------------------------------------------------


def triton_requests(spec: TaskSpec, version_dir: Path, samples: Samples) -> list[dict[str, np.ndarray]]:
    """One single-item request per sample, preprocessed as the facade does (bucketed padding)."""
    if spec.modality == "text":
        encoder = TextEncoder.from_version_dir(version_dir)
        return [encoder.batch([text]).inputs(spec.input_names) for text in samples.texts]
    assert spec.image is not None
    (pixels,) = spec.inputs
    return [{pixels.name: decode_batch([data], spec.image, DEFAULT_MAX_PIXELS)} for data in samples.images]


def facade_sender(
    client: httpx.AsyncClient,
    spec: TaskSpec,
    samples: Samples,
    image_urls: Sequence[str],
    stage_times: dict[str, list[float]] | None = None,
) -> Send:
    """An async ``send(n)`` posting one input to ``/v1/<task>``; non-2xx raises.

    ``stage_times`` collects the facade's own ``timings_ms`` (tokenize / fetch / preprocess /
    inference / total) of every answer, to show where the time goes.
    """

    async def send(n: int) -> None:
        if spec.modality == "text":
            body: dict[str, Any] = {"texts": [samples.texts[n % len(samples.texts)]]}
            if spec.variant_of is not None:
                body["model"] = spec.model_name  # a variant answers on its task's route
        else:
            body = {"image_urls": [image_urls[n % len(image_urls)]], "top_k": 3}
        response = await client.post(f"/v1/{spec.task_name}", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        if stage_times is not None:
            done = time.perf_counter()
            stage_times.setdefault("_done", []).append(done)
            for stage, value in response.json().get("timings_ms", {}).items():
                stage_times.setdefault(stage, []).append(float(value))

    return send


# --- scenarios -------------------------------------------------------------------------------------


def window_means(stage_times: dict[str, list[float]], window: tuple[float, float]) -> dict[str, float]:
    """Mean of each facade timing over the answers that arrived inside the measured window."""
    done = stage_times.get("_done", [])
    inside = [i for i, t in enumerate(done) if window[0] < t <= window[1]]
    means: dict[str, float] = {}
    for stage, values in stage_times.items():
        if stage != "_done" and inside and len(values) == len(done):
            means[stage] = statistics.fmean(values[i] for i in inside)
    return means


async def measure_task_sweeps(
    config: BenchConfig,
    facade_url: str,
    triton: TritonServer,
    samples: dict[str, Samples],
    image_urls: list[str],
    results: BenchResults,
) -> None:
    limits = httpx.Limits(max_connections=max(config.concurrencies) * 2, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=facade_url, timeout=120, limits=limits) as client:
        for task in config.tasks:
            spec = get_task(task)
            levels: list[LoadResult] = []
            for concurrency in config.concurrencies:
                stage_times: dict[str, list[float]] = {}
                send = facade_sender(client, spec, samples[task], image_urls, stage_times)
                counters: dict[str, dict[str, float]] = {}

                def read_counters(
                    edge: str, task: str = task, counters: dict[str, dict[str, float]] = counters
                ) -> None:
                    counters[edge] = request_times(triton, task)

                result = await run_load(
                    send,
                    concurrency=concurrency,
                    duration_s=config.duration_s,
                    warmup_s=config.warmup_s,
                    label=task,
                    on_window=read_counters,
                )
                levels.append(result)
                split = triton_split_ms(counters["start"], counters["end"]) if len(counters) == 2 else None
                results.stages.setdefault(task, []).append(
                    StageBreakdown(
                        concurrency=concurrency,
                        client_mean_ms=result.mean_ms,
                        facade_ms=window_means(stage_times, result.window),
                        triton_ms=split or {},
                    )
                )
            results.sweeps[task] = levels


@asynccontextmanager
async def triton_client(triton: TritonServer) -> AsyncIterator[Any]:
    """An asyncio tritonclient for ``triton`` with room for the highest concurrency level, closed after use."""
    import tritonclient.http.aio as aio

    client = aio.InferenceServerClient(f"{triton.host}:{triton.http_port}", conn_limit=256)
    try:
        yield client
    finally:
        await client.close()


async def measure_batching(
    config: BenchConfig,
    triton: TritonServer,
    variants: VariantRepository,
    requests: dict[str, list[dict[str, np.ndarray]]],
    results: BenchResults,
) -> None:
    async with triton_client(triton) as client:
        for task in config.tasks:
            spec = get_task(task)
            points = []
            senders = {
                kind: triton_sender(client, variants.models[task][kind], spec, requests[task])
                for kind in ("published", "nobatch")
            }
            # Level by level, on and off back to back: load from other processes drifts over a run and
            # should hit both sides of a comparison alike.
            for concurrency in config.batching_concurrencies:
                for kind, send in senders.items():
                    model = variants.models[task][kind]
                    before = executed_batches(triton, model)
                    result = await run_load(
                        send,
                        concurrency=concurrency,
                        duration_s=config.duration_s,
                        warmup_s=config.warmup_s,
                        label=f"{task} batching {'on' if kind == 'published' else 'off'}",
                    )
                    after = executed_batches(triton, model)
                    label = "dynamic batching on" if kind == "published" else "dynamic batching off"
                    points.append(BatchingPoint(label, result, batches_between(before, after)))
            points.sort(key=lambda p: (p.variant != "dynamic batching on", p.result.concurrency))
            results.batching[task] = points


def int8_agreement(fp32: Path, int8: Path, requests: Sequence[dict[str, np.ndarray]]) -> tuple[float, float]:
    """Share of inputs whose top class is the same, and the largest probability difference."""
    import onnxruntime as ort

    def probabilities(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if path not in sessions:  # one session per model, not one per input
            sessions[path] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session = sessions[path]
        (logits,) = session.run(None, feeds)
        return softmax(logits)

    sessions: dict[Path, Any] = {}
    same, worst = 0, 0.0
    for feeds in requests:
        a, b = probabilities(fp32, feeds), probabilities(int8, feeds)
        same += int(a.argmax() == b.argmax())
        worst = max(worst, float(np.abs(a - b).max()))
    return same / len(requests), worst


async def measure_int8(
    config: BenchConfig,
    triton: TritonServer,
    variants: VariantRepository,
    requests: dict[str, list[dict[str, np.ndarray]]],
    results: BenchResults,
) -> None:
    async with triton_client(triton) as client:
        for task in config.tasks:
            if "int8" not in variants.models.get(task, {}):
                continue
            spec = get_task(task)
            version = str(variants.versions[task])
            fp32_file = variants.root / variants.models[task]["published"] / version / MODEL_FILE
            int8_file = variants.root / variants.models[task]["int8"] / version / MODEL_FILE
            agreement, worst = int8_agreement(fp32_file, int8_file, requests[task])
            comparison = Int8Comparison(
                task=task,
                agreement=agreement,
                max_prob_diff=worst,
                samples=len(requests[task]),
                fp32_bytes=fp32_file.stat().st_size,
                int8_bytes=int8_file.stat().st_size,
            )
            senders = {
                label: triton_sender(client, variants.models[task][kind], spec, requests[task])
                for kind, label in (("published", "fp32"), ("int8", "int8"))
            }
            for concurrency in config.int8_concurrencies:  # alternating, as for batching
                for label, send in senders.items():
                    result = await run_load(
                        send,
                        concurrency=concurrency,
                        duration_s=config.duration_s,
                        warmup_s=config.warmup_s,
                        label=f"{task} {label}",
                    )
                    comparison.points.append((label, result))
            comparison.points.sort(key=lambda p: (p[0] != "fp32", p[1].concurrency))
            results.int8[task] = comparison


def run_facade_comparisons(
    triton: TritonServer, repository: Path, log_dir: Path, config: BenchConfig, results: BenchResults
) -> None:
    """Facade vs direct Triton, bucketed vs fixed padding, the transformers baseline (:mod:`bench.facade`)."""
    from bench.facade import run_comparisons

    try:
        results.facade = run_comparisons(
            triton=triton,
            repository=repository,
            tasks=config.tasks,
            log_dir=log_dir,
            duration_s=config.duration_s,
            warmup_s=config.warmup_s,
        )
    except Exception as exc:  # one failing section must not lose the rest of the report
        results.notes.append(f"facade comparisons failed: {type(exc).__name__}: {exc}")


# --- the run -----------------------------------------------------------------------------------------


def run(config: BenchConfig) -> BenchResults:
    """Run every scenario and write the report; returns the results."""
    started = time.time()
    results = BenchResults(config=config, machine=describe_machine())
    results.started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    config.out.mkdir(parents=True, exist_ok=True)
    log_dir = config.out / "logs"
    with tempfile.TemporaryDirectory(prefix="mtc-bench-") as tmp:
        scratch = Path(tmp)
        progress(started, "preparing models")
        variants = prepare_repository(config, scratch, results)
        results.notes.extend(variants.notes)
        config.tasks = tuple(t for t in config.tasks if t in variants.models)

        samples = {task: load_samples(get_task(task)) for task in config.tasks}
        results.input_sources = {task: s.source for task, s in samples.items()}
        requests = {
            task: triton_requests(get_task(task), variants.root / task / str(variants.versions[task]), samples[task])
            for task in config.tasks
        }
        photos = scratch / "photos"
        photos.mkdir()
        for index, data in enumerate(samples.get("pose", Samples()).images):
            (photos / f"photo{index:03d}.jpg").write_bytes(data)
        if not any(photos.iterdir()):
            (photos / "empty.txt").write_text("no photos\n")

        progress(started, f"starting Triton with {len(variants.model_names())} models")
        with triton_server(variants.root, log_dir) as triton, image_host(photos, log_dir) as host:
            results.machine.triton = server_version(triton)
            image_urls = [f"http://{host}/{p.name}" for p in sorted(photos.glob("*.jpg"))]
            extra = {"MTC_API_ALLOWED_IMAGE_HOSTS": f'["{host}"]', "MTC_API_TASKS": _json_list(config.tasks)}
            with facade_server(
                triton, variants.root, log_dir, allowed_http_hosts=[host], extra_env=extra
            ) as facade_url:
                progress(started, "per-task latency/throughput through the facade")
                asyncio.run(measure_task_sweeps(config, facade_url, triton, samples, image_urls, results))
                progress(started, "dynamic batching on/off")
                asyncio.run(measure_batching(config, triton, variants, requests, results))
                progress(started, "int8 vs fp32")
                asyncio.run(measure_int8(config, triton, variants, requests, results))
                if config.run_facade_comparisons:
                    progress(started, "facade comparisons (bench/facade.py)")
                    run_facade_comparisons(triton, variants.root, log_dir, config, results)
    results.wall_s = time.time() - started
    write_report(results, config.out)
    return results


def progress(started: float, message: str) -> None:
    """A progress line with the seconds since the run started."""
    print(f"==> [{time.time() - started:4.0f} s] {message}", flush=True)


def server_version(triton: TritonServer) -> str:
    """Triton's version from its server metadata (``GET /v2``)."""
    with urllib.request.urlopen(f"{triton.url}/v2", timeout=10) as response:
        return str(json.load(response).get("version", "?"))


def _json_list(values: Sequence[str]) -> str:
    return json.dumps(list(values))
