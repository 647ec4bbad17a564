"""The local onnxruntime backend's own memory parameters, without Triton: the heap trimmer
(``memory.malloc_trim_interval_s``) and runs of at most N rows on a CPU instance (``memory.max_rows_per_cpu_run``).

``serving/backends/onnxruntime/model.py`` runs inside Triton's Python stub; here it is imported with a stand-in for
the stub's ``triton_python_backend_utils``, the trimmer's glibc call is replaced by a recorder and ONNX Runtime's
session by one that records the rows of each call. That a real Triton loads a model with the parameters and answers
the same is in ``tests/test_bench_null_memory.py``.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from serving.triton import PROJECT_ROOT

BACKEND = PROJECT_ROOT / "serving" / "backends" / "onnxruntime" / "model.py"


class StubError(Exception):
    pass


@pytest.fixture(scope="module")
def backend() -> Iterator[types.ModuleType]:
    utils = types.ModuleType("triton_python_backend_utils")
    utils.TritonModelException = StubError  # type: ignore[attr-defined]
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = utils
    try:
        spec = importlib.util.spec_from_file_location("ort_backend_model", BACKEND)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        if saved is None:
            sys.modules.pop("triton_python_backend_utils", None)
        else:
            sys.modules["triton_python_backend_utils"] = saved


def recording_trimmer(backend: types.ModuleType, interval_s: float) -> tuple[Any, list[float]]:
    trimmer = backend.HeapTrimmer(interval_s)
    calls: list[float] = []

    def record(pad: int) -> int:  # stands in for glibc's malloc_trim(pad)
        calls.append(time.monotonic())
        return 1

    trimmer._trim = record
    return trimmer, calls


def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_it_trims_once_after_an_execution_and_not_while_idle(backend: types.ModuleType) -> None:
    trimmer, calls = recording_trimmer(backend, 0.05)
    try:
        time.sleep(0.2)
        assert calls == []  # nothing ran: nothing to give back
        trimmer.begin()
        trimmer.end()
        assert wait_until(lambda: len(calls) == 1)
        time.sleep(0.2)
        assert len(calls) == 1  # once per execution burst, not every interval
    finally:
        trimmer.close()


def test_it_never_trims_while_an_execution_runs(backend: types.ModuleType) -> None:
    trimmer, calls = recording_trimmer(backend, 0.05)
    try:
        trimmer.begin()
        trimmer.end()
        trimmer.begin()  # the next execution started before the thread woke
        time.sleep(0.25)
        assert calls == []
        trimmer.end()
        assert wait_until(lambda: len(calls) == 1)
    finally:
        trimmer.close()


def test_a_busy_model_is_trimmed_at_most_once_per_interval(backend: types.ModuleType) -> None:
    trimmer, calls = recording_trimmer(backend, 0.1)
    try:
        stop = time.monotonic() + 0.55
        while time.monotonic() < stop:
            trimmer.begin()
            time.sleep(0.001)
            trimmer.end()
            time.sleep(0.001)
        assert 1 <= len(calls) <= 6
        assert all(later - earlier >= 0.09 for earlier, later in itertools.pairwise(calls))
    finally:
        trimmer.close()


@pytest.mark.parametrize("value", ["", "often", "0", "-1", "7200"])
def test_the_parameter_must_be_seconds(backend: types.ModuleType, value: str) -> None:
    config = {"parameters": {backend.MALLOC_TRIM_INTERVAL: {"string_value": value}}}
    if value == "":
        assert backend._trimmer(config) is None  # an empty value is unset, as for every parameter
        return
    with pytest.raises(StubError, match="malloc_trim_interval_s: expected seconds"):
        backend._trimmer(config)


def test_no_parameter_no_trimmer(backend: types.ModuleType) -> None:
    assert backend._trimmer({}) is None


# --- runs of at most N rows on a CPU instance ---


class RecordingSession:
    """Stands in for an ONNX Runtime session of ``logits = 2 * x``; records the rows of every call."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def run(self, names: list[str], feeds: dict[str, Any], options: Any) -> list[Any]:
        self.rows.append(len(feeds["x"]))
        return [feeds["x"] * 2.0]


def model_with_rows_per_run(backend: types.ModuleType, max_rows: int | None) -> tuple[Any, RecordingSession]:
    model = backend.TritonPythonModel()
    session = RecordingSession()
    model.session, model.run_options, model.max_rows_per_run = session, None, max_rows
    model.input_names, model.outputs = ["x"], [("logits", np.float32)]
    return model, session


@pytest.mark.parametrize(("max_rows", "calls"), [(3, [3, 3, 2]), (4, [4, 4]), (8, [8]), (16, [8]), (None, [8])])
def test_a_batch_runs_in_calls_of_at_most_the_rows_given_and_answers_the_same(
    backend: types.ModuleType, max_rows: int | None, calls: list[int]
) -> None:
    model, session = model_with_rows_per_run(backend, max_rows)
    x = np.arange(8 * 5, dtype=np.float32).reshape(8, 5)
    [logits] = model._run({"x": x})
    assert session.rows == calls
    np.testing.assert_array_equal(logits, x * 2.0)
    assert logits.dtype == np.float32 and logits.flags.c_contiguous


def test_rows_per_run_applies_to_cpu_instances_and_rejects_what_is_not_a_positive_count(
    backend: types.ModuleType,
) -> None:
    def config(value: str) -> dict[str, Any]:
        return {"parameters": {backend.MAX_ROWS_PER_CPU_RUN: {"string_value": value}}}

    assert backend._max_rows_per_run(config("4"), "CPU") == 4
    assert backend._max_rows_per_run(config("4"), "GPU") is None  # a GPU batches; its memory is not the arena's
    assert backend._max_rows_per_run({"parameters": {}}, "CPU") is None
    for bad in ("0", "-1", "four", "2.5"):
        with pytest.raises(StubError, match="max_rows_per_cpu_run: expected a positive integer"):
            backend._max_rows_per_run(config(bad), "CPU")
