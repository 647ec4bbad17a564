"""``python -m frontend_api``: serve the facade with uvicorn on ``MTC_API_HOST``:``MTC_API_PORT``.

The settings are checked before anything binds: a non-loopback host without API keys (and without
``MTC_API_ALLOW_ANONYMOUS=true``), or an empty, short or blank key, is refused with one line on
stderr and exit status 2.

With ``MTC_API_WORKERS`` above 1, uvicorn runs that many worker processes on the one port (each builds the app
from the environment, ``frontend_api.app:app``), and the metrics run in prometheus_client's multiprocess mode in a
fresh folder made here and removed when the server stops (:mod:`frontend_api.metrics`).
"""

from __future__ import annotations

import os
import sys
import tempfile

from pydantic import ValidationError

from frontend_api.metrics import MULTIPROCESS_DIR_ENV
from frontend_api.settings import ApiSettings, describe_settings_error


def main() -> int:
    try:
        settings = ApiSettings()
    except ValidationError as exc:
        print(f"frontend_api: refusing to start: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    import uvicorn

    if settings.workers == 1:
        from frontend_api.app import served_app

        uvicorn.run(served_app(settings), host=settings.host, port=settings.port, access_log=settings.access_log)
        return 0
    # Never a folder left by another run: its files would be summed into this one's counters.
    with tempfile.TemporaryDirectory(prefix="mtc-api-metrics-") as metrics_dir:
        os.environ[MULTIPROCESS_DIR_ENV] = metrics_dir  # inherited by the workers, read by prometheus_client
        uvicorn.run(
            "frontend_api.app:app",
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            access_log=settings.access_log,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
