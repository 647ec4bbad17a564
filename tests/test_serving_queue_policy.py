"""The generated queue policy makes the real Triton shed load: a full queue and an expired wait are
rejected (503), not run. The facade maps those rejections (frontend_api; its own tests)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from export.triton_config import write_model_config
from serving.triton import TritonServer
from tests.conftest import TINY, write_tiny_onnx

pytestmark = pytest.mark.integration

QUEUE_FULL = "Exceeds maximum queue size"
TIMED_OUT = "Request timeout expired"


def test_triton_rejects_past_the_queue_size_and_the_callers_deadline(tmp_path: Path) -> None:
    # A preferred batch nobody fills and a 1 s queue delay: requests wait in the queue for a second.
    batching = dataclasses.replace(
        TINY.batching, preferred_batch_sizes=(8,), max_queue_delay_us=1_000_000, max_queue_size=2
    )
    spec = dataclasses.replace(TINY, batching=batching)
    write_tiny_onnx(tmp_path / "repo" / "tiny" / "1" / "model.onnx")
    write_model_config(spec, tmp_path / "repo" / "tiny")

    def outcome(url: str, timeout_us: int | None) -> str:
        # One client per call: tritonclient.http's gevent pool cannot be shared between threads.
        client = httpclient.InferenceServerClient(url)
        tensor = httpclient.InferInput("features", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        try:
            client.infer("tiny", [tensor], timeout=timeout_us)
        except InferenceServerException as exc:
            return f"{exc.status()} {exc.message()}"
        finally:
            client.close()
        return "ok"

    def kind(result: str) -> str:
        for known in (QUEUE_FULL, TIMED_OUT):
            if known in result:
                assert result.startswith("503 "), result
                return known
        return result

    with TritonServer.on_free_ports(str(tmp_path / "repo")) as server:
        url = f"{server.host}:{server.http_port}"
        # The caller's own deadline (allow_timeout_override): 100 ms in a queue that holds it 1 s.
        assert kind(outcome(url, 100_000)) == TIMED_OUT
        # Twelve at once into a queue of two: most are refused at once, the queued ones run.
        with ThreadPoolExecutor(12) as pool:
            counts = Counter(kind(result) for result in pool.map(lambda _: outcome(url, None), range(12)))
        assert set(counts) == {"ok", QUEUE_FULL}, counts
        assert counts[QUEUE_FULL] >= 6, counts
