"""`zaindari demo --small` end to end: every built step runs against the embedded AWS, local Spark and
the real function adapters, and the report's numbers are the run's own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zaindari.demo.plant import demo_plan
from zaindari.demo.run import run_demo
from zaindari.simulate import simulate_plant

pytestmark = [pytest.mark.spark, pytest.mark.aws]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("demo") / "out"
    summary = run_demo(demo_plan(small=True), out, root=ROOT, progress=lambda message: None)
    return {"summary": summary, "out": out}


def test_every_built_step_runs_and_every_missing_one_says_why(demo: dict[str, Any]) -> None:
    steps = {s["name"]: s for s in demo["summary"]["steps"]}
    assert demo["summary"]["failed_steps"] == []
    for step in steps.values():
        if step["status"] == "not_run":
            assert step["reason"].startswith("not built: "), step
        else:
            assert step["status"] == "ok", step
    for name in (
        "embedded_aws",
        "train_first_model",
        "register_and_promote",
        "deploy",
        "historian_drop",
        "stream_live",
        "report",
    ):
        assert steps[name]["status"] == "ok"


def test_each_injected_fault_is_detected_or_its_miss_is_reported(demo: dict[str, Any]) -> None:
    summary = demo["summary"]
    truth = simulate_plant(demo_plan(small=True).plant).faults
    assert sorted(f["device_id"] for f in summary["faults"]) == sorted(f.device_id for f in truth)
    for fault in summary["faults"]:
        if fault["detected"]:
            assert fault["onset"] <= fault["first_alert"] < fault["failure"]
            assert 0 < fault["lead_time_hours"] <= fault["warning_available_hours"]
        else:
            assert fault["device_id"] in summary["faults_missed"]
            assert fault["missed_because"]
    # the trained model does find faults in this plant: a model that alerts on nothing fails here
    assert summary["faults_detected"] >= 2


def test_alerts_reached_sns_and_eventbridge_and_every_reading_was_scored(demo: dict[str, Any]) -> None:
    summary = demo["summary"]
    alerts, readings, plant = summary["alerts"], summary["readings"], summary["plant"]
    assert alerts["eventbridge"] > 0
    assert alerts["same_alerts_on_both"] and alerts["sns"] == alerts["eventbridge"]
    assert sum(alerts["live_by_kind"].values()) == alerts["eventbridge"] - alerts["file_alerts"]
    live = summary["steps"][[s["name"] for s in summary["steps"]].index("stream_live")]["detail"]
    assert sum(live["readings_sent"].values()) == readings["event_scores_in_lake"]
    assert set(live["readings_sent"]) == {"sqs", "iot", "http"} and min(live["readings_sent"].values()) > 0
    assert readings["event_scores_in_lake"] + readings["file_scores_in_lake"] == plant["readings_simulated"]
    assert readings["quarantined_objects"] == 0


def test_the_model_timeline_names_each_version_and_where_it_ran(demo: dict[str, Any]) -> None:
    models = demo["summary"]["models"]
    served = {(s["registry_version"], s["where"]) for s in models["served"]}
    assert {(1, "score_event (Lambda)"), (1, "score_batch (Lambda)")} <= served
    assert [h["action"] for h in models["history"]][:2] == ["register", "promote"]
    if demo["summary"]["not_run"].get("drift_retraining"):
        assert models["retrained_version_in_production"] is None
        assert models["production_at_end"] == 1
    else:  # once drift monitoring and retraining land: the challenger is what production runs
        assert models["retrained_version_in_production"] is True
    edge = demo["summary"]["edge"]
    if edge["status"] == "ok":
        assert edge["model_version"] == models["production_at_end"]
    else:
        assert edge["reason"]


def test_the_report_is_written_from_the_same_summary(demo: dict[str, Any]) -> None:
    out: Path = demo["out"]
    assert json.loads((out / "summary.json").read_text()) == json.loads(
        json.dumps(demo["summary"], default=str)
    )
    for name in ("report.html", "scores.png", "lead_times.png"):
        assert (out / name).stat().st_size > 1000
    page = (out / "report.html").read_text()
    for fault in demo["summary"]["faults"]:
        assert fault["device_id"] in page
    assert "not built" in page
