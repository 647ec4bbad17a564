"""``python -m deploy up|status|down``: one EC2 GPU instance running the platform (docs/deployment.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from deploy.ec2 import DEFAULT_AMI_NAME, DeployConfig, DeployError, find_deployment, provision, teardown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="create the IAM instance profile, security group and GPU instance")
    up.add_argument("--name", required=True, help="deployment name (tags and resource names)")
    up.add_argument("--region", default="us-east-1")
    up.add_argument("--models-bucket", required=True, help="bucket holding the model repository")
    up.add_argument("--models-prefix", default="model_repository")
    up.add_argument("--uploads-bucket", required=True, help="bucket for presigned image uploads")
    up.add_argument("--instance-type", default="g5.xlarge")
    up.add_argument("--allowed-cidr", default="0.0.0.0/0", help="who may reach ports 8080 and 5006")
    up.add_argument("--ssh-cidr", default=None, help="open port 22 to this CIDR (closed by default)")
    up.add_argument("--key-name", default=None, help="EC2 key pair for SSH")
    up.add_argument("--ami-id", default=None, help=f"AMI to use (default: newest {DEFAULT_AMI_NAME!r})")
    up.add_argument("--subnet-id", default=None)
    up.add_argument("--root-volume-gb", type=int, default=100)
    up.add_argument("--repo-url", required=True, help="git URL the instance clones the project from")
    up.add_argument("--git-ref", default="main")

    for name, text in (("status", "show the resources of a deployment"), ("down", "delete everything `up` created")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--name", required=True)
        cmd.add_argument("--region", default="us-east-1")
    return parser


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
                allowed_cidr=args.allowed_cidr,
                ssh_cidr=args.ssh_cidr,
                key_name=args.key_name,
                ami_id=args.ami_id,
                subnet_id=args.subnet_id,
                root_volume_gb=args.root_volume_gb,
                repo_url=args.repo_url,
                git_ref=args.git_ref,
            )
            deployment = provision(config)
            print(json.dumps(asdict(deployment), indent=2))
            print("The instance is installing and starting the stack (10-20 minutes); then:")
            for what, url in deployment.urls().items():
                print(f"  {what:10} {url}")
        elif args.command == "status":
            deployment = find_deployment(args.name, region=args.region)
            print(json.dumps({**asdict(deployment), "exists": deployment.exists()}, indent=2))
        else:
            removed = teardown(args.name, region=args.region)
            print(json.dumps({"removed": asdict(removed)}, indent=2))
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
