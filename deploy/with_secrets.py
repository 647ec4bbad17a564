"""Run a command with a deployment's secrets in its environment, read from SSM Parameter Store.

    python3 deploy/with_secrets.py --parameter /mtc/demo/secrets --region eu-west-1 -- \\
        docker compose -f docker-compose.yml -f docker-compose.aws.yml up -d --build --wait

The parameter is the SecureString ``python -m deploy up`` wrote: a JSON object of environment variables
(API keys, the dashboard's login). It is read with the AWS CLI under the instance role at every start,
so no secret is in the user data or in a file on the instance; compose passes the variables on to the
containers that need them. Standard library only: it runs with the instance's system ``python3``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence

_NAME = re.compile(r"MTC_[A-Z0-9_]+")


def fetch_secrets(parameter: str, region: str) -> dict[str, str]:
    """The parameter's environment variables (the AWS CLI does the signed, decrypted read)."""
    command = ["aws", "ssm", "get-parameter", "--region", region, "--name", parameter, "--with-decryption"]
    command += ["--query", "Parameter.Value", "--output", "text"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cannot read {parameter} in {region}: {result.stderr.strip()[:500]}")
    try:
        document = json.loads(result.stdout)
    except ValueError:
        raise RuntimeError(f"{parameter} does not hold a JSON object") from None
    if not isinstance(document, dict):
        raise RuntimeError(f"{parameter} does not hold a JSON object")
    bad = [str(k) for k, v in document.items() if not _NAME.fullmatch(str(k)) or not isinstance(v, str)]
    if bad:  # names only: the values are secrets
        raise RuntimeError(f"{parameter} holds entries that are not MTC_* string variables: {', '.join(bad)}")
    return {str(name): str(value) for name, value in document.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="with_secrets.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parameter", required=True, help="SSM parameter name, e.g. /mtc/demo/secrets")
    parser.add_argument("--region", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    try:
        secrets = fetch_secrets(args.parameter, args.region)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    os.execvpe(command[0], command, {**os.environ, **secrets})


if __name__ == "__main__":
    sys.exit(main())
