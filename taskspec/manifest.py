"""``<task>/<version>/manifest.json``: what a published version holds, and its content digest.

A published version is immutable. Its manifest lists every file of the version folder (except
``manifest.json`` itself) with its SHA-256 and size::

    {"format": 1,
     "files": {"model.onnx": {"sha256": "<hex>", "size": 90123456}, "tokenizer.json": {...}, ...},
     "digest": "<sha256 hex of the files object, canonical JSON>"}

``digest`` is ``sha256(json.dumps(files, sort_keys=True, separators=(",", ":")))``: one string that
changes whenever any file of the version does. Readers key caches by it (the facade's artifact
cache), ``export pull`` verifies downloads against the per-file hashes, ``export push`` uploads the
manifest last, so a version whose manifest is in the bucket is complete.

Standard library only, like the rest of ``taskspec``: the facade, the exporter and the Triton stub
can all import it without torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from taskspec import MANIFEST_FILE

MANIFEST_FORMAT = 1
MAX_MANIFEST_BYTES = 1 << 20
"""A manifest is a few hundred bytes; readers refuse anything larger than this before parsing it."""

IGNORED_NAMES = frozenset({"__pycache__", ".DS_Store"})
"""Names that are never part of a repository (caches, desktop litter): not hashed, pushed or pulled."""
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ManifestError(ValueError):
    """A manifest that cannot be trusted: malformed, an unknown format, or a digest that does not match."""


def path_problem(relative: str) -> str | None:
    """Why ``relative`` is not a plain relative POSIX path inside a folder (None when it is one).

    Refused: empty, absolute, backslashes, NUL and other control characters, empty segments
    (``a//b``, a trailing ``/``) and ``.`` / ``..`` segments. A name that passes cannot leave the
    folder it is joined to by itself (a symlink inside that folder still can: check resolved paths).
    """
    if not relative:
        return "empty key"
    if "\x00" in relative:
        return "NUL character"
    if _CONTROL.search(relative):
        return "control character"
    if "\\" in relative:
        return "backslash"
    if relative.startswith("/"):
        return "absolute path"
    segments = relative.split("/")
    if "" in segments:
        return "empty path segment"
    if any(segment in (".", "..") for segment in segments):
        return "'.' or '..' segment"
    return None


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its SHA-256 (lowercase hex) and size in bytes."""

    sha256: str
    size: int

    def as_json(self) -> dict[str, str | int]:
        return {"sha256": self.sha256, "size": self.size}


def digest_of(files: Mapping[str, FileEntry]) -> str:
    """The version digest: SHA-256 of the canonical JSON of the ``files`` object."""
    document = {name: entry.as_json() for name, entry in files.items()}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_entry(path: Path) -> FileEntry:
    """Hash one file (streamed: model files are hundreds of MB)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(digest.hexdigest(), size)


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of one version."""

    files: Mapping[str, FileEntry]
    digest: str

    @classmethod
    def of_files(cls, files: Mapping[str, FileEntry]) -> Manifest:
        ordered = dict(sorted(files.items()))
        return cls(ordered, digest_of(ordered))

    def to_json(self) -> str:
        document = {
            "format": MANIFEST_FORMAT,
            "files": {name: entry.as_json() for name, entry in self.files.items()},
            "digest": self.digest,
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and check a manifest: format 1, safe file names, well-formed entries, matching digest."""
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is {len(text)} bytes (more than {MAX_MANIFEST_BYTES})")
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest is not JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"manifest format is not {MANIFEST_FORMAT}")
        raw_files, digest = document.get("files"), document.get("digest")
        if not isinstance(raw_files, dict) or not isinstance(digest, str):
            raise ManifestError("manifest needs a 'files' object and a 'digest' string")
        files: dict[str, FileEntry] = {}
        for name, entry in raw_files.items():
            problem = path_problem(name)
            if problem is not None or name == MANIFEST_FILE:
                raise ManifestError(f"manifest lists {name!r}: {problem or 'the manifest itself'}")
            if not isinstance(entry, dict) or set(entry) != {"sha256", "size"}:
                raise ManifestError(f"manifest entry of {name!r} must be {{'sha256': ..., 'size': ...}}")
            sha256, size = entry["sha256"], entry["size"]
            if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
                raise ManifestError(f"manifest entry of {name!r}: sha256 is not 64 lowercase hex digits")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ManifestError(f"manifest entry of {name!r}: size is not a non-negative integer")
            files[name] = FileEntry(sha256, size)
        if digest_of(files) != digest:
            raise ManifestError("manifest digest does not match its files")
        return cls(files, digest)

    def mismatches(self, actual: Mapping[str, FileEntry]) -> list[str]:
        """How ``actual`` (name -> entry of the files found) differs from the manifest; empty when equal."""
        problems = self.listing_mismatches({name: entry.size for name, entry in actual.items()})
        for name in sorted(set(self.files) & set(actual)):
            if actual[name].size == self.files[name].size and actual[name].sha256 != self.files[name].sha256:
                problems.append(f"{name}: sha256 differs from the manifest")
        return problems

    def listing_mismatches(self, sizes: Mapping[str, int]) -> list[str]:
        """How a listing (name -> size, e.g. of objects in a bucket) differs from the manifest, without hashing."""
        problems = [f"{name}: missing" for name in sorted(set(self.files) - set(sizes))]
        problems += [f"{name}: not in the manifest" for name in sorted(set(sizes) - set(self.files))]
        for name in sorted(set(self.files) & set(sizes)):
            if sizes[name] != self.files[name].size:
                problems.append(f"{name}: {sizes[name]} bytes, manifest says {self.files[name].size}")
        return problems


def version_files(version_dir: Path) -> Iterable[tuple[str, Path]]:
    """(name relative to the folder, path) of every file of a version folder except the manifest."""
    for path in sorted(version_dir.rglob("*")):
        relative = path.relative_to(version_dir)
        if path.is_file() and relative.as_posix() != MANIFEST_FILE and not IGNORED_NAMES.intersection(relative.parts):
            yield relative.as_posix(), path


def build_manifest(version_dir: Path) -> Manifest:
    """The manifest of a version folder as it is on disk."""
    return Manifest.of_files({name: file_entry(path) for name, path in version_files(version_dir)})


def write_manifest(version_dir: Path) -> Manifest:
    """Hash every file of ``version_dir`` and write its ``manifest.json``; returns the manifest."""
    manifest = build_manifest(version_dir)
    (version_dir / MANIFEST_FILE).write_text(manifest.to_json())
    return manifest


def read_manifest(version_dir: Path) -> Manifest:
    """Parse ``version_dir/manifest.json`` (``FileNotFoundError`` when there is none)."""
    return Manifest.from_json((version_dir / MANIFEST_FILE).read_bytes())


def verify_version(version_dir: Path) -> list[str]:
    """How the files of ``version_dir`` differ from its manifest (empty when they match)."""
    return read_manifest(version_dir).mismatches(build_manifest(version_dir).files)
