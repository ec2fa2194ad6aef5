"""Feature computation in Spark, for training and batch scoring: the same columns as ``features``.

The definitions are those of :mod:`zaindari.features` (see its module docstring); the unit tests
prove both implementations equal. Where numpy has ``nan`` (division by zero, square root of a
negative number) Spark has ``null``.

Rows are checked first (:func:`reject_reasons`): a row missing a sensor, holding a value outside the
sensor's valid range, or with a non-finite derived feature gets a reason in ``_reject_reason``.
Window features and ``readings_since_start`` are computed over each device's *valid* rows only (the
window is partitioned by device and validity) and are ``null`` on rejected rows, so a training job
can keep every row and split on ``_reject_reason``.

Window rows are ordered by time, then by an optional ``tiebreak_col``. ``slope`` and ``ewm`` gather
each window with ``collect_list`` over the same frame: Spark feeds a frame's rows to the aggregate
in the window's sort order, so the list is oldest first whenever that order is total.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from zaindari.expressions import Expr
from zaindari.spec import ModelSpec

__all__ = ["REJECT_REASON", "add_features", "derived_column", "reject_reasons"]

REJECT_REASON = "_reject_reason"


class _SparkAlgebra:
    """Expression nodes as Spark columns; ``nan`` results become ``null`` like numpy's ``nan``."""

    def const(self, value: float) -> Column:
        return F.lit(float(value))

    def name(self, name: str) -> Column:
        return F.col(name)

    def binary(self, op: str, left: Column, right: Column) -> Column:
        if op == "+":
            out = left + right
        elif op == "-":
            out = left - right
        elif op == "*":
            out = left * right
        else:  # guarded so ANSI mode never sees a division by zero
            out = F.when(right != 0, left / right)
        return _nan_to_null(out)

    def negate(self, operand: Column) -> Column:
        return -operand

    def call(self, fn: str, args: list[Column]) -> Column:
        if fn == "abs":
            return F.abs(args[0])
        if fn == "sqrt":
            return F.when(args[0] >= 0, F.sqrt(args[0]))
        # least/greatest skip nulls; numpy's minimum/maximum propagate nan
        pick = F.least if fn == "min" else F.greatest
        return F.when(args[0].isNotNull() & args[1].isNotNull(), pick(args[0], args[1]))


def _nan_to_null(column: Column) -> Column:
    return F.nanvl(column, F.lit(None).cast("double"))


def derived_column(tree: Expr) -> Column:
    """The Spark column of a derived-feature expression.

    Parameters
    ----------
    tree
        A parsed expression (``DerivedFeature.tree``); its names must be columns of the frame.

    Returns
    -------
    Column
        A double column, ``null`` where numpy gives ``nan`` (division by zero, ``sqrt`` of a
        negative number, any ``null`` operand).
    """
    return tree.fold(_SparkAlgebra())


def _is_missing(column: Column) -> Column:
    return column.isNull() | F.isnan(column)


def _with_sensors_and_derived(df: DataFrame, spec: ModelSpec) -> DataFrame:
    """Add absent sensors as ``null`` columns, cast sensors to double, add the derived columns."""
    columns = {
        s: F.col(s).cast("double") if s in df.columns else F.lit(None).cast("double")
        for s in spec.sensor_names
    }
    df = df.withColumns(columns)
    for d in spec.derived:
        df = df.withColumn(d.name, derived_column(d.tree))
    return df


def _reason_column(spec: ModelSpec) -> Column:
    """Sensor problems (all of them, in spec order), else the first non-finite derived feature."""
    sensor_problems = []
    for s in spec.sensors:
        value = F.col(s.name)
        out_of_range = F.lit(False)
        if s.min is not None:
            out_of_range = out_of_range | (value < s.min)
        if s.max is not None:
            out_of_range = out_of_range | (value > s.max)
        field = f"sensors.{s.name}: "
        low = "-inf" if s.min is None else f"{s.min:g}"
        high = "inf" if s.max is None else f"{s.max:g}"
        sensor_problems.append(
            F.when(_is_missing(value), F.lit(f"{field}missing, required by model spec {spec.name!r}"))
            .when(
                F.abs(value) == float("inf"),
                F.concat(F.lit(f"{field}value "), value.cast("string"), F.lit(" is not finite")),
            )
            .when(
                out_of_range,  # only reached when not missing: Spark orders nan above every number
                F.concat(
                    F.lit(f"{field}value "),
                    value.cast("string"),
                    F.lit(f" outside valid range [{low}, {high}]"),
                ),
            )
        )
    sensor_reason = F.concat_ws("; ", *sensor_problems)  # skips nulls; a spec has a sensor
    derived_reasons = [
        F.when(
            _is_missing(F.col(d.name)) | (F.abs(F.col(d.name)) == float("inf")),
            F.lit(f"derived.{d.name}: {d.expr} is not finite (division by zero?)"),
        )
        for d in spec.derived
    ]
    return F.coalesce(F.when(sensor_reason != "", sensor_reason), *derived_reasons)


def reject_reasons(df: DataFrame, spec: ModelSpec) -> DataFrame:
    """Add the sensor and derived columns, and ``_reject_reason`` (``null`` for a valid row).

    The reasons read like :func:`zaindari.features.compute_features`' rejections:
    ``"sensors.X: missing, required by model spec 'NAME'"``, ``"sensors.X: value V outside valid
    range [MIN, MAX]"`` (``V`` in Spark's number format), joined with ``"; "``; a row whose sensors
    are all fine but whose derived feature is ``null``, ``nan`` or infinite gets
    ``"derived.NAME: EXPR is not finite (division by zero?)"`` for the first such feature.

    Parameters
    ----------
    df
        One row per reading, one numeric column per sensor (an absent sensor column counts as
        missing on every row).
    spec
        The model spec.

    Returns
    -------
    DataFrame
        ``df`` with every sensor column as double, the derived columns, and ``_reject_reason``.
    """
    return _with_sensors_and_derived(df, spec).withColumn(REJECT_REASON, _reason_column(spec))


def _slope(values: Column) -> Column:
    """Least-squares slope of ``values`` against local positions ``0 .. k-1``."""
    k = F.size(values).cast("double")
    mean = F.aggregate(values, F.lit(0.0), lambda acc, x: acc + x) / k
    centre = (k - 1.0) / 2.0
    sxy = F.aggregate(
        F.transform(values, lambda x, i: (i - centre) * (x - mean)), F.lit(0.0), lambda acc, x: acc + x
    )
    sxx = k * (k * k - 1.0) / 12.0  # sum of (i - centre)^2 over i = 0 .. k-1
    return F.when(k > 1, sxy / sxx).otherwise(F.lit(0.0))


def _ewm(values: Column, alpha: float) -> Column:
    """``sum(w * x) / sum(w)`` with ``w = (1 - alpha) ** age``, age 0 for the last element."""
    last = F.size(values) - 1
    weights = F.transform(values, lambda _, i: F.pow(F.lit(1.0 - alpha), last - i))
    total = F.aggregate(weights, F.lit(0.0), lambda acc, w: acc + w)
    weighted = F.aggregate(
        F.zip_with(values, weights, lambda x, w: x * w), F.lit(0.0), lambda acc, v: acc + v
    )
    return weighted / total


def add_features(
    df: DataFrame,
    spec: ModelSpec,
    *,
    device_col: str | None = None,
    time_col: str | None = None,
    tiebreak_col: str | None = None,
) -> DataFrame:
    """Add every column the spec names, plus ``_reject_reason``, to a frame of readings.

    Parameters
    ----------
    df
        One row per reading: a device column, a time column (timestamp or epoch seconds; only its
        order matters) and one numeric column per sensor.
    spec
        The model spec.
    device_col, time_col
        Column names; default to ``spec.identifiers.asset`` and ``spec.identifiers.time``.
    tiebreak_col
        A column that orders a device's readings with equal times (e.g. a file row number).
        Without it, the order of such readings, and so their window features, is arbitrary.

    Returns
    -------
    DataFrame
        ``df`` with the sensor columns as double, the derived columns, each window feature named
        ``WindowFeature.feature_name(stat)``, ``readings_since_start`` (double) when the spec
        enables it, and ``_reject_reason`` (see :func:`reject_reasons`). Window features and the
        counter are computed over the device's valid rows only and are ``null`` on rejected rows.
    """
    device = device_col or spec.identifiers.asset
    time = time_col or spec.identifiers.time
    df = reject_reasons(df, spec)
    if not spec.windows and not spec.readings_since_start:
        return df

    valid = F.col(REJECT_REASON).isNull()
    order = [F.col(time)] + ([F.col(tiebreak_col)] if tiebreak_col else [])
    by_device = Window.partitionBy(F.col(device), valid).orderBy(*order)

    def only_valid(column: Column) -> Column:
        return F.when(valid, column)

    features: dict[str, Column] = {}
    lists: dict[str, Column] = {}
    for w in spec.windows:
        frame = by_device.rowsBetween(-(w.size - 1), Window.currentRow)
        value = F.col(w.source)
        simple: dict[str, Column] = {
            "mean": F.avg(value).over(frame),
            "std": F.coalesce(F.stddev_pop(value).over(frame), F.lit(0.0)),  # a lone row: 0, never null
            "min": F.min(value).over(frame),
            "max": F.max(value).over(frame),
        }
        for stat in w.stats:
            if stat in simple:
                features[w.feature_name(stat)] = only_valid(simple[stat])
        if {"slope", "ewm"} & set(w.stats):
            lists[f"_window_{w.source}_{w.size}"] = F.collect_list(value).over(frame)
    if spec.readings_since_start:
        features["readings_since_start"] = only_valid(F.row_number().over(by_device).cast("double"))

    df = df.withColumns({**features, **lists})  # one pass: all frames share partitioning and order
    list_features: dict[str, Column] = {}
    for w in spec.windows:
        values = F.col(f"_window_{w.source}_{w.size}")
        if "slope" in w.stats:
            list_features[w.feature_name("slope")] = only_valid(_slope(values))
        if "ewm" in w.stats:
            assert w.alpha is not None  # the spec enforces it
            list_features[w.feature_name("ewm")] = only_valid(_ewm(values, w.alpha))
    df = df.withColumns(list_features).drop(*lists)
    produced = spec.column_names
    return df.select(
        *[c for c in df.columns if c not in produced and c != REJECT_REASON], *produced, REJECT_REASON
    )
