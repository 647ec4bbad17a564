"""The three facade comparisons, each measured in one run on one machine, same model and same inputs:

1. **Overhead** (:func:`compare_overhead`): p50 latency of one ~60-token text at concurrency 1,
   ``POST /v1/sentiment`` on the facade vs a direct ``tritonclient`` (asyncio HTTP) call that sends
   already-tokenized input, and as a reference the minimal ASGI proxy of :mod:`bench.baselines` forwarding
   the same token ids: the cost of the extra HTTP hop alone. They alternate request by request, so
   background load hits all alike.
2. **Throughput vs the original design** (:func:`compare_throughput`): requests/s at concurrency 32 with
   mixed-length movie reviews, the facade (tokenize + Triton with dynamic batching) vs FastAPI calling a
   ``transformers`` pipeline in-process with the same weights, in alternating rounds.
3. **Padding** (:func:`compare_padding`): disaster tweets through two facades on the same Triton, one padding
   to length buckets (the default) and one to the model's maximum length.

The servers are started by the caller (:mod:`bench.facade`); these functions only send and measure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp

from bench.inputs import load_samples
from bench.loadgen import LoadResult, Send, run_load, triton_sender
from bench.measurements import (
    LatencyStats,
    OverheadResult,
    PaddingPoint,
    PaddingResult,
    PaddingStatistics,
    ThroughputResult,
)
from preprocess.text import TextEncoder
from serving.triton import TritonServer
from taskspec import SENTIMENT, TaskSpec

TARGET_TOKENS = 60
THROUGHPUT_CONCURRENCY = 32

# --- inputs ------------------------------------------------------------------------------------------------


def load_texts(spec: TaskSpec, limit: int = 64) -> tuple[list[str], str]:
    """Validation texts of the task from the shared datasets, or bench.inputs' built-in ones."""
    samples = load_samples(spec, limit)
    return list(samples.texts), samples.source


def pick_text(texts: Sequence[str], encoder: TextEncoder, target: int = TARGET_TOKENS) -> tuple[str, int]:
    """The text whose token count is closest to ``target`` (a sentence is cut from a longer one if needed)."""
    candidates = list(texts)
    for text in texts:  # prefixes of long texts widen the choice
        words = text.split()
        candidates += [" ".join(words[:n]) for n in range(20, min(len(words), 80), 3)]
    best = min(candidates, key=lambda t: abs(encoder.n_tokens(t) - target))
    return best, encoder.n_tokens(best)


def padding_statistics(texts: Sequence[str], encoder: TextEncoder) -> PaddingStatistics:
    """Mean real tokens per text and the share of padding under each strategy (one text per request)."""
    lengths = [encoder.n_tokens(t) for t in texts]
    bucketed = [encoder.padded_length(n) for n in lengths]
    fixed = encoder.preprocessing.max_length
    return PaddingStatistics(
        texts=len(texts),
        mean_tokens=round(statistics.fmean(lengths), 1),
        mean_padded_buckets=round(statistics.fmean(bucketed), 1),
        mean_padded_fixed=float(fixed),
        padding_share_buckets=round(1 - sum(lengths) / sum(bucketed), 3),
        padding_share_fixed=round(1 - sum(lengths) / (fixed * len(lengths)), 3),
    )


# --- senders -----------------------------------------------------------------------------------------------


def http_sender(session: aiohttp.ClientSession, url: str, bodies: Sequence[dict[str, Any]]) -> Send:
    """POST ``bodies[n % len]`` to ``url``; a non-200 answer raises (and counts as an error)."""

    async def send(n: int) -> None:
        async with session.post(url, json=bodies[n % len(bodies)]) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")

    return send


async def alternating_latency(senders: dict[str, Send], requests: int, warmup: int = 20) -> dict[str, list[float]]:
    """Concurrency 1: one request of each sender in turn, ``requests`` times; latencies in ms."""
    for n in range(warmup):
        for send in senders.values():
            await send(n)
    latencies: dict[str, list[float]] = {name: [] for name in senders}
    for n in range(requests):
        for name, send in senders.items():
            start = time.perf_counter()
            await send(n)
            latencies[name].append((time.perf_counter() - start) * 1000)
    return latencies


async def closed_loop(
    url: str, bodies: Sequence[dict[str, Any]], concurrency: int, duration_s: float, warmup_s: float, label: str
) -> LoadResult:
    """:func:`bench.loadgen.run_load` of ``bodies`` POSTed to ``url`` by ``concurrency`` clients."""
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        send = http_sender(session, url, bodies)
        return await run_load(send, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s, label=label)


# --- the three comparisons ---------------------------------------------------------------------------------


async def compare_overhead(
    facade_url: str,
    triton: TritonServer,
    version_dir: Path,
    texts: Sequence[str],
    *,
    proxy_url: str | None = None,
    requests: int = 300,
) -> OverheadResult:
    """Facade vs direct tritonclient, p50 at concurrency 1 for one ~60-token text (alternating).

    ``proxy_url``: also the minimal proxy (:func:`bench.baselines.proxy_app`) with the same token ids, in the
    same rotation.
    """
    import tritonclient.http.aio as aio

    encoder = TextEncoder.from_version_dir(version_dir)
    text, n_tokens = pick_text(texts, encoder)
    feeds = encoder.batch([text]).inputs(SENTIMENT.input_names)
    client = aio.InferenceServerClient(f"{triton.host}:{triton.http_port}")
    try:
        async with aiohttp.ClientSession() as session:
            senders = {
                "facade": http_sender(session, f"{facade_url}/v1/sentiment", [{"texts": [text]}]),
                "direct": triton_sender(client, "sentiment", SENTIMENT, [feeds]),
            }
            if proxy_url is not None:
                inputs = {name: array.tolist() for name, array in feeds.items()}
                body = {"model": "sentiment", "inputs": inputs, "output": SENTIMENT.output.name}
                senders["proxy"] = http_sender(session, f"{proxy_url}/infer", [body])
            latencies = await alternating_latency(senders, requests)
    finally:
        await client.close()
    return OverheadResult(
        text_tokens=n_tokens,
        padded_to=encoder.padded_length(n_tokens),
        facade=LatencyStats.of(latencies["facade"]),
        direct=LatencyStats.of(latencies["direct"]),
        proxy=LatencyStats.of(latencies["proxy"]) if "proxy" in latencies else None,
    )


async def compare_throughput(
    facade_url: str,
    baseline_url: str,
    reviews: Sequence[str],
    *,
    duration_s: float,
    warmup_s: float,
    concurrency: int = THROUGHPUT_CONCURRENCY,
    rounds: int = 3,
    triton: TritonServer | None = None,
    version_dir: Path | None = None,
    references: Mapping[str, str] | None = None,
) -> ThroughputResult:
    """Requests/s at ``concurrency`` with one mixed-length review per request: facade vs the original design
    (and, given ``triton`` and ``version_dir``, direct tritonclient calls with pre-tokenized input, which
    shows whether the facade or the server limits throughput). ``references`` adds servers measured the
    same way (run name -> endpoint URL taking ``{"texts": [...]}``). They alternate ``rounds`` times so that
    background load drifts affect all alike."""
    import tritonclient.http.aio as aio

    bodies = [{"texts": [r]} for r in reviews]
    runs: dict[str, list[LoadResult]] = {"facade": [], "transformers": [], **{name: [] for name in references or {}}}
    review_padding = None
    async with AsyncExitStack() as stack:
        direct: Send | None = None
        if triton is not None and version_dir is not None:
            encoder = TextEncoder.from_version_dir(version_dir)
            review_padding = padding_statistics(reviews, encoder)
            client = aio.InferenceServerClient(f"{triton.host}:{triton.http_port}", conn_limit=concurrency * 2)
            stack.push_async_callback(client.close)
            direct = triton_sender(
                client, "sentiment", SENTIMENT, [encoder.batch([r]).inputs(SENTIMENT.input_names) for r in reviews]
            )
            runs["direct"] = []
        for _ in range(rounds):
            runs["facade"].append(
                await closed_loop(f"{facade_url}/v1/sentiment", bodies, concurrency, duration_s, warmup_s, "facade")
            )
            runs["transformers"].append(
                await closed_loop(f"{baseline_url}/predict", bodies, concurrency, duration_s, warmup_s, "transformers")
            )
            for name, url in (references or {}).items():
                runs[name].append(await closed_loop(url, bodies, concurrency, duration_s, warmup_s, name))
            if direct is not None:
                runs["direct"].append(
                    await run_load(direct, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s)
                )
    return ThroughputResult(concurrency=concurrency, reviews=len(reviews), runs=runs, review_padding=review_padding)


async def compare_padding(
    bucket_url: str,
    fixed_url: str,
    tweets: Sequence[str],
    encoder: TextEncoder,
    *,
    duration_s: float,
    warmup_s: float,
    concurrencies: Sequence[int] = (1, THROUGHPUT_CONCURRENCY),
    rounds: int = 3,
) -> PaddingResult:
    """Disaster tweets through the bucketed and the fixed-length facade (same Triton), alternating
    ``rounds`` times per concurrency level."""
    bodies = [{"texts": [t]} for t in tweets]
    points = []
    for concurrency in concurrencies:
        for round_number in range(1, rounds + 1):
            for name, url in (("buckets", bucket_url), ("max_length", fixed_url)):
                result = await closed_loop(f"{url}/v1/disaster", bodies, concurrency, duration_s, warmup_s, name)
                points.append(PaddingPoint(name, concurrency, round_number, result))
    return PaddingResult(statistics=padding_statistics(tweets, encoder), points=points)
