"""Preprocessing artifacts of a served model version, read from the model repository.

Each published version carries ``preprocessing.json`` (labels, length buckets or image
normalisation) and, for text tasks, ``tokenizer.json``. The facade loads them for exactly the
version Triton serves, from the same repository (a local folder or ``s3://bucket/prefix``), never
from the network at request time: they are cached per (task, version).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from frontend_api.errors import ModelNotReady, StorageUnavailable
from preprocess.text import TextEncoder
from taskspec import PREPROCESSING_FILE, TOKENIZER_FILE, ImagePreprocessing, TaskSpec, TextPreprocessing


class ArtifactSource(Protocol):
    """Reads one file of the model repository (blocking; called in a worker thread)."""

    def read(self, relative: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        ...


@dataclass(frozen=True)
class LocalSource:
    root: Path

    def read(self, relative: str) -> bytes | None:
        path = self.root / relative
        return path.read_bytes() if path.is_file() else None


@dataclass(frozen=True)
class S3Source:
    """``s3://bucket/prefix`` through a boto3 client."""

    client: Any
    bucket: str
    prefix: str

    def read(self, relative: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = f"{self.prefix}/{relative}" if self.prefix else relative
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            return bytes(body.read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise StorageUnavailable(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc


def make_source(repository: str, s3_client: Any | None) -> ArtifactSource:
    """A source for a local path or an ``s3://bucket/prefix`` URL."""
    if repository.startswith("s3://"):
        if s3_client is None:
            raise ValueError("an s3:// model repository needs an S3 client")
        bucket, _, prefix = repository.removeprefix("s3://").partition("/")
        return S3Source(s3_client, bucket, prefix.strip("/"))
    return LocalSource(Path(repository))


@dataclass(frozen=True)
class TextArtifacts:
    labels: tuple[str, ...]
    encoder: TextEncoder
    """The version's tokenizer set up per its preprocessing (:mod:`preprocess.text`)."""


@dataclass(frozen=True)
class ImageArtifacts:
    labels: tuple[str, ...]
    preprocessing: ImagePreprocessing


Artifacts = TextArtifacts | ImageArtifacts


def parse_artifacts(spec: TaskSpec, version: str, preprocessing: bytes, tokenizer: bytes | None) -> Artifacts:
    """Build the artifacts of one version from the bytes of its files; raises :class:`ModelNotReady`."""
    where = f"{spec.name}/{version}"
    try:
        doc = json.loads(preprocessing)
        labels = tuple(str(label) for label in doc.get("labels", spec.labels))
        if len(labels) != spec.num_labels:
            raise ValueError(f"{len(labels)} labels, the task has {spec.num_labels}")
        if spec.modality == "text":
            if tokenizer is None:
                raise ValueError(f"{TOKENIZER_FILE} is missing")
            text = TextPreprocessing.from_document(doc["text"])
            return TextArtifacts(labels=labels, encoder=TextEncoder(tokenizer.decode("utf-8"), text))
        return ImageArtifacts(labels=labels, preprocessing=ImagePreprocessing.from_document(doc["image"]))
    except ModelNotReady:
        raise
    except Exception as exc:  # bad JSON, missing keys, or a tokenizer file `tokenizers` rejects (plain Exception)
        raise ModelNotReady(f"preprocessing artifacts of {where} are unusable: {exc}") from exc


class ArtifactStore:
    """Loads and caches :class:`TextArtifacts` / :class:`ImageArtifacts` per (task, version)."""

    def __init__(self, source: ArtifactSource) -> None:
        self.source = source
        self._cache: dict[tuple[str, str], Artifacts] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def _load(self, spec: TaskSpec, version: str) -> Artifacts:
        preprocessing = self.source.read(f"{spec.name}/{version}/{PREPROCESSING_FILE}")
        if preprocessing is None:
            raise ModelNotReady(f"{spec.name}/{version}/{PREPROCESSING_FILE} is missing from the model repository")
        tokenizer = self.source.read(f"{spec.name}/{version}/{TOKENIZER_FILE}") if spec.modality == "text" else None
        return parse_artifacts(spec, version, preprocessing, tokenizer)

    async def get(self, spec: TaskSpec, version: str) -> Artifacts:
        """The artifacts of ``spec``'s ``version`` (read once, in a worker thread)."""
        key = (spec.name, version)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            if cached is None:
                cached = await asyncio.to_thread(self._load, spec, version)
                self._cache[key] = cached
        return cached
