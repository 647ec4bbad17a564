"""The only module that talks to Triton: an asyncio HTTP client and the interface the facade needs.

:class:`TritonBackend` is what the service layer depends on; :class:`TritonHttpClient` implements
it with ``tritonclient.http.aio`` (one long-lived aiohttp connection pool, created in the app's
lifespan), and :class:`tests.fakes.frontend_api.FakeTriton` implements it for unit tests. Every failure
is translated here into the facade's error taxonomy: unreachable or shutting down ->
:class:`BackendUnavailable`, unknown or unloaded model -> :class:`ModelNotReady`, queue full or
queue timeout (the model's queue policy) -> :class:`BackendOverloaded`, past the deadline ->
:class:`BackendTimeout`, any other rejection -> :class:`InferenceFailed`.

Each inference request carries the facade's remaining deadline as Triton's per-request ``timeout``
(microseconds): with ``allow_timeout_override`` in the model's queue policy, Triton drops a request
still queued when the facade stops waiting for it, instead of computing an answer nobody reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
import numpy as np
import tritonclient.http.aio as triton_aio
from tritonclient.http import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from frontend_api.errors import (
    ApiError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    InferenceFailed,
    ModelNotReady,
)
from frontend_api.tracing import traceparent_headers

T = TypeVar("T")

# Phrases in Triton's error messages that mean "this model (version) cannot serve right now".
_NOT_READY_MARKERS = ("unknown model", "is not ready", "no available versions", "is not found", "unavailable")
# Triton 2.51 core, both UNAVAILABLE (HTTP 503): src/scheduler_utils.cc (PolicyQueue::Enqueue, max_queue_size)
# and src/dynamic_batch_scheduler.cc (requests past their queue timeout, timeout_action REJECT).
_SHED_MARKERS = ("exceeds maximum queue size", "request timeout expired")
# src/dynamic_batch_scheduler.cc while the server shuts down (a restart): retry elsewhere or later.
_STOPPING_MARKER = "server is stopping"
RETRY_AFTER = {"Retry-After": "1"}


def translate_error(exc: InferenceServerException, what: str, model: str = "") -> ApiError:
    """Triton's rejection of ``what`` as one of the facade's errors."""
    message = str(exc.message() or exc)
    lowered = message.lower()
    if any(marker in lowered for marker in _SHED_MARKERS):
        return BackendOverloaded(f"Triton shed {what}: {message}", headers=RETRY_AFTER)
    if _STOPPING_MARKER in lowered:
        return BackendUnavailable(f"Triton is shutting down: {message}", headers=RETRY_AFTER)
    if model and any(marker in lowered for marker in _NOT_READY_MARKERS):
        return ModelNotReady(f"model {model!r} is not ready in Triton: {message}")
    return InferenceFailed(f"Triton rejected {what}: {message}")


@dataclass(frozen=True)
class InferOutput:
    """Logits of one inference call and the model version that produced them."""

    logits: np.ndarray
    model_version: str


@dataclass(frozen=True)
class TritonModelStats:
    """Triton's statistics of one model version (``/v2/models/stats``), times in nanoseconds."""

    name: str
    version: str
    success_count: int
    failure_count: int
    inference_count: int
    execution_count: int
    queue_ns: int
    compute_ns: int
    batch_sizes: dict[int, int] = field(default_factory=dict)

    @property
    def avg_queue_ms(self) -> float:
        return self.queue_ns / self.success_count / 1e6 if self.success_count else 0.0

    @property
    def avg_compute_ms(self) -> float:
        return self.compute_ns / self.success_count / 1e6 if self.success_count else 0.0


class TritonBackend(Protocol):
    """What the facade needs from an inference server."""

    async def server_ready(self) -> bool:
        """Whether the server answers and reports ready (never raises)."""
        ...

    async def model_ready(self, model: str) -> bool:
        """Whether ``model`` has a ready version (never raises)."""
        ...

    async def model_versions(self, model: str) -> list[str]:
        """Ready versions of ``model``; raises :class:`ModelNotReady` / :class:`BackendUnavailable`."""
        ...

    async def infer(self, model: str, version: str, inputs: Mapping[str, np.ndarray], output: str) -> InferOutput:
        """Run one (batched) request; ``version`` may be "" for the server's choice."""
        ...

    async def statistics(self) -> list[TritonModelStats]:
        """Statistics of every loaded model version."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def parse_statistics(document: Mapping[str, Any]) -> list[TritonModelStats]:
    """Turn Triton's ``/v2/models/stats`` JSON into :class:`TritonModelStats` rows."""
    rows: list[TritonModelStats] = []
    for model in document.get("model_stats", []):
        stats = model.get("inference_stats", {})

        def ns(key: str, stats: Mapping[str, Any] = stats) -> int:
            return int(stats.get(key, {}).get("ns", 0))

        batch_sizes = {
            int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0)) for b in model.get("batch_stats", [])
        }
        rows.append(
            TritonModelStats(
                name=str(model.get("name", "")),
                version=str(model.get("version", "")),
                success_count=int(stats.get("success", {}).get("count", 0)),
                failure_count=int(stats.get("fail", {}).get("count", 0)),
                inference_count=int(model.get("inference_count", 0)),
                execution_count=int(model.get("execution_count", 0)),
                queue_ns=ns("queue"),
                compute_ns=ns("compute_input") + ns("compute_infer") + ns("compute_output"),
                batch_sizes=batch_sizes,
            )
        )
    return rows


def infer_inputs(arrays: Mapping[str, np.ndarray]) -> list[InferInput]:
    """Named arrays as ``tritonclient`` HTTP inputs (binary tensor data, Triton dtype from the array's)."""
    tensors = []
    for name, array in arrays.items():
        tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    return tensors


class TritonHttpClient:
    """:class:`TritonBackend` over Triton's HTTP/REST protocol (binary tensor data), asyncio.

    Create it inside a running event loop (the app's lifespan): aiohttp binds its pool to the loop.
    A connection that Triton closed (e.g. after a restart) is retried once, so the facade recovers
    from a Triton restart without being restarted itself.
    """

    def __init__(self, url: str, *, timeout_s: float = 10.0, connections: int = 64) -> None:
        self.url = url
        self.timeout_s = timeout_s
        # conn_timeout is aiohttp's total per-request limit; the deadline that counts is ours (asyncio.timeout).
        self._client = triton_aio.InferenceServerClient(url, conn_limit=connections, conn_timeout=timeout_s + 5)

    async def _call(self, what: str, make: Callable[[int], Awaitable[T]], *, model: str = "") -> T:
        """``make(remaining_us)`` under the deadline: remaining_us is what is left of it when the call starts."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.timeout_s) as deadline:
                    when = deadline.when()
                    remaining_us = max(1, int(((when if when is not None else 0.0) - loop.time()) * 1e6))
                    return await make(remaining_us)
            except TimeoutError:
                raise BackendTimeout(f"Triton did not answer {what} within {self.timeout_s:g} s") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A pooled keep-alive connection to a Triton that has since restarted: retry once on a new one.
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise BackendUnavailable(
                        f"Triton at {self.url} is unreachable ({type(exc).__name__})", headers=RETRY_AFTER
                    ) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise BackendUnavailable(
                    f"Triton at {self.url} is unreachable ({type(exc).__name__})", headers=RETRY_AFTER
                ) from exc
            except InferenceServerException as exc:
                raise translate_error(exc, what, model) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def server_ready(self) -> bool:
        try:
            return bool(await self._call("the readiness probe", lambda _: self._client.is_server_ready()))
        except ApiError:
            return False

    async def model_ready(self, model: str) -> bool:
        try:
            return bool(await self._call("a model probe", lambda _: self._client.is_model_ready(model), model=model))
        except ApiError:
            return False

    async def model_versions(self, model: str) -> list[str]:
        metadata = await self._call("a metadata request", lambda _: self._client.get_model_metadata(model), model=model)
        versions = [str(v) for v in metadata.get("versions", [])]
        if not versions:
            raise ModelNotReady(f"model {model!r} has no ready version in Triton")
        return versions

    async def infer(
        self, model: str, version: str, inputs: Mapping[str, np.ndarray], output: str, *, priority: int = 0
    ) -> InferOutput:
        """As :meth:`TritonBackend.infer`; ``priority``: Triton's priority level of the request (1 is served
        first; 0, the default, sends none: the model's ``default_priority_level``, ``taskspec.INTERACTIVE_PRIORITY``).
        Batch jobs send ``taskspec.BATCH_PRIORITY``."""
        tensors = infer_inputs(inputs)
        outputs = [InferRequestedOutput(output, binary_data=True)]
        # The caller's inference span, for a Triton in OpenTelemetry trace mode; empty while tracing is off.
        headers = dict(traceparent_headers()) or None
        result = await self._call(
            f"an inference request to {model!r}",
            # Triton's queue timeout = what is left of our deadline (needs allow_timeout_override in the config)
            lambda remaining_us: self._client.infer(
                model,
                tensors,
                model_version=version,
                outputs=outputs,
                priority=priority,
                timeout=remaining_us,
                headers=headers,
            ),
            model=model,
        )
        logits = result.as_numpy(output)
        if logits is None:
            raise InferenceFailed(f"Triton's answer from {model!r} has no output {output!r}")
        served = str(result.get_response().get("model_version", version))
        return InferOutput(logits=np.asarray(logits, dtype=np.float32), model_version=served)

    async def statistics(self) -> list[TritonModelStats]:
        document = await self._call("a statistics request", lambda _: self._client.get_inference_statistics())
        return parse_statistics(document)

    async def close(self) -> None:
        await self._client.close()
