"""score_event on Lambda, against moto in server mode: five triggers, batch semantics, idempotency."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.functions.conftest import EmbeddedAws, drain, subscribe_alert_inboxes
from tests.support import (
    LambdaContext,
    bodies_of,
    eventbridge_event,
    http_event,
    kinesis_event,
    load_function,
    plant_readings,
    sqs_event,
)

LAKE = "zaindari-test-lake"
TABLE = "zaindari-test-state"
REGION = "eu-west-1"


@pytest.fixture(scope="module")
def readings() -> list[dict[str, Any]]:
    return plant_readings()


@pytest.fixture
def env(aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch, bundle_dir: Path) -> dict[str, str]:
    """The AWS resources the template declares for score_event, created fresh for each test."""
    s3 = aws.factory.client("s3")
    s3.create_bucket(Bucket=LAKE, CreateBucketConfiguration={"LocationConstraint": REGION})
    aws.factory.client("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    topic = aws.factory.client("sns").create_topic(Name="zaindari-alerts")["TopicArn"]
    values = {
        "ZAINDARI_MODEL_PATH": str(bundle_dir),
        "ZAINDARI_LAKE_BUCKET": LAKE,
        "ZAINDARI_STATE_TABLE": TABLE,
        "ZAINDARI_ALERT_TOPIC_ARN": topic,
        "ZAINDARI_EVENT_BUS_NAME": "default",
        # the simulated plant lives in 2024: only the future is refused, so no skew issue
        "POWERTOOLS_METRICS_NAMESPACE": "ZaindariTest",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    aws.factory.request_counter.reset()
    return values


@pytest.fixture
def app(env: dict[str, str]) -> ModuleType:
    return load_function("score_event")


@pytest.fixture
def alert_inboxes(aws: EmbeddedAws, env: dict[str, str]) -> dict[str, str]:
    """SQS queues subscribed to the SNS topic and to an EventBridge rule for alerts."""
    return subscribe_alert_inboxes(aws, env["ZAINDARI_ALERT_TOPIC_ARN"], "Zaindari Alert", "zaindari-alerts")


def lake_rows(aws: EmbeddedAws, prefix: str) -> list[dict[str, Any]]:
    s3 = aws.factory.client("s3")
    rows: list[dict[str, Any]] = []
    for obj in s3.list_objects_v2(Bucket=LAKE, Prefix=prefix).get("Contents", []):
        data = gzip.decompress(s3.get_object(Bucket=LAKE, Key=obj["Key"])["Body"].read())
        rows.extend(json.loads(line) for line in data.splitlines())
    return rows


def lake_keys(aws: EmbeddedAws, prefix: str) -> list[str]:
    return [
        o["Key"]
        for o in aws.factory.client("s3").list_objects_v2(Bucket=LAKE, Prefix=prefix).get("Contents", [])
    ]


def hot(reading: dict[str, Any], temperature: float = 120.0) -> dict[str, Any]:
    return {**reading, "sensors": {**reading["sensors"], "temperature": temperature}}


# -------------------------------------------------------------------------------------------- SQS


def test_sqs_batch_is_scored_in_one_object_per_date_with_model_version_on_every_row(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    batch = readings[800:900]
    response = app.lambda_handler(sqs_event(bodies_of(batch)), LambdaContext())
    assert response == {"batchItemFailures": []}
    scores = lake_rows(aws, "scores/")
    assert len(scores) == 100
    assert {r["model_version"] for r in scores} == {app.scoring().model().model_version}
    assert len(lake_keys(aws, "scores/")) == 1  # a micro-batch, never an object per reading
    assert lake_keys(aws, "scores/")[0].startswith("scores/events/date=2024-01-01/")
    assert len(lake_rows(aws, "raw/telemetry/")) == 100
    # device state is kept per device with its history and the keys it has seen
    items = aws.factory.client("dynamodb").scan(TableName=TABLE)["Items"]
    assert {i["device_id"]["S"] for i in items} == {r["device_id"] for r in batch}
    state = json.loads(items[0]["state"]["S"])
    assert state["history"]["count"] == 25 and len(state["seen"]) == 25
    assert int(items[0]["expires_at"]["N"]) > int(items[0]["updated_at"]["N"])


def test_thousand_records_with_ten_poison_report_exactly_those_and_score_990(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    good = bodies_of(readings[:990])
    poison = [
        "{not json",
        json.dumps({"timestamp": "2024-01-01T00:00:00Z", "sensors": {"temperature": 1}}),  # no device_id
        json.dumps({**readings[0], "timestamp": "2024-01-01T00:00:00"}),  # naive time
        json.dumps({**readings[0], "sensors": {"temperature": "hot"}}),
        '{"device_id": "x", "timestamp": "2024-01-01T00:00:00Z", "sensors": {"temperature": NaN}}',
        json.dumps([1, 2, 3]),
        json.dumps({**readings[0], "device_id": "p9", "sensors": {"temperature": 50.0}}),  # sensors missing
        json.dumps({**readings[8], "device_id": "p9", "sensors": {**readings[8]["sensors"], "speed": -5}}),
        "",
        json.dumps({**readings[0], "extra_field": 1}),
    ]
    bodies = good[:500] + poison + good[500:]
    ids = [f"m{i:04d}" for i in range(len(bodies))]
    poison_ids = set(ids[500:510])

    response = app.lambda_handler(sqs_event(bodies, ids), LambdaContext())

    assert response == {"batchItemFailures": []}  # nothing to retry: poison is dead-lettered, not redriven
    dead = lake_rows(aws, "quarantine/events/")
    assert {d["record_id"] for d in dead} == poison_ids
    assert all(d["reason"] and d["source"] == "sqs" for d in dead)
    by_id = {d["record_id"]: d for d in dead}
    assert by_id["m0500"]["record"] == "{not json"  # the record is kept as received, for replay
    assert any(e["field"] == "device_id" for e in by_id["m0501"]["errors"])
    assert by_id["m0506"]["stage"] == "features"
    assert len(lake_rows(aws, "scores/")) == 990
    # the request budget: bulk reads and writes only
    assert aws.factory.request_counter.total <= 20 + 5  # + the few listing calls this test makes


def test_redelivered_batch_writes_no_second_score_and_raises_no_second_alert(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]], alert_inboxes: dict[str, str]
) -> None:
    device = readings[800]["device_id"]
    batch = [hot(r) for r in readings[800:1000] if r["device_id"] == device][:5]
    event = sqs_event(bodies_of(batch))
    first = app.lambda_handler(event, LambdaContext())
    second = app.lambda_handler(event, LambdaContext())
    assert first == second == {"batchItemFailures": []}
    assert len(lake_rows(aws, "scores/")) == 5
    sns_alerts = drain(aws, alert_inboxes["sns"])
    eb_alerts = drain(aws, alert_inboxes["eventbridge"])
    raised = [a for a in sns_alerts if a["rule_id"] == "overheating"]
    assert [a["kind"] for a in raised] == ["raised"]
    assert [e["detail"]["rule_id"] for e in eb_alerts if e["detail"]["rule_id"] == "overheating"] == [
        "overheating"
    ]
    assert all(e["detail-type"] == "Zaindari Alert" for e in eb_alerts)


def test_alert_explains_rule_sensor_and_model_version(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]], alert_inboxes: dict[str, str]
) -> None:
    device = readings[800]["device_id"]
    batch = [hot(r, 130.0) for r in readings[800:1000] if r["device_id"] == device][:3]
    app.lambda_handler(sqs_event(bodies_of(batch)), LambdaContext())
    alerts = {a["rule_id"]: a for a in drain(aws, alert_inboxes["sns"])}
    overheating = alerts["overheating"]
    assert overheating["sensors"] == ["temperature"]
    assert overheating["observed"]["temperature"] == 130.0
    assert overheating["thresholds"] == {"temperature": 95.0}
    assert overheating["model_version"] == app.scoring().model().model_version
    assert overheating["rule_set_version"] == "2026.11.1"
    learned = alerts["model_score"]
    assert learned["top_contributors"][0]["sensors"] == ["temperature"]


def test_lake_failure_returns_the_batch_for_retry_and_the_retry_scores_it_once(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    s3 = aws.factory.client("s3")
    s3.delete_bucket(Bucket=LAKE)  # the lake is gone: every write fails
    event = sqs_event(bodies_of(readings[800:810]))
    with pytest.raises(BatchProcessingError):  # every record failed: Lambda reports the batch failed
        app.lambda_handler(event, LambdaContext())
    # no device state was written, so the retry is not mistaken for a duplicate
    assert aws.factory.client("dynamodb").scan(TableName=TABLE)["Items"] == []
    s3.create_bucket(Bucket=LAKE, CreateBucketConfiguration={"LocationConstraint": REGION})
    assert app.lambda_handler(event, LambdaContext()) == {"batchItemFailures": []}
    assert app.lambda_handler(event, LambdaContext()) == {"batchItemFailures": []}
    assert len(lake_rows(aws, "scores/")) == 10


def test_state_store_outage_returns_the_batch_and_the_retry_scores_it_once(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    ddb = aws.factory.client("dynamodb")
    ddb.delete_table(TableName=TABLE)
    event = sqs_event(bodies_of(readings[800:810]))
    with pytest.raises(BatchProcessingError):  # every record failed: Lambda reports the batch failed
        app.lambda_handler(event, LambdaContext())
    assert lake_keys(aws, "scores/") == []
    ddb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    assert app.lambda_handler(event, LambdaContext()) == {"batchItemFailures": []}
    assert len(lake_rows(aws, "scores/")) == 10


def test_alert_delivery_failure_keeps_the_alert_in_the_outbox_and_the_retry_delivers_it_once(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]], env: dict[str, str]
) -> None:
    sns = aws.factory.client("sns")
    sns.delete_topic(TopicArn=env["ZAINDARI_ALERT_TOPIC_ARN"])
    device = readings[800]["device_id"]
    batch = [hot(r) for r in readings[800:1000] if r["device_id"] == device][:3]
    others = [r for r in readings[800:1000] if r["device_id"] != device][:3]
    ids = [f"hot{i}" for i in range(3)] + [f"ok{i}" for i in range(3)]
    event = sqs_event(bodies_of(batch + others), ids)
    response = app.lambda_handler(event, LambdaContext())
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == ["hot0", "hot1", "hot2"]
    assert len(lake_rows(aws, "scores/")) == 6  # scores were kept

    # the topic comes back; SQS redelivers the three records
    topic = sns.create_topic(Name="zaindari-alerts")["TopicArn"]
    sqs = aws.factory.client("sqs")
    inbox = sqs.create_queue(QueueName="late-alerts")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "true"}
    )
    retry = sqs_event(bodies_of(batch), ids[:3])
    assert app.lambda_handler(retry, LambdaContext()) == {"batchItemFailures": []}
    delivered = [a for a in drain(aws, inbox) if a["rule_id"] == "overheating"]
    assert [a["kind"] for a in delivered] == ["raised"]
    assert len(lake_rows(aws, "scores/")) == 6  # the redelivered readings were not scored twice


# ----------------------------------------------------------------------------------- Kinesis


def test_kinesis_batch_reports_by_sequence_number_and_dead_letters_bad_data(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    payloads = [json.dumps(r).encode() for r in readings[800:805]] + [b"\xff\xfe not json"]
    event = kinesis_event(payloads)
    assert app.lambda_handler(event, LambdaContext()) == {"batchItemFailures": []}
    assert len(lake_rows(aws, "scores/")) == 5
    dead = lake_rows(aws, "quarantine/events/")
    assert [d["record_id"] for d in dead] == [event["Records"][5]["kinesis"]["sequenceNumber"]]
    assert dead[0]["source"] == "kinesis"


def test_kinesis_batch_of_many_readings_per_record(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    payloads = [json.dumps({"readings": readings[800 + 10 * i : 810 + 10 * i]}).encode() for i in range(3)]
    assert app.lambda_handler(kinesis_event(payloads), LambdaContext()) == {"batchItemFailures": []}
    assert len(lake_rows(aws, "scores/")) == 30


# ------------------------------------------------------------------------------ IoT, EventBridge


def test_iot_rule_payload_is_scored_and_summarised(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    response = app.lambda_handler(readings[800], LambdaContext())
    assert response["status"] == "scored" and response["readings_scored"] == 1
    batch = app.lambda_handler(readings[801:804], LambdaContext())
    assert batch["readings_scored"] == 3


def test_iot_malformed_payload_is_dead_lettered_not_raised(app: ModuleType, aws: EmbeddedAws) -> None:
    response = app.lambda_handler({"device_id": "p1", "sensors": {"t": float("nan")}}, LambdaContext())
    assert response["status"] == "rejected"
    dead = lake_rows(aws, "quarantine/events/")
    assert dead[0]["source"] == "iot"
    assert {e["field"] for e in dead[0]["errors"]} == {"timestamp", "sensors.t"}


def test_iot_downstream_failure_raises_so_lambda_retries_the_async_invocation(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    aws.factory.client("s3").delete_bucket(Bucket=LAKE)
    with pytest.raises(app.RetryableFailure, match="lake"):
        app.lambda_handler(readings[800], LambdaContext())


def test_eventbridge_event_detail_is_scored(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    response = app.lambda_handler(eventbridge_event({"readings": readings[800:802]}), LambdaContext())
    assert response["status"] == "scored" and response["readings_scored"] == 2
    assert {r["device_id"] for r in lake_rows(aws, "scores/")} == {r["device_id"] for r in readings[800:802]}


# ------------------------------------------------------------------------------------------- HTTP


def test_http_reading_returns_200_with_scores_and_alerts(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    response = app.lambda_handler(
        http_event("POST", "/readings", json.dumps(hot(readings[800]))), LambdaContext()
    )
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert body["model_version"].startswith("plant-anomaly:")
    assert len(body["scores"]) == 1 and body["scores"][0]["device_id"] == readings[800]["device_id"]
    assert body["scores"][0]["rules"]  # 120 degC: the overheating condition holds on this reading


def test_http_invalid_batch_is_400_with_field_errors_and_nothing_scored(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    bad = {**readings[801], "sensors": {"temperature": "warm"}}
    response = app.lambda_handler(
        http_event("POST", "/readings", json.dumps([readings[800], bad])), LambdaContext()
    )
    assert response["statusCode"] == 400
    body = json.loads(response["body"])
    assert body["errors"][0]["index"] == 1
    assert body["errors"][0]["errors"] == [
        {"field": "sensors.temperature", "message": "value 'warm' is not a number"}
    ]
    assert lake_keys(aws, "scores/") == []


def test_http_oversize_is_413(app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]) -> None:
    big = json.dumps([readings[800]] * 2000)  # ~400 KB, above the 256 KiB default
    response = app.lambda_handler(http_event("POST", "/readings", big, base64_body=True), LambdaContext())
    assert response["statusCode"] == 413
    assert "above the limit" in json.loads(response["body"])["message"]


def test_function_url_request_and_health(
    app: ModuleType, aws: EmbeddedAws, readings: list[dict[str, Any]]
) -> None:
    event = http_event("POST", "/readings", json.dumps({"readings": readings[800:803]}))
    event["requestContext"]["domainName"] = "abcdef.lambda-url.eu-west-1.on.aws"
    event["routeKey"] = "$default"
    assert app.lambda_handler(event, LambdaContext())["statusCode"] == 200
    health = app.lambda_handler(http_event("GET", "/health"), LambdaContext())
    assert health["statusCode"] == 200
    assert json.loads(health["body"])["model_version"].startswith("plant-anomaly:")


def test_openapi_schema_documents_the_readings_payload(app: ModuleType) -> None:
    schema = json.loads(app.http_app().get_openapi_json_schema())
    assert "/readings" in schema["paths"]
    body = schema["paths"]["/readings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "$ref" in body or "anyOf" in body
