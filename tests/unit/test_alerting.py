"""Hybrid alerting: expert rules and learned thresholds, hysteresis, de-duplication, explanations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from zaindari.alerting import LEARNED_RULE_ID, AlertState, evaluate_alerts
from zaindari.bundle import FeatureStats, LearnedThresholds, ModelBundle, OutputSpec, Signature, TensorSpec
from zaindari.spec import ModelSpec, load_spec

SPEC_YAML = """
name: rules-test
sensors:
  - {name: temperature}
  - {name: vibration}
  - {name: pressure}
alert_policy:
  rule_set_version: "7"
  clear_after: 2
  learned: {enabled: %(learned)s, for_consecutive: %(learned_n)s, deadband_ratio: 0.1, top_contributors: 2}
  rules: %(rules)s
"""


def make_spec(rules: str = "[]", learned: bool = False, learned_n: int = 1) -> ModelSpec:
    text = SPEC_YAML % {"rules": rules, "learned": str(learned).lower(), "learned_n": learned_n}
    return load_spec(text)


def signature_for(spec: ModelSpec) -> Signature:
    n = len(spec.model_features)
    return Signature(
        inputs=[TensorSpec(name="features", shape=[None, n])],
        features=spec.model_features,
        outputs=[OutputSpec(name="score", shape=[None], role="score")],
        feature_stats=FeatureStats(mean=[50.0, 2.0, 5.0], std=[5.0, 0.5, 1.0]) if n == 3 else None,
    )


THRESHOLDS = LearnedThresholds(levels={"warning": 10.0, "critical": 20.0}, method="test levels")


def run(
    spec: ModelSpec,
    columns: dict[str, Sequence[float]],
    *,
    score: Sequence[float] | None = None,
    modes: Sequence[str | None] | None = None,
    devices: Sequence[str] | None = None,
    timestamps: Sequence[float] | None = None,
    late: Sequence[bool] | None = None,
    states: dict[str, AlertState] | None = None,
    contributions: Any = None,
) -> Any:
    n = len(next(iter(columns.values())))
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    matrix = np.column_stack([cols[f] for f in spec.model_features])
    return evaluate_alerts(
        spec=spec,
        signature=signature_for(spec),
        thresholds=THRESHOLDS,
        model_version="rules-test:3",
        columns=cols,
        matrix=matrix,
        score=np.asarray(score if score is not None else [0.0] * n, dtype=np.float64),
        contributions=contributions,
        devices=list(devices or ["d1"] * n),
        timestamps=np.asarray(timestamps if timestamps is not None else np.arange(n) * 60.0 + 1.7e9),
        modes=list(modes or ["run"] * n),
        late=np.asarray(late if late is not None else [False] * n, dtype=bool),
        states=states,
    )


def kinds(evaluation: Any) -> list[tuple[str, str, str]]:
    return [(a.rule_id, a.kind, a.timestamp[-9:-1]) for a in evaluation.alerts]


def series(values: Sequence[float]) -> dict[str, list[float]]:
    n = len(values)
    return {"temperature": list(values), "vibration": [2.0] * n, "pressure": [5.0] * n}


HOT = "[{id: hot, severity: critical, when: {feature: temperature, op: '>', value: 90, deadband: 5}, for_consecutive: %d}]"


@pytest.mark.parametrize(
    ("values", "for_consecutive", "expected"),
    [
        # never above: nothing
        ([80, 85, 89, 90], 1, []),
        # one reading above, raise at once, then two clear readings resolve it
        ([80, 95, 80, 80, 80], 1, [("hot", "raised", 1), ("hot", "resolved", 3)]),
        # needs 3 in a row: a broken streak raises nothing
        ([95, 95, 80, 95, 95, 80], 3, []),
        ([95, 95, 95, 95, 80, 80], 3, [("hot", "raised", 2), ("hot", "resolved", 5)]),
        # deadband: 87 is below 90 but above 90 - 5, so the alert holds (no flapping)
        ([95, 87, 88, 86, 91, 80, 80], 1, [("hot", "raised", 0), ("hot", "resolved", 6)]),
        # one clear reading is not enough to resolve (clear_after = 2)
        ([95, 80, 95, 80, 95], 1, [("hot", "raised", 0)]),
        # >= is not > : 90 exactly does not fire
        ([90, 90, 90], 1, []),
    ],
)
def test_threshold_rule_hysteresis_table(
    values: list[float], for_consecutive: int, expected: list[Any]
) -> None:
    # Given a threshold rule with a deadband, When a device's temperature follows `values`,
    spec = make_spec(HOT % for_consecutive)
    evaluation = run(spec, series(values))
    # Then exactly the expected alerts are raised and resolved, at the expected readings
    got = [(a.rule_id, a.kind, round((_epoch(a.timestamp) - 1.7e9) / 60)) for a in evaluation.alerts]
    assert got == expected


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_state_carries_across_batches_so_a_redelivered_abnormal_device_raises_once() -> None:
    spec = make_spec(HOT % 2)
    first = run(spec, series([95]), timestamps=[1.7e9])
    assert first.alerts == []  # one reading of two needed
    assert first.states["d1"].rules["hot"].streak == 1
    second = run(
        spec, series([96, 97, 98]), timestamps=[1.7e9 + 60, 1.7e9 + 120, 1.7e9 + 180], states=first.states
    )
    assert [(a.kind, a.timestamp) for a in second.alerts] == [("raised", "2023-11-14T22:14:20Z")]
    # the device stays hot in the next batch: no second alert
    third = run(spec, series([99, 99]), timestamps=[1.7e9 + 240, 1.7e9 + 300], states=second.states)
    assert third.alerts == []
    assert third.states["d1"].active_rules == ["hot"]
    # and recovers: one resolved, carrying the same alert id as the raise
    fourth = run(spec, series([70, 70]), timestamps=[1.7e9 + 360, 1.7e9 + 420], states=third.states)
    assert [a.kind for a in fourth.alerts] == ["resolved"]
    assert fourth.alerts[0].alert_id == second.alerts[0].alert_id
    assert fourth.states["d1"].rules == {}


def test_input_states_are_not_mutated() -> None:
    spec = make_spec(HOT % 1)
    before = run(spec, series([95])).states
    snapshot = before["d1"].to_dict()
    run(spec, series([70, 70]), timestamps=[1.7e9 + 60, 1.7e9 + 120], states=before)
    assert before["d1"].to_dict() == snapshot


def test_range_rule_fires_outside_band_and_names_both_bounds() -> None:
    spec = make_spec("[{id: band, when: {range: pressure, min: 2, max: 8}}]")
    cols = {"temperature": [50] * 4, "vibration": [2] * 4, "pressure": [5, 9, 1, 5]}
    evaluation = run(spec, cols)
    assert evaluation.row_rules == [[], ["band"], ["band"], []]
    raised = evaluation.alerts[0]
    assert raised.thresholds == {"pressure.min": 2.0, "pressure.max": 8.0}
    assert raised.observed == {"pressure": 9.0}
    assert raised.message == "pressure outside [2, 8]"


def test_rate_of_change_rule_uses_rate_column() -> None:
    spec = load_spec(
        """
name: rate
sensors: [{name: temperature}]
alert_policy:
  learned: {enabled: false}
  rules: [{id: jump, when: {rate_of_change: temperature, max_per_second: 0.5}}]
"""
    )
    cols = {"temperature": [50, 80, 81], "temperature__rate": [float("nan"), 0.5001, -0.6]}
    evaluation = run(spec, cols)
    assert evaluation.row_rules == [[], ["jump"], ["jump"]]
    assert evaluation.alerts[0].observed["temperature.rate_per_second"] == pytest.approx(0.5001)


@pytest.mark.parametrize(
    ("combinator", "expected_rows"),
    [("all", [False, False, False, True]), ("any", [False, True, True, True])],
)
def test_and_or_combinations(combinator: str, expected_rows: list[bool]) -> None:
    spec = make_spec(
        "[{id: combo, when: {%s: [{feature: temperature, op: '>', value: 90}, {feature: vibration, op: '>=', value: 7}]}}]"
        % combinator
    )
    cols = {"temperature": [50, 95, 50, 95], "vibration": [2, 2, 7, 7], "pressure": [5] * 4}
    evaluation = run(spec, cols)
    assert [bool(r) for r in evaluation.row_rules] == expected_rows


def test_mode_condition_limits_rule_to_listed_modes() -> None:
    spec = make_spec("[{id: hot_run, when: {feature: temperature, op: '>', value: 90}, modes: [run]}]")
    evaluation = run(spec, series([95, 95, 95]), modes=["idle", "setup", None])
    assert evaluation.alerts == []
    evaluation = run(spec, series([95, 95, 95]), modes=["idle", "run", "idle"])
    assert [a.kind for a in evaluation.alerts] == ["raised"]
    assert evaluation.alerts[0].mode == "run"


def test_learned_threshold_raises_escalates_and_resolves_with_severity() -> None:
    spec = make_spec(learned=True, learned_n=2)
    scores = [5, 12, 12, 25, 25, 9.5, 8, 8]  # 9.5 is inside the 10% deadband of 10: holds
    evaluation = run(spec, series([50] * len(scores)), score=scores)
    got = [(a.kind, a.severity) for a in evaluation.alerts]
    assert got == [("raised", "warning"), ("escalated", "critical"), ("resolved", "critical")]
    assert [a.rule_id for a in evaluation.alerts] == [LEARNED_RULE_ID] * 3
    assert evaluation.row_severity == [None, "warning", "warning", "critical", "critical", None, None, None]
    raised = evaluation.alerts[0]
    assert raised.source == "learned"
    assert raised.thresholds == {"score.warning": 10.0, "score.critical": 20.0}
    assert raised.message.startswith("model score 12 vs learned warning threshold 10")


def test_learned_threshold_below_direction_for_remaining_useful_life() -> None:
    spec = make_spec(learned=True)
    thresholds = LearnedThresholds(levels={"warning": 50.0, "critical": 10.0}, direction="below")
    cols = {k: np.asarray(v, dtype=float) for k, v in series([50] * 4).items()}
    evaluation = evaluate_alerts(
        spec=spec,
        signature=signature_for(spec),
        thresholds=thresholds,
        model_version="m:1",
        columns=cols,
        matrix=np.column_stack([cols[f] for f in spec.model_features]),
        score=np.array([100.0, 40.0, 5.0, 6.0]),
        contributions=None,
        devices=["d1"] * 4,
        timestamps=np.arange(4) * 60.0 + 1.7e9,
        modes=["run"] * 4,
        late=np.zeros(4, dtype=bool),
    )
    assert [(a.kind, a.severity) for a in evaluation.alerts] == [
        ("raised", "warning"),
        ("escalated", "critical"),
    ]


def test_alert_explains_rule_sensor_model_and_rule_set_versions() -> None:
    spec = make_spec(HOT % 1)
    alert = run(spec, series([95])).alerts[0]
    assert alert.rule_id == "hot"
    assert alert.source == "expert"
    assert alert.severity == "critical"
    assert alert.sensors == ["temperature"]
    assert alert.observed == {"temperature": 95.0}
    assert alert.thresholds == {"temperature": 90.0}
    assert alert.model_version == "rules-test:3"
    assert alert.rule_set_version == "7"
    assert alert.message == "temperature > 90"


def test_learned_alert_names_top_contributing_sensors_from_model_contributions() -> None:
    spec = make_spec(learned=True)
    contributions = np.array([[0.5, 8.0, 3.5]])  # vibration explains most of the score
    alert = run(spec, series([50]), score=[12.0], contributions=contributions).alerts[0]
    assert [(c.feature, c.share) for c in alert.top_contributors] == [
        ("vibration", 0.6667),
        ("pressure", 0.2917),
    ]
    assert alert.sensors == ["pressure", "vibration"]


def test_learned_alert_falls_back_to_standardised_deviation_without_contributions() -> None:
    spec = make_spec(learned=True)
    # feature_stats mean [50, 2, 5], std [5, 0.5, 1]: z = [0, 0, 4] -> pressure
    cols = {"temperature": [50.0], "vibration": [2.0], "pressure": [9.0]}
    alert = run(spec, cols, score=[12.0]).alerts[0]
    assert alert.top_contributors[0].feature == "pressure"
    assert alert.top_contributors[0].share == 1.0
    assert alert.top_contributors[0].value == 9.0


def test_devices_are_independent_and_rows_in_any_order() -> None:
    spec = make_spec(HOT % 2)
    devices = ["a", "b", "a", "b", "a"]
    temps = [95, 95, 95, 50, 50]
    stamps = [1.7e9 + 60 * k for k in (0, 0, 1, 1, 2)]
    order = [4, 3, 2, 1, 0]  # reversed input order: the state machine sorts by time per device
    evaluation = run(
        spec,
        series([temps[k] for k in order]),
        devices=[devices[k] for k in order],
        timestamps=[stamps[k] for k in order],
    )
    assert [(a.device_id, a.kind) for a in evaluation.alerts] == [("a", "raised")]
    assert evaluation.states["b"].rules == {}


def test_late_rows_are_flagged_but_do_not_drive_alert_state() -> None:
    spec = make_spec(HOT % 1)
    evaluation = run(spec, series([95, 50]), late=[True, False])
    assert evaluation.alerts == []
    assert evaluation.row_rules == [["hot"], []]


def test_alert_state_round_trips_through_json() -> None:
    import json

    spec = make_spec(HOT % 1)
    states = run(spec, series([95])).states
    restored = AlertState.from_dict(json.loads(json.dumps(states["d1"].to_dict())))
    assert restored.to_dict() == states["d1"].to_dict()
    assert restored.active_rules == ["hot"]


def test_a_table_without_modes_still_alerts_and_mode_rules_do_not_fire(bundle: ModelBundle) -> None:
    # file drops may carry no mode column: score_table passes no mode per row
    import numpy as np

    from zaindari.features import SensorTable
    from zaindari.pipeline import score_table

    n = 4
    table = SensorTable(
        device_id=np.array(["d"] * n, dtype=object),
        timestamp=np.arange(n) * 60.0 + 1.7e9,
        sensors={
            "temperature": np.full(n, 130.0),
            "vibration_rms": np.full(n, 20.0),
            "motor_current": np.full(n, 40.0),
            "pressure": np.full(n, 150.0),
            "speed": np.full(n, 1500.0),
            "torque": np.full(n, 80.0),
        },
        mode=None,
    )
    result = score_table(bundle, table)
    rules = {a.rule_id for a in result.alerts}
    assert "overheating" in rules  # no mode condition: fires
    assert "vibration_high_under_load" not in rules  # only in modes run/heavy: unknown mode, no fire
