"""File scoring on Spark: one very large drop scored by the same use case, partition by partition.

The Glue job ``score_file`` (and a local ``spark-submit``) call :func:`score_file_on_spark`. It
reads the drop with Spark (text lines numbered with ``zipWithIndex`` for CSV and JSON Lines, the
``_metadata.row_index`` of Parquet rows), repartitions the rows **by device** and sorts each
partition by device and file row, then ``mapInPandas`` hands each partition to
:meth:`zaindari.file_scoring.FileScoring.score_file`: the partition's rows are spooled to the
executor's disk as a piece of the file in its own format (the CSV header plus the partition's lines,
the JSON lines as they are, a Parquet file of the rows) and scored exactly as ``score_batch`` scores
a file, by the same readers, validation, ``score_table`` (one ONNX call per chunk) and alert tally,
with the model built once per executor process from a broadcast copy of the bundle.

Consequences of partitioning by device:

* windows and alert state are per partition-device, and since every row of a device lands in one
  partition, in file order, each device sees exactly the sequence of rows it sees when the function
  scores the whole file: scores, alerts and quarantined rows equal the function's (only the chunk
  boundaries differ, which file scoring makes irrelevant);
* one device's rows are scored by one task: a file with one huge device does not spread out (Spark
  then buys time limits and memory, not parallelism).

Outputs follow the lake layout of the function (``scores/date=YYYY-MM-DD/<source_id>-sNNNNN.parquet``
with :data:`~zaindari.file_scoring.SCORES_SCHEMA`, ``quarantine/date=YYYY-MM-DD/<source_id>-sNNNNN.jsonl``,
``manifests/<source_id>.json``): Spark writes them under a staging folder, the driver moves them into
place through the Hadoop file system (local folders, ``s3://`` on Glue) and writes the merged
manifest last. Drift window summaries (``zaindari.drift``, for a bundle with a baseline) come out
of each partition's ``FileScoring`` as one small row, are merged per window on the driver and
written under ``summaries/`` with the keys ``score_batch`` uses, before the scores are published. A file that cannot be read or lacks required columns gets a failed manifest and is
copied whole to ``quarantine/files/``. Nothing here runs at import time; pyspark is imported by
the functions that need it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa

from zaindari.bundle import ModelBundle, load_bundle
from zaindari.drift import WindowSummary, merge_windows, summaries_json, summary_objects
from zaindari.file_reading import FileError, FileFormat, check_columns, detect_format
from zaindari.file_scoring import (
    RESERVED_PREFIX,
    SCORES_SCHEMA,
    FileManifest,
    FilePart,
    FileRun,
    FileScoring,
    FileScoringOptions,
    FileSource,
    merge_manifests,
)
from zaindari.jsonable import finite, json_default
from zaindari.ports import RejectedRecord

__all__ = ["OUTPUT_DDL", "score_file_on_spark"]

# Spark's own columns carry the reserved prefix, so no column of a drop (nor a kept one, which
# FileScoringOptions refuses with that prefix) is ambiguous next to them: Spark resolves names
# ignoring case. ``date`` is the scores' partition, which keep_columns may not name either.
_KIND, _PAYLOAD, _TEXT = (f"{RESERVED_PREFIX}{name}" for name in ("kind", "payload", "text"))
_PIECE_ROW, _DEVICE_KEY = f"{RESERVED_PREFIX}row", f"{RESERVED_PREFIX}device"
_DATE = "date"

#: What ``mapInPandas`` yields per partition: score rows, quarantined rows, one manifest and (for a
#: bundle with a drift baseline) one row of window summaries. With ``keep_columns``, those columns
#: follow the scores' (:func:`_output_ddl`).
OUTPUT_DDL = (
    f"{_KIND} string, source_key string, source_version string, row long, device_id string, asset string, "
    "line string, site string, timestamp timestamp, mode string, score double, severity string, "
    "alert boolean, rules array<string>, late boolean, model_version string, rule_set_version string, "
    f"date string, {_PAYLOAD} string"
)


def _output_columns(keep_columns: Sequence[str]) -> list[str]:
    """The columns of :data:`OUTPUT_DDL`, with ``FileScoringOptions.keep_columns`` after the scores'."""
    return [_KIND, *SCORES_SCHEMA.names, *keep_columns, _DATE, _PAYLOAD]


def _output_ddl(keep_columns: Sequence[str]) -> str:
    """:data:`OUTPUT_DDL` with the kept columns (text, as the function writes them) before ``date``."""
    kept = "".join(f"`{name.replace('`', '``')}` string, " for name in keep_columns)
    tail = f"date string, {_PAYLOAD} string"
    return OUTPUT_DDL.replace(tail, kept + tail)


# file errors Spark reports from the JVM while reading (the message is all Python gets)
_READ_ERRORS = {
    "Unexpected end of input stream": "truncated gzip file: the compressed stream ends before its end marker",
    "Not in GZIP format": "corrupt gzip file: not in gzip format",
    "invalid distance too far back": "corrupt gzip file",
    "invalid block type": "corrupt gzip file",
    "is not a Parquet file": "not a readable Parquet file",
    "CORRUPT_FILE": "corrupt file",
    "FAILED_READ_FILE": "cannot read the file",
    "COLUMN_ALREADY_EXISTS": "columns whose names differ only in case: Spark compares column names "
    "ignoring case, so it cannot read them apart (rename one; the function scores such a file)",
}


# ----------------------------------------------------------------------------- executor side


class _CollectingSink:
    """A :class:`zaindari.ports.FileSink` that keeps one partition's outputs in memory for Spark."""

    def __init__(self) -> None:
        self.scores: list[pa.Table] = []
        self.rejected: list[RejectedRecord] = []
        self.manifests: list[FileManifest] = []

    def write_scores(self, run: FileRun, scores: pa.Table) -> None:
        self.scores.append(scores)

    def write_quarantine(self, run: FileRun, rejected: Sequence[RejectedRecord]) -> None:
        self.rejected.extend(rejected)

    def commit(self, run: FileRun) -> list[str]:
        return []

    def abort(self, run: FileRun) -> None:
        self.scores.clear()
        self.rejected.clear()

    def discard(self, outputs: Sequence[str]) -> None:
        return None

    def quarantine_file(self, source: FileSource, reason: str) -> str:
        return ""  # the driver quarantines the whole file once the parts are merged

    def write_manifest(self, manifest: FileManifest) -> str:
        self.manifests.append(manifest)
        return ""


class _CollectingSummaries:
    """A :class:`zaindari.drift.SummaryStore` that keeps one partition's window summaries for Spark."""

    def __init__(self) -> None:
        self.summaries: list[WindowSummary] = []

    def write(self, summaries: Sequence[WindowSummary], *, source: str, name: str) -> list[str]:
        self.summaries.extend(summaries)
        return []

    def read(self, model: str, start: datetime, end: datetime) -> list[WindowSummary]:
        return list(self.summaries)


_BUNDLES: dict[str, ModelBundle] = {}


def _executor_bundle(files: dict[str, bytes]) -> ModelBundle:
    """The bundle, unpacked and loaded once per executor process (keyed by its manifest's hash)."""
    key = hashlib.sha256(files["MANIFEST.json"]).hexdigest()[:16]
    bundle = _BUNDLES.get(key)
    if bundle is None:
        folder = Path(tempfile.gettempdir()) / "zaindari-spark-models" / key
        if not (folder / "MANIFEST.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                if name != "MANIFEST.json":
                    (folder / name).write_bytes(data)
            (folder / "MANIFEST.json").write_bytes(files["MANIFEST.json"])  # last: complete when present
        bundle = _BUNDLES[key] = load_bundle(folder)
    return bundle


@dataclasses.dataclass(frozen=True)
class _Job:
    """What each partition needs (pickled into the ``mapInPandas`` closure)."""

    source: FileSource
    fmt: FileFormat
    header: str | None
    aware_timestamps: tuple[str, ...]
    options: FileScoringOptions
    started_at: datetime
    summaries: bool = True
    #: Parquet columns of nested types (lists, structs, maps) and their Arrow types as Spark read
    #: them: pandas hands their values over as Python objects, whose type Arrow would otherwise
    #: guess (a map as a struct, NaN inside as null)
    nested: tuple[tuple[str, pa.DataType], ...] = ()
    #: a Parquet drop's column names: Spark carries its columns as ``__zaindari_c<i>`` (a name
    #: like ``x.y`` trips pyspark's ``mapInPandas``, and none can clash with Spark's own columns)
    columns: tuple[str, ...] = ()


def _score_partition(job: _Job, bundle_files: Any, batches: Iterator[Any]) -> Iterator[Any]:
    """Spool the partition as a piece of the file, score it with FileScoring, yield its outputs."""
    import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs: frames are Any to mypy
    from pyspark import TaskContext

    context = TaskContext.get()
    partition = context.partitionId() if context is not None else 0
    rows: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="zaindari-piece-") as scratch:
        piece = Path(scratch) / ("piece.parquet" if job.fmt.kind == "parquet" else "piece.txt")
        _spool(job, batches, piece, rows)
        if not rows:
            return
        file_rows = np.concatenate(rows)
        sink = _CollectingSink()
        windows = _CollectingSummaries() if job.summaries else None
        scoring = FileScoring(
            model=lambda: _executor_bundle(bundle_files.value),
            sink=sink,
            options=job.options,
            summaries=windows,
        )
        with piece.open("rb") as stream:
            kind = FileFormat(kind=job.fmt.kind)  # the piece is never compressed
            scoring.score_file(stream, job.source, part=FilePart(index=partition, count=1), fmt=kind)
    manifest = sink.manifests[-1]
    columns = _output_columns(job.options.keep_columns)
    for table in sink.scores:
        frame = table.set_column(2, "row", pa.array(file_rows[table.column("row").to_numpy()])).to_pandas()
        frame.insert(0, _KIND, "score")
        frame[_DATE] = frame["timestamp"].dt.strftime("%Y-%m-%d")
        frame[_PAYLOAD] = None
        yield frame[columns]
    if sink.rejected:
        lines = [
            json.dumps(
                finite(dataclasses.replace(r, reading_index=_file_row(file_rows, r.reading_index)).to_dict()),
                default=json_default,
                allow_nan=False,
            )
            for r in sink.rejected
        ]
        yield _payload_frame(pd, "quarantine", lines, columns)
    alerts = [
        a.model_copy(
            update={"worst_rows": [w.model_copy(update={"row": int(file_rows[w.row])}) for w in a.worst_rows]}
        )
        for a in manifest.alerts
    ]
    manifest = manifest.model_copy(update={"alerts": alerts})
    if windows is not None and windows.summaries:  # computed from the same feature matrix and scores
        yield _payload_frame(pd, "summaries", [json.dumps([w.to_dict() for w in windows.summaries])], columns)
    yield _payload_frame(
        pd,
        "manifest",
        [json.dumps({"partition": partition, "manifest": manifest.model_dump(mode="json")})],
        columns,
    )


def _file_row(file_rows: Any, index: int | None) -> int | None:
    return None if index is None else int(file_rows[index])


def _payload_frame(pd: Any, kind: str, payloads: list[str], columns: list[str]) -> Any:
    frame = pd.DataFrame({c: pd.Series([None] * len(payloads), dtype=object) for c in columns})
    frame[_KIND] = kind
    frame[_PAYLOAD] = payloads
    for name in ("row",):
        frame[name] = pd.Series([None] * len(payloads), dtype="Int64")
    frame["score"] = pd.Series([np.nan] * len(payloads), dtype="float64")
    frame["timestamp"] = pd.Series([pd.NaT] * len(payloads), dtype="datetime64[ns, UTC]")
    return frame


def _spool(job: _Job, batches: Iterator[Any], piece: Path, rows: list[Any]) -> None:
    """Write the partition's rows to ``piece`` in the file's own format; collect their file rows."""
    if job.fmt.kind == "parquet":
        import pyarrow.parquet as pq

        writer: Any = None
        try:
            for frame in batches:
                if frame.empty:
                    continue
                rows.append(frame[_PIECE_ROW].to_numpy(dtype=np.int64))
                data = frame.drop(columns=[_PIECE_ROW, _DEVICE_KEY])
                data.columns = list(job.columns)
                for name in job.aware_timestamps:  # Spark hands UTC instants over as naive values
                    data[name] = data[name].dt.tz_localize("UTC")
                table = pa.Table.from_pandas(data, preserve_index=False)
                for name, kind in job.nested:
                    values = pa.array(data[name].tolist(), type=kind, from_pandas=False)
                    table = table.set_column(table.schema.get_field_index(name), name, values)
                if writer is None:
                    writer = pq.ParquetWriter(piece, table.schema)
                writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()
        return
    with piece.open("wb") as out:
        if job.header is not None:
            out.write(job.header.encode() + b"\n")
        for frame in batches:
            if frame.empty:
                continue
            rows.append(frame[_PIECE_ROW].to_numpy(dtype=np.int64))
            out.write("".join(f"{line}\n" for line in frame[_TEXT].tolist()).encode())


# ----------------------------------------------------------------------------- driver side


class _Lake:
    """The lake through Hadoop's FileSystem (local folders, ``s3://`` on Glue and EMR)."""

    def __init__(self, spark: Any, root: str) -> None:
        self.spark = spark
        self.jvm = spark.sparkContext._jvm
        self.conf = spark.sparkContext._jsc.hadoopConfiguration()
        self.root = _qualified(root)

    def path(self, key: str) -> Any:
        return self.jvm.org.apache.hadoop.fs.Path(f"{self.root}/{key}" if key else self.root)

    def _fs(self, path: Any) -> Any:
        return path.getFileSystem(self.conf)

    def uri(self, key: str) -> str:
        return f"{self.root}/{key}"

    def glob(self, pattern: str) -> list[str]:
        path = self.path(pattern)
        found = self._fs(path).globStatus(path) or []
        base = str(self.path("").toUri().getPath()).rstrip("/") + "/"
        return sorted(str(s.getPath().toUri().getPath())[len(base) :] for s in found)

    def move(self, source: str, key: str) -> None:
        src, dst = self.jvm.org.apache.hadoop.fs.Path(source), self.path(key)
        fs = self._fs(dst)
        fs.mkdirs(dst.getParent())
        fs.delete(dst, False)
        if not fs.rename(src, dst):
            raise OSError(f"cannot move {source} to {self.uri(key)}")

    def delete(self, key_or_uri: str, *, recursive: bool = False) -> None:
        path = (
            self.jvm.org.apache.hadoop.fs.Path(key_or_uri) if "://" in key_or_uri else self.path(key_or_uri)
        )
        self._fs(path).delete(path, recursive)

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self.path(key)
        out = self._fs(path).create(path, True)
        try:
            out.write(bytearray(data))
        finally:
            out.close()

    def copy_in(self, source_uri: str, key: str) -> None:
        src = self.jvm.org.apache.hadoop.fs.Path(_qualified(source_uri))
        dst = self.path(key)
        self.jvm.org.apache.hadoop.fs.FileUtil.copy(
            self._fs(src), src, self._fs(dst), dst, False, True, self.conf
        )

    def files_under(self, uri: str, suffix: str) -> list[str]:
        """Every non-empty file below ``uri`` ending in ``suffix`` (as full URIs)."""
        root = self.jvm.org.apache.hadoop.fs.Path(uri)
        fs = self._fs(root)
        if not fs.exists(root):
            return []
        found = []
        listing = fs.listFiles(root, True)
        while listing.hasNext():
            status = listing.next()
            path = str(status.getPath())
            name = path.rsplit("/", 1)[-1]
            # Spark writes an empty part file for an empty result: nothing to publish
            if name.endswith(suffix) and not name.startswith((".", "_")) and status.getLen() > 0:
                found.append(path)
        return sorted(found)


def _qualified(uri: str) -> str:
    if "://" in uri:
        return uri.rstrip("/")
    return "file://" + os.path.abspath(uri).rstrip("/")


def _bundle_files(bundle_dir: str | Path) -> dict[str, bytes]:
    folder = Path(bundle_dir)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _read_error(exc: Exception) -> str | None:
    """A file error Spark raised while reading, in plain words; None for anything else."""
    text = str(exc)
    for marker, meaning in _READ_ERRORS.items():
        if marker in text:
            detail = next((line.strip() for line in text.splitlines() if marker in line), marker)
            return f"{meaning} ({detail[:300]})"
    if "FileError" in text or "zaindari.file_reading" in text:
        return "cannot read the file: " + text.strip().splitlines()[-1][:300]
    return None


def score_file_on_spark(
    spark: Any,
    input_uri: str,
    source: FileSource,
    bundle_dir: str | Path,
    lake: str,
    *,
    partitions: int | None = None,
    staging: str | None = None,
    options: FileScoringOptions | None = None,
    summaries: bool = True,
) -> FileManifest:
    """Score one drop on Spark and write its scores, quarantined rows and manifest to the lake.

    With ``summaries`` (and a bundle that carries a drift baseline) it also writes the file's drift
    window summaries under ``summaries/``, the objects ``score_batch`` writes for the same file:
    each partition summarises the rows it scored, the driver merges them per window and writes
    them before the scores are published.

    Parameters
    ----------
    spark
        The session.
    input_uri
        Where Spark reads the file (a local path, ``s3://`` on Glue).
    source
        The drop as the lake names it (key, bucket, version): the scores' ``source_key`` and
        ``source_version``, and the ``source_id`` of every output.
    bundle_dir
        The model bundle, a local folder (executors get a broadcast copy).
    lake
        The lake's root (a local folder or ``s3://bucket``).
    partitions
        Partitions to score in (default: Spark's default parallelism).
    staging
        Where Spark writes before the files move into the lake (default ``<lake>/_staging/score_file``).
    options
        File scoring options (chunk sizes, summaries).
    summaries
        Write drift window summaries (``ZAINDARI_DRIFT_SUMMARIES`` on the function side).

    Returns
    -------
    FileManifest
        The merged manifest, as written to ``manifests/<source_id>.json``.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_type

    options = options or FileScoringOptions()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    out = _Lake(spark, lake)
    staged = f"{_qualified(staging or out.uri('_staging/score_file'))}/{source.source_id}"
    fmt_name = "unknown"

    def failed(error: str, columns: list[str] | None = None) -> FileManifest:
        return _fail(out, input_uri, source, bundle, fmt_name, error, started, t0, columns or [])

    try:
        fmt = detect_format(source.key)
    except FileError as exc:
        return failed(str(exc))
    fmt_name = fmt.name
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    n = partitions or spark.sparkContext.defaultParallelism
    spec = bundle.spec
    device = spec.identifiers.asset
    header: str | None = None
    aware: tuple[str, ...] = ()
    nested: tuple[tuple[str, pa.DataType], ...] = ()
    names: list[str] = []
    try:
        if fmt.kind == "parquet":
            try:
                frame = spark.read.parquet(input_uri)  # reads the footer: its schema errors come here
            except Exception as exc:
                error = _read_error(exc)
                if error is None:
                    raise
                return failed(error)
            names = frame.columns
            check_columns(names, spec)
            aware = tuple(f.name for f in frame.schema.fields if f.dataType.typeName() == "timestamp")
            nested = tuple(
                (f.name, to_arrow_type(f.dataType))
                for f in frame.schema.fields
                if f.dataType.typeName() in ("array", "map", "struct")
            )
            if hasattr(frame, "metadataColumn"):  # Spark 4: found even when the drop has a `_metadata` column
                row_index = frame.metadataColumn("_metadata").getField("row_index")
            elif "_metadata" in {name.lower() for name in names}:  # it hides Spark 3's file metadata
                return failed(
                    "a column named `_metadata` hides the file's row numbers from Spark 3.5 (Spark 4 reads it)",
                    names,
                )
            else:
                row_index = F.col("_metadata.row_index")
            internal = [f"{RESERVED_PREFIX}c{i}" for i in range(len(names))]
            rows = (
                frame.select("*", row_index)
                .toDF(*internal, _PIECE_ROW)  # renamed by position: no name is resolved
                .withColumn(_DEVICE_KEY, F.col(internal[names.index(device)]).cast("string"))
            )
        else:
            lines = spark.read.text(input_uri)
            numbered = (
                lines.rdd.zipWithIndex()
                .map(lambda pair: (pair[1], pair[0][0]))
                .toDF(f"line long, {_TEXT} string")
            )
            if fmt.kind == "csv":
                first = lines.first()
                if first is None:
                    return failed("an empty file: no CSV header")
                header = str(first[0])
                names = _csv_names(header)
                check_columns(names, spec)
                schema = ", ".join(f"`{name.replace('`', '')}` STRING" for name in names)
                rows = numbered.where(F.col("line") >= 1).select(
                    (F.col("line") - 1).alias(_PIECE_ROW),
                    F.col(_TEXT),
                    F.from_csv(F.col(_TEXT), schema).getField(device.replace("`", "")).alias(_DEVICE_KEY),
                )
            else:
                path = "$['" + device.replace("'", "\\'") + "']"
                rows = numbered.select(
                    F.col("line").alias(_PIECE_ROW),
                    F.col(_TEXT),
                    F.get_json_object(F.col(_TEXT), path).alias(_DEVICE_KEY),
                )
        job = _Job(source, fmt, header, aware, options, started, summaries, nested, tuple(names))
        files = spark.sparkContext.broadcast(_bundle_files(bundle_dir))

        def score(batches: Iterator[Any]) -> Iterator[Any]:
            return _score_partition(job, files, batches)

        # every row of a device in one partition, in file order: windows as the function computes them
        scored = (
            rows.repartition(n, F.col(_DEVICE_KEY))
            .sortWithinPartitions(_DEVICE_KEY, _PIECE_ROW)
            .mapInPandas(score, _output_ddl(options.keep_columns))
            .persist()
        )
        try:
            collected = (
                scored.where(F.col(_KIND).isin("manifest", "summaries")).select(_KIND, _PAYLOAD).collect()
            )
        except Exception as exc:
            error = _read_error(exc)
            if error is None:
                raise
            scored.unpersist()
            return failed(error, names)
        parts = _renumbered([json.loads(r[1]) for r in collected if r[0] == "manifest"])
        merged = _merged(parts, source, bundle, fmt_name, started, names)
        if merged.status == "failed":
            scored.unpersist()
            return _fail(
                out,
                input_uri,
                source,
                bundle,
                fmt_name,
                merged.error or "a part failed",
                started,
                t0,
                names,
                merged,
            )
        windows = merge_windows(
            WindowSummary.from_dict(d) for r in collected if r[0] == "summaries" for d in json.loads(r[1])
        )
        for key, group in summary_objects(windows, source="files", name=source.source_id).items():
            out.write_bytes(key, summaries_json(group))  # before the scores, as the function does
        outputs = _publish(out, scored, source, started, staged, options.keep_columns)
        scored.unpersist()
    except FileError as exc:
        return failed(str(exc))
    manifest = merged.model_copy(
        update={
            "outputs": outputs,
            "duration_seconds": time.perf_counter() - t0,
            "started_at": started,
        }
    )
    out.write_bytes(f"manifests/{source.source_id}.json", _manifest_json(manifest))
    return manifest


def _csv_names(header: str) -> list[str]:
    import csv

    return [name.strip() for name in next(csv.reader(io.StringIO(header)))]


def _renumbered(parts: list[dict[str, Any]]) -> list[FileManifest]:
    """The partitions' manifests as parts ``0..n-1`` (partitions without rows sent none)."""
    ordered = sorted(parts, key=lambda p: int(p["partition"]))
    return [
        FileManifest.model_validate(p["manifest"]).model_copy(
            update={"part": FilePart(index=i, count=len(ordered)), "parts": len(ordered)}
        )
        for i, p in enumerate(ordered)
    ]


def _merged(
    parts: list[FileManifest],
    source: FileSource,
    bundle: ModelBundle,
    fmt_name: str,
    started: datetime,
    columns: list[str],
) -> FileManifest:
    if not parts:  # a file with no row at all (a header, or nothing but blank lines)
        return FileManifest(
            source=source,
            source_id=source.source_id,
            format=fmt_name,
            status="scored",
            columns=columns,
            model_version=bundle.model_version,
            rule_set_version=bundle.spec.alert_policy.rule_set_version,
            started_at=started,
            duration_seconds=0.0,
        )
    merged = merge_manifests(parts)
    # a device's rows are in one partition: the partitions' devices are disjoint
    return merged.model_copy(update={"devices": sum(p.devices for p in parts), "format": fmt_name})


def _publish(
    out: _Lake, scored: Any, source: FileSource, started: datetime, staged: str, keep_columns: Sequence[str]
) -> list[str]:
    """Write the scores (and kept columns) and quarantined rows with Spark, then move them into place."""
    from pyspark.sql import functions as F

    out.delete(staged, recursive=True)
    score_columns = [F.col(f"`{name.replace('`', '``')}`") for name in [*SCORES_SCHEMA.names, *keep_columns]]
    (
        scored.where(F.col(_KIND) == "score")
        .select(*score_columns, F.col(_DATE))
        .write.partitionBy(_DATE)
        .parquet(f"{staged}/scores")
    )
    scored.where(F.col(_KIND) == "quarantine").select(_PAYLOAD).write.text(f"{staged}/quarantine")
    outputs: list[str] = []
    by_date: dict[str, list[str]] = {}
    for uri in out.files_under(f"{staged}/scores", ".parquet"):
        day = next(part for part in uri.split("/") if part.startswith("date=")).removeprefix("date=")
        by_date.setdefault(day, []).append(uri)
    for day, uris in sorted(by_date.items()):
        for stale in out.glob(f"scores/date={day}/{source.source_id}-s*.parquet"):
            out.delete(stale)  # an earlier attempt at the same file
        for i, uri in enumerate(uris):
            key = f"scores/date={day}/{source.source_id}-s{i:05d}.parquet"
            out.move(uri, key)
            outputs.append(key)
    day = started.astimezone(UTC).date().isoformat()
    for stale in out.glob(f"quarantine/date=*/{source.source_id}-s*.jsonl"):
        out.delete(stale)
    quarantined = [
        u for u in out.files_under(f"{staged}/quarantine", "") if PurePosixPath(u).name.startswith("part-")
    ]
    for i, uri in enumerate(quarantined):
        key = f"quarantine/date={day}/{source.source_id}-s{i:05d}.jsonl"
        out.move(uri, key)
        outputs.append(key)
    out.delete(staged, recursive=True)
    return sorted(outputs)


def _fail(
    out: _Lake,
    input_uri: str,
    source: FileSource,
    bundle: ModelBundle,
    fmt_name: str,
    error: str,
    started: datetime,
    t0: float,
    columns: list[str],
    merged: FileManifest | None = None,
) -> FileManifest:
    """A failed manifest, the whole file copied to quarantine/files/ (as the function does)."""
    name = PurePosixPath(source.key).name or "file"
    copy = f"quarantine/files/{source.source_id}/{name}"
    note = None
    try:
        out.copy_in(input_uri, copy)
    except Exception as exc:  # the record says why the copy is missing; the manifest is what matters
        note = f"not copied: {str(exc).splitlines()[0][:300]}"
        copy = ""
    record = {
        "source": source.model_dump(mode="json"),
        "source_id": source.source_id,
        "reason": error,
        "copy": out.uri(copy) if copy else None,
        "note": note,
        "quarantined_at": datetime.now(UTC).isoformat(),
    }
    where = f"quarantine/files/{source.source_id}.json"
    out.write_bytes(where, json.dumps(record, indent=2).encode() + b"\n")
    manifest = FileManifest(
        source=source,
        source_id=source.source_id,
        format=fmt_name,
        parts=merged.parts if merged else 1,
        status="failed",
        error=error,
        rows_read_before_failure=merged.rows_read_before_failure if merged else 0,
        columns=columns,
        model_version=bundle.model_version,
        rule_set_version=bundle.spec.alert_policy.rule_set_version,
        started_at=started,
        duration_seconds=time.perf_counter() - t0,
        quarantined_to=where,
    )
    out.write_bytes(f"manifests/{source.source_id}.json", _manifest_json(manifest))
    return manifest


def _manifest_json(manifest: FileManifest) -> bytes:
    return json.dumps(manifest.model_dump(mode="json"), indent=2, default=str).encode() + b"\n"
