"""deploy/ec2.py against moto's EC2, IAM and S3: what a real `python -m deploy up/down` would create."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

import deploy.ec2
from deploy.__main__ import main as deploy_cli
from deploy.ec2 import (
    API_PORT,
    DASHBOARD_PORT,
    TAG_KEY,
    DeployConfig,
    DeployError,
    find_ami,
    find_deployment,
    provision,
    render_user_data,
    teardown,
)
from serving.triton import free_port

REGION = "eu-west-1"


@pytest.fixture
def aws() -> Iterator[boto3.Session]:
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        s3 = session.client("s3")
        for bucket in ("models-bkt", "uploads-bkt"):
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield session


def register_gpu_ami(session: boto3.Session, name: str, date: str) -> str:
    """An AMI named like AWS's Deep Learning Base AMI (moto's images are owned by this account)."""
    ec2 = session.client("ec2")
    image = ec2.register_image(Name=name, Architecture="x86_64", RootDeviceName="/dev/sda1")
    # moto's RegisterImage keeps neither the architecture nor a creation date: set them as AWS would.
    ami = ec2_backends[DEFAULT_ACCOUNT_ID][REGION].amis[image["ImageId"]]
    ami.architecture = "x86_64"
    ami.creation_date = datetime.fromisoformat(date).replace(tzinfo=UTC)
    return str(image["ImageId"])


def config(**overrides: object) -> DeployConfig:
    values: dict[str, object] = {
        "name": "demo",
        "region": REGION,
        "models_bucket": "models-bkt",
        "uploads_bucket": "uploads-bkt",
        "ami_owners": ("self",),
        "repo_url": "https://example.invalid/mtc.git",
        "allowed_cidr": "203.0.113.0/24",
    }
    values.update(overrides)
    return DeployConfig(**values)  # type: ignore[arg-type]


def test_ami_lookup_picks_the_newest_matching_image(aws: boto3.Session) -> None:
    old = register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20240101", "2024-01-01")
    new = register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20241001", "2024-10-01")
    register_gpu_ami(aws, "Some other AMI 20250101", "2025-01-01")
    assert find_ami(aws.client("ec2"), config()) == new != old
    assert find_ami(aws.client("ec2"), config(ami_id="ami-12345678")) == "ami-12345678"
    with pytest.raises(DeployError, match="no AMI named"):
        find_ami(aws.client("ec2"), config(ami_name="Nothing like this *"))


def test_provision_creates_a_locked_down_gpu_instance(aws: boto3.Session) -> None:
    ami = register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20241001", "2024-10-01")
    deployment = provision(config(), session=aws)

    ec2 = aws.client("ec2")
    [instance_id] = deployment.instance_ids
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert instance["InstanceType"] == "g5.xlarge"
    assert instance["ImageId"] == ami
    assert instance["State"]["Name"] == "running"
    assert {"Key": TAG_KEY, "Value": "demo"} in instance["Tags"]

    [volume] = instance["BlockDeviceMappings"]
    assert volume["DeviceName"] == "/dev/sda1"  # the AMI's root device
    # IMDSv2 only, one hop: containers on a bridge network cannot read the instance credentials.
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 1

    # Only the API and the dashboard, only from the allowed CIDR; no SSH unless asked for.
    [group] = ec2.describe_security_groups(GroupIds=deployment.security_group_ids)["SecurityGroups"]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group["GroupId"]]
    opened = {(p["FromPort"], p["ToPort"], r["CidrIp"]) for p in group["IpPermissions"] for r in p["IpRanges"]}
    assert opened == {(API_PORT, API_PORT, "203.0.113.0/24"), (DASHBOARD_PORT, DASHBOARD_PORT, "203.0.113.0/24")}

    # The instance profile's role may read the model repository and use the uploads bucket, nothing else.
    iam = aws.client("iam")
    assert instance["IamInstanceProfile"]["Arn"] == deployment.instance_profile_arn
    profile = iam.get_instance_profile(InstanceProfileName="mtc-demo")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["mtc-demo"]
    trust = iam.get_role(RoleName="mtc-demo")["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert iam.list_attached_role_policies(RoleName="mtc-demo")["AttachedPolicies"] == []
    policy = iam.get_role_policy(RoleName="mtc-demo", PolicyName="model-buckets")["PolicyDocument"]
    if isinstance(policy, str):
        policy = json.loads(policy)
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {
        "arn:aws:s3:::models-bkt",
        "arn:aws:s3:::uploads-bkt",
        "arn:aws:s3:::models-bkt/model_repository/*",
        "arn:aws:s3:::uploads-bkt/uploads/*",
        f"arn:aws:ssm:{REGION}:{DEFAULT_ACCOUNT_ID}:parameter/mtc/demo/secrets",
    }
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:PutObject", "ssm:GetParameter"}
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])

    # The user data starts the stack with the AWS override against this deployment's buckets.
    encoded = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
    user_data = base64.b64decode(encoded).decode()
    assert user_data.startswith("#!/bin/bash")
    assert "nvidia-smi" in user_data and "nvidia-ctk runtime configure --runtime=docker" in user_data
    assert "docker compose -f docker-compose.yml -f docker-compose.aws.yml up -d --build --wait" in user_data
    assert "MTC_MODELS_BUCKET=models-bkt" in user_data and "MTC_UPLOADS_BUCKET=uploads-bkt" in user_data
    assert "AWS_DEFAULT_REGION=eu-west-1" in user_data
    assert 'git clone --depth 1 --branch "main" "https://example.invalid/mtc.git"' in user_data
    assert "with_secrets.py --parameter /mtc/demo/secrets --region eu-west-1 -- /usr/bin/docker compose" in user_data


def test_ssh_is_opened_only_to_the_given_cidr(aws: boto3.Session) -> None:
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    deployment = provision(config(ssh_cidr="198.51.100.7/32"), session=aws)
    [group] = aws.client("ec2").describe_security_groups(GroupIds=deployment.security_group_ids)["SecurityGroups"]
    ssh = [(r["CidrIp"]) for p in group["IpPermissions"] if p["FromPort"] == 22 for r in p["IpRanges"]]
    assert ssh == ["198.51.100.7/32"]


def test_teardown_removes_everything_provision_created(aws: boto3.Session) -> None:
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    ec2, iam = aws.client("ec2"), aws.client("iam")
    groups_before = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    deployment = provision(config(), session=aws)
    assert find_deployment("demo", session=aws, region=REGION).exists()

    removed = teardown("demo", session=aws, region=REGION)
    assert removed.instance_ids == deployment.instance_ids

    state = ec2.describe_instances(InstanceIds=deployment.instance_ids)["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "terminated"
    assert {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]} == groups_before
    assert iam.list_instance_profiles()["InstanceProfiles"] == []
    assert [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("mtc-")] == []
    assert aws.client("ssm").describe_parameters()["Parameters"] == []  # the secrets go with the deployment
    assert not find_deployment("demo", session=aws, region=REGION).exists()
    # The buckets hold the models: never touched.
    assert {b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]} == {"models-bkt", "uploads-bkt"}


def test_refuses_missing_bucket_before_creating_anything(aws: boto3.Session) -> None:
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    with pytest.raises(DeployError, match="no-such-bucket"):
        provision(config(models_bucket="no-such-bucket"), session=aws)
    assert not find_deployment("demo", session=aws, region=REGION).exists()


def test_a_failed_launch_leaves_nothing_behind(aws: boto3.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    # g5 capacity runs out often: the launch fails after the role and the group exist.
    def no_capacity(*args: object, **kwargs: object) -> str:
        error = {"Error": {"Code": "InsufficientInstanceCapacity", "Message": "no g5.xlarge capacity"}}
        raise ClientError(error, "RunInstances")

    monkeypatch.setattr(deploy.ec2, "_run_instance", no_capacity)
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    with pytest.raises(ClientError, match="InsufficientInstanceCapacity"):
        provision(config(), session=aws)
    assert not find_deployment("demo", session=aws, region=REGION).exists()
    assert aws.client("iam").list_instance_profiles()["InstanceProfiles"] == []
    assert aws.client("ssm").describe_parameters()["Parameters"] == []


def test_refuses_a_second_deployment_with_the_same_name(aws: boto3.Session) -> None:
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    provision(config(), session=aws)
    with pytest.raises(DeployError, match="already exists"):
        provision(config(), session=aws)


def test_user_data_is_valid_bash_with_every_placeholder_filled() -> None:
    script = render_user_data(config(models_prefix="repo/v2", git_ref="release-1"))
    assert "${repo_url}" not in script and "$$" not in script
    assert "MTC_MODELS_PREFIX=repo/v2" in script and '--branch "release-1"' in script
    result = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr


def test_cli_up_status_down(aws: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    common = ["--name", "cli", "--region", REGION]
    # The CLI looks up Amazon-owned AMIs; moto's registered ones are the account's, so pass the id.
    ami = aws.client("ec2").describe_images(Owners=["self"])["Images"][0]["ImageId"]
    up = [*common, "--models-bucket", "models-bkt", "--uploads-bucket", "uploads-bkt", "--ami-id", ami]
    up += ["--allowed-cidr", "198.51.100.0/24"]
    assert deploy_cli(["up", *up, "--repo-url", "https://example.invalid/mtc.git"]) == 0
    out = capsys.readouterr().out
    assert "http://" in out and "python -m deploy keys --name cli --region eu-west-1" in out
    stored = json.loads(
        aws.client("ssm").get_parameter(Name="/mtc/cli/secrets", WithDecryption=True)["Parameter"]["Value"]
    )
    assert not any(value in out for value in stored.values()), "up must not print a secret"
    assert deploy_cli(["keys", *common]) == 0
    keys = capsys.readouterr().out
    assert json.loads(stored["MTC_API_API_KEYS"])[0] in keys and stored["MTC_DASHBOARD_PASSWORD"] in keys
    assert deploy_cli(["status", *common]) == 0
    assert json.loads(capsys.readouterr().out)["exists"] is True
    assert deploy_cli(["down", *common]) == 0
    capsys.readouterr()
    assert deploy_cli(["status", *common]) == 0
    assert json.loads(capsys.readouterr().out)["exists"] is False
    assert deploy_cli(["up", *up, "--repo-url", "x", "--models-bucket", "missing-bucket"]) == 1


# --- secure defaults: who can reach it, where the secrets are, what the role may do ---------------


@pytest.fixture
def checkip() -> Iterator[tuple[str, list[bytes]]]:
    """A local stand-in for checkip.amazonaws.com: answers with the body queued in the list (one per request)."""
    answers: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answers.pop(0) if answers else b"198.51.100.7\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", answers
    finally:
        server.shutdown()
        server.server_close()


def cli_up(aws: boto3.Session, *extra: str) -> int:
    ami = aws.client("ec2").describe_images(Owners=["self"])["Images"][0]["ImageId"]
    args = ["up", "--name", "sec", "--region", REGION, "--models-bucket", "models-bkt"]
    args += ["--uploads-bucket", "uploads-bkt", "--ami-id", ami, "--repo-url", "https://example.invalid/mtc.git"]
    return deploy_cli([*args, *extra])


def opened_to(aws: boto3.Session) -> set[tuple[int, str]]:
    deployment = find_deployment("sec", session=aws, region=REGION)
    [group] = aws.client("ec2").describe_security_groups(GroupIds=deployment.security_group_ids)["SecurityGroups"]
    ranges = set()
    for permission in group["IpPermissions"]:
        ranges |= {(permission["FromPort"], r["CidrIp"]) for r in permission.get("IpRanges", [])}
        ranges |= {(permission["FromPort"], r["CidrIpv6"]) for r in permission.get("Ipv6Ranges", [])}
    return ranges


def test_security_group_opens_only_to_the_callers_address_by_default(
    aws: boto3.Session, checkip: tuple[str, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    url, answers = checkip
    answers.append(b"198.51.100.7\n")
    assert cli_up(aws, "--checkip-url", url) == 0
    assert opened_to(aws) == {(API_PORT, "198.51.100.7/32"), (DASHBOARD_PORT, "198.51.100.7/32")}
    assert "allowed CIDR: 198.51.100.7/32 (your public address" in capsys.readouterr().err
    teardown("sec", session=aws, region=REGION)

    answers.append(b"2001:db8::7\n")  # an IPv6 caller gets a /128 in the IPv6 ranges
    assert cli_up(aws, "--checkip-url", url) == 0
    assert opened_to(aws) == {(API_PORT, "2001:db8::7/128"), (DASHBOARD_PORT, "2001:db8::7/128")}


def test_no_address_no_deployment(
    aws: boto3.Session, checkip: tuple[str, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    url, answers = checkip
    offline = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    assert cli_up(aws, "--checkip-url", offline) == 1
    assert "could not find your public address" in capsys.readouterr().err
    answers.append(b"<html>captive portal</html>")
    assert cli_up(aws, "--checkip-url", url) == 1
    assert "not an IP address; pass --allowed-cidr" in capsys.readouterr().err
    assert not find_deployment("sec", session=aws, region=REGION).exists()


def test_the_internet_only_when_asked_for_explicitly(aws: boto3.Session, capsys: pytest.CaptureFixture[str]) -> None:
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    for wide in ("0.0.0.0/0", "::/0", "0.0.0.0/1", "10.0.0.0/7"):
        assert cli_up(aws, "--allowed-cidr", wide) == 1
        assert "--i-know-this-is-public" in capsys.readouterr().err
    assert cli_up(aws, "--allowed-cidr", "203.0.113.7/24") == 1  # host bits set: a typo, not a network
    assert "is not a CIDR" in capsys.readouterr().err
    assert not find_deployment("sec", session=aws, region=REGION).exists()
    with pytest.raises(DeployError, match="whole internet"):
        provision(config(allowed_cidr="0.0.0.0/0"), session=aws)  # the library refuses too

    assert cli_up(aws, "--allowed-cidr", "0.0.0.0/0", "--i-know-this-is-public") == 0
    assert "warning: ports 8080 (API) and 5006 (dashboard) will be open to 0.0.0.0/0" in capsys.readouterr().err
    assert opened_to(aws) == {(API_PORT, "0.0.0.0/0"), (DASHBOARD_PORT, "0.0.0.0/0")}


def test_secrets_live_in_a_secure_string_never_in_user_data(aws: boto3.Session) -> None:
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    deployment = provision(config(), session=aws)
    ssm = aws.client("ssm")
    [parameter] = ssm.describe_parameters()["Parameters"]
    assert parameter["Name"] == deployment.secrets_parameter == "/mtc/demo/secrets"
    assert parameter["Type"] == "SecureString"
    stored = json.loads(ssm.get_parameter(Name="/mtc/demo/secrets", WithDecryption=True)["Parameter"]["Value"])
    assert set(stored) == {
        "MTC_API_API_KEYS",
        "MTC_DASHBOARD_API_KEY",
        "MTC_DASHBOARD_USERNAME",
        "MTC_DASHBOARD_PASSWORD",
        "MTC_DASHBOARD_COOKIE_SECRET",
    }
    client_key, dashboard_key = json.loads(stored["MTC_API_API_KEYS"])
    assert dashboard_key == stored["MTC_DASHBOARD_API_KEY"] != client_key
    assert min(len(client_key), len(dashboard_key), len(stored["MTC_DASHBOARD_PASSWORD"])) >= 24
    assert len(stored["MTC_DASHBOARD_COOKIE_SECRET"]) >= 32
    assert ssm.get_parameter(Name="/mtc/demo/secrets")["Parameter"]["Value"] != json.dumps(stored)  # encrypted

    [instance_id] = deployment.instance_ids
    encoded = aws.client("ec2").describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    user_data = base64.b64decode(encoded["UserData"]["Value"]).decode()
    secrets = [client_key, dashboard_key, stored["MTC_DASHBOARD_PASSWORD"], stored["MTC_DASHBOARD_COOKIE_SECRET"]]
    assert not [s for s in secrets if s in user_data]
    assert "MTC_API_API_KEYS" not in user_data and "/mtc/demo/secrets" in user_data
    # A second deployment gets other keys.
    provision(config(name="other"), session=aws)
    other = json.loads(ssm.get_parameter(Name="/mtc/other/secrets", WithDecryption=True)["Parameter"]["Value"])
    assert other["MTC_API_API_KEYS"] != stored["MTC_API_API_KEYS"]


def statements(aws: boto3.Session, role: str) -> list[dict[str, Any]]:
    policy = aws.client("iam").get_role_policy(RoleName=role, PolicyName="model-buckets")["PolicyDocument"]
    return list((json.loads(policy) if isinstance(policy, str) else policy)["Statement"])


def test_the_role_writes_only_under_the_uploads_prefix_and_reads_only_its_own_secret(aws: boto3.Session) -> None:
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    provision(config(), session=aws)
    provision(config(name="other"), session=aws)
    granted: dict[str, set[str]] = {}
    for statement in statements(aws, "mtc-demo"):
        assert statement["Effect"] == "Allow"
        if "Condition" in statement:  # only the listing is narrowed by a condition (the s3:prefix)
            assert statement["Action"] == ["s3:ListBucket"]
        for action in statement["Action"]:
            granted.setdefault(action, set()).update(statement["Resource"])
    assert granted["s3:PutObject"] == {"arn:aws:s3:::uploads-bkt/uploads/*"}  # never the models, never the bucket
    assert granted["s3:GetObject"] == {
        "arn:aws:s3:::uploads-bkt/uploads/*",
        "arn:aws:s3:::models-bkt/model_repository/*",
    }
    own = f"arn:aws:ssm:{REGION}:{DEFAULT_ACCOUNT_ID}:parameter/mtc/demo/secrets"
    assert granted["ssm:GetParameter"] == {own}
    assert not any("*" in action for action in granted)
    # Each deployment's role reads its own secret only.
    other = {r for s in statements(aws, "mtc-other") if "ssm:GetParameter" in s["Action"] for r in s["Resource"]}
    assert other == {own.replace("/demo/", "/other/")}
    # The role has no managed policies that could grant more.
    assert aws.client("iam").list_attached_role_policies(RoleName="mtc-demo")["AttachedPolicies"] == []


def test_models_and_uploads_must_be_two_buckets(aws: boto3.Session) -> None:
    register_gpu_ami(aws, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 1", "2024-10-01")
    with pytest.raises(DeployError, match="use two buckets"):
        provision(config(uploads_bucket="models-bkt"), session=aws)
    assert not find_deployment("demo", session=aws, region=REGION).exists()


def test_with_secrets_runs_the_command_with_the_parameters_variables(tmp_path: Path) -> None:
    """deploy/with_secrets.py as mtc.service runs it, with a stand-in `aws` CLI that prints the parameter."""
    script = Path(deploy.ec2.__file__).resolve().parent / "with_secrets.py"
    fake = tmp_path / "bin" / "aws"
    fake.parent.mkdir()
    calls = tmp_path / "calls"
    value = json.dumps({"MTC_API_API_KEYS": '["k-123456789012345678"]', "MTC_DASHBOARD_PASSWORD": "pw-123456789012"})
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {calls}\ncat <<'EOF'\n{value}\nEOF\n")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin"}
    command = [sys.executable, str(script), "--parameter", "/mtc/demo/secrets", "--region", REGION, "--"]
    shown = subprocess.run(
        [*command, "sh", "-c", 'echo "$MTC_API_API_KEYS|$MTC_DASHBOARD_PASSWORD"'],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == '["k-123456789012345678"]|pw-123456789012'
    assert calls.read_text().split()[:6] == ["ssm", "get-parameter", "--region", REGION, "--name", "/mtc/demo/secrets"]
    assert "--with-decryption" in calls.read_text()

    fake.write_text('#!/bin/sh\necho "An error occurred (AccessDeniedException)" >&2\nexit 254\n')
    denied = subprocess.run([*command, "true"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert denied.returncode == 1 and "AccessDeniedException" in denied.stderr
    fake.write_text('#!/bin/sh\necho \'{"PATH": "/tmp/evil"}\'\n')
    hostile = subprocess.run([*command, "true"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert hostile.returncode == 1 and "not MTC_* string variables: PATH" in hostile.stderr
