"""Preprocessing artifacts of a served model version, read from the model repository.

Each published version carries ``preprocessing.json`` (labels, length buckets or image
normalisation) and, for text tasks, ``tokenizer.json``. The facade loads them for exactly the
version Triton serves, from the same repository (a local folder or ``s3://bucket/prefix``), never
from the network at request time.

They are cached per (task, version, content identity), so a version republished with other files
is picked up at the next refresh of the served version (``model_refresh_s``), never served stale:

- a version with ``manifest.json`` (``{"format": 1, "files": {name: {"sha256", "size"}}, "digest"}``,
  written by ``export publish``) is identified by its ``digest`` (sha256 of the canonical JSON of
  ``files``); the facade re-reads this small file at every refresh, checks the digest, and checks
  the sha256 of every artifact it loads against it (a mismatch is 503, never cached);
- a version without one (published before manifests existed) is identified by the stat of the
  files the facade reads: the S3 ETag (an MD5 of the object for single-part uploads, which
  ``export push`` makes) or the local mtime and size. One HEAD (or stat) per file and refresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from frontend_api.errors import ModelNotReady, StorageUnavailable
from preprocess.text import TextEncoder
from taskspec import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PREPROCESSING_FILE,
    TOKENIZER_FILE,
    TOP_PROBABILITY_BUCKETS,
    ImagePreprocessing,
    TaskSpec,
    TextPreprocessing,
)
from taskspec.manifest import Manifest, ManifestError


class ArtifactSource(Protocol):
    """Reads one file of the model repository (blocking; called in a worker thread)."""

    def read(self, relative: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        ...

    def fingerprint(self, relative: str) -> str | None:
        """Something that changes when the file's content does (ETag, mtime + size), or None when absent."""
        ...


@dataclass(frozen=True)
class LocalSource:
    root: Path

    def read(self, relative: str) -> bytes | None:
        path = self.root / relative
        return path.read_bytes() if path.is_file() else None

    def fingerprint(self, relative: str) -> str | None:
        try:
            stat = (self.root / relative).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return f"{stat.st_mtime_ns}:{stat.st_size}"


@dataclass(frozen=True)
class S3Source:
    """``s3://bucket/prefix`` through a boto3 client."""

    client: Any
    bucket: str
    prefix: str

    def read(self, relative: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(relative)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            return bytes(body.read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise StorageUnavailable(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc

    def fingerprint(self, relative: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(relative)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise StorageUnavailable(f"cannot stat s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"cannot stat s3://{self.bucket}/{key}: {exc}") from exc
        return f"{head.get('ETag', '')}:{head.get('ContentLength', '')}"

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative


def make_source(repository: str, s3_client: Any | None) -> ArtifactSource:
    """A source for a local path or an ``s3://bucket/prefix`` URL."""
    if repository.startswith("s3://"):
        if s3_client is None:
            raise ValueError("an s3:// model repository needs an S3 client")
        bucket, _, prefix = repository.removeprefix("s3://").partition("/")
        return S3Source(s3_client, bucket, prefix.strip("/"))
    return LocalSource(Path(repository))


@dataclass(frozen=True)
class VersionContent:
    """What identifies the content of one published version: its manifest digest, or file stats."""

    identity: str
    sha256: Mapping[str, str]
    """File name -> sha256 from the manifest (empty without one): loaded artifacts are checked against it."""


def parse_manifest(data: bytes, where: str) -> VersionContent:
    """Check a ``manifest.json`` (:class:`taskspec.manifest.Manifest`: format, entries, digest) and return the
    version's identity."""
    try:
        manifest = Manifest.from_json(data)
    except ManifestError as exc:
        raise ModelNotReady(f"{where}/{MANIFEST_FILE} is unusable: {exc}") from exc
    sha256 = {name: entry.sha256 for name, entry in manifest.files.items()}
    return VersionContent(identity=f"sha256:{manifest.digest}", sha256=sha256)


ConfidenceShares = tuple[tuple[float, float], ...]
"""(bucket upper bound, share) per bucket of :data:`taskspec.TOP_PROBABILITY_BUCKETS`, in order."""


@dataclass(frozen=True)
class CardFigures:
    """What the version's model card (``metrics.json``) says of its quality and speed; None where it says nothing."""

    accuracy: float | None = None
    """Held-out accuracy of ``model.onnx`` (``test.accuracy``)."""
    accuracy_int8: float | None = None
    """Held-out accuracy of the int8 file CPU hosts serve (``int8.test.accuracy``)."""
    latency_p50_ms: float | None = None
    """p50 of a one-text / one-image call of ``model.onnx``, one thread, model only (``latency``)."""
    latency_p50_ms_int8: float | None = None
    """The same for the int8 file."""


@dataclass(frozen=True)
class TextArtifacts:
    labels: tuple[str, ...]
    encoder: TextEncoder
    """The version's tokenizer set up per its preprocessing (:mod:`preprocess.text`)."""
    validation_label_mix: Mapping[str, float] | None = None
    """Share of each predicted label on the held-out test set (:func:`validation_label_mix`); None unknown."""
    validation_confidence: ConfidenceShares | None = None
    """Share of the held-out predictions per top-probability bucket (:func:`validation_confidence`); None unknown."""
    card: CardFigures = CardFigures()
    """Accuracy and latency from the version's model card (:func:`card_figures`)."""


@dataclass(frozen=True)
class ImageArtifacts:
    labels: tuple[str, ...]
    preprocessing: ImagePreprocessing
    validation_label_mix: Mapping[str, float] | None = None
    """Share of each predicted label on the held-out test set (:func:`validation_label_mix`); None unknown."""
    validation_confidence: ConfidenceShares | None = None
    """Share of the held-out predictions per top-probability bucket (:func:`validation_confidence`); None unknown."""
    card: CardFigures = CardFigures()
    """Accuracy and latency from the version's model card (:func:`card_figures`)."""


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


def validation_label_mix(metrics: bytes | None, labels: tuple[str, ...]) -> dict[str, float] | None:
    """Share of each predicted label on the held-out test set, from the model card's ``metrics.json``
    (``test.confusion_matrix``: rows the true label, columns the predicted one, in ``labels`` order); None when
    the file is missing or unusable (the card is informative: a bad one never stops serving)."""
    if metrics is None:
        return None
    try:
        matrix = json.loads(metrics)["test"]["confusion_matrix"]
        k = len(labels)
        if not isinstance(matrix, list) or len(matrix) != k:
            return None
        rows = [[float(cell) for cell in row] for row in matrix]
        if any(len(row) != k or any(not math.isfinite(c) or c < 0 for c in row) for row in rows):
            return None
        predicted = [sum(row[j] for row in rows) for j in range(k)]
        total = sum(predicted)
        if total <= 0:
            return None
        return {label: round(count / total, 4) for label, count in zip(labels, predicted, strict=True)}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def validation_confidence(metrics: bytes | None) -> ConfidenceShares | None:
    """Share of the held-out predictions per bucket of the top-class probability, from the model card's
    ``metrics.json`` (``validation_confidence``: ``le`` upper bounds and ``shares``, written by the exporter since
    it records them); None when the file is missing, unusable, older than these figures, or bucketed otherwise than
    the facade's ``mtc_api_top_probability`` histogram (:data:`taskspec.TOP_PROBABILITY_BUCKETS`): a reference
    in other buckets compares with nothing served."""
    if metrics is None:
        return None
    try:
        document = json.loads(metrics)["validation_confidence"]
        bounds = [float(b) for b in document["le"]]
        shares = [float(s) for s in document["shares"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    if tuple(bounds) != TOP_PROBABILITY_BUCKETS or len(shares) != len(bounds):
        return None
    if any(not math.isfinite(s) or not 0 <= s <= 1 for s in shares) or abs(sum(shares) - 1) > 0.01:
        return None  # the exporter rounds each share to 4 decimals: their sum is 1 within 0.0006
    return tuple(zip(bounds, shares, strict=True))


def _figure(document: Any, *path: str) -> float | None:
    for key in path:
        if not isinstance(document, Mapping) or key not in document:
            return None
        document = document[key]
    if isinstance(document, bool) or not isinstance(document, int | float) or not math.isfinite(document):
        return None
    return float(document)


def card_figures(metrics: bytes | None) -> CardFigures:
    """Accuracy and latency of a version from its ``metrics.json`` (written by ``export build``); a figure that is
    missing or not a finite number is None (the card is informative: a bad one never stops serving)."""
    if metrics is None:
        return CardFigures()
    try:
        document = json.loads(metrics)
    except (ValueError, UnicodeDecodeError):
        return CardFigures()
    int8_file = document.get("int8", {}).get("file") if isinstance(document.get("int8"), Mapping) else None
    latency = ("latency", "files")
    return CardFigures(
        accuracy=_figure(document, "test", "accuracy"),
        accuracy_int8=_figure(document, "int8", "test", "accuracy"),
        latency_p50_ms=_figure(document, *latency, MODEL_FILE, "p50_ms"),
        latency_p50_ms_int8=_figure(document, *latency, int8_file, "p50_ms") if isinstance(int8_file, str) else None,
    )


class ArtifactStore:
    """Loads and caches :class:`TextArtifacts` / :class:`ImageArtifacts` per (task, version, content identity).

    :meth:`content` is called when the service refreshes the served version; :meth:`get` on every
    request (a dict lookup once loaded). Only the latest content of each task stays cached.
    """

    def __init__(self, source: ArtifactSource) -> None:
        self.source = source
        self._cache: dict[tuple[str, str, str], Artifacts] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    @staticmethod
    def _files(spec: TaskSpec) -> tuple[str, ...]:
        return (PREPROCESSING_FILE, TOKENIZER_FILE) if spec.modality == "text" else (PREPROCESSING_FILE,)

    def _content(self, spec: TaskSpec, version: str) -> VersionContent:
        where = f"{spec.name}/{version}"
        manifest = self.source.read(f"{where}/{MANIFEST_FILE}")
        if manifest is not None:
            return parse_manifest(manifest, where)
        stats = [f"{name}={self.source.fingerprint(f'{where}/{name}')}" for name in self._files(spec)]
        return VersionContent(identity="stat:" + ",".join(stats), sha256={})

    async def content(self, spec: TaskSpec, version: str) -> VersionContent:
        """The content identity of ``spec``'s ``version`` (a small read, in a worker thread)."""
        return await asyncio.to_thread(self._content, spec, version)

    def _load(self, spec: TaskSpec, version: str, content: VersionContent) -> Artifacts:
        where = f"{spec.name}/{version}"
        data: dict[str, bytes | None] = {name: self.source.read(f"{where}/{name}") for name in self._files(spec)}
        preprocessing = data[PREPROCESSING_FILE]
        if preprocessing is None:
            raise ModelNotReady(f"{where}/{PREPROCESSING_FILE} is missing from the model repository")
        for name, body in data.items():
            expected = content.sha256.get(name)
            if body is not None and expected is not None and hashlib.sha256(body).hexdigest() != expected:
                raise ModelNotReady(
                    f"{where}/{name} does not match its {MANIFEST_FILE} (being republished?); retry shortly"
                )
        artifacts = parse_artifacts(spec, version, preprocessing, data.get(TOKENIZER_FILE))
        metrics = self.source.read(f"{where}/{METRICS_FILE}")
        return replace(
            artifacts,
            validation_label_mix=validation_label_mix(metrics, artifacts.labels),
            validation_confidence=validation_confidence(metrics),
            card=card_figures(metrics),
        )

    async def get(self, spec: TaskSpec, version: str, content: VersionContent) -> Artifacts:
        """The artifacts of ``spec``'s ``version`` with this content (read once, in a worker thread)."""
        key = (spec.name, version, content.identity)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            if cached is None:
                cached = await asyncio.to_thread(self._load, spec, version, content)
                for old in [k for k in self._cache if k[0] == spec.name]:
                    del self._cache[old]
                    self._locks.pop(old, None)
                self._cache[key] = cached
        return cached
