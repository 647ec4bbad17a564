"""The other sides of the facade comparisons, as uvicorn apps and as processes.

- :func:`baseline_app`: the original system's design, FastAPI calling a ``transformers`` text-classification
  pipeline in-process (optionally with PyTorch's dynamic int8), for the throughput comparison;
- :func:`proxy_app`: the least a Python service in front of Triton does, forwarding token ids, as the floor
  of the overhead comparison.

:func:`transformers_baseline` and :func:`proxy_for` run them as processes on free ports (uvicorn factories
``bench.baselines:baseline_app`` and ``bench.baselines:proxy_app``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from bench.servers import factory_server
from serving.triton import TritonServer
from taskspec import SENTIMENT

BASELINE_CHECKPOINT_ENV = "MTC_BENCH_BASELINE_CHECKPOINT"
BASELINE_INT8_ENV = "MTC_BENCH_BASELINE_INT8"
PROXY_TRITON_ENV = "MTC_BENCH_PROXY_TRITON"


class BaselineRequest(BaseModel):
    """Body of the original design's ``POST /predict``."""

    texts: list[str]


def baseline_app() -> Any:
    """The original system's design (uvicorn factory): FastAPI calling a ``transformers`` pipeline in-process.

    The checkpoint folder comes from ``MTC_BENCH_BASELINE_CHECKPOINT``: a standard sequence-classification
    checkpoint, or one ``export build`` saved (:mod:`export.hf_checkpoint`, the mean-pooled model the
    platform trains and serves; :func:`trained_checkpoint` finds it). A plain ``def`` route, as such
    services are usually written: FastAPI runs it in its thread pool, one text-classification call per
    request, truncated at the same maximum length as the facade.
    """
    from fastapi import FastAPI
    from transformers import pipeline

    from export.hf_checkpoint import is_mean_pool_checkpoint, load_text_checkpoint

    checkpoint = os.environ[BASELINE_CHECKPOINT_ENV]
    model: Any = checkpoint
    if is_mean_pool_checkpoint(Path(checkpoint)):  # saved by `export build`: the served model's own weights
        from transformers.utils import logging as hf_logging

        model = load_text_checkpoint(Path(checkpoint))
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # "not supported for text-classification"
    classifier = pipeline("text-classification", model=model, tokenizer=checkpoint, device="cpu", top_k=None)
    title = "Original design: transformers pipeline in-process"
    if os.environ.get(BASELINE_INT8_ENV) == "1":
        # What quantization alone would give the original design: PyTorch's dynamic int8 Linear layers.
        import torch

        quantize = torch.ao.quantization.quantize_dynamic
        classifier.model = quantize(classifier.model, {torch.nn.Linear}, torch.qint8)  # type: ignore[no-untyped-call]
        title += " (torch dynamic int8)"
    max_length = SENTIMENT.text.max_length if SENTIMENT.text else 256
    app = FastAPI(title=title)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: BaselineRequest) -> dict[str, Any]:
        return {"predictions": classifier(body.texts, truncation=True, max_length=max_length)}

    return app


def proxy_app() -> Callable[[Any, Any, Any], Awaitable[None]]:
    """Reference for the overhead comparison (uvicorn factory): the least a Python service in front of Triton does.

    Plain ASGI, no framework: ``POST`` a JSON body ``{"model", "inputs": {name: token ids}, "output"}``, get
    ``{"probabilities": ...}`` back, the tensors forwarded with ``tritonclient`` (asyncio HTTP) as the facade
    does. No validation, tokenization, metrics, limits or error handling: what it costs over a direct call is
    the extra HTTP hop itself (uvicorn, the event loop, one more process to wake), which any facade written in
    Python pays on the same host. Triton's address (host:port) comes from ``MTC_BENCH_PROXY_TRITON``.
    """
    import tritonclient.http.aio as aio

    from frontend_api.triton_client import infer_inputs
    from preprocess.probabilities import softmax

    url = os.environ[PROXY_TRITON_ENV]
    clients: list[Any] = []

    async def reply(send: Any, document: object) -> None:
        body = json.dumps(document).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    clients.append(aio.InferenceServerClient(url))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    for client in clients:
                        await client.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["method"] != "POST":
            await reply(send, {"status": "ok"})  # the readiness probe
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        request = json.loads(b"".join(chunks))
        feeds = {name: np.asarray(ids, dtype=np.int64) for name, ids in request["inputs"].items()}
        output = aio.InferRequestedOutput(request["output"], binary_data=True)
        result = await clients[0].infer(request["model"], infer_inputs(feeds), outputs=[output])
        await reply(send, {"probabilities": softmax(result.as_numpy(request["output"])).tolist()})

    return app


def trained_checkpoint(repository: Path, task: str) -> Path | None:
    """The Hugging Face checkpoint ``export build`` saved for the highest version of ``task`` published in
    ``repository`` (``checkpoints/<task>/<version>/`` beside it); None when there is none."""
    from export.hf_checkpoint import checkpoint_dir, is_mean_pool_checkpoint
    from export.publish import latest_version_dir

    version_dir = latest_version_dir(repository, task)
    if version_dir is None:
        return None
    folder = checkpoint_dir(repository, task, version_dir.name)
    return folder if is_mean_pool_checkpoint(folder) else None


@contextmanager
def transformers_baseline(checkpoint: Path, log_dir: Path, *, int8: bool = False) -> Iterator[str]:
    """The original design as a process (:func:`baseline_app`, ``int8``: with torch dynamic int8); yields its URL."""
    env = {
        BASELINE_CHECKPOINT_ENV: str(checkpoint),
        BASELINE_INT8_ENV: "1" if int8 else "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    name = "transformers baseline" + (" int8" if int8 else "")
    with factory_server(name, "bench.baselines:baseline_app", log_dir, env) as url:
        yield url


@contextmanager
def proxy_for(triton: TritonServer, log_dir: Path) -> Iterator[str]:
    """The minimal proxy (:func:`proxy_app`) in front of ``triton`` as a process; yields its URL."""
    env = {PROXY_TRITON_ENV: f"{triton.host}:{triton.http_port}"}
    with factory_server("minimal proxy", "bench.baselines:proxy_app", log_dir, env) as url:
        yield url
