"""score_event fed hostile telemetry through each trigger (hypothesis): nothing crashes, nothing is lost.

Property: every inbound record ends scored, rejected with a reason (in the dead-letter store, or in
the HTTP response), a duplicate, or handed back for retry, and ``in == scored + rejected +
duplicate + retried``. The parsing properties run the Lambda handler over the in-memory ports (a
port told to fail makes the retry path part of the property); one runs end to end against moto.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.functions.conftest import EmbeddedAws
from tests.hostile import hostile_bodies, hostile_document, kinesis_data
from tests.support import (
    LambdaContext,
    eventbridge_event,
    http_event,
    kinesis_event,
    load_function,
    plant_readings,
    sqs_event,
)
from zaindari.bundle import ModelBundle
from zaindari.event_scoring import EventScoring, InboundRecord, ScoringReport
from zaindari.memory_ports import MemoryAlertSink, MemoryLake, MemoryRejectSink, MemoryStateStore

FAULTS = st.sampled_from([None, None, None, "lake", "state", "rejects", "alerts"])


@pytest.fixture(scope="module")
def bases() -> list[dict[str, Any]]:
    """A few valid readings (after the model's training window) that the strategies break."""
    return plant_readings()[800:840]


@pytest.fixture(scope="module")
def app(bundle_dir: Path) -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZAINDARI_MODEL_PATH", str(bundle_dir))
        mp.setenv("POWERTOOLS_TRACE_DISABLED", "true")
        mp.setenv("POWERTOOLS_METRICS_NAMESPACE", "ZaindariFuzz")
        yield load_function("score_event")


@dataclass
class Rig:
    """score_event's use case over fresh in-memory ports, recording every report it returns."""

    bundle: ModelBundle
    fault: str | None = None
    states: MemoryStateStore = field(default_factory=MemoryStateStore)
    lake: MemoryLake = field(default_factory=MemoryLake)
    alerts: MemoryAlertSink = field(default_factory=MemoryAlertSink)
    rejects: MemoryRejectSink = field(default_factory=MemoryRejectSink)
    reports: list[tuple[list[InboundRecord], ScoringReport]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.fault == "lake":
            self.lake.fail = True
        elif self.fault == "state":
            self.states.fail = True
        elif self.fault == "rejects":
            self.rejects.fail = True
        elif self.fault == "alerts":
            self.alerts.fail = True
        rig = self

        class Recording(EventScoring):
            def score_records(self, records: Any) -> ScoringReport:
                report = super().score_records(records)
                rig.reports.append((list(records), report))
                return report

        self.scoring = Recording(
            model=lambda: self.bundle,
            states=self.states,
            lake=self.lake,
            alerts=self.alerts,
            rejects=self.rejects,
        )

    def install(self, app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(app, "scoring", lambda: self.scoring)

    def accounted(self) -> Counter[str]:
        """Check every record of every call is in exactly one end state; the states' counts."""
        total: Counter[str] = Counter()
        for records, report in self.reports:
            assert set(report.status) == {r.record_id for r in records}
            states = Counter(report.status.values())
            assert set(states) <= {"scored", "rejected", "duplicate", "retry"}
            assert sum(states.values()) == len({r.record_id for r in records})
            for rid, status in report.status.items():
                if status == "retry":
                    assert report.retry_reasons[rid]
                if status == "rejected":  # its reason is stored where it can be found and replayed
                    assert any(d.record_id == rid and d.reason for d in self.rejects.rejected)
            if not report.retry_ids:  # nothing went back: every output reached its port
                assert all(d in self.rejects.rejected for d in report.rejected)
            total.update(states)
        assert len(self.lake.scores) == sum(len(r.scored) for _, r in self.reports if r.scored)
        return total


def run(app: ModuleType, event: Any, rig: Rig, monkeypatch: pytest.MonkeyPatch) -> Any:
    rig.install(app, monkeypatch)
    return app.lambda_handler(event, LambdaContext())


# ---------------------------------------------------------------------------------------- SQS


@given(data=st.data(), fault=FAULTS)
def test_sqs_batches_of_hostile_bodies_are_all_accounted_for(
    app: ModuleType, bundle: ModelBundle, bases: list[dict[str, Any]], data: st.DataObject, fault: str | None
) -> None:
    bodies = data.draw(hostile_bodies(bases))
    rig = Rig(bundle, fault)
    with pytest.MonkeyPatch.context() as mp:
        try:
            response = run(app, sqs_event(bodies), rig, mp)
            handed_back = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        except Exception as exc:  # Powertools raises when every record of the batch failed
            assert type(exc).__name__ == "BatchProcessingError", repr(exc)
            handed_back = {f"msg-{i:05d}" for i in range(len(bodies))}
    counts = rig.accounted()
    ((_, report),) = rig.reports
    assert handed_back == set(report.retry_ids)
    assert counts["scored"] + counts["rejected"] + counts["duplicate"] + counts["retry"] == len(bodies)
    if fault is None:
        assert not handed_back  # bad input alone is never retried: it would poison the queue


# ------------------------------------------------------------------------------------ Kinesis


@given(data=st.data(), fault=FAULTS)
def test_kinesis_batches_of_hostile_data_are_all_accounted_for(
    app: ModuleType, bundle: ModelBundle, bases: list[dict[str, Any]], data: st.DataObject, fault: str | None
) -> None:
    encoded = data.draw(st.lists(kinesis_data(bases), min_size=1, max_size=6))
    event = kinesis_event([b""] * len(encoded))
    for record, value in zip(event["Records"], encoded, strict=True):
        record["kinesis"]["data"] = value
    rig = Rig(bundle, fault)
    with pytest.MonkeyPatch.context() as mp:
        try:
            response = run(app, event, rig, mp)
            handed_back = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        except Exception as exc:
            assert type(exc).__name__ == "BatchProcessingError", repr(exc)
            handed_back = {r["kinesis"]["sequenceNumber"] for r in event["Records"]}
    counts = rig.accounted()
    ((_, report),) = rig.reports
    assert handed_back == set(report.retry_ids)
    assert sum(counts.values()) == len(encoded)
    if fault is None:
        assert not handed_back


# --------------------------------------------------------------------- IoT rule and EventBridge


@given(data=st.data(), fault=FAULTS, trigger=st.sampled_from(["iot", "eventbridge"]))
def test_single_hostile_documents_are_scored_rejected_or_raised_for_retry(
    app: ModuleType,
    bundle: ModelBundle,
    bases: list[dict[str, Any]],
    data: st.DataObject,
    fault: str | None,
    trigger: str,
) -> None:
    document = data.draw(hostile_document(bases))
    if (
        trigger == "iot"
        and isinstance(document, dict)
        and {"Records", "detail-type", "version"} & set(document)
    ):
        document = {"payload": document}  # an IoT rule forwards device JSON, never an AWS event shape
    event = eventbridge_event(document) if trigger == "eventbridge" else document
    rig = Rig(bundle, fault)
    with pytest.MonkeyPatch.context() as mp:
        try:
            response = run(app, event, rig, mp)
            raised = False
        except app.RetryableFailure:
            raised = True  # Lambda retries the asynchronous invocation, then dead-letters it
    counts = rig.accounted()
    ((_, report),) = rig.reports
    assert sum(counts.values()) == 1
    assert raised == bool(report.retry_ids)
    if not raised:
        assert response["status"] in ("scored", "rejected", "duplicate")
    if fault is None:
        assert not raised


# ------------------------------------------------------------------- HTTP API and function URL


@given(data=st.data(), fault=FAULTS, url=st.booleans(), b64=st.booleans())
def test_hostile_http_bodies_get_a_json_answer_never_a_500(
    app: ModuleType,
    bundle: ModelBundle,
    bases: list[dict[str, Any]],
    data: st.DataObject,
    fault: str | None,
    url: bool,
    b64: bool,
) -> None:
    (body,) = data.draw(hostile_bodies(bases, max_size=1))
    event = http_event(
        "POST", "/readings", body.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), base64_body=b64
    )
    if url:
        event["requestContext"]["domainName"] = "abcdef.lambda-url.eu-west-1.on.aws"
        event["routeKey"] = "$default"
    rig = Rig(bundle, fault)
    with pytest.MonkeyPatch.context() as mp:
        response = run(app, event, rig, mp)
    status = response["statusCode"]
    answer = json.loads(response["body"])
    assert status in (200, 400, 413, 503), answer
    if status in (400, 413):  # rejected, with the reason, and nothing was scored
        assert answer["message"] and not rig.lake.scores
        assert status == 413 or answer["errors"]
    if status == 503:  # handed back: the client retries
        assert response["headers"]["Retry-After"] and rig.reports[0][1].retry_ids
    if status == 200:
        ((_, report),) = rig.reports
        assert not report.retry_ids
        assert len(answer["scores"]) == len(report.scored)
        assert len(answer["rejected"]) == len(report.rejected)
    if fault is None:
        assert status != 503


# ------------------------------------------------------------------------ end to end, on moto


@pytest.fixture(scope="module")
def moto_env(local_aws: EmbeddedAws, bundle_dir: Path) -> Iterator[EmbeddedAws]:
    """score_event's resources in moto, created once for the module (the property runs many times)."""
    from tests.functions.test_score_event import LAKE, REGION, TABLE

    local_aws.reset()
    local_aws.factory.client("s3").create_bucket(
        Bucket=LAKE, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    local_aws.factory.client("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    topic = local_aws.factory.client("sns").create_topic(Name="zaindari-alerts")["TopicArn"]
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            **local_aws.env,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "ZAINDARI_LAKE_BUCKET": LAKE,
            "ZAINDARI_STATE_TABLE": TABLE,
            "ZAINDARI_ALERT_TOPIC_ARN": topic,
            "ZAINDARI_MODEL_PATH": str(bundle_dir),
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "ZaindariFuzz",
        }.items():
            mp.setenv(name, value)
        yield local_aws
    local_aws.reset()


@pytest.fixture(scope="module")
def moto_app(moto_env: EmbeddedAws) -> ModuleType:
    return load_function("score_event")


def _lake_lines(aws: EmbeddedAws, prefix: str) -> list[dict[str, Any]]:
    import gzip

    from tests.functions.test_score_event import LAKE

    s3 = aws.factory.client("s3")
    rows: list[dict[str, Any]] = []
    for obj in s3.list_objects_v2(Bucket=LAKE, Prefix=prefix).get("Contents", []):
        data = gzip.decompress(s3.get_object(Bucket=LAKE, Key=obj["Key"])["Body"].read())
        rows.extend(json.loads(line) for line in data.splitlines())
        s3.delete_object(Bucket=LAKE, Key=obj["Key"])  # each example reads only what it wrote
    return rows


@settings(max_examples=10)
@given(data=st.data())
def test_hostile_sqs_batches_on_moto_land_every_reading_scored_or_dead_lettered(
    moto_env: EmbeddedAws, moto_app: ModuleType, bases: list[dict[str, Any]], data: st.DataObject
) -> None:
    """The real ports: every reading the report says was scored or rejected is in S3."""
    app = moto_app
    bodies = data.draw(hostile_bodies(bases, max_size=6))
    ids = [f"m{data.draw(st.uuids())}" for _ in bodies]
    reports: list[ScoringReport] = []
    real = app.scoring()

    def recording(records: Any) -> ScoringReport:
        reports.append(EventScoring.score_records(real, records))
        return reports[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(real, "score_records", recording)
        response = app.lambda_handler(sqs_event(bodies, ids), LambdaContext())
    assert response == {"batchItemFailures": []}
    (report,) = reports
    assert set(report.status) == set(ids)
    assert sum(Counter(report.status.values()).values()) == len(ids)
    scored_keys = {row["record_key"] for row in _lake_lines(moto_env, "scores/")}
    assert {row["record_key"] for row in report.scored} <= scored_keys
    dead = Counter((d["record_id"], d["reading_index"]) for d in _lake_lines(moto_env, "quarantine/"))
    assert Counter((d.record_id, d.reading_index) for d in report.rejected) == dead
    for rid, status in report.status.items():
        if status == "rejected":
            assert any(r == rid for r, _ in dead)
