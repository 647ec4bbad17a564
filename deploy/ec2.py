"""Provision (and tear down) one EC2 GPU instance running the platform with docker compose.

What :func:`provision` creates, every resource tagged ``mtc:deployment=<name>``:

- the deployment's secrets: two API keys (clients, the dashboard) and the dashboard's login, generated
  here (``secrets.token_urlsafe``) and stored as one SSM Parameter Store SecureString
  ``/mtc/<name>/secrets`` (a JSON object of environment variables). The instance reads it at every start
  (``deploy/with_secrets.py``); no secret is in the user data, on the instance's disk or in this output;
- an IAM role + instance profile ``mtc-<name>`` whose only permissions are reading the model
  repository (``s3://<models_bucket>/<prefix>/*``), putting and getting objects under
  ``s3://<uploads_bucket>/uploads/`` (the facade signs presigned upload/download URLs with these
  credentials) and reading that one parameter;
- a security group ``mtc-<name>`` that opens only the facade (8080) and the dashboard (5006) to the
  allowed CIDR (the caller's own address by default, never the internet unless asked for), plus SSH
  (22) when an SSH CIDR is given. Triton's ports stay private;
- the instance: a GPU type (``g5.xlarge`` by default) on the newest *Deep Learning Base OSS Nvidia
  Driver GPU AMI (Ubuntu 22.04)*, IMDSv2 required with a hop limit of 1, an encrypted gp3 root volume,
  and user data (``deploy/userdata.sh``) that checks Docker and the NVIDIA container toolkit and
  starts the stack.

:func:`teardown` finds everything by that tag and deletes it in dependency order. Buckets are not
created or deleted here: they hold the models and outlive any one instance.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import string
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient
else:
    EC2Client = IAMClient = S3Client = SSMClient = Any

log = logging.getLogger(__name__)

USERDATA_TEMPLATE = Path(__file__).resolve().parent / "userdata.sh"
TAG_KEY = "mtc:deployment"
# AWS's GPU Deep Learning Base AMI: NVIDIA driver, Docker and the NVIDIA container toolkit preinstalled.
DEFAULT_AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
DEFAULT_AMI_OWNERS = ("amazon",)
API_PORT = 8080
DASHBOARD_PORT = 5006
SSH_PORT = 22
UPLOADS_PREFIX = "uploads/"
"""Where the facade puts presigned uploads (``frontend_api.uploads``: ``uploads/<uuid>.<ext>``); the role may
put and get objects there and nowhere else in the uploads bucket."""
CHECKIP_URL = "https://checkip.amazonaws.com"
"""Answers with the caller's public IPv4 address: the default allowed CIDR is that address /32."""
PUBLIC_PREFIX_LENGTH = 8
"""A CIDR broader than this (0.0.0.0/0, ::/0, a /7 ...) counts as the internet: ``allow_public`` must be set."""
DASHBOARD_USER = "admin"


class DeployError(RuntimeError):
    """Provisioning cannot go on; the message says what to fix."""


@dataclass(frozen=True)
class DeployConfig:
    """Everything :func:`provision` needs. Only the deployment name and the buckets are required."""

    name: str
    models_bucket: str
    uploads_bucket: str
    allowed_cidr: str
    """Who may reach the API and the dashboard (the CLI's default: the caller's public address /32)."""
    allow_public: bool = False
    """Required to open the API and the dashboard to a CIDR broader than a /8 (e.g. 0.0.0.0/0)."""
    region: str = "us-east-1"
    models_prefix: str = "model_repository"
    instance_type: str = "g5.xlarge"
    ssh_cidr: str | None = None
    """Open port 22 to this CIDR; None keeps SSH closed (use SSM Session Manager instead)."""
    key_name: str | None = None
    ami_id: str | None = None
    """A specific AMI; None looks up the newest one named ``ami_name`` owned by ``ami_owners``."""
    ami_name: str = DEFAULT_AMI_NAME
    ami_owners: tuple[str, ...] = DEFAULT_AMI_OWNERS
    subnet_id: str | None = None
    """None uses the default VPC's default subnet."""
    root_volume_gb: int = 100
    repo_url: str = "https://github.com/your-org/mtc-platform.git"
    git_ref: str = "main"

    @property
    def resource_name(self) -> str:
        return f"mtc-{self.name}"

    @property
    def secrets_parameter(self) -> str:
        return secrets_parameter_name(self.name)


def secrets_parameter_name(name: str) -> str:
    """The SSM parameter holding a deployment's secrets."""
    return f"/mtc/{name}/secrets"


@dataclass
class Deployment:
    """The resources of one deployment (as created, or as found by tag)."""

    name: str
    region: str
    instance_ids: list[str] = field(default_factory=list)
    security_group_ids: list[str] = field(default_factory=list)
    role_name: str | None = None
    instance_profile_name: str | None = None
    instance_profile_arn: str | None = None
    public_ip: str | None = None
    secrets_parameter: str | None = None

    def exists(self) -> bool:
        """Whether any resource of this deployment is still there."""
        return bool(
            self.instance_ids
            or self.security_group_ids
            or self.role_name
            or self.instance_profile_name
            or self.secrets_parameter
        )

    def urls(self) -> dict[str, str]:
        host = self.public_ip or "<public-ip>"
        return {"api": f"http://{host}:{API_PORT}/docs", "dashboard": f"http://{host}:{DASHBOARD_PORT}/app"}


def _tags(config: DeployConfig) -> list[dict[str, str]]:
    return [{"Key": TAG_KEY, "Value": config.name}, {"Key": "Name", "Value": config.resource_name}]


def render_user_data(config: DeployConfig) -> str:
    """The first-boot script with this deployment's settings filled in (unknown placeholders raise).

    It names the secrets parameter, never a secret: user data is readable by anyone who may describe
    the instance, and by every process on it through the metadata service.
    """
    template = string.Template(USERDATA_TEMPLATE.read_text())
    return template.substitute(
        region=config.region,
        models_bucket=config.models_bucket,
        models_prefix=config.models_prefix,
        uploads_bucket=config.uploads_bucket,
        repo_url=config.repo_url,
        git_ref=config.git_ref,
        secrets_parameter=config.secrets_parameter,
    )


def check_allowed_cidr(cidr: str, *, allow_public: bool) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The allowed CIDR as a network; a malformed one, or one broader than a /8 without ``allow_public``,
    raises :class:`DeployError`."""
    try:
        network = ipaddress.ip_network(cidr.strip(), strict=True)
    except ValueError as exc:
        raise DeployError(f"--allowed-cidr {cidr!r} is not a CIDR such as 203.0.113.7/32 ({exc})") from None
    if network.prefixlen < PUBLIC_PREFIX_LENGTH and not allow_public:
        raise DeployError(
            f"--allowed-cidr {network} opens the API and the dashboard to (nearly) the whole internet; "
            "use your own address (the default), or add --i-know-this-is-public if that is what you want"
        )
    return network


def discover_caller_cidr(url: str = CHECKIP_URL, *, timeout_s: float = 10.0) -> str:
    """The caller's public address as a /32 (or /128), as ``url`` reports it (checkip's plain-text answer)."""
    if not url.startswith(("https://", "http://")):
        raise DeployError(f"--checkip-url {url!r} must be an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            answer = response.read(64).decode("ascii", "replace").strip()
    except (urllib.error.URLError, OSError) as exc:
        raise DeployError(
            f"could not find your public address at {url} ({exc}); pass --allowed-cidr <your-ip>/32"
        ) from None
    try:
        address = ipaddress.ip_address(answer)
    except ValueError:
        raise DeployError(
            f"{url} answered {answer[:40]!r}, not an IP address; pass --allowed-cidr <your-ip>/32"
        ) from None
    return f"{address}/{address.max_prefixlen}"


def generate_secrets() -> dict[str, str]:
    """Fresh credentials, as the environment variables the facade and the dashboard read.

    Two API keys, so the dashboard's can be revoked apart from the one handed to clients (the first);
    the dashboard's login (it is served beyond loopback) and the key that signs its login cookie.
    """
    client_key, dashboard_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    return {
        "MTC_API_API_KEYS": json.dumps([client_key, dashboard_key]),
        "MTC_DASHBOARD_API_KEY": dashboard_key,
        "MTC_DASHBOARD_USERNAME": DASHBOARD_USER,
        "MTC_DASHBOARD_PASSWORD": secrets.token_urlsafe(18),
        "MTC_DASHBOARD_COOKIE_SECRET": secrets.token_urlsafe(48),
    }


def parameter_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:ssm:{region}:{account}:parameter/{name.lstrip('/')}"


def instance_policy(config: DeployConfig, account: str) -> dict[str, Any]:
    """Least privilege for the instance: read the model repository, put/get uploads under their prefix,
    read this deployment's secrets parameter; nothing else."""
    models = f"arn:aws:s3:::{config.models_bucket}"
    uploads = f"arn:aws:s3:::{config.uploads_bucket}"
    prefix = config.models_prefix.strip("/")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                # Its own statement: a GetBucketLocation request has no s3:prefix, so the condition below
                # would deny it.
                "Sid": "FindTheBuckets",
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation"],
                "Resource": [models, uploads],
            },
            {
                "Sid": "ListModelRepository",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [models],
                "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}},
            },
            {
                "Sid": "ReadModelRepository",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"{models}/{prefix}/*"],
            },
            {
                "Sid": "PresignedUploads",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:GetObject"],
                "Resource": [f"{uploads}/{UPLOADS_PREFIX}*"],
            },
            {
                # The SecureString uses the AWS managed key aws/ssm, whose key policy lets the account's
                # principals decrypt through SSM: no kms:Decrypt grant is needed here.
                "Sid": "ReadDeploymentSecrets",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter"],
                "Resource": [parameter_arn(config.region, account, config.secrets_parameter)],
            },
        ],
    }


EC2_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def find_ami(ec2: EC2Client, config: DeployConfig) -> str:
    """The given AMI, or the newest available one matching the configured name pattern."""
    if config.ami_id:
        return config.ami_id
    images = ec2.describe_images(
        Owners=list(config.ami_owners),
        Filters=[
            {"Name": "name", "Values": [config.ami_name]},
            {"Name": "state", "Values": ["available"]},
            {"Name": "architecture", "Values": ["x86_64"]},
        ],
    )["Images"]
    if not images:
        raise DeployError(
            f"no AMI named {config.ami_name!r} owned by {list(config.ami_owners)} in {config.region}; pass --ami-id"
        )
    newest = max(images, key=lambda image: image.get("CreationDate", ""))
    return str(newest["ImageId"])


def check_buckets(s3: S3Client, config: DeployConfig) -> None:
    """Fail before creating anything when a bucket is missing (a typo costs a GPU-hour otherwise), or when
    models and uploads share one: anyone may upload, and the model repository holds code Triton runs."""
    if config.models_bucket == config.uploads_bucket:
        raise DeployError(
            f"the models bucket and the uploads bucket are both {config.models_bucket!r}: use two buckets "
            "(uploads come from anyone with an API key; the model repository must stay read-only)"
        )
    for bucket in (config.models_bucket, config.uploads_bucket):
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            raise DeployError(
                f"bucket {bucket!r} is not reachable ({exc}); create it first (docs/deployment.md)"
            ) from exc


def _default_vpc(ec2: EC2Client, subnet_id: str | None) -> tuple[str, str | None]:
    if subnet_id:
        subnet = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]
        return str(subnet["VpcId"]), subnet_id
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise DeployError("this region has no default VPC: pass --subnet-id")
    return str(vpcs[0]["VpcId"]), None


def _create_security_group(ec2: EC2Client, config: DeployConfig, vpc_id: str) -> str:
    group = ec2.create_security_group(
        GroupName=config.resource_name,
        Description=f"mtc platform {config.name}: API and dashboard only",
        VpcId=vpc_id,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(config)}],
    )
    group_id = str(group["GroupId"])
    allowed = check_allowed_cidr(config.allowed_cidr, allow_public=config.allow_public)
    rules = [(API_PORT, allowed, "REST API"), (DASHBOARD_PORT, allowed, "dashboard")]
    if config.ssh_cidr:
        rules.append((SSH_PORT, check_allowed_cidr(config.ssh_cidr, allow_public=False), "SSH"))
    permissions: list[Any] = []
    for port, network, what in rules:
        permission: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": port, "ToPort": port}
        if network.version == 4:
            permission["IpRanges"] = [{"CidrIp": str(network), "Description": what}]
        else:
            permission["Ipv6Ranges"] = [{"CidrIpv6": str(network), "Description": what}]
        permissions.append(permission)
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=permissions)
    return group_id


def _store_secrets(ssm: SSMClient, config: DeployConfig) -> str:
    """Generate the deployment's secrets and keep them in one SecureString; returns its name."""
    ssm.put_parameter(
        Name=config.secrets_parameter,
        Description=f"mtc platform {config.name}: API keys and dashboard login (environment variables, JSON)",
        Value=json.dumps(generate_secrets()),
        Type="SecureString",
        Tags=_tags(config),
    )
    return config.secrets_parameter


def read_secrets(name: str, *, session: boto3.Session | None = None, region: str = "us-east-1") -> dict[str, str]:
    """The environment variables stored for deployment ``name`` (decrypted; needs ssm:GetParameter)."""
    session = session or boto3.Session(region_name=region)
    ssm: SSMClient = session.client("ssm", region_name=region)
    try:
        value = ssm.get_parameter(Name=secrets_parameter_name(name), WithDecryption=True)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        raise DeployError(f"deployment {name!r} has no secrets parameter in {region}") from None
    return {str(k): str(v) for k, v in json.loads(value).items()}


def _create_instance_profile(iam: IAMClient, config: DeployConfig, account: str) -> tuple[str, str]:
    name = config.resource_name
    tags = [{"Key": t["Key"], "Value": t["Value"]} for t in _tags(config)]
    iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=json.dumps(EC2_TRUST_POLICY),
        Description=f"mtc platform {config.name}: read the model repository and its secrets, sign upload URLs",
        Tags=tags,
    )
    policy = json.dumps(instance_policy(config, account))
    iam.put_role_policy(RoleName=name, PolicyName="model-buckets", PolicyDocument=policy)
    profile = iam.create_instance_profile(InstanceProfileName=name, Tags=tags)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name, str(profile["Arn"])


def root_device(ec2: EC2Client, ami: str) -> str:
    """The AMI's root device name (the encrypted, resized root volume must use it)."""
    images = ec2.describe_images(ImageIds=[ami])["Images"]
    if not images:
        raise DeployError(f"AMI {ami} not found in this region")
    return str(images[0].get("RootDeviceName") or "/dev/sda1")


def _run_instance(ec2: EC2Client, config: DeployConfig, ami: str, group_id: str, profile_arn: str) -> str:
    kwargs: dict[str, Any] = {
        "ImageId": ami,
        "InstanceType": config.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "SecurityGroupIds": [group_id],
        "IamInstanceProfile": {"Arn": profile_arn},
        "UserData": render_user_data(config),
        # IMDSv2 only, and a hop limit of 1: a container on a bridge network cannot reach the
        # instance credentials (docker-compose.aws.yml puts the services that need them on the host network).
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [
            {
                "DeviceName": root_device(ec2, ami),
                "Ebs": {"VolumeSize": config.root_volume_gb, "VolumeType": "gp3", "Encrypted": True},
            }
        ],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": _tags(config)},
            {"ResourceType": "volume", "Tags": _tags(config)},
        ],
    }
    if config.subnet_id:
        kwargs["SubnetId"] = config.subnet_id
    if config.key_name:
        kwargs["KeyName"] = config.key_name
    # A new instance profile takes a few seconds to become usable by EC2 (IAM is eventually consistent).
    for attempt in range(10):
        try:
            reservation = ec2.run_instances(**kwargs)
            return str(reservation["Instances"][0]["InstanceId"])
        except ClientError as exc:
            if "InvalidParameterValue" not in str(exc) or "iamInstanceProfile" not in str(exc) or attempt == 9:
                raise
            time.sleep(3)
    raise DeployError("unreachable")


def provision(
    config: DeployConfig,
    *,
    session: boto3.Session | None = None,
    wait: bool = True,
) -> Deployment:
    """Create the instance profile, security group and instance; on any failure remove what was created."""
    session = session or boto3.Session(region_name=config.region)
    ec2: EC2Client = session.client("ec2", region_name=config.region)
    iam: IAMClient = session.client("iam", region_name=config.region)
    s3: S3Client = session.client("s3", region_name=config.region)
    ssm: SSMClient = session.client("ssm", region_name=config.region)

    check_allowed_cidr(config.allowed_cidr, allow_public=config.allow_public)
    if config.ssh_cidr:
        check_allowed_cidr(config.ssh_cidr, allow_public=False)
    if find_deployment(config.name, session=session, region=config.region).exists():
        raise DeployError(f"deployment {config.name!r} already exists: tear it down first or pick another name")
    check_buckets(s3, config)
    ami = find_ami(ec2, config)
    vpc_id, _ = _default_vpc(ec2, config.subnet_id)
    account = str(session.client("sts", region_name=config.region).get_caller_identity()["Account"])

    deployment = Deployment(name=config.name, region=config.region)
    try:
        deployment.secrets_parameter = _store_secrets(ssm, config)
        deployment.role_name, deployment.instance_profile_arn = _create_instance_profile(iam, config, account)
        deployment.instance_profile_name = deployment.role_name
        deployment.security_group_ids.append(_create_security_group(ec2, config, vpc_id))
        instance_id = _run_instance(ec2, config, ami, deployment.security_group_ids[0], deployment.instance_profile_arn)
        deployment.instance_ids.append(instance_id)
        if wait:
            ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id])
        described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        deployment.public_ip = described.get("PublicIpAddress")
    except BaseException:
        log.error("provisioning %s failed: removing what was created", config.name)
        teardown(config.name, session=session, region=config.region)
        raise
    return deployment


def find_deployment(name: str, *, session: boto3.Session | None = None, region: str = "us-east-1") -> Deployment:
    """The resources tagged ``mtc:deployment=<name>`` (instances not yet terminated)."""
    session = session or boto3.Session(region_name=region)
    ec2: EC2Client = session.client("ec2", region_name=region)
    iam: IAMClient = session.client("iam", region_name=region)
    tag_filter = [{"Name": f"tag:{TAG_KEY}", "Values": [name]}]
    deployment = Deployment(name=name, region=region)
    live = ["pending", "running", "stopping", "stopped", "shutting-down"]
    state_filter = {"Name": "instance-state-name", "Values": live}
    for reservation in ec2.describe_instances(Filters=[*tag_filter, state_filter])["Reservations"]:
        for instance in reservation["Instances"]:
            deployment.instance_ids.append(str(instance["InstanceId"]))
            deployment.public_ip = deployment.public_ip or instance.get("PublicIpAddress")
    deployment.security_group_ids = [
        str(g["GroupId"]) for g in ec2.describe_security_groups(Filters=tag_filter)["SecurityGroups"]
    ]
    resource_name = f"mtc-{name}"
    try:
        tags = iam.list_role_tags(RoleName=resource_name)["Tags"]
        if any(t["Key"] == TAG_KEY and t["Value"] == name for t in tags):
            deployment.role_name = resource_name
    except iam.exceptions.NoSuchEntityException:
        pass
    try:
        profile = iam.get_instance_profile(InstanceProfileName=resource_name)["InstanceProfile"]
        if any(t["Key"] == TAG_KEY and t["Value"] == name for t in profile.get("Tags", [])) or any(
            r["RoleName"] == resource_name for r in profile.get("Roles", [])
        ):
            deployment.instance_profile_name = resource_name
            deployment.instance_profile_arn = str(profile["Arn"])
    except iam.exceptions.NoSuchEntityException:
        pass
    ssm: SSMClient = session.client("ssm", region_name=region)
    parameter = secrets_parameter_name(name)
    try:
        tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=parameter)["TagList"]
        if any(t["Key"] == TAG_KEY and t["Value"] == name for t in tags):
            deployment.secrets_parameter = parameter
    except ssm.exceptions.InvalidResourceId:
        pass
    return deployment


def teardown(name: str, *, session: boto3.Session | None = None, region: str = "us-east-1") -> Deployment:
    """Delete everything :func:`provision` created for ``name``; returns what was found and removed."""
    session = session or boto3.Session(region_name=region)
    ec2: EC2Client = session.client("ec2", region_name=region)
    iam: IAMClient = session.client("iam", region_name=region)
    found = find_deployment(name, session=session, region=region)
    if found.instance_ids:
        ec2.terminate_instances(InstanceIds=found.instance_ids)
        # The security group cannot be deleted while an instance still uses it.
        ec2.get_waiter("instance_terminated").wait(InstanceIds=found.instance_ids)
    for group_id in found.security_group_ids:
        ec2.delete_security_group(GroupId=group_id)
    if found.instance_profile_name:
        profile = iam.get_instance_profile(InstanceProfileName=found.instance_profile_name)["InstanceProfile"]
        for role in profile.get("Roles", []):
            iam.remove_role_from_instance_profile(
                InstanceProfileName=found.instance_profile_name, RoleName=role["RoleName"]
            )
        iam.delete_instance_profile(InstanceProfileName=found.instance_profile_name)
    if found.role_name:
        for policy_name in iam.list_role_policies(RoleName=found.role_name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=found.role_name, PolicyName=policy_name)
        iam.delete_role(RoleName=found.role_name)
    if found.secrets_parameter:
        session.client("ssm", region_name=region).delete_parameter(Name=found.secrets_parameter)
    return found
