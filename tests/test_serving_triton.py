"""The real Triton server (pip wheel binary) with the local Python-based onnxruntime backend."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient

from serving.triton import MALLOC_ARENA_MAX, SHM_DIR, TritonInstall, TritonServer, TritonStartError
from tests.conftest import TINY, tiny_weights, write_tiny_onnx

pytestmark = pytest.mark.integration


def stats(server: TritonServer, model: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{server.url}/v2/models/{model}/stats") as response:
        model_stats: dict[str, object] = json.load(response)["model_stats"][0]
        return model_stats


def executed_batch_sizes(server: TritonServer, model: str) -> dict[int, int]:
    batch_stats = stats(server, model).get("batch_stats", [])
    assert isinstance(batch_stats, list)
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in batch_stats}


def infer(url: str, features: np.ndarray, model: str = "tiny") -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("features", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features)
    result = client.infer(model, [tensor]).as_numpy("logits")
    client.close()
    assert result is not None
    return result


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_cleaned_up(server: TritonServer, pid: int | None) -> None:
    assert pid is not None
    assert not process_alive(pid), "tritonserver survived stop()"
    assert not list(SHM_DIR.glob(f"{server._shm_prefix}*")), "shared-memory regions left behind"


def test_dynamic_batching_executes_batches_larger_than_one(tiny_repository: Path) -> None:
    weight, bias = tiny_weights()
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(32, 1, 4)).astype(np.float32)

    async def send_all(url: str) -> list[np.ndarray]:
        client = aiohttpclient.InferenceServerClient(url)
        try:

            async def one(row: np.ndarray) -> np.ndarray:
                tensor = aiohttpclient.InferInput("features", [1, 4], "FP32")
                tensor.set_data_from_numpy(row)
                result = (await client.infer("tiny", [tensor])).as_numpy("logits")
                assert result is not None
                return result

            return list(await asyncio.gather(*(one(r) for r in rows)))
        finally:
            await client.close()

    with TritonServer.on_free_ports(tiny_repository) as server:
        outputs = asyncio.run(send_all(f"{server.host}:{server.http_port}"))
        for row, out in zip(rows, outputs, strict=True):
            np.testing.assert_allclose(out, row @ weight + bias, rtol=1e-5, atol=1e-5)
        sizes = executed_batch_sizes(server, "tiny")
        assert sum(size * count for size, count in sizes.items()) == 32
        assert max(sizes) > 1, f"Triton executed only single-request batches: {sizes}"


def test_labels_ship_with_the_model(tiny_repository: Path) -> None:
    with TritonServer.on_free_ports(tiny_repository) as server:
        client = httpclient.InferenceServerClient(f"{server.host}:{server.http_port}")
        tensor = httpclient.InferInput("features", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array([[1, 0, 0, 0]], np.float32))
        top = client.infer("tiny", [tensor], outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
        ranked = [entry.decode().split(":") for entry in top.as_numpy("logits")[0]]
        assert {label for _, _, label in ranked} == set(TINY.labels)
        assert [float(score) for score, _, _ in ranked] == sorted((float(s) for s, _, _ in ranked), reverse=True)
        config = client.get_model_config("tiny")
        client.close()  # an open keep-alive connection holds up Triton's shutdown
        assert config["instance_group"][0]["kind"] == "KIND_CPU"  # KIND_AUTO resolved on a CPU-only host


def test_explicit_mode_unload_and_load_new_version(tiny_repository: Path) -> None:
    features = np.ones((2, 4), np.float32)
    weight, bias = tiny_weights()
    with TritonServer.on_free_ports(tiny_repository, model_control_mode="explicit", load_models=["tiny"]) as server:
        url = f"{server.host}:{server.http_port}"
        client = httpclient.InferenceServerClient(url)
        np.testing.assert_allclose(infer(url, features), features @ weight + bias, 1e-5)

        client.unload_model("tiny")
        deadline = time.monotonic() + 20
        while client.is_model_ready("tiny") and time.monotonic() < deadline:
            time.sleep(0.1)  # unload is asynchronous
        assert not client.is_model_ready("tiny")

        w2, b2 = write_tiny_onnx(tiny_repository / "tiny" / "2" / "model.onnx", scale=2.0)
        client.load_model("tiny")
        assert client.is_model_ready("tiny", "2")
        index = {m["name"] + ":" + m.get("version", ""): m.get("state") for m in client.get_model_repository_index()}
        assert index.get("tiny:2") == "READY"
        client.close()
        np.testing.assert_allclose(infer(url, features), features @ w2 + b2, 1e-5)


def test_port_in_use_is_reported_without_starting(tiny_repository: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = TritonServer.on_free_ports(tiny_repository, http_port=port)
        started = time.monotonic()
        with pytest.raises(TritonStartError, match=f"HTTP port 127.0.0.1:{port} is already in use"):
            server.start()
        assert time.monotonic() - started < 5
        assert server.pid is None


def test_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TritonStartError, match="does not exist"):
        TritonServer.on_free_ports(tmp_path / "nope").start()


def test_broken_model_fails_fast_with_the_server_log(tiny_repository: Path) -> None:
    (tiny_repository / "tiny" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    server = TritonServer.on_free_ports(tiny_repository, startup_timeout=60)
    started = time.monotonic()
    with pytest.raises(TritonStartError) as error:
        server.start()
    assert time.monotonic() - started < 60
    message = str(error.value)
    assert "exited with code" in message
    assert "tiny" in message and "last" in message  # the log tail names the failing model
    assert server.pid is None
    assert not list(SHM_DIR.glob(f"{server._shm_prefix}*"))


def test_stop_leaves_no_process_or_shared_memory(tiny_repository: Path) -> None:
    server = TritonServer.on_free_ports(tiny_repository).start()
    pid = server.pid
    assert list(SHM_DIR.glob(f"{server._shm_prefix}*")), "expected the Python backend to use shared memory"
    infer(f"{server.host}:{server.http_port}", np.zeros((1, 4), np.float32))
    server.stop()
    assert_cleaned_up(server, pid)


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)


def test_the_server_and_its_stubs_run_with_few_malloc_arenas_unless_the_caller_says(tiny_repository: Path) -> None:
    install = TritonInstall.discover()
    assert install.environment({}, cpu_only=True)["MALLOC_ARENA_MAX"] == MALLOC_ARENA_MAX == "2"
    assert install.environment({"MALLOC_ARENA_MAX": "8"}, cpu_only=True)["MALLOC_ARENA_MAX"] == "8"
    with TritonServer.on_free_ports(tiny_repository) as server:
        infer(f"{server.host}:{server.http_port}", np.zeros((1, 4), np.float32))
        assert server.pid is not None
        stubs = [
            int(line.split()[0])
            for line in subprocess.run(
                ["ps", "-o", "pid=,args=", "--ppid", str(server.pid)], capture_output=True, text=True, check=True
            ).stdout.splitlines()
            if "triton_python_backend_stub" in line
        ]
        assert stubs, "expected a Python-backend stub below the server"
        for pid in [server.pid, *stubs]:
            assert _environ(pid).get("MALLOC_ARENA_MAX") == "2"
