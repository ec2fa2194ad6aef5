"""File scoring: a historian drop (CSV, gzip CSV, Parquet, JSON Lines) scored chunk by chunk.

The use case every runtime calls for files: the Lambda ``score_batch`` (S3 drops and fan-out
parts), the edge ``score-file``, the tests. It does no I/O of its own: the bytes come in as a
stream, the outputs go out through a :class:`zaindari.ports.FileSink`.

For each chunk (see :mod:`zaindari.file_reading`): rows are validated as the telemetry contract
validates readings (device id present, timestamp with a timezone or epoch milliseconds, sensor
values numbers), the valid ones become one :class:`~zaindari.features.SensorTable` and are scored
by **one** :func:`~zaindari.pipeline.score_table` call (features, one ONNX call, alert policy).
Device state (window history, alert state) is carried from chunk to chunk in memory, so windows
span chunk boundaries: scoring a file gives the scores of scoring its table in one go, as long as
each device's rows are in time order in the file (a row older than its device's last one is
scored as *late*, like an event). Three threads share the work (``FileScoringOptions.read_ahead``):
one reads and validates the next chunk, one scores, one writes the previous chunk's outputs
(quarantine, scores) and counts its drift window summaries; the sink is called from that one
thread, in chunk order.

Guarantees:

* every row is either scored or quarantined with its reason (``rows_in = rows_scored +
  rows_quarantined``, checked by :class:`FileManifest`); blank lines are counted apart;
* all or nothing per file (or per part): outputs are written as chunks are scored, to staged
  objects the sink only publishes on :meth:`~zaindari.ports.FileSink.commit`. A corrupt or
  truncated file (or one lacking required columns) never raises: its staged outputs are aborted,
  the file is quarantined whole, and its manifest says ``failed`` with a clear error and zero
  rows. Failures of the sink itself (:class:`~zaindari.ports.PortError`) are raised, so the
  caller retries;
* alerts are aggregated per device and rule per file: one :class:`AlertSummary` with counts and
  the worst rows, never one alert per row.

Extra columns (not named by the spec) pass through: whole in quarantined rows, and into the
scores only when listed in ``FileScoringOptions.keep_columns`` (as text; lists, structs and maps as
JSON), so the scores table keeps one schema for the catalog whatever the drops carry. A value that
has no text form (bytes that are not UTF-8; a list or struct as ``mode``, ``asset``, ``line`` or
``site``, which must be text) is its row's problem: the row is quarantined with the reason. Parts are scored independently: a part starts
with empty device history, so windows do not span part boundaries (totals and row numbers match
the whole file; the first readings of each device in a part score with partial windows).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zaindari.alerting import LEARNED_RULE_ID, Alert
from zaindari.bundle import ModelBundle
from zaindari.drift import Baseline, DeviceCodes, SummaryStore, WindowSummary, baseline_of, summarize_table
from zaindari.features import FeatureBatch, SensorTable
from zaindari.file_reading import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CHUNK_ROWS,
    IDENTITY_COLUMNS,
    MAX_LINE_BYTES,
    ByteStream,
    FileError,
    FileFormat,
    FilePart,
    MissingColumns,
    RawChunk,
    UnsupportedFormat,
    detect_format,
    number_parts,
    plan_parts,
    read_chunks,
)
from zaindari.jsonable import finite, json_default
from zaindari.pipeline import DeviceState, TableScores, score_table
from zaindari.ports import FileSink, PortError, RejectedRecord
from zaindari.settings import Settings, SettingsError
from zaindari.spec import SEVERITY_RANK, ModelSpec

__all__ = [
    "RESERVED_PREFIX",
    "SCORES_SCHEMA",
    "AlertSummary",
    "FileError",
    "FileFormat",
    "FileManifest",
    "FilePart",
    "FileRun",
    "FileScoring",
    "FileScoringOptions",
    "FileSource",
    "MissingColumns",
    "UnsupportedFormat",
    "WorstRow",
    "detect_format",
    "merge_manifests",
    "number_parts",
    "plan_parts",
    "read_chunks",
    "validate_chunk",
]

_T = TypeVar("_T")
MAX_ID_LENGTH = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EARLIEST_US = 946_684_800_000_000  # 2000-01-01: before it, epoch seconds were sent as milliseconds
_LATEST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_UTC_US = pa.timestamp("us", tz="UTC")
_NUMERIC_TEXT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_NAIVE_ISO = r"^\d{4}-?\d{2}-?\d{2}([T ]\d{2}(:?\d{2}(:?\d{2}([.,]\d+)?)?)?)?$"

#: Names of internal columns (Spark's, in :mod:`zaindari.file_scoring_spark`) start with this, so
#: no column of a drop clashes with them; ``FileScoringOptions.keep_columns`` may not use it.
RESERVED_PREFIX = "__zaindari_"

#: The scores table, one row per scored row (Hive partition ``date=YYYY-MM-DD`` added by the sink
#: from ``timestamp``). Columns of ``FileScoringOptions.keep_columns`` follow, as text.
SCORES_SCHEMA = pa.schema(
    [
        pa.field("source_key", pa.string(), nullable=False),
        pa.field("source_version", pa.string()),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("asset", pa.string()),
        pa.field("line", pa.string()),
        pa.field("site", pa.string()),
        pa.field("timestamp", _UTC_US, nullable=False),
        pa.field("mode", pa.string()),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("severity", pa.string()),
        pa.field("alert", pa.bool_(), nullable=False),
        pa.field("rules", pa.list_(pa.string())),
        pa.field("late", pa.bool_(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("rule_set_version", pa.string(), nullable=False),
    ]
)


# ----------------------------------------------------------------------------- data shapes


class FileSource(BaseModel):
    """The object being scored: its key and, when known, bucket, ETag, version id and size.

    ``source_id`` names every output of the object (deterministic: a replay overwrites its own
    outputs instead of adding to them); it changes when the object's version or ETag changes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1)
    bucket: str | None = None
    etag: str | None = None
    version_id: str | None = None
    size: int | None = Field(default=None, ge=0)

    @property
    def version(self) -> str | None:
        return self.version_id or (self.etag.strip('"') if self.etag else None)

    @property
    def source_id(self) -> str:
        name = PurePosixPath(self.key).name
        stem = name.split(".")[0] if not name.startswith(".") else name
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:48] or "file"
        digest = hashlib.sha256(f"{self.bucket or ''}/{self.key}\n{self.version or ''}".encode())
        return f"{stem}-{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class FileRun:
    """One scoring run of a file or of one part of it: what a sink stages outputs under."""

    source: FileSource
    part: FilePart | None
    started_at: datetime

    @property
    def name(self) -> str:
        """``<source_id>`` for a whole file, ``<source_id>-p00003`` for part 3."""
        suffix = f"-p{self.part.index:05d}" if self.part is not None and self.part.count > 1 else ""
        return self.source.source_id + suffix


class WorstRow(BaseModel):
    """One of the rows behind an alert summary: where it is in the file and how bad it was."""

    model_config = ConfigDict(frozen=True)

    row: int
    timestamp: str
    score: float
    severity: str | None = None


class AlertSummary(BaseModel):
    """All alerting rows of one device and one rule in one file, summarised.

    ``rows`` counts the rows where the rule's condition held; ``raised``, ``escalated`` and
    ``resolved`` count alert episodes as the alert policy (hysteresis) produced them; ``worst_rows``
    are the rows with the most abnormal model score (the highest, or the lowest when the model's
    thresholds have ``direction`` ``below``); ``first_alert`` is the first raised alert in
    full (contributors, observed values) for a notification.
    """

    model_config = ConfigDict(frozen=True)

    device_id: str
    asset: str | None = None
    line: str | None = None
    site: str | None = None
    rule_id: str
    source: Literal["expert", "learned"]
    severity: str | None = None
    message: str = ""
    direction: Literal["above", "below"] = "above"
    rows: int = 0
    raised: int = 0
    escalated: int = 0
    resolved: int = 0
    first_at: str | None = None
    last_at: str | None = None
    worst_rows: list[WorstRow] = []
    first_alert: Alert | None = None


class FileManifest(BaseModel):
    """What happened to one file (or one part of it); the record the lake keeps per drop.

    For ``scored`` files ``rows_in == rows_scored + rows_quarantined`` always holds (validated).
    A ``failed`` file wrote nothing: its counts are zero, ``error`` says why in plain words,
    ``rows_read_before_failure`` how far reading got, and ``quarantined_to`` where the whole file
    was set aside.
    """

    model_config = ConfigDict(frozen=True)

    source: FileSource
    source_id: str
    format: str
    part: FilePart | None = None
    parts: int = 1
    status: Literal["scored", "failed"]
    error: str | None = None
    rows_in: int = Field(default=0, ge=0)
    rows_scored: int = Field(default=0, ge=0)
    rows_quarantined: int = Field(default=0, ge=0)
    blank_lines: int = Field(default=0, ge=0)
    rows_read_before_failure: int = Field(default=0, ge=0)
    alert_rows: int = Field(default=0, ge=0)
    alerts: list[AlertSummary] = []
    devices: int = Field(default=0, ge=0)
    chunks: int = Field(default=0, ge=0)
    columns: list[str] = []
    extra_columns: list[str] = []
    model_version: str
    rule_set_version: str | None = None
    started_at: datetime
    duration_seconds: float = Field(ge=0)
    outputs: list[str] = []
    quarantined_to: str | None = None

    @model_validator(mode="after")
    def _accounted(self) -> FileManifest:
        if self.rows_in != self.rows_scored + self.rows_quarantined:
            raise ValueError(
                f"rows_in {self.rows_in} != rows_scored {self.rows_scored} + rows_quarantined "
                f"{self.rows_quarantined}"
            )
        if self.status == "failed" and not self.error:
            raise ValueError("a failed manifest needs an error")
        return self


class FileScoringOptions(BaseModel):
    """How files are read and summarised.

    Parameters
    ----------
    chunk_bytes
        Input bytes per chunk (CSV, JSON Lines, after decompression): bounds memory.
    chunk_rows
        Rows per chunk for Parquet.
    max_line_bytes
        Longest line accepted (a longer one means the file is not line-oriented text).
    worst_rows
        Rows kept per alert summary.
    keep_columns
        Extra columns copied into the scores, as text (nested values as JSON). Names are compared
        ignoring case (as Spark and the Glue catalog compare them): a kept name may not be one the
        scores have already, nor ``date`` (their partition), nor appear twice, nor start with
        :data:`RESERVED_PREFIX`.
    threads
        onnxruntime intra-op threads.
    read_ahead
        Chunks parsed ahead on a background thread while the current one is scored (0: none,
        and each chunk's outputs written on the caller's thread too; otherwise a third thread
        writes a chunk's outputs and counts its drift summaries while the next one is scored).
        Parsing releases the GIL, so with two cores reading and scoring overlap; each chunk
        ahead costs one more chunk of memory.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk_bytes: int = Field(default=DEFAULT_CHUNK_BYTES, ge=4096)
    chunk_rows: int = Field(default=DEFAULT_CHUNK_ROWS, ge=1)
    max_line_bytes: int = Field(default=MAX_LINE_BYTES, ge=1024)
    worst_rows: int = Field(default=5, ge=1, le=100)
    keep_columns: tuple[str, ...] = ()
    threads: int = Field(default=1, ge=1)
    read_ahead: int = Field(default=1, ge=0, le=8)

    @field_validator("keep_columns")
    @classmethod
    def _kept_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # names are compared ignoring case: Spark resolves columns that way, and the Glue catalog
        # (Athena) lowercases them, so `Score` next to `score` is one column twice there
        if any(not n.strip() for n in value):
            raise ValueError("a kept column needs a name (not empty or blank)")
        scores = {n.lower() for n in (*SCORES_SCHEMA.names, "date")}
        taken = sorted({n for n in value if n.lower() in scores})
        if taken:
            raise ValueError(
                f"{taken} would be a second column of that name in the scores (names are compared ignoring case)"
            )
        reserved = sorted({n for n in value if n.lower().startswith(RESERVED_PREFIX)})
        if reserved:
            raise ValueError(
                f"{reserved}: names starting with {RESERVED_PREFIX!r} are reserved for internal columns"
            )
        lowered = [n.lower() for n in value]
        twice = sorted({n for n in value if lowered.count(n.lower()) > 1})
        if twice:
            raise ValueError(f"a column is named twice (names are compared ignoring case): {twice}")
        return value

    @classmethod
    def keeping(cls, columns: str, *, source: str = "keep_columns", **options: Any) -> FileScoringOptions:
        """Options keeping ``columns``, a comma-separated list (``ZAINDARI_FILE_KEEP_COLUMNS``, the
        Glue job's ``--keep_columns``; blanks around names are dropped, an empty list keeps none).

        Raises
        ------
        ValueError
            Naming ``source`` and what is wrong with the list (see ``keep_columns``).
        """
        names = tuple(n.strip() for n in columns.split(",")) if columns.strip() else ()
        try:
            return cls(keep_columns=names, **options)
        except ValueError as exc:  # pydantic's ValidationError: one line per problem
            problems = "; ".join(
                e["msg"].removeprefix("Value error, ") for e in getattr(exc, "errors", lambda: [])()
            ) or str(exc)
            raise ValueError(f"{source} {columns!r}: {problems}") from None

    @classmethod
    def from_settings(cls, settings: Settings) -> FileScoringOptions:
        """The options of a function scoring files (``score_batch`` on Lambda, ``score-file`` at
        the edge): ``ZAINDARI_FILE_KEEP_COLUMNS`` and ``ZAINDARI_ONNX_THREADS``.

        Raises
        ------
        SettingsError
            When the kept columns are refused (the function's cold start fails, naming the variable).
        """
        try:
            return cls.keeping(
                settings.file_keep_columns, source="ZAINDARI_FILE_KEEP_COLUMNS", threads=settings.onnx_threads
            )
        except ValueError as exc:
            raise SettingsError(f"invalid configuration: {exc}") from None


# ----------------------------------------------------------------------------- validation


@dataclass
class Coded:
    """A text column as its distinct values and one code per row (``-1`` for null).

    Identifiers repeat (a file has few devices), so they are checked, trimmed and turned into
    Python strings once per distinct value, not once per row.
    """

    values: pa.Array
    codes: npt.NDArray[np.int64]

    @classmethod
    def of(cls, column: pa.Array) -> Coded:
        encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
        values = encoded.dictionary
        if not _is_text(values.type):
            values = pc.cast(values, pa.string())
        codes = np.asarray(pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        return cls(values.cast(pa.string()), codes)

    def objects(self, rows: npt.NDArray[np.intp] | None = None) -> npt.NDArray[np.object_]:
        """Per row (of ``rows``), the value as a Python string (``None`` for null)."""
        table = np.empty(len(self.values) + 1, dtype=object)
        table[:-1] = self.values.to_pylist()
        table[-1] = None
        codes = self.codes if rows is None else self.codes[rows]
        return np.asarray(table[codes], dtype=object)

    def take(self, rows: npt.NDArray[np.intp]) -> pa.Array:
        """The values at ``rows`` as a text array."""
        codes = self.codes[rows]
        return self.values.take(pa.array(codes, mask=codes < 0))

    def at(self, row: int) -> str | None:
        code = int(self.codes[row])
        return None if code < 0 else str(self.values[code].as_py())


@dataclass
class ValidChunk:
    """The rows of a chunk that passed validation, ready for :func:`score_table`.

    ``positions`` are their positions in the chunk's batch; ``micros`` the timestamps of every
    row of the chunk (epoch microseconds, UTC); ``devices`` the trimmed device ids of every row;
    ``kept`` the ``keep_columns`` the chunk has, as text, for every row.
    """

    table: SensorTable
    positions: npt.NDArray[np.intp]
    micros: npt.NDArray[np.int64]
    devices: Coded
    modes: Coded | None
    identity: dict[str, Coded]
    kept: dict[str, pa.Array]  # the file's keep_columns as text, every row of the chunk
    rejected: list[tuple[int, str, tuple[dict[str, str], ...]]]  # (batch position, reason, errors)


class _Problems:
    """Per-row validation errors, kept as masks; messages are built for bad rows only."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.items: list[tuple[npt.NDArray[np.bool_], str, Callable[[int], str] | str]] = []

    def add(self, mask: npt.NDArray[np.bool_], field: str, message: Callable[[int], str] | str) -> None:
        if mask.any():
            self.items.append((mask, field, message))

    def on(self, field: str) -> npt.NDArray[np.bool_]:
        """Rows that already have a problem with ``field``."""
        out = np.zeros(self.n, dtype=bool)
        for mask, f, _ in self.items:
            if f == field:
                out |= mask
        return out

    def bad(self) -> npt.NDArray[np.bool_]:
        out = np.zeros(self.n, dtype=bool)
        for mask, _, _ in self.items:
            out |= mask
        return out

    def errors(self, i: int) -> tuple[dict[str, str], ...]:
        return tuple(
            {"field": f, "message": m(i) if callable(m) else m} for mask, f, m in self.items if mask[i]
        )


def _mask(array: Any) -> npt.NDArray[np.bool_]:
    """A boolean pyarrow array as numpy, nulls as False."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _value(column: pa.Array, i: int) -> str:
    text = repr(column[i].as_py())
    return text if len(text) <= 40 else text[:37] + "..."


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _as_text(column: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column.cast(pa.string()) if pa.types.is_large_string(column.type) else column


def _device_ids(column: pa.Array | None, n: int, name: str, problems: _Problems) -> Coded:
    """Device ids, trimmed, checked once per distinct value (as the contract checks one reading's)."""
    if column is None:
        problems.add(np.ones(n, dtype=bool), name, "missing")
        return Coded(pa.array([], pa.string()), np.full(n, -1, dtype=np.int64))
    t = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (_is_text(t) or pa.types.is_integer(t)):
        if not pa.types.is_null(t):
            problems.add(
                ~_mask(column.is_null()), name, lambda i: f"must be a string, got {_value(column, i)}"
            )
        else:
            problems.add(np.ones(n, dtype=bool), name, "missing")
        return Coded(pa.array([], pa.string()), np.full(n, -1, dtype=np.int64))
    coded = Coded.of(column)
    trimmed = pc.utf8_trim_whitespace(coded.values)
    length = np.asarray(pc.utf8_length(trimmed).to_numpy(zero_copy_only=False), dtype=np.int64)
    printable = _mask(pc.utf8_is_printable(trimmed))
    codes = coded.codes
    missing = codes < 0
    safe = np.where(missing, 0, codes)
    present = ~missing
    problems.add(missing, name, "missing")
    if len(length):
        problems.add(present & (length == 0)[safe], name, "must not be empty")
        problems.add(
            present & (length > MAX_ID_LENGTH)[safe], name, f"longer than {MAX_ID_LENGTH} characters"
        )
        problems.add(present & ~printable[safe], name, "must contain printable characters only")
    return Coded(trimmed, codes)


def _epoch_ms(
    values: npt.NDArray[np.float64], rows: npt.NDArray[np.intp], name: str, problems: _Problems
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Epoch milliseconds (at ``rows``) as microseconds; returns (micros, ok) for those rows."""
    finite = np.isfinite(values)
    in_range = finite & (np.abs(np.where(finite, values, 0.0)) <= _LATEST_MS)
    bad = np.zeros(problems.n, dtype=bool)
    bad[rows[~finite]] = True
    problems.add(bad, name, "must be a finite number of epoch milliseconds")
    out = np.zeros(problems.n, dtype=bool)
    out[rows[finite & ~in_range]] = True
    problems.add(out, name, "out of range for epoch milliseconds")
    micros = np.rint(np.where(in_range, values, 0.0) * 1000.0).astype(np.int64)
    return micros, in_range


def _timestamps(column: pa.Array | None, n: int, name: str, problems: _Problems) -> npt.NDArray[np.int64]:
    """Epoch microseconds (UTC) per row; bad rows get a problem and 0."""
    micros = np.zeros(n, dtype=np.int64)
    if column is None:
        problems.add(np.ones(n, dtype=bool), name, "missing")
        return micros
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    t = column.type
    present = ~_mask(column.is_null())
    problems.add(~present, name, "missing")
    naive = "has no timezone: give an offset ('Z', '+01:00') or epoch milliseconds"
    if pa.types.is_timestamp(t):
        if t.tz is None:
            problems.add(present, name, f"timestamp {naive}")
            return micros
        as_us = pc.cast(column, _UTC_US, safe=False).cast(pa.int64())
        micros = np.asarray(pc.fill_null(as_us, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    elif pa.types.is_date(t):
        problems.add(present, name, f"a date {naive}")
        return micros
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        rows = np.flatnonzero(present)
        parsed, ok = _epoch_ms(values[rows], rows, name, problems)
        micros[rows[ok]] = parsed[ok]
    elif _is_text(t):
        micros = _text_timestamps(_as_text(column), present, name, problems, naive)
    else:
        problems.add(
            present, name, lambda i: f"must be ISO 8601 text or epoch milliseconds, got {_value(column, i)}"
        )
        return micros
    early = present & (micros < _EARLIEST_US) & ~problems.on(name)
    problems.add(early, name, "before 2000-01-01: epoch seconds sent as milliseconds?")
    return micros


def _text_timestamps(
    column: pa.Array, present: npt.NDArray[np.bool_], name: str, problems: _Problems, naive: str
) -> npt.NDArray[np.int64]:
    n = len(column)
    micros = np.zeros(n, dtype=np.int64)
    try:  # the common case: every value ISO 8601 with an offset
        parsed = pc.cast(column, _UTC_US).cast(pa.int64())
        return np.asarray(pc.fill_null(parsed, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    except pa.ArrowInvalid:
        pass
    text = pc.utf8_trim_whitespace(column)
    numeric = _mask(pc.match_substring_regex(text, _NUMERIC_TEXT)) & present
    is_naive = _mask(pc.match_substring_regex(text, _NAIVE_ISO)) & present & ~numeric
    other = present & ~numeric & ~is_naive
    rows = np.flatnonzero(numeric)
    if len(rows):
        values = np.asarray(
            pc.cast(text.take(pa.array(rows)), pa.float64()).to_numpy(zero_copy_only=False), np.float64
        )
        parsed, ok = _epoch_ms(values, rows, name, problems)
        micros[rows[ok]] = parsed[ok]
    problems.add(is_naive, name, lambda i: f"timestamp {_value(column, i)} {naive}")
    rows = np.flatnonzero(other)
    if len(rows):
        subset = text.take(pa.array(rows))
        try:
            cast = pc.cast(subset, _UTC_US).cast(pa.int64())
            micros[rows] = np.asarray(cast.to_numpy(zero_copy_only=False), dtype=np.int64)
        except pa.ArrowInvalid:
            # the contract's own rule, value by value, for the few rows Arrow's parser refuses
            bad_format = np.zeros(n, dtype=bool)
            bad_zone = np.zeros(n, dtype=bool)
            for i, value in zip(rows.tolist(), subset.to_pylist(), strict=True):
                try:
                    moment = datetime.fromisoformat(value)
                except ValueError:
                    bad_format[i] = True
                    continue
                if moment.tzinfo is None or moment.utcoffset() is None:
                    bad_zone[i] = True
                    continue
                micros[i] = (moment - _EPOCH) // timedelta(microseconds=1)
            problems.add(bad_format, name, lambda i: f"timestamp {_value(column, i)} is not ISO 8601")
            problems.add(bad_zone, name, lambda i: f"timestamp {_value(column, i)} {naive}")
    return micros


def _sensor_values(
    column: pa.Array | None, n: int, name: str, numeric_strings: bool, problems: _Problems
) -> npt.NDArray[np.float64]:
    """The sensor as float64 (``nan`` where missing); values that are not numbers get a problem."""
    if column is None:
        return np.full(n, np.nan)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    t = column.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t):
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    if pa.types.is_null(t):
        return np.full(n, np.nan)
    present = ~_mask(column.is_null())
    field = f"sensors.{name}"
    if _is_text(t) and numeric_strings:
        column = _as_text(column)
        try:
            return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        except pa.ArrowInvalid:
            pass
        text = pc.utf8_trim_whitespace(column)
        numeric = _mask(pc.match_substring_regex(text, _NUMERIC_TEXT)) & present
        special = _mask(pc.match_substring_regex(text, r"^[+-]?(inf|infinity|nan)$", ignore_case=True))
        usable = numeric | (special & present)
        values = np.full(n, np.nan)
        rows = np.flatnonzero(usable)
        if len(rows):
            values[rows] = np.asarray(
                pc.cast(pc.ascii_lower(text.take(pa.array(rows))), pa.float64()).to_numpy(
                    zero_copy_only=False
                ),
                dtype=np.float64,
            )
        problems.add(present & ~usable, field, lambda i: f"value {_value(column, i)} is not a number")
        return values
    problems.add(present, field, lambda i: f"value {_value(column, i)} is not a number")
    return np.full(n, np.nan)


def _text_values(column: pa.Array, name: str, problems: _Problems, *, nested_as_json: bool) -> pa.Array:
    """``column`` as one text value per row; a value with no faithful text form is its row's problem.

    Scalars are written by Arrow's cast (numbers, booleans, dates, timestamps, UTF-8 bytes). A
    nested value (list, struct, map) is written as compact JSON when ``nested_as_json`` (maps as
    ``[key, value]`` pairs, non-finite floats as text, as quarantined records are written);
    otherwise it is refused, as the telemetry contract refuses an identifier that is not a string.
    Bytes that are not UTF-8 (inside a nested value too) are refused: text would not keep them. A
    refused value is null here and a problem of its row (``name: reason``), so the row is
    quarantined whole with that reason instead of losing the value.
    """
    column = _as_text(column)
    t = column.type
    if _is_text(t):
        return column
    if pa.types.is_nested(t):
        if nested_as_json:
            return _each_as_text(column, name, problems, _compact_json)
        problems.add(~_mask(column.is_null()), name, lambda i: f"must be a string, got {_value(column, i)}")
        return pa.nulls(len(column), pa.string())
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # bytes that are not all UTF-8, odd types
        return _each_as_text(column, name, problems, _scalar_text)


def _utf8_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8")  # strict: UnicodeDecodeError refuses the value
    return json_default(value)


def _compact_json(value: Any) -> str:
    return json.dumps(finite(value), default=_utf8_default, ensure_ascii=False, separators=(",", ":"))


def _scalar_text(value: Any) -> str:
    return bytes(value).decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


def _each_as_text(column: pa.Array, name: str, problems: _Problems, write: Callable[[Any], str]) -> pa.Array:
    """The slow path of :func:`_text_values`, value by value, for the types Arrow cannot cast."""
    values: list[str | None] = []
    refused = np.zeros(len(column), dtype=bool)
    for i, value in enumerate(column.to_pylist()):
        if value is None:
            values.append(None)
            continue
        try:
            values.append(write(value))
        except UnicodeDecodeError:
            refused[i] = True
            values.append(None)
    problems.add(refused, name, lambda i: f"holds bytes that are not UTF-8 text: {_value(column, i)}")
    return pa.array(values, pa.string())


def _identifier(column: pa.Array | None, name: str, problems: _Problems) -> Coded | None:
    """An identifier column (mode, asset, line, site) as :class:`Coded` text, if the file has it.

    A value that is not text (a list, a struct, bytes that are not UTF-8) is a problem of its row.
    """
    if column is None:
        return None
    t = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if _is_text(t) or pa.types.is_integer(t):
        return Coded.of(column)
    return Coded.of(_text_values(column, name, problems, nested_as_json=False))


def validate_chunk(chunk: RawChunk, spec: ModelSpec, keep_columns: Sequence[str] = ()) -> ValidChunk:
    """Check every row of a chunk as the telemetry contract checks a reading, vectorised.

    A row is valid when its device id is present (text, at most 128 printable characters), its
    timestamp is ISO 8601 with an offset or epoch milliseconds (naive timestamps are errors) from
    2000 on, each sensor value present is a number (text that reads as a number in CSV and
    Parquet; a JSON string is not a number, as for events), its mode, asset, line and site are
    text (or integers) when present, and each of ``keep_columns`` it has can be written as text
    (nested values become JSON; bytes that are not UTF-8 cannot). Missing and out-of-range
    sensors and derived checks are left to :func:`~zaindari.pipeline.score_table` (its
    rejections).
    """
    batch = chunk.batch
    n = int(batch.num_rows)
    names = batch.schema.names
    problems = _Problems(n)

    def column(name: str | None) -> pa.Array | None:
        return batch.column(names.index(name)) if name is not None and name in names else None

    ids = spec.identifiers
    devices = _device_ids(column(ids.asset), n, ids.asset, problems)
    micros = _timestamps(column(ids.time), n, ids.time, problems)
    sensors = {s: _sensor_values(column(s), n, s, chunk.numeric_strings, problems) for s in spec.sensor_names}
    for position, name, message in chunk.cell_errors:
        mask = np.zeros(n, dtype=bool)
        mask[position] = True
        problems.add(mask, f"sensors.{name}" if name in sensors else name, message)
    modes = _identifier(column(ids.mode), ids.mode or "mode", problems)
    identity = {
        name: coded
        for name in IDENTITY_COLUMNS
        if (coded := _identifier(column(name), name, problems)) is not None
    }
    kept = {
        name: _text_values(col, name, problems, nested_as_json=True)
        for name in keep_columns
        if (col := column(name)) is not None
    }
    bad = problems.bad()
    positions = np.flatnonzero(~bad).astype(np.intp)
    rejected = []
    for i in np.flatnonzero(bad).tolist():
        errors = problems.errors(i)
        rejected.append((i, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors))

    every = len(positions) == n  # the common case: no copy of the columns
    table = SensorTable(
        device_id=devices.objects(None if every else positions),
        timestamp=(micros if every else micros[positions]) / 1e6,
        sensors=sensors if every else {s: v[positions] for s, v in sensors.items()},
        mode=(
            modes.objects(None if every else positions)
            if modes is not None
            else np.full(len(positions), None, dtype=object)
        ),
    )
    return ValidChunk(table, positions, micros, devices, modes, identity, kept, rejected)


# ----------------------------------------------------------------------------- alerts


@dataclass
class _Tally:
    device_id: str
    rule_id: str
    source: Literal["expert", "learned"]
    message: str
    rows: int = 0
    severity: str | None = None
    first_us: int | None = None
    last_us: int | None = None
    worst: list[tuple[float, int, int, float, str | None]] = field(default_factory=list)
    raised: int = 0
    escalated: int = 0
    resolved: int = 0
    first_alert: Alert | None = None


def _iso(micros: int) -> str:
    return (_EPOCH + timedelta(microseconds=int(micros))).isoformat().replace("+00:00", "Z")


def _worse(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if SEVERITY_RANK.get(a, -1) >= SEVERITY_RANK.get(b, -1) else b


class _AlertTally:
    """Alerting rows and alert events of one file, per device and rule, in bounded memory."""

    def __init__(self, bundle: ModelBundle, keep: int) -> None:
        self.keep = keep
        self.spec = bundle.spec
        self.thresholds = bundle.thresholds
        self.rules = {r.id: r for r in bundle.spec.alert_policy.rules}
        self.rule_ids = [*self.rules, LEARNED_RULE_ID]
        self.tallies: dict[tuple[str, str], _Tally] = {}
        self.identity: dict[str, dict[str, str | None]] = {}
        self.alert_rows = 0

    def _tally(self, device: str, rule: str) -> _Tally:
        key = (device, rule)
        tally = self.tallies.get(key)
        if tally is None:
            expert = self.rules.get(rule)
            tally = _Tally(
                device,
                rule,
                "expert" if expert else "learned",
                (expert.message or rule)
                if expert
                else f"model score {self.thresholds.direction} its learned threshold",
            )
            self.tallies[key] = tally
        return tally

    def _badness(self, score: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return score if self.thresholds.direction == "above" else -score

    def _learned_severity(self, score: npt.NDArray[np.float64]) -> npt.NDArray[np.object_]:
        out = np.full(len(score), None, dtype=object)
        for level, value in self.thresholds.ordered():
            hit = score >= value if self.thresholds.direction == "above" else score <= value
            out[hit] = level
        return out

    def add(
        self,
        devices: npt.NDArray[np.object_],
        rows: npt.NDArray[np.int64],
        micros: npt.NDArray[np.int64],
        score: npt.NDArray[np.float64],
        row_rules: list[list[str]],
        lengths: npt.NDArray[np.int32],
        identity: Callable[[int], dict[str, str | None]],
    ) -> None:
        """Add one chunk's scored rows (``row_rules`` per row: the rules whose condition held;
        ``lengths`` how many)."""
        hits = np.flatnonzero(lengths)
        self.alert_rows += len(hits)
        if not len(hits):
            return
        k = np.repeat(hits, lengths[hits])
        index = {r: i for i, r in enumerate(self.rule_ids)}
        rule_names = list(itertools.chain.from_iterable(row_rules[i] for i in hits.tolist()))
        rule_code = np.fromiter((index[r] for r in rule_names), dtype=np.int64, count=len(rule_names))
        device_values, device_code = np.unique(devices[k].astype(str), return_inverse=True)
        group = device_code * len(self.rule_ids) + rule_code
        order = np.lexsort((-self._badness(score)[k], group))
        sorted_groups = group[order]
        starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
        ends = np.r_[starts[1:], len(order)]
        learned_severity = self._learned_severity(score[k])
        badness = self._badness(score)
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            members = order[s:e]
            device = str(device_values[device_code[members[0]]])
            rule = self.rule_ids[int(rule_code[members[0]])]
            tally = self._tally(device, rule)
            tally.rows += len(members)
            first, last = int(micros[k[members]].min()), int(micros[k[members]].max())
            tally.first_us = first if tally.first_us is None else min(tally.first_us, first)
            tally.last_us = last if tally.last_us is None else max(tally.last_us, last)
            expert = self.rules.get(rule)
            for m in members[: self.keep].tolist():
                i = int(k[m])
                severity = expert.severity if expert else learned_severity[m]
                tally.worst.append(
                    (float(badness[i]), int(rows[i]), int(micros[i]), float(score[i]), severity)
                )
                tally.severity = _worse(tally.severity, severity)
            tally.worst.sort(key=lambda w: (-w[0], w[1]))
            del tally.worst[self.keep :]
            self.identity.setdefault(device, identity(int(k[members[0]])))

    def add_alerts(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            tally = self._tally(alert.device_id, alert.rule_id)
            if alert.kind == "raised":
                tally.raised += 1
                if tally.first_alert is None:
                    tally.first_alert = alert
            elif alert.kind == "escalated":
                tally.escalated += 1
            else:
                tally.resolved += 1
            tally.severity = _worse(tally.severity, alert.severity)

    def summaries(self) -> list[AlertSummary]:
        out = []
        for (device, _), t in sorted(self.tallies.items()):
            ident = self.identity.get(device, {})
            first_alert = t.first_alert.model_copy(update=ident) if t.first_alert and ident else t.first_alert
            out.append(
                AlertSummary(
                    device_id=device,
                    asset=ident.get("asset"),
                    line=ident.get("line"),
                    site=ident.get("site"),
                    rule_id=t.rule_id,
                    source=t.source,
                    severity=t.severity,
                    message=t.message,
                    direction=self.thresholds.direction,
                    rows=t.rows,
                    raised=t.raised,
                    escalated=t.escalated,
                    resolved=t.resolved,
                    first_at=None if t.first_us is None else _iso(t.first_us),
                    last_at=None if t.last_us is None else _iso(t.last_us),
                    worst_rows=[
                        WorstRow(row=r, timestamp=_iso(us), score=s, severity=v) for _, r, us, s, v in t.worst
                    ],
                    first_alert=first_alert,
                )
            )
        return out


# ----------------------------------------------------------------------------- the use case


def _read_ahead(chunks: Iterator[_T], depth: int) -> Iterator[_T]:
    """Items from a background thread, at most ``depth`` ahead of the consumer.

    An exception in the reader is raised here, in the consumer; a consumer that stops early stops
    the reader (after the chunk it is parsing).
    """
    if depth <= 0:
        yield from chunks
        return
    ahead: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(("chunk", chunk)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put(("error", exc))

    reader = threading.Thread(target=produce, name="zaindari-file-reader", daemon=True)
    reader.start()
    try:
        while True:
            kind, item = ahead.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():
            with contextlib.suppress(queue.Empty):
                ahead.get(timeout=0.05)
        reader.join()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one chunk's scoring.

    ``score_table`` allocates a few Python objects per row (the alert rules of each row); with the
    collector on, a chunk of them triggers full collections over every object in the process, which
    doubled the cost of scoring in the benchmark. Nothing scored here forms reference cycles that
    must be reclaimed mid-chunk; the collector resumes (and catches up) right after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _feature_columns(features: FeatureBatch, names: Sequence[str]) -> npt.NDArray[np.float32]:
    """The model's input (:meth:`FeatureBatch.matrix`: the same float32 values) one feature per
    row: its transpose is a column-major matrix, which drift binning reads twice as fast (one
    edge per column: a scalar compare along each column) and costs a sixth of the row-major copy."""
    return np.array([features.columns[name] for name in names], dtype=np.float32).reshape(len(names), -1)


def _summarize_chunk(
    bundle: ModelBundle,
    baseline: Baseline,
    valid: ValidChunk,
    result: TableScores,
    alerts: npt.NDArray[np.bool_],
) -> list[WindowSummary]:
    """A scored chunk's drift window summaries: what ``score_table`` would have returned with
    ``summarize=True`` (the same call, on the same rows), with the devices passed as the chunk's
    codes instead of one name per row."""
    table = valid.table
    codes = valid.devices.codes
    every = len(valid.positions) == len(codes)
    return summarize_table(
        baseline,
        model_version=bundle.model_version,
        devices=DeviceCodes(codes if every else codes[valid.positions], valid.devices.values.to_pylist()),
        timestamps=table.timestamp,
        sensors=table.sensors,
        rows=result.rows,
        matrix=_feature_columns(result.features, bundle.signature.features).T,
        score=result.score,
        alerts=alerts,
    )


@contextlib.contextmanager
def _outputs_thread(read_ahead: int) -> Iterator[ThreadPoolExecutor | None]:
    """One thread for the chunks' outputs (scores tables written through the sink, drift
    summaries counted: Arrow and numpy, mostly outside the GIL), so a chunk's are done while the
    next one is scored. One thread: the sink is called in chunk order, never from two threads at
    once. None when the options ask for no reading ahead either (everything on the caller's
    thread). On the way out it finishes the chunk it is on; outputs not collected are dropped
    (the run is then aborted by the caller)."""
    if read_ahead <= 0:
        yield None
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zaindari-file-outputs")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Progress:
    rows_in: int = 0
    rows_scored: int = 0
    rows_quarantined: int = 0
    blank: int = 0
    chunks: int = 0
    columns: list[str] = field(default_factory=list)
    devices: set[str] = field(default_factory=set)
    #: the run's window summaries (``zaindari.drift``), one per window start, merged chunk by chunk
    windows: dict[int, WindowSummary] = field(default_factory=dict)

    #: chunks' outputs being written on the outputs thread (each returns the chunk's drift
    #: summaries), oldest first
    pending: deque[Future[list[WindowSummary]]] = field(default_factory=deque)

    def add_summaries(self, summaries: Sequence[WindowSummary]) -> None:
        for summary in summaries:
            known = self.windows.get(summary.start)
            self.windows[summary.start] = summary if known is None else known.merge(summary)

    def collect_summaries(self, keep: int = 0) -> None:
        """Wait for the pending chunks' outputs, in chunk order, until ``keep`` are left pending,
        merging their summaries (an error of one, a sink's included, is raised here)."""
        while len(self.pending) > keep:
            self.add_summaries(self.pending.popleft().result())

    def sink_failure(self) -> PortError | None:
        """The sink's error in a chunk's outputs that finished but were not collected (the run
        stopped on another error meanwhile), if any."""
        for future in self.pending:
            if future.done() and not future.cancelled() and isinstance(future.exception(), PortError):
                return cast(PortError, future.exception())
        return None


class FileScoring:
    """Scores files (or parts of files) with the current model; every output goes through the sink.

    Parameters
    ----------
    model
        Returns the bundle to score with (the adapter caches it and resolves aliases).
    sink
        Where scores, quarantined rows and manifests go (see :class:`zaindari.ports.FileSink`).
    options
        Chunk sizes, summaries, pass-through columns, threads.
    clock
        Current time (UTC); injectable for tests.
    summaries
        Where each run's window summaries go (``zaindari.drift``; none: not kept). They are
        written under the run's name before the outputs are published, so a retried run
        overwrites its own.
    """

    def __init__(
        self,
        *,
        model: Callable[[], ModelBundle],
        sink: FileSink,
        options: FileScoringOptions | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        summaries: SummaryStore | None = None,
    ) -> None:
        self.model = model
        self.sink = sink
        self.options = options or FileScoringOptions()
        self.clock = clock
        self.summaries = summaries

    def score_file(
        self,
        stream: ByteStream,
        source: FileSource,
        *,
        part: FilePart | None = None,
        fmt: FileFormat | None = None,
    ) -> FileManifest:
        """Score a file (or one part of it) and write its outputs and manifest.

        Parameters
        ----------
        stream
            The object's bytes. Parquet and byte-range parts need a seekable stream.
        source
            Which object this is (its key decides the format unless ``fmt`` is given).
        part
            One part of a fanned-out file (see :func:`plan_parts`); ``None`` for the whole file.
        fmt
            The format, when the key does not tell it.

        Returns
        -------
        FileManifest
            ``scored`` with the counts and alert summaries, or ``failed`` with a clear error (the
            file is then quarantined whole and nothing else is written).

        Raises
        ------
        PortError
            When the sink fails (nothing is published; retry the file).
        """
        started = self.clock()
        t0 = time.perf_counter()
        bundle = self.model()
        run = FileRun(source, part, started)
        progress = _Progress()
        tally = _AlertTally(bundle, self.options.worst_rows)
        fmt_name = fmt.name if fmt else "unknown"
        try:
            fmt = fmt or detect_format(source.key)
            fmt_name = fmt.name
            states: dict[str, DeviceState] = {}
            chunks = read_chunks(
                stream,
                fmt,
                bundle.spec,
                part=part,
                chunk_bytes=self.options.chunk_bytes,
                chunk_rows=self.options.chunk_rows,
                max_line_bytes=self.options.max_line_bytes,
                on_columns=progress.columns.extend,
            )
            keep = self.options.keep_columns
            # reading, parsing and validating (Arrow and numpy, mostly outside the GIL) run ahead
            # on another thread while this one scores; each chunk's outputs (written, and its
            # drift summaries counted) on a third while the next chunk is scored
            prepared = ((chunk, validate_chunk(chunk, bundle.spec, keep)) for chunk in chunks)
            with _outputs_thread(self.options.read_ahead) as writing:
                for chunk, valid in _read_ahead(prepared, self.options.read_ahead):
                    self._score_chunk(bundle, run, chunk, valid, states, tally, progress, writing)
                progress.collect_summaries()
        except PortError:
            self.sink.abort(run)
            raise
        except (FileError, pa.ArrowException, OSError, UnicodeDecodeError, ValueError) as exc:
            lost = progress.sink_failure()
            if lost is not None:  # the sink failed on the outputs thread first: retried, not quarantined
                self.sink.abort(run)
                raise lost from exc
            manifest = self._failed(run, bundle, fmt_name, progress, exc, t0)
            self.sink.write_manifest(manifest)
            return manifest
        except BaseException:
            self.sink.abort(run)  # a bug, not the file: publish nothing and let it surface
            raise
        if self.summaries is not None and progress.windows:
            try:
                self.summaries.write(
                    [progress.windows[k] for k in sorted(progress.windows)], source="files", name=run.name
                )
            except PortError:
                self.sink.abort(run)
                raise
        outputs = self.sink.commit(run)
        known = {bundle.spec.identifiers.asset, bundle.spec.identifiers.time, bundle.spec.identifiers.mode}
        known |= set(bundle.spec.sensor_names) | set(IDENTITY_COLUMNS)
        manifest = FileManifest(
            source=source,
            source_id=source.source_id,
            format=fmt_name,
            part=part,
            parts=part.count if part else 1,
            status="scored",
            rows_in=progress.rows_in,
            rows_scored=progress.rows_scored,
            rows_quarantined=progress.rows_quarantined,
            blank_lines=progress.blank,
            alert_rows=tally.alert_rows,
            alerts=tally.summaries(),
            devices=len(progress.devices),
            chunks=progress.chunks,
            columns=progress.columns,
            extra_columns=[c for c in progress.columns if c not in known],
            model_version=bundle.model_version,
            rule_set_version=bundle.spec.alert_policy.rule_set_version,
            started_at=started,
            duration_seconds=time.perf_counter() - t0,
            outputs=outputs,
        )
        self.sink.write_manifest(manifest)
        return manifest

    def _failed(
        self,
        run: FileRun,
        bundle: ModelBundle,
        fmt_name: str,
        progress: _Progress,
        exc: BaseException,
        t0: float,
    ) -> FileManifest:
        """Drop what the run staged, set the file aside, and say why in its manifest."""
        self.sink.abort(run)
        error = str(exc) if isinstance(exc, FileError) else f"cannot read the file: {exc}"
        part = run.part
        return FileManifest(
            source=run.source,
            source_id=run.source.source_id,
            format=fmt_name,
            part=part,
            parts=part.count if part else 1,
            status="failed",
            error=error,
            rows_read_before_failure=progress.rows_in,
            columns=progress.columns,
            model_version=bundle.model_version,
            rule_set_version=bundle.spec.alert_policy.rule_set_version,
            started_at=run.started_at,
            duration_seconds=time.perf_counter() - t0,
            quarantined_to=self.sink.quarantine_file(run.source, error),
        )

    def complete_parts(self, parts: Sequence[FileManifest]) -> FileManifest:
        """The last step of a fan-out: merge the parts' manifests and write the file's manifest.

        When any part failed (or one is missing), the file fails as a whole: the outputs the
        other parts committed are discarded, the file is quarantined, and nothing of it remains
        in the scores.
        """
        merged = merge_manifests(parts)
        if merged.status == "failed":
            self.sink.discard(merged.outputs)
            where = self.sink.quarantine_file(merged.source, merged.error or "a part failed")
            merged = FileManifest.model_validate(
                merged.model_dump()
                | {
                    "outputs": [],
                    "quarantined_to": where,
                    "rows_in": 0,
                    "rows_scored": 0,
                    "rows_quarantined": 0,
                    "alerts": [],
                    "alert_rows": 0,
                }
            )
        self.sink.write_manifest(merged)
        return merged

    # ------------------------------------------------------------------------------------------

    def _score_chunk(
        self,
        bundle: ModelBundle,
        run: FileRun,
        chunk: RawChunk,
        valid: ValidChunk,
        states: dict[str, DeviceState],
        tally: _AlertTally,
        progress: _Progress,
        writing: ThreadPoolExecutor | None = None,
    ) -> None:
        received = run.started_at.isoformat()
        source = run.source
        progress.chunks += 1
        progress.blank += chunk.blank
        rejected: list[RejectedRecord] = [
            RejectedRecord(
                source.key,
                source.source_id,
                bad.reason,
                ({"field": "row", "message": bad.reason},),
                bad.text,
                "parse",
                bad.row,
                received,
            )
            for bad in chunk.invalid
        ]
        with _collector_paused():
            result = score_table(bundle, valid.table, states, threads=self.options.threads, summarize=False)
        states.update(result.states)
        lengths = np.fromiter(map(len, result.row_rules), dtype=np.int32, count=len(result.rows))

        # quarantine: contract failures, then the features stage's (ranges, derived values)
        bad_positions = [p for p, _, _ in valid.rejected]
        feature_rejections = result.rejections
        bad_positions += [int(valid.positions[r.index]) for r in feature_rejections]
        if bad_positions:
            records = self._records(chunk, bad_positions)
            reasons = [(reason, errors, "contract") for _, reason, errors in valid.rejected]
            reasons += [(r.reason, r.errors, r.stage) for r in feature_rejections]
            for position, record, (reason, errors, stage) in zip(
                bad_positions, records, reasons, strict=True
            ):
                rejected.append(
                    RejectedRecord(
                        source.key,
                        source.source_id,
                        reason,
                        errors,
                        record,
                        stage,
                        int(chunk.rows[position]),
                        received,
                    )
                )
        rejected.sort(key=lambda r: r.reading_index or 0)
        scored = valid.positions[result.rows]
        m = len(scored)
        baseline = baseline_of(bundle)

        def outputs() -> list[WindowSummary]:
            """The chunk's writes (quarantined rows, then scores) and its drift summaries."""
            if rejected:
                self.sink.write_quarantine(run, rejected)
            if m:
                self.sink.write_scores(
                    run, self._scores_table(bundle, run, chunk, valid, result, scored, lengths)
                )
            if baseline is None:
                return []
            return _summarize_chunk(bundle, baseline, valid, result, lengths > 0)

        if writing is None:
            progress.add_summaries(outputs())
        else:
            # the last chunk's outputs first (done while this chunk was scored): a sink that
            # failed there is raised now, before this chunk writes anything after it; at most
            # one chunk held for its outputs
            progress.collect_summaries()
            progress.pending.append(writing.submit(outputs))

        if m:
            devices = valid.table.device_id[result.rows]
            micros = valid.micros[scored]
            rows = chunk.rows[scored]

            def identity(k: int) -> dict[str, str | None]:
                return {name: col.at(int(scored[k])) for name, col in valid.identity.items()}

            tally.add(devices, rows, micros, result.score, result.row_rules, lengths, identity)
            seen = np.unique(valid.devices.codes[scored])
            progress.devices.update(valid.devices.values.take(pa.array(seen[seen >= 0])).to_pylist())
        tally.add_alerts(result.alerts)
        progress.rows_in += chunk.records_in
        progress.rows_scored += m
        progress.rows_quarantined += len(rejected)
        if progress.rows_in != progress.rows_scored + progress.rows_quarantined:  # pragma: no cover
            raise RuntimeError(
                f"row accounting broke at chunk {progress.chunks}: {progress.rows_in} in, "
                f"{progress.rows_scored} scored, {progress.rows_quarantined} quarantined"
            )

    @staticmethod
    def _records(chunk: RawChunk, positions: list[int]) -> list[Any]:
        """The raw rows at ``positions``, every column kept (extra columns pass through)."""
        if chunk.records is not None:
            return [chunk.records[p] for p in positions]
        return list(chunk.batch.take(pa.array(positions, type=pa.int64())).to_pylist())

    def _scores_table(
        self,
        bundle: ModelBundle,
        run: FileRun,
        chunk: RawChunk,
        valid: ValidChunk,
        result: TableScores,
        scored: npt.NDArray[np.intp],
        lengths: npt.NDArray[np.int32],
    ) -> pa.Table:
        m = len(scored)
        take = pa.array(scored, type=pa.int64())
        offsets = np.zeros(m + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        rule_values = pa.array(list(itertools.chain.from_iterable(result.row_rules)), type=pa.string())
        strings = pa.string()

        def text(value: str | None) -> pa.Array:
            return pa.nulls(m, strings) if value is None else pa.repeat(value, m).cast(strings)

        def taken(col: Coded | None) -> pa.Array:
            return pa.nulls(m, strings) if col is None else col.take(scored)

        columns = [
            text(run.source.key),
            text(run.source.version),
            pa.array(chunk.rows[scored], type=pa.int64()),
            valid.devices.take(scored),
            taken(valid.identity.get("asset")),
            taken(valid.identity.get("line")),
            taken(valid.identity.get("site")),
            pa.array(valid.micros[scored], type=pa.int64()).cast(_UTC_US),
            taken(valid.modes),
            pa.array(result.score, type=pa.float64()),
            pa.array(result.row_severity, type=strings),
            pa.array(lengths > 0),
            pa.ListArray.from_arrays(pa.array(offsets), rule_values),
            pa.array(np.asarray(result.features.late, dtype=bool)),
            text(bundle.model_version),
            text(bundle.spec.alert_policy.rule_set_version),
        ]
        schema = SCORES_SCHEMA
        for name in self.options.keep_columns:
            col = valid.kept.get(name)
            columns.append(pa.nulls(m, strings) if col is None else col.take(take))
            schema = schema.append(pa.field(name, strings))
        return pa.Table.from_arrays(columns, schema=schema)


# ----------------------------------------------------------------------------- fan-out


def _instant(pick: Callable[..., str], *stamps: str | None) -> str | None:
    """The earliest or latest of ISO 8601 stamps, compared as instants (not as text)."""
    present = [x for x in stamps if x]
    return pick(present, key=datetime.fromisoformat) if present else None


def _merge_alerts(summaries: list[AlertSummary], keep: int) -> list[AlertSummary]:
    merged: dict[tuple[str, str], AlertSummary] = {}
    for s in summaries:
        key = (s.device_id, s.rule_id)
        prev = merged.get(key)
        if prev is None:
            merged[key] = s
            continue
        sign = -1.0 if s.direction == "above" else 1.0
        worst = sorted([*prev.worst_rows, *s.worst_rows], key=lambda w: (sign * w.score, w.row))
        firsts = [a for a in (prev.first_alert, s.first_alert) if a is not None]
        merged[key] = prev.model_copy(
            update={
                "asset": prev.asset or s.asset,
                "line": prev.line or s.line,
                "site": prev.site or s.site,
                "severity": _worse(prev.severity, s.severity),
                "rows": prev.rows + s.rows,
                "raised": prev.raised + s.raised,
                "escalated": prev.escalated + s.escalated,
                "resolved": prev.resolved + s.resolved,
                "first_at": _instant(min, prev.first_at, s.first_at),
                "last_at": _instant(max, prev.last_at, s.last_at),
                "worst_rows": worst[:keep],
                "first_alert": min(firsts, key=lambda a: datetime.fromisoformat(a.timestamp))
                if firsts
                else None,
            }
        )
    return [merged[k] for k in sorted(merged)]


def merge_manifests(parts: Sequence[FileManifest], *, worst_rows: int | None = None) -> FileManifest:
    """One manifest for a fanned-out file from its parts' manifests.

    Totals are the sums of the parts' (so ``rows_in = rows_scored + rows_quarantined`` holds),
    alert summaries are merged per device and rule (counts summed, worst rows re-ranked). The
    file fails when a part failed, when parts are missing or repeated, or when they were scored
    by different model versions.
    """
    if not parts:
        raise ValueError("no part manifests to merge")
    first = parts[0]
    count = max(p.parts for p in parts)
    seen = sorted(p.part.index if p.part else 0 for p in parts)
    errors: list[str] = []
    missing = sorted(set(range(count)) - set(seen))
    repeated = sorted({i for i in seen if seen.count(i) > 1})
    if missing:
        errors.append(f"parts {missing} of {count} are missing")
    if repeated:
        errors.append(f"parts {repeated} were reported more than once")
    if len({p.source_id for p in parts}) > 1:
        errors.append("the manifests are of different files")
    versions = sorted({p.model_version for p in parts})
    if len(versions) > 1:
        errors.append(f"parts were scored by different model versions {versions}")
    for p in sorted(parts, key=lambda p: p.part.index if p.part else 0):
        if p.status == "failed":
            errors.append(f"part {p.part.index if p.part else 0}: {p.error}")
    keep = worst_rows or max((len(a.worst_rows) for p in parts for a in p.alerts), default=5) or 5
    start = min(p.started_at for p in parts)
    end = max(p.started_at + timedelta(seconds=p.duration_seconds) for p in parts)
    scored = [p for p in parts if p.status == "scored"]
    columns = next((p.columns for p in parts if p.columns), [])
    return FileManifest(
        source=first.source,
        source_id=first.source_id,
        format=first.format,
        part=None,
        parts=count,
        status="failed" if errors else "scored",
        error="; ".join(errors) or None,
        rows_in=sum(p.rows_in for p in scored),
        rows_scored=sum(p.rows_scored for p in scored),
        rows_quarantined=sum(p.rows_quarantined for p in scored),
        blank_lines=sum(p.blank_lines for p in scored),
        rows_read_before_failure=sum(p.rows_read_before_failure for p in parts),
        alert_rows=sum(p.alert_rows for p in scored),
        alerts=_merge_alerts([a for p in scored for a in p.alerts], keep),
        devices=max((p.devices for p in parts), default=0),
        chunks=sum(p.chunks for p in parts),
        columns=columns,
        extra_columns=next((p.extra_columns for p in parts if p.columns), []),
        model_version=versions[0] if len(versions) == 1 else ",".join(versions),
        rule_set_version=first.rule_set_version,
        started_at=start,
        duration_seconds=(end - start).total_seconds(),
        outputs=sorted({o for p in parts for o in p.outputs}),
        quarantined_to=next((p.quarantined_to for p in parts if p.quarantined_to), None),
    )
