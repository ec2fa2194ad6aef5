"""The Spark features equal the numpy ones (``zaindari.features``) row for row."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest

from zaindari.features import SensorTable, compute_features
from zaindari.spec import ModelSpec

pytestmark = pytest.mark.spark

from pyspark.sql import functions as F  # noqa: E402

from zaindari.features_spark import REJECT_REASON, add_features, derived_column, reject_reasons  # noqa: E402

SENSORS = ["temperature", "pressure", "speed", "torque"]

SPEC = ModelSpec.model_validate(
    {
        "name": "pump-spark",
        "sensors": [
            {"name": "temperature", "min": -50, "max": 150},
            {"name": "pressure", "min": 0, "max": 20},
            {"name": "speed"},
            {"name": "torque", "min": 0},
        ],
        "derived": [
            {"name": "power", "expr": "torque * speed / 9549"},
            {"name": "ratio", "expr": "temperature / pressure"},
            {"name": "shape", "expr": "sqrt(abs(speed)) - max(temperature, 2 * pressure) + min(-torque, 1)"},
        ],
        "windows": [
            {
                "source": "temperature",
                "size": 3,
                "stats": ["mean", "std", "min", "max", "slope", "ewm"],
                "alpha": 0.3,
            },
            {
                "source": "ratio",
                "size": 5,
                "stats": ["mean", "std", "min", "max", "slope", "ewm"],
                "alpha": 0.5,
            },
            {
                "source": "power",
                "size": 12,
                "stats": ["ewm", "slope", "std", "mean", "max", "min"],
                "alpha": 1.0,
            },
            {"source": "pressure", "size": 2, "stats": ["std", "slope"]},
        ],
        "readings_since_start": True,
    }
)


def _readings(seed: int = 7) -> dict[str, Any]:
    """~320 shuffled readings of 4 devices: regular, jittered and tied times, a few bad rows."""
    rng = np.random.default_rng(seed)
    devices, stamps = [], []
    for d, n in zip(["pump-a", "pump-b", "pump-c", "pump-d"], [110, 90, 70, 50], strict=True):
        if d == "pump-a":
            t = 1_700_000_000 + 60.0 * np.arange(n)  # equally spaced
        elif d == "pump-c":
            t = 1_700_000_000 + 30.0 * np.repeat(np.arange((n + 1) // 2), 2)[:n]  # pairs share a time
        else:
            t = 1_700_000_000 + np.cumsum(rng.uniform(1, 120, n))  # jittered
        devices += [d] * n
        stamps.append(t)
    n = len(devices)
    columns = {
        "temperature": rng.normal(60, 15, n),
        "pressure": rng.uniform(0.5, 12, n),
        "speed": rng.normal(1500, 300, n),
        "torque": rng.uniform(5, 80, n),
    }
    columns["temperature"][[5, 77]] = np.nan  # missing
    columns["pressure"][[12, 150]] = [25.0, -1.0]  # out of range
    columns["pressure"][[40, 200]] = 0.0  # ratio divides by zero
    order = rng.permutation(n)
    return {
        "device_id": np.array(devices, dtype=object)[order],
        "timestamp": np.concatenate(stamps)[order],
        "sensors": {k: v[order] for k, v in columns.items()},
    }


def _spark_frame(spark: Any, data: dict[str, Any], *, as_timestamp: bool = True) -> Any:
    rows = [
        (
            i,
            str(data["device_id"][i]),
            float(data["timestamp"][i]),
            *(_nullable(data["sensors"][s][i]) for s in SENSORS),
        )
        for i in reversed(range(len(data["timestamp"])))  # against numpy's order: ties need tiebreak_col
    ]
    schema = "row long, device_id string, ts double, " + ", ".join(f"{s} double" for s in SENSORS)
    df = spark.createDataFrame(rows, schema)
    return df.withColumn("timestamp", F.timestamp_seconds("ts") if as_timestamp else F.col("ts")).drop("ts")


def _nullable(value: float) -> float | None:
    # missing readings arrive as null (a NaN double must be rejected the same way; see below)
    return None if np.isnan(value) else float(value)


def _fields(reason: str) -> list[str]:
    return [re.match(r"^(\w+\.\w+): ", part).group(1) for part in reason.split("; ")]  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def both(spark: Any) -> tuple[Any, dict[int, Any]]:
    data = _readings()
    batch = compute_features(SPEC, SensorTable(data["device_id"], data["timestamp"], data["sensors"]))
    out = add_features(_spark_frame(spark, data), SPEC, tiebreak_col="row").collect()
    return batch, {r["row"]: r for r in out}


def test_every_feature_column_equals_numpy(both: tuple[Any, dict[int, Any]]) -> None:
    batch, spark_rows = both
    valid = sorted(i for i, r in spark_rows.items() if r[REJECT_REASON] is None)
    assert valid == batch.rows.tolist()
    for name in SPEC.column_names:
        got = np.array([spark_rows[i][name] for i in valid], dtype=np.float64)
        np.testing.assert_allclose(got, batch.columns[name], rtol=1e-9, atol=1e-9, err_msg=name)


def test_rejected_rows_have_no_window_features(both: tuple[Any, dict[int, Any]]) -> None:
    _, spark_rows = both
    rejected = [r for r in spark_rows.values() if r[REJECT_REASON] is not None]
    assert len(rejected) == 6
    for r in rejected:
        assert r["temperature__mean_3"] is None
        assert r["readings_since_start"] is None


def test_rejections_name_the_same_rows_and_fields_as_numpy(both: tuple[Any, dict[int, Any]]) -> None:
    batch, spark_rows = both
    numpy_side = {r.index: [e["field"] for e in r.errors] for r in batch.rejections}
    spark_side = {i: _fields(r[REJECT_REASON]) for i, r in spark_rows.items() if r[REJECT_REASON] is not None}
    assert spark_side == numpy_side
    assert sorted({f for fields in numpy_side.values() for f in fields}) == [
        "derived.ratio",
        "sensors.pressure",
        "sensors.temperature",
    ]


def test_non_finite_derived_values_reject_the_same_rows(spark: Any) -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "derived-checks",
            "sensors": [{"name": "a"}, {"name": "b"}],
            "derived": [
                {"name": "q", "expr": "a / b"},
                {"name": "r", "expr": "sqrt(a - 1)"},
                {"name": "m", "expr": "min(a / (b - 2), 5)"},
            ],
        }
    )
    a = np.array([4.0, 4.0, 0.5, 3.0, 9.0, 0.0])
    b = np.array([2.0, 0.0, 1.0, 2.0, 3.0, 0.0])
    table = SensorTable(np.array(["d"] * 6, dtype=object), np.arange(6.0), {"a": a, "b": b})
    batch = compute_features(spec, table)
    df = spark.createDataFrame(
        [(i, float(x), float(y)) for i, (x, y) in enumerate(zip(a, b, strict=True))],
        "row long, a double, b double",
    )
    got = {r["row"]: r[REJECT_REASON] for r in reject_reasons(df, spec).collect()}
    expected = {r.index: r.reason for r in batch.rejections}
    assert {i: reason for i, reason in got.items() if reason is not None} == expected
    assert expected == {
        0: "derived.m: min(a / (b - 2), 5) is not finite (division by zero?)",
        1: "derived.q: a / b is not finite (division by zero?)",
        2: "derived.r: sqrt(a - 1) is not finite (division by zero?)",
        3: "derived.m: min(a / (b - 2), 5) is not finite (division by zero?)",
        5: "derived.q: a / b is not finite (division by zero?)",
    }


def test_missing_and_out_of_range_sensors_are_rejected_with_their_fields(spark: Any) -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "ranges",
            "sensors": [{"name": "t", "min": 0, "max": 100}, {"name": "p", "max": 10}, {"name": "s"}],
        }
    )
    rows = [
        (0, 50.0, 5.0, 1.0),
        (1, None, 5.0, 1.0),
        (2, 150.0, 11.0, 1.0),
        (3, float("nan"), 5.0, None),
        (4, -1.0, 10.0, 1.0),
    ]
    df = spark.createDataFrame(rows, "row long, t double, p double, s double")
    got = {r["row"]: r[REJECT_REASON] for r in reject_reasons(df, spec).collect()}
    assert got[0] is None
    assert got[1] == "sensors.t: missing, required by model spec 'ranges'"
    assert _fields(got[2]) == ["sensors.t", "sensors.p"]
    assert "outside valid range [0, 100]" in got[2] and "outside valid range [-inf, 10]" in got[2]
    assert _fields(got[3]) == ["sensors.t", "sensors.s"] and "missing" in got[3]
    assert _fields(got[4]) == ["sensors.t"]

    nan = np.nan
    table = SensorTable(
        np.array(["d"] * 5, dtype=object),
        np.arange(5.0),
        {
            "t": np.array([50.0, nan, 150.0, nan, -1.0]),
            "p": np.array([5.0, 5, 11, 5, 10]),
            "s": np.array([1, 1, 1, nan, 1]),
        },
    )
    numpy_side = {r.index: [e["field"] for e in r.errors] for r in compute_features(spec, table).rejections}
    assert numpy_side == {i: _fields(reason) for i, reason in got.items() if reason is not None}


def test_window_statistics_match_hand_computed_values(spark: Any) -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "tiny",
            "sensors": [{"name": "x"}],
            "windows": [
                {
                    "source": "x",
                    "size": 3,
                    "stats": ["mean", "std", "min", "max", "slope", "ewm"],
                    "alpha": 0.5,
                }
            ],
            "readings_since_start": True,
        }
    )
    # epoch-second times, given out of order: the windows follow time, not input order
    df = spark.createDataFrame(
        [("d", 30.0, 8.0), ("d", 0.0, 1.0), ("d", 20.0, 4.0), ("d", 10.0, 2.0)],
        "device_id string, timestamp double, x double",
    )
    rows = add_features(df, spec).orderBy("timestamp").collect()
    col = {
        name: [r[name] for r in rows]
        for name in [
            "x__mean_3",
            "x__std_3",
            "x__min_3",
            "x__max_3",
            "x__slope_3",
            "x__ewm_3",
            "readings_since_start",
        ]
    }
    assert col["x__mean_3"] == pytest.approx([1, 1.5, 7 / 3, 14 / 3])
    assert col["x__std_3"] == pytest.approx([0, 0.5, math.sqrt(42 / 27), math.sqrt(168 / 27)])
    assert col["x__min_3"] == [1, 1, 1, 2]
    assert col["x__max_3"] == [1, 2, 4, 8]
    assert col["x__slope_3"] == pytest.approx([0, 1, 1.5, 3])
    assert col["x__ewm_3"] == pytest.approx([1, 5 / 3, 3, 6])
    assert col["readings_since_start"] == [1, 2, 3, 4]


def test_derived_column_gives_null_where_numpy_gives_nan(spark: Any) -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "nulls",
            "sensors": [{"name": "a"}, {"name": "b"}],
            "derived": [{"name": "z", "expr": "max(a / b, -sqrt(b - 10)) + 1"}],
        }
    )
    df = spark.createDataFrame([(6.0, 3.0), (1.0, 0.0), (5.0, 14.0)], "a double, b double")
    got = [r[0] for r in df.select(derived_column(spec.derived[0].tree)).collect()]
    assert got[0] is None  # sqrt(-7): numpy nan, and max() propagates it
    assert got[1] is None  # 1 / 0
    assert got[2] == pytest.approx(max(5 / 14, -2.0) + 1)
