"""A Python-based Triton backend named ``onnxruntime``, for CPU hosts without the native one.

The NGC Triton container serves ``platform: "onnxruntime_onnx"`` / ``backend: "onnxruntime"``
models with its native ONNX Runtime backend. The ``tritonserver`` binary shipped in the
``nvidia-pytriton`` wheel has only the Python backend, so the local launcher puts this file at
``<backend-directory>/onnxruntime/model.py``; Triton then runs every model whose config names the
``onnxruntime`` backend through the Python backend with this code, and the same model repository
loads unchanged on both servers.

Supported from the native backend's config surface: ``default_model_filename``, the
``intra_op_thread_count`` / ``inter_op_thread_count`` parameters, the memory parameters
``enable_mem_arena`` and ``enable_mem_pattern`` (``"0"``/``"1"``) and
``memory.enable_memory_arena_shrinkage`` (e.g. ``"cpu:0"``: after every run the CPU arena hands back
what the run freed, instead of keeping the peak of the largest batch ever run), dynamic batching (the requests
Triton hands over in one call are concatenated per input shape and run as one ONNX Runtime call),
and declared inputs/outputs (required: this backend does not auto-complete them).
Two parameters of its own, which the native backend ignores: ``memory.malloc_trim_interval_s`` (e.g. ``"1"``): at
most that often, and only between executions, glibc's ``malloc_trim(0)`` hands the free memory of the C heap back
to the kernel; what a shrinking arena frees otherwise stays in the stub's resident memory. And
``memory.max_rows_per_cpu_run`` (e.g. ``"4"``): on a CPU instance, a batch of more rows runs as consecutive ONNX
Runtime calls of at most that many rows, so the arena's peak is that of the smaller run (GPU instances ignore it).
``optimization { execution_accelerators { ... } }`` is ignored here; on a GPU instance the CUDA
execution provider is used when the installed onnxruntime has it, else the CPU.

This file runs inside the Triton Python stub's interpreter: it may import only what the stub
environment has (numpy < 2, onnxruntime).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import threading
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"
"""The native backend's parameter (and ONNX Runtime's run option) naming the arenas to shrink after each run."""
MALLOC_TRIM_INTERVAL = "memory.malloc_trim_interval_s"
"""This backend's own parameter: the least seconds between two ``malloc_trim(0)`` calls (unset: never)."""
MAX_ROWS_PER_CPU_RUN = "memory.max_rows_per_cpu_run"
"""This backend's own parameter: most rows per ONNX Runtime call on a CPU instance (unset: the whole batch)."""


def _param(config: dict[str, Any], key: str) -> str | None:
    value = config.get("parameters", {}).get(key)
    if value is None:
        return None
    return str(value.get("string_value", "")) or None


def _flag(config: dict[str, Any], key: str) -> bool | None:
    """A boolean parameter as the native backend reads it (``0``/``1``, ``false``/``true``); None when unset."""
    value = _param(config, key)
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered not in ("0", "1", "false", "true"):
        raise pb_utils.TritonModelException(f"parameter {key}: expected 0, 1, false or true, got {value!r}")
    return lowered in ("1", "true")


class HeapTrimmer:
    """Calls glibc's ``malloc_trim(0)`` from a daemon thread: at most every ``interval_s``, only after an execution
    since the last call, and never while one runs (an execution that starts meanwhile waits for the call to end).

    Measured on the 2-core host (docs/benchmarks.md, "Heap trimming in the stubs"): after every execution it cost
    sentiment 0.91x throughput; at most once a second none measurable (0.98-1.03x), and the stubs of sentiment,
    disaster and sentiment_tiny held 1,147 -> 823 MiB after a load.
    """

    def __init__(self, interval_s: float) -> None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        if libc is None or not hasattr(libc, "malloc_trim"):
            raise pb_utils.TritonModelException(f"{MALLOC_TRIM_INTERVAL} needs glibc (malloc_trim), not found")
        self._trim = libc.malloc_trim
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._running = False
        self._ran = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="malloc-trim", daemon=True)
        self._thread.start()

    def begin(self) -> None:
        with self._lock:
            self._running = True

    def end(self) -> None:
        with self._lock:
            self._running, self._ran = False, True

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._lock:
                if self._ran and not self._running:
                    self._ran = False
                    self._trim(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _trimmer(config: dict[str, Any]) -> HeapTrimmer | None:
    value = _param(config, MALLOC_TRIM_INTERVAL)
    if value is None:
        return None
    problem = pb_utils.TritonModelException(
        f"parameter {MALLOC_TRIM_INTERVAL}: expected seconds in (0, 3600], got {value!r}"
    )
    try:
        interval_s = float(value)
    except ValueError:
        raise problem from None
    if not 0 < interval_s <= 3600:
        raise problem
    return HeapTrimmer(interval_s)


def _max_rows_per_run(config: dict[str, Any], instance_kind: str | None) -> int | None:
    value = _param(config, MAX_ROWS_PER_CPU_RUN)
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise pb_utils.TritonModelException(
            f"parameter {MAX_ROWS_PER_CPU_RUN}: expected a positive integer, got {value!r}"
        )
    return None if instance_kind == "GPU" else int(value)


class TritonPythonModel:
    """Runs ``<version>/<default_model_filename>`` with the onnxruntime pip package."""

    def initialize(self, args: dict[str, str]) -> None:
        self.config: dict[str, Any] = json.loads(args["model_config"])
        filename = self.config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"model file not found: {path}")

        options = ort.SessionOptions()
        intra = _param(self.config, "intra_op_thread_count")
        inter = _param(self.config, "inter_op_thread_count")
        if intra:
            options.intra_op_num_threads = int(intra)
        if inter:
            options.inter_op_num_threads = int(inter)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        arena = _flag(self.config, "enable_mem_arena")
        pattern = _flag(self.config, "enable_mem_pattern")
        if arena is not None:
            options.enable_cpu_mem_arena = arena
        if pattern is not None:
            options.enable_mem_pattern = pattern
        # ONNX Runtime keeps an arena's peak for the life of the session (420 MB per instance of the int8
        # sentiment model after 256-token batches); shrinkage gives back after each run what it freed.
        self.run_options = ort.RunOptions()
        shrinkage = _param(self.config, ARENA_SHRINKAGE)
        if shrinkage:
            if arena is False and "cpu" in shrinkage:
                raise pb_utils.TritonModelException(f"{ARENA_SHRINKAGE} {shrinkage!r} needs enable_mem_arena")
            self.run_options.add_run_config_entry(ARENA_SHRINKAGE, shrinkage)
        # KIND_AUTO resolves to a GPU instance on a GPU host: use CUDA there when this onnxruntime has it.
        providers: list[Any] = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args.get("model_instance_device_id", 0))}))
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)

        self.batching = int(self.config.get("max_batch_size", 0)) > 0
        max_rows = _max_rows_per_run(self.config, args.get("model_instance_kind"))  # a bad value fails any load
        self.max_rows_per_run = max_rows if self.batching else None
        self.input_names = [i["name"] for i in self.config.get("input", [])]
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in self.config.get("output", [])
        ]
        if not self.input_names or not self.outputs:
            raise pb_utils.TritonModelException(
                "config.pbtxt must declare every input and output for the local onnxruntime backend"
            )
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        missing = [n for n in self.input_names if n not in onnx_inputs]
        if missing:
            raise pb_utils.TritonModelException(f"inputs {missing} are not in {path} (it has {sorted(onnx_inputs)})")
        self.trimmer = _trimmer(self.config)  # last: a load that fails above starts no thread

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = [name for name, _ in self.outputs]
        rows = len(feeds[self.input_names[0]])
        step = self.max_rows_per_run
        if step is None or rows <= step:
            results = self.session.run(names, feeds, self.run_options)
        else:
            # A CPU convolution costs the same per row in a run of 4 as of 16, but the arena keeps the peak of the
            # largest run (pose: 332 MiB after runs of 16, 154 MiB after runs of 4).
            parts = [
                self.session.run(names, {n: f[start : start + step] for n, f in feeds.items()}, self.run_options)
                for start in range(0, rows, step)
            ]
            results = [np.concatenate([part[k] for part in parts]) for k in range(len(names))]
        return [np.ascontiguousarray(r, dtype=dtype) for r, (_, dtype) in zip(results, self.outputs, strict=True)]

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.trimmer is None:
            return self._execute(requests)
        self.trimmer.begin()
        try:
            return self._execute(requests)
        finally:
            self.trimmer.end()

    def _execute(self, requests: list[Any]) -> list[Any]:
        feeds_per_request: list[dict[str, np.ndarray] | None] = []
        responses: list[Any] = [None] * len(requests)
        for i, request in enumerate(requests):
            feeds: dict[str, np.ndarray] = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"missing input {name}"))
                    break
                feeds[name] = tensor.as_numpy()
            feeds_per_request.append(feeds if responses[i] is None else None)

        # Triton's dynamic batcher hands over several requests at once. Requests whose inputs
        # have the same non-batch shape are concatenated and run as one ONNX Runtime call.
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, feeds in enumerate(feeds_per_request):
            if feeds is None:
                continue
            key = (
                tuple((n, feeds[n].shape[1:], feeds[n].dtype.str) for n in self.input_names) if self.batching else (i,)
            )
            groups.setdefault(key, []).append(i)

        for indices in groups.values():
            try:
                group = [feeds_per_request[i] for i in indices]
                assert all(g is not None for g in group)
                merged = {n: np.concatenate([g[n] for g in group if g is not None]) for n in self.input_names}
                outputs = self._run(merged)
            except Exception as exc:  # one bad group must not fail the others
                for i in indices:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {exc}"))
                continue
            start = 0
            for i in indices:
                feeds = feeds_per_request[i]
                assert feeds is not None
                rows = feeds[self.input_names[0]].shape[0] if self.batching else None
                stop = start + rows if rows is not None else None
                tensors = [
                    pb_utils.Tensor(name, out[start:stop] if rows is not None else out)
                    for (name, _), out in zip(self.outputs, outputs, strict=True)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = stop or 0
        return responses

    def finalize(self) -> None:
        if self.trimmer is not None:
            self.trimmer.close()
        self.session = None
