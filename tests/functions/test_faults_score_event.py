"""score_event under S3, DynamoDB, SNS and EventBridge errors and throttling injected in botocore
(``tests/faults.py``) in front of moto: records are retried or handed back, never silently dropped,
and a redelivery after the fault lands everything exactly once."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest

from tests.faults import FaultInjector
from tests.functions.conftest import EmbeddedAws, drain
from tests.functions.test_score_event import (  # the same resources and helpers as the function tests
    alert_inboxes,
    app,
    env,
    hot,
    lake_rows,
    readings,
)
from tests.support import LambdaContext, bodies_of, sqs_event
from zaindari.infra.wiring import client_factory

__all__ = ["alert_inboxes", "app", "env", "readings"]  # fixtures, used by name


@pytest.fixture
def faults(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> FaultInjector:
    """Faults on the very clients the function builds (its factory is made here, then handed over)."""
    # as the function builds its own
    factory = client_factory(validate_parameters=False, fixed_user_agent=True)
    monkeypatch.setattr(app, "client_factory", lambda **_: factory)
    return FaultInjector(factory)


def handed_back(app: ModuleType, event: dict[str, Any]) -> set[str]:
    """The record ids the function hands back to SQS (all of them when the whole batch failed)."""
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    try:
        response = app.lambda_handler(event, LambdaContext())
    except BatchProcessingError:
        return {r["messageId"] for r in event["Records"]}
    return {f["itemIdentifier"] for f in response["batchItemFailures"]}


def test_throttled_lake_writes_are_retried_by_botocore_and_land_once(
    app: ModuleType, aws: EmbeddedAws, faults: FaultInjector, readings: list[dict[str, Any]]
) -> None:
    slowdown = faults.throttle("s3", "PutObject", times=2)
    event = sqs_event(bodies_of(readings[800:820]))
    assert handed_back(app, event) == set()
    assert slowdown.injected == 2  # two SlowDown answers, then the third attempt went through
    assert len(lake_rows(aws, "scores/")) == 20


def test_a_lake_that_keeps_failing_hands_the_whole_batch_back_and_the_redelivery_scores_it_once(
    app: ModuleType, aws: EmbeddedAws, faults: FaultInjector, readings: list[dict[str, Any]]
) -> None:
    faults.fail("s3", "PutObject", code="InternalError", status=500, url_contains="scores/")
    event = sqs_event(bodies_of(readings[800:820]))
    assert handed_back(app, event) == {r["messageId"] for r in event["Records"]}
    assert lake_rows(aws, "scores/") == []
    # no device state was saved, so the redelivery is not mistaken for a duplicate
    assert aws.factory.client("dynamodb").scan(TableName=env_table(app))["Items"] == []
    faults.clear()
    assert handed_back(app, event) == set()
    assert handed_back(app, event) == set()  # a second redelivery is all duplicates
    assert len(lake_rows(aws, "scores/")) == 20


def env_table(app: ModuleType) -> str:
    return str(app.settings.state_table)


@pytest.mark.parametrize("operation", ["BatchGetItem", "BatchWriteItem"])
def test_a_throttled_state_table_hands_the_batch_back_and_the_redelivery_scores_it_once(
    app: ModuleType,
    aws: EmbeddedAws,
    faults: FaultInjector,
    readings: list[dict[str, Any]],
    operation: str,
) -> None:
    throttled = faults.throttle("dynamodb", operation)  # beyond botocore's own retries
    event = sqs_event(bodies_of(readings[800:820]))
    assert handed_back(app, event) == {r["messageId"] for r in event["Records"]}
    assert throttled.injected >= 3  # botocore tried as often as AwsConfig.max_attempts allows
    faults.clear()
    assert handed_back(app, event) == set()
    assert handed_back(app, event) == set()
    rows = lake_rows(aws, "scores/")
    assert len({r["record_key"] for r in rows}) == 20  # each reading scored; rewrites share keys


@pytest.mark.parametrize(
    ("service", "operation", "code", "status"),
    [
        ("sns", "PublishBatch", "AuthorizationError", 403),
        ("events", "PutEvents", "InternalException", 500),
    ],
)
def test_failed_alert_delivery_hands_back_only_the_alerting_records_and_the_retry_delivers_once(
    app: ModuleType,
    aws: EmbeddedAws,
    faults: FaultInjector,
    readings: list[dict[str, Any]],
    alert_inboxes: dict[str, str],
    service: str,
    operation: str,
    code: str,
    status: int,
) -> None:
    device = readings[800]["device_id"]
    batch = [hot(r) for r in readings[800:1000] if r["device_id"] == device][:3]
    others = [r for r in readings[800:1000] if r["device_id"] != device][:3]
    ids = [f"hot{i}" for i in range(3)] + [f"ok{i}" for i in range(3)]
    fault = faults.fail(service, operation, code=code, status=status)
    assert handed_back(app, sqs_event(bodies_of(batch + others), ids)) == {"hot0", "hot1", "hot2"}
    assert fault.injected >= 1
    assert len(lake_rows(aws, "scores/")) == 6  # the scores were kept
    faults.clear()
    drain(aws, alert_inboxes["sns"])
    drain(aws, alert_inboxes["eventbridge"])  # the channel that did work already has it
    assert handed_back(app, sqs_event(bodies_of(batch), ids[:3])) == set()
    inbox = alert_inboxes["sns" if service == "sns" else "eventbridge"]
    delivered = drain(aws, inbox)
    kinds = [
        (a.get("detail") or a)["kind"]
        for a in delivered
        if (a.get("detail") or a)["rule_id"] == "overheating"
    ]
    assert kinds == ["raised"]
    assert len(lake_rows(aws, "scores/")) == 6


def test_a_dead_letter_store_failure_hands_back_the_poison_records_and_scores_the_rest(
    app: ModuleType, aws: EmbeddedAws, faults: FaultInjector, readings: list[dict[str, Any]]
) -> None:
    bodies = [*bodies_of(readings[800:803]), "{not json", json.dumps({"device_id": "x"})]
    ids = ["ok0", "ok1", "ok2", "bad0", "bad1"]
    faults.fail("s3", "PutObject", code="AccessDenied", status=403, url_contains="quarantine/")
    assert handed_back(app, sqs_event(bodies, ids)) == {"bad0", "bad1"}
    assert len(lake_rows(aws, "scores/")) == 3
    faults.clear()
    assert handed_back(app, sqs_event(bodies[3:], ids[3:])) == set()
    assert {d["record_id"] for d in lake_rows(aws, "quarantine/events/")} == {"bad0", "bad1"}
