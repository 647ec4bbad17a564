"""Where a job reads and writes: a local path or ``s3://bucket/key``, through pyarrow's file systems.

Locations are hostile input (a REST job API will take them from clients): an ``s3://`` location must name
a bucket in ``MTC_BATCH_ALLOWED_BUCKETS`` and a plain key (no ``.``/``..`` segments, no empty segments, no
control characters); nothing else is ever reached. S3 is pyarrow's :class:`~pyarrow.fs.S3FileSystem`
pointed at ``MTC_BATCH_S3_ENDPOINT_URL`` (path-style), with credentials from the AWS chain. Every object
this module writes appears whole or not at all: an S3 PUT completes on close, a local file is written
beside its name and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from batch.errors import InvalidJob, JobStorageError
from batch.jobstate import CONTROL_CHARACTERS, key_problem
from batch.settings import BatchSettings


@dataclass(frozen=True)
class S3Access:
    """How to reach S3 (picklable: read tasks on Ray workers open their own file system with it)."""

    endpoint_url: str | None
    region: str

    def filesystem(self) -> pafs.FileSystem:
        if self.endpoint_url:
            endpoint = urlparse(self.endpoint_url)
            os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # a custom endpoint is never on EC2's IMDS
            return pafs.S3FileSystem(
                region=self.region,
                endpoint_override=endpoint.netloc,
                scheme=endpoint.scheme or "https",
                force_virtual_addressing=False,
            )
        return pafs.S3FileSystem(region=self.region)


@dataclass(frozen=True)
class Location:
    """A file or folder: a local path, or a key (prefix) in an allowed bucket."""

    uri: str
    path: str
    """The path pyarrow's file system takes: absolute local path, or ``bucket/key``."""
    s3: S3Access | None = None

    @property
    def is_s3(self) -> bool:
        return self.s3 is not None

    def filesystem(self) -> pafs.FileSystem:
        return self.s3.filesystem() if self.s3 is not None else pafs.LocalFileSystem()

    def child(self, *names: str) -> Location:
        """A location inside this one (``names`` are the runner's own, never a client's)."""
        suffix = "/".join(names)
        return Location(f"{self.uri.rstrip('/')}/{suffix}", f"{self.path.rstrip('/')}/{suffix}", self.s3)


def parse_location(uri: str, settings: BatchSettings, *, what: str = "location") -> Location:
    """``uri`` checked: ``s3://bucket/key`` in an allowed bucket, or a local path; raises :class:`InvalidJob`."""
    if not uri or CONTROL_CHARACTERS.search(uri):
        raise InvalidJob(f"the {what} is empty or holds control characters")
    if "://" in uri:
        parsed = urlparse(uri)
        if parsed.scheme != "s3":
            raise InvalidJob(f"the {what} {uri!r} is neither a local path nor s3://bucket/key")
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        if parsed.query or parsed.fragment or parsed.params or "@" in bucket:
            raise InvalidJob(f"the {what} {uri!r} is not a plain s3://bucket/key")
        if bucket not in settings.allowed_buckets:
            allowed = ", ".join(settings.allowed_buckets) or "none (set MTC_BATCH_ALLOWED_BUCKETS)"
            raise InvalidJob(f"bucket {bucket!r} of the {what} is not allowed; allowed buckets: {allowed}")
        if not key:
            raise InvalidJob(f"the {what} {uri!r} names a whole bucket; give a key or a prefix in it")
        problem = key_problem(key)
        if problem:
            raise InvalidJob(f"the {what} {uri!r} has {problem} in its key")
        key = key.rstrip("/")  # a prefix: pyarrow names it without the slash
        return Location(
            f"s3://{bucket}/{key}", f"{bucket}/{key}", S3Access(settings.s3_endpoint_url, settings.s3_region)
        )
    return Location(uri, str(Path(uri).expanduser().resolve()))


@dataclass(frozen=True)
class FileEntry:
    """One input file as found: its path, size and modification time (what tells a changed input)."""

    path: str
    size: int
    mtime_ns: int


def file_info(location: Location) -> pafs.FileInfo:
    try:
        return location.filesystem().get_file_info(location.path)
    except OSError as exc:
        raise JobStorageError(f"cannot read {location.uri}: {exc}") from exc


def list_files(location: Location, suffixes: tuple[str, ...]) -> list[FileEntry]:
    """The file ``location`` names, or every file under it ending in one of ``suffixes`` (names starting with
    ``_`` or ``.`` skipped), sorted by path."""
    info = file_info(location)
    fs = location.filesystem()
    if info.type == pafs.FileType.File:
        infos = [info]
    elif info.type == pafs.FileType.Directory:
        try:
            listed = fs.get_file_info(pafs.FileSelector(location.path, recursive=True))
        except OSError as exc:
            raise JobStorageError(f"cannot list {location.uri}: {exc}") from exc
        infos = [
            i
            for i in listed
            if i.type == pafs.FileType.File
            and i.path.lower().endswith(suffixes)
            and not any(part.startswith(("_", ".")) for part in i.path[len(location.path) :].split("/"))
        ]
    else:
        raise InvalidJob(f"the input {location.uri} does not exist")
    return sorted(
        (FileEntry(i.path, int(i.size or 0), int(i.mtime_ns or 0)) for i in infos),
        key=lambda entry: entry.path,
    )


def read_bytes(location: Location) -> bytes | None:
    """The whole object, or None when it does not exist."""
    fs = location.filesystem()
    try:
        if fs.get_file_info(location.path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(location.path) as stream:
            return bytes(stream.read())
    except OSError as exc:
        raise JobStorageError(f"cannot read {location.uri}: {exc}") from exc


def write_bytes(location: Location, data: bytes) -> None:
    """Write ``data`` so that readers see the old object or the whole new one, never a part of it."""
    fs = location.filesystem()
    try:
        if location.is_s3:
            with fs.open_output_stream(location.path) as stream:  # the PUT completes on close
                stream.write(data)
            return
        target = Path(location.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with scratch.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(scratch, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                scratch.unlink()
    except OSError as exc:
        raise JobStorageError(f"cannot write {location.uri}: {exc}") from exc


def list_names(location: Location) -> list[str]:
    """Names of the files directly in the folder ``location`` (empty when it does not exist)."""
    fs = location.filesystem()
    try:
        if fs.get_file_info(location.path).type != pafs.FileType.Directory:
            return []
        listed = fs.get_file_info(pafs.FileSelector(location.path, recursive=False, allow_not_found=True))
    except OSError as exc:
        raise JobStorageError(f"cannot list {location.uri}: {exc}") from exc
    return sorted(i.base_name for i in listed if i.type == pafs.FileType.File)
