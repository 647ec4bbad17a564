"""The exporter's named errors.

Every problem a user can fix (a missing dataset, a wrong checkpoint, an export that does not match
its PyTorch reference) is an :class:`ExportError`; the command line prints its message on one line
and exits with status 2.
"""

from __future__ import annotations


class ExportError(Exception):
    """A problem the user can fix; the message says what and how."""


class DatasetError(ExportError):
    """A dataset is missing, unreadable or has the wrong layout."""


class CheckpointError(ExportError):
    """A pretrained checkpoint (local path or hub id) cannot be loaded."""


class ExportValidationError(ExportError):
    """The exported ONNX model disagrees with its PyTorch reference; it is not published."""


class QualityFloorError(ExportValidationError):
    """A file a config would serve is below its quality floor on the held-out data (agreement with the
    PyTorch reference, logit difference or accuracy); no file of its version is published."""


class RegistryError(ExportError):
    """A task has no export registry entry (dataset loader, recipes), or a conflicting one."""


class PublishError(ExportError):
    """A model cannot be written into the model repository."""


class UnvalidatedFileError(PublishError):
    """A version would hold a model file without a passing held-out validation record; nothing was written."""


class UnsafeKeyError(ExportError):
    """``pull`` found object keys that would be written outside the target folder; nothing was written."""


class ImmutableVersionError(ExportError):
    """``push`` would change a file of a published version; nothing was uploaded (``--force`` overrides)."""


class ManifestMismatchError(ExportError):
    """A version's files do not match its ``manifest.json`` (sha256, size or file list); nothing was written."""
