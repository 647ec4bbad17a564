"""The only module that talks to Triton: asyncio clients over gRPC and HTTP, and the interface the facade needs.

:class:`TritonBackend` is what the service layer depends on; :class:`TritonGrpcClient` implements it with
``tritonclient.grpc.aio`` (one long-lived HTTP/2 channel, created in the app's lifespan) and
:class:`TritonHttpClient` with ``tritonclient.http.aio`` (one aiohttp connection pool); :func:`make_triton_client`
picks one from the settings (``MTC_API_TRITON_PROTOCOL``), and :class:`tests.fakes.frontend_api.FakeTriton`
implements the interface for unit tests. Both clients send the same requests and fail the same way: every failure
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
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, TypeVar

import aiohttp
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as grpc_aio
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
from frontend_api.settings import TritonProtocol
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


# Triton's own answers; over gRPC anything else with status UNAVAILABLE is the channel's (no connection, or it broke).
_TRITON_MESSAGES = (*_SHED_MARKERS, _STOPPING_MARKER, "unknown model", "no available versions", "not at ready state")
_GRPC_UNAVAILABLE = "StatusCode.UNAVAILABLE"
_GRPC_DEADLINE_EXCEEDED = "StatusCode.DEADLINE_EXCEEDED"


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


def translate_grpc_error(exc: InferenceServerException, what: str, url: str, model: str = "") -> ApiError:
    """As :func:`translate_error`, for ``tritonclient.grpc``: its transport failures arrive as the same exception,
    with gRPC's status code (``StatusCode.UNAVAILABLE``: connection refused or lost)."""
    message = str(exc.message() or exc)
    if exc.status() == _GRPC_UNAVAILABLE and not any(marker in message.lower() for marker in _TRITON_MESSAGES):
        return BackendUnavailable(f"Triton at {url} is unreachable ({message})", headers=RETRY_AFTER)
    if exc.status() == _GRPC_DEADLINE_EXCEEDED:
        return BackendTimeout(f"Triton did not answer {what} in time: {message}")
    return translate_error(exc, what, model)


def remaining_us(deadline: asyncio.Timeout) -> int:
    """What is left of ``deadline`` in microseconds, at least 1: Triton's per-request queue ``timeout``."""
    when = deadline.when()
    return max(1, int(((when if when is not None else 0.0) - asyncio.get_running_loop().time()) * 1e6))


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

    async def statistics(self, model: str = "") -> list[TritonModelStats]:
        """Statistics of every loaded version of ``model`` ("": of every loaded model)."""
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


def grpc_inputs(arrays: Mapping[str, np.ndarray]) -> list[triton_grpc.InferInput]:
    """Named arrays as ``tritonclient`` gRPC inputs (raw tensor contents, Triton dtype from the array's)."""
    tensors = []
    for name, array in arrays.items():
        tensor = triton_grpc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


class _TritonClient:
    """What both protocols share: the probes, metadata, inference and statistics calls and their answers.

    A protocol (:class:`TritonHttpClient`, :class:`TritonGrpcClient`) supplies its ``tritonclient`` client, how a
    call is made under the deadline with its failures translated (:meth:`_call`), and the few places where the
    two libraries differ (tensor types, JSON documents, the answer's model version).
    """

    url: str
    timeout_s: float
    _client: Any
    _as_json: ClassVar[Mapping[str, bool]] = MappingProxyType({})
    """What the library's metadata and statistics calls need to answer Triton's JSON document."""

    async def _call(self, what: str, make: Callable[[int], Awaitable[T]], *, model: str = "") -> T:
        """``make(remaining_us)`` under the deadline: remaining_us is what is left of it when the call starts."""
        raise NotImplementedError

    def _tensors(self, inputs: Mapping[str, np.ndarray], output: str) -> tuple[list[Any], list[Any]]:
        """The request's input tensors and its requested output in this protocol's types."""
        raise NotImplementedError

    def _served_version(self, result: Any, asked: str) -> str:
        """The model version that answered ``result``."""
        raise NotImplementedError

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
        metadata: dict[str, Any] = await self._call(
            "a metadata request", lambda _: self._client.get_model_metadata(model, **self._as_json), model=model
        )
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
        tensors, outputs = self._tensors(inputs, output)
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
        return InferOutput(
            logits=np.asarray(logits, dtype=np.float32), model_version=self._served_version(result, version)
        )

    async def statistics(self, model: str = "") -> list[TritonModelStats]:
        document = await self._call(
            "a statistics request",
            lambda _: self._client.get_inference_statistics(model_name=model, **self._as_json),
            model=model,
        )
        return parse_statistics(document)

    async def close(self) -> None:
        await self._client.close()


class TritonHttpClient(_TritonClient):
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
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.timeout_s) as deadline:
                    return await make(remaining_us(deadline))
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

    def _tensors(self, inputs: Mapping[str, np.ndarray], output: str) -> tuple[list[Any], list[Any]]:
        return infer_inputs(inputs), [InferRequestedOutput(output, binary_data=True)]

    def _served_version(self, result: Any, asked: str) -> str:
        return str(result.get_response().get("model_version", asked))


# tritonclient's own channel options (message size limits, keep-alive pings off), plus reconnection at most 1 s
# apart: gRPC's default backoff grows to 120 s, so a facade whose Triton was down for a minute would keep
# answering 503 long after Triton is back.
GRPC_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", triton_grpc.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", triton_grpc.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonGrpcClient(_TritonClient):
    """:class:`TritonBackend` over Triton's gRPC protocol (``tritonclient.grpc.aio``, one HTTP/2 channel).

    Create it inside a running event loop (the app's lifespan). The channel reconnects by itself after a Triton
    restart (at most 1 s apart, :data:`GRPC_CHANNEL_ARGS`); calls made while it has no connection fail at once with
    :class:`BackendUnavailable`. Deadline, queue timeout, priority and ``traceparent`` (as gRPC metadata) are sent as
    :class:`TritonHttpClient` sends them.
    """

    _as_json = MappingProxyType({"as_json": True})  # tritonclient.grpc answers protobuf messages unless asked for JSON

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpc_aio.InferenceServerClient(url, channel_args=GRPC_CHANNEL_ARGS)

    async def _call(self, what: str, make: Callable[[int], Awaitable[T]], *, model: str = "") -> T:
        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                return await make(remaining_us(deadline))
        except TimeoutError:
            raise BackendTimeout(f"Triton did not answer {what} within {self.timeout_s:g} s") from None
        except InferenceServerException as exc:
            raise translate_grpc_error(exc, what, self.url, model) from exc

    def _tensors(self, inputs: Mapping[str, np.ndarray], output: str) -> tuple[list[Any], list[Any]]:
        return grpc_inputs(inputs), [triton_grpc.InferRequestedOutput(output)]

    def _served_version(self, result: Any, asked: str) -> str:
        return str(result.get_response().model_version or asked)


class TritonEndpoint(Protocol):
    """Where and how to reach Triton: the fields :class:`~frontend_api.settings.ApiSettings` and the batch
    runner's :class:`~batch.settings.BatchSettings` both have."""

    @property
    def triton_protocol(self) -> TritonProtocol: ...
    @property
    def triton_url(self) -> str: ...
    @property
    def triton_grpc_url(self) -> str: ...
    @property
    def triton_timeout_s(self) -> float: ...
    @property
    def triton_connections(self) -> int: ...


def make_triton_client(settings: TritonEndpoint) -> TritonHttpClient | TritonGrpcClient:
    """The Triton client ``settings`` ask for: gRPC at ``triton_grpc_url`` or HTTP at ``triton_url``."""
    if settings.triton_protocol == "grpc":
        return TritonGrpcClient(settings.triton_grpc_url, timeout_s=settings.triton_timeout_s)
    return TritonHttpClient(
        settings.triton_url, timeout_s=settings.triton_timeout_s, connections=settings.triton_connections
    )
