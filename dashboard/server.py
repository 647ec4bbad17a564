"""Serving the page: who may open it, checked before anything listens.

``python -m dashboard`` (see ``dashboard/__main__.py``) calls :func:`serve`. The rules:

- on a loopback address the page may be open to anyone on the machine;
- beyond loopback it needs its own login (Panel's basic auth: a login form, then a signed cookie),
  unless ``MTC_DASHBOARD_ALLOW_ANONYMOUS`` says otherwise;
- the dashboard's API key is only ever used for a logged-in user or on loopback: anonymous access beyond
  loopback together with an API key is refused, since every visitor would act with that key.

Credentials stay in this process (Panel's server is started in it), never on a command line.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashboard.settings import ENV_PREFIX, DashboardSettings, ServerSettings

APP_PATH = "app"
# Our own login and logout pages: Panel's load its logo and icon from a CDN.
TEMPLATES = Path(__file__).parent / "templates"


class DashboardConfigError(Exception):
    """The settings would serve the page less safely than the rules allow; ``message`` says what to set."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LoginRequired(DashboardConfigError):
    """The page would be served beyond loopback with no login and no explicit opt-out."""


class AnonymousWithApiKey(DashboardConfigError):
    """Anonymous visitors beyond loopback would act with the dashboard's API key."""


def is_loopback(address: str) -> bool:
    """Whether ``address`` only listens on this machine (``127.0.0.0/8``, ``::1``, ``localhost``).

    Any other name, and the wildcard addresses (``0.0.0.0``, ``::``, empty), count as reachable from outside.
    """
    host = address.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@dataclass(frozen=True)
class ServePlan:
    """What :func:`serve` starts, once checked (no credentials: those stay in the settings' ``SecretStr``)."""

    address: str
    port: int
    origins: list[str]
    login_user: str | None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/{APP_PATH}"


def check(server: ServerSettings, dashboard: DashboardSettings) -> ServePlan:
    """Apply the rules of this module; raise a :class:`DashboardConfigError` that says what to set."""
    local = is_loopback(server.address)
    if not local and not server.login:
        if not server.allow_anonymous:
            raise LoginRequired(
                f"refusing to serve the dashboard on {server.address!r} without a login: anyone who reaches "
                f"it could use it. Set {ENV_PREFIX}USERNAME and {ENV_PREFIX}PASSWORD (and "
                f"{ENV_PREFIX}COOKIE_SECRET to keep logins across restarts), bind {ENV_PREFIX}ADDRESS=127.0.0.1, "
                f"or set {ENV_PREFIX}ALLOW_ANONYMOUS=true to serve it to everyone on purpose."
            )
        if dashboard.api_key is not None:
            raise AnonymousWithApiKey(
                f"refusing to serve the dashboard anonymously on {server.address!r} with {ENV_PREFIX}API_KEY set: "
                f"every visitor would call the API with that key. Set {ENV_PREFIX}USERNAME and "
                f"{ENV_PREFIX}PASSWORD instead."
            )
    origins = server.origins or [f"{server.address}:{server.port}", f"localhost:{server.port}"]
    return ServePlan(server.address, server.port, origins, server.username if server.login else None)


def serve(server: ServerSettings, dashboard: DashboardSettings) -> None:
    """Check the settings, then serve the page at ``/app`` until interrupted (blocks)."""
    plan = check(server, dashboard)
    # Imported here so that a refused start fails fast, before Panel and Bokeh load.
    import panel as pn

    from dashboard.app import TITLE, session_page

    options: dict[str, Any] = {}
    if plan.login_user is not None and server.password is not None:
        secret = server.cookie_secret.get_secret_value() if server.cookie_secret else secrets.token_urlsafe(48)
        options = {
            "basic_auth": {plan.login_user: server.password.get_secret_value()},
            "cookie_secret": secret,
            "login_template": str(TEMPLATES / "login.html"),
            "logout_template": str(TEMPLATES / "logout.html"),
        }
    login = f"login required (user {plan.login_user!r})" if plan.login_user else "no login"
    print(f"==> Dashboard on {plan.url} ({login}; websocket origins: {', '.join(plan.origins)})", flush=True)

    def page() -> Any:
        # A plain function: Panel serves a functools.partial as a repr, not as an app.
        return session_page(login_user=plan.login_user)

    pn.serve(
        {APP_PATH: page},
        address=plan.address,
        port=plan.port,
        websocket_origin=plan.origins,
        title=TITLE,
        show=False,
        threaded=False,
        verbose=False,
        **options,
    )
