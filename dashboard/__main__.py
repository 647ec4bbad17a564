"""``python -m dashboard``: serve the page at ``/app`` with the checks of :mod:`dashboard.server`.

Every setting comes from ``MTC_DASHBOARD_*`` environment variables (or ``.env``), none from the command
line, so no password ever shows in a process list. Exit status 2: the settings were refused.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from dashboard.server import DashboardConfigError, serve
from dashboard.settings import ENV_PREFIX, DashboardSettings, ServerSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboard",
        description=(
            "Serve the dashboard at /app. Settings come from MTC_DASHBOARD_* variables: ADDRESS (127.0.0.1), "
            "PORT (5006), ORIGINS, USERNAME + PASSWORD (the login), COOKIE_SECRET, ALLOW_ANONYMOUS, API_URL, "
            "API_KEY; see docs/dashboard.md. Beyond loopback a login is required."
        ),
    )
    parser.parse_args(argv)
    try:
        server, dashboard = ServerSettings(), DashboardSettings()
    except ValidationError as exc:
        problems = "; ".join(_problem(error["loc"], error["msg"]) for error in exc.errors())
        print(f"error: invalid dashboard settings: {problems}", file=sys.stderr)
        return 2
    try:
        serve(server, dashboard)
    except DashboardConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _problem(loc: tuple[int | str, ...], msg: str) -> str:
    # Only the variable's name and pydantic's message: the value (maybe a password) is never printed.
    message = msg.removeprefix("Value error, ")
    return f"{ENV_PREFIX}{str(loc[0]).upper()}: {message}" if loc else message


if __name__ == "__main__":
    sys.exit(main())
