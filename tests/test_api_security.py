"""Secure defaults: API keys that cannot be empty or weak, and no anonymous facade beyond loopback, on every
launch path (``python -m frontend_api``, ``uvicorn frontend_api.app:app``, :func:`served_app`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from frontend_api.app import served_app
from frontend_api.settings import ApiSettings, describe_settings_error
from serving.triton import PROJECT_ROOT, free_port
from tests.fakes.frontend_api import asgi_client, make_artifact_repository

KEY = "k3y-0f-sixteen-chars"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact_repository(tmp_path_factory.mktemp("artifacts"), tasks=["disaster"])


def settings(**values: Any) -> ApiSettings:
    return ApiSettings(_env_file=None, **values)  # type: ignore[call-arg]


def refusal(**values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    return describe_settings_error(caught.value)


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ([""], "key 1 of 1 is empty"),
        ([KEY, ""], "key 2 of 2 is empty"),
        (["Zq9#xW"], "key 1 of 1 is shorter than 16 characters"),
        (["                    "], "key 1 of 1 contains whitespace"),
        ([KEY + " tail"], "key 1 of 1 contains whitespace"),
        ([KEY + "\n"], "key 1 of 1 contains whitespace"),
    ],
)
def test_empty_short_or_blank_api_keys_are_a_start_up_error(keys: list[str], problem: str) -> None:
    message = refusal(api_keys=keys)
    assert message.startswith(f"MTC_API_API_KEYS: {problem}")
    assert "secrets.token_urlsafe" in message  # says how to make a good one
    assert all(key.strip() not in message for key in keys if key.strip())  # never echoes a secret


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "api.internal", "192.168.1.2"])
def test_a_non_loopback_bind_without_keys_is_refused_unless_anonymous_is_explicit(host: str) -> None:
    message = refusal(host=host)
    assert f"MTC_API_HOST={host} is not a loopback address and no API keys are set" in message
    assert "MTC_API_ALLOW_ANONYMOUS=true" in message
    assert settings(host=host, api_keys=[KEY]).host == host
    assert settings(host=host, allow_anonymous=True).allow_anonymous


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_loopback_binds_need_no_keys(host: str) -> None:
    assert settings(host=host).api_keys == []


def run_module(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MTC_API_")}
    return subprocess.run(
        [sys.executable, *args],
        env={**clean, **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MTC_API_HOST": "0.0.0.0", "MTC_API_PORT": "1"}, "MTC_API_HOST=0.0.0.0 is not a loopback address"),
        ({"MTC_API_API_KEYS": '[""]', "MTC_API_PORT": "1"}, "MTC_API_API_KEYS: key 1 of 1 is empty"),
    ],
)
@pytest.mark.parametrize(
    "launcher", [["-m", "frontend_api"], ["-m", "uvicorn", "frontend_api.app:app", "--port", "1"]], ids=str
)
def test_every_launch_path_refuses_in_one_line_with_status_2(
    launcher: list[str], env: dict[str, str], expected: str
) -> None:
    # port 1 is never bound: a launcher that did not refuse would fail differently (permission denied)
    result = run_module(launcher, env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("frontend_api: refusing to start: "), result.stderr
    assert expected in lines[0]


def served(repo: Path, **values: Any) -> Any:
    # nothing listens on the Triton ports: /v1/models still answers (every model not ready)
    nowhere = f"127.0.0.1:{free_port()}"
    return served_app(
        settings(model_repository=str(repo), tasks=["disaster"], triton_url=nowhere, triton_grpc_url=nowhere, **values)
    )


def test_served_app_without_keys_answers_loopback_connections_only(repo: Path) -> None:
    # `uvicorn frontend_api.app:app --host 0.0.0.0` with no MTC_API_HOST: the settings say loopback, the socket
    # does not. Requests arriving on another local address are refused.
    app = served(repo)

    async def scenario() -> None:
        async with asgi_client(app, "http://10.0.0.5:8080") as outside:
            for method, path in (("POST", "/v1/disaster"), ("GET", "/v1/models"), ("GET", "/healthz")):
                response = await outside.request(method, path, json={"texts": ["fire"]})
                assert response.status_code == 403, (path, response.text)
                assert response.json()["type"] == "/problems/anonymous-not-allowed"
                assert "MTC_API_API_KEYS" in response.json()["detail"]
        for local in ("http://127.0.0.1:8080", "http://[::1]:8080"):
            async with asgi_client(app, local) as inside:
                assert (await inside.get("/v1/models")).status_code == 200

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("values", "status"), [({"api_keys": [KEY]}, 401), ({"allow_anonymous": True, "host": "0.0.0.0"}, 200)]
)
def test_with_keys_or_explicit_anonymous_access_any_address_is_served(
    repo: Path, values: dict[str, Any], status: int
) -> None:
    app = served(repo, **values)

    async def scenario() -> int:
        async with asgi_client(app, "http://10.0.0.5:8080") as client:
            return (await client.get("/v1/models")).status_code

    assert asyncio.run(scenario()) == status


def test_unknown_tasks_and_task_modules_are_a_start_up_error() -> None:
    # A misspelt task or a task module that cannot be imported stops the facade with one line, before it serves.
    assert refusal(tasks=["sentiment", "wether"]).startswith(
        "MTC_API_TASKS names unknown tasks 'wether'; known: sentiment, disaster, pose"
    )
    assert refusal(task_modules="tests.support.no_such_module").startswith(
        "MTC_TASK_MODULES: cannot import 'tests.support.no_such_module'"
    )
    assert "is not a dotted Python module name" in refusal(task_modules="/tmp/evil.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTC_")}
    result = subprocess.run(
        [sys.executable, "-m", "frontend_api"],
        cwd=PROJECT_ROOT,
        env={**env, "MTC_TASK_MODULES": "tests.support.no_such_module"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("frontend_api: refusing to start: MTC_TASK_MODULES: cannot import")
