"""Who may open the dashboard: the launcher's checks, and Panel's login in a real ``python -m dashboard``."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from dashboard.app import session_allowed
from dashboard.server import AnonymousWithApiKey, LoginRequired, check, is_loopback
from dashboard.settings import DashboardSettings, ServerSettings
from serving.processes import ManagedProcess, python_module
from serving.triton import PROJECT_ROOT, free_port

USER = "alice"
PASSWORD = "correct-horse-battery"


@pytest.fixture(autouse=True)
def no_dashboard_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's MTC_DASHBOARD_* variables must not change what these tests check."""
    for name in [name for name in os.environ if name.startswith("MTC_DASHBOARD_")]:
        monkeypatch.delenv(name)


def server_settings(**values: Any) -> ServerSettings:
    return ServerSettings(_env_file=None, **values)


def dashboard_settings(**values: Any) -> DashboardSettings:
    return DashboardSettings(_env_file=None, **values)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"])
def test_loopback_addresses(address: str) -> None:
    assert is_loopback(address)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "", "192.168.1.20", "10.0.0.5", "dashboard.example.com"])
def test_every_other_address_counts_as_reachable_from_outside(address: str) -> None:
    assert not is_loopback(address)


def test_loopback_needs_no_login() -> None:
    plan = check(server_settings(port=5006), dashboard_settings(api_key="k" * 32))
    assert plan.login_user is None
    assert plan.origins == ["127.0.0.1:5006", "localhost:5006"]


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.168.1.20"])
def test_a_bind_beyond_loopback_without_login_is_refused(address: str) -> None:
    with pytest.raises(LoginRequired, match=r"without a login.*MTC_DASHBOARD_PASSWORD"):
        check(server_settings(address=address), dashboard_settings())


def test_a_bind_beyond_loopback_with_login_is_served_with_it() -> None:
    settings = server_settings(address="0.0.0.0", username=USER, password=PASSWORD, origins="a.example:5006, b:5006")
    plan = check(settings, dashboard_settings(api_key="k" * 32))
    assert plan.login_user == USER
    assert plan.origins == ["a.example:5006", "b:5006"]


def test_anonymous_beyond_loopback_must_be_asked_for_and_never_comes_with_the_api_key() -> None:
    anonymous = server_settings(address="0.0.0.0", allow_anonymous=True)
    assert check(anonymous, dashboard_settings()).login_user is None
    with pytest.raises(AnonymousWithApiKey, match="every visitor would call the API with that key"):
        check(anonymous, dashboard_settings(api_key="k" * 32))


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"username": USER}, "set both MTC_DASHBOARD_USERNAME and MTC_DASHBOARD_PASSWORD"),
        ({"password": PASSWORD}, "set both MTC_DASHBOARD_USERNAME and MTC_DASHBOARD_PASSWORD"),
        ({"username": USER, "password": "short"}, "at least 12 characters"),
        ({"username": USER, "password": PASSWORD, "cookie_secret": "too-short"}, "at least 32 characters"),
    ],
)
def test_weak_or_half_set_credentials_are_a_start_up_error(values: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        server_settings(**values)


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # What compose's ${MTC_DASHBOARD_PASSWORD:-} gives when the variable is not set.
    for name in ("PASSWORD", "USERNAME", "COOKIE_SECRET", "ORIGINS"):
        monkeypatch.setenv(f"MTC_DASHBOARD_{name}", "")
    monkeypatch.setenv("MTC_DASHBOARD_API_KEY", "")
    settings = server_settings(address="0.0.0.0")

    assert (settings.password, settings.cookie_secret, settings.origins) == (None, None, [])
    assert dashboard_settings().api_key is None
    with pytest.raises(LoginRequired):
        check(settings, dashboard_settings())


def test_the_password_never_shows_in_the_settings_repr() -> None:
    settings = server_settings(username=USER, password=PASSWORD)
    assert isinstance(settings.password, SecretStr)
    assert PASSWORD not in repr(settings)


def test_a_session_gets_the_page_only_as_the_logged_in_user() -> None:
    assert session_allowed(None, None)  # no login configured (loopback)
    assert session_allowed(USER, USER)
    assert not session_allowed(None, USER)
    assert not session_allowed("guest", USER)  # Panel's guest user (PANEL_OAUTH_OPTIONAL)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def launch(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MTC_DASHBOARD_")}
    return subprocess.run(
        python_module("dashboard"), env={**clean, **env}, cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def test_the_launcher_refuses_a_bind_beyond_loopback_without_login() -> None:
    port = free_port()
    result = launch({"MTC_DASHBOARD_ADDRESS": "0.0.0.0", "MTC_DASHBOARD_PORT": str(port)})

    assert result.returncode == 2
    assert "refusing to serve the dashboard on '0.0.0.0' without a login" in result.stderr
    assert not listening(port)


def test_the_launcher_refuses_a_weak_password_without_printing_it() -> None:
    result = launch({"MTC_DASHBOARD_USERNAME": USER, "MTC_DASHBOARD_PASSWORD": "hunter2"})

    assert result.returncode == 2
    assert "MTC_DASHBOARD_PASSWORD: must be at least 12 characters" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


@pytest.fixture(scope="module")
def dashboard_with_login(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m dashboard`` with a login, facing a facade that is not there (the login needs none)."""
    port = free_port()
    log = Path(tmp_path_factory.mktemp("dashboard-login")) / "dashboard.log"
    process = ManagedProcess(
        name="dashboard",
        command=python_module("dashboard"),
        ready_url=f"http://127.0.0.1:{port}/login",
        log_file=log,
        env={
            "MTC_DASHBOARD_ADDRESS": "127.0.0.1",
            "MTC_DASHBOARD_PORT": str(port),
            "MTC_DASHBOARD_USERNAME": USER,
            "MTC_DASHBOARD_PASSWORD": PASSWORD,
            "MTC_DASHBOARD_API_URL": f"http://127.0.0.1:{free_port()}",
            "MTC_DASHBOARD_API_KEY": "dashboard-api-key-0123456789",
        },
        cwd=PROJECT_ROOT,
    )
    with process:
        yield f"http://127.0.0.1:{port}"
    assert PASSWORD not in log.read_text(errors="replace")


@pytest.mark.integration
def test_without_login_the_page_redirects_to_the_login_form(dashboard_with_login: str) -> None:
    with httpx.Client(base_url=dashboard_with_login, timeout=30) as client:
        page = client.get("/app")
        assert page.status_code == 302
        assert page.headers["location"] == "./login?next=%2Fapp"

        login = client.get("/login?next=%2Fapp")
        assert login.status_code == 200
        assert 'name="password"' in login.text
        assert "cdn." not in login.text  # our own page: nothing loaded from the network

        # The websocket, where a session would act, is closed to anonymous browsers too.
        websocket = client.get(
            "/app/ws",
            headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
        )  # fmt: skip
        assert websocket.status_code == 403


@pytest.mark.integration
def test_a_wrong_password_is_refused(dashboard_with_login: str) -> None:
    with httpx.Client(base_url=dashboard_with_login, timeout=30) as client:
        response = client.post("/login", data={"username": USER, "password": PASSWORD + "x"})
        assert response.status_code == 302
        assert "error=Invalid" in response.headers["location"]
        assert "user" not in client.cookies
        assert client.get("/app").status_code == 302


@pytest.mark.integration
def test_a_logged_in_session_gets_the_page(dashboard_with_login: str) -> None:
    with httpx.Client(base_url=dashboard_with_login, timeout=30) as client:
        client.get("/login", params={"next": "/app"})
        response = client.post("/login", data={"username": USER, "password": PASSWORD})
        assert response.status_code == 302
        assert response.headers["location"] == "/app"

        page = client.get("/app")
        assert page.status_code == 200
        assert "<title>Multi-task classifier</title>" in page.text
        assert 'name="password"' not in page.text

        client.get("/logout")
        assert client.get("/app").status_code == 302
