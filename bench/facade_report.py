"""The facade comparisons (:mod:`bench.comparisons`) as a report section, headline bullets and JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench.measurements import FacadeResults, LatencyStats, ThroughputResult

THROUGHPUT_SERVERS = {
    "facade": "facade + Triton",
    "transformers": "FastAPI + transformers pipeline (original design)",
    "direct": "direct tritonclient, pre-tokenized, same Triton (reference)",
    "facade_fp32": "reference: facade + Triton serving config.pbtxt (fp32, one instance)",
    "transformers_int8": "reference: FastAPI + transformers pipeline with torch dynamic int8",
}
"""Run names of the throughput comparison and their labels in the report."""


def _x(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _latency_row(label: str, stats: LatencyStats) -> str:
    return f"| {label} | {stats.requests} | {stats.p50_ms:.2f} | {stats.p95_ms:.2f} | {stats.p99_ms:.2f} |"


def _throughput_lines(throughput: ThroughputResult) -> list[str]:
    lines = [
        "",
        f"### Throughput vs the original design: concurrency {throughput.concurrency}, one mixed-length "
        f"review per request ({throughput.reviews} reviews)",
        "",
        "| server | run | requests | errors | req/s | p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in throughput.runs.items():
        for i, run in enumerate(runs, 1):
            lines.append(
                f"| {THROUGHPUT_SERVERS.get(name, name)} | {i} | {run.requests} | {run.errors} | "
                f"{run.throughput_rps:.2f} | {run.p(50):.1f} | {run.p(95):.1f} |"
            )
    lines += [
        "",
        f"Throughput ratio facade / original: **{_x(throughput.throughput_ratio)}x** "
        f"(target >= {throughput.target_ratio:g}x).",
    ]
    padding = throughput.review_padding
    if padding:
        lines.append(
            f"Reviews average {padding.mean_tokens} tokens after truncation; the facade pads them to "
            f"{padding.mean_padded_buckets} on average (buckets), the pipeline computes each at its own length."
        )
    original = throughput.rps("transformers")
    for name in throughput.references:
        rps = throughput.rps(name)
        against = rps / original if rps is not None and original else None
        lines.append(f"{THROUGHPUT_SERVERS.get(name, name)}: {_x(rps)} req/s, {_x(against)}x the original.")
    facade, direct = throughput.rps("facade"), throughput.rps("direct")
    if facade is not None and direct:
        lines.append(
            f"Direct tritonclient with pre-tokenized input reached {direct:.2f} req/s on the same Triton: the "
            f"facade reached {facade / direct:.0%} of it."
        )
    return lines


def markdown(results: FacadeResults) -> str:
    """The section of the benchmark report for these comparisons."""
    lines = ["## Facade comparisons (bench/facade.py)", ""]
    lines += [f"- {note}" for note in results.notes]
    overhead = results.overhead
    if overhead:
        f, d, proxy = overhead.facade, overhead.direct, overhead.proxy
        lines += [
            "",
            f"### Facade overhead: one {overhead.text_tokens}-token text (padded to {overhead.padded_to}), "
            "concurrency 1, alternating requests",
            "",
            "| client | requests | p50 ms | p95 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
            _latency_row("facade `POST /v1/sentiment`", f),
            _latency_row("direct tritonclient (pre-tokenized)", d),
        ]
        if proxy:
            lines.append(_latency_row("reference: minimal ASGI proxy (pre-tokenized)", proxy))
        lines += [
            "",
            f"p50 ratio facade / direct: **{overhead.p50_ratio:.3f}** (target <= {overhead.target_ratio}).",
        ]
        if proxy:
            total, hop = f.p50_ms - d.p50_ms, proxy.p50_ms - d.p50_ms
            lines.append(
                "The minimal proxy (plain ASGI on uvicorn, JSON token ids in, the same tritonclient call; no "
                f"framework, validation, tokenization or metrics) is at **{_x(overhead.proxy_p50_ratio, 3)}**: of "
                f"the facade's {total:.2f} ms over the direct call, {hop:.2f} ms is the extra Python HTTP hop itself "
                f"and {total - hop:.2f} ms the facade's own work (validation, tokenization, FastAPI, metrics)."
            )
    if results.throughput:
        lines += _throughput_lines(results.throughput)
    padding = results.padding
    if padding:
        s = padding.statistics
        lines += [
            "",
            f"### Bucketed vs fixed max-length padding: disaster tweets ({s.texts} texts, "
            f"{s.mean_tokens} tokens on average)",
            "",
            f"Mean padded length: buckets {s.mean_padded_buckets} vs fixed {s.mean_padded_fixed:.0f}; "
            f"padding share {s.padding_share_buckets:.0%} vs {s.padding_share_fixed:.0%}.",
            "",
            "| padding | concurrency | round | requests | errors | req/s | p50 ms | p95 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in sorted(padding.points, key=lambda p: (p.concurrency, p.padding, p.round)):
            r = p.result
            lines.append(
                f"| {p.padding} | {p.concurrency} | {p.round} | {r.requests} | {r.errors} | "
                f"{r.throughput_rps:.2f} | {r.p(50):.2f} | {r.p(95):.2f} |"
            )
        for concurrency, ratio in padding.ratios.items():
            lines.append(f"\nConcurrency {concurrency}: buckets / fixed mean req/s = **{_x(ratio)}x**.")
    return "\n".join(lines) + "\n"


def headlines(results: FacadeResults) -> list[str]:
    """One sentence per comparison, for the top of a report."""
    out = []
    if results.overhead:
        o = results.overhead
        out.append(
            f"Facade p50 {o.facade.p50_ms:.2f} ms vs direct tritonclient {o.direct.p50_ms:.2f} ms "
            f"(x{o.p50_ratio:.3f}, target <= {o.target_ratio}) for a {o.text_tokens}-token text"
        )
    if results.throughput:
        t = results.throughput
        out.append(
            f"Throughput at concurrency {t.concurrency}: facade {_x(t.rps('facade'))} req/s vs FastAPI + transformers "
            f"{_x(t.rps('transformers'))} req/s (x{_x(t.throughput_ratio)}, target >= {t.target_ratio:g})"
        )
    if results.padding:
        for concurrency, ratio in results.padding.ratios.items():
            out.append(
                f"Disaster tweets at concurrency {concurrency}: bucketed padding gives x{_x(ratio)} the throughput "
                "of fixed max-length padding"
            )
    return out


def to_json(results: FacadeResults) -> dict[str, Any]:
    """The numbers (load levels as summaries, no raw latencies) and the ratios derived from them."""
    data: dict[str, Any] = {"notes": results.notes, "headlines": headlines(results)}
    if results.overhead:
        o = results.overhead
        data["overhead"] = {**asdict(o), "p50_ratio": o.p50_ratio, "proxy_p50_ratio": o.proxy_p50_ratio}
    if results.throughput:
        t = results.throughput
        data["throughput"] = {
            "concurrency": t.concurrency,
            "reviews": t.reviews,
            "runs": {name: [r.summary() for r in runs] for name, runs in t.runs.items()},
            "rps": {name: t.rps(name) for name in t.runs},
            "throughput_ratio": t.throughput_ratio,
            "target_ratio": t.target_ratio,
            "review_padding": asdict(t.review_padding) if t.review_padding else None,
        }
    if results.padding:
        p = results.padding
        data["padding"] = {
            "statistics": asdict(p.statistics),
            "points": [
                {"padding": x.padding, "concurrency": x.concurrency, "round": x.round, **x.result.summary()}
                for x in p.points
            ],
            "ratios": {str(c): r for c, r in p.ratios.items()},
        }
    return data
