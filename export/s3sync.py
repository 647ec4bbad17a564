"""Push and pull a Triton model repository to and from ``s3://bucket/prefix`` with boto3.

- Only changed files move: a file is copied when its size or MD5 differs from the other side
  (uploads are single-part up to 5 GiB, so the S3 ETag is the MD5 of the object).
- Versions are kept: nothing is ever deleted on either side, so old model versions stay
  available in S3 for rollback and for Triton's version policy.
- Works with AWS, MinIO or the local moto server: set ``MTC_S3_ENDPOINT_URL`` and credentials.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tqdm import tqdm

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

# One PUT per file up to S3's single-part limit: keeps ETag == MD5 so changes are detectable.
_SINGLE_PART = TransferConfig(multipart_threshold=5 * 1024**3, multipart_chunksize=512 * 1024**2)
_SKIP_NAMES = {"__pycache__", ".DS_Store"}


class S3Settings(BaseSettings):
    """Where the model repository lives in S3 and how to reach it."""

    model_config = SettingsConfigDict(env_prefix="MTC_S3_", env_file=".env", extra="ignore")

    url: str = Field("s3://mtc-models/model_repository", description="s3://bucket/prefix of the model repository")
    endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, moto); unset for AWS")
    region: str = Field("us-east-1", description="AWS region")
    access_key_id: str | None = Field(None, description="Access key; unset to use the AWS default chain")
    secret_access_key: str | None = Field(None, description="Secret key; unset to use the AWS default chain")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        return cls(bucket=parsed.netloc, prefix=parsed.path.strip("/"))

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def triton_url(self, endpoint_url: str | None) -> str:
        """The ``--model-repository`` value for Triton (it takes the endpoint inside the URL)."""
        path = f"{self.bucket}/{self.prefix}".rstrip("/")
        if endpoint_url:
            return f"s3://{endpoint_url.rstrip('/')}/{path}"
        return f"s3://{path}"


@dataclass(frozen=True)
class SyncReport:
    copied: list[str]
    unchanged: list[str]

    def __str__(self) -> str:
        return f"{len(self.copied)} copied, {len(self.unchanged)} unchanged"


def make_client(settings: S3Settings | None = None) -> S3Client:
    """A boto3 S3 client that never touches the EC2 metadata address unless on AWS for real."""
    settings = settings or S3Settings()
    if settings.endpoint_url:
        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}),
    )


def ensure_bucket(client: S3Client, bucket: str) -> None:
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def local_files(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not _SKIP_NAMES.intersection(path.relative_to(root).parts):
            yield path.relative_to(root).as_posix(), path


def remote_files(client: S3Client, location: S3Location) -> dict[str, tuple[int, str]]:
    """relative path -> (size, etag) of every object under the prefix."""
    prefix = f"{location.prefix}/" if location.prefix else ""
    found: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"][len(prefix) :]] = (int(obj["Size"]), str(obj["ETag"]).strip('"'))
    return found


def push(root: Path, url: str, client: S3Client | None = None, *, progress: bool = True) -> SyncReport:
    """Upload the files of ``root`` that S3 lacks or holds in another version."""
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} does not exist")
    client = client or make_client()
    location = S3Location.parse(url)
    remote = remote_files(client, location)
    copied, unchanged = [], []
    files = list(local_files(root))
    for relative, path in tqdm(files, desc=f"push {url}", unit="file", disable=not progress):
        size = path.stat().st_size
        if remote.get(relative, (-1, ""))[0] == size and remote[relative][1] == _md5(path):
            unchanged.append(relative)
            continue
        client.upload_file(str(path), location.bucket, location.key(relative), Config=_SINGLE_PART)
        copied.append(relative)
    return SyncReport(copied, unchanged)


def pull(url: str, root: Path, client: S3Client | None = None, *, progress: bool = True) -> SyncReport:
    """Download the objects under ``url`` that ``root`` lacks or holds in another version."""
    client = client or make_client()
    location = S3Location.parse(url)
    remote = remote_files(client, location)
    if not remote:
        raise FileNotFoundError(f"nothing under {url}")
    copied, unchanged = [], []
    for relative, (size, etag) in tqdm(sorted(remote.items()), desc=f"pull {url}", unit="file", disable=not progress):
        target = root / relative
        if target.is_file() and target.stat().st_size == size and ("-" in etag or _md5(target) == etag):
            unchanged.append(relative)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        client.download_file(location.bucket, location.key(relative), str(partial))
        partial.replace(target)  # never leave a half-written model file behind
        copied.append(relative)
    return SyncReport(copied, unchanged)
