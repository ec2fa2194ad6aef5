"""The demo report's judgement of alerts against the ground truth, on hand-made alerts."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from zaindari.demo.plant import demo_plan
from zaindari.demo.report import Readback, analyse
from zaindari.demo.steps import DemoRun, StepResult
from zaindari.simulate import simulate_plant


@pytest.fixture(scope="module")
def run() -> DemoRun:
    plan = demo_plan(small=True)
    demo = DemoRun(plan=plan, root=Path("."), out_dir=Path("."), progress=lambda m: None, log=io.StringIO())
    demo.data = simulate_plant(plan.plant)
    return demo


def _alert(device: str, moment: datetime, kind: str = "raised", rule: str = "model_score") -> dict[str, Any]:
    stamp = moment.isoformat().replace("+00:00", "Z")
    return {
        "alert_id": f"{device}-{stamp}-{rule}",
        "kind": kind,
        "device_id": device,
        "rule_id": rule,
        "severity": "warning",
        "timestamp": stamp,
        "score": 20.0,
    }


def test_a_fault_is_detected_by_its_first_alert_between_onset_and_failure(run: DemoRun) -> None:
    # Given alerts on the bearing fault's machine: one before onset, two inside its window
    assert run.data is not None
    bearing = next(f for f in run.data.faults if f.kind == "bearing")
    alerts = [
        _alert(bearing.device_id, bearing.onset - timedelta(hours=1)),
        _alert(bearing.device_id, bearing.onset + timedelta(hours=3)),
        _alert(bearing.device_id, bearing.onset + timedelta(hours=5), kind="escalated"),
        _alert(bearing.device_id, bearing.failure + timedelta(minutes=10), rule="pressure_out_of_band"),
    ]
    # When the report judges them
    summary = analyse(run, Readback(alerts_eventbridge=alerts, alerts_sns=alerts), [])
    # Then the fault counts as found 3 h after onset, with the rest of its window as lead time
    found = next(f for f in summary["faults"] if f["device_id"] == bearing.device_id)
    assert found["detected"] and found["delay_after_onset_hours"] == 3.0
    assert found["lead_time_hours"] == pytest.approx(
        (bearing.lead_time - timedelta(hours=3)) / timedelta(hours=1)
    )
    assert found["alerts_in_fault"] == 2
    # and the alert before onset is false, the one after failure is counted apart
    false = summary["false_alerts"]
    assert (false["raised_on_healthy_machines"], false["raised_after_failure"], false["raised_in_fault"]) == (
        1,
        1,
        1,
    )
    # the other faults had no alert: reported missed, with why
    assert set(summary["faults_missed"]) == {f.device_id for f in run.data.faults} - {bearing.device_id}
    assert all(f["missed_because"] for f in summary["faults"] if not f["detected"])


def test_alerts_on_a_drifting_sensor_are_told_apart_and_a_lost_notification_shows(run: DemoRun) -> None:
    assert run.data is not None
    drift = run.data.drifts[0]
    device = drift.devices[0]
    before, during = (
        _alert(device, drift.start - timedelta(hours=2)),
        _alert(device, drift.start + timedelta(hours=1)),
    )
    summary = analyse(run, Readback(alerts_eventbridge=[before, during], alerts_sns=[before]), [])
    false = summary["false_alerts"]
    assert (false["raised_on_healthy_machines"], false["raised_during_sensor_drift"]) == (1, 1)
    assert [a["why"] for a in false["list"]] == ["false", "drift"]
    assert summary["alerts"]["same_alerts_on_both"] is False
    assert summary["alerts"]["only_on_eventbridge"] == 1


def test_steps_not_built_are_carried_with_their_reason(run: DemoRun) -> None:
    results = [
        StepResult("stream_live", "stream", "ok", 1.0),
        StepResult("drift_retraining", "drift", "not_run", reason="not built: drift is not on main"),
    ]
    summary = analyse(run, Readback(), results)
    assert summary["not_run"] == {"drift_retraining": "not built: drift is not on main"}
    assert summary["drift"]["status"] == "not_run" and summary["drift"]["reason"].startswith("not built")
    assert summary["models"]["retrained_version_in_production"] is None
