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
        "drift_retraining",
        "score_after_retraining",
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
    live = _step(summary, "stream_live")
    after = _step(summary, "score_after_retraining")
    streamed = sum(live["readings_sent"].values()) + sum(after["stream"]["readings_sent"].values())
    assert streamed == readings["event_scores_in_lake"]
    assert after["readings_streamed"] + after["readings_dropped"] > 0
    assert set(live["readings_sent"]) == {"sqs", "iot", "http"} and min(live["readings_sent"].values()) > 0
    assert readings["event_scores_in_lake"] + readings["file_scores_in_lake"] == plant["readings_simulated"]
    assert readings["quarantined_objects"] == 0


def test_the_model_timeline_names_each_version_and_where_it_ran(demo: dict[str, Any]) -> None:
    models = demo["summary"]["models"]
    served = {(s["registry_version"], s["where"]) for s in models["served"]}
    assert {(1, "score_event (Lambda)"), (1, "score_batch (Lambda)")} <= served
    assert [h["action"] for h in models["history"]][:2] == ["register", "promote"]
    # deploy_model put the first production version on the SageMaker endpoint and sent the edge update
    deployed = {(d["registry_version"], d["target"]): d for d in models["deployed"]}
    assert deployed[(1, "sagemaker_endpoint")]["status"] == "deployed"
    assert deployed[(1, "edge")]["version"] == 1
    drift = demo["summary"]["drift"]
    challenger = drift["challenger"]
    after = {s["registry_version"] for s in models["served"] if s["last"] > drift["checked_at"]}
    if drift["promoted"]:  # the retrained version is what production and the functions run
        assert models["retrained_version_in_production"] is True
        assert models["production_at_end"] == challenger
        assert {(challenger, "score_event (Lambda)"), (challenger, "score_batch (Lambda)")} <= served
        assert deployed[(challenger, "sagemaker_endpoint")]["status"] == "deployed"
    else:  # refused: the reason and its numbers are reported, production and the functions stay
        assert drift["gate"]["outcome"] != "promoted" and drift["gate"]["reasons"]
        assert drift["gate"]["numbers"]["challenger"] == challenger
        assert models["retrained_version_in_production"] is False
        assert models["production_at_end"] == 1 and after == {1}
    edge = demo["summary"]["edge"]
    if edge["status"] == "ok":
        assert edge["model_version"] == models["production_at_end"]
    else:
        assert edge["reason"]


def _step(summary: dict[str, Any], name: str) -> dict[str, Any]:
    detail: dict[str, Any] = next(s for s in summary["steps"] if s["name"] == name)["detail"]
    return detail


def test_drift_monitoring_started_a_retraining_with_evidence_and_the_gate_decided(
    demo: dict[str, Any],
) -> None:
    drift = demo["summary"]["drift"]
    assert drift["check"]["status"] == "triggered"
    features = drift["evidence"]["evidence"]["features"]
    assert features and {f["feature"] for f in features} == set(drift["check"]["drifted_features"])
    for feature in features:
        assert feature["psi"] >= feature["threshold"] and feature["ks"] >= feature["ks_threshold"]
    # the two Glue jobs start_retraining started ran with its arguments: the set it built is the input trained on
    build, train = drift["jobs"]["build_training_set"], drift["jobs"]["train_model"]
    assert build["arguments"]["--start"] == drift["retraining_run"]["data_range"]["start"]
    assert train["arguments"]["--input"] == build["arguments"]["--output"]
    assert train["summary"]["rows"]["trained_on"] > 0
    assert drift["retraining_run"]["closed"] == "closed"
    assert drift["challenger"] == 2 and drift["registration"] in ("promoted", "kept_in_staging")
    assert drift["gate"]["outcome"] in ("promoted", "refused") and drift["gate"]["numbers"]


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
