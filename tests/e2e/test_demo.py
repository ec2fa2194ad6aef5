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


def test_every_step_runs(demo: dict[str, Any]) -> None:
    steps = [s["name"] for s in demo["summary"]["steps"]]
    assert demo["summary"]["failed_steps"] == [] and demo["summary"]["not_run"] == {}
    assert steps == [
        "embedded_aws",
        "simulate_plant",
        "train_first_model",
        "register_and_promote",
        "deploy",
        "historian_drop",
        "edge_box",
        "stream_live",
        "drift_retraining",
        "score_after_retraining",
        "edge_model_update",
        "report",
    ]
    assert {s["status"] for s in demo["summary"]["steps"]} == {"ok"}


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
    assert after["readings_streamed"] > 0 and after["readings_dropped"] > 0
    assert set(live["readings_sent"]) == {"sqs", "iot", "http"} and min(live["readings_sent"].values()) > 0
    # every simulated reading scored once: by score_event, score_batch or the edge box
    in_lake = (
        readings["event_scores_in_lake"] + readings["file_scores_in_lake"] + readings["edge_scores_in_lake"]
    )
    assert in_lake == plant["readings_simulated"]
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
    after = {s["registry_version"] for s in models["served"] if s["last"] >= drift["checked_at"][:19]}
    # the retrained version is what production, the functions, the endpoint and the edge box run
    assert drift["promoted"] and models["retrained_version_in_production"] is True
    assert models["production_at_end"] == challenger == 2
    assert {(challenger, "score_event (Lambda)"), (challenger, "score_batch (Lambda)")} <= served
    assert {(1, "edge box (zaindari edge serve)"), (2, "edge box (zaindari edge serve)")} <= served
    assert after == {challenger}
    assert deployed[(challenger, "sagemaker_endpoint")]["status"] == "deployed"
    edge = demo["summary"]["edge"]
    assert edge["status"] == "ok" and edge["model_version"] == challenger
    assert edge["applied"] == [str(challenger)] and edge["version_after_update"] == str(challenger)
    # and the cloud heard it from the box (its acknowledgement reached EventBridge)
    assert any(
        a["event"] == "model_applied" and a["version"] == str(challenger) and a["box_id"] == edge["box_id"]
        for a in edge["acks_on_eventbridge"]
    )


def test_the_edge_box_scored_offline_then_shipped_every_reading_once_and_its_alerts(
    demo: dict[str, Any],
) -> None:
    edge = demo["summary"]["edge"]
    offline = edge["offline"]
    # offline: everything it was sent was scored on the box and buffered (nothing left before the link)
    assert offline["sent"] == offline["scored"] > 0 and offline["rejected"] == 0
    assert (
        edge["buffered_when_link_came_back"]["scores"] > 0
        and edge["buffered_when_link_came_back"]["alert"] > 0
    )
    assert edge["buffered_at_end"] == {}
    # every reading sent to the box is in the lake exactly once
    assert edge["readings_sent"] == edge["readings_in_lake"] == edge["distinct_readings_in_lake"]
    assert edge["every_reading_once"] is True
    # its alerts reached EventBridge and SNS (the same ones), as many as it raised in its answers
    assert edge["alerts_on_eventbridge"] == edge["alerts_on_sns"] == edge["alerts_answered"] > 0
    assert edge["same_alerts_on_both"] is True


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
    assert drift["challenger"] == 2 and drift["registration"] == "promoted"
    assert drift["gate"]["outcome"] == "promoted" and drift["gate"]["reasons"] == ["gate passed"]
    # the maintenance log kept the known faults out of the training set, and anchored the gate
    windows = drift["maintenance_log"]["windows"]
    assert windows and build["summary"]["rows"]["rejected_by_stage"]["maintenance"] > 0
    shadow = drift["gate"]["numbers"]["shadow"]
    assert shadow["known_fault"]["scored"] > 0 and shadow["normal_scored"] > 0
    bound = shadow["bound"]
    assert (
        shadow["known_fault"]["challenger_alert_rate"] >= shadow["known_fault"]["champion_alert_rate"] - bound
    )
    assert shadow["challenger_alert_rate"] <= shadow["champion_alert_rate"] + bound


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
    assert "not built" not in page and "Edge box" in page and "maintenance log" in page
