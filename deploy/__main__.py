"""``python -m deploy up|status|keys|down``: one EC2 GPU instance running the platform (docs/deployment.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from deploy.ec2 import (
    CHECKIP_URL,
    DEFAULT_AMI_NAME,
    DeployConfig,
    DeployError,
    check_allowed_cidr,
    discover_caller_cidr,
    find_deployment,
    provision,
    read_secrets,
    secrets_parameter_name,
    teardown,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="create the secrets, IAM instance profile, security group and GPU instance")
    up.add_argument("--name", required=True, help="deployment name (tags and resource names)")
    up.add_argument("--region", default="us-east-1")
    up.add_argument("--models-bucket", required=True, help="bucket holding the model repository")
    up.add_argument("--models-prefix", default="model_repository")
    up.add_argument("--uploads-bucket", required=True, help="bucket for presigned image uploads (not the models')")
    up.add_argument("--instance-type", default="g5.xlarge")
    up.add_argument(
        "--allowed-cidr",
        default=None,
        help="who may reach ports 8080 and 5006 (default: your public address /32, from --checkip-url)",
    )
    up.add_argument("--checkip-url", default=CHECKIP_URL, help="where to find your public address")
    up.add_argument(
        "--i-know-this-is-public",
        dest="allow_public",
        action="store_true",
        help="allow an --allowed-cidr broader than a /8, e.g. 0.0.0.0/0 (the API keys are then all that protects it)",
    )
    up.add_argument("--ssh-cidr", default=None, help="open port 22 to this CIDR (closed by default)")
    up.add_argument("--key-name", default=None, help="EC2 key pair for SSH")
    up.add_argument("--ami-id", default=None, help=f"AMI to use (default: newest {DEFAULT_AMI_NAME!r})")
    up.add_argument("--subnet-id", default=None)
    up.add_argument("--root-volume-gb", type=int, default=100)
    up.add_argument("--repo-url", required=True, help="git URL the instance clones the project from")
    up.add_argument("--git-ref", default="main")

    for name, text in (
        ("status", "show the resources of a deployment"),
        ("keys", "print the deployment's API key for clients and the dashboard login (secrets: mind who watches)"),
        ("down", "delete everything `up` created"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--name", required=True)
        cmd.add_argument("--region", default="us-east-1")
    return parser


def _allowed_cidr(args: argparse.Namespace) -> str:
    """The CIDR to open: as given (checked), or the caller's own address; warns loudly about the internet."""
    cidr = args.allowed_cidr
    if cidr is None:
        cidr = discover_caller_cidr(args.checkip_url)
        print(f"allowed CIDR: {cidr} (your public address, from {args.checkip_url})", file=sys.stderr)
    network = check_allowed_cidr(cidr, allow_public=args.allow_public)
    if network.prefixlen == 0 or args.allow_public:
        print(
            f"warning: ports 8080 (API) and 5006 (dashboard) will be open to {network}: the API keys and the "
            "dashboard login are all that protects them, and without TLS they cross the network in clear text "
            "(docs/deployment.md, TLS)",
            file=sys.stderr,
        )
    return str(network)


def _print_up(config: DeployConfig, deployment_json: str, urls: dict[str, str]) -> None:
    print(deployment_json)
    print("The instance is installing and starting the stack (10-20 minutes); then:")
    for what, url in urls.items():
        print(f"  {what:10} {url}")
    print(f"API keys and the dashboard login are in SSM Parameter Store (SecureString) {config.secrets_parameter}.")
    print(f"  show them:  python -m deploy keys --name {config.name} --region {config.region}")
    print(
        f"  or:         aws ssm get-parameter --region {config.region} --name {config.secrets_parameter} "
        "--with-decryption --query Parameter.Value --output text"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up":
            config = DeployConfig(
                name=args.name,
                region=args.region,
                models_bucket=args.models_bucket,
                models_prefix=args.models_prefix,
                uploads_bucket=args.uploads_bucket,
                instance_type=args.instance_type,
                allowed_cidr=_allowed_cidr(args),
                allow_public=args.allow_public,
                ssh_cidr=args.ssh_cidr,
                key_name=args.key_name,
                ami_id=args.ami_id,
                subnet_id=args.subnet_id,
                root_volume_gb=args.root_volume_gb,
                repo_url=args.repo_url,
                git_ref=args.git_ref,
            )
            deployment = provision(config)
            _print_up(config, json.dumps(asdict(deployment), indent=2), deployment.urls())
        elif args.command == "status":
            deployment = find_deployment(args.name, region=args.region)
            print(json.dumps({**asdict(deployment), "exists": deployment.exists()}, indent=2))
        elif args.command == "keys":
            stored = read_secrets(args.name, region=args.region)
            client_key = json.loads(stored["MTC_API_API_KEYS"])[0]
            print(f"# from {secrets_parameter_name(args.name)} ({args.region})")
            print(f"API key (Authorization: Bearer ...): {client_key}")
            print(f"dashboard login: {stored['MTC_DASHBOARD_USERNAME']} / {stored['MTC_DASHBOARD_PASSWORD']}")
        else:
            removed = teardown(args.name, region=args.region)
            print(json.dumps({"removed": asdict(removed)}, indent=2))
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
