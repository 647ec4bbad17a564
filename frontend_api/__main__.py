"""``python -m frontend_api``: serve the facade with uvicorn on ``MTC_API_HOST``:``MTC_API_PORT``.

The settings are checked before anything binds: a non-loopback host without API keys (and without
``MTC_API_ALLOW_ANONYMOUS=true``), or an empty, short or blank key, is refused with one line on
stderr and exit status 2.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from frontend_api.settings import ApiSettings, describe_settings_error


def main() -> int:
    try:
        settings = ApiSettings()
    except ValidationError as exc:
        print(f"frontend_api: refusing to start: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    import uvicorn

    from frontend_api.app import served_app

    uvicorn.run(served_app(settings), host=settings.host, port=settings.port, access_log=settings.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
