"""deploy/ec2.py against moto's EC2, IAM and S3: what a real `python -m deploy up/down` would create."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime

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
        "arn:aws:s3:::models-bkt/model_repository/*",
        "arn:aws:s3:::uploads-bkt/*",
    }
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:PutObject"}
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
    assert deploy_cli(["up", *up, "--repo-url", "https://example.invalid/mtc.git"]) == 0
    assert "http://" in capsys.readouterr().out
    assert deploy_cli(["status", *common]) == 0
    assert json.loads(capsys.readouterr().out)["exists"] is True
    assert deploy_cli(["down", *common]) == 0
    capsys.readouterr()
    assert deploy_cli(["status", *common]) == 0
    assert json.loads(capsys.readouterr().out)["exists"] is False
    assert deploy_cli(["up", *up, "--repo-url", "x", "--models-bucket", "missing-bucket"]) == 1
