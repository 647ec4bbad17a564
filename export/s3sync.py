"""Push and pull a Triton model repository to and from ``s3://bucket/prefix`` with boto3.

- Only changed files move: a file is copied when its size or MD5 differs from the other side
  (uploads are single-part up to 5 GiB, so the S3 ETag is the MD5 of the object).
- Versions are kept: nothing is ever deleted on either side, so old model versions stay
  available in S3 for rollback and for Triton's version policy.
- A published version (``<model>/<n>/``) is immutable: ``push`` refuses to change a file of a version
  that is in the bucket, or to add one to a version whose ``manifest.json`` is there
  (:class:`ImmutableVersionError`, nothing uploaded; ``force=True`` overrides). Files a version lacks
  in the bucket are added (an interrupted push completes), and every ``manifest.json`` is uploaded
  after all other files, so a version with a manifest in the bucket is complete. Model-level files
  (``config.pbtxt``, ``labels.txt``, ``configs/``) and the raw-text models' single version, which
  :mod:`export.raw_text` rewrites on every publish, stay mutable.
- ``pull`` treats the bucket as hostile: a key that is not a plain relative path, or that would
  resolve outside the target folder, aborts the whole pull before anything is written
  (:class:`UnsafeKeyError`); versions with a manifest are checked against it (file list and sizes
  before downloading, SHA-256 after), and every download lands in a staging folder first, so a
  mismatch (:class:`ManifestMismatchError`) also leaves the target untouched.
- Works with AWS, MinIO or a local S3 server: set ``MTC_S3_ENDPOINT_URL`` and credentials.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tqdm import tqdm

from export.errors import ImmutableVersionError, ManifestMismatchError, UnsafeKeyError
from taskspec import MANIFEST_FILE, text_tasks
from taskspec.manifest import (
    IGNORED_NAMES,
    MAX_MANIFEST_BYTES,
    FileEntry,
    Manifest,
    ManifestError,
    file_entry,
    path_problem,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

# One PUT per file up to S3's single-part limit: keeps ETag == MD5 so changes are detectable.
_SINGLE_PART = TransferConfig(multipart_threshold=5 * 1024**3, multipart_chunksize=512 * 1024**2)
_VERSION = re.compile(r"(?P<version>[^/]+/[0-9]+)/(?P<name>.+)")


def mutable_version_models() -> frozenset[str]:
    """Models whose version folder is rewritten in place by design (export.raw_text), not published:
    the raw-text model of every text task known now (registered ones included)."""
    return frozenset(spec.raw_text_model_name for spec in text_tasks())


_LISTED = 20  # keys named in one error message; the rest are counted


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
    replaced: list[str] = field(default_factory=list)
    """Files of published versions overwritten by ``push(force=True)`` (also in ``copied``)."""

    def __str__(self) -> str:
        text = f"{len(self.copied)} copied, {len(self.unchanged)} unchanged"
        if self.replaced:
            text += f", {len(self.replaced)} replaced in published versions (--force)"
        return text


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
        if path.is_file() and not IGNORED_NAMES.intersection(path.relative_to(root).parts):
            yield path.relative_to(root).as_posix(), path


def remote_files(client: S3Client, location: S3Location) -> dict[str, tuple[int, str]]:
    """relative path -> (size, etag) of every object under the prefix."""
    prefix = f"{location.prefix}/" if location.prefix else ""
    found: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"][len(prefix) :]] = (int(obj["Size"]), str(obj["ETag"]).strip('"'))
    return found


def version_of(relative: str) -> tuple[str, str] | None:
    """``("<model>/<n>", "<name in the version>")`` for a file inside a version folder, else None."""
    match = _VERSION.fullmatch(relative)
    return (match["version"], match["name"]) if match else None


def is_published(version: str) -> bool:
    """A version folder that never changes once in the bucket (all but the raw-text models' one)."""
    return version.split("/", 1)[0] not in mutable_version_models()


def _listing(problems: Iterable[str]) -> str:
    items = list(problems)
    shown = "; ".join(items[:_LISTED])
    return shown + (f"; and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def key_problem(root: Path, relative: str) -> str | None:
    """Why the object ``relative`` (its key minus the repository prefix) may not be written under
    ``root``, or None. Lexical checks first (:func:`taskspec.manifest.path_problem`), then the resolved
    path, which catches a symlink inside ``root`` that points out of it."""
    problem = path_problem(relative)
    if problem is not None:
        return problem
    base = root.resolve()
    target = (base / relative).resolve()
    if target == base or not target.is_relative_to(base):
        return f"resolves to {target}, outside {base}"
    return None


def check_keys(root: Path, relatives: Iterable[str], url: str) -> None:
    """Raise :class:`UnsafeKeyError` naming every key that may not be written under ``root``."""
    unsafe = [(relative, problem) for relative in relatives if (problem := key_problem(root, relative)) is not None]
    if unsafe:
        raise UnsafeKeyError(
            f"refusing to pull {url}: {len(unsafe)} object key(s) are not plain paths inside {root} "
            f"(relative to the prefix): {_listing(f'{key!r} ({problem})' for key, problem in unsafe)}; "
            "nothing was written"
        )


def _remote_manifest(client: S3Client, location: S3Location, version: str, size: int) -> Manifest:
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{size} bytes (more than {MAX_MANIFEST_BYTES})")
    body = client.get_object(Bucket=location.bucket, Key=location.key(f"{version}/{MANIFEST_FILE}"))["Body"]
    return Manifest.from_json(body.read(MAX_MANIFEST_BYTES + 1))


def _md5_matches(path: Path, size: int, etag: str) -> bool:
    """Same content as the object, judged by size and (single-part) ETag = MD5."""
    return path.stat().st_size == size and "-" not in etag and _md5(path) == etag


def push(
    root: Path, url: str, client: S3Client | None = None, *, progress: bool = True, force: bool = False
) -> SyncReport:
    """Upload the files of ``root`` that S3 lacks or holds in another version.

    Refuses (:class:`ImmutableVersionError`, nothing uploaded) to change a file of a published version
    already in the bucket, or to add a file to one whose manifest is there, unless ``force``; refuses
    (:class:`ManifestMismatchError`) a local version that does not match its own manifest. Manifests
    go up last.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} does not exist")
    client = client or make_client()
    location = S3Location.parse(url)
    files = dict(local_files(root))
    _check_local_manifests(root, files)
    remote = remote_files(client, location)
    sealed = {v[0] for relative in remote if (v := version_of(relative)) and v[1] == MANIFEST_FILE}
    manifests: dict[str, Manifest | None] = {}

    def same_as_remote(relative: str, path: Path) -> bool:
        size, etag = remote[relative]
        if "-" not in etag or path.stat().st_size != size:
            return _md5_matches(path, size, etag)
        # A multipart upload (another tool): the ETag is no MD5; the version's manifest can still tell.
        in_version = version_of(relative)
        if in_version is None or in_version[0] not in sealed:
            return False
        version, name = in_version
        if version not in manifests:
            try:
                manifests[version] = _remote_manifest(
                    client, location, version, remote[f"{version}/{MANIFEST_FILE}"][0]
                )
            except ManifestError:
                manifests[version] = None
        manifest = manifests[version]
        entry = manifest.files.get(name) if manifest else None
        return entry is not None and file_entry(path) == entry

    upload, unchanged, conflicts = [], [], []
    for relative, path in files.items():
        in_version = version_of(relative)
        published = in_version is not None and is_published(in_version[0])
        if relative in remote:
            if same_as_remote(relative, path):
                unchanged.append(relative)
                continue
            if published:
                conflicts.append(f"{relative!r} (differs from the file in the bucket)")
        elif published and in_version is not None and in_version[0] in sealed:
            conflicts.append(f"{relative!r} (not in the published version, whose manifest is in the bucket)")
        upload.append(relative)
    if conflicts and not force:
        raise ImmutableVersionError(
            f"refusing to push to {url}: {len(conflicts)} file(s) would change published versions: "
            f"{_listing(conflicts)}; nothing was uploaded. Publish a new version instead "
            "(python -m export build), or pass --force to overwrite"
        )
    # Every manifest after every other file: a version whose manifest is in the bucket is complete.
    upload.sort(key=lambda relative: relative.rsplit("/", 1)[-1] == MANIFEST_FILE)
    for relative in tqdm(upload, desc=f"push {url}", unit="file", disable=not progress):
        client.upload_file(str(files[relative]), location.bucket, location.key(relative), Config=_SINGLE_PART)
    replaced = [r for r in upload if r in remote and (v := version_of(r)) is not None and is_published(v[0])]
    return SyncReport(upload, unchanged, replaced)


def _check_local_manifests(root: Path, files: dict[str, Path]) -> None:
    """Every local version with a manifest matches it: a wrong manifest would make every pull fail."""
    from taskspec.manifest import verify_version

    problems = []
    for relative in files:
        in_version = version_of(relative)
        if in_version is not None and in_version[1] == MANIFEST_FILE:
            try:
                found = verify_version(root / in_version[0])
            except ManifestError as exc:
                found = [str(exc)]
            problems += [f"{in_version[0]}: {problem}" for problem in found]
    if problems:
        raise ManifestMismatchError(
            f"local versions do not match their manifest.json: {_listing(problems)}; nothing was uploaded"
        )


def pull(url: str, root: Path, client: S3Client | None = None, *, progress: bool = True) -> SyncReport:
    """Download the objects under ``url`` that ``root`` lacks or holds in another version.

    All or nothing: unsafe keys (:class:`UnsafeKeyError`) and versions that do not match their
    manifest (:class:`ManifestMismatchError`) abort the pull with ``root`` as it was.
    """
    client = client or make_client()
    location = S3Location.parse(url)
    remote = remote_files(client, location)
    if not remote:
        raise FileNotFoundError(f"nothing under {url}")
    check_keys(root, remote, url)
    expected = _expected_hashes(client, location, remote, url)

    copied, unchanged = [], []
    for relative, (size, etag) in sorted(remote.items()):
        target = root / relative
        want = expected.get(relative)
        if target.is_file() and (
            file_entry(target) == want
            if want
            else target.stat().st_size == size and ("-" in etag or _md5(target) == etag)
        ):
            unchanged.append(relative)
        else:
            copied.append(relative)
    if not copied:
        return SyncReport(copied, unchanged)

    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    # Downloads land in a hidden staging folder on the same file system and are moved into place only
    # when every one of them is verified: a failed pull leaves the target as it was.
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=root))
    try:
        staged: list[tuple[Path, Path]] = []
        mismatches = []
        for index, relative in enumerate(tqdm(copied, desc=f"pull {url}", unit="file", disable=not progress)):
            partial = staging / str(index)
            client.download_file(location.bucket, location.key(relative), str(partial))
            want = expected.get(relative)
            if want is not None and (got := file_entry(partial)) != want:
                mismatches.append(
                    f"{relative!r} ({got.size} bytes, sha256 {got.sha256[:12]}...; manifest says "
                    f"{want.size} bytes, {want.sha256[:12]}...)"
                )
            staged.append((partial, root / relative))
        if mismatches:
            raise ManifestMismatchError(
                f"refusing to pull {url}: {len(mismatches)} file(s) do not match their version's manifest.json: "
                f"{_listing(mismatches)}; nothing was written"
            )
        for partial, target in staged:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(partial, 0o644)  # like a plain download: Triton in a container may run as another user
            partial.replace(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(root.iterdir()):
            root.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return SyncReport(copied, unchanged)


def _expected_hashes(
    client: S3Client, location: S3Location, remote: dict[str, tuple[int, str]], url: str
) -> dict[str, FileEntry]:
    """relative path -> manifest entry for every file of a version that has a manifest in the bucket.

    Checks what can be checked before downloading (the manifest parses, lists exactly the version's
    objects, with their sizes) and raises :class:`ManifestMismatchError` otherwise.
    """
    by_version: dict[str, dict[str, int]] = {}
    for relative, (size, _) in remote.items():
        in_version = version_of(relative)
        if in_version is not None:
            by_version.setdefault(in_version[0], {})[in_version[1]] = size
    expected: dict[str, FileEntry] = {}
    problems: list[str] = []
    for version, found in sorted(by_version.items()):
        manifest_size = found.pop(MANIFEST_FILE, None)
        if manifest_size is None:
            continue  # published before manifests existed, or a raw-text model's mutable version
        try:
            manifest = _remote_manifest(client, location, version, manifest_size)
        except ManifestError as exc:
            problems.append(f"{version}/{MANIFEST_FILE}: {exc}")
            continue
        problems += [f"{version}/{problem}" for problem in manifest.listing_mismatches(found)]
        expected.update({f"{version}/{name}": entry for name, entry in manifest.files.items()})
    if problems:
        raise ManifestMismatchError(
            f"refusing to pull {url}: versions in the bucket do not match their manifest.json: "
            f"{_listing(problems)}; nothing was written"
        )
    return expected
