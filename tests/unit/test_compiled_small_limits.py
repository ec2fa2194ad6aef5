"""The compiled small-group paths at their limits: trees deeper than Python's nesting limit, a
tree that cannot be compiled, large windows, zeros in min/max, one state given for two devices."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.unit.test_small_batches import same_bits
from zaindari import alerting, expressions, features
from zaindari.alerting import AlertState, evaluate_alerts
from zaindari.bundle import LearnedThresholds, OutputSpec, Signature, TensorSpec
from zaindari.expressions import parse_expression
from zaindari.features import SensorTable, compute_features
from zaindari.spec import ExpertRule, load_spec

T0 = 1.7e9

# the reviewer's trees: each fits the 500-character limit and nests past ~200 parentheses
DEEP_EXPRESSIONS = ["+".join(["a"] * 201), "-" * 250 + "a", "a*" * 150 + "a", "-" * 199 + "a"]


def table(values: list[float]) -> SensorTable:
    n = len(values)
    return SensorTable(
        device_id=np.array(["d"] * n, dtype=object),
        timestamp=T0 + np.arange(n, dtype=float),
        sensors={"a": np.array(values, dtype=np.float64)},
    )


@pytest.mark.parametrize("text", DEEP_EXPRESSIONS)
def test_deep_expressions_score_small_groups_as_numpy_does(text: str) -> None:
    # Given a derived feature nesting deeper than Python compiles as one expression
    assert len(text) <= 500
    spec = load_spec({"name": "n", "sensors": [{"name": "a"}], "derived": [{"name": "s", "expr": text}]})
    values = [1.0, 2.0, -0.5]
    # When a small group (the compiled path) and the numpy path compute it
    small = compute_features(spec, table(values)).columns["s"]
    expected = spec.derived[0].tree.evaluate({"a": np.array(values)})
    # Then the small group scores, with numpy's numbers bit for bit, and again from the cache
    assert same_bits(small, expected)
    assert same_bits(compute_features(spec, table(values)).columns["s"], expected)


def test_a_tree_python_cannot_compile_is_evaluated_by_numpy_and_not_compiled_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a tree whose generated code Python refuses (the compiler's error, injected)
    tree = parse_expression("min(a, b) * 2 - sqrt(b) / a")
    calls = []

    def refuse(t: Any) -> Any:
        calls.append(t)
        raise SyntaxError("too many nested parentheses")

    monkeypatch.setattr(expressions, "_row_source", refuse)
    columns = {"a": np.array([0.0, 1.5, -2.0]), "b": np.array([-0.0, 4.0, 9.0])}
    # When it is evaluated on a few rows, twice
    got = [tree.evaluate_rows(lambda name: columns[name].tolist(), 3) for _ in range(2)]
    # Then numpy gives the values (zeros of both signs included) and compiling was tried once
    with np.errstate(all="ignore"):
        expected = tree.evaluate(columns)
    assert all(g is not None and same_bits(g, expected) for g in got)
    assert calls == [tree]
    const = parse_expression("2 * 3")
    assert const.evaluate_rows(lambda name: [], 4) == [6.0] * 4


def deep_rule(depth: int, kind: str) -> ExpertRule:
    cond: dict[str, Any] = {
        "any": [
            {"feature": "x", "op": ">", "value": 1.0, "deadband": 0.5},
            {"range": "y", "min": 0.0, "max": 10.0, "deadband": 1.0},
            {"rate_of_change": "x", "max_per_second": 2.0},
        ]
    }
    for _ in range(depth):
        cond = {kind: [cond, {"feature": "y", "op": "<=", "value": 20.0}]}
    return ExpertRule.model_validate(
        {"id": f"r{depth}{kind}", "severity": "warning", "when": cond, "modes": ["run"]}
    )


@pytest.mark.parametrize(("depth", "kind"), [(199, "all"), (250, "any"), (3, "all")])
def test_deep_rules_give_the_numpy_flags_compiled_and_by_the_numpy_fallback(depth: int, kind: str) -> None:
    # Given a rule nesting all:/any: deeper than Python compiles as one expression
    rule = deep_rule(depth, kind)
    rng = np.random.default_rng(depth)
    n = 8
    columns = {
        "x": rng.choice([0.0, 0.7, 1.0, 1.3, np.nan], n),
        "y": rng.choice([-1.0, 0.5, 9.5, 11.0, 25.0, np.nan], n),
        "x__rate": rng.choice([-3.0, 1.0, 2.0, np.nan], n),
    }
    modes = [["run", "idle", ""][k] for k in rng.integers(0, 3, n)]
    in_mode = np.array([m == "run" for m in modes])
    with np.errstate(invalid="ignore"):
        fire = alerting._condition(rule.when, columns, hold=False) & in_mode
        hold = (alerting._condition(rule.when, columns, hold=True) | fire) & in_mode
    # When its flags are compiled, and when they come from the numpy fallback
    for rows in (alerting._rule_rows(rule), alerting._rule_rows_numpy(rule, frozenset({"run"}))):
        values = [columns[name].tolist() for name in rows.columns]
        # Then both give numpy's flags
        assert rows.fire(*values, modes) == fire.tolist()
        assert rows.hold(*values, modes) == hold.tolist()


def test_a_rule_python_cannot_compile_still_alerts_on_small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a rule whose generated code Python refuses (the compiler's error, injected)
    def refuse(rule: Any, allowed: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded during compilation")

    monkeypatch.setattr(alerting, "_rule_rows_compiled", refuse)
    spec = load_spec(
        {
            "name": "r",
            "sensors": [{"name": "x"}],
            "alert_policy": {
                "rules": [
                    {"id": "hot", "severity": "critical", "when": {"feature": "x", "op": ">", "value": 1}}
                ]
            },
        }
    )
    signature = Signature(
        inputs=[TensorSpec(name="features", shape=[None, 1])],
        features=["x"],
        outputs=[OutputSpec(name="score", shape=[None], role="score")],
    )
    x = np.array([0.5, 2.0, 3.0])
    # When a small group is evaluated
    result = evaluate_alerts(
        spec=spec,
        signature=signature,
        thresholds=LearnedThresholds(levels={"warning": 0.5}, direction="above", method="test"),
        model_version="m:1",
        columns={"x": x},
        matrix=x[:, None],
        score=np.zeros(3),
        contributions=None,
        devices=["d", "d", "d"],
        timestamps=T0 + np.arange(3.0),
        modes=[None] * 3,
        late=np.zeros(3, dtype=bool),
        identity=None,
        states={"d": AlertState()},
    )
    # Then the rule fires on the rows above its threshold (by the numpy fallback)
    assert result.row_rules == [[], ["hot"], ["hot"]]
    assert [a.rule_id for a in result.alerts] == ["hot"]


def test_windows_above_the_compiled_limit_are_summed_value_by_value_as_numpy_does() -> None:
    # Given full windows just above the compiled limit
    size = features.COMPILED_WINDOW_MAX + 9
    rng = np.random.default_rng(3)
    windows = rng.normal(0.0, 1e3, (3, size))
    stats = ["mean", "std", "slope", "ewm"]
    features._full_window_stats.cache_clear()
    # When their statistics are taken on Python lists
    got = features.window_statistics_rows(windows.tolist(), stats, 0.2)
    # Then they equal numpy's, and no window of that size was compiled
    expected = features.window_statistics(windows, stats, 0.2)
    for stat in stats:
        assert same_bits(got[stat], expected[stat]), stat
    assert features._full_window_stats.cache_info().currsize == 0
    assert features._full_window_stats.cache_info().maxsize <= 64


def test_min_and_max_of_equal_signed_zeros_stay_on_python_floats() -> None:
    # Given min/max of zeros of the same sign, and of different signs
    columns = {"a": np.array([0.0, -0.0]), "b": np.array([0.0, -0.0])}
    for text in ("min(a, b)", "max(a, b)"):
        tree = parse_expression(text)
        # When evaluated on Python floats: the same signs are numpy's numbers (no fallback)
        got = tree.evaluate_rows(lambda name: columns[name].tolist(), 2)
        assert got is not None and same_bits(got, tree.evaluate(columns))
        # and only 0.0 against -0.0 is left to numpy
        assert tree.evaluate_rows(lambda name: [0.0] if name == "a" else [-0.0], 1) is None


def test_one_state_object_given_for_two_devices_is_not_shared_by_them(tmp_path_factory: Any) -> None:
    from tests.support import plant_readings
    from zaindari.bundle import load_bundle
    from zaindari.contract import parse_readings
    from zaindari.example_model import example_model_bundle
    from zaindari.pipeline import DeviceState, score_readings

    # Given a small group of two devices and one state object given for both (owned by the caller)
    bundle = load_bundle(example_model_bundle(tmp_path_factory.mktemp("bundles")))
    raw = plant_readings(0)
    first, second = sorted({r["device_id"] for r in raw})[:2]
    readings = parse_readings([r for r in raw if r["device_id"] in (first, second)][:4]).readings
    shared = DeviceState()
    # When the group is scored with owned states
    owned = score_readings(bundle, readings, {first: shared, second: shared}, owned=True)
    # Then each device has its own state, with its own history (as without owned)
    copied = score_readings(bundle, readings, {first: DeviceState(), second: DeviceState()})
    assert owned.states[first] is not owned.states[second]
    for device in (first, second):
        assert owned.states[device].history.to_dict() == copied.states[device].history.to_dict()
    assert owned.states[first].history.to_dict() != owned.states[second].history.to_dict()
