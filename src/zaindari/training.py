"""Training on Spark: from a table and a model spec to a verified model bundle.

The steps, each a plain function the ``glue_jobs/train_model.py`` job wires together:

1. :func:`read_input` reads the Parquet input (a curated training set that already has the
   spec's feature columns, or a user's raw table of readings) and keeps the ``--start/--end``
   range. A file Spark cannot read fails the run (``ignoreCorruptFiles`` is forced off).
2. :func:`prepare_rows` validates a raw table with :func:`zaindari.features_spark.add_features`
   (the same definitions as online scoring), derives the label (:func:`derive_labels`), and
   counts every row it does not train on, by reason: rejected by the contract, flagged as a
   failure, or without a known label. Nothing is dropped silently.
3. :func:`split_by_asset` holds out whole assets (hashed with the seed, stratified by whether the
   asset ever has a positive label), so no asset appears on both sides.
4. :func:`fit_model` fits per task with Spark MLlib and a hyperparameter search whose held-out
   parts are also whole assets (Spark's ``TrainValidationSplit`` splits rows at random, which
   would let an asset's own future into its validation; ``cross_validation`` uses Spark's
   ``CrossValidator`` with asset-grouped folds via ``foldCol``):

   * ``anomaly``: standardisation + PCA, score = squared reconstruction error of the
     standardised features, exported with :func:`zaindari.pca_model.pca_anomaly_onnx`;
     thresholds are quantiles of the validation score.
   * ``classification``: GBT / random forest / logistic regression; score = probability of
     class 1; threshold = the lowest one reaching the target precision on validation.
   * ``regression``: GBT / random forest / linear regression; score = prediction; thresholds
     from the settings with direction ``below``.

5. :func:`check_parity` runs the ONNX graph (onnxruntime) on held-out rows and compares it with
   Spark's predictions; a difference above the tolerance fails the run before anything is written.
6. :func:`publish_bundle` writes the bundle to a scratch folder, verifies it with
   :func:`zaindari.bundle.load_bundle`, then moves it to a local folder or uploads it to an
   ``s3://`` prefix (``MANIFEST.json`` last).

Labels (``spec.label``): ``none`` reads ``label.column``; ``remaining_useful_life`` is the time to
the asset's next failure, clipped at ``cap``; ``failure_within`` is 1 when a failure comes within
``horizon`` after the row. Failures are the rows where ``label.failure_column`` is true (those rows
themselves are not trained on: the machine has failed), or, without a failure column, each
asset's last row (run-to-failure data). Times are in hours when the time column is a timestamp
(or an ISO 8601 string), in the column's own units (cycles) when it is numeric. A row whose label
cannot be known (the asset's data ends before ``cap``/``horizon`` with no failure) is counted as
censored and not trained on.

Features are rounded to float32 before Spark sees them: the ONNX graph takes float32, so Spark
and ONNX see the very same inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from zaindari.bundle import (
    MANIFEST_FILE,
    FeatureStats,
    LearnedThresholds,
    OutputSpec,
    Signature,
    TensorSpec,
    load_bundle,
    write_bundle,
)
from zaindari.features_spark import REJECT_REASON, add_features
from zaindari.pca_model import MIN_STD, PcaWeights, pca_anomaly_onnx, pca_signature
from zaindari.spec import ModelSpec, SpecError
from zaindari.training_settings import TrainingSettings, training_settings

__all__ = [
    "FEATURES",
    "LABEL",
    "InputData",
    "PreparedRows",
    "TrainedModel",
    "TrainingError",
    "assign_held_out",
    "check_output",
    "check_parity",
    "derive_labels",
    "fit_model",
    "prepare_rows",
    "publish_bundle",
    "read_input",
    "read_spec",
    "split_by_asset",
    "threshold_for_precision",
    "train_model",
]

FEATURES = "features"
LABEL = "_label"
TIME_VALUE = "_time_value"
FAILED = "_failed"
ASSET_KEY = "_asset_key"
FOLD = "_fold"
SCORE = "_score"
FloatArray = npt.NDArray[np.float64]
Log = Callable[[str], None]


class TrainingError(ValueError):
    """The run cannot produce a model; the message says which input and why. No bundle is written."""


def _quiet(_: str) -> None:
    return None


# ----------------------------------------------------------------------------- extract


@dataclass(frozen=True)
class InputData:
    """The rows in range, and where they come from (for lineage)."""

    frame: DataFrame
    path: str
    rows_read: int
    rows_in_range: int
    files: int
    bytes: int
    content_hash: str
    hash_method: str
    start: str | None
    end: str | None


def read_spec(location: str) -> ModelSpec:
    """Load a spec from a local path or an ``s3://bucket/key`` (through ``zaindari.infra.aws``)."""
    from zaindari.spec import load_spec

    if location.startswith("s3://"):
        bucket, key = _split_s3(location)
        body = _s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return load_spec(body.decode("utf-8"))
    if not Path(location).is_file():
        raise TrainingError(f"spec {location!r}: no such file")
    return load_spec(Path(location))


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise TrainingError(f"{url!r} is not an s3://bucket/key address")
    return bucket, key


def _s3_client() -> Any:
    from zaindari.infra.aws import AwsConfig, ClientFactory

    return ClientFactory(AwsConfig.from_env(os.environ)).client("s3")


def _data_version(path: str) -> tuple[int, int, str, str]:
    """(files, bytes, hash, method) of the input: sha256 of the file contents for a local path,
    of the object listing (key, size, ETag) for ``s3://``."""
    digest = hashlib.sha256()
    files = 0
    size = 0
    if path.startswith("s3://"):
        bucket, prefix = _split_s3(path)
        paginator = _s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                if name.startswith(("_", ".")):
                    continue
                files += 1
                size += int(item["Size"])
                digest.update(f"{item['Key']} {item['Size']} {item['ETag']}\n".encode())
        return files, size, digest.hexdigest(), "sha256 of the S3 listing (key, size, ETag)"
    local = Path(path.removeprefix("file://"))
    if not local.exists():
        raise TrainingError(f"input {path!r}: no such file or folder")
    candidates = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for file in candidates:
        relative = file.relative_to(local) if local.is_dir() else Path(file.name)
        if any(part.startswith(("_", ".")) for part in relative.parts):
            continue  # what Spark skips too (_SUCCESS, .crc)
        files += 1
        size += file.stat().st_size
        content = hashlib.sha256()
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                content.update(block)
        digest.update(f"{relative.as_posix()} {content.hexdigest()}\n".encode())
    return files, size, digest.hexdigest(), "sha256 over the files' sha256"


def _time_kind(df: DataFrame, column: str) -> str:
    data_type = df.schema[column].dataType
    if isinstance(data_type, T.StringType):
        return "string"
    if isinstance(data_type, T.TimestampType | T.TimestampNTZType | T.DateType):
        return "timestamp"
    if isinstance(data_type, T.NumericType):
        return "numeric"
    raise TrainingError(
        f"time column {column!r} has type {data_type.simpleString()}; expected a time or a number"
    )


def _normalised_time(df: DataFrame, column: str) -> tuple[DataFrame, bool]:
    """The time column as a timestamp (strings parsed as ISO 8601) or a double; True if a time."""
    kind = _time_kind(df, column)
    if kind == "string":
        return df.withColumn(column, F.to_timestamp(F.col(column))), True
    if kind == "timestamp":
        return df.withColumn(column, F.col(column).cast("timestamp")), True
    return df.withColumn(column, F.col(column).cast("double")), False


def _bound(value: str, is_time: bool) -> Column:
    if is_time:
        return F.to_timestamp(F.lit(value))
    try:
        return F.lit(float(value))
    except ValueError as exc:
        raise TrainingError(f"range bound {value!r} is not a number (the time column is numeric)") from exc


def read_input(
    spark: SparkSession,
    path: str,
    spec: ModelSpec,
    *,
    start: str | None = None,
    end: str | None = None,
    log: Log = _quiet,
) -> InputData:
    """Read the Parquet input and keep the rows with ``start <= time < end``.

    Raises
    ------
    TrainingError
        When the input is missing, a file cannot be read (corrupt Parquet), the table lacks the
        asset or time column, or no row is left in range.
    """
    files, size, content_hash, method = _data_version(path)
    if files == 0:
        raise TrainingError(f"input {path!r} holds no data file")
    asset, time_col = spec.identifiers.asset, spec.identifiers.time
    try:
        df = spark.read.option("ignoreCorruptFiles", "false").parquet(path)
        missing = [c for c in (asset, time_col) if c not in df.columns]
        if missing:
            raise TrainingError(
                f"input {path!r} has no column {missing} (spec identifiers: asset={asset!r}, "
                f"time={time_col!r}); columns: {df.columns}"
            )
        rows_read = df.count()  # reads every file's footer: a corrupt file fails here
        df, is_time = _normalised_time(df, time_col)
        if start:
            df = df.filter(F.col(time_col) >= _bound(start, is_time))
        if end:
            df = df.filter(F.col(time_col) < _bound(end, is_time))
        rows_in_range = df.count() if (start or end) else rows_read
    except TrainingError:
        raise
    except Exception as exc:  # Spark raises its own (Java) exception types for unreadable files
        raise TrainingError(f"input {path!r} cannot be read: {_first_line(exc)}") from exc
    if rows_read == 0:
        raise TrainingError(f"input {path!r} is empty (0 rows)")
    if rows_in_range == 0:
        raise TrainingError(
            f"input {path!r} has {rows_read} rows but none with {start or '-inf'} <= {time_col} < {end or 'inf'}"
        )
    log(f"read {rows_read} rows from {files} files ({size} bytes); {rows_in_range} in range")
    return InputData(df, path, rows_read, rows_in_range, files, size, content_hash, method, start, end)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if "Exception" in line or "Error" in line:
            return line.strip()[:500]
    return (text.splitlines() or [type(exc).__name__])[0][:500]


# ----------------------------------------------------------------------------- transform: rows


@dataclass(frozen=True)
class PreparedRows:
    """Rows to train on (asset key, time value, ``features`` vector, label) and the row accounts.

    ``cached`` is the persisted frame behind ``frame`` (unpersist it when done)."""

    frame: DataFrame
    curated: bool
    accounts: dict[str, Any]
    cached: DataFrame


def _flag(column: Column, data_type: T.DataType) -> Column:
    if isinstance(data_type, T.BooleanType):
        return F.coalesce(column, F.lit(False))
    if isinstance(data_type, T.NumericType):
        return F.coalesce(column != 0, F.lit(False))
    return F.coalesce(F.lower(F.trim(column.cast("string"))).isin("true", "1", "yes", "y", "t"), F.lit(False))


def derive_labels(df: DataFrame, spec: ModelSpec, *, is_time: bool) -> DataFrame:
    """Add ``_time_value`` (hours, or the numeric time's units), ``_failed`` and ``_label``.

    ``_label`` is null where it cannot be known (censored); see the module docstring.
    """
    asset, time_col = spec.identifiers.asset, spec.identifiers.time
    t = (F.unix_micros(F.col(time_col)) / 3.6e9) if is_time else F.col(time_col).cast("double")
    df = df.withColumn(TIME_VALUE, t)
    label = spec.label
    if label is None:
        return df.withColumn(FAILED, F.lit(False)).withColumn(LABEL, F.lit(None).cast("double"))
    if label.derive == "none":
        return df.withColumn(FAILED, F.lit(False)).withColumn(LABEL, F.col(label.column).cast("double"))
    # "this row and every later one" as a running frame in reverse time order: Spark computes an
    # unbounded-preceding frame incrementally, an unbounded-following one anew for every row (O(n^2)).
    ahead = (
        Window.partitionBy(asset)
        .orderBy(F.col(TIME_VALUE).desc())
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    whole = Window.partitionBy(asset)
    last = F.max(TIME_VALUE).over(whole)
    if label.failure_column:
        failed = _flag(F.col(label.failure_column), df.schema[label.failure_column].dataType)
        df = df.withColumn(FAILED, failed)
        next_failure = F.min(F.when(F.col(FAILED), F.col(TIME_VALUE))).over(ahead)
    else:  # run to failure: each asset's last row is its failure
        df = df.withColumn(FAILED, F.lit(False))
        next_failure = last
    df = df.withColumn("_next_failure", next_failure).withColumn("_last_time", last)
    to_failure = F.col("_next_failure") - F.col(TIME_VALUE)
    observed_ahead = F.col("_last_time") - F.col(TIME_VALUE)
    if label.derive == "remaining_useful_life":
        if label.cap is None:
            value = F.when(F.col("_next_failure").isNotNull(), to_failure)
        else:
            cap = float(label.cap)
            value = F.when(F.col("_next_failure").isNotNull(), F.least(to_failure, F.lit(cap))).when(
                observed_ahead >= cap, F.lit(cap)
            )
    else:
        assert label.horizon is not None  # checked by _check_columns
        horizon = float(label.horizon)
        value = F.when(F.col("_next_failure").isNotNull() & (to_failure <= horizon), F.lit(1.0)).when(
            F.col("_next_failure").isNotNull() | (observed_ahead >= horizon), F.lit(0.0)
        )
    return df.withColumn(LABEL, value.cast("double")).drop("_next_failure", "_last_time")


def _check_columns(df: DataFrame, spec: ModelSpec, curated: bool) -> None:
    columns = set(df.columns)
    if not curated:
        missing = [s for s in spec.sensor_names if s not in columns]
        if missing:
            raise TrainingError(
                f"spec {spec.name!r} names sensors {missing} that the input table does not have; "
                f"its columns: {sorted(columns)}"
            )
    label = spec.label
    if label is None:
        return
    if label.derive == "none" and label.column not in columns:
        raise TrainingError(
            f"label column {label.column!r} is not in the input table; columns: {sorted(columns)}"
        )
    if label.failure_column and label.failure_column not in columns:
        raise TrainingError(
            f"label.failure_column {label.failure_column!r} is not in the input table; columns: {sorted(columns)}"
        )
    if label.derive == "failure_within" and label.horizon is None:
        raise SpecError("label.derive 'failure_within' needs 'horizon'")


def _is_curated(df: DataFrame, spec: ModelSpec) -> bool:
    """A curated training set already holds every computed (non-sensor) model feature."""
    computed = [f for f in spec.model_features if f not in spec.sensor_names]
    return bool(computed) and all(f in df.columns for f in computed)


def prepare_rows(data: InputData, spec: ModelSpec, *, log: Log = _quiet) -> PreparedRows:
    """Validate, compute features and labels; keep the rows a model can train on.

    Returns
    -------
    PreparedRows
        ``frame`` columns: ``_asset_key`` (string), ``_time_value``, ``features`` (vector of the
        spec's model features, rounded to float32) and ``_label`` (double, null for anomaly
        without a label). ``accounts``: row counts by fate, and the most frequent reject reasons.
    """
    df = data.frame
    curated = _is_curated(df, spec)
    _check_columns(df, spec, curated)
    asset, time_col = spec.identifiers.asset, spec.identifiers.time
    is_time = _time_kind(df, time_col) == "timestamp"
    df = derive_labels(df, spec, is_time=is_time)
    if curated:
        reason = F.col(REJECT_REASON) if REJECT_REASON in df.columns else F.lit(None).cast("string")
        null_feature = [
            F.when(F.col(f).isNull() | F.isnan(F.col(f)), F.lit(f"features.{f}: missing"))
            for f in spec.model_features
        ]
        df = df.withColumn(REJECT_REASON, F.coalesce(reason, *null_feature))
    else:
        df = add_features(df, spec, device_col=asset, time_col=time_col)
    identity_missing = F.when(
        F.col(asset).isNull() | F.col(time_col).isNull(), F.lit("identifiers: asset or time missing")
    )
    df = df.withColumn(REJECT_REASON, F.coalesce(identity_missing, F.col(REJECT_REASON)))
    supervised = spec.label is not None
    fate = (
        F.when(F.col(REJECT_REASON).isNotNull(), F.lit("rejected"))
        .when(F.col(FAILED), F.lit("failure_rows"))
        .when(F.lit(supervised) & F.col(LABEL).isNull(), F.lit("label_unknown"))
        .otherwise(F.lit("trained_on"))
    )
    df = df.withColumn("_fate", fate).persist()
    counts = {row["_fate"]: int(row["count"]) for row in df.groupBy("_fate").count().collect()}
    reasons = (
        df.filter(F.col(REJECT_REASON).isNotNull())
        .groupBy(F.regexp_replace(REJECT_REASON, r"value \S+ ", "value V ").alias("reason"))
        .count()
        .orderBy(F.desc("count"))
        .limit(20)
        .collect()
    )
    accounts = {
        "rows_in_range": data.rows_in_range,
        "rejected": counts.get("rejected", 0),
        "failure_rows_excluded": counts.get("failure_rows", 0),
        "label_unknown_excluded": counts.get("label_unknown", 0),
        "trained_on": counts.get("trained_on", 0),
        "reject_reasons": {row["reason"]: int(row["count"]) for row in reasons},
    }
    log(f"rows: {json.dumps({k: v for k, v in accounts.items() if k != 'reject_reasons'})}")
    if accounts["trained_on"] == 0:
        raise TrainingError(f"no row left to train on: {json.dumps(accounts)}")
    rounded = [
        F.col(f).cast("float").cast("double").alias(f"_x{i}") for i, f in enumerate(spec.model_features)
    ]
    from pyspark.ml.functions import array_to_vector

    rows = df.filter(F.col("_fate") == "trained_on").select(
        F.col(asset).cast("string").alias(ASSET_KEY),
        F.col(TIME_VALUE),
        array_to_vector(F.array(*rounded)).alias(FEATURES),
        F.col(LABEL),
    )
    if spec.task == "classification":
        bad = rows.filter(~F.col(LABEL).isin(0.0, 1.0)).limit(1).collect()
        if bad:
            raise TrainingError(f"classification labels must be 0 or 1; found {bad[0][LABEL]}")
    return PreparedRows(rows, curated, accounts, df)


# ----------------------------------------------------------------------------- transform: split


def _rank_key(seed: int, asset: str) -> str:
    return hashlib.sha256(f"{seed}:{asset}".encode()).hexdigest()


def assign_held_out(assets: Sequence[tuple[str, bool]], fraction: float, seed: int) -> set[str]:
    """Choose the held-out assets: in each stratum (``True``: the asset has a positive label),
    the ``round(fraction * n)`` assets with the lowest ``sha256(seed:asset)``.

    Every stratum with two or more assets keeps at least one asset on each side; overall at
    least one asset is held out and one is kept.

    Raises
    ------
    TrainingError
        With fewer than two assets.
    """
    if len(assets) < 2:
        raise TrainingError(f"splitting by asset needs at least two assets; the data has {len(assets)}")
    held: set[str] = set()
    for stratum in (True, False):
        group = sorted((a for a, s in assets if s is stratum), key=lambda a: _rank_key(seed, a))
        if len(group) >= 2:
            held.update(group[: min(max(round(fraction * len(group)), 1), len(group) - 1)])
    names = sorted((a for a, _ in assets), key=lambda a: _rank_key(seed, a))
    if not held:
        held.add(names[0])
    if len(held) == len(names):
        held.discard(names[-1])
    return held


def _asset_strata(rows: DataFrame) -> list[tuple[str, bool]]:
    """Each asset and its stratum: it has a positive 0/1 label, or (any other label, e.g. a
    capped remaining useful life) its label goes below the largest label seen."""
    stats = rows.groupBy(ASSET_KEY).agg(F.max(LABEL).alias("top"), F.min(LABEL).alias("low"))
    collected = stats.collect()
    lows = [r["low"] for r in collected if r["low"] is not None]
    tops = [r["top"] for r in collected if r["top"] is not None]
    if not tops:
        return [(r[ASSET_KEY], False) for r in collected]
    binary = {*lows, *tops} <= {0.0, 1.0}
    ceiling = max(tops)
    return [
        (r[ASSET_KEY], bool(r["top"] is not None and (r["top"] > 0.5 if binary else r["low"] < ceiling)))
        for r in collected
    ]


def split_by_asset(
    rows: DataFrame, fraction: float, seed: int
) -> tuple[DataFrame, DataFrame, list[str], list[str]]:
    """Split into (train, held out, train assets, held-out assets); no asset is on both sides."""
    strata = _asset_strata(rows)
    held = assign_held_out(strata, fraction, seed)
    spark = rows.sparkSession
    marks = spark.createDataFrame([(a, a in held) for a, _ in strata], f"{ASSET_KEY} string, _held boolean")
    marked = rows.join(F.broadcast(marks), on=ASSET_KEY, how="inner")
    train = marked.filter(~F.col("_held")).drop("_held")
    held_out = marked.filter(F.col("_held")).drop("_held")
    kept = sorted(a for a, _ in strata if a not in held)
    return train, held_out, kept, sorted(held)


def _asset_folds(rows: DataFrame, folds: int, seed: int) -> DataFrame:
    """Add ``_fold`` in ``[0, folds)``: assets dealt round-robin by hash rank, per stratum."""
    strata = _asset_strata(rows)
    fold_of: dict[str, int] = {}
    for stratum in (True, False):
        group = sorted((a for a, s in strata if s is stratum), key=lambda a: _rank_key(seed, a))
        for i, a in enumerate(group):
            fold_of[a] = i % folds
    if len(set(fold_of.values())) < folds:
        raise TrainingError(f"cross_validation with {folds} folds needs at least {folds} training assets")
    marks = rows.sparkSession.createDataFrame(list(fold_of.items()), f"{ASSET_KEY} string, {FOLD} int")
    return rows.join(F.broadcast(marks), on=ASSET_KEY, how="inner")


# ----------------------------------------------------------------------------- metrics (numpy)


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    y = np.asarray(labels, dtype=np.float64) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    for begin, stop in zip(starts, ends, strict=True):
        ranks[order[begin:stop]] = (begin + stop + 1) / 2.0
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def _binary_report(labels: FloatArray, flagged: npt.NDArray[np.bool_]) -> dict[str, float | int]:
    y = labels > 0.5
    tp = int((flagged & y).sum())
    fp = int((flagged & ~y).sum())
    fn = int((~flagged & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def threshold_for_precision(
    labels: npt.ArrayLike, scores: npt.ArrayLike, target: float
) -> tuple[float, float] | None:
    """The lowest threshold ``t`` (alerting on ``score >= t``) whose precision reaches ``target``.

    Returns ``(t, precision at t)``, or None when no threshold reaches it.
    """
    y = np.asarray(labels, dtype=np.float64) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    flagged = np.arange(1, len(s) + 1)
    group_end = np.flatnonzero(np.append(np.diff(s_sorted) != 0, True))  # last index of each tie group
    precision = tp[group_end] / flagged[group_end]
    reaching = np.flatnonzero(precision >= target)
    if len(reaching) == 0:
        return None
    best = group_end[reaching[-1]]
    return float(s_sorted[best]), float(precision[reaching[-1]])


def _best_f1_threshold(labels: FloatArray, scores: FloatArray) -> float:
    y = labels > 0.5
    order = np.argsort(-scores, kind="mergesort")
    s_sorted, y_sorted = scores[order], y[order]
    tp = np.cumsum(y_sorted)
    group_end = np.flatnonzero(np.append(np.diff(s_sorted) != 0, True))
    flagged = group_end + 1
    precision = tp[group_end] / flagged
    recall = tp[group_end] / max(int(y.sum()), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return float(s_sorted[group_end[int(np.argmax(f1))]])


def _quantiles(values: FloatArray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {str(q): float(np.quantile(values, q)) for q in (0.5, 0.9, 0.99, 0.995, 0.999, 0.9995)}


# ----------------------------------------------------------------------------- fit


@dataclass
class FittedModel:
    """What one task's fit produces before it becomes a bundle."""

    onnx: bytes
    signature: Signature
    thresholds: LearnedThresholds
    metrics: dict[str, Any]
    parameters: dict[str, Any]
    search: list[dict[str, Any]]
    scored_validation: DataFrame  # _asset_key, _time_value, features, _label, _score (Spark's)
    validation: dict[str, FloatArray] = field(default_factory=dict)  # collected: label, score


def _collect(df: DataFrame, columns: Sequence[str]) -> dict[str, FloatArray]:
    """Numeric columns to the driver (toPandas: DataFrame.toArrow is Spark 4 only, Glue 5 runs 3.5)."""
    frame: Any = df.select(*columns).toPandas()
    return {c: np.asarray(frame[c].to_numpy(dtype=np.float64, na_value=np.nan)) for c in columns}


def _score_columns(rows: DataFrame, mean: FloatArray, std: FloatArray) -> DataFrame:
    """Add ``_z`` (vector): standardised features with the same clamped std as the ONNX graph."""
    from pyspark.ml.functions import array_to_vector, vector_to_array

    x = vector_to_array(F.col(FEATURES))
    safe = np.maximum(std, MIN_STD)
    z = [(x[i] - float(mean[i])) / float(safe[i]) for i in range(len(mean))]
    return rows.withColumn("_z", array_to_vector(F.array(*z)))


def _pca_scores(rows: DataFrame, pca_model: Any, ks: Sequence[int]) -> DataFrame:
    """Reconstruction error for each k: ``|z|^2 - sum_{j<k} p_j^2`` (the components are orthonormal)."""
    from pyspark.ml.functions import vector_to_array

    projected = pca_model.transform(rows)
    z = vector_to_array(F.col("_z"))
    p = vector_to_array(F.col(pca_model.getOutputCol()))
    n = len(pca_model.pc.toArray())
    total = sum((z[i] * z[i] for i in range(n)), F.lit(0.0))
    out: DataFrame = projected
    for k in ks:
        captured = sum((p[j] * p[j] for j in range(k)), F.lit(0.0))
        out = out.withColumn(f"_score_k{k}", F.greatest(total - captured, F.lit(0.0)))
    return out


def _fit_pca(rows: DataFrame, k: int) -> tuple[FloatArray, FloatArray, Any, FloatArray]:
    from pyspark.ml.feature import PCA, StandardScaler

    scaler = StandardScaler(withMean=True, withStd=True, inputCol=FEATURES, outputCol="_scaled").fit(rows)
    mean = np.asarray(scaler.mean.toArray(), dtype=np.float64)
    std = np.asarray(scaler.std.toArray(), dtype=np.float64)
    standardised = _score_columns(rows, mean, std)
    pca = PCA(k=k, inputCol="_z", outputCol="_projection").fit(standardised)
    return mean, std, pca, np.asarray(pca.explainedVariance.toArray(), dtype=np.float64)


def _fit_anomaly(
    spec: ModelSpec, settings: TrainingSettings, train: DataFrame, held_out: DataFrame, log: Log
) -> FittedModel:
    n = len(spec.model_features)
    if n < 2:
        raise TrainingError("the PCA anomaly model needs at least two model features")
    ks = sorted({min(k, n - 1) for k in settings.components})
    labelled = spec.label is not None
    fit_rows = train.filter(F.col(LABEL) <= 0.5) if labelled and settings.fit_on == "healthy" else train
    search: list[dict[str, Any]] = []
    if labelled and len(ks) > 1:
        fit_assets, tune = _inner_split(fit_rows, train, settings)
        mean, std, pca, variance = _fit_pca(fit_assets, max(ks))
        tuned = _collect(
            _pca_scores(_score_columns(tune, mean, std), pca, ks), [LABEL, *(f"_score_k{k}" for k in ks)]
        )
        for k in ks:
            auc = roc_auc(tuned[LABEL], tuned[f"_score_k{k}"])
            search.append({"model": "pca", "params": {"k": k}, "metric": "areaUnderROC", "value": auc})
        scored = [s for s in search if s["value"] is not None]
    else:
        scored = []
    if scored:
        best_k = int(max(scored, key=lambda s: (s["value"], -s["params"]["k"]))["params"]["k"])
        rule = "best ROC AUC of the label on the search's held-out assets"
    else:
        mean, std, pca, variance = _fit_pca(fit_rows, max(ks))
        cumulative = np.cumsum(variance)
        for k in ks:
            search.append(
                {
                    "model": "pca",
                    "params": {"k": k},
                    "metric": "explained_variance",
                    "value": float(cumulative[k - 1]),
                }
            )
        reaching = [k for k in ks if cumulative[k - 1] >= settings.explained_variance]
        best_k = reaching[0] if reaching else ks[-1]
        rule = (
            f"smallest k explaining >= {settings.explained_variance} of the variance"
            if len(ks) > 1
            else "the only k in the grid"
        )
    log(f"anomaly: k={best_k} ({rule})")
    if scored:  # the search fitted on part of the training assets: refit on all of them
        mean, std, pca, variance = _fit_pca(fit_rows, max(ks))
    # Spark's PCA takes the top-k eigenvectors of one covariance decomposition, so the k-component
    # model is the first k columns of the largest one fitted.
    components = np.asarray(pca.pc.toArray(), dtype=np.float64)[:, :best_k]
    variance = variance[:best_k]
    weights = PcaWeights(mean, std, components)
    scored_validation = (
        _pca_scores(_score_columns(held_out, mean, std), pca, [best_k])
        .withColumnRenamed(f"_score_k{best_k}", SCORE)
        .select(ASSET_KEY, TIME_VALUE, FEATURES, LABEL, SCORE)
    )
    collected = _collect(scored_validation, [LABEL, SCORE])
    scores, labels = collected[SCORE], collected[LABEL]
    healthy = scores[labels <= 0.5] if labelled else scores
    if len(healthy) == 0:
        raise TrainingError("the held-out assets have no healthy row to learn thresholds from")
    levels = {level: float(np.quantile(healthy, q)) for level, q in settings.quantiles.items()}
    thresholds = LearnedThresholds.model_validate(
        {
            "levels": levels,
            "direction": "above",
            "method": f"quantiles of the held-out {'healthy ' if labelled else ''}score: "
            + ", ".join(f"{k}={v}" for k, v in settings.quantiles.items()),
        }
    )
    metrics: dict[str, Any] = {
        "task": "anomaly",
        "n_components": best_k,
        "explained_variance": float(np.sum(variance)),
        "score_quantiles": _quantiles(scores),
    }
    if labelled:
        abnormal = labels > 0.5
        metrics["healthy_score_quantiles"] = _quantiles(scores[~abnormal])
        metrics["abnormal_score_quantiles"] = _quantiles(scores[abnormal])
        metrics["auc"] = roc_auc(labels, scores)
        by_level = {}
        for level, value in levels.items():
            flagged = scores >= value
            by_level[level] = {
                "threshold": value,
                "detection_rate": float(flagged[abnormal].mean()) if abnormal.any() else None,
                "false_alarm_rate": float(flagged[~abnormal].mean()) if (~abnormal).any() else None,
            }
        metrics["at_thresholds"] = by_level
        metrics["baseline"] = {
            "auc": 0.5,
            "detection_rate": "a random score with the same false-alarm rate detects that share of abnormal rows",
        }
    return FittedModel(
        onnx=pca_anomaly_onnx(weights, compute_dtype="float64"),
        signature=pca_signature(spec, weights, output_dtype="float64"),
        thresholds=thresholds,
        metrics=metrics,
        parameters={
            "model": "pca",
            "k": best_k,
            "selection": rule,
            "fit_on": "healthy" if labelled else "all",
        },
        search=search,
        scored_validation=scored_validation,
        validation=collected,
    )


def _inner_split(
    rows: DataFrame, strata_rows: DataFrame, settings: TrainingSettings
) -> tuple[DataFrame, DataFrame]:
    """The search's own split of the training assets: (fit rows, tune rows)."""
    strata = _asset_strata(strata_rows)
    tune = assign_held_out(strata, settings.search.tune_fraction, settings.seed + 1)
    spark = rows.sparkSession
    marks = spark.createDataFrame([(a, a in tune) for a, _ in strata], f"{ASSET_KEY} string, _tune boolean")
    marked = rows.join(F.broadcast(marks), on=ASSET_KEY, how="inner")
    tune_rows = (
        strata_rows.join(F.broadcast(marks), on=ASSET_KEY, how="inner").filter(F.col("_tune")).drop("_tune")
    )
    return marked.filter(~F.col("_tune")).drop("_tune"), tune_rows


_ESTIMATORS = {
    ("classification", "gbt"): ("pyspark.ml.classification", "GBTClassifier"),
    ("classification", "random_forest"): ("pyspark.ml.classification", "RandomForestClassifier"),
    ("classification", "logistic_regression"): ("pyspark.ml.classification", "LogisticRegression"),
    ("regression", "gbt"): ("pyspark.ml.regression", "GBTRegressor"),
    ("regression", "random_forest"): ("pyspark.ml.regression", "RandomForestRegressor"),
    ("regression", "linear_regression"): ("pyspark.ml.regression", "LinearRegression"),
}


def _estimator(task: str, name: str, seed: int) -> Any:
    import importlib

    module, cls = _ESTIMATORS[(task, name)]
    estimator = getattr(importlib.import_module(module), cls)(featuresCol=FEATURES, labelCol=LABEL)
    if estimator.hasParam("seed"):
        estimator.setSeed(seed)
    return estimator


def _param_maps(estimator: Any, name: str, grid: dict[str, list[Any]]) -> list[dict[Any, Any]]:
    from pyspark.ml.tuning import ParamGridBuilder

    builder = ParamGridBuilder()
    for param, values in grid.items():
        if not estimator.hasParam(param):
            known = sorted(p.name for p in estimator.params)
            raise SpecError(
                f"training.models.{name}: {param!r} is not a parameter of {type(estimator).__name__}; known: {known}"
            )
        builder.addGrid(estimator.getParam(param), values)
    maps: list[dict[Any, Any]] = builder.build()
    return maps


def _readable(param_map: dict[Any, Any]) -> dict[str, Any]:
    return {p.name: v for p, v in param_map.items()}


def _evaluator(task: str, settings: TrainingSettings) -> tuple[Any, bool]:
    from pyspark.ml.evaluation import BinaryClassificationEvaluator, RegressionEvaluator

    if task == "classification":
        metric = settings.search.metric or "areaUnderROC"
        if metric not in ("areaUnderROC", "areaUnderPR"):
            raise SpecError(f"training.search.metric {metric!r} does not fit classification")
        return BinaryClassificationEvaluator(
            rawPredictionCol="probability", labelCol=LABEL, metricName=metric
        ), True
    metric = settings.search.metric or "rmse"
    if metric not in ("rmse", "mae"):
        raise SpecError(f"training.search.metric {metric!r} does not fit regression")
    return RegressionEvaluator(predictionCol="prediction", labelCol=LABEL, metricName=metric), False


def _search(
    spec: ModelSpec, settings: TrainingSettings, train: DataFrame, log: Log
) -> tuple[Any, str, dict[str, Any], list[dict[str, Any]]]:
    """Fit every (model type, grid point) on part of the training assets, score on the rest,
    and refit the best on all training assets. Returns (model, type, params, search log)."""
    task = spec.task
    evaluator, larger_better = _evaluator(task, settings)
    candidates = settings.candidate_models(task)
    search: list[dict[str, Any]] = []
    best: tuple[float, str, dict[Any, Any], Any] | None = None
    if settings.search.method == "cross_validation":
        from pyspark.ml.tuning import CrossValidator

        folded = _asset_folds(train, settings.search.folds, settings.seed + 1).persist()
        for name, grid in candidates.items():
            estimator = _estimator(task, name, settings.seed)
            maps = _param_maps(estimator, name, grid)
            cv = CrossValidator(
                estimator=estimator,
                estimatorParamMaps=maps,
                evaluator=evaluator,
                numFolds=settings.search.folds,
                foldCol=FOLD,
                seed=settings.seed,
                parallelism=settings.search.parallelism,
            ).fit(folded)
            for param_map, value in zip(maps, cv.avgMetrics, strict=True):
                search.append(
                    {
                        "model": name,
                        "params": _readable(param_map),
                        "metric": evaluator.getMetricName(),
                        "value": float(value),
                    }
                )
                key = value if larger_better else -value
                if best is None or key > best[0]:
                    best = (key, name, param_map, cv.bestModel)
        folded.unpersist()
        assert best is not None
        _, name, param_map, model = best
    elif sum(len(_param_maps(_estimator(task, n, settings.seed), n, g)) for n, g in candidates.items()) == 1:
        ((name, grid),) = (
            candidates.items()
        )  # one grid point: nothing to choose, fit it on every training asset
        param_map = _param_maps(_estimator(task, name, settings.seed), name, grid)[0]
        model = _estimator(task, name, settings.seed).fit(train, params=param_map)
        search.append({"model": name, "params": _readable(param_map), "metric": None, "value": None})
    else:
        fit_rows, tune_rows = _inner_split(train, train, settings)
        fit_rows = fit_rows.persist()
        tune_rows = tune_rows.persist()
        for name, grid in candidates.items():
            estimator = _estimator(task, name, settings.seed)
            maps = _param_maps(estimator, name, grid)
            for index, fitted in estimator.fitMultiple(fit_rows, maps):
                value = float(evaluator.evaluate(fitted.transform(tune_rows)))
                search.append(
                    {
                        "model": name,
                        "params": _readable(maps[index]),
                        "metric": evaluator.getMetricName(),
                        "value": value,
                    }
                )
                log(f"search: {name} {_readable(maps[index])} {evaluator.getMetricName()}={value:.4f}")
                key = value if larger_better else -value
                if best is None or key > best[0]:
                    best = (key, name, maps[index], None)
        fit_rows.unpersist()
        tune_rows.unpersist()
        assert best is not None
        _, name, param_map, _ = best
        model = _estimator(task, name, settings.seed).fit(train, params=param_map)
    log(f"search: best {name} {_readable(param_map)}")
    return model, name, _readable(param_map), search


def _feature_stats(train: DataFrame) -> FeatureStats:
    from pyspark.ml.stat import Summarizer

    row = train.select(Summarizer.metrics("mean", "std").summary(F.col(FEATURES)).alias("s")).first()
    assert row is not None  # an aggregate has one row
    return FeatureStats(
        mean=[float(v) for v in row["s"]["mean"].toArray()], std=[float(v) for v in row["s"]["std"].toArray()]
    )


def _supervised_signature(spec: ModelSpec, stats: FeatureStats, classifier: bool, meaning: str) -> Signature:
    n = len(spec.model_features)
    outputs = [OutputSpec(name="score", dtype="float32", shape=[None], role="score", meaning=meaning)]
    if classifier:
        outputs += [
            OutputSpec(
                name="probability",
                dtype="float32",
                shape=[None, 2],
                role="probability",
                meaning="[P(0), P(1)]",
            ),
            OutputSpec(
                name="label",
                dtype="int64",
                shape=[None],
                role="label",
                meaning="Spark's decision: 1 when P(1) > 0.5",
            ),
        ]
    return Signature(
        inputs=[TensorSpec(name="features", dtype="float32", shape=[None, n])],
        features=spec.model_features,
        outputs=outputs,
        feature_stats=stats,
    )


def _label_meaning(spec: ModelSpec) -> str:
    label = spec.label
    assert label is not None
    if label.derive == "failure_within":
        return (
            f"probability of a failure within {label.horizon:g} (hours for a time column) after the reading"
        )
    if label.derive == "remaining_useful_life":
        capped = f", capped at {label.cap:g}" if label.cap else ""
        return f"predicted remaining useful life (hours for a time column{capped}); low is alarming"
    return f"predicted {label.column}"


def _fit_supervised(
    spec: ModelSpec,
    settings: TrainingSettings,
    train: DataFrame,
    held_out: DataFrame,
    *,
    spark: SparkSession,
    scratch_dir: str,
    log: Log,
) -> FittedModel:
    from pyspark.ml.functions import vector_to_array

    from zaindari.sparkml_onnx import sparkml_to_onnx

    classifier = spec.task == "classification"
    model, name, params, search = _search(spec, settings, train, log)
    predicted = model.transform(held_out)
    score = vector_to_array(F.col("probability"))[1] if classifier else F.col("prediction")
    scored_validation = predicted.select(ASSET_KEY, TIME_VALUE, FEATURES, LABEL, score.alias(SCORE))
    collected = _collect(scored_validation, [LABEL, SCORE])
    labels, scores = collected[LABEL], collected[SCORE]
    train_labels = train.agg(F.avg(LABEL).alias("mean")).first()
    assert train_labels is not None  # an aggregate has one row
    train_mean = float(train_labels["mean"])
    metrics: dict[str, Any] = {
        "task": spec.task,
        "model": name,
        "params": params,
        "validation_rows": len(labels),
    }
    if classifier:
        positive_rate = float((labels > 0.5).mean())
        reached = threshold_for_precision(labels, scores, settings.target_precision)
        if reached is not None:
            warning, precision = reached
            method = f"lowest threshold reaching precision {settings.target_precision} on the held-out assets (got {precision:.3f})"
        else:
            warning = _best_f1_threshold(labels, scores)
            method = (
                f"target precision {settings.target_precision} is not reached on the held-out assets; "
                "FALLBACK: the threshold with the best F1"
            )
            log(f"WARNING: {method}")
        levels: dict[str, float] = {"warning": warning}
        if settings.critical_precision is not None:
            critical = threshold_for_precision(labels, scores, settings.critical_precision)
            if critical is not None and critical[0] >= warning:
                levels["critical"] = critical[0]
                method += f"; critical: precision {settings.critical_precision} (got {critical[1]:.3f})"
        thresholds = LearnedThresholds.model_validate(
            {"levels": levels, "direction": "above", "method": method}
        )
        metrics.update(
            {
                "auc": roc_auc(labels, scores),
                "positive_rate": positive_rate,
                "at_learned_threshold": {"threshold": warning, **_binary_report(labels, scores >= warning)},
                "at_0.5": _binary_report(labels, scores > 0.5),
                "target_precision_reached": reached is not None,
                "baseline": {
                    "auc": 0.5,
                    "f1_always_positive": 2 * positive_rate / (1 + positive_rate) if positive_rate else 0.0,
                    "precision_always_positive": positive_rate,
                },
            }
        )
    else:
        errors = scores - labels
        baseline_errors = train_mean - labels
        rmse = float(np.sqrt(np.mean(errors**2)))
        baseline_rmse = float(np.sqrt(np.mean(baseline_errors**2)))
        levels = {str(k): v for k, v in settings.levels.items()}
        thresholds = LearnedThresholds.model_validate(
            {
                "levels": levels,
                "direction": "below",
                "method": "configured levels on the predicted value (training.levels)",
            }
        )
        at_levels = {
            level: {
                "threshold": value,
                **_binary_report((labels <= value).astype(np.float64), scores <= value),
            }
            for level, value in levels.items()
        }
        metrics.update(
            {
                "rmse": rmse,
                "mae": float(np.mean(np.abs(errors))),
                "baseline": {
                    "predict_training_mean": train_mean,
                    "rmse": baseline_rmse,
                    "mae": float(np.mean(np.abs(baseline_errors))),
                },
                "rmse_ratio_to_baseline": rmse / baseline_rmse if baseline_rmse else None,
                "at_levels": at_levels,
            }
        )
    n = len(spec.model_features)
    onnx_bytes = sparkml_to_onnx(model, n, spark=spark, scratch_dir=scratch_dir)
    return FittedModel(
        onnx=onnx_bytes,
        signature=_supervised_signature(spec, _feature_stats(train), classifier, _label_meaning(spec)),
        thresholds=thresholds,
        metrics=metrics,
        parameters={"model": name, **params},
        search=search,
        scored_validation=scored_validation,
        validation=collected,
    )


def fit_model(
    spec: ModelSpec,
    settings: TrainingSettings,
    train: DataFrame,
    held_out: DataFrame,
    *,
    spark: SparkSession,
    scratch_dir: str,
    log: Log = _quiet,
) -> FittedModel:
    """Search, fit, export to ONNX, learn thresholds and measure, for ``spec.task``."""
    if spec.task == "anomaly":
        return _fit_anomaly(spec, settings, train, held_out, log)
    return _fit_supervised(spec, settings, train, held_out, spark=spark, scratch_dir=scratch_dir, log=log)


# ----------------------------------------------------------------------------- parity


def check_parity(fitted: FittedModel, settings: TrainingSettings, *, seed: int) -> dict[str, Any]:
    """Run the ONNX graph on held-out rows and compare its score with Spark's.

    Raises
    ------
    TrainingError
        When the largest absolute difference exceeds ``settings.parity.tolerance``.
    """
    import onnxruntime as ort
    from pyspark.ml.functions import vector_to_array

    rows = fitted.scored_validation
    total = len(fitted.validation.get(SCORE, [])) or rows.count()
    wanted = settings.parity.rows
    sample = (
        rows
        if total <= wanted
        else rows.sample(fraction=min(1.0, 1.2 * wanted / total), seed=seed).limit(wanted)
    )
    table: Any = sample.select(vector_to_array(F.col(FEATURES)).alias("x"), F.col(SCORE)).toPandas()
    if len(table) == 0:
        raise TrainingError("no held-out row to check ONNX parity on")
    matrix = np.asarray(np.stack([np.asarray(x, dtype=np.float64) for x in table["x"]]), dtype=np.float32)
    spark_scores = np.asarray(table[SCORE].to_numpy(dtype=np.float64))
    session = ort.InferenceSession(fitted.onnx, providers=["CPUExecutionProvider"])
    onnx_scores = np.asarray(session.run(["score"], {"features": matrix})[0], dtype=np.float64).reshape(-1)
    diff = np.abs(onnx_scores - spark_scores)
    worst = int(np.argmax(diff))
    record = {
        "rows_compared": len(diff),
        "max_abs_diff": float(diff[worst]),
        "mean_abs_diff": float(diff.mean()),
        "tolerance": settings.parity.tolerance,
        "worst_row": {"spark": float(spark_scores[worst]), "onnx": float(onnx_scores[worst])},
        "compared": "output 'score' of onnxruntime (float32 input) vs Spark's prediction on held-out rows",
        "passed": bool(diff[worst] <= settings.parity.tolerance),
    }
    if not record["passed"]:
        raise TrainingError(
            f"ONNX parity failed: max |onnx - spark| = {diff[worst]:.3g} > tolerance {settings.parity.tolerance:g} "
            f"over {len(diff)} held-out rows (spark {spark_scores[worst]!r}, onnx {onnx_scores[worst]!r}); no model written"
        )
    return record


# ----------------------------------------------------------------------------- the whole run


@dataclass
class TrainedModel:
    """A trained, exported and checked model, ready to publish."""

    spec: ModelSpec
    fitted: FittedModel
    parity: dict[str, Any]
    lineage: dict[str, Any]
    train_assets: list[str]
    held_out_assets: list[str]
    baseline: dict[str, Any] | None = None  # baseline.json (zaindari.drift)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.fitted.metrics


def _code_version() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("zaindari")
    except PackageNotFoundError:
        package = None
    commit = None
    try:
        here = Path(__file__).resolve().parent
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        if result.returncode == 0:
            commit = result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"package": "zaindari", "version": package, "git_commit": commit}


def _utc_now() -> str:
    return datetime.now(UTC).isoformat()


def train_model(
    spark: SparkSession,
    spec: ModelSpec,
    input_path: str,
    *,
    start: str | None = None,
    end: str | None = None,
    seed: int | None = None,
    scratch_dir: str | None = None,
    log: Log = _quiet,
) -> TrainedModel:
    """Read, prepare, split, fit, export and check: everything but publishing.

    Parameters
    ----------
    spark
        The session.
    spec
        The model spec (``spec.training`` holds the search and threshold settings).
    input_path
        Parquet file or folder (local, ``s3://`` or any Hadoop path).
    start, end
        Optional time range ``start <= time < end`` (ISO 8601, or numbers for a numeric time).
    seed
        Overrides ``spec.training.seed``.
    scratch_dir
        Where tree ensembles are saved for export: a path the driver can read back after the
        executors write it. Default: a local temporary folder with a local master, else
        ``/tmp/...`` on the cluster's default file system (HDFS on EMR); on Glue pass an
        ``s3://`` path (e.g. the job's ``TempDir``).

    Raises
    ------
    TrainingError, SpecError
        Every failure that leaves no model.
    """
    started = _utc_now()
    clock = time.perf_counter()
    settings = training_settings(spec)
    if seed is not None:
        settings = settings.model_copy(update={"seed": seed})
    data = read_input(spark, input_path, spec, start=start, end=end, log=log)
    try:
        return _train(spark, spec, settings, data, scratch_dir, started, clock, log)
    except (TrainingError, SpecError):
        raise
    except Exception as exc:
        from py4j.protocol import Py4JJavaError  # type: ignore[import-untyped]
        from pyspark.errors import PySparkException

        if isinstance(exc, Py4JJavaError | PySparkException):  # e.g. a file whose columns disagree
            raise TrainingError(
                f"Spark failed while training from {input_path!r}: {_first_line(exc)}"
            ) from exc
        raise


def _train(
    spark: SparkSession,
    spec: ModelSpec,
    settings: TrainingSettings,
    data: InputData,
    scratch_dir: str | None,
    started: str,
    clock: float,
    log: Log,
) -> TrainedModel:
    prepared = prepare_rows(data, spec, log=log)
    rows = prepared.frame.persist()
    train, held_out, train_assets, held_assets = split_by_asset(
        rows, settings.validation_fraction, settings.seed
    )
    train, held_out = train.persist(), held_out.persist()
    log(f"split by asset: {len(train_assets)} training assets, {len(held_assets)} held out")
    local = str(spark.sparkContext.master or "").startswith("local")
    own_scratch = scratch_dir is None and local
    if scratch_dir:
        scratch = scratch_dir
    elif local:
        scratch = tempfile.mkdtemp(prefix="zaindari-train-")
    else:  # resolved against the cluster's default file system (HDFS on EMR); on Glue pass one
        scratch = f"/tmp/zaindari-train-{uuid.uuid4().hex}"
        log(f"no scratch path given: tree ensembles are saved under {scratch} on the default file system")
    try:
        fitted = fit_model(spec, settings, train, held_out, spark=spark, scratch_dir=scratch, log=log)
        parity = check_parity(fitted, settings, seed=settings.seed)
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    log(f"parity: max |onnx - spark| = {parity['max_abs_diff']:.3g} over {parity['rows_compared']} rows")
    counts = {
        "train_rows": train.count(),
        "held_out_rows": len(fitted.validation[SCORE]),
    }
    baseline = _drift_baseline(spec, fitted, counts["held_out_rows"], settings.seed, data)
    for frame in (train, held_out, rows, prepared.cached):
        frame.unpersist()
    fitted.metrics["rows"] = {
        **prepared.accounts,
        **counts,
        "train_assets": len(train_assets),
        "held_out_assets": len(held_assets),
    }
    lineage = {
        "data": {
            "input": data.path,
            "files": data.files,
            "bytes": data.bytes,
            "content_hash": data.content_hash,
            "hash_method": data.hash_method,
            "range": {"start": data.start, "end": data.end},
            "rows_read": data.rows_read,
            "rows": fitted.metrics["rows"],
            "curated_training_set": prepared.curated,
            "assets": {"train": train_assets, "held_out": held_assets},
        },
        "code": _code_version(),
        "spark": {"version": spark.version, "master": spark.sparkContext.master},
        "task": spec.task,
        "parameters": fitted.parameters,
        "settings": settings.model_dump(mode="json"),
        "search": fitted.search,
        "started_at": started,
        "ended_at": _utc_now(),
        "duration_s": round(time.perf_counter() - clock, 3),
    }
    return TrainedModel(spec, fitted, parity, lineage, train_assets, held_assets, baseline)


#: At most this many held-out rows are collected to the driver for the drift baseline.
BASELINE_MAX_ROWS = 200_000


def _drift_baseline(
    spec: ModelSpec, fitted: FittedModel, held_out_rows: int, seed: int, data: InputData
) -> dict[str, Any]:
    """The drift baseline (``zaindari.drift``) from the held-out assets' features and scores.

    Held-out rows are what the model was validated on, scored like production data; above
    ``BASELINE_MAX_ROWS`` a seeded sample of them is used (histograms on deciles need far fewer).
    """
    from pyspark.ml.functions import vector_to_array

    from zaindari.drift import compute_baseline

    frame = fitted.scored_validation
    if held_out_rows > BASELINE_MAX_ROWS:
        frame = frame.sample(fraction=BASELINE_MAX_ROWS / held_out_rows, seed=seed)
    collected: Any = frame.select(vector_to_array(F.col(FEATURES)).alias("_x"), F.col(SCORE)).toPandas()
    matrix = np.asarray(collected["_x"].tolist(), dtype=np.float64).reshape(len(collected), -1)
    score = np.asarray(collected[SCORE].to_numpy(dtype=np.float64, na_value=np.nan))
    baseline = compute_baseline(
        spec,
        fitted.signature.features,
        matrix,
        score,
        fitted.thresholds,
        source=f"held-out rows of {data.path} ({data.start or '...'}..{data.end or '...'})",
    )
    return baseline.model_dump(mode="json")


def publish_bundle(
    trained: TrainedModel, output: str, *, overwrite: bool = False, version: str | None = None
) -> str:
    """Write the bundle, verify it, then move it to a local folder or upload it to ``s3://``.

    Nothing appears at ``output`` unless the bundle loads back (hashes, signature, graph).
    Returns ``output``.
    """
    scratch = Path(tempfile.mkdtemp(prefix="zaindari-bundle-"))
    try:
        folder = write_bundle(
            scratch / "bundle",
            model=trained.fitted.onnx,
            signature=trained.fitted.signature,
            spec=trained.spec,
            thresholds=trained.fitted.thresholds,
            extras={
                "metrics.json": trained.metrics,
                "lineage.json": trained.lineage,
                "parity.json": trained.parity,
                **({"baseline.json": trained.baseline} if trained.baseline else {}),
            },
            version=version,
        )
        load_bundle(folder)
        if output.startswith("s3://"):
            _upload(folder, output, overwrite=overwrite)
        else:
            target = Path(output)
            check_output(output, overwrite=overwrite)
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(target))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return output


def check_output(output: str, *, overwrite: bool = False) -> None:
    """Fail early when ``output`` already holds a bundle and ``overwrite`` is off.

    Raises
    ------
    TrainingError
        Naming the output.
    """
    if overwrite:
        return
    if output.startswith("s3://"):
        bucket, prefix = _split_s3(output.rstrip("/") + "/")
        found = _s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix + MANIFEST_FILE)
        taken = bool(found.get("KeyCount", 0))
    else:
        taken = (Path(output) / MANIFEST_FILE).exists()
    if taken:
        raise TrainingError(f"output {output!r} already holds a bundle (pass overwrite to replace it)")


def _upload(folder: Path, output: str, *, overwrite: bool) -> None:
    bucket, prefix = _split_s3(output.rstrip("/") + "/")
    client = _s3_client()
    check_output(output, overwrite=overwrite)
    files = [*sorted(p for p in folder.iterdir() if p.name != MANIFEST_FILE), folder / MANIFEST_FILE]
    for file in files:  # the manifest last: a reader that sees it sees a complete bundle
        client.upload_file(str(file), bucket, prefix + file.name)
