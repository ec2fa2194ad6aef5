"""The drift loop on moto, end to end: score_event writes window summaries to the lake ->
monitor_drift merges them and emits ``Zaindari Drift Detected`` -> an EventBridge rule on that
detail-type routes it (to an SQS inbox: moto cannot invoke a Lambda target) -> start_retraining,
fed exactly the routed event, starts the build job with the drift evidence recorded.

The resources come from template.yaml (``provision``). The model is a PCA bundle with a baseline
fitted on a simulated fleet (``tests.support.fit_fleet_bundle``); the thresholds are the ones the
unit tests calibrate on that fleet.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.functions.conftest import EmbeddedAws, drain, subscribe_alert_inboxes
from tests.functions.test_start_retraining import glue_job_runs_progress, items, job_runs
from tests.registry_support import PASSED_PARITY
from tests.support import (
    FLEET_START,
    LambdaContext,
    eventbridge_event,
    fit_fleet_bundle,
    fleet_readings,
    load_function,
)
from zaindari.infra.provision import Provisioned, provision

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"

pytestmark = pytest.mark.aws

DRIFT_ENV = {
    "ZAINDARI_DRIFT_WINDOW_HOURS": "1",
    "ZAINDARI_DRIFT_PSI": "1.0",
    "ZAINDARI_DRIFT_KS": "0.25",
    "ZAINDARI_DRIFT_SCORE_PSI": "1.0",
    "ZAINDARI_DRIFT_MIN_READINGS": "1000",
}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # parity.json: the registry accepts it (test_monitor_drift_follows_the_registry_production_alias)
    return fit_fleet_bundle(tmp_path_factory.mktemp("fleet"), extras={"parity.json": PASSED_PARITY})


@pytest.fixture
def stack(aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch, bundle_dir: Path) -> Iterator[Provisioned]:
    glue_job_runs_progress(aws, {"progression": "manual", "times": 1_000_000})
    provisioned = provision(aws.factory, ROOT / "template.yaml")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ZaindariTest")
    yield provisioned
    glue_job_runs_progress(aws, None)


def use_function_env(
    monkeypatch: pytest.MonkeyPatch, stack: Provisioned, function: str, **extra: str
) -> None:
    for name, value in {**stack.function_environment(function), **extra}.items():
        monkeypatch.setenv(name, value)


def schedule_at(when: str) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(json.loads((EVENTS / "schedule_drift_check.json").read_text()))
    data["time"] = when
    return data


def test_drift_in_scored_telemetry_reaches_start_retraining_once(
    aws: EmbeddedAws, stack: Provisioned, monkeypatch: pytest.MonkeyPatch, bundle_dir: Path
) -> None:
    inboxes = subscribe_alert_inboxes(aws, stack.arn("AlertTopic"), "Zaindari Drift Detected", "drift")
    lake = stack.name("LakeBucket")

    # Given one hour of fleet telemetry whose temperature and pressure sensors read off, scored by score_event
    use_function_env(monkeypatch, stack, "score_event", ZAINDARI_MODEL_PATH=str(bundle_dir))
    score_event = load_function("score_event")
    hour = FLEET_START + timedelta(days=30)
    readings = fleet_readings(1000, hour, drifted=True)
    for i in range(0, len(readings), 480):
        response = score_event.lambda_handler(
            eventbridge_event({"readings": readings[i : i + 480]}), LambdaContext()
        )
        assert response["readings_scored"] == 480
    listed = aws.factory.client("s3").list_objects_v2(Bucket=lake, Prefix="summaries/")["Contents"]
    keys = [o["Key"] for o in listed]
    assert len(keys) == 3 and all(
        k.startswith("summaries/date=2024-03-31/model=plant-anomaly/version=fleet-1/0000-0000-events-")
        for k in keys
    )

    # When monitor_drift runs after that hour
    use_function_env(monkeypatch, stack, "monitor_drift", ZAINDARI_MODEL_PATH=str(bundle_dir), **DRIFT_ENV)
    monitor = load_function("monitor_drift")
    check = monitor.lambda_handler(schedule_at("2024-03-31T01:05:00Z"), LambdaContext("monitor_drift"))

    # Then it emits one drift event naming the two sensors, routed by an EventBridge rule
    assert check["status"] == "triggered", check
    assert check["scored"] == 1440
    assert check["drifted_sensors"] == ["pressure", "temperature"]
    (routed,) = drain(aws, inboxes["eventbridge"])
    assert routed["detail-type"] == "Zaindari Drift Detected" and routed["source"] == "zaindari"
    detail = routed["detail"]
    assert detail["model"] == "plant-anomaly" and detail["model_version"] == "plant-anomaly:fleet-1"
    assert detail["evidence"]["window"] == {
        "start": "2024-03-31T00:00:00Z",
        "end": "2024-03-31T01:00:00Z",
        "readings": 1440,
    }
    for feature in detail["evidence"]["features"]:  # the shape of events/eventbridge_drift_detected.json
        assert (
            feature["psi"] >= feature["threshold"] == 1.0 and feature["ks"] >= feature["ks_threshold"] == 0.25
        )
    (people,) = drain(aws, inboxes["sns"])
    assert people["model"] == "plant-anomaly"

    # and start_retraining, fed the routed event, starts the build job and records the evidence
    use_function_env(monkeypatch, stack, "start_retraining")
    start_retraining = load_function("start_retraining")
    started = start_retraining.lambda_handler(routed, LambdaContext("start_retraining"))
    assert started["trigger"] == "drift"
    (outcome,) = started["outcomes"]
    assert outcome["status"] == "started"
    (run,) = job_runs(aws, stack, "BuildTrainingSetJob")
    assert run["Id"] == outcome["job_run_id"]
    record = items(aws, stack)[outcome["run_id"]]
    assert "temperature" in json.dumps(record["triggers"]) and "pressure" in json.dumps(record["triggers"])

    # and a second check inside the minimum interval stays quiet
    again = monitor.lambda_handler(schedule_at("2024-03-31T01:35:00Z"), LambdaContext("monitor_drift"))
    assert again["status"] == "suppressed"
    assert drain(aws, inboxes["eventbridge"]) == []


def test_monitor_drift_follows_the_registry_production_alias(
    aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch, bundle_dir: Path, tmp_path: Path
) -> None:
    """With ScoringModelReference set, monitor_drift checks the version ``production`` points at, and
    follows a promotion without a new container (alias TTL 0)."""
    from zaindari.infra.provision import seed_model_bundle
    from zaindari.infra.registry_store import build_model_registry
    from zaindari.settings import Settings

    reference = "registry://plant-anomaly/production"
    stack = provision(aws.factory, ROOT / "template.yaml", parameters={"ScoringModelReference": reference})
    for name in ("POWERTOOLS_TRACE_DISABLED", "POWERTOOLS_METRICS_NAMESPACE"):
        monkeypatch.setenv(name, "true" if name.endswith("DISABLED") else "ZaindariTest")
    env = stack.function_environment("monitor_drift")
    assert env["ZAINDARI_MODEL_PATH"] == reference
    settings = Settings.from_env({**env, "ZAINDARI_MODEL_CACHE_DIR": str(tmp_path / "registry-cache")})
    registry = build_model_registry(settings, aws.factory)
    uri = f"s3://{stack.name('LakeBucket')}/models/plant-anomaly/candidates/run-1/"
    seed_model_bundle(aws.factory, uri, bundle_dir)
    first = registry.register_version(uri)
    registry.set_alias("plant-anomaly", "production", first.version, reason="test: first production")

    # Given an hour of drifted telemetry scored by score_event following the same alias
    cache = {"ZAINDARI_MODEL_CACHE_DIR": str(tmp_path / "models"), "ZAINDARI_MODEL_ALIAS_TTL_SECONDS": "0"}
    use_function_env(monkeypatch, stack, "score_event", **cache)
    score_event = load_function("score_event")
    readings = fleet_readings(1000, FLEET_START + timedelta(days=30), drifted=True)
    for i in range(0, len(readings), 480):
        response = score_event.lambda_handler(
            eventbridge_event({"readings": readings[i : i + 480]}), LambdaContext()
        )
        assert response["readings_scored"] == 480
    version = score_event.scoring().model().model_version

    # When monitor_drift, given only the registry reference, runs after that hour
    use_function_env(monkeypatch, stack, "monitor_drift", **cache, **DRIFT_ENV)
    monitor = load_function("monitor_drift")
    check = monitor.lambda_handler(schedule_at("2024-03-31T01:05:00Z"), LambdaContext("monitor_drift"))

    # Then it assessed the production version's summaries, and found the drift
    assert check["model_version"] == version and check["status"] == "triggered", check
    assert check["scored"] == 1440 and check["drifted_sensors"] == ["pressure", "temperature"]

    # When another version is promoted, the same container checks that version (none of its summaries yet)
    second = registry.register_version(uri)
    registry.set_alias("plant-anomaly", "production", second.version, reason="test: promotion")
    later = monitor.lambda_handler(schedule_at("2024-03-31T01:10:00Z"), LambdaContext("monitor_drift"))
    assert later["model_version"] != version and later["status"] == "insufficient_data", later
    assert later["ignored_summaries"] == 3  # the first version's, not mixed into the second's check


def test_lake_summaries_one_object_per_batch_and_day_read_back_by_window(aws: EmbeddedAws) -> None:
    import dataclasses
    from datetime import UTC, datetime

    from zaindari.drift import Baseline, WindowSummary
    from zaindari.infra.drift_ports import S3SummaryStore

    s3 = aws.factory.client("s3")
    s3.create_bucket(Bucket="lake", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    baseline = Baseline(
        model_name="m",
        features=["x"],
        edges=[[0.0]],
        counts=[[1, 1]],
        score_edges=[1.0],
        score_counts=[1, 1],
        rows=2,
        sensors={"x": (None, None)},
        feature_sensors={"x": ["x"]},
    )
    empty = WindowSummary.empty(baseline, "m:3")
    midnight = int(datetime(2024, 5, 2, tzinfo=UTC).timestamp())
    # a backlog batch spanning 22:00 to 01:00: four windows over two days
    batch = [
        dataclasses.replace(empty, start=midnight + h * 3600, end=midnight + (h + 1) * 3600, readings=10 + h)
        for h in (-2, -1, 0, 1)
    ]
    store = S3SummaryStore(aws.factory, "lake")
    keys = store.write(batch, source="edge", name="b1")
    assert keys == [
        "summaries/date=2024-05-01/model=m/version=3/2200-2300-edge-b1.json",
        "summaries/date=2024-05-02/model=m/version=3/0000-0100-edge-b1.json",
    ]
    window = store.read(
        "m", datetime.fromtimestamp(midnight - 3600, tz=UTC), datetime.fromtimestamp(midnight + 3600, tz=UTC)
    )
    assert sorted(s.readings for s in window) == [9, 10]  # 23:00 and 00:00 only
    assert store.read("other", datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC)) == []
