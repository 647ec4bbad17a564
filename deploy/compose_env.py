"""``python -m deploy.compose_env``: write ``.env`` for docker compose, every secret generated.

Copies ``.env.example`` and fills in the passwords of MinIO's root and per-service users, the API keys
(one for clients, one for the dashboard) and the dashboard's password with ``secrets.token_urlsafe``;
the host-side ``python -m export push`` gets the publisher's keys. The file is created with mode 0600
and never overwritten (``--force`` to replace it). Nothing secret is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".env.example"


def generated_values() -> dict[str, str]:
    """Fresh values for every secret compose requires.

    MinIO's are hex (32 characters, within its 40): minio-init passes them to ``mc`` as arguments, where
    a urlsafe token starting with ``-`` would read as a flag.
    """
    client_key, dashboard_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    publisher = secrets.token_hex(16)
    return {
        "MINIO_ROOT_PASSWORD": secrets.token_hex(16),
        "MINIO_TRITON_PASSWORD": secrets.token_hex(16),
        "MINIO_API_PASSWORD": secrets.token_hex(16),
        "MINIO_PUBLISHER_PASSWORD": publisher,
        "MTC_S3_SECRET_ACCESS_KEY": publisher,
        "MTC_API_API_KEYS": json.dumps([client_key, dashboard_key], separators=(",", ":")),
        "MTC_DASHBOARD_API_KEY": dashboard_key,
        "MTC_DASHBOARD_PASSWORD": secrets.token_urlsafe(18),
    }


def render(example: str, values: Mapping[str, str]) -> str:
    """``example`` with the value of each ``NAME=`` line in ``values`` replaced; every name must be there."""
    missing = [name for name in values if not re.search(rf"^{name}=", example, flags=re.M)]
    if missing:
        raise ValueError(f".env.example has no line for {', '.join(missing)}")
    return re.sub(
        r"^([A-Z0-9_]+)=.*$",
        lambda m: f"{m[1]}={values[m[1]]}" if m[1] in values else m[0],
        example,
        flags=re.M,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.compose_env", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / ".env")
    parser.add_argument("--force", action="store_true", help="replace an existing file (its secrets are lost)")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.force:
        print(f"error: {args.output} exists; keep it, or pass --force to replace it", file=sys.stderr)
        return 1
    text = render(EXAMPLE.read_text(), generated_values())
    handle = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.chmod(args.output, 0o600)
    print(f"wrote {args.output} (mode 0600): MinIO users, API keys and the dashboard login generated.")
    print("Your API key is the first entry of MTC_API_API_KEYS; the dashboard login is MTC_DASHBOARD_USERNAME /")
    print("MTC_DASHBOARD_PASSWORD.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
