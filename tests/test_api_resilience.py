"""The facade under a slow, hung or shedding Triton: single-flight version refresh, the /readyz cache,
Triton's queue rejections as 503 + Retry-After, and the deadline sent with every inference request.

A hung Triton is the fake's ``hang`` switch; the shedding tests run the real ``TritonHttpClient``
against a small HTTP server answering what Triton 2.51 answers (tests/test_api_integration.py
checks the same against a real Triton whose queue is full).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from tritonclient.utils import InferenceServerException

from frontend_api.app import create_app
from frontend_api.errors import (
    ApiError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    InferenceFailed,
    ModelNotReady,
)
from frontend_api.settings import ApiSettings
from frontend_api.triton_client import translate_grpc_error
from serving.triton import free_port
from tests.fakes.frontend_api import FakeTriton, asgi_client, make_artifact_repository

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact_repository(tmp_path_factory.mktemp("artifacts"), tasks=["sentiment", "disaster"])


def settings_for(repo: Path, **overrides: Any) -> ApiSettings:
    return ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(repo),
        tasks=["sentiment", "disaster"],
        **overrides,
    )


def problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{slug}"
    return body


async def timed(request: Any) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = await request
    return response, time.monotonic() - start


def test_a_hung_triton_costs_each_request_one_deadline_not_one_per_request_ahead_of_it(repo: Path) -> None:
    deadline, clients = 0.5, 8
    fake = FakeTriton(timeout_s=deadline)
    fake.hang = True

    async def scenario() -> None:
        app = create_app(settings_for(repo, refresh_failure_s=30), fake)
        async with asgi_client(app) as client:
            results = await asyncio.gather(
                *(timed(client.post("/v1/sentiment", json={"texts": [f"text {i}"]})) for i in range(clients))
            )
            for response, _ in results:
                problem(response, 504, "backend-timeout")
            # serialised behind a lock, the k-th request waited k deadlines (8 x 0.5 s = 4 s for the last)
            slowest = max(elapsed for _, elapsed in results)
            assert slowest < 3 * deadline, [round(e, 2) for _, e in results]
            assert fake.counts["model_versions"] == 1  # one refresh for all of them
            # the failure is remembered (refresh_failure_s): the next requests fail at once, Triton is not asked
            response, elapsed = await timed(client.post("/v1/sentiment", json={"texts": ["again"]}))
            problem(response, 504, "backend-timeout")
            assert elapsed < deadline and fake.counts["model_versions"] == 1
            # /readyz: one probe for every concurrent caller, within one deadline too
            probes = await asyncio.gather(*(timed(client.get("/readyz")) for _ in range(clients)))
            assert all(r.status_code == 503 for r, _ in probes)
            assert max(e for _, e in probes) < 3 * deadline
            assert fake.counts["server_ready"] == 1

    asyncio.run(scenario())


def test_a_refresh_outlives_a_caller_that_gave_up(repo: Path) -> None:
    fake = FakeTriton(timeout_s=0.3)
    fake.hang = True

    async def scenario() -> None:
        app = create_app(settings_for(repo, refresh_failure_s=0), fake)
        async with asgi_client(app) as client:
            impatient = asyncio.create_task(client.post("/v1/disaster", json={"texts": ["x"]}))
            await asyncio.sleep(0.05)
            patient = asyncio.create_task(client.post("/v1/disaster", json={"texts": ["y"]}))
            await asyncio.sleep(0.05)
            impatient.cancel()
            fake.hang = False  # the refresh in flight still waits out its deadline
            problem(await patient, 504, "backend-timeout")
            assert fake.counts["model_versions"] == 1
            assert (await client.post("/v1/disaster", json={"texts": ["z"]})).status_code == 200

    asyncio.run(scenario())


def test_readyz_is_probed_once_per_period_whatever_the_number_of_callers(repo: Path) -> None:
    fake = FakeTriton()

    async def scenario() -> None:
        app = create_app(settings_for(repo, readyz_cache_s=0.5), fake)
        async with asgi_client(app) as client:
            answers = await asyncio.gather(*(client.get("/readyz") for _ in range(20)))
            assert [r.status_code for r in answers] == [200] * 20
            for _ in range(5):
                assert (await client.get("/readyz")).status_code == 200
            assert fake.counts["server_ready"] == 1 and fake.counts["model_ready"] == 2  # 1 + one per task
            fake.not_ready.add("disaster")
            assert (await client.get("/readyz")).status_code == 200  # still the cached answer
            await asyncio.sleep(0.55)
            problem(await client.get("/readyz"), 503, "model-not-ready")
            assert fake.counts["server_ready"] == 2

    asyncio.run(scenario())


# --- Triton's own rejections, through the real client ----------------------------------------


class TritonLike:
    """A few of Triton's HTTP endpoints: model metadata, and infer answering ``error`` with ``status``."""

    def __init__(self, error: str, status: int = 503) -> None:
        self.error = error
        self.status = status
        self.parameters: list[dict[str, Any]] = []

    async def metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["model"], "versions": ["1"], "platform": "onnxruntime"})

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = json.loads(body[: int(request.headers.get("Inference-Header-Content-Length", len(body)))])
        self.parameters.append(header.get("parameters", {}))
        return web.json_response({"error": self.error}, status=self.status)

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_get("/v2/models/{model}", self.metadata)
        app.router.add_post("/v2/models/{model}/versions/{version}/infer", self.infer)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await runner.cleanup()


@pytest.mark.parametrize(
    ("error", "slug"),
    [
        # Triton 2.51, src/scheduler_utils.cc: the model's queue holds max_queue_size requests already
        ("[request id: <id_unknown>] Exceeds maximum queue size", "backend-overloaded"),
        # src/dynamic_batch_scheduler.cc: queued past its timeout (ours, or the policy's), timeout_action REJECT
        ("Request timeout expired", "backend-overloaded"),
        # the same file, while the server shuts down (a restart)
        (
            "[request id: <id_unknown>] Server is stopping, scheduler for model has stopped accepting new "
            "inference requests",
            "backend-unavailable",
        ),
    ],
)
def test_triton_shedding_a_request_is_503_with_retry_after(repo: Path, error: str, slug: str) -> None:
    triton = TritonLike(error)

    async def scenario() -> None:
        async with triton.serve() as url:
            app = create_app(settings_for(repo, triton_protocol="http", triton_url=url, triton_timeout_s=4))
            async with asgi_client(app) as client:
                response = await client.post("/v1/sentiment", json={"texts": ["a fine film"]})
        body = problem(response, 503, slug)
        assert response.headers["retry-after"] == "1"
        assert error in body["detail"]

    asyncio.run(scenario())
    # Every inference request carries what is left of the facade's deadline, in microseconds: Triton drops it
    # from its queue when the facade stops waiting (allow_timeout_override in the model's queue policy).
    (parameters,) = triton.parameters
    assert 3_000_000 < parameters["timeout"] <= 4_000_000
    # No priority: Triton gives it the models' default level (interactive), ahead of batch jobs' requests.
    assert "priority" not in parameters


def test_other_triton_rejections_stay_502(repo: Path) -> None:
    triton = TritonLike("inference input data-type is 'INT32', model expects 'INT64'", status=400)

    async def scenario() -> None:
        async with triton.serve() as url:
            app = create_app(settings_for(repo, triton_protocol="http", triton_url=url))
            async with asgi_client(app) as client:
                response = await client.post("/v1/sentiment", json={"texts": ["x"]})
        problem(response, 502, "inference-failed")
        assert "retry-after" not in response.headers

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_unreachable_triton_is_503_with_retry_after(repo: Path, protocol: str) -> None:
    """Nothing listens on Triton's port (a restart in progress): clients are told when to come back, so a
    retrying client backs off instead of hammering the facade while Triton starts (seen in the soak)."""
    nowhere = f"127.0.0.1:{free_port()}"

    async def scenario() -> httpx.Response:
        settings = settings_for(
            repo, triton_protocol=protocol, triton_url=nowhere, triton_grpc_url=nowhere, triton_timeout_s=4
        )
        async with asgi_client(create_app(settings)) as client:
            return await client.post("/v1/sentiment", json={"texts": ["a fine film"]})

    response = asyncio.run(scenario())
    body = problem(response, 503, "backend-unavailable")
    assert f"Triton at {nowhere} is unreachable" in body["detail"]
    assert response.headers["retry-after"] == "1"


# What Triton 2.51 and grpcio answer over gRPC (tritonclient.grpc raises them as InferenceServerException with the
# gRPC status), and what the facade makes of each: the same problems as over HTTP.
GRPC_ANSWERS = [
    ("StatusCode.UNAVAILABLE", "[request id: <id_unknown>] Exceeds maximum queue size", BackendOverloaded, True),
    ("StatusCode.UNAVAILABLE", "Request timeout expired", BackendOverloaded, True),
    (
        "StatusCode.UNAVAILABLE",
        "[request id: <id_unknown>] Server is stopping, scheduler for model has stopped accepting new inference "
        "requests",
        BackendUnavailable,
        True,
    ),
    # grpcio itself: nothing listens, or the connection broke (Triton killed)
    (
        "StatusCode.UNAVAILABLE",
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: Failed to connect to remote "
        "host: Connection refused",
        BackendUnavailable,
        True,
    ),
    ("StatusCode.UNAVAILABLE", "Socket closed", BackendUnavailable, True),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'sentiment' version 7 is not found", ModelNotReady, False),
    (
        "StatusCode.UNAVAILABLE",
        "Request for unknown model: 'sentiment' has no available versions",
        ModelNotReady,
        False,
    ),
    (
        "StatusCode.INVALID_ARGUMENT",
        "[request id: <id_unknown>] inference input 'attention_mask' data-type is 'INT32', but model 'sentiment' "
        "expects 'INT64'",
        InferenceFailed,
        False,
    ),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", BackendTimeout, False),
]


@pytest.mark.parametrize(("status", "message", "kind", "retry_after"), GRPC_ANSWERS)
def test_grpc_errors_become_the_same_problems_as_over_http(
    status: str, message: str, kind: type[ApiError], retry_after: bool
) -> None:
    error = translate_grpc_error(
        InferenceServerException(message, status=status), "an inference request", "127.0.0.1:8001", "sentiment"
    )
    assert type(error) is kind
    assert message in error.detail
    assert (error.headers.get("Retry-After") == "1") is retry_after
