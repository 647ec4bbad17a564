"""Input and output files: CSV, JSON Lines and Parquet, read as a stream of Arrow tables, written in parts.

Reading keeps every input row as it is, so the output is the input plus the classification:

- CSV: every column is read as a string (``007`` stays ``007``), values may hold quoted newlines;
- JSON Lines: each non-blank line is one row, kept as its original text (column :data:`JSON_COLUMN`);
  the text or URL is the line's field ``column``; a line that is not a JSON object is a failed row
  (:data:`READ_ERROR_COLUMN`), never a failed job;
- Parquet: columns and types as stored; the text or URL column must be a string column.

An output part is written in the input's format: the input columns, then ``label``, one ``p_<label>``
probability per label, and ``error`` (the reason a row failed, else empty), each with the job's prefix.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch.errors import InvalidJob, JobStorageError

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "parquet")
SUFFIXES: dict[Format, tuple[str, ...]] = {
    "csv": (".csv",),
    "jsonl": (".jsonl", ".ndjson"),
    "parquet": (".parquet", ".pq"),
}
EXTENSIONS: dict[Format, str] = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}

ROW_COLUMN = "__mtc_row"
"""Position of the row in its input file (0-based): what places it in its part, and orders the part."""
FILE_COLUMN = "__mtc_file"
"""Index of the row's input file in the job's sorted file list."""
JSON_COLUMN = "__mtc_json"
"""JSON Lines: the row's line as read."""
VALUE_COLUMN = "__mtc_value"
"""JSON Lines: the row's text or URL (null when the field is missing or not a string)."""
READ_ERROR_COLUMN = "__mtc_read_error"
"""JSON Lines: why the line is not a usable row (null when it is)."""
INTERNAL_PREFIX = "__mtc_"

CSV_BLOCK_BYTES = 4 << 20
"""pyarrow reads CSV in blocks of this size; one CSV row may not be longer."""
READ_BATCH_ROWS = 4096


def detect_format(paths: Sequence[str], explicit: Format | None) -> Format:
    """The format of the input files: ``explicit``, else their common extension."""
    if explicit is not None:
        return explicit
    found = {fmt for path in paths for fmt, suffixes in SUFFIXES.items() if path.lower().endswith(suffixes)}
    if len(found) != 1:
        known = ", ".join(s for suffixes in SUFFIXES.values() for s in suffixes)
        raise InvalidJob(f"cannot tell the input format from the file names (known: {known}); pass --format")
    return found.pop()


@dataclass(frozen=True)
class OutputNames:
    """The columns a job adds to each row."""

    prefix: str
    labels: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.prefix}label"

    @property
    def error(self) -> str:
        return f"{self.prefix}error"

    def probability(self, label: str) -> str:
        return f"{self.prefix}p_{label}"

    def all(self) -> list[str]:
        return [self.label, *(self.probability(label) for label in self.labels), self.error]


def _csv_reader(stream: Any, column_types: dict[str, pa.DataType] | None, include: list[str] | None) -> Any:
    return pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=column_types, include_columns=include, strings_can_be_null=False
        ),
    )


@dataclass(frozen=True)
class InputShape:
    """What the planner learns about one input file: its columns (JSON Lines: the first object's fields)
    and its number of rows."""

    columns: tuple[str, ...]
    rows: int


def inspect_file(fs: pafs.FileSystem, path: str, fmt: Format, column: str) -> InputShape:
    """Columns and row count of one file; raises :class:`InvalidJob` when ``column`` cannot be read from it."""
    try:
        if fmt == "parquet":
            with fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                schema = parquet.schema_arrow
                if column in schema.names and not (
                    pa.types.is_string(schema.field(column).type) or pa.types.is_large_string(schema.field(column).type)
                ):
                    raise InvalidJob(f"{path}: column {column!r} is {schema.field(column).type}, not text")
                return _checked(path, column, tuple(schema.names), parquet.metadata.num_rows)
        if fmt == "csv":
            with fs.open_input_stream(path) as stream:
                names = tuple(_csv_reader(stream, None, None).schema.names)
            if column not in names:
                return _checked(path, column, names, 0)
            rows = 0
            with fs.open_input_stream(path) as stream:
                for batch in _csv_reader(stream, {column: pa.string()}, [column]):
                    rows += batch.num_rows
            return _checked(path, column, names, rows)
        rows, first = 0, None
        with fs.open_input_stream(path) as stream:
            for line in _lines(stream):
                rows += 1
                if first is None:
                    first = _json_object(line)
        fields = tuple(first) if isinstance(first, dict) else ()
        return _checked(path, column, fields, rows, what="field of the first line")
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InvalidJob(f"{path} is not readable as {fmt}: {_first_line(exc)}") from exc
    except OSError as exc:
        raise JobStorageError(f"cannot read {path}: {exc}") from exc


def _checked(path: str, column: str, names: tuple[str, ...], rows: int, what: str = "column") -> InputShape:
    if column not in names:
        shown = ", ".join(names[:20]) or "none"
        raise InvalidJob(f"{path}: no {what} {column!r} (found: {shown})")
    return InputShape(names, rows)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _lines(stream: Any) -> Iterator[str]:
    """The non-blank lines of a UTF-8 stream (JSON Lines rows)."""
    for line in io.TextIOWrapper(stream, encoding="utf-8", errors="strict", newline="\n"):
        if line.strip():
            yield line.rstrip("\r\n")


def _json_object(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _jsonl_table(lines: list[str], column: str) -> pa.Table:
    values: list[str | None] = []
    errors: list[str | None] = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            values.append(None)
            errors.append(f"the line is not valid JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            values.append(None)
            errors.append(f"the line is a JSON {type(obj).__name__}, not an object")
            continue
        value = obj.get(column)
        values.append(value if isinstance(value, str) else None)
        errors.append(None if value is None or isinstance(value, str) else f"field {column!r} is not a string")
    return pa.table(
        {
            JSON_COLUMN: pa.array(lines, pa.string()),
            VALUE_COLUMN: pa.array(values, pa.string()),
            READ_ERROR_COLUMN: pa.array(errors, pa.string()),
        }
    )


def read_tables(fs: pafs.FileSystem, path: str, fmt: Format, columns: Sequence[str], column: str) -> Iterator[pa.Table]:
    """The rows of one file in order, as Arrow tables of any size (internal columns not yet added)."""
    try:
        if fmt == "parquet":
            with fs.open_input_file(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=READ_BATCH_ROWS):
                    yield pa.Table.from_batches([batch])
        elif fmt == "csv":
            with fs.open_input_stream(path) as stream:
                for batch in _csv_reader(stream, dict.fromkeys(columns, pa.string()), None):
                    yield pa.Table.from_batches([batch])
        else:
            with fs.open_input_stream(path) as stream:
                lines: list[str] = []
                for line in _lines(stream):
                    lines.append(line)
                    if len(lines) == READ_BATCH_ROWS:
                        yield _jsonl_table(lines, column)
                        lines = []
                if lines:
                    yield _jsonl_table(lines, column)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InvalidJob(f"{path} is not readable as {fmt}: {_first_line(exc)}") from exc
    except OSError as exc:
        raise JobStorageError(f"cannot read {path}: {exc}") from exc


def value_column(fmt: Format, column: str) -> str:
    """The column of a read table that holds the text or URL."""
    return VALUE_COLUMN if fmt == "jsonl" else column


def encode_part(table: pa.Table, fmt: Format, names: OutputNames) -> bytes:
    """One output part: ``table`` (rows in order, with the job's output columns) in the input's format,
    internal columns left out."""
    if fmt == "jsonl":
        added = names.all()
        outputs = table.select(added).to_pylist()
        out = io.StringIO()
        for line, extra in zip(table.column(JSON_COLUMN).to_pylist(), outputs, strict=True):
            obj = _json_object(line)
            row = {**obj, **extra} if obj is not None else {"line": line, **extra}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return out.getvalue().encode("utf-8")
    visible = table.select([name for name in table.column_names if not name.startswith(INTERNAL_PREFIX)])
    sink = pa.BufferOutputStream()
    if fmt == "csv":
        pacsv.write_csv(visible, sink)
    else:
        pq.write_table(visible, sink)
    return bytes(sink.getvalue().to_pybytes())
