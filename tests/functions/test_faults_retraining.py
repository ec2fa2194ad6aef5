"""start_retraining when Glue throttles StartJobRun (faults injected in botocore, in front of moto):
a transient failure is retried and the run starts; one that outlasts every attempt is alerted on
SNS and EventBridge, the run closed as ``start_failed`` and the model freed."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.faults import FaultInjector
from tests.functions.conftest import EmbeddedAws, drain
from tests.functions.test_start_retraining import (  # the same stack and helpers as the function tests
    active_run,
    app,
    event,
    inboxes,
    items,
    job_runs,
    stack,
)
from tests.support import LambdaContext
from zaindari.infra.provision import Provisioned
from zaindari.infra.wiring import client_factory

__all__ = ["app", "inboxes", "stack"]  # fixtures, used by name

BOTOCORE_ATTEMPTS = 3  # AwsConfig.max_attempts: botocore's own tries per call
START_ATTEMPTS = 3  # ZAINDARI_RETRAIN_START_ATTEMPTS (default)


@pytest.fixture
def faults(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> FaultInjector:
    factory = client_factory()
    monkeypatch.setattr(app, "client_factory", lambda: factory)
    return FaultInjector(factory)


def test_a_throttled_glue_start_is_retried_and_the_run_starts_without_an_alert(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned, inboxes: dict[str, str], faults: FaultInjector
) -> None:
    # Given Glue throttles the first attempt (all of botocore's tries) and the next request
    throttled = faults.throttle("glue", "StartJobRun", times=BOTOCORE_ATTEMPTS + 1)
    # When the weekly schedule fires
    response = app.lambda_handler(event("schedule_weekly.json"), LambdaContext("start_retraining"))
    # Then the second attempt started the build job, and nobody was paged
    (outcome,) = response["outcomes"]
    assert outcome["status"] == "started", outcome
    assert throttled.injected == BOTOCORE_ATTEMPTS + 1
    (run,) = job_runs(aws, stack, "BuildTrainingSetJob")
    assert run["Id"] == outcome["job_run_id"]
    assert drain(aws, inboxes["sns"]) == [] and drain(aws, inboxes["eventbridge"]) == []


def test_a_glue_start_throttled_past_every_attempt_is_alerted_and_frees_the_model(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned, inboxes: dict[str, str], faults: FaultInjector
) -> None:
    throttled = faults.throttle("glue", "StartJobRun")
    response = app.lambda_handler(event("schedule_weekly.json"), LambdaContext("start_retraining"))
    (outcome,) = response["outcomes"]
    assert outcome["status"] == "start_failed" and outcome["alerted"] is True
    assert outcome["attempts"] == START_ATTEMPTS
    assert throttled.injected == START_ATTEMPTS * BOTOCORE_ATTEMPTS
    assert "ThrottlingException" in outcome["reason"] and "transient" in outcome["reason"]
    (sns_alert,) = drain(aws, inboxes["sns"])
    assert sns_alert["kind"] == "start_failed" and sns_alert["run_id"] == outcome["run_id"]
    (bridge_event,) = drain(aws, inboxes["eventbridge"])
    assert bridge_event["detail-type"] == "Zaindari Retraining Failed"
    assert items(aws, stack)[outcome["run_id"]]["status"] == "start_failed"
    assert active_run(aws, stack) is None
    assert job_runs(aws, stack, "BuildTrainingSetJob") == []
    # and once Glue recovers, the next trigger starts a run
    faults.clear()
    again = app.lambda_handler(event("schedule_weekly.json"), LambdaContext("start_retraining"))
    assert again["outcomes"][0]["status"] == "started"
