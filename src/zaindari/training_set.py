"""Curated training sets from the lake's raw telemetry, in Spark: the ``build_training_set`` job's work.

What it does, for the inclusive date range ``start..end`` (UTC days):

1. **Find** the raw files: ``<lake>/raw/telemetry/date=YYYY-MM-DD/*`` for each day of the range,
   JSON Lines (``.jsonl.gz``, ``.jsonl``, ``.json[.gz]``) or Parquet (``.parquet``), as
   ``score_event`` and the edge boxes write them. No file in the range is an error
   (:class:`TrainingSetError`) and nothing is written.
2. **Validate** every row with the telemetry contract's rules (:mod:`zaindari.contract`), in
   Spark: the row is a JSON object with no unknown field; ``device_id`` present and not blank;
   ``timestamp`` an ISO 8601 string *with* a timezone or epoch milliseconds, not before 2000;
   ``sensors`` an object of 1 to 256 finite JSON numbers (strings, booleans, ``null``, ``NaN`` are
   refused) under valid names; ``seq`` a non-negative integer. Identifiers are trimmed; a numeric
   ``device_id`` is taken as its text (Spark's JSON reader cannot tell ``5`` from ``"5"``), and
   the future-skew rule does not apply (there is no receiver's clock in a replay).
3. **Set aside** a row whose timestamp falls outside the range (``range``), and every repeat of a
   reading already seen (``duplicate``: same ``device_id``, ``timestamp`` and ``seq``; the first in
   file order is kept).
4. **Flatten** ``sensors`` into one column per spec sensor, and compute every feature of the model
   spec with :func:`zaindari.features_spark.add_features`: the same definitions as the online
   path, proven equal to numpy; its checks (missing sensor, value outside the sensor's range,
   non-finite derived feature) set rows aside as ``features``. Windows span the whole range per
   device and start empty at ``start`` (as a device's first readings online);
   ``readings_since_start`` counts from ``start``.
5. **Leave out known faults**: a row of a device inside a window of the plant's maintenance log
   (:mod:`zaindari.maintenance`, ``<lake>/labels/maintenance/``: the device was known faulty or
   under work) is set aside as ``maintenance``. An anomaly model learns normal operation; fitted
   on a failing machine it learns the failure as normal and detects less. Windows are computed
   before this step, so a device's first rows after a window start from its true history.
6. **Write** the valid rows as Parquet partitioned by ``date`` under the output, and the rows set
   aside as gzipped JSON Lines partitioned by their input's ``date`` under the rejected location,
   each with its ``stage``, ``reason``, input file and the record as read: every input row is in
   one of the two (``rows.in == rows.valid + rows.rejected``), none is dropped silently. Last,
   ``_data_version.json`` (:func:`data_version`) is written next to the training set: a training
   set without it is incomplete.

**Reading S3.** Spark reaches ``s3://`` natively on Glue and EMR (EMRFS), and the job uses those
URIs as they are there. A local Spark has no S3 filesystem: ``s3a://`` needs the hadoop-aws and
AWS SDK jars, which are not on the default classpath and cannot be fetched offline. So when the
job runs locally (``--master`` given) against S3 (moto, LocalStack or AWS), it *stages*: the input
objects are listed and downloaded with boto3 into a scratch folder, Spark reads and writes local
files, and the outputs are uploaded with boto3 afterwards. Listing (for sizes and ETags) and the
small files (spec, data version) always go through a :class:`~zaindari.file_store.FileStore`, on
every runtime.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from zaindari.contract import ContractLimits
from zaindari.features_spark import REJECT_REASON, add_features
from zaindari.file_store import FileStore, StoredFile
from zaindari.maintenance import MaintenanceLog
from zaindari.spec import ModelSpec

__all__ = [
    "DATA_VERSION_FILE",
    "RAW_PREFIX",
    "TrainingSetError",
    "build_training_set",
    "curate",
    "data_version",
    "exclude_maintenance",
    "find_inputs",
    "no_input_error",
    "read_raw",
    "spec_hash",
    "validate_contract",
]

RAW_PREFIX = "raw/telemetry"
DATA_VERSION_FILE = "_data_version.json"
FORMAT = "zaindari.training_set/1"
_JSON_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json")
_PARQUET_SUFFIXES = (".parquet",)
IDENTIFIER_COLUMNS = ("device_id", "asset", "line", "site", "mode", "seq", "timestamp")
_READING_FIELDS = ("device_id", "asset", "line", "site", "timestamp", "sensors", "mode", "seq")
_NUMBER = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"
_SENSOR_NAME = r"^[A-Za-z0-9_.:\-/]{1,128}$"
_EARLIEST = "2000-01-01 00:00:00"


class TrainingSetError(RuntimeError):
    """The training set cannot be built (no input, no valid row, a bad argument); nothing is published."""


# ----------------------------------------------------------------------------- where files are


def _is_data_file(name: str) -> bool:
    lower = name.lower()
    return not name.startswith(("_", ".")) and lower.endswith(_JSON_SUFFIXES + _PARQUET_SUFFIXES)


def _days(start: date, end: date) -> list[date]:
    if start > end:
        raise TrainingSetError(f"start {start} is after end {end}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def find_inputs(store: FileStore, lake: str, start: date, end: date) -> list[StoredFile]:
    """The raw telemetry files of each day of ``start..end`` (inclusive), in date then URI order.

    Hidden files (``_SUCCESS``, ``.crc``), empty files and other formats are left out.
    """
    lake = lake.rstrip("/")
    found: list[StoredFile] = []
    for day in _days(start, end):
        prefix = f"{lake}/{RAW_PREFIX}/date={day.isoformat()}/"
        for f in store.list_files(prefix):
            if f.size > 0 and _is_data_file(f.uri.rsplit("/", 1)[-1]):
                found.append(StoredFile(f.uri, f.size, f.etag, day.isoformat()))
    return found


# ----------------------------------------------------------------------------- Spark transforms


def read_raw(spark: SparkSession, paths: Sequence[str], lake: str) -> DataFrame:
    """One row per input record: ``value`` (the record as JSON text), ``_input`` (its file's lake
    URI), ``_date`` (its partition) and ``_pos`` (increasing in file order).

    ``paths`` are what Spark reads (the lake's own URIs, or local copies that keep the
    ``date=YYYY-MM-DD/<name>`` tail). Parquet rows are turned into JSON text, so both formats meet
    the same validation.
    """
    json_paths = [p for p in paths if not p.lower().endswith(_PARQUET_SUFFIXES)]
    parquet_paths = [p for p in paths if p.lower().endswith(_PARQUET_SUFFIXES)]
    frames = []
    if json_paths:
        text = spark.read.text(json_paths)
        frames.append(text.select("value", F.col("_metadata.file_path").alias("_path")))
    if parquet_paths:
        table = spark.read.option("mergeSchema", "true").parquet(*parquet_paths)
        record = F.to_json(F.struct(*[F.col(f"`{c}`") for c in table.columns]))
        frames.append(table.select(record.alias("value"), F.col("_metadata.file_path").alias("_path")))
    if not frames:
        raise TrainingSetError("no input file to read")
    df = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    tail = F.regexp_extract("_path", r"(date=[0-9]{4}-[0-9]{2}-[0-9]{2}/[^/]+)$", 1)
    return df.select(
        "value",
        F.concat(F.lit(f"{lake.rstrip('/')}/{RAW_PREFIX}/"), tail).alias("_input"),
        F.regexp_extract("_path", r"date=([0-9]{4}-[0-9]{2}-[0-9]{2})/[^/]+$", 1).alias("_date"),
        F.monotonically_increasing_id().alias("_pos"),
    )


def _reason_if(condition: Column, message: Column | str) -> Column:
    return F.when(condition, message if not isinstance(message, str) else F.lit(message))


def _join_nonempty(parts: Column) -> Column:
    return F.when(F.size(parts) > 0, F.array_join(parts, "; "))


def validate_contract(raw: DataFrame, limits: ContractLimits | None = None) -> DataFrame:
    """Parse each ``value`` as a reading and check it with the contract's rules (module docstring).

    Returns ``raw``'s columns plus ``device_id``, ``asset``, ``line``, ``site``, ``mode`` (trimmed
    strings), ``seq`` (long), ``timestamp`` (UTC timestamp), ``sensors`` (map of name to double),
    ``_stage`` (``"contract"`` or null) and ``_reason`` (each failing field named, ``"; "``-joined,
    like :class:`zaindari.contract.Rejection` reasons).
    """
    limits = limits or ContractLimits()
    schema = ", ".join(f"{name} string" for name in _READING_FIELDS)
    df = raw.withColumns({"_r": F.from_json("value", schema), "_keys": F.json_object_keys("value")})
    r = F.col("_r")
    text = {name: F.trim(r[name]) for name in ("device_id", "asset", "line", "site", "mode")}

    ts_text = F.trim(r["timestamp"])
    epoch = ts_text.rlike(_NUMBER)
    epoch_ms = ts_text.try_cast("double")
    from_epoch = F.when(epoch & (F.abs(epoch_ms) < 1e15), F.timestamp_millis(epoch_ms.cast("long")))
    parsed = F.when(~epoch, F.try_to_timestamp(ts_text))
    zoned = ts_text.rlike(r"([zZ]|[+-][0-9]{2}(:?[0-9]{2})?)$")
    timestamp = F.coalesce(from_epoch, F.when(zoned, parsed))

    smap = F.from_json(r["sensors"], "map<string,string>")
    quoted = F.regexp_extract_all(r["sensors"], F.lit(r'"((?:[^"\\]|\\.)*)"\s*:\s*"'), 1)
    bad_values = F.filter(
        F.map_entries(F.col("_smap")),
        lambda e: (
            e["value"].isNull()
            | ~e["value"].rlike(_NUMBER)
            | F.array_contains(F.col("_quoted"), e["key"])
            | (F.abs(e["value"].try_cast("double")) == float("inf"))
        ),
    )
    bad_names = F.filter(F.map_keys(F.col("_smap")), lambda k: ~k.rlike(_SENSOR_NAME))
    unknown = F.array_except(F.col("_keys"), F.array(*[F.lit(k) for k in _READING_FIELDS]))
    df = df.withColumns({"_smap": smap, "_quoted": quoted})

    too_long = [
        _reason_if(F.length(text[name]) > size, f"{name}: String should have at most {size} characters")
        for name, size in (("device_id", 128), ("asset", 128), ("line", 128), ("site", 128), ("mode", 64))
    ]
    seq = r["seq"]
    problems = [
        _join_nonempty(
            F.transform(unknown, lambda k: F.concat(k, F.lit(": Extra inputs are not permitted")))
        ),
        _reason_if(r["device_id"].isNull(), "device_id: Field required"),
        _reason_if(text["device_id"] == "", "device_id: String should have at least 1 character"),
        *too_long,
        _reason_if(r["timestamp"].isNull(), "timestamp: Field required"),
        _reason_if(
            r["timestamp"].isNotNull() & ~epoch & parsed.isNull(),
            F.concat(F.lit("timestamp: "), F.substring(ts_text, 1, 64), F.lit(" is not ISO 8601")),
        ),
        _reason_if(
            r["timestamp"].isNotNull() & ~epoch & parsed.isNotNull() & ~zoned,
            "timestamp: must carry a timezone (for example 'Z' or '+01:00')",
        ),
        _reason_if(epoch & from_epoch.isNull(), "timestamp: is out of range for epoch milliseconds"),
        _reason_if(
            timestamp < F.lit(_EARLIEST).cast("timestamp"),
            "timestamp: is before 2000-01-01: epoch seconds sent as milliseconds?",
        ),
        _reason_if(r["sensors"].isNull(), "sensors: Field required"),
        _reason_if(
            r["sensors"].isNotNull() & F.col("_smap").isNull(),
            "sensors: must be an object mapping sensor name to number",
        ),
        _reason_if(F.size(F.col("_smap")) == 0, "sensors: must hold at least one value"),
        _reason_if(
            F.size(F.col("_smap")) > limits.max_sensors,
            F.concat(
                F.size(F.col("_smap")).cast("string"),
                F.lit(f" sensors, above the limit of {limits.max_sensors}"),
            ),
        ),
        _join_nonempty(
            F.transform(
                bad_names,
                lambda k: F.concat(F.lit("sensors."), F.substring(k, 1, 64), F.lit(": invalid sensor name")),
            )
        ),
        _join_nonempty(
            F.transform(
                bad_values,
                lambda e: F.concat(
                    F.lit("sensors."),
                    e["key"],
                    F.lit(": value "),
                    F.coalesce(F.substring(e["value"], 1, 32), F.lit("null")),
                    F.lit(" is not a finite number"),
                ),
            )
        ),
        _reason_if(
            seq.isNotNull() & (~seq.rlike(r"^[0-9]{1,19}$") | seq.try_cast("long").isNull()),
            "seq: must be a non-negative integer",
        ),
    ]
    reason = F.when(F.col("_keys").isNull(), F.lit("reading: must be a JSON object")).otherwise(
        F.concat_ws("; ", *problems)
    )
    df = df.withColumn("_reason", F.when(reason != "", reason))
    sensors = F.transform_values(F.col("_smap"), lambda _k, v: v.try_cast("double"))
    return df.select(
        *raw.columns,
        text["device_id"].alias("device_id"),
        *[text[n].alias(n) for n in ("asset", "line", "site", "mode")],
        seq.try_cast("long").alias("seq"),
        timestamp.alias("timestamp"),
        F.when(F.col("_reason").isNull(), sensors).alias("sensors"),
        F.when(F.col("_reason").isNotNull(), F.lit("contract")).alias("_stage"),
        "_reason",
    )


def curate(readings: DataFrame, spec: ModelSpec, start: date, end: date) -> DataFrame:
    """From :func:`validate_contract`'s output to every row with its features or why it is set aside.

    Adds the spec's columns (sensors, derived, windows, counter) via
    :func:`zaindari.features_spark.add_features`, ``date`` (the reading's UTC day), and sets
    ``_stage``/``_reason`` for rows outside ``start..end`` (``range``), repeats (``duplicate``)
    and rows the spec refuses (``features``). A row with no ``_stage`` is a training row.
    """
    clashes = sorted(set(spec.column_names) & {*IDENTIFIER_COLUMNS, "date", "value"})
    if clashes:
        raise TrainingSetError(f"spec {spec.name!r} names columns the training set reserves: {clashes}")
    day = F.to_date("timestamp")
    outside = F.col("_stage").isNull() & ((day < F.lit(start)) | (day > F.lit(end)))
    df = readings.withColumns(
        {
            "_reason": F.when(
                outside,
                F.concat(
                    F.lit("timestamp: "),
                    F.date_format("timestamp", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'"),
                    F.lit(f" outside the requested range {start}..{end}"),
                ),
            ).otherwise(F.col("_reason")),
            "_stage": F.when(outside, F.lit("range")).otherwise(F.col("_stage")),
        }
    )
    first = Window.partitionBy("device_id", "timestamp", "seq", F.col("_stage").isNull()).orderBy(
        "_input", "_pos"
    )
    repeat = F.col("_stage").isNull() & (F.row_number().over(first) > 1)
    df = df.withColumns(
        {
            "_reason": F.when(
                repeat, F.lit("duplicate of an earlier reading (same device_id, timestamp and seq)")
            ).otherwise(F.col("_reason")),
            "_stage": F.when(repeat, F.lit("duplicate")).otherwise(F.col("_stage")),
        }
    )
    kept = F.col("_stage").isNull()
    # rows already set aside get no sensor values: add_features then leaves them out of every window
    df = df.withColumns(
        {name: F.when(kept, F.try_element_at("sensors", F.lit(name))) for name in spec.sensor_names}
    ).withColumn("_order", F.struct("seq", "_input", "_pos"))
    df = add_features(df, spec, device_col="device_id", time_col="timestamp", tiebreak_col="_order")
    refused = kept & F.col(REJECT_REASON).isNotNull()
    return df.withColumns(
        {
            "_stage": F.when(refused, F.lit("features")).otherwise(F.col("_stage")),
            "_reason": F.coalesce(F.col("_reason"), F.col(REJECT_REASON)),
            "date": F.date_format("timestamp", "yyyy-MM-dd"),
        }
    ).drop(REJECT_REASON, "_order", "sensors")


def exclude_maintenance(rows: DataFrame, log: MaintenanceLog) -> DataFrame:
    """Set aside (stage ``maintenance``) every training row inside a window of ``log``.

    Rows already set aside keep their first reason. With an empty log, ``rows`` is returned as is.
    """
    if not log:
        return rows
    inside: Column | None = None
    reason: Column = F.lit(None).cast("string")
    for window in log.windows:
        # aware datetimes: Spark takes their instant (a naive one would be read in local time)
        condition = (F.col("device_id") == F.lit(window.device_id)) & (
            F.col("timestamp") >= F.lit(window.start)
        )
        if window.end is not None:
            condition &= F.col("timestamp") < F.lit(window.end)
        until = window.end.isoformat() if window.end else "open"
        text = f"maintenance log: {window.device_id} {window.kind} from {window.start.isoformat()} to {until}"
        reason = F.when(condition, F.lit(text)).otherwise(reason)
        inside = condition if inside is None else inside | condition
    assert inside is not None
    hit = F.col("_stage").isNull() & inside
    return rows.withColumns(
        {
            "_reason": F.when(hit, reason).otherwise(F.col("_reason")),
            "_stage": F.when(hit, F.lit("maintenance")).otherwise(F.col("_stage")),
        }
    )


def training_columns(spec: ModelSpec) -> list[str]:
    """The training set's columns, in order (``date`` is the partition column)."""
    return [*IDENTIFIER_COLUMNS, *spec.column_names, "date"]


def content_hash(df: DataFrame, columns: Sequence[str]) -> str:
    """An order-independent digest of the rows: equal for equal content, whatever the partitioning.

    Each row's sha256 (of its JSON) is cut into four 60-bit integers; the hash is the sha256 of the
    row count and the four sums. Two runs over the same inputs give the same value.
    """
    row = F.sha2(F.to_json(F.struct(*[F.col(c) for c in columns])), 256)
    slices = [
        F.sum(F.conv(F.substring(row, 1 + 15 * i, 15), 16, 10).cast("decimal(38,0)")).alias(f"s{i}")
        for i in range(4)
    ]
    totals = df.agg(F.count(F.lit(1)).alias("n"), *slices).collect()[0]
    text = "|".join(str(totals[k] or 0) for k in ("n", "s0", "s1", "s2", "s3"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def spec_hash(spec: ModelSpec) -> str:
    """sha256 of the spec's canonical JSON (defaults filled in, keys sorted)."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# ----------------------------------------------------------------------------- the job's work


def data_version(
    *,
    spec: ModelSpec,
    spec_uri: str | None,
    start: date,
    end: date,
    lake: str,
    inputs: Sequence[StoredFile],
    counts: dict[str, int],
    devices: int,
    rows_by_date: dict[str, int],
    digest: str,
    output: str,
    rejected: str,
    created_at: datetime,
    spark_version: str,
) -> dict[str, Any]:
    """The ``_data_version.json`` document: where the set comes from, what it holds, its hash."""
    from zaindari import __version__

    valid = counts.get("valid", 0)
    by_stage = {k: v for k, v in sorted(counts.items()) if k != "valid"}
    return {
        "format": FORMAT,
        "data_version": f"{start.isoformat()}_{end.isoformat()}-{digest.removeprefix('sha256:')[:12]}",
        "created_at": created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "time_range": {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "inclusive": True,
            "timezone": "UTC",
        },
        "spec": {"name": spec.name, "task": spec.task, "uri": spec_uri},
        "spec_hash": spec_hash(spec),
        "content_hash": digest,
        "rows": {
            "in": valid + sum(by_stage.values()),
            "valid": valid,
            "rejected": sum(by_stage.values()),
            "rejected_by_stage": by_stage,
        },
        "devices": devices,
        "rows_by_date": dict(sorted(rows_by_date.items())),
        "columns": training_columns(spec),
        "features": spec.model_features,
        "inputs": {
            "lake": lake,
            "files": [f.to_dict() for f in inputs],
            "count": len(inputs),
            "bytes": sum(f.size for f in inputs),
        },
        "outputs": {
            "training_set": output,
            "rejected": rejected,
            "partitioned_by": "date",
            "format": "parquet",
        },
        "code": {"zaindari": __version__, "spark": spark_version, "python": platform.python_version()},
    }


def no_input_error(lake: str, start: date, end: date) -> TrainingSetError:
    """The error of an empty range: which prefix, which days."""
    return TrainingSetError(
        f"no raw telemetry under {lake.rstrip('/')}/{RAW_PREFIX}/ for {start}..{end} "
        f"({len(_days(start, end))} date partitions looked at); nothing written"
    )


def _join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def build_training_set(
    spark: SparkSession,
    spec: ModelSpec,
    *,
    lake: str,
    start: date,
    end: date,
    output: str,
    rejected: str,
    store: FileStore,
    stage_s3: bool,
    scratch: Path,
    spec_uri: str | None = None,
    limits: ContractLimits | None = None,
    now: datetime | None = None,
    inputs: Sequence[StoredFile] | None = None,
    maintenance: MaintenanceLog | None = None,
) -> dict[str, Any]:
    """Build the training set of ``spec`` from ``lake``'s raw telemetry of ``start..end``.

    Parameters
    ----------
    spark
        The session (its time zone is set to UTC: dates are UTC days).
    spec
        The model spec: which sensors, derived and window features.
    lake
        ``s3://bucket`` or a local folder holding ``raw/telemetry/``.
    start, end
        The inclusive range of UTC days.
    output, rejected
        Where the training set and the rows set aside go (``s3://`` or local folders); both are
        replaced.
    store
        Lists, reads and writes files at those URIs.
    stage_s3
        Copy ``s3://`` inputs to ``scratch`` and upload ``s3://`` outputs from it (a local
        Spark), instead of letting Spark read and write S3 itself (Glue, EMR).
    scratch
        A local folder for staged copies.
    spec_uri, limits, now
        Recorded in the data version; the contract's limits; the creation time.
    inputs
        The input files when already listed (:func:`find_inputs`), else listed here.
    maintenance
        The plant's maintenance log: rows inside its windows are set aside (``maintenance``).

    Returns
    -------
    dict
        The data version, also written to ``<output>/_data_version.json``.

    Raises
    ------
    TrainingSetError
        No input file or no row in the range (nothing written), or no valid row (only the rows
        set aside are written).
    zaindari.file_store.FileStoreError
        ``store`` cannot list, stage, upload or write a file.
    """
    inputs = list(inputs if inputs is not None else find_inputs(store, lake, start, end))
    if not inputs:
        raise no_input_error(lake, start, end)
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.mapKeyDedupPolicy", "LAST_WIN")  # {"t": 1, "t": 2} is t = 2, as in json.loads
    staged = {
        name: stage_s3 and uri.startswith("s3://")
        for name, uri in (("lake", lake), ("output", output), ("rejected", rejected))
    }
    if staged["lake"]:
        paths = [str(p) for p in store.download(inputs, scratch / "inputs", lake)]
    else:
        paths = [f.uri for f in inputs]
    targets = {
        "output": str(scratch / "output") if staged["output"] else output,
        "rejected": str(scratch / "rejected") if staged["rejected"] else rejected,
    }

    rows = curate(validate_contract(read_raw(spark, paths, lake), limits), spec, start, end)
    rows = exclude_maintenance(rows, maintenance or MaintenanceLog())
    from pyspark import StorageLevel

    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = {(r["_stage"] or "valid"): int(r["count"]) for r in rows.groupBy("_stage").count().collect()}
        if not counts:
            raise TrainingSetError(
                f"the {len(inputs)} input file(s) for {start}..{end} hold no row; nothing written"
            )
        aside = rows.filter(F.col("_stage").isNotNull()).select(
            F.col("_date").alias("date"),
            F.col("_stage").alias("stage"),
            F.col("_reason").alias("reason"),
            F.col("_input").alias("input"),
            F.col("value").alias("record"),
        )
        aside.write.mode("overwrite").partitionBy("date").option("compression", "gzip").json(
            targets["rejected"]
        )
        if staged["rejected"]:
            store.replace_folder(Path(targets["rejected"]), rejected)
        valid = counts.get("valid", 0)
        if valid == 0:
            raise TrainingSetError(
                f"all {sum(counts.values())} rows for {start}..{end} were set aside ({counts}); "
                f"see {rejected}; no training set written"
            )
        columns = training_columns(spec)
        curated = rows.filter(F.col("_stage").isNull()).select(*columns)
        curated.write.mode("overwrite").partitionBy("date").parquet(targets["output"])
        digest = content_hash(curated, columns)
        by_date = {r["date"]: int(r["count"]) for r in curated.groupBy("date").count().collect()}
        devices = int(curated.agg(F.countDistinct("device_id")).collect()[0][0])
    finally:
        rows.unpersist()
    if staged["output"]:
        store.replace_folder(Path(targets["output"]), output)
    version = data_version(
        spec=spec,
        spec_uri=spec_uri,
        start=start,
        end=end,
        lake=lake,
        inputs=inputs,
        counts=counts,
        devices=devices,
        rows_by_date=by_date,
        digest=digest,
        output=output,
        rejected=rejected,
        created_at=now or datetime.now(UTC),
        spark_version=spark.version,
    )
    # written last: a training set without its data version is incomplete
    store.write_bytes(_join(output, DATA_VERSION_FILE), (json.dumps(version, indent=2) + "\n").encode())
    return version
