"""Reading historian files in bounded chunks: CSV (optionally gzip), Parquet, JSON Lines (optionally gzip).

Every reader yields :class:`RawChunk` objects: a ``pyarrow`` record batch of at most about
``chunk_bytes`` of input (or ``chunk_rows`` rows for Parquet) with the **file row number** of each
of its rows, plus the records that could not even be parsed as a row (a CSV line with the wrong
number of fields, a JSON line that is not an object). Memory stays flat as the file grows: nothing
holds more than one chunk, one line-aligned block of input, and a Parquet row group's pages.

Row numbers are global in a file, in every part of it:

* CSV: the 0-based index of the line after the header (row 0 is the file's second line);
* JSON Lines: the 0-based line index;
* Parquet: the 0-based row index (row groups in order).

Blank lines keep their number but are not rows (they are counted apart). Splitting a file into
parts (:func:`plan_parts`) works on Parquet row groups and on byte ranges of *uncompressed* CSV and
JSON Lines; a gzip stream cannot be entered in the middle, so a gzip file is always one part.
Newlines inside quoted CSV values are not supported (a historian export never has them, and byte
ranges could not be aligned on lines if it had).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
from pydantic import BaseModel, ConfigDict, Field

from zaindari.spec import ModelSpec

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_CHUNK_ROWS",
    "DEFAULT_PART_BYTES",
    "IDENTITY_COLUMNS",
    "ByteStream",
    "FileError",
    "FileFormat",
    "FilePart",
    "InvalidRecord",
    "MissingColumns",
    "RawChunk",
    "SeekableByteStream",
    "UnsupportedFormat",
    "check_columns",
    "detect_format",
    "number_parts",
    "plan_parts",
    "read_chunks",
    "required_columns",
]

DEFAULT_CHUNK_BYTES = 3 * 1024 * 1024
DEFAULT_CHUNK_ROWS = 16_384
DEFAULT_PART_BYTES = 256 * 1024 * 1024
MAX_LINE_BYTES = 8 * 1024 * 1024
IDENTITY_COLUMNS = ("asset", "line", "site")
_GZIP_MAGIC = b"\x1f\x8b"
_SUFFIXES: dict[str, tuple[Literal["csv", "parquet", "jsonl"], Literal["gzip"] | None]] = {
    ".csv": ("csv", None),
    ".csv.gz": ("csv", "gzip"),
    ".parquet": ("parquet", None),
    ".jsonl": ("jsonl", None),
    ".jsonl.gz": ("jsonl", "gzip"),
    ".json.gz": ("jsonl", "gzip"),
}


class FileError(ValueError):
    """The file cannot be scored as a whole (corrupt, truncated, wrong format, missing columns)."""


class UnsupportedFormat(FileError):
    """The object key's suffix names no format file scoring reads."""


class MissingColumns(FileError):
    """Columns the model spec needs are absent from the file."""

    def __init__(self, missing: Sequence[str], present: Sequence[str]) -> None:
        self.missing = list(missing)
        self.present = list(present)
        shown = ", ".join(self.present[:40]) + (", ..." if len(self.present) > 40 else "")
        super().__init__(
            f"missing required column{'s' if len(self.missing) > 1 else ''} "
            f"{', '.join(self.missing)} (the file has: {shown or 'no column'})"
        )


class ByteStream(Protocol):
    """A readable binary stream (a local file, an S3 body, a ``pyarrow`` input stream)."""

    def read(self, size: int = -1, /) -> bytes: ...


class SeekableByteStream(ByteStream, Protocol):
    """A binary stream that can seek (needed for Parquet and for byte-range parts)."""

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


class FileFormat(BaseModel):
    """A file's format and compression, from its object key's suffix."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["csv", "parquet", "jsonl"]
    compression: Literal["gzip"] | None = None

    @property
    def name(self) -> str:
        return self.kind + (".gz" if self.compression else "")

    @property
    def splittable(self) -> bool:
        """Whether parts can be planned below the whole file (row groups or byte ranges)."""
        return self.compression is None


def detect_format(key: str) -> FileFormat:
    """The format of an object from its key (``.csv``, ``.csv.gz``, ``.parquet``, ``.jsonl``,
    ``.jsonl.gz``, ``.json.gz``; case-insensitive).

    Raises
    ------
    UnsupportedFormat
        For any other suffix.
    """
    name = PurePosixPath(key).name.lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            kind, compression = _SUFFIXES[suffix]
            return FileFormat(kind=kind, compression=compression)
    raise UnsupportedFormat(
        f"cannot score {PurePosixPath(key).name!r}: unsupported file type; expected one of "
        + ", ".join(sorted(_SUFFIXES))
    )


# ----------------------------------------------------------------------------------- parts


class FilePart(BaseModel):
    """One part of a file for fan-out: a byte range (CSV, JSON Lines) or row groups (Parquet).

    ``start``/``end`` are byte offsets; the part holds the lines whose first byte lies in
    ``[start, end)`` (a part starting mid-line skips to the next line; the line crossing ``end``
    is read to its end). ``first_row`` is the file row number of the part's first line; for byte
    ranges it is known only after counting the newlines before ``start`` (:func:`number_parts`,
    or the reader counts them itself when it is ``None``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    count: int = Field(ge=1)
    start: int | None = Field(default=None, ge=0)
    end: int | None = Field(default=None, ge=0)
    row_groups: tuple[int, ...] | None = None
    first_row: int | None = Field(default=None, ge=0)
    rows: int | None = Field(default=None, ge=0)

    @property
    def is_byte_range(self) -> bool:
        return self.start is not None and self.end is not None


def plan_parts(
    fmt: FileFormat | str,
    size: int,
    parquet_metadata: Any | None = None,
    *,
    part_bytes: int = DEFAULT_PART_BYTES,
) -> list[FilePart]:
    """Split a file into parts of about ``part_bytes`` for parallel scoring.

    Parameters
    ----------
    fmt
        The file's format (or its object key).
    size
        The object's size in bytes.
    parquet_metadata
        ``pyarrow.parquet.FileMetaData`` of a Parquet file (its footer); required for Parquet.
    part_bytes
        Target bytes per part (compressed bytes for Parquet row groups).

    Returns
    -------
    list[FilePart]
        Parquet: consecutive row groups per part, with ``first_row`` and ``rows``. Uncompressed
        CSV and JSON Lines: byte ranges (``first_row`` of parts after the first is ``None``; see
        :func:`number_parts`). Gzip: always one part, a gzip stream cannot be split.
    """
    if part_bytes < 1:
        raise ValueError("part_bytes must be positive")
    if size < 0:
        raise ValueError("size must not be negative")
    fmt = detect_format(fmt) if isinstance(fmt, str) else fmt
    if fmt.kind == "parquet":
        if parquet_metadata is None:
            raise ValueError("planning Parquet parts needs the file's metadata (its footer)")
        groups: list[list[int]] = []
        rows: list[int] = []
        firsts: list[int] = []
        current: list[int] = []
        current_bytes = 0
        current_rows = 0
        first = 0
        row = 0
        for g in range(parquet_metadata.num_row_groups):
            group = parquet_metadata.row_group(g)
            nbytes = sum(group.column(c).total_compressed_size for c in range(group.num_columns))
            if current and current_bytes + nbytes > part_bytes:
                groups.append(current)
                rows.append(current_rows)
                firsts.append(first)
                current, current_bytes, current_rows, first = [], 0, 0, row
            current.append(g)
            current_bytes += nbytes
            current_rows += group.num_rows
            row += group.num_rows
        if current or not groups:
            groups.append(current)
            rows.append(current_rows)
            firsts.append(first)
        return [
            FilePart(index=i, count=len(groups), row_groups=tuple(g), first_row=f, rows=r)
            for i, (g, f, r) in enumerate(zip(groups, firsts, rows, strict=True))
        ]
    if not fmt.splittable or size <= part_bytes:
        return [FilePart(index=0, count=1)]
    count = math.ceil(size / part_bytes)
    return [
        FilePart(
            index=i,
            count=count,
            start=i * part_bytes,
            end=min(size, (i + 1) * part_bytes),
            first_row=0 if i == 0 else None,
        )
        for i in range(count)
    ]


def number_parts(
    stream: ByteStream, fmt: FileFormat | str, parts: Sequence[FilePart], *, block_bytes: int = 8 << 20
) -> list[FilePart]:
    """Fill ``first_row`` of byte-range parts in one pass over the file (counting newlines only).

    The planner of a fan-out calls this once, so no worker has to read the bytes before its part.
    Parts that are not byte ranges are returned unchanged.
    """
    fmt = detect_format(fmt) if isinstance(fmt, str) else fmt
    header_lines = 1 if fmt.kind == "csv" else 0
    targets = sorted({p.start for p in parts if p.is_byte_range and p.start})
    found: dict[int, int] = {}
    pos = 0  # offset of the current block
    newlines = 0  # newlines before the current block
    pending = list(targets)
    carry_target: int | None = None  # a start whose newline search continues in the next block
    while pending or carry_target is not None:
        block = stream.read(block_bytes)
        if not block:
            for start in ([carry_target] if carry_target is not None else []) + pending:
                found[start] = max(newlines - header_lines + 1, 0)
            break
        end = pos + len(block)
        while True:
            if carry_target is None:
                if not pending or pending[0] - 1 >= end:
                    break
                carry_target = pending.pop(0)
            offset = max(carry_target - 1 - pos, 0)
            nl = block.find(b"\n", offset)
            if nl < 0:
                break  # continue in the next block
            before = newlines + block.count(b"\n", 0, nl + 1)
            found[carry_target] = max(before - header_lines, 0)
            carry_target = None
        newlines += block.count(b"\n")
        pos = end
    return [p.model_copy(update={"first_row": found[p.start]}) if p.start in found else p for p in parts]


# ----------------------------------------------------------------------------------- chunks


@dataclass(frozen=True)
class InvalidRecord:
    """A record that could not be parsed as a row: its file row number, why, and its raw text."""

    row: int
    reason: str
    text: str


@dataclass
class RawChunk:
    """One chunk of a file as read, before any validation.

    ``batch`` holds the parsed rows (columns as the file has them); ``rows`` their file row numbers;
    ``invalid`` the records that could not be parsed; ``blank`` the blank lines skipped.
    ``cell_errors`` are (batch position, field, message) found while parsing (JSON values of the
    wrong type), and ``records`` the raw decoded records when the batch was built from them.
    ``numeric_strings`` says whether a text value may stand for a number (CSV: yes; JSON: no, a
    JSON string is not a number, as for events).
    """

    batch: pa.RecordBatch
    rows: npt.NDArray[np.int64]
    invalid: list[InvalidRecord] = field(default_factory=list)
    blank: int = 0
    numeric_strings: bool = True
    cell_errors: list[tuple[int, str, str]] = field(default_factory=list)
    records: list[Any] | None = None

    @property
    def records_in(self) -> int:
        """Rows this chunk accounts for (parsed plus unparseable; blank lines excluded)."""
        return int(self.batch.num_rows) + len(self.invalid)


def required_columns(spec: ModelSpec) -> list[str]:
    """Columns a file must have: the device id and time identifiers and every sensor of the spec."""
    names = [spec.identifiers.asset, spec.identifiers.time, *spec.sensor_names]
    return list(dict.fromkeys(names))


def check_columns(columns: Sequence[str], spec: ModelSpec) -> None:
    """Raise :class:`MissingColumns` naming every required column absent from ``columns``.

    The mode column (``spec.identifiers.mode``) is optional; columns the spec does not name pass
    through.
    """
    present = set(columns)
    missing = [c for c in required_columns(spec) if c not in present]
    if missing:
        raise MissingColumns(missing, list(columns))


def read_chunks(
    stream: ByteStream,
    fmt: FileFormat | str,
    spec: ModelSpec,
    *,
    part: FilePart | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    max_line_bytes: int = MAX_LINE_BYTES,
    on_columns: Callable[[list[str]], None] | None = None,
) -> Iterator[RawChunk]:
    """Yield the chunks of a file (or of one part of it), checking its columns first.

    Parameters
    ----------
    stream
        The file's bytes. Parquet and byte-range parts need a seekable stream.
    fmt
        The format (or the object key to detect it from).
    spec
        The model spec (which columns are required, which are sensors).
    part
        Restrict reading to one part (see :func:`plan_parts`); ``None`` reads the whole file.
    chunk_bytes
        Input bytes per chunk (CSV, JSON Lines; after decompression).
    chunk_rows
        Rows per chunk (Parquet).
    max_line_bytes
        Longest line accepted; a longer one means the file is not line-oriented text.
    on_columns
        Called once with the file's column names, after they passed the check.

    Raises
    ------
    FileError
        The file is corrupt, truncated, of the wrong format, or lacks required columns.
    """
    fmt = detect_format(fmt) if isinstance(fmt, str) else fmt
    if part is not None and part.is_byte_range and fmt.compression:
        raise FileError("a gzip file cannot be read from a byte offset: score it as one part")
    if fmt.kind == "parquet":
        yield from _parquet_chunks(stream, spec, part, chunk_rows, on_columns)
        return
    try:
        if part is not None and part.is_byte_range and (part.start or 0) > 0:
            yield from _text_part_chunks(stream, fmt, spec, part, chunk_bytes, max_line_bytes, on_columns)
        else:
            limit = part.end if part is not None and part.is_byte_range else None
            if hasattr(stream, "seek") and part is not None:
                stream.seek(0)
            body = _decompressed(stream, fmt)
            yield from _text_chunks(body, fmt, spec, 0, limit, chunk_bytes, max_line_bytes, on_columns)
    except OSError as exc:
        raise FileError(_io_error(exc, fmt)) from exc


def _io_error(exc: OSError, fmt: FileFormat) -> str:
    text = str(exc)
    if fmt.compression or "compress" in text.lower() or "zlib" in text.lower():
        if "runcated" in text:
            return f"truncated gzip file: the compressed stream ends before its end marker ({text})"
        return f"corrupt gzip file: {text}"
    return f"cannot read the file: {text}"


class _Prefixed:
    """A stream with bytes already read put back in front (to sniff magic bytes)."""

    def __init__(self, head: bytes, stream: ByteStream) -> None:
        self._head = head
        self._stream = stream
        self.closed = False

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            if size is None or size < 0:
                out = self._head + self._stream.read()
                self._head = b""
                return out
            out, self._head = self._head[:size], self._head[size:]
            if len(out) < size:
                out += self._stream.read(size - len(out))
            return out
        return self._stream.read(size)

    def readinto(self, view: memoryview, /) -> int:
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            return int(readinto(view) or 0)
        data = self._stream.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _decompressed(stream: ByteStream, fmt: FileFormat) -> ByteStream:
    """The file's text stream: gunzipped when named ``.gz`` or when it starts with gzip's magic."""
    head = stream.read(2)
    source = _Prefixed(head, stream)
    if fmt.compression == "gzip" or head == _GZIP_MAGIC:
        if fmt.compression == "gzip" and head != _GZIP_MAGIC:
            raise FileError(
                f"corrupt gzip file: it does not start with the gzip magic bytes (starts with {head!r})"
            )
        compressed: ByteStream = pa.CompressedInputStream(source, "gzip")
        return compressed
    return source


def _read_line(stream: ByteStream, max_line_bytes: int, what: str) -> bytes:
    """Read one line (with its newline) without reading far past it; empty at the end of stream."""
    out = bytearray()
    while True:
        piece = stream.read(4096)
        if not piece:
            return bytes(out)
        nl = piece.find(b"\n")
        if nl >= 0:
            out += piece[: nl + 1]
            rest = piece[nl + 1 :]
            if rest:
                raise _Overread(bytes(out), rest)
            return bytes(out)
        out += piece
        if len(out) > max_line_bytes:
            raise FileError(f"{what}: no line end within {max_line_bytes:,} bytes; not a text file?")


class _Overread(Exception):
    """Control flow only: a line was read with bytes after it (never leaves this module)."""

    def __init__(self, line: bytes, rest: bytes) -> None:
        self.line = line
        self.rest = rest


def _split_first_line(stream: ByteStream, max_line_bytes: int, what: str) -> tuple[bytes, ByteStream]:
    """The first line, and a stream of what follows it."""
    try:
        line = _read_line(stream, max_line_bytes, what)
    except _Overread as over:
        return over.line, _Prefixed(over.rest, stream)
    return line, stream


def _csv_header(line: bytes) -> list[str]:
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    if not line.strip():
        raise FileError("empty CSV file: no header line")
    if b"\x00" in line:
        raise FileError("not a CSV file: its first line holds binary (NUL) bytes")
    try:
        names = pcsv.read_csv(
            pa.BufferReader(line), read_options=pcsv.ReadOptions(use_threads=False)
        ).column_names
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise FileError(f"the CSV header cannot be parsed: {exc}") from exc
    names = [str(n).strip() for n in names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise FileError(f"the CSV header repeats column names {repeated}")
    return names


def _fill(stream: ByteStream, view: memoryview) -> int:
    """Read into ``view`` until it is full or the stream ends; returns the bytes read."""
    readinto = getattr(stream, "readinto", None)
    got = 0
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = stream.read(len(view) - got)
            n = len(data)
            view[got : got + n] = data
        if not n:
            break
        got += n
    return got


class _Block:
    """A block of whole lines: the first ``end`` bytes of ``buf``."""

    __slots__ = ("buf", "end")

    def __init__(self, buf: bytearray, end: int) -> None:
        self.buf = buf
        self.end = end

    @property
    def view(self) -> memoryview:
        return memoryview(self.buf)[: self.end]

    def lines(self) -> int:
        """Lines in the block (the last one may lack its newline)."""
        return self.buf.count(b"\n", 0, self.end) + (1 if self.end and self.buf[self.end - 1] != 10 else 0)

    def has_carriage_return(self) -> bool:
        return self.buf.find(b"\r", 0, self.end) >= 0


def _line_blocks(
    stream: ByteStream, block_bytes: int, max_line_bytes: int, limit: int | None
) -> Iterator[_Block]:
    """Blocks of whole lines (the last may lack its newline).

    Each block is read straight into its own buffer and handed out as a view (Arrow parses it
    without a copy). With ``limit``, stop after the line holding byte ``limit - 1`` (counted from
    the stream's current position): the lines whose first byte lies before ``limit``.
    """
    carry = b""
    consumed = 0  # bytes read from the stream so far
    while True:
        if limit is not None and consumed >= limit:
            want = 64 * 1024  # only finishing the line that crosses the limit
        elif limit is not None:
            want = min(block_bytes, limit - consumed)
        else:
            want = block_bytes
        buf = bytearray(len(carry) + want)
        buf[: len(carry)] = carry
        got = _fill(stream, memoryview(buf)[len(carry) :])
        buf_start = consumed - len(carry)
        consumed += got
        size = len(carry) + got
        at_end = got < want
        if limit is not None and consumed >= limit:
            nl = buf.find(b"\n", max(limit - 1 - buf_start, 0), size)
            if nl >= 0:
                yield _Block(buf, nl + 1)
                return
            if at_end:
                if size:
                    yield _Block(buf, size)
                return
            carry = bytes(buf[:size])
            continue
        if at_end:
            if size:
                yield _Block(buf, size)
            return
        cut = buf.rfind(b"\n", 0, size) + 1
        if cut == 0:
            if size > max_line_bytes:
                raise FileError(f"no line end within {max_line_bytes:,} bytes; not a text file?")
            carry = bytes(buf[:size])
            continue
        carry = bytes(buf[cut:size])
        yield _Block(buf, cut)


def _text_part_chunks(
    stream: ByteStream,
    fmt: FileFormat,
    spec: ModelSpec,
    part: FilePart,
    chunk_bytes: int,
    max_line_bytes: int,
    on_columns: Callable[[list[str]], None] | None,
) -> Iterator[RawChunk]:
    """A byte-range part after the first: the header from the file's start, then its own lines."""
    seekable: SeekableByteStream = stream  # type: ignore[assignment]
    if not hasattr(stream, "seek"):
        raise FileError("reading a byte-range part needs a seekable stream")
    assert part.start is not None and part.end is not None
    header = b""
    if fmt.kind == "csv":
        seekable.seek(0)
        header, _ = _split_first_line(seekable, max_line_bytes, "CSV header")
    # the part's first line: right after the first newline at or after start - 1
    seekable.seek(part.start - 1)
    skipped, _ = _split_first_line(seekable, max_line_bytes, "part start")
    first_line_at = part.start - 1 + len(skipped)  # at the end of the file when no newline follows
    first_row = part.first_row
    if first_row is None:
        seekable.seek(0)
        probe = number_parts(seekable, fmt, [part.model_copy(update={"first_row": None})])
        first_row = probe[0].first_row or 0
    seekable.seek(first_line_at)
    limit = max(part.end - first_line_at, 0)
    yield from _text_chunks(
        seekable,
        fmt,
        spec,
        first_row,
        limit,
        chunk_bytes,
        max_line_bytes,
        on_columns,
        header=header if fmt.kind == "csv" else None,
    )


def _text_chunks(
    body: ByteStream,
    fmt: FileFormat,
    spec: ModelSpec,
    first_row: int,
    limit: int | None,
    chunk_bytes: int,
    max_line_bytes: int,
    on_columns: Callable[[list[str]], None] | None,
    *,
    header: bytes | None = None,
) -> Iterator[RawChunk]:
    if fmt.kind == "csv":
        if header is None:
            header, body = _split_first_line(body, max_line_bytes, "CSV header")
            if limit is not None:
                limit -= len(header)
        names = _csv_header(header)
        check_columns(names, spec)
        if on_columns:
            on_columns(names)
        if limit is not None and limit <= 0:
            return
        row = first_row
        for block in _line_blocks(body, chunk_bytes, max_line_bytes, limit):
            chunk, lines = _csv_block(block, names, spec, row)
            yield chunk
            row += lines
        return
    row = first_row
    checked = False
    for block in _line_blocks(body, chunk_bytes, max_line_bytes, limit):
        chunk, lines = _jsonl_block(block.view, row, spec)
        row += lines
        if not checked:
            if chunk.batch.num_rows == 0 and chunk.invalid:
                raise FileError(
                    f"not a JSON Lines file: no line of the first block is a JSON object "
                    f"(line {chunk.invalid[0].row}: {chunk.invalid[0].reason})"
                )
            if chunk.batch.num_rows:
                check_columns(chunk.batch.schema.names, spec)
                if on_columns:
                    on_columns(list(chunk.batch.schema.names))
                checked = True
        yield chunk
    if not checked and on_columns:
        on_columns([])


# ------------------------------------------------------------------------------------- CSV


def _csv_block(block: _Block, names: list[str], spec: ModelSpec, first_row: int) -> tuple[RawChunk, int]:
    """Parse a block of CSV lines: typed in one go, or as text with bad lines set aside.

    Returns the chunk and the number of lines the block held.
    """
    data = block.view
    sensors = set(spec.sensor_names)
    fast_types = {n: (pa.float64() if n in sensors else pa.string()) for n in names}
    try:
        table = pcsv.read_csv(
            pa.BufferReader(pa.py_buffer(data)),
            # one batch per block, parsed on this thread: the parser's working memory is a
            # multiple of what it parses at once, and threads multiply it (for little speed-up)
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False, block_size=len(data) + 1),
            parse_options=pcsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(column_types=fast_types, strings_can_be_null=True),
        )
        # without empty lines skipped, Arrow makes one row of each line; only a bare carriage
        # return (a line end to Arrow, not to the line splitter) can make the counts differ
        lines = table.num_rows if not block.has_carriage_return() else block.lines()
        if table.num_rows == lines:
            rows = np.arange(first_row, first_row + lines, dtype=np.int64)
            return _csv_chunk(table, rows, []), lines
    except pa.ArrowInvalid:
        pass
    lines = block.lines()
    # slow path: text columns, bad lines skipped with their line number (single-threaded for that)
    bad: list[tuple[int, str, int, int]] = []

    def skip(row: Any) -> str:
        bad.append((int(row.number), str(row.text), int(row.expected_columns), int(row.actual_columns)))
        return "skip"

    try:
        table = pcsv.read_csv(
            pa.BufferReader(pa.py_buffer(data)),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False, block_size=len(data) + 1),
            parse_options=pcsv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=skip),
            convert_options=pcsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise FileError(f"CSV parse error near row {first_row}: {exc}") from exc
    invalid: list[InvalidRecord] = []
    keep = np.ones(lines, dtype=bool)
    blank = 0
    for number, text, expected, actual in bad:
        index = number - 1
        if 0 <= index < lines:
            keep[index] = False
        if not text.strip():
            blank += 1
            continue
        invalid.append(
            InvalidRecord(
                first_row + index,
                f"row has {actual} field{'s' if actual != 1 else ''}, the header has {expected}",
                text[:4096],
            )
        )
    rows = first_row + np.flatnonzero(keep).astype(np.int64)
    if len(rows) != table.num_rows:
        raise FileError(
            f"CSV rows near row {first_row} cannot be told apart (a quoted value with a line break?)"
        )
    return _csv_chunk(table, rows, invalid, blank), lines


def _csv_chunk(
    table: pa.Table, rows: npt.NDArray[np.int64], invalid: list[InvalidRecord], blank: int = 0
) -> RawChunk:
    # a line with no text at all parses as a row of nulls: a blank line, not a row
    batch = _combined_batch(table)
    if batch.num_rows and batch.num_columns:
        nulls = np.ones(batch.num_rows, dtype=bool)
        for column in batch.columns:
            if column.null_count == 0:
                nulls[:] = False
                break
            nulls &= column.is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            keep = ~nulls
            blank += int(nulls.sum())
            batch = batch.filter(pa.array(keep))
            rows = rows[keep]
    return RawChunk(batch, rows, invalid, blank, numeric_strings=True)


def _combined_batch(table: pa.Table) -> pa.RecordBatch:
    table = table.combine_chunks()
    batches = table.to_batches()
    if not batches:
        return pa.RecordBatch.from_arrays(
            [pa.array([], type=f.type) for f in table.schema], schema=table.schema
        )
    return batches[0]


# ------------------------------------------------------------------------------ JSON Lines


def _text_fields(spec: ModelSpec) -> list[str]:
    """Identifier columns, read as text whatever their JSON type looks like."""
    names = [spec.identifiers.asset, spec.identifiers.time]
    if spec.identifiers.mode:
        names.append(spec.identifiers.mode)
    return list(dict.fromkeys([*names, *IDENTITY_COLUMNS]))


def _jsonl_block(block: memoryview, first_row: int, spec: ModelSpec) -> tuple[RawChunk, int]:
    """Parse a block of JSON lines with pyarrow, or line by line when pyarrow refuses the block.

    Returns the chunk and the number of lines the block held.
    """
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    if len(data) and data[-1] != 10:
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64) if len(ends) else np.zeros(0, np.int64)
    lengths = ends - starts
    # blank lines: empty, or only whitespace (checked in Python for the few lines starting with it)
    blank = lengths == 0
    # pyarrow only sees blocks whose every line is an object: a line that is a bare ``null`` makes
    # pyarrow 20's JSON reader crash the process (a segfault, found by fuzzing), and any other
    # non-object line is refused by it anyway
    objects_only = True
    if len(data):
        first_bytes = np.where(lengths > 0, data[np.minimum(starts, len(data) - 1)], 0)
        for i in np.flatnonzero((lengths > 0) & np.isin(first_bytes, (9, 13, 32))):
            stripped = bytes(block[starts[i] : ends[i]]).strip()
            if not stripped:
                blank[i] = True
            elif not stripped.startswith(b"{"):
                objects_only = False
        objects_only = objects_only and bool(np.all(np.isin(first_bytes[lengths > 0], (9, 13, 32, 123))))
    line_rows = first_row + np.flatnonzero(~blank).astype(np.int64)
    n_blank = int(blank.sum())
    if len(line_rows) == 0:
        return RawChunk(_empty_batch(0), line_rows, [], n_blank, numeric_strings=False), len(ends)
    if _deeper_than(data, starts, MAX_JSON_DEPTH):
        # pyarrow's JSON parser recurses: a deep enough line (about 100,000 brackets) kills the
        # process with a segmentation fault. Such blocks go line by line through the standard
        # library, which refuses the deep lines with a reason (RecursionError) and keeps the rest.
        return _jsonl_python(block, starts[~blank], ends[~blank], line_rows, n_blank, spec), len(ends)
    text_fields = _text_fields(spec)
    for numeric_time in (False, True) if objects_only else ():
        try:
            table = _read_json_block(block, text_fields, spec.identifiers.time, numeric_time)
        except pa.ArrowInvalid:
            continue
        if table.num_rows == len(line_rows):
            batch = _drop_absent(_combined_batch(table), text_fields)
            chunk = RawChunk(_flatten_sensors(batch), line_rows, [], n_blank, numeric_strings=False)
            return chunk, len(ends)
    return _jsonl_python(block, starts[~blank], ends[~blank], line_rows, n_blank, spec), len(ends)


#: Deepest bracket nesting a block may have before it skips pyarrow (telemetry lines have 2 or 3).
MAX_JSON_DEPTH = 256


def _deeper_than(data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], limit: int) -> bool:
    """Whether a line may nest brackets deeper than ``limit``: one of them holds more openers.

    An upper bound (brackets inside strings count too): a false alarm costs the slower
    line-by-line path, never a crash. One pass over the block, ~1 ms a megabyte.
    """
    if not len(starts):
        return False
    opens = ((data == 91) | (data == 123)).view(np.uint8)  # [ and {
    return bool(np.add.reduceat(opens, starts, dtype=np.int64).max() > limit)


def _read_json_block(
    block: memoryview, text_fields: list[str], time_field: str, numeric_time: bool
) -> pa.Table:
    # identifiers are read as text: inference would turn "2024-01-01T00:00:00+02:00" into a
    # timestamp without its zone, and a naive one into the same type, so neither could be checked
    fields = [
        pa.field(n, pa.float64() if numeric_time and n == time_field else pa.string()) for n in text_fields
    ]
    return pjson.read_json(
        pa.BufferReader(pa.py_buffer(block)),
        read_options=pjson.ReadOptions(use_threads=True, block_size=max(len(block) + 1, 1 << 20)),
        parse_options=pjson.ParseOptions(
            explicit_schema=pa.schema(fields), unexpected_field_behavior="infer", newlines_in_values=False
        ),
    )


def _drop_absent(batch: pa.RecordBatch, text_fields: list[str]) -> pa.RecordBatch:
    """Explicit-schema columns no line of the block has are not columns of the file."""
    keep = [
        i
        for i, name in enumerate(batch.schema.names)
        if name not in text_fields or batch.column(i).null_count < batch.num_rows
    ]
    return batch if len(keep) == batch.num_columns else batch.select(keep)


def _flatten_sensors(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Lines shaped like events (``{"sensors": {...}}``) get their sensors as top-level columns."""
    names = batch.schema.names
    if "sensors" not in names or not pa.types.is_struct(batch.schema.field("sensors").type):
        return batch
    struct = batch.column(names.index("sensors"))
    arrays = [batch.column(i) for i, n in enumerate(names) if n != "sensors"]
    out_names = [n for n in names if n != "sensors"]
    for i, child in enumerate(struct.type):
        if child.name not in out_names:
            out_names.append(child.name)
            arrays.append(struct.field(i))
    return pa.RecordBatch.from_arrays(arrays, names=out_names)


def _jsonl_python(
    block: memoryview,
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    line_rows: npt.NDArray[np.int64],
    n_blank: int,
    spec: ModelSpec,
) -> RawChunk:
    """The bounded pure-Python path for one block (mixed types, bad lines): one line at a time."""
    records: list[dict[str, Any]] = []
    rows: list[int] = []
    invalid: list[InvalidRecord] = []
    for start, end, row in zip(starts.tolist(), ends.tolist(), line_rows.tolist(), strict=True):
        raw = bytes(block[start:end])
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            invalid.append(InvalidRecord(row, f"line is not valid JSON: {exc}", _text(raw)))
            continue
        if not isinstance(obj, dict):
            invalid.append(
                InvalidRecord(row, f"line must be a JSON object, got {type(obj).__name__}", _text(raw))
            )
            continue
        sensors = obj.get("sensors")
        if isinstance(sensors, dict):
            obj = {k: v for k, v in obj.items() if k != "sensors"}
            obj.update({k: v for k, v in sensors.items() if k not in obj})
        records.append(obj)
        rows.append(row)
    names: dict[str, None] = {}
    for rec in records:
        names.update(dict.fromkeys(rec))
    text_fields = set(_text_fields(spec))
    sensor_names = set(spec.sensor_names)
    cell_errors: list[tuple[int, str, str]] = []
    arrays = [
        _python_column(
            name,
            [rec.get(name) for rec in records],
            "text" if name in text_fields else "number" if name in sensor_names else "any",
            cell_errors,
        )
        for name in names
    ]
    batch = pa.RecordBatch.from_arrays(arrays, names=list(names)) if names else _empty_batch(len(records))
    return RawChunk(
        batch,
        np.asarray(rows, dtype=np.int64),
        invalid,
        n_blank,
        numeric_strings=False,
        cell_errors=cell_errors,
        records=records,
    )


def _empty_batch(n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.nulls(n)], names=["_"]).select([])


def _python_column(
    name: str, values: list[Any], role: Literal["text", "number", "any"], errors: list[tuple[int, str, str]]
) -> pa.Array:
    """A column from decoded JSON values of one block.

    ``text`` columns (identifiers) take strings, and numbers as their text (epoch milliseconds,
    numeric device ids); ``number`` columns (sensors) take JSON numbers only, as for events. A value
    of the wrong JSON type becomes null with a cell error, so its row is quarantined with that
    reason instead of failing its neighbours. Other columns pass through (as JSON text when mixed).
    """
    if role == "number":
        numbers: list[float | None] = []
        for i, v in enumerate(values):
            if v is None:
                numbers.append(None)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                try:
                    numbers.append(float(v))
                except OverflowError:
                    errors.append((i, name, f"value {_preview(v)} is too large for a float"))
                    numbers.append(None)
            else:
                errors.append((i, name, f"value {_preview(v)} is not a number"))
                numbers.append(None)
        return pa.array(numbers, type=pa.float64())
    if role == "text":
        text: list[str | None] = []
        for i, v in enumerate(values):
            if v is None or isinstance(v, str):
                text.append(v)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                text.append(repr(v) if isinstance(v, float) else str(v))
            else:
                errors.append((i, name, f"value {_preview(v)} must be a string"))
                text.append(None)
        return pa.array(text, type=pa.string())
    try:
        return pa.array(values)
    except (pa.ArrowException, OverflowError):
        return pa.array([None if v is None else json.dumps(v, default=str) for v in values], pa.string())


def _preview(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(raw: bytes) -> str:
    return raw[:4096].decode("utf-8", "replace")


# -------------------------------------------------------------------------------- Parquet


def _parquet_chunks(
    stream: ByteStream,
    spec: ModelSpec,
    part: FilePart | None,
    chunk_rows: int,
    on_columns: Callable[[list[str]], None] | None,
) -> Iterator[RawChunk]:
    import pyarrow.parquet as pq

    if part is not None and part.is_byte_range:
        raise FileError("a Parquet file is split by row groups, not byte ranges")
    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as exc:
        raise FileError(f"not a readable Parquet file: {exc}") from exc
    names = list(parquet.schema_arrow.names)
    check_columns(names, spec)
    if on_columns:
        on_columns(names)
    groups = list(part.row_groups) if part is not None and part.row_groups is not None else None
    meta = parquet.metadata
    if groups is not None:
        bad = [g for g in groups if not 0 <= g < meta.num_row_groups]
        if bad:
            raise FileError(f"row groups {bad} are not in the file ({meta.num_row_groups} row groups)")
        if part is not None and part.first_row is not None:
            row = part.first_row
        else:
            row = sum(meta.row_group(g).num_rows for g in range(min(groups, default=0)))
        if groups != sorted(groups) or any(b - a != 1 for a, b in itertools.pairwise(groups)):
            raise FileError("a part's row groups must be consecutive and in order")
    else:
        row = 0
    try:
        for batch in parquet.iter_batches(batch_size=chunk_rows, row_groups=groups, use_threads=True):
            n = batch.num_rows
            yield RawChunk(batch, np.arange(row, row + n, dtype=np.int64), numeric_strings=True)
            row += n
    except (pa.ArrowException, OSError) as exc:
        raise FileError(f"corrupt Parquet file near row {row}: {exc}") from exc
