"""What a job leaves in its output location, next to its parts, so that a crash loses nothing.

::

    OUT/_job.json                  the job manifest: input files (size, mtime, rows), task, column, the
                                   model version it is pinned to, the part size: written once, at the start
    OUT/part-FFFFF-PPPPPP.<ext>    rows P*rows_per_part.. of input file F: input columns + label + p_* + error
    OUT/_committed/FFFFF-PPPPPP.json   written after its part: the part is complete (rows, labels, failures)
    OUT/_summary.json              written when every part is committed

A part is committed by the object that follows it: a part file without its commit record (the runner
died in between) is written again on resume, under the same name, so no row is ever written twice.
Everything read back from OUT is parsed strictly and bounded in size; names are built from integers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from batch.formats import Format

JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
COMMITTED_DIR = "_committed"
MAX_RECORD_BYTES = 64 << 20


def part_key(file_index: int, part_index: int) -> str:
    return f"{file_index:05d}-{part_index:06d}"


def part_file_name(file_index: int, part_index: int, fmt: Format) -> str:
    from batch.formats import EXTENSIONS

    return f"part-{part_key(file_index, part_index)}.{EXTENSIONS[fmt]}"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputFile(Strict):
    path: str
    size: int = Field(ge=0)
    mtime_ns: int
    rows: int = Field(ge=0)
    columns: list[str]
    """CSV and Parquet: the file's columns; JSON Lines: the first line's fields."""


class ModelPin(Strict):
    """The model version every part of the job is classified with, and its artifacts' identity."""

    name: str
    version: str
    content: str


class JobParameters(Strict):
    """What makes two runs the same job: a rerun with other parameters is refused (:class:`JobConflict`)."""

    input: str
    task: str
    column: str
    format: Format
    prefix: str
    rows_per_part: int = Field(ge=1)


class JobManifest(Strict):
    format_version: Literal[1] = 1
    parameters: JobParameters
    files: list[InputFile]
    model: ModelPin
    labels: list[str]
    created_at: str

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.files)

    def part_rows(self, file_index: int, part_index: int) -> int:
        """How many rows part ``part_index`` of file ``file_index`` holds."""
        rows, size = self.files[file_index].rows, self.parameters.rows_per_part
        return max(0, min(size, rows - part_index * size))

    def parts(self) -> list[tuple[int, int]]:
        """Every (file, part) of the job, in output order."""
        size = self.parameters.rows_per_part
        return [(f, p) for f, entry in enumerate(self.files) for p in range(-(-entry.rows // size))]


class RowFailure(Strict):
    file: int
    row: int
    reason: str


class PartCommit(Strict):
    """The record that commits one part."""

    file: int
    part: int
    rows: int
    labels: dict[str, int]
    failed: int
    failures: list[RowFailure]
    """The part's failed rows (all of them; the summary lists the first ``failures_listed``)."""
