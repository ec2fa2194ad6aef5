"""Online features (numpy): derived expressions, row checks, per-device windows, history and rates.

Expected values are worked out by hand in the comments next to them; the invariance tests
(shuffling, splitting into batches) compare the implementation with itself on random series.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from zaindari.contract import Reading, parse_reading
from zaindari.expressions import ExpressionError, parse_expression
from zaindari.features import (
    DeviceHistory,
    FeatureBatch,
    SensorTable,
    compute_features,
    window_statistics,
)
from zaindari.spec import ModelSpec, SpecError, load_spec

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z in epoch seconds


def make_table(devices: Any, stamps: Any, **sensors: Any) -> SensorTable:
    """A sensor table; ``devices`` may be one id for every row."""
    stamps = np.asarray(stamps, dtype=np.float64)
    if isinstance(devices, str):
        devices = [devices] * len(stamps)
    return SensorTable(
        device_id=np.array(devices, dtype=object),
        timestamp=stamps,
        sensors={k: np.asarray(v, dtype=np.float64) for k, v in sensors.items()},
    )


def every_minute(n: int, start: float = T0) -> np.ndarray:
    return start + 60.0 * np.arange(n)


def json_round_trip(histories: dict[str, DeviceHistory]) -> dict[str, DeviceHistory]:
    """What a caller's state store does between two invocations."""
    stored = json.dumps({k: h.to_dict() for k, h in histories.items()})
    return {k: DeviceHistory.from_dict(v) for k, v in json.loads(stored).items()}


MOTOR_SPEC = load_spec(
    """
name: motor
sensors:
  - {name: torque, unit: Nm, min: 0}
  - {name: speed, unit: rpm, min: 0, max: 3600}
  - {name: temp_in, unit: degC, min: -40, max: 150}
  - {name: temp_out, unit: degC, min: -40, max: 150}
derived:
  - {name: power_kw, expr: torque * speed / 9549}
  - {name: temp_rise, expr: temp_out - temp_in}
"""
)

WINDOW_SPEC = load_spec(
    """
name: pump-windows
sensors:
  - {name: temperature}
windows:
  - {source: temperature, size: 3, stats: [mean, std, min, max, slope, ewm], alpha: 0.5}
readings_since_start: true
"""
)

RATE_SPEC = load_spec(
    """
name: pump-rate
sensors:
  - {name: temperature}
alert_policy:
  rules:
    - id: fast_heating
      when: {rate_of_change: temperature, max_per_second: 0.5}
"""
)

# Everything at once: derived source, three windows of different sizes, a rate, a counter.
RICH_SPEC = load_spec(
    """
name: pump-rich
sensors:
  - {name: temperature, min: -50, max: 150}
  - {name: pressure, min: 0, max: 20}
derived:
  - {name: ratio, expr: temperature / pressure}
windows:
  - {source: temperature, size: 4, stats: [mean, std, min, max, slope, ewm], alpha: 0.3}
  - {source: ratio, size: 2, stats: [mean, slope]}
  - {source: pressure, size: 5, stats: [std, ewm], alpha: 0.8}
readings_since_start: true
alert_policy:
  rules:
    - id: fast_heating
      when: {rate_of_change: temperature, max_per_second: 0.5}
"""
)


def random_table(seed: int, devices: list[str], per_device: int) -> SensorTable:
    """Several devices interleaved in global time order, jittered sampling, valid values."""
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    stamps: list[float] = []
    for d in devices:
        ids += [d] * per_device
        stamps += list(T0 + np.cumsum(rng.uniform(1.0, 60.0, per_device)))
    order = np.argsort(stamps, kind="stable")
    n = len(ids)
    return make_table(
        np.array(ids, dtype=object)[order],
        np.array(stamps)[order],
        temperature=rng.uniform(20.0, 90.0, n),
        pressure=rng.uniform(1.0, 10.0, n),
    )


# ----------------------------------------------------------------------------- derived features


def test_derived_power_and_temperature_rise_are_computed_per_row() -> None:
    # Given three motor readings
    table = make_table(
        "motor-1",
        every_minute(3),
        torque=[50.0, 0.0, 9549.0],
        speed=[1500.0, 0.0, 1.0],
        temp_in=[48.25, 20.0, 20.0],
        temp_out=[61.5, 20.0, 15.0],
    )

    # When the features are computed
    batch = compute_features(MOTOR_SPEC, table)

    # Then power = torque * speed / 9549 (50 Nm at 1500 rpm = 75000/9549 = 7.854225573... kW)
    assert batch.rejections == []
    assert_array_equal(batch.rows, [0, 1, 2])
    assert_allclose(batch.columns["power_kw"], [7.854225573358467, 0.0, 1.0], rtol=1e-12)
    # and the rise is out - in
    assert_allclose(batch.columns["temp_rise"], [13.25, 0.0, -5.0], rtol=0, atol=1e-12)
    # and the sensors are carried as columns too
    assert_array_equal(batch.columns["torque"], [50.0, 0.0, 9549.0])


@pytest.mark.parametrize(
    ("numerator", "denominator"),
    [(10.0, 0.0), (0.0, 0.0), (-3.0, -0.0)],
    ids=["x-over-zero", "zero-over-zero", "over-negative-zero"],
)
def test_division_by_zero_rejects_the_row_naming_the_derived_feature(
    numerator: float, denominator: float
) -> None:
    # Given a ratio and a middle row whose denominator is zero
    spec = load_spec(
        """
name: ratio
sensors: [{name: flow}, {name: head}]
derived:
  - {name: efficiency, expr: flow / head}
"""
    )
    table = make_table("pump-1", every_minute(3), flow=[10.0, numerator, 6.0], head=[2.0, denominator, 3.0])

    # When computed as rows 100.. of a file
    batch = compute_features(spec, table, base_row=100)

    # Then that row is rejected at the features stage, the others computed
    assert_array_equal(batch.rows, [0, 2])
    assert_allclose(batch.columns["efficiency"], [5.0, 2.0])
    assert len(batch.rejections) == 1
    rejection = batch.rejections[0]
    assert rejection.index == 101
    assert rejection.stage == "features"
    assert [e["field"] for e in rejection.errors] == ["derived.efficiency"]
    assert "flow / head" in rejection.reason


def test_overflowing_derived_value_is_rejected_as_not_finite() -> None:
    spec = load_spec("name: big\nsensors: [{name: x}]\nderived: [{name: sq, expr: x * x}]\n")
    table = make_table("d", every_minute(2), x=[3.0, 1e200])

    batch = compute_features(spec, table)

    assert_array_equal(batch.rows, [0])
    assert_array_equal(batch.columns["sq"], [9.0])
    assert [(r.index, r.errors[0]["field"]) for r in batch.rejections] == [(1, "derived.sq")]


def test_window_over_a_derived_feature_uses_the_derived_values() -> None:
    spec = load_spec(
        """
name: rise
sensors: [{name: temp_in}, {name: temp_out}]
derived: [{name: temp_rise, expr: temp_out - temp_in}]
windows: [{source: temp_rise, size: 2, stats: [mean, max]}]
"""
    )
    # rises 13.25, 15.25, 9.25
    table = make_table("m", every_minute(3), temp_in=[48.25, 50.0, 52.0], temp_out=[61.5, 65.25, 61.25])

    batch = compute_features(spec, table)

    assert_allclose(batch.columns["temp_rise__mean_2"], [13.25, 14.25, 12.25])
    assert_allclose(batch.columns["temp_rise__max_2"], [13.25, 15.25, 15.25])


# ----------------------------------------------------------------------------- row checks

RANGE_SPEC = load_spec(
    """
name: pump-range
sensors:
  - {name: temperature, min: -40, max: 150}
  - {name: pressure, min: 0, max: 20}
windows:
  - {source: temperature, size: 3, stats: [mean]}
"""
)


def test_missing_and_out_of_range_sensors_reject_their_rows_and_spare_the_others() -> None:
    # Given five rows: ok, pressure missing, temperature too hot, too cold *and* missing pressure, ok
    nan = float("nan")
    table = make_table(
        "pump-1",
        every_minute(5),
        temperature=[20.0, 21.0, 151.0, -41.0, 150.0],
        pressure=[1.0, nan, 2.0, nan, 20.0],
    )

    # When computed
    batch = compute_features(RANGE_SPEC, table)

    # Then the good rows (the range is inclusive: 150 and 20 pass) are computed
    assert_array_equal(batch.rows, [0, 4])
    assert_array_equal(batch.columns["temperature"], [20.0, 150.0])
    # and their window skips the rejected rows: (20 + 150) / 2
    assert_allclose(batch.columns["temperature__mean_3"], [20.0, 85.0])
    # and each rejected row names each bad sensor
    assert [r.index for r in batch.rejections] == [1, 2, 3]
    assert all(r.stage == "features" for r in batch.rejections)
    assert [[e["field"] for e in r.errors] for r in batch.rejections] == [
        ["sensors.pressure"],
        ["sensors.temperature"],
        ["sensors.temperature", "sensors.pressure"],
    ]
    assert batch.rejections[0].errors[0]["message"] == "missing, required by model spec 'pump-range'"
    assert batch.rejections[1].errors[0]["message"] == "value 151 outside valid range [-40, 150]"
    assert batch.rejections[2].errors[0]["message"] == "value -41 outside valid range [-40, 150]"
    # and rejected rows do not enter the device's history
    assert batch.histories["pump-1"].values == {"temperature": [20.0, 150.0]}
    assert batch.histories["pump-1"].count == 2


def test_sensor_absent_from_the_readings_is_reported_missing_on_every_row() -> None:
    # Given readings built by the contract, one lacking pressure, one carrying an unknown sensor
    readings = []
    for i, sensors in enumerate([{"temperature": 20.0, "pressure": 1.0}, {"temperature": 21.0}]):
        r = parse_reading({"device_id": "p", "timestamp": T0 * 1000 + i, "sensors": sensors})
        assert isinstance(r, Reading)
        readings.append(r)
    table = SensorTable.from_readings(readings, RANGE_SPEC.sensor_names)

    batch = compute_features(RANGE_SPEC, table)

    assert_array_equal(batch.rows, [0])
    assert [(r.index, r.errors[0]["field"]) for r in batch.rejections] == [(1, "sensors.pressure")]


def test_table_without_a_required_sensor_column_rejects_every_row() -> None:
    table = make_table("p", every_minute(2), temperature=[20.0, 21.0])

    batch = compute_features(RANGE_SPEC, table)

    assert len(batch) == 0
    assert [r.index for r in batch.rejections] == [0, 1]
    assert all(
        r.errors
        == ({"field": "sensors.pressure", "message": "missing, required by model spec 'pump-range'"},)
        for r in batch.rejections
    )


# ----------------------------------------------------------------------------- windows

# values 1, 2, 4, 8 with a window of 3 (partial at first):
#   windows        [1]     [1, 2]   [1, 2, 4]          [2, 4, 8]
#   mean           1       3/2      7/3                14/3
#   std (pop.)     0       1/2      sqrt(14/9)         sqrt(56/9)
#   min            1       1        1                  2
#   max            1       2        4                  8
#   slope          0       1        3/2                3
#   ewm a=0.5      1       (.5*1+2)/1.5 = 5/3   (.25+1+4)/1.75 = 3   (.5+2+8)/1.75 = 6
EXPECTED_WINDOW = {
    "mean": [1.0, 1.5, 7 / 3, 14 / 3],
    "std": [0.0, 0.5, math.sqrt(14) / 3, 2 * math.sqrt(14) / 3],
    "min": [1.0, 1.0, 1.0, 2.0],
    "max": [1.0, 2.0, 4.0, 8.0],
    "slope": [0.0, 1.0, 1.5, 3.0],
    "ewm": [1.0, 5 / 3, 3.0, 6.0],
}


@pytest.mark.parametrize(("stat", "expected"), list(EXPECTED_WINDOW.items()), ids=list(EXPECTED_WINDOW))
def test_window_statistic_over_1_2_4_8_with_size_3(stat: str, expected: list[float]) -> None:
    table = make_table("pump-1", every_minute(4), temperature=[1.0, 2.0, 4.0, 8.0])

    batch = compute_features(WINDOW_SPEC, table)

    assert_allclose(batch.columns[f"temperature__{stat}_3"], expected, rtol=1e-12, atol=1e-12)


def test_window_statistics_of_a_padded_matrix() -> None:
    # Rows oldest first, nan where the window is not yet full
    windows = np.array([[np.nan, np.nan, 5.0], [3.0, np.nan, 7.0], [10.0, 20.0, 30.0]])

    stats = window_statistics(windows, ["mean", "min", "max", "ewm"], alpha=1.0)

    assert_allclose(stats["mean"], [5.0, 5.0, 20.0])
    assert_allclose(stats["min"], [5.0, 3.0, 10.0])
    assert_allclose(stats["max"], [5.0, 7.0, 30.0])
    # alpha 1: only the current reading has weight
    assert_allclose(stats["ewm"], [5.0, 7.0, 30.0])


def test_readings_since_start_counts_each_devices_readings_including_the_current_one() -> None:
    table = make_table(["a", "b", "a", "a", "b"], every_minute(5), temperature=[1.0] * 5)

    first = compute_features(WINDOW_SPEC, table)
    second = compute_features(
        WINDOW_SPEC,
        make_table(["b", "a"], every_minute(2, T0 + 600), temperature=[1.0, 1.0]),
        first.histories,
    )

    # a: 1st, 2nd, 3rd reading; b: 1st, 2nd
    assert_array_equal(first.columns["readings_since_start"], [1, 1, 2, 3, 2])
    assert_array_equal(second.columns["readings_since_start"], [3, 4])
    assert {d: h.count for d, h in second.histories.items()} == {"a": 4, "b": 3}


def test_model_features_follow_the_documented_order() -> None:
    # sensors (feature: true), derived, windows in declared order, then the counter
    assert RICH_SPEC.model_features == [
        "temperature",
        "pressure",
        "ratio",
        "temperature__mean_4",
        "temperature__std_4",
        "temperature__min_4",
        "temperature__max_4",
        "temperature__slope_4",
        "temperature__ewm_4",
        "ratio__mean_2",
        "ratio__slope_2",
        "pressure__std_5",
        "pressure__ewm_5",
        "readings_since_start",
    ]


# ----------------------------------------------------------------------------- devices and batches


def test_interleaved_shuffled_devices_give_the_same_features_as_each_device_alone() -> None:
    # Given three devices' readings, in time order, then shuffled together
    table = random_table(seed=11, devices=["pump-a", "pump-b", "pump-c"], per_device=9)
    n = len(table)
    perm = np.random.default_rng(3).permutation(n)
    shuffled = table.take(perm)

    # When the shuffled table is computed at once, and each device alone in order
    together = compute_features(RICH_SPEC, shuffled)
    expected: dict[str, np.ndarray] = {name: np.full(n, np.nan) for name in together.columns}
    alone_histories = {}
    for device in ["pump-a", "pump-b", "pump-c"]:
        rows = np.flatnonzero(table.device_id == device)
        alone = compute_features(RICH_SPEC, table.take(rows))
        for name, values in alone.columns.items():
            expected[name][rows] = values
        alone_histories.update(alone.histories)

    # Then every column agrees row for row (mapped through the shuffle)
    assert together.rejections == []
    assert_array_equal(together.rows, np.arange(n))
    assert not together.late.any()
    assert set(together.columns) == set(RICH_SPEC.column_names) | {"temperature__rate"}
    for name, values in together.columns.items():
        assert_allclose(values, expected[name][perm], rtol=1e-12, atol=1e-12, err_msg=name)
    assert {d: h.to_dict() for d, h in together.histories.items()} == {
        d: h.to_dict() for d, h in alone_histories.items()
    }


def test_history_carried_across_two_batches_equals_one_batch_at_every_split() -> None:
    # Given two devices' random series in time order
    table = random_table(seed=5, devices=["pump-a", "pump-b"], per_device=8)
    n = len(table)
    whole = compute_features(RICH_SPEC, table)

    for split in range(n + 1):
        # When the series arrives as two batches, the history stored as JSON in between
        first = compute_features(RICH_SPEC, table.take(np.arange(split)))
        second = compute_features(
            RICH_SPEC, table.take(np.arange(split, n)), json_round_trip(first.histories)
        )

        # Then each feature equals the single-batch one
        assert not first.late.any()
        assert not second.late.any()
        for name, values in whole.columns.items():
            joined = np.concatenate([first.columns[name], second.columns[name]])
            assert_allclose(joined, values, rtol=1e-12, atol=1e-12, err_msg=f"{name} split at {split}")
        # and so does the history left behind
        assert {d: h.to_dict() for d, h in second.histories.items() if d in whole.histories} == {
            d: h.to_dict() for d, h in whole.histories.items()
        }


def test_history_keeps_only_what_the_largest_window_needs() -> None:
    # Given windows of 4 and 2 and a rate: history_size = max(4 - 1, 2 - 1, 1) = 3
    spec = load_spec(
        """
name: trim
sensors: [{name: temperature}, {name: pressure}]
windows:
  - {source: temperature, size: 4, stats: [mean]}
  - {source: pressure, size: 2, stats: [std]}
alert_policy:
  rules:
    - id: pressure_jump
      when: {rate_of_change: pressure, max_per_second: 1}
"""
    )
    assert spec.history_size == 3
    table = make_table(
        "pump-1",
        every_minute(10),
        temperature=np.arange(10.0),
        pressure=np.arange(10.0) / 10,
    )

    # When ten readings pass
    history = compute_features(spec, table).histories["pump-1"]

    # Then three readings per source remain, with the count and last time
    assert history.values == {"temperature": [7.0, 8.0, 9.0], "pressure": [0.7, 0.8, 0.9]}
    assert history.count == 10
    assert history.last_timestamp == T0 + 540.0


def test_spec_without_windows_keeps_no_values_but_counts() -> None:
    spec = load_spec("name: c\nsensors: [{name: t}]\nreadings_since_start: true\n")
    assert spec.history_size == 0

    history = compute_features(spec, make_table("d", every_minute(3), t=[1.0, 2.0, 3.0])).histories["d"]

    assert history.to_dict() == {"count": 3, "last_timestamp": T0 + 120.0, "values": {}}


# ----------------------------------------------------------------------------- late readings

LATE_SPEC = load_spec(
    """
name: late
sensors: [{name: temperature}]
windows: [{source: temperature, size: 3, stats: [mean, max]}]
readings_since_start: true
"""
)


def _history_after_1_2_4_8() -> dict[str, DeviceHistory]:
    batch = compute_features(LATE_SPEC, make_table("p", every_minute(4), temperature=[1.0, 2.0, 4.0, 8.0]))
    history = batch.histories["p"]
    assert history.to_dict() == {
        "count": 4,
        "last_timestamp": T0 + 180.0,
        "values": {"temperature": [4.0, 8.0]},
    }
    return batch.histories


def test_late_reading_is_flagged_scored_against_history_and_does_not_advance_it() -> None:
    # Given a device whose history ends at T0+180 holding [4, 8]
    histories = _history_after_1_2_4_8()
    before = histories["p"].to_dict()

    # When a reading stamped T0+90 (older than the history) arrives with 5
    batch = compute_features(LATE_SPEC, make_table("p", [T0 + 90.0], temperature=[5.0]), histories)

    # Then it is late, its window is [4, 8, 5], and the history is unchanged
    assert_array_equal(batch.late, [True])
    assert_allclose(batch.columns["temperature__mean_3"], [17 / 3])
    assert_allclose(batch.columns["temperature__max_3"], [8.0])
    assert_array_equal(batch.columns["readings_since_start"], [5])
    assert batch.histories["p"].to_dict() == before


def test_late_and_in_order_readings_in_one_batch_are_told_apart() -> None:
    histories = _history_after_1_2_4_8()

    # Given a late reading (5 at T0+100) and an in-order one (2 at T0+240)
    table = make_table("p", [T0 + 100.0, T0 + 240.0], temperature=[5.0, 2.0])
    batch = compute_features(LATE_SPEC, table, histories)

    # Then only the first is late; both are scored against [4, 8]; only the second advances history
    assert_array_equal(batch.late, [True, False])
    assert_allclose(batch.columns["temperature__mean_3"], [17 / 3, 14 / 3])
    assert batch.histories["p"].to_dict() == {
        "count": 5,
        "last_timestamp": T0 + 240.0,
        "values": {"temperature": [8.0, 2.0]},
    }


def test_reading_at_the_histories_last_timestamp_is_not_late() -> None:
    histories = _history_after_1_2_4_8()

    batch = compute_features(LATE_SPEC, make_table("p", [T0 + 180.0], temperature=[6.0]), histories)

    assert_array_equal(batch.late, [False])
    assert_allclose(batch.columns["temperature__mean_3"], [6.0])  # (4 + 8 + 6) / 3
    assert batch.histories["p"].count == 5


def test_history_written_under_a_spec_lacking_a_source_restarts_the_windows() -> None:
    # Given a history written by a spec that windowed temperature only: [20, 30], count 3
    spec_a = load_spec(
        """
name: a
sensors: [{name: temperature}, {name: pressure}]
windows: [{source: temperature, size: 3, stats: [mean]}]
readings_since_start: true
"""
    )
    spec_b = load_spec(
        """
name: b
sensors: [{name: temperature}, {name: pressure}]
windows:
  - {source: temperature, size: 3, stats: [mean]}
  - {source: pressure, size: 3, stats: [mean]}
readings_since_start: true
"""
    )
    old = compute_features(
        spec_a, make_table("p", every_minute(3), temperature=[10.0, 20.0, 30.0], pressure=[9.0, 9.0, 9.0])
    ).histories
    assert old["p"].values == {"temperature": [20.0, 30.0]}

    # When the new spec, which also windows pressure, reads that history
    new_rows = make_table("p", every_minute(2, T0 + 600), temperature=[40.0, 50.0], pressure=[1.0, 3.0])
    batch = compute_features(spec_b, new_rows, json_round_trip(old))

    # Then both windows restart together (no temperature past paired with an empty pressure past)
    assert_allclose(batch.columns["temperature__mean_3"], [40.0, 45.0])
    assert_allclose(batch.columns["pressure__mean_3"], [1.0, 2.0])
    fresh = compute_features(spec_b, new_rows)
    for name in ("temperature__mean_3", "pressure__mean_3"):
        assert_array_equal(batch.columns[name], fresh.columns[name])
    # the counter carries on, and the new history holds both sources aligned
    assert_array_equal(batch.columns["readings_since_start"], [4, 5])
    assert batch.histories["p"].values == {"temperature": [40.0, 50.0], "pressure": [1.0, 3.0]}


# ----------------------------------------------------------------------------- rates


def test_rate_is_change_per_second_and_nan_on_the_first_reading() -> None:
    # Given 20 at T0, 25 at T0+10 s, 19 at T0+30 s
    table = make_table("p", [T0, T0 + 10.0, T0 + 30.0], temperature=[20.0, 25.0, 19.0])

    # When computed
    batch = compute_features(RATE_SPEC, table)

    # Then the rate is (25-20)/10 = 0.5 and (19-25)/20 = -0.3, nothing before the first reading
    rate = batch.columns["temperature__rate"]
    assert math.isnan(rate[0])
    assert_allclose(rate[1:], [0.5, -0.3], rtol=1e-12)
    assert "temperature__rate" not in RATE_SPEC.model_features


def test_rate_carries_across_batches_through_the_history() -> None:
    first = compute_features(RATE_SPEC, make_table("p", [T0, T0 + 30.0], temperature=[20.0, 19.0]))

    # 21 at T0+40 after 19 at T0+30: (21 - 19) / 10 = 0.2
    second = compute_features(
        RATE_SPEC, make_table("p", [T0 + 40.0], temperature=[21.0]), json_round_trip(first.histories)
    )

    assert_allclose(second.columns["temperature__rate"], [0.2], rtol=1e-12)


def test_rate_between_readings_with_the_same_timestamp_is_nan() -> None:
    batch = compute_features(RATE_SPEC, make_table("p", [T0, T0], temperature=[20.0, 25.0]))

    assert np.isnan(batch.columns["temperature__rate"]).all()


def test_rate_of_a_derived_feature() -> None:
    spec = load_spec(
        """
name: rise-rate
sensors: [{name: temp_in}, {name: temp_out}]
derived: [{name: temp_rise, expr: temp_out - temp_in}]
alert_policy:
  rules:
    - id: rise_jump
      when: {rate_of_change: temp_rise, max_per_second: 0.1}
"""
    )
    # rises 10 then 14 four seconds later: 1.0 per second
    table = make_table("m", [T0, T0 + 4.0], temp_in=[40.0, 40.0], temp_out=[50.0, 54.0])

    batch = compute_features(spec, table)

    assert math.isnan(batch.columns["temp_rise__rate"][0])
    assert_allclose(batch.columns["temp_rise__rate"][1], 1.0)


@pytest.mark.parametrize("feature", ["temperature__mean_3", "readings_since_start"])
def test_rate_rule_on_a_computed_feature_is_refused_at_load_or_computed(feature: str) -> None:
    # The spec accepts a rate_of_change on any column it produces. Then either loading refuses
    # it with a SpecError naming it, or compute_features produces its rate: never a KeyError.
    text = f"""
name: rate-of-window
sensors: [{{name: temperature}}]
windows: [{{source: temperature, size: 3, stats: [mean]}}]
readings_since_start: true
alert_policy:
  rules:
    - id: trend_jump
      when: {{rate_of_change: {feature}, max_per_second: 1}}
"""
    try:
        spec = load_spec(text)
    except SpecError as exc:
        assert feature in str(exc)
        return
    batch = compute_features(spec, make_table("p", [T0, T0 + 10.0], temperature=[20.0, 25.0]))
    assert f"{feature}__rate" in batch.columns
    assert math.isnan(batch.columns[f"{feature}__rate"][0])


# ----------------------------------------------------------------------------- batch outputs


def test_matrix_is_float32_c_contiguous_in_the_requested_order() -> None:
    table = make_table(
        "m",
        every_minute(2),
        torque=[50.0, 40.0],
        speed=[1500.0, 2387.25],
        temp_in=[1.0, 2.0],
        temp_out=[3.0, 5.0],
    )
    batch = compute_features(MOTOR_SPEC, table)

    matrix = batch.matrix(["temp_rise", "torque", "power_kw"])

    assert matrix.dtype == np.float32
    assert matrix.flags["C_CONTIGUOUS"]
    assert matrix.shape == (2, 3)
    # power: 75000 / 9549 and 40 * 2387.25 / 9549 = 95490 / 9549 = 10
    assert_allclose(matrix, [[2.0, 50.0, 7.854225573358467], [3.0, 40.0, 10.0]], rtol=1e-6)


def test_matrix_of_an_empty_batch_has_zero_rows_and_every_column() -> None:
    batch = compute_features(MOTOR_SPEC, make_table("m", [], torque=[], speed=[], temp_in=[], temp_out=[]))

    matrix = batch.matrix(MOTOR_SPEC.model_features)

    assert isinstance(batch, FeatureBatch)
    assert matrix.shape == (0, 6)
    assert matrix.dtype == np.float32


@pytest.mark.parametrize(
    "history",
    [
        DeviceHistory(),
        DeviceHistory(
            count=7, last_timestamp=T0 + 0.25, values={"temperature": [1.5, -2.0], "ratio": [0.1, 1e-300]}
        ),
    ],
    ids=["empty", "filled"],
)
def test_device_history_round_trips_through_json(history: DeviceHistory) -> None:
    again = DeviceHistory.from_dict(json.loads(json.dumps(history.to_dict())))

    assert again == history


@pytest.mark.parametrize("data", [None, {}], ids=["none", "empty-dict"])
def test_device_history_from_nothing_is_empty(data: Any) -> None:
    assert DeviceHistory.from_dict(data) == DeviceHistory(count=0, last_timestamp=None, values={})


def test_device_history_from_dict_coerces_json_numbers() -> None:
    history = DeviceHistory.from_dict({"count": "3", "last_timestamp": 1714564800, "values": {"t": [1, 2]}})

    assert history == DeviceHistory(count=3, last_timestamp=T0, values={"t": [1.0, 2.0]})
    assert all(type(x) is float for x in history.values["t"])


# ----------------------------------------------------------------------------- expressions


@pytest.mark.parametrize(
    ("text", "columns", "expected"),
    [
        ("torque * speed / 9549", {"torque": [50.0], "speed": [1500.0]}, [75000 / 9549]),
        ("abs(a)", {"a": [-3.0, 2.0]}, [3.0, 2.0]),
        ("sqrt(a)", {"a": [16.0, 2.25, 0.0]}, [4.0, 1.5, 0.0]),
        ("min(a, b)", {"a": [1.0, 5.0], "b": [3.0, 2.0]}, [1.0, 2.0]),
        ("max(a, b)", {"a": [1.0, 5.0], "b": [3.0, 2.0]}, [3.0, 5.0]),
        ("-a + b", {"a": [1.0, 5.0], "b": [3.0, 2.0]}, [2.0, -3.0]),
        ("-(a - b) * 2", {"a": [1.0, 5.0], "b": [3.0, 2.0]}, [4.0, -6.0]),
        ("+a", {"a": [7.0]}, [7.0]),
        ("a - b - c", {"a": [10.0], "b": [3.0], "c": [2.0]}, [5.0]),
        ("a / b / c", {"a": [24.0], "b": [3.0], "c": [2.0]}, [4.0]),
        ("2 * (a + 1)", {"a": [4.0]}, [10.0]),
        ("1 + 2 * 3", {}, [7.0]),
        ("sqrt(abs(-a)) + max(a, 2 * b) - min(-a, 1)", {"a": [9.0], "b": [5.0]}, [22.0]),
        ("1e3 * a + 0.5", {"a": [2.0]}, [2000.5]),
    ],
)
def test_allowed_expression_evaluates_to_the_hand_computed_value(
    text: str, columns: dict[str, list[float]], expected: list[float]
) -> None:
    tree = parse_expression(text)

    values = tree.evaluate({k: np.asarray(v) for k, v in columns.items()})

    assert values.dtype == np.float64
    assert_allclose(values, expected, rtol=1e-12)
    assert tree.names() == frozenset(columns)


@pytest.mark.parametrize(
    ("text", "columns"),
    [("sqrt(a)", {"a": [-4.0]}), ("a / b", {"a": [1.0], "b": [0.0]})],
    ids=["sqrt-of-negative", "division-by-zero"],
)
def test_undefined_arithmetic_gives_nan_for_the_caller_to_report(
    text: str, columns: dict[str, list[float]]
) -> None:
    values = parse_expression(text).evaluate({k: np.asarray(v) for k, v in columns.items()})

    assert np.isnan(values).all()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a.real", id="attribute"),
        pytest.param("os.system", id="module-attribute"),
        pytest.param("__import__('os')", id="dunder-import"),
        pytest.param("__import__('os').system('true')", id="import-and-call"),
        pytest.param("open('/etc/passwd')", id="open"),
        pytest.param("exp(a)", id="unknown-function"),
        pytest.param("abs(a)(b)", id="call-of-a-call"),
        pytest.param("lambda: 1", id="lambda"),
        pytest.param("a > b", id="comparison"),
        pytest.param("a == b", id="equality"),
        pytest.param("a and b", id="boolean-operator"),
        pytest.param("not a", id="not"),
        pytest.param("~a", id="invert"),
        pytest.param("a ** 2", id="power"),
        pytest.param("a % 2", id="modulo"),
        pytest.param("a // 2", id="floor-division"),
        pytest.param("a if b else c", id="conditional"),
        pytest.param("'text'", id="string"),
        pytest.param("a + 'text'", id="string-operand"),
        pytest.param("True", id="boolean-literal"),
        pytest.param("1j", id="complex-literal"),
        pytest.param("[a, b]", id="list"),
        pytest.param("a[0]", id="subscript"),
        pytest.param("abs(a, b)", id="abs-two-args"),
        pytest.param("min(a)", id="min-one-arg"),
        pytest.param("abs(x=a)", id="keyword-argument"),
        pytest.param("a +", id="syntax-error"),
        pytest.param("a = 1", id="assignment"),
        pytest.param("", id="empty"),
        pytest.param("a + " * 130 + "a", id="longer-than-500"),
    ],
)
def test_forbidden_expression_raises_expression_error(text: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)

    assert str(caught.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("abs(a, b)", "abs() takes 1 argument(s)"),
        ("max(a)", "max() takes 2 argument(s)"),
        ("a ** 2", "use numbers, sensor names, + - * /"),
        ("a + " * 130 + "a", "longer than 500 characters"),
    ],
)
def test_expression_error_says_what_is_allowed(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)

    assert fragment in str(caught.value)


# ----------------------------------------------------------------------------- spec validation

_SENSORS = "sensors: [{name: temperature}, {name: pressure}]\n"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(
            "name: s\n" + _SENSORS + "derived: [{name: power, expr: torque * pressure}]\n",
            ["derived feature power", "torque"],
            id="derived-reads-unknown-sensor",
        ),
        pytest.param(
            "name: s\n" + _SENSORS + "windows: [{source: vibration, size: 3, stats: [mean]}]\n",
            ["window source 'vibration'"],
            id="window-on-unknown-source",
        ),
        pytest.param(
            "name: s\nsensors: [{name: temperature}, {name: pressure}, {name: temperature}]\n",
            ["temperature"],
            id="duplicate-sensor",
        ),
        pytest.param(
            "name: s\n"
            + _SENSORS
            + "alert_policy:\n  rules:\n    - id: too_hot\n      when: {feature: temp, op: '>', value: 90}\n",
            ["rule too_hot", "'temp'"],
            id="rule-on-unknown-feature",
        ),
        pytest.param(
            "name: s\n"
            + _SENSORS
            + "alert_policy:\n  rules:\n    - id: jump\n      when: {rate_of_change: flow, max_per_second: 1}\n",
            ["rule jump", "'flow'"],
            id="rate-rule-on-unknown-feature",
        ),
        pytest.param(
            "name: s\n" + _SENSORS + "windows: [{source: temperature, size: 3, stats: [mean, ewm]}]\n",
            ["windows.0", "window on temperature", "'ewm' needs 'alpha'"],
            id="ewm-without-alpha",
        ),
        pytest.param(
            "name: s\n" + _SENSORS + "derived: [{name: pressure, expr: temperature * 2}]\n",
            ["derived feature pressure", "clashes"],
            id="derived-name-clashes-with-sensor",
        ),
        pytest.param(
            "name: s\n" + _SENSORS + "derived: [{name: boom, expr: \"__import__('os')\"}]\n",
            ["derived.0.expr", "unsupported element"],
            id="derived-with-forbidden-expression",
        ),
        pytest.param(
            "name: s\nsensors: [{name: temperature, min: 10, max: 5}]\n",
            ["sensor temperature", "min 10.0 must be below max 5.0"],
            id="sensor-range-reversed",
        ),
        pytest.param(
            "name: s\n" + _SENSORS + "windows: [{source: temperature, size: 1, stats: [mean]}]\n",
            ["windows.0.size"],
            id="window-of-one",
        ),
        pytest.param("name: s\nsensors: []\n", ["sensors"], id="no-sensors"),
        pytest.param("- just\n- a list\n", ["mapping at the top level"], id="not-a-mapping"),
        pytest.param("name: [unclosed\n", ["not valid YAML/JSON"], id="broken-yaml"),
    ],
)
def test_invalid_spec_raises_spec_error_naming_the_offender(text: str, fragments: list[str]) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(text)

    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_spec_loads_from_json_text_too() -> None:
    spec = load_spec('{"name": "j", "sensors": [{"name": "t"}], "derived": [{"name": "d", "expr": "t * 2"}]}')

    assert isinstance(spec, ModelSpec)
    assert spec.model_features == ["t", "d"]


def test_what_a_spec_works_out_once_is_worked_out_again_for_a_copy_with_changes() -> None:
    # history_size, window_sources, rate_sources (and a bundle manifest's content hash, a
    # baseline's layout) are remembered on the frozen model; pydantic's model_copy copies them
    spec = load_spec(
        """
name: t
sensors:
  - {name: a}
  - {name: b}
windows:
  - {source: a, size: 10, stats: [mean]}
alert_policy:
  rule_set_version: "1"
  rules:
    - {id: j, severity: warning, when: {rate_of_change: b, max_per_second: 0.5}}
"""
    )
    assert (spec.history_size, spec.window_sources, spec.rate_sources) == (9, ["a", "b"], ["b"])
    copy = spec.model_copy(
        update={
            "windows": [spec.windows[0].model_copy(update={"size": 30})],
            "alert_policy": spec.alert_policy.model_copy(update={"rules": []}),
        }
    )
    fresh = ModelSpec.model_validate(copy.model_dump())
    assert (copy.history_size, copy.window_sources, copy.rate_sources) == (29, ["a"], [])
    assert (fresh.history_size, fresh.window_sources, fresh.rate_sources) == (29, ["a"], [])
    assert spec.history_size == 9 and spec.model_copy().rate_sources == ["b"]  # the original keeps its own
