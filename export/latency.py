"""How long one request takes on each served file: the latency figure of the model card.

Each model file of a new version runs single-row requests (the first :data:`LATENCY_ROWS` rows of the
held-out split, preprocessed as served: text padded to its length bucket) through ONNX Runtime with
one intra-op thread, as a CPU host's Triton instance runs it (``configs/cpu.pbtxt``:
``intra_op_thread_count: 1``). The p50 and p90 of those calls, after a warm-up, go into
``metrics.json`` (``latency``) with the machine's load average when they were taken: a figure from a
busy build machine says so. It is the model's compute time only (no HTTP, no queue, no tokenizing);
end-to-end figures come from the benchmarks (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export.acceptance import held_out_batches
from export.data import Split
from taskspec import TaskSpec

LATENCY_ROWS = 32
"""Single-row calls timed per file (after :data:`WARMUP_CALLS`)."""
WARMUP_CALLS = 3
LATENCY_THREADS = 1


def single_row_latency(
    spec: TaskSpec, path: Path, held_out: Split, *, tokenizer_file: Path | None, rows: int = LATENCY_ROWS
) -> dict[str, Any]:
    """p50 / p90 milliseconds of one-row calls of ``path`` on the first ``rows`` held-out rows."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = LATENCY_THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    sample = held_out.take(np.arange(min(rows, len(held_out))))
    feeds = [inputs for _, inputs in held_out_batches(spec, sample, tokenizer_file=tokenizer_file, batch_size=1)]
    for inputs in feeds[:WARMUP_CALLS]:
        session.run([spec.output.name], inputs)
    timings = []
    for inputs in feeds:
        started = time.perf_counter()
        session.run([spec.output.name], inputs)
        timings.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(float(np.percentile(timings, 50)), 2) if timings else None,
        "p90_ms": round(float(np.percentile(timings, 90)), 2) if timings else None,
        "calls": len(timings),
    }


def latency_document(
    spec: TaskSpec, files: Sequence[tuple[str, Path]], held_out: Split, *, tokenizer_file: Path | None
) -> dict[str, Any]:
    """The ``latency`` entry of ``metrics.json``: per model file (name -> its path) one-row p50 / p90 ms."""
    load_before = os.getloadavg()[0]
    figures = {name: single_row_latency(spec, path, held_out, tokenizer_file=tokenizer_file) for name, path in files}
    return {
        "files": figures,
        "rows_per_call": 1,
        "intra_op_threads": LATENCY_THREADS,
        "runtime": f"onnxruntime {ort.__version__} (CPU)",
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(max(load_before, os.getloadavg()[0]), 2),
    }
