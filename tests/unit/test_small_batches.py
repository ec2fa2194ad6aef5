"""The small-batch paths (a few rows in plain Python, as an edge box scores them) give the numpy
paths' results bit for bit: the same inputs through both, every output compared exactly
(``-0.0`` against ``0.0`` and ``nan`` included)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.unit.test_features import RICH_SPEC, T0, make_table, random_table
from zaindari import features
from zaindari.features import DeviceHistory, compute_features, window_statistics, window_statistics_rows
from zaindari.spec import load_spec


def same_bits(a: Any, b: Any) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (
        a.shape == b.shape
        and np.array_equal(a, b, equal_nan=True)
        and np.array_equal(np.signbit(a), np.signbit(b))
    )


def padded_windows(rng: np.random.Generator, rows: int, size: int) -> np.ndarray:
    """Windows as the numpy path gathers them: ``nan`` before the segment start, the last value
    present; values of mixed magnitude, some ``0.0``/``-0.0``, some rows constant."""
    scale = 10.0 ** rng.integers(-3, 7, size=(rows, size))
    windows = rng.normal(size=(rows, size)) * scale
    windows[rng.random((rows, size)) < 0.1] = -0.0
    windows[rng.random((rows, size)) < 0.1] = 0.0
    for r in range(rows):
        if rng.random() < 0.2:
            windows[r, :] = windows[r, -1]
        empty = int(rng.integers(0, size))
        windows[r, :empty] = np.nan
    return windows


def test_window_statistics_rows_equal_numpy_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    stats = ["mean", "std", "min", "max", "slope", "ewm"]
    for trial in range(400):
        size = int(rng.integers(1, 140))  # across numpy's 8 and 128 summation thresholds
        windows = padded_windows(rng, int(rng.integers(1, 5)), size)
        alpha = float(rng.uniform(0.01, 1.0))
        expected = window_statistics(windows, stats, alpha)
        got = window_statistics_rows(windows.tolist(), stats, alpha)
        for stat in stats:
            assert same_bits(got[stat], expected[stat]), (trial, size, stat)


def test_full_windows_take_the_compiled_sums_and_equal_numpy_bit_for_bit() -> None:
    # Given windows with every place filled (the steady state: the compiled sums), of every size
    # across numpy's 8 and 128 summation thresholds, with one holding inf (the general path)
    rng = np.random.default_rng(8)
    stats = ["mean", "std", "min", "max", "slope", "ewm"]
    for size in range(1, 141):
        windows = padded_windows(rng, 3, size)
        windows[:, :] = np.where(np.isnan(windows), rng.normal(size=windows.shape) * 1e3, windows)
        if size % 7 == 0:
            windows[0, size // 2] = np.inf
        alpha = float(rng.uniform(0.01, 1.0))
        # When both paths compute them, Then every statistic is the same bit for bit
        with np.errstate(invalid="ignore"):  # (inf - inf in the numpy path)
            expected = window_statistics(windows, stats, alpha)
        got = window_statistics_rows(windows.tolist(), stats, alpha)
        for stat in stats:
            assert same_bits(got[stat], expected[stat]), (size, stat)


def test_sum_of_negative_zeros_is_positive_zero_as_numpy_gives() -> None:
    got = window_statistics_rows([[-0.0, -0.0, -0.0]], ["mean", "ewm"], 0.5)
    expected = window_statistics(np.array([[-0.0, -0.0, -0.0]]), ["mean", "ewm"], 0.5)
    assert same_bits(got["mean"], expected["mean"]) and same_bits(got["ewm"], expected["ewm"])


def features_both_ways(spec: Any, table: Any, histories: dict[str, DeviceHistory]) -> tuple[Any, Any]:
    small = compute_features(
        spec, table, {k: DeviceHistory.from_dict(v.to_dict()) for k, v in histories.items()}
    )
    saved = features.SMALL_BATCH
    features.SMALL_BATCH = 0
    try:
        full = compute_features(
            spec, table, {k: DeviceHistory.from_dict(v.to_dict()) for k, v in histories.items()}
        )
    finally:
        features.SMALL_BATCH = saved
    return small, full


def assert_same_features(small: Any, full: Any) -> None:
    assert small.rows.tolist() == full.rows.tolist()
    assert small.late.tolist() == full.late.tolist()
    assert [(r.index, r.reason) for r in small.rejections] == [(r.index, r.reason) for r in full.rejections]
    assert small.columns.keys() == full.columns.keys()
    for name in full.columns:
        assert same_bits(small.columns[name], full.columns[name]), name
    assert {k: v.to_dict() for k, v in small.histories.items()} == {
        k: v.to_dict() for k, v in full.histories.items()
    }


@pytest.mark.parametrize("seed", range(12))
def test_small_batches_give_the_numpy_features_with_history_late_rows_and_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    devices = ["b", "a", "c"]
    past = random_table(seed, devices, 6)
    histories = compute_features(RICH_SPEC, past).histories
    for n in range(1, features.SMALL_BATCH + 1):
        table = random_table(seed * 100 + n, devices[: 1 + n % 3], 1 + n // 3)
        table = table.take(np.arange(min(n, len(table))))
        stamps = table.timestamp.copy()
        if len(stamps) > 1 and rng.random() < 0.5:  # a tie: a rate over zero seconds is nan
            stamps[1] = stamps[0]
        if rng.random() < 0.5:  # a late row: older than its device's history
            stamps[0] = T0 - 10.0
        table.timestamp = stamps
        assert_same_features(*features_both_ways(RICH_SPEC, table, histories))
        assert_same_features(*features_both_ways(RICH_SPEC, table, {}))


def test_small_batches_with_bad_rows_reject_them_as_numpy_does() -> None:
    table = make_table(
        ["a", "a", "b", "b"],
        [T0, T0 + 1, T0 + 2, T0 + 3],
        temperature=[20.0, np.nan, 30.0, 500.0],
        pressure=[0.0, 1.0, np.inf, 2.0],  # the first: temperature / 0 is not finite
    )
    small, full = features_both_ways(RICH_SPEC, table, {})
    assert full.rejections  # the case is exercised
    assert_same_features(small, full)


def test_example_spec_small_batches_equal_numpy() -> None:
    from tests.support import plant_readings
    from zaindari.contract import parse_payload
    from zaindari.example_model import example_spec_text
    from zaindari.features import SensorTable

    spec = load_spec(example_spec_text())
    readings = parse_payload(plant_readings(0)[:400]).readings
    history = compute_features(spec, SensorTable.from_readings(readings[:300], spec.sensor_names)).histories
    for begin in range(300, 400, 3):
        table = SensorTable.from_readings(readings[begin : begin + 3], spec.sensor_names)
        assert_same_features(*features_both_ways(spec, table, history))


def _summaries_both_ways(baseline: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """``summarize_table`` on the small path, then on the numpy path (the small one turned off)."""
    from zaindari import drift
    from zaindari.drift import summarize_table

    small = summarize_table(baseline, **kwargs)
    saved = drift.SMALL_SUMMARY
    drift.SMALL_SUMMARY = 0
    try:
        return small, summarize_table(baseline, **kwargs)
    finally:
        drift.SMALL_SUMMARY = saved


def test_small_drift_summaries_equal_the_numpy_counts() -> None:
    from zaindari import drift
    from zaindari.drift import Baseline

    rng = np.random.default_rng(3)
    baseline = Baseline(
        model_name="m",
        features=["f0", "f1", "f2"],
        edges=[[-1.0, 0.0, 1.0], [0.5], [-0.0, 2.0, 4.0, 8.0]],
        counts=[[1, 1, 1, 1], [1, 1], [1, 1, 1, 1, 1]],
        score_edges=[0.1, 0.2],
        score_counts=[1, 1, 1],
        rows=4,
        sensors={"temperature": (0.0, 100.0), "pressure": (None, 5.0), "absent": (0.0, None)},
        feature_sensors={"f0": ["temperature"], "f1": ["pressure"], "f2": []},
    )
    for trial in range(300):
        n = int(rng.integers(1, drift.SMALL_SUMMARY + 1))
        stamps = T0 + 3590.0 + rng.uniform(0, 20, n)  # across an hour boundary
        temperature = rng.uniform(-20, 120, n)
        temperature[rng.random(n) < 0.2] = np.nan
        pressure = rng.uniform(0, 8, n)
        rows = np.flatnonzero(rng.random(n) < 0.8).astype(np.intp)
        matrix = rng.normal(size=(len(rows), 3)).astype(np.float32)
        matrix[rng.random(matrix.shape) < 0.1] = np.nan
        matrix[rng.random(matrix.shape) < 0.1] = np.inf
        matrix[rng.random(matrix.shape) < 0.1] = 0.0
        score = rng.uniform(0, 0.3, len(rows))
        score[rng.random(len(rows)) < 0.1] = np.nan
        kwargs: dict[str, Any] = dict(
            model_version="m:1",
            devices=np.array(rng.choice(["b", "a", "c"], n), dtype=object),
            timestamps=stamps,
            sensors={"temperature": temperature, "pressure": pressure},
            rows=rows,
            matrix=matrix,
            score=score,
            alerts=rng.random(len(rows)) < 0.3,
        )
        small, full = _summaries_both_ways(baseline, kwargs)
        assert [s.to_dict() for s in small] == [s.to_dict() for s in full], trial
        assert small == full


def test_small_drift_summaries_of_one_window_count_values_on_the_edges_as_numpy_does() -> None:
    # Given groups in one window whose every value is finite (the small path's counting at once),
    # many of them exactly on an edge (float32 features and float64 scores), -0.0 against 0.0
    from zaindari import drift
    from zaindari.drift import Baseline

    edges = [[-1.0, 0.0, 1.0], [0.5], [-0.0, 2.0, 4.0, 8.0], []]
    baseline = Baseline(
        model_name="m",
        features=["f0", "f1", "f2", "f3"],
        edges=edges,
        counts=[[1] * (len(e) + 1) for e in edges],
        score_edges=[0.1, 0.2],
        score_counts=[1, 1, 1],
        rows=4,
        sensors={"temperature": (0.0, 100.0)},
        feature_sensors={"f0": ["temperature"], "f1": [], "f2": [], "f3": []},
    )
    rng = np.random.default_rng(5)
    for trial in range(300):
        n = int(rng.integers(1, drift.SMALL_SUMMARY + 1))
        matrix = rng.normal(0, 3, size=(n, 4)).astype(np.float32)
        on_edge = rng.random(matrix.shape) < 0.4
        picks = rng.choice([-1.0, 0.0, -0.0, 1.0, 0.5, 2.0, 4.0, 8.0], size=matrix.shape)
        matrix[on_edge] = picks[on_edge]
        score = rng.choice([0.1, 0.2, 0.15, 0.0, 1.0], n) if trial % 2 else rng.uniform(0, 0.3, n)
        kwargs: dict[str, Any] = dict(
            model_version="m:1",
            devices=np.array(rng.choice(["b", "a"], n), dtype=object),
            timestamps=T0 + rng.uniform(0, 600, n),
            sensors={"temperature": rng.uniform(-5, 105, n)},
            rows=np.arange(n, dtype=np.intp),
            matrix=matrix,
            score=score,
            alerts=rng.random(n) < 0.3,
        )
        small, full = _summaries_both_ways(baseline, kwargs)
        assert len(small) == 1 and small == full, trial


@pytest.mark.parametrize("direction", ["above", "below"])
def test_small_alert_evaluations_equal_the_numpy_path(direction: str) -> None:
    import json

    from zaindari import alerting
    from zaindari.alerting import AlertState, RuleState, evaluate_alerts
    from zaindari.bundle import LearnedThresholds, OutputSpec, Signature, TensorSpec

    # Given the example spec's rules (threshold, all-of under modes, rate, range) and learned
    # levels either way, on rows near every threshold, some nan, late, across devices and states
    spec = load_spec(EXAMPLE_ALERT_SPEC)
    names = spec.model_features
    signature = Signature(
        inputs=[TensorSpec(name="features", shape=[None, len(names)])],
        features=names,
        outputs=[OutputSpec(name="score", shape=[None], role="score")],
    )
    levels = {"warning": 0.5, "critical": 0.8} if direction == "above" else {"warning": 0.5, "critical": 0.2}
    thresholds = LearnedThresholds(levels=levels, direction=direction, method="test")
    rng = np.random.default_rng(11)
    near = {"temperature": 95.0, "vibration_rms__mean_10": 7.1, "mech_power": 1.0, "pressure": 175.0}
    spread = {"temperature": 5.0, "vibration_rms__mean_10": 0.5, "mech_power": 0.5, "pressure": 200.0}
    rule_ids = [r.id for r in spec.alert_policy.rules] + [alerting.LEARNED_RULE_ID]

    def evaluate(small: bool, inputs: dict[str, Any]) -> Any:
        saved = alerting.SMALL_ALERTS
        alerting.SMALL_ALERTS = saved if small else -1
        try:
            states = {d: AlertState.from_dict(s.to_dict()) for d, s in inputs["states"].items()}
            return evaluate_alerts(**{**inputs, "states": states})
        finally:
            alerting.SMALL_ALERTS = saved

    for trial in range(300):
        n = int(rng.integers(1, alerting.SMALL_ALERTS + 1))
        columns = {}
        for name in names:
            values = rng.normal(near.get(name, 0.0), spread.get(name, 1.0), n)
            values[rng.random(n) < 0.15] = near.get(name, 0.0)  # on the threshold itself
            values[rng.random(n) < 0.1] = np.nan
            columns[name] = values
        rate = rng.normal(0.0, 0.6, n)
        rate[rng.random(n) < 0.2] = np.nan
        columns["temperature__rate"] = rate
        score = rng.uniform(0.0, 1.0, n)
        score[rng.random(n) < 0.2] = rng.choice(list(levels.values()))
        devices = [f"d{k}" for k in rng.integers(0, 3, n)]
        states = {}
        for device in ("d0", "d1"):
            rules = {}
            for rule in rng.choice(rule_ids, size=int(rng.integers(0, 3)), replace=False).tolist():
                active = bool(rng.random() < 0.5)
                rules[rule] = RuleState(
                    active=active,
                    streak=int(rng.integers(0, 3)),
                    clear_streak=int(rng.integers(0, 2)) if active else 0,
                    severity=str(rng.choice(["warning", "critical"])) if active else None,
                    started_at="2024-01-01T00:00:00Z" if active else None,
                )
            states[device] = AlertState(rules)
        if trial % 7 == 0:  # a quiet group on devices new to the policy: nothing fires, no state
            columns = {name: np.full(n, np.nan) for name in columns}
            score = np.full(n, 0.0 if direction == "above" else 1.0)
            states = {}
        inputs = dict(
            spec=spec,
            signature=signature,
            thresholds=thresholds,
            model_version="m:1",
            columns=columns,
            matrix=np.column_stack([columns[f] for f in names]),
            score=score,
            contributions=None,
            devices=devices,
            timestamps=T0 + rng.integers(0, 4, n).astype(np.float64),  # ties within a device
            modes=[[None, "run", "heavy", "idle"][k] for k in rng.integers(0, 4, n)],
            late=rng.random(n) < 0.15,
            identity=[{"asset": f"a{i}", "line": None, "site": "s"} for i in range(n)],
            states=states,
        )
        # When both paths evaluate them
        small, full = evaluate(True, inputs), evaluate(False, inputs)
        # Then the alerts, per-row flags and states are the same
        dump = lambda e: json.dumps([a.model_dump(mode="json") for a in e.alerts])  # noqa: E731 (nan as NaN)
        assert dump(small) == dump(full), trial
        assert small.row_rules == full.row_rules and small.row_severity == full.row_severity, trial
        assert {d: s.to_dict() for d, s in small.states.items()} == {
            d: s.to_dict() for d, s in full.states.items()
        }, trial


EXAMPLE_ALERT_SPEC = """
name: alerts-small
sensors:
  - {name: temperature}
  - {name: vibration_rms}
  - {name: pressure}
  - {name: torque}
  - {name: speed}
derived:
  - {name: mech_power, expr: "torque * speed / 9549"}
windows:
  - {source: vibration_rms, size: 10, stats: [mean]}
alert_policy:
  rule_set_version: "1"
  clear_after: 2
  learned: {enabled: true, for_consecutive: 2, deadband_ratio: 0.1, top_contributors: 2}
  rules:
    - {id: overheating, severity: critical, when: {feature: temperature, op: ">", value: 95, deadband: 3}, for_consecutive: 2}
    - id: vibration_high_under_load
      severity: warning
      when: {all: [{feature: vibration_rms__mean_10, op: ">", value: 7.1}, {feature: mech_power, op: ">=", value: 1}]}
      for_consecutive: 1
      modes: [run, heavy]
    - {id: cold, severity: warning, when: {any: [{feature: temperature, op: "<=", value: 92}, {feature: pressure, op: "<", value: -50}]}}
    - {id: temperature_jump, severity: warning, when: {rate_of_change: temperature, max_per_second: 0.5}}
    - {id: pressure_out_of_band, severity: warning, when: {range: pressure, min: 1, max: 350, deadband: 5}, for_consecutive: 2}
"""


def random_expression(rng: np.random.Generator, depth: int) -> str:
    """An expression of the grammar derived features allow, over sensors a, b and c."""
    if depth == 0 or rng.random() < 0.25:
        return str(rng.choice(["a", "b", "c", "0", "1", "9549", "0.5"]))
    kind = int(rng.integers(0, 6))
    left, right = random_expression(rng, depth - 1), random_expression(rng, depth - 1)
    if kind < 3:
        return f"({left} {['+', '-', '*', '/'][int(rng.integers(0, 4))]} {right})"
    if kind == 3:
        return f"-{left}"
    if kind == 4:
        return f"{['abs', 'sqrt'][int(rng.integers(0, 2))]}({left})"
    return f"{['min', 'max'][int(rng.integers(0, 2))]}({left}, {right})"


def test_derived_expressions_on_python_floats_equal_numpy_where_finite() -> None:
    from zaindari.expressions import parse_expression

    # Given random expressions on values with zeros of both signs, negatives, huge magnitudes
    rng = np.random.default_rng(5)
    pool = np.array([0.0, -0.0, 1.0, -1.0, 2.5, 1e300, -1e300, 1e-300, 9549.0, 3.0])
    compared = ties = 0
    for trial in range(600):
        tree = parse_expression(random_expression(rng, 4))
        n = int(rng.integers(1, 9))
        columns = {
            k: np.where(rng.random(n) < 0.5, rng.choice(pool, n), rng.normal(0, 100, n)) for k in "abc"
        }
        # When both evaluate it
        with np.errstate(all="ignore"):
            expected = tree.evaluate(columns)
        got = tree.evaluate_rows(lambda name: columns[name].tolist(), n)  # noqa: B023
        if got is None:  # min/max met two zeros: the caller uses numpy
            ties += 1
            continue
        # Then the same values are finite, and those are the same bit for bit
        finite = np.isfinite(expected)
        assert np.isfinite(got).tolist() == finite.tolist(), trial
        assert same_bits(np.array(got)[finite], expected[finite]), trial
        compared += 1
    assert compared > 400 and ties > 0
