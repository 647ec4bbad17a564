"""The errors of a batch job, in the facade's taxonomy (:mod:`frontend_api.errors`).

A job that cannot start or must stop raises one of these (or one of the facade's own kinds, raised by
the modules the runner shares with it: :class:`~frontend_api.errors.BackendUnavailable` when Triton is
unreachable, :class:`~frontend_api.errors.ModelNotReady`...). Each has a stable slug and an HTTP status,
so a REST job API can answer them as problem documents unchanged; the command line prints ``detail``.

A bad *row* is never an exception: it is reported in the row's ``error`` column and in the summary.
"""

from __future__ import annotations

from frontend_api.errors import ApiError, InvalidRequest, StorageUnavailable


class InvalidJob(InvalidRequest):
    """The job cannot run as asked: unknown task, missing column, unsupported format, a location outside
    the allowed buckets, no input rows."""

    slug, status, title = "invalid-job", 422, "Invalid batch job"


class JobConflict(ApiError):
    """The output location holds another job (other input, task, column or settings), or the input changed
    since the job started: resuming would mix two jobs' rows."""

    slug, status, title = "job-conflict", 409, "Output holds another job"


class JobStorageError(StorageUnavailable):
    """The input or the output location cannot be read or written (S3 or the local file system)."""

    slug, status, title = "job-storage-error", 503, "Job storage unavailable"


BATCH_ERROR_KINDS: tuple[type[ApiError], ...] = (InvalidJob, JobConflict, JobStorageError)
