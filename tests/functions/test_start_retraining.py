"""start_retraining on Lambda, against moto in server mode, fed the events/ files.

The resources come from template.yaml itself (``provision``): the Glue jobs, the runs table, the
alert topic, and the function's environment. moto records Glue job runs but runs no script and
emits no "Glue Job State Change" events, so the tests send those events themselves: the file
``events/eventbridge_glue_job_succeeded.json`` with the job run id of the run under test.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.functions.conftest import EmbeddedAws, drain, subscribe_alert_inboxes
from tests.support import LambdaContext, load_function
from zaindari.infra.provision import Provisioned, provision

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"

pytestmark = pytest.mark.aws


def event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def glue_job_runs_progress(aws: EmbeddedAws, transition: dict[str, Any] | None) -> None:
    """How moto moves Glue job runs on (STARTING, RUNNING, SUCCEEDED) as they are read; None: its default.

    moto's default makes a run SUCCEEDED at its first read, so start_retraining, which reads a held
    run's state to notice missed events, would see every run end at once.
    """
    action = "set-transition" if transition else "unset-transition"
    body = {"model_name": "glue::job_run", **({"transition": transition} if transition else {})}
    request = urllib.request.Request(
        f"{aws.endpoint_url}/moto-api/state-manager/{action}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as response:
        assert response.status == 201


@pytest.fixture
def stack(aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Provisioned]:
    """template.yaml provisioned in a clean moto; the function's environment as the template sets it.

    Glue job runs stay RUNNING until the test sends their state-change event (as on AWS).
    """
    glue_job_runs_progress(aws, {"progression": "manual", "times": 1_000_000})
    provisioned = provision(aws.factory, ROOT / "template.yaml")
    for name, value in provisioned.function_environment("start_retraining").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ZAINDARI_RETRAIN_BACKOFF_SECONDS", "0.01")  # the real waits are 1 s, 2 s
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ZaindariTest")
    yield provisioned
    glue_job_runs_progress(aws, None)


@pytest.fixture
def app(stack: Provisioned) -> ModuleType:
    return load_function("start_retraining")


@pytest.fixture
def inboxes(aws: EmbeddedAws, stack: Provisioned) -> dict[str, str]:
    """SQS queues subscribed to the alert topic and to an EventBridge rule for retraining alerts."""
    return subscribe_alert_inboxes(
        aws, stack.arn("AlertTopic"), "Zaindari Retraining Failed", "retraining-alerts"
    )


def job_runs(aws: EmbeddedAws, stack: Provisioned, job: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = aws.factory.client("glue").get_job_runs(JobName=stack.name(job))["JobRuns"]
    return runs


def items(aws: EmbeddedAws, stack: Provisioned, model: str = "plant-anomaly") -> dict[str, dict[str, Any]]:
    """The runs table's items of ``model`` by run_id, attribute values unwrapped."""
    response = aws.factory.client("dynamodb").query(
        TableName=stack.name("RetrainingRunsTable"),
        KeyConditionExpression="model = :m",
        ExpressionAttributeValues={":m": {"S": model}},
        ConsistentRead=True,
    )
    return {i["run_id"]["S"]: {k: next(iter(v.values())) for k, v in i.items()} for i in response["Items"]}


def active_run(aws: EmbeddedAws, stack: Provisioned, model: str = "plant-anomaly") -> str | None:
    lock = items(aws, stack, model).get("LOCK", {})
    return lock.get("active_run")


def glue_event(job_name: str, job_run_id: str, state: str = "SUCCEEDED", message: str = "") -> dict[str, Any]:
    data = copy.deepcopy(event("eventbridge_glue_job_succeeded.json"))
    data["detail"].update(jobName=job_name, jobRunId=job_run_id, state=state)
    if message:
        data["detail"]["message"] = message
    return data


def http_body(response: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response["body"])
    return body


# ------------------------------------------------------------------------------------- triggers


def test_schedule_starts_the_build_job_for_each_scheduled_model_on_the_lookback_window(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    response = app.lambda_handler(event("schedule_weekly.json"), LambdaContext("start_retraining"))
    assert response["trigger"] == "schedule"
    (outcome,) = response["outcomes"]
    assert outcome["status"] == "started" and outcome["model"] == "plant-anomaly"

    (run,) = job_runs(aws, stack, "BuildTrainingSetJob")
    assert run["Id"] == outcome["job_run_id"]
    lake = stack.name("LakeBucket")
    args = run["Arguments"]
    # the job's default arguments (from the template) plus the run's own
    assert args["--start"] == "2026-10-20" and args["--end"] == "2026-11-16"  # 28 days up to the trigger
    assert args["--spec"] == f"s3://{lake}/specs/plant-anomaly.yaml"
    assert args["--output"] == f"s3://{lake}/training/sets/plant-anomaly/{outcome['run_id']}/"
    assert args["--lake"] == f"s3://{lake}"
    assert args["--additional-python-modules"].endswith("/artifacts/wheels/zaindari-0.1.0-py3-none-any.whl")

    stored = items(aws, stack)
    assert stored["LOCK"]["active_run"] == outcome["run_id"]
    record = stored[outcome["run_id"]]
    assert record["status"] == "running" and record["job_run_id"] == run["Id"]
    assert [json.loads(t["S"])["trigger"] for t in record["triggers"]] == ["schedule"]


def test_drift_event_starts_a_run_and_keeps_the_evidence(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    response = app.lambda_handler(event("eventbridge_drift_detected.json"), LambdaContext("start_retraining"))
    (outcome,) = response["outcomes"]
    assert outcome["status"] == "started"
    (run,) = job_runs(aws, stack, "BuildTrainingSetJob")
    assert (run["Arguments"]["--start"], run["Arguments"]["--end"]) == ("2026-10-18", "2026-11-14")
    (trigger,) = [json.loads(t["S"]) for t in items(aws, stack)[outcome["run_id"]]["triggers"]]
    assert trigger["trigger"] == "drift" and trigger["evidence"]["features"][0]["psi"] == 0.31


def test_http_retrain_starts_the_requested_range_and_names_the_caller(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    response = app.lambda_handler(event("http_retrain.json"), LambdaContext("start_retraining"))
    assert response["statusCode"] == 202
    body = http_body(response)
    assert body["status"] == "started" and body["data_range"] == {"start": "2026-11-01", "end": "2026-11-14"}
    (run,) = job_runs(aws, stack, "BuildTrainingSetJob")
    assert (run["Arguments"]["--start"], run["Arguments"]["--end"]) == ("2026-11-01", "2026-11-14")
    (trigger,) = [json.loads(t["S"]) for t in items(aws, stack)[body["run_id"]]["triggers"]]
    assert trigger["requested_by"].endswith(":assumed-role/zaindari-operators/maintenance-engineer")
    assert trigger["evidence"] == {"reason": "new bearings on press-201"}


def test_triggers_during_a_run_are_recorded_on_it_and_start_nothing(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    first = app.lambda_handler(event("schedule_weekly.json"), LambdaContext("start_retraining"))
    run_id = first["outcomes"][0]["run_id"]

    drift = app.lambda_handler(event("eventbridge_drift_detected.json"), LambdaContext("start_retraining"))
    redelivered = app.lambda_handler(
        event("eventbridge_drift_detected.json"), LambdaContext("start_retraining")
    )
    http = app.lambda_handler(event("http_retrain.json"), LambdaContext("start_retraining"))

    assert drift["outcomes"][0]["status"] == "recorded" and drift["outcomes"][0]["run_id"] == run_id
    assert redelivered["outcomes"][0]["status"] == "duplicate"
    assert http["statusCode"] == 202 and http_body(http)["status"] == "recorded"
    assert len(job_runs(aws, stack, "BuildTrainingSetJob")) == 1
    record = items(aws, stack)[run_id]
    assert [json.loads(t["S"])["trigger"] for t in record["triggers"]] == ["schedule", "drift", "manual"]


def test_job_state_changes_move_the_run_to_training_then_close_it(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    started = http_body(app.lambda_handler(event("http_retrain.json"), LambdaContext("start_retraining")))
    build_job = stack.name("BuildTrainingSetJob")

    # the build job succeeded: train_model starts on the training set it wrote
    advanced = app.lambda_handler(
        glue_event(build_job, started["job_run_id"]), LambdaContext("start_retraining")
    )
    (outcome,) = advanced["outcomes"]
    assert outcome["status"] == "advanced" and outcome["stage"] == "train_model"
    (train_run,) = job_runs(aws, stack, "TrainModelJob")
    lake = stack.name("LakeBucket")
    assert (
        train_run["Arguments"]["--input"] == f"s3://{lake}/training/sets/plant-anomaly/{started['run_id']}/"
    )
    assert (
        train_run["Arguments"]["--output"]
        == f"s3://{lake}/models/plant-anomaly/candidates/{started['run_id']}/"
    )
    assert active_run(aws, stack) == started["run_id"]

    # the training job succeeded: the run is closed and the model is free
    closed = app.lambda_handler(
        glue_event(stack.name("TrainModelJob"), train_run["Id"]), LambdaContext("start_retraining")
    )
    assert closed["outcomes"][0]["status"] == "closed" and closed["outcomes"][0]["run_status"] == "succeeded"
    record = items(aws, stack)[started["run_id"]]
    assert record["status"] == "succeeded" and "closed_at" in record
    assert [json.loads(s["S"])["stage"] for s in record["stages"]] == ["build_training_set", "train_model"]
    assert active_run(aws, stack) is None

    # so the next trigger starts a new run
    again = app.lambda_handler(event("eventbridge_drift_detected.json"), LambdaContext("start_retraining"))
    assert again["outcomes"][0]["status"] == "started"
    assert len(job_runs(aws, stack, "BuildTrainingSetJob")) == 2


def test_a_missed_state_change_event_is_noticed_by_the_next_trigger(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    first = http_body(app.lambda_handler(event("http_retrain.json"), LambdaContext("start_retraining")))
    # Given the job runs end without their events reaching the function (moto: they read SUCCEEDED)
    glue_job_runs_progress(aws, None)
    # When triggers come: the first finds build_training_set done and starts train_model for the run
    drift = app.lambda_handler(event("eventbridge_drift_detected.json"), LambdaContext("start_retraining"))
    assert drift["outcomes"][0]["status"] == "recorded" and drift["outcomes"][0]["stage"] == "train_model"
    # the next finds train_model done too: that run is closed and a new one starts
    schedule = app.lambda_handler(event("schedule_weekly.json"), LambdaContext("start_retraining"))
    (outcome,) = schedule["outcomes"]
    assert outcome["status"] == "started" and outcome["run_id"] != first["run_id"]
    assert items(aws, stack)[first["run_id"]]["status"] == "succeeded"
    assert len(job_runs(aws, stack, "TrainModelJob")) == 1


def test_a_lock_whose_lease_ran_out_is_taken_over(
    stack: Provisioned, aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZAINDARI_RETRAIN_LEASE_HOURS", "0.0001")  # 0.36 s
    app = load_function("start_retraining")
    first = http_body(app.lambda_handler(event("http_retrain.json"), LambdaContext("start_retraining")))
    time.sleep(0.5)  # the job still runs (moto keeps it RUNNING), but nobody renewed the lease
    response = app.lambda_handler(event("eventbridge_drift_detected.json"), LambdaContext("start_retraining"))
    (outcome,) = response["outcomes"]
    assert outcome["status"] == "started" and outcome["run_id"] != first["run_id"]
    stored = items(aws, stack)
    assert stored[first["run_id"]]["status"] == "lease_expired"
    assert stored["LOCK"]["active_run"] == outcome["run_id"]


def test_a_job_state_change_of_an_unknown_run_is_ignored(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    response = app.lambda_handler(
        event("eventbridge_glue_job_succeeded.json"), LambdaContext("start_retraining")
    )
    assert response["outcomes"][0]["status"] == "ignored"
    assert job_runs(aws, stack, "TrainModelJob") == []


# ------------------------------------------------------------------------------------- failures


def test_a_start_that_fails_is_alerted_on_sns_and_eventbridge_and_frees_the_model(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned, inboxes: dict[str, str]
) -> None:
    # Given the build job is missing (deleted after deployment)
    aws.factory.client("glue").delete_job(JobName=stack.name("BuildTrainingSetJob"))
    # When a person asks for a retraining
    response = app.lambda_handler(event("http_retrain.json"), LambdaContext("start_retraining"))
    # Then the answer says why, and the alert reaches people and machines
    assert response["statusCode"] == 502
    body = http_body(response)
    assert body["status"] == "start_failed" and body["alerted"] is True
    assert "EntityNotFoundException" in body["reason"]
    (sns_alert,) = drain(aws, inboxes["sns"])
    assert sns_alert["kind"] == "start_failed" and sns_alert["model"] == "plant-anomaly"
    assert sns_alert["reason"] == body["reason"]
    (bridge_event,) = drain(aws, inboxes["eventbridge"])
    assert bridge_event["detail-type"] == "Zaindari Retraining Failed"
    assert bridge_event["detail"]["run_id"] == body["run_id"]
    # and the run is closed, the model free
    assert items(aws, stack)[body["run_id"]]["status"] == "start_failed"
    assert active_run(aws, stack) is None


def test_a_failed_job_closes_the_run_with_an_alert(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned, inboxes: dict[str, str]
) -> None:
    started = http_body(app.lambda_handler(event("http_retrain.json"), LambdaContext("start_retraining")))
    failed = app.lambda_handler(
        glue_event(
            stack.name("BuildTrainingSetJob"),
            started["job_run_id"],
            state="FAILED",
            message="TrainingSetError: no raw telemetry under s3://lake/raw/telemetry/ for 2026-11-01..2026-11-14",
        ),
        LambdaContext("start_retraining"),
    )
    assert failed["outcomes"][0]["run_status"] == "failed"
    (alert,) = drain(aws, inboxes["sns"])
    assert alert["kind"] == "run_failed" and "no raw telemetry" in alert["reason"]
    assert active_run(aws, stack) is None


def test_an_invalid_http_request_starts_nothing(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    bad = event("http_retrain.json")
    bad["body"] = json.dumps({"model": "plant-anomaly", "start": "2026-11-14", "end": "2026-11-01"})
    response = app.lambda_handler(bad, LambdaContext("start_retraining"))
    assert response["statusCode"] == 400 and "after end" in http_body(response)["message"]
    bad["body"] = json.dumps({"model": "plant-anomaly", "start": "yesterday"})
    response = app.lambda_handler(bad, LambdaContext("start_retraining"))
    assert response["statusCode"] == 400
    assert {e["field"] for e in http_body(response)["errors"]} >= {"start", "end"}
    assert job_runs(aws, stack, "BuildTrainingSetJob") == []


def test_the_cli_starts_a_run_like_post_retrain(
    aws: EmbeddedAws, stack: Provisioned, capsys: pytest.CaptureFixture[str]
) -> None:
    from zaindari.cli import main

    code = main(["retrain", "--model", "plant-anomaly", "--start", "2026-11-01", "--end", "2026-11-14"])
    outcome = json.loads(capsys.readouterr().out)
    assert code == 0 and outcome["status"] == "started"
    (run,) = job_runs(aws, stack, "BuildTrainingSetJob")
    assert run["Id"] == outcome["job_run_id"]
    # a second request while it runs is recorded, exit 0
    assert main(["retrain", "--model", "plant-anomaly", "--start", "2026-11-01", "--end", "2026-11-14"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "recorded"
