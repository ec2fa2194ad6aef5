"""score_batch on Lambda, against moto in server mode, fed the events/ files and simulated drops.

The resources come from template.yaml (``provision``): the raw and lake buckets, the drops ledger,
the parts queue, the Glue job, the alert topic, and the function's environment. The sample events
name objects under ``events/data/``; ``seed_drop_objects`` puts them in moto (as ``zaindari invoke``
does). Other drops are uploaded here and announced with the same event shapes.

The Spark path (``glue_jobs/score_file.py``, ``score_file_on_spark``) is checked at the end: the
same bytes scored by the Lambda and by local Spark give the same rows, scores, alerts and
quarantined rows.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.functions.conftest import EmbeddedAws, drain, subscribe_alert_inboxes
from tests.support import LambdaContext, load_function, sqs_event
from tests.unit.test_file_scoring import NESTED_KEEP, nested_drop, quarantined, run, scores_of
from zaindari.bundle import ModelBundle
from zaindari.drift import WindowSummary
from zaindari.file_scoring import (
    SCORES_SCHEMA,
    FileManifest,
    FileScoring,
    FileScoringOptions,
    FileSource,
    plan_parts,
)
from zaindari.file_scoring_spark import score_file_on_spark
from zaindari.infra.file_ports import S3FileSink
from zaindari.infra.local_drops import seed_drop_objects
from zaindari.infra.provision import Provisioned, provision
from zaindari.settings import SettingsError
from zaindari.simulate import PlantConfig, simulate_plant

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
DATA = EVENTS / "data"

pytestmark = pytest.mark.aws


def event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def plant_csv() -> bytes:
    """The small simulated plant (4 devices, 6 hours, 1,440 rows, faults included) as a historian CSV."""
    frame = simulate_plant(PlantConfig.small(seed=0)).historian_frame()
    return frame.to_csv(index=False).encode()


@pytest.fixture
def stack(
    aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch, bundle_dir: Path, tmp_path: Path
) -> Iterator[Provisioned]:
    """template.yaml in a clean moto; score_batch's environment as the template sets it."""
    provisioned = provision(aws.factory, ROOT / "template.yaml")
    for name, value in provisioned.function_environment("score_batch").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ZAINDARI_MODEL_PATH", str(bundle_dir))  # the example model, no S3 round trip
    monkeypatch.setenv("ZAINDARI_FILE_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ZaindariTest")
    yield provisioned


@pytest.fixture
def app(stack: Provisioned) -> ModuleType:
    return load_function("score_batch")


@pytest.fixture
def inboxes(aws: EmbeddedAws, stack: Provisioned) -> dict[str, str]:
    """SQS queues subscribed to the alert topic and to an EventBridge rule for ``Zaindari Alert``."""
    return subscribe_alert_inboxes(aws, stack.arn("AlertTopic"), "Zaindari Alert", "file-alerts")


# ----------------------------------------------------------------------------------- helpers


def invoke(app: ModuleType, payload: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = app.lambda_handler(payload, LambdaContext("score_batch"))
    return response


def seeded(aws: EmbeddedAws, name: str) -> dict[str, Any]:
    """A sample event, its object uploaded from events/data/ and the event pointed at its version."""
    payload, notes = seed_drop_objects(aws.factory, event(name), DATA)
    assert not any("regenerate" in n for n in notes), notes
    return dict(payload)


def drop(
    aws: EmbeddedAws, stack: Provisioned, name: str, data: bytes, *, eventbridge: bool = False
) -> dict[str, Any]:
    """Upload ``data`` as ``drops/test/<name>`` and return the S3 event announcing it."""
    bucket, key = stack.name("RawBucket"), f"drops/test/{name}"
    put = aws.factory.client("s3").put_object(Bucket=bucket, Key=key, Body=data)
    etag, version = put["ETag"].strip('"'), put.get("VersionId")
    if eventbridge:
        payload = copy.deepcopy(event("eventbridge_object_created.json"))
        payload["detail"]["bucket"]["name"] = bucket
        payload["detail"]["object"].update(
            {"key": key, "size": len(data), "etag": etag, "version-id": version}
        )
        return payload
    payload = copy.deepcopy(event("s3_object_created_csv.json"))
    obj = payload["Records"][0]["s3"]["object"]
    payload["Records"][0]["s3"]["bucket"]["name"] = bucket
    obj.update({"key": key, "size": len(data), "eTag": etag, "versionId": version})
    return payload


def lake_keys(aws: EmbeddedAws, stack: Provisioned, prefix: str) -> list[str]:
    s3 = aws.factory.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.name("LakeBucket"), Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def lake_versions(aws: EmbeddedAws, stack: Provisioned) -> list[tuple[str, str]]:
    """Every object version in the lake (a rewrite of an object adds one: the bucket is versioned)."""
    response = aws.factory.client("s3").list_object_versions(Bucket=stack.name("LakeBucket"))
    return sorted((v["Key"], v["VersionId"]) for v in response.get("Versions", []))


def lake_bytes(aws: EmbeddedAws, stack: Provisioned, key: str) -> bytes:
    body: bytes = aws.factory.client("s3").get_object(Bucket=stack.name("LakeBucket"), Key=key)["Body"].read()
    return body


def scores(aws: EmbeddedAws, stack: Provisioned, source_id: str | None = None) -> pd.DataFrame:
    keys = [k for k in lake_keys(aws, stack, "scores/") if source_id is None or source_id in k]
    tables = [pq.read_table(io.BytesIO(lake_bytes(aws, stack, k))) for k in keys]
    if not tables:
        return pd.DataFrame(columns=SCORES_SCHEMA.names)
    for table in tables:
        assert table.schema.names == SCORES_SCHEMA.names
        assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    return pd.concat([t.to_pandas() for t in tables]).sort_values("row").reset_index(drop=True)


def quarantined_rows(aws: EmbeddedAws, stack: Provisioned, source_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for key in lake_keys(aws, stack, "quarantine/date="):
        if source_id in key:
            rows += [json.loads(line) for line in lake_bytes(aws, stack, key).splitlines()]
    return sorted(rows, key=lambda r: r["reading_index"])


def manifest_of(aws: EmbeddedAws, stack: Provisioned, outcome: dict[str, Any]) -> FileManifest:
    return FileManifest.model_validate_json(lake_bytes(aws, stack, outcome["manifest"]))


def ledger_item(aws: EmbeddedAws, stack: Provisioned, source_id: str) -> dict[str, Any]:
    item: dict[str, Any] = aws.factory.client("dynamodb").get_item(
        TableName=stack.name("FileRunsTable"), Key={"source_id": {"S": source_id}}, ConsistentRead=True
    )["Item"]
    return item


def drop_source(stack: Provisioned, obj: dict[str, Any]) -> FileSource:
    """The drop an S3 notification's ``object`` names, as score_batch names it (its source id)."""
    return FileSource(
        key=obj["key"],
        bucket=stack.name("RawBucket"),
        etag=obj["eTag"],
        version_id=obj["versionId"],
        size=obj["size"],
    )


def only_outcome(response: dict[str, Any]) -> dict[str, Any]:
    assert len(response["outcomes"]) == 1, response
    outcome: dict[str, Any] = response["outcomes"][0]
    return outcome


def assert_accounted(
    aws: EmbeddedAws, stack: Provisioned, outcome: dict[str, Any], rows: int
) -> FileManifest:
    """The invariant, in the manifest and in the lake: every row scored or quarantined, once."""
    manifest = manifest_of(aws, stack, outcome)
    assert manifest.status == "scored", manifest.error
    assert manifest.rows_in == rows == manifest.rows_scored + manifest.rows_quarantined
    lake = scores(aws, stack, manifest.source_id)
    bad = quarantined_rows(aws, stack, manifest.source_id)
    assert len(lake) == manifest.rows_scored and len(bad) == manifest.rows_quarantined
    assert sorted(lake["row"].tolist() + [r["reading_index"] for r in bad]) == list(range(rows))
    return manifest


# ----------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "name",
    ["s3_object_created_csv.json", "s3_object_created_parquet.json", "eventbridge_object_created.json"],
)
def test_sample_drops_are_scored_to_date_partitioned_parquet_with_a_manifest(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned, name: str
) -> None:
    response = invoke(app, seeded(aws, name))

    outcome = only_outcome(response)
    assert outcome["status"] == "scored" and outcome["route"] == "inline"
    manifest = assert_accounted(aws, stack, outcome, rows=360)
    assert (
        manifest.rows_quarantined == 0 and manifest.model_version == app.drops().scoring.model().model_version
    )
    lake = scores(aws, stack, manifest.source_id)
    assert set(lake["source_key"]) == {manifest.source.key}
    assert set(lake["source_version"]) == {manifest.source.version_id}
    keys = lake_keys(aws, stack, "scores/")
    assert keys and all(k.startswith("scores/date=2026-11-20/") and k.endswith(".parquet") for k in keys)
    assert lake["alert"].any() and manifest.alert_rows == int(lake["alert"].sum())


def test_gzip_csv_and_json_lines_drops_score_like_the_plain_csv(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    csv = (DATA / "plant-1_2026-11-20_1200.csv").read_bytes()
    frame = pd.read_csv(io.BytesIO(csv))
    jsonl = frame.to_json(orient="records", lines=True).encode()
    results = {}
    for name, data, eventbridge in (
        ("plain.csv", csv, False),
        ("zipped.csv.gz", gzip.compress(csv), True),
        ("lines.jsonl", jsonl, False),
    ):
        outcome = only_outcome(invoke(app, drop(aws, stack, name, data, eventbridge=eventbridge)))
        assert outcome["status"] == "scored", outcome
        manifest = assert_accounted(aws, stack, outcome, rows=360)
        results[name] = scores(aws, stack, manifest.source_id)
    columns = ["row", "device_id", "timestamp", "score", "alert", "severity"]
    for name in ("zipped.csv.gz", "lines.jsonl"):
        pd.testing.assert_frame_equal(
            results[name][columns], results["plain.csv"][columns], check_exact=False
        )


def test_bad_rows_are_quarantined_with_their_reasons_and_the_rest_scored(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    lines = (DATA / "plant-1_2026-11-20_1200.csv").read_bytes().splitlines()
    header, rows = lines[0], lines[1:]
    rows[3] = b"," + rows[3].split(b",", 1)[1]  # no device id
    rows[10] = rows[10].replace(b"2026-11-20T12:", b"2026-11-20 12:").replace(b":00Z", b":00")  # naive time
    cells = rows[20].split(b",")
    cells[7] = b"hot"  # temperature is not a number
    rows[20] = b",".join(cells)
    rows[30] = rows[30] + b",surplus"  # one field too many
    outcome = only_outcome(invoke(app, drop(aws, stack, "bad-rows.csv", b"\n".join([header, *rows]) + b"\n")))

    assert outcome["status"] == "scored"
    assert outcome["rows_quarantined"] == 4 and outcome["rows_scored"] == 356
    manifest = assert_accounted(aws, stack, outcome, rows=360)
    reasons = {r["reading_index"]: r["reason"] for r in quarantined_rows(aws, stack, manifest.source_id)}
    assert sorted(reasons) == [3, 10, 20, 30]
    assert "device_id: missing" in reasons[3]
    assert "has no timezone" in reasons[10]
    assert "sensors.temperature: value 'hot' is not a number" in reasons[20]
    assert "fields" in reasons[30] or "columns" in reasons[30]


@pytest.mark.parametrize(
    ("name", "mangle", "error"),
    [
        ("cut.csv.gz", lambda csv: gzip.compress(csv)[:-300], "truncated gzip file"),
        (
            "no-pressure.csv",
            lambda csv: pd.read_csv(io.BytesIO(csv)).drop(columns=["pressure"]).to_csv(index=False).encode(),
            "missing required column pressure",
        ),
    ],
)
def test_unreadable_drops_get_a_clear_error_and_are_quarantined_whole(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned, name: str, mangle: Any, error: str
) -> None:
    data = mangle((DATA / "plant-1_2026-11-20_1200.csv").read_bytes())
    outcome = only_outcome(invoke(app, drop(aws, stack, name, data)))

    assert outcome["status"] == "failed" and error in outcome["error"]
    manifest = manifest_of(aws, stack, outcome)
    assert manifest.status == "failed" and manifest.error is not None and error in manifest.error
    assert manifest.rows_in == manifest.rows_scored == manifest.rows_quarantined == 0
    assert scores(aws, stack, manifest.source_id).empty
    record = json.loads(lake_bytes(aws, stack, f"quarantine/files/{manifest.source_id}.json"))
    assert error in record["reason"] and record["source"]["key"] == f"drops/test/{name}"
    assert lake_bytes(aws, stack, f"quarantine/files/{manifest.source_id}/{name}") == data  # set aside whole
    item = ledger_item(aws, stack, manifest.source_id)  # the arrival is recorded
    assert item["status"]["S"] == "done" and item["outcome"]["S"] == "failed"
    assert error in item["message"]["S"]


def test_an_unsupported_file_type_is_recorded_not_raised(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    outcome = only_outcome(invoke(app, drop(aws, stack, "report.xlsx", b"PK\x03\x04 not a drop")))
    assert outcome["status"] == "failed" and "unsupported file type" in outcome["error"]


# ----------------------------------------------------------------------------------- idempotency


def test_replaying_a_drop_writes_no_output_and_raises_no_alert_again(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned, inboxes: dict[str, str]
) -> None:
    s3_event = seeded(aws, "s3_object_created_csv.json")
    first = only_outcome(invoke(app, s3_event))
    assert first["status"] == "scored" and first["alerts"] > 0
    sns_alerts, eb_alerts = drain(aws, inboxes["sns"]), drain(aws, inboxes["eventbridge"])
    assert len(sns_alerts) == len(eb_alerts) == first["alerts"]
    assert {a["scope"] for a in sns_alerts} == {"file"}
    assert {e["detail-type"] for e in eb_alerts} == {"Zaindari Alert"}
    assert all(
        a["rows"] >= 1 and a["worst_rows"] and a["source_id"] == first["source_id"] for a in sns_alerts
    )
    before = lake_versions(aws, stack)

    # the same object announced again, directly and through EventBridge: one drop, already scored
    obj = s3_event["Records"][0]["s3"]["object"]
    bridged = copy.deepcopy(event("eventbridge_object_created.json"))
    bridged["detail"]["object"].update(
        {"key": obj["key"], "size": obj["size"], "etag": obj["eTag"], "version-id": obj["versionId"]}
    )
    again = [only_outcome(invoke(app, s3_event)), only_outcome(invoke(app, bridged))]

    assert [o["status"] for o in again] == ["duplicate", "duplicate"]
    assert all(o["manifest"] == first["manifest"] for o in again)
    assert lake_versions(aws, stack) == before  # not one object written again
    assert drain(aws, inboxes["sns"]) == [] and drain(aws, inboxes["eventbridge"]) == []
    assert ledger_item(aws, stack, first["source_id"])["arrivals"]["N"] == "3"


def test_a_new_version_of_the_same_key_is_a_new_drop(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    csv = (DATA / "plant-1_2026-11-20_1200.csv").read_bytes()
    first = only_outcome(invoke(app, drop(aws, stack, "daily.csv", csv)))
    second = only_outcome(invoke(app, drop(aws, stack, "daily.csv", csv.replace(b"12:00:00Z", b"12:00:01Z"))))
    assert first["status"] == second["status"] == "scored"
    assert first["source_id"] != second["source_id"]


def test_a_crashed_runs_claim_is_taken_over_once_its_lease_runs_out(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned
) -> None:
    s3_event = seeded(aws, "s3_object_created_csv.json")
    obj = s3_event["Records"][0]["s3"]["object"]
    source = drop_source(stack, obj)
    ledger = app.drops().ledger
    held = ledger.claim(source, route="inline", owner="crashed-run", now=1000.0, lease_until=4e9)  # alive
    assert held.claimed

    busy = only_outcome(invoke(app, s3_event))
    assert busy["status"] == "busy"
    assert scores(aws, stack, source.source_id).empty

    # the run crashed: its lease runs out (here: is moved into the past)
    aws.factory.client("dynamodb").update_item(
        TableName=stack.name("FileRunsTable"),
        Key={"source_id": {"S": source.source_id}},
        UpdateExpression="SET lease_until = :past",
        ExpressionAttributeValues={":past": {"N": "1000"}},
    )
    taken = only_outcome(invoke(app, s3_event))
    assert taken["status"] == "scored"
    assert_accounted(aws, stack, taken, rows=360)


# ----------------------------------------------------------------------------------- fan-out


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_drop_above_the_fanout_size_is_split_scored_in_parts_and_merged(
    aws: EmbeddedAws,
    stack: Provisioned,
    monkeypatch: pytest.MonkeyPatch,
    plant_csv: bytes,
    inboxes: dict[str, str],
    kind: str,
) -> None:
    monkeypatch.setenv("ZAINDARI_FANOUT_BYTES", "40000")
    monkeypatch.setenv("ZAINDARI_PART_BYTES", "16000")
    app = load_function("score_batch")
    whole = only_outcome(invoke(app, drop(aws, stack, "whole.csv", plant_csv[:39000])))  # below: inline
    assert whole["route"] == "inline"
    drain(aws, inboxes["sns"])
    data = plant_csv
    if kind == "parquet":  # 8 row groups of about 9 KB: parts of row groups, read by byte ranges
        buffer = io.BytesIO()
        pd.read_csv(io.BytesIO(plant_csv)).to_parquet(buffer, index=False, row_group_size=200)
        data = buffer.getvalue()

    planned = only_outcome(invoke(app, drop(aws, stack, f"plant.{kind}", data)))

    assert planned["status"] == "fanned_out" and planned["route"] == "fanout"
    queue = stack.url("ScoreBatchPartsQueue")
    sqs = aws.factory.client("sqs")
    messages = []
    while batch := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        messages += batch
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata if kind == "parquet" else None
    expected_parts = plan_parts(f"x.{kind}", len(data), metadata, part_bytes=16000)
    assert len(messages) == planned["parts"] == len(expected_parts) > 2
    assert drain(aws, inboxes["sns"]) == []  # alerts wait for the merge

    # workers take the parts in any order, one message per invocation
    random.Random(7).shuffle(messages)
    responses = [invoke(app, sqs_event([m["Body"]], [m["MessageId"]])) for m in messages]
    assert all(r == {"batchItemFailures": []} for r in responses)

    source_id = planned["source_id"]
    manifest = FileManifest.model_validate_json(lake_bytes(aws, stack, f"manifests/{source_id}.json"))
    assert manifest.status == "scored" and manifest.parts == len(messages)
    assert manifest.rows_in == 1440 == manifest.rows_scored + manifest.rows_quarantined
    lake = scores(aws, stack, source_id)
    assert lake["row"].tolist() == list(range(1440))  # every row once, numbered as in the file
    assert len(lake_keys(aws, stack, f"manifests/{source_id}/part-")) == len(messages)
    item = ledger_item(aws, stack, source_id)
    assert item["status"]["S"] == "done" and len(item["parts_done"]["NS"]) == len(messages)
    alerts = drain(aws, inboxes["sns"])
    assert len(alerts) == len([a for a in manifest.alerts if a.raised or a.escalated]) > 0

    # a part delivered again after the merge changes nothing
    before = lake_versions(aws, stack)
    again = invoke(app, sqs_event([messages[0]["Body"]], ["redelivered"]))
    assert again == {"batchItemFailures": []}
    assert lake_versions(aws, stack) == before and drain(aws, inboxes["sns"]) == []


def test_each_part_message_is_handled_alone_and_only_garbage_is_handed_back(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned, monkeypatch: pytest.MonkeyPatch
) -> None:
    part_event = seeded(aws, "sqs_file_part.json")
    good = part_event["Records"][0]
    broken = copy.deepcopy(good)
    broken["messageId"] = "broken"
    body = json.loads(broken["body"])
    body["source"]["bucket"] = "zaindari-no-such-bucket"  # S3 refuses: a failed part, not a crash
    broken["body"] = json.dumps(body)
    garbled = {**copy.deepcopy(good), "messageId": "garbled", "body": "{not a part"}

    response = invoke(app, {"Records": [good, broken, garbled]})

    failed = sorted(f["itemIdentifier"] for f in response["batchItemFailures"])
    assert failed == ["garbled"]  # the missing bucket is a failed part (recorded), the garbage is retried
    keys = lake_keys(aws, stack, "manifests/")
    assert len(keys) == 2 and all("/part-00001.json" in k for k in keys)


# ----------------------------------------------------------------------------------- Spark route


def test_a_drop_above_the_spark_size_goes_to_the_glue_job_and_its_state_change_closes_it(
    aws: EmbeddedAws,
    stack: Provisioned,
    monkeypatch: pytest.MonkeyPatch,
    bundle_dir: Path,
    tmp_path: Path,
    inboxes: dict[str, str],
) -> None:
    monkeypatch.setenv("ZAINDARI_SPARK_BYTES", "30000")
    app = load_function("score_batch")
    s3_event = seeded(aws, "s3_object_created_csv.json")

    handed = only_outcome(invoke(app, s3_event))

    assert handed["status"] == "spark" and handed["job_run_id"]
    glue = aws.factory.client("glue")
    run = glue.get_job_run(JobName=stack.name("ScoreFileJob"), RunId=handed["job_run_id"])["JobRun"]
    obj = s3_event["Records"][0]["s3"]["object"]
    assert run["Arguments"]["--input"] == f"s3://{stack.name('RawBucket')}/{obj['key']}"
    assert run["Arguments"]["--version"] == obj["versionId"]
    assert only_outcome(invoke(app, s3_event))["status"] == "busy"  # the job has it

    # the job writes the file's outputs and manifest (here: the same use case, through the S3 sink)
    source = drop_source(stack, obj)
    from zaindari.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    sink = S3FileSink(aws.factory, stack.name("LakeBucket"), tmp_path / "job-spool")
    data = (DATA / "plant-1_2026-11-20_1200.csv").read_bytes()
    FileScoring(model=lambda: bundle, sink=sink).score_file(io.BytesIO(data), source)
    state_change = copy.deepcopy(event("eventbridge_glue_job_succeeded.json"))
    state_change["detail"].update({"jobName": stack.name("ScoreFileJob"), "jobRunId": handed["job_run_id"]})

    closed = only_outcome(invoke(app, state_change))

    assert closed["status"] == "scored" and closed["route"] == "spark" and closed["rows_in"] == 360
    assert len(drain(aws, inboxes["sns"])) == closed["alerts"] > 0
    assert only_outcome(invoke(app, s3_event))["status"] == "duplicate"
    assert only_outcome(invoke(app, state_change))["status"] == "ignored"  # a repeated state change


def test_kept_columns_reach_the_functions_scores_and_the_glue_jobs_arguments(
    aws: EmbeddedAws, stack: Provisioned, monkeypatch: pytest.MonkeyPatch, plant_csv: bytes
) -> None:
    monkeypatch.setenv("ZAINDARI_FILE_KEEP_COLUMNS", "seq, asset_tag")  # asset_tag: not in this file
    monkeypatch.setenv("ZAINDARI_SPARK_BYTES", "40000")
    app = load_function("score_batch")

    inline = only_outcome(invoke(app, drop(aws, stack, "kept.csv", plant_csv[:39000])))
    handed = only_outcome(invoke(app, drop(aws, stack, "big.csv", plant_csv)))

    assert inline["status"] == "scored" and inline["route"] == "inline"
    (key,) = [k for k in lake_keys(aws, stack, "scores/") if inline["source_id"] in k]
    table = pq.read_table(io.BytesIO(lake_bytes(aws, stack, key)))
    # every drop's scores have the same columns: one the file lacks is null
    assert table.schema.names == [*SCORES_SCHEMA.names, "seq", "asset_tag"]
    expected = pd.read_csv(io.BytesIO(plant_csv[:39000].rsplit(b"\n", 1)[0]))["seq"].astype(str).tolist()
    assert sorted(zip(table["row"].to_pylist(), table["seq"].to_pylist(), strict=True)) == list(
        enumerate(expected)
    )
    assert table["asset_tag"].null_count == len(table) == inline["rows_scored"] == len(expected)
    assert handed["status"] == "spark"
    run = aws.factory.client("glue").get_job_run(
        JobName=stack.name("ScoreFileJob"), RunId=handed["job_run_id"]
    )
    assert run["JobRun"]["Arguments"]["--keep_columns"] == "seq,asset_tag"


def test_a_refused_kept_columns_setting_fails_the_first_event_naming_it(
    aws: EmbeddedAws, stack: Provisioned, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZAINDARI_FILE_KEEP_COLUMNS", "seq,score")
    app = load_function("score_batch")

    with pytest.raises(
        SettingsError, match=r"ZAINDARI_FILE_KEEP_COLUMNS 'seq,score': .*\['score'\] would be"
    ):
        invoke(app, seeded(aws, "s3_object_created_csv.json"))


def test_the_glue_job_refuses_a_bad_kept_columns_list_before_starting_spark(tmp_path: Path) -> None:
    from glue_jobs.score_file import main as score_file_job

    argv = [
        "--master",
        "local[1]",
        "--input",
        str(tmp_path / "d.csv"),
        "--lake",
        str(tmp_path),
        "--model",
        "m",
    ]
    assert score_file_job([*argv, "--keep_columns", "seq,seq"]) == 2


def test_a_failed_glue_run_releases_the_drop_for_the_next_delivery(
    aws: EmbeddedAws, stack: Provisioned, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZAINDARI_SPARK_BYTES", "30000")
    app = load_function("score_batch")
    s3_event = seeded(aws, "s3_object_created_csv.json")
    handed = only_outcome(invoke(app, s3_event))
    state_change = copy.deepcopy(event("eventbridge_glue_job_succeeded.json"))
    state_change["detail"].update(
        {
            "jobName": stack.name("ScoreFileJob"),
            "jobRunId": handed["job_run_id"],
            "state": "FAILED",
            "message": "OOM",
        }
    )

    failed = only_outcome(invoke(app, state_change))

    assert failed["status"] == "failed" and failed["error"] == "OOM"
    assert ledger_item(aws, stack, handed["source_id"])["status"]["S"] == "released"
    retried = only_outcome(invoke(app, s3_event))
    assert retried["status"] == "spark" and retried["job_run_id"] != handed["job_run_id"]


# ----------------------------------------------------------------------------------- the events


def test_sample_events_name_the_sample_files_as_they_are() -> None:
    for name in ("s3_object_created_csv.json", "s3_object_created_parquet.json"):
        obj = event(name)["Records"][0]["s3"]["object"]
        data = (DATA / Path(obj["key"]).name).read_bytes()
        assert (obj["size"], obj["eTag"]) == (len(data), hashlib.md5(data).hexdigest())
    obj = event("eventbridge_object_created.json")["detail"]["object"]
    data = (DATA / Path(obj["key"]).name).read_bytes()
    assert (obj["size"], obj["etag"]) == (len(data), hashlib.md5(data).hexdigest())
    part = json.loads(event("sqs_file_part.json")["Records"][0]["body"])
    csv = (DATA / Path(part["source"]["key"]).name).read_bytes()
    first_line = csv.index(b"\n", part["part"]["start"] - 1) + 1  # a part starts on the line after its start
    assert part["part"]["end"] == len(csv) and csv[:first_line].count(b"\n") - 1 == part["part"]["first_row"]


# ----------------------------------------------------------------------------------- the Spark path


def plant_files() -> dict[str, bytes]:
    frame = simulate_plant(PlantConfig.small(seed=2)).historian_frame()
    lines = frame.to_csv(index=False).encode().splitlines()
    lines[5] = b"," + lines[5].split(b",", 1)[1]  # a row without device id
    cells = lines[400].split(b",")
    cells[8] = b"n/a"  # vibration_rms is not a number
    lines[400] = b",".join(cells)
    lines[900] = lines[900] + b",extra"  # a malformed line
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False, engine="pyarrow", row_group_size=300)
    return {
        "plant.csv": b"\n".join(lines) + b"\n",
        "plant.parquet": parquet.getvalue(),
        "plant.json.gz": gzip.compress(frame.to_json(orient="records", lines=True).encode()),
    }


FILES = plant_files()


def spark_scores(lake: Path) -> pd.DataFrame:
    files = sorted((lake / "scores").rglob("*.parquet"))
    tables = [pq.ParquetFile(f).read() for f in files]  # the file alone: no Hive partition column
    for table in tables:
        assert table.schema.names == SCORES_SCHEMA.names
        assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    return pd.concat([t.to_pandas() for t in tables]).sort_values("row").reset_index(drop=True)


def spark_quarantine(lake: Path) -> list[dict[str, Any]]:
    rows = [
        json.loads(line)
        for f in sorted(lake.glob("quarantine/date=*/*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    return sorted(rows, key=lambda r: r["reading_index"])


def summaries(manifest: FileManifest) -> list[tuple[Any, ...]]:
    return sorted(
        (
            a.device_id,
            a.rule_id,
            a.severity,
            a.rows,
            a.raised,
            a.escalated,
            a.resolved,
            a.first_at,
            a.last_at,
            tuple((w.row, w.timestamp) for w in a.worst_rows),
        )
        for a in manifest.alerts
    )


def worst_scores(manifest: FileManifest) -> list[float]:
    ordered = sorted(manifest.alerts, key=lambda a: (a.device_id, a.rule_id))
    return [w.score for a in ordered for w in a.worst_rows]


# The model computes in float32 and onnxruntime's kernels depend on the batch's row count: a row
# scored in a chunk of 1,440 rows and in a partition of 700 may differ in the last float32 bit.
FLOAT32 = 1e-6


@pytest.mark.spark
@pytest.mark.parametrize("name", sorted(FILES))
def test_spark_scores_a_drop_exactly_as_the_function_does(
    name: str,
    app: Any,
    aws: EmbeddedAws,
    stack: Provisioned,
    spark: Any,
    bundle_dir: Path,
    tmp_path: Path,
) -> None:
    data = FILES[name]
    event = drop(aws, stack, name, data)
    function = only_outcome(invoke(app, event))
    assert function["status"] == "scored"
    expected = manifest_of(aws, stack, function)
    obj = event["Records"][0]["s3"]["object"]
    source = drop_source(stack, obj)
    local = tmp_path / name
    local.write_bytes(data)

    manifest = score_file_on_spark(
        spark, str(local), source, bundle_dir, str(tmp_path / "lake"), partitions=3
    )

    assert manifest.status == "scored", manifest.error
    assert manifest.source_id == expected.source_id
    for count in ("rows_in", "rows_scored", "rows_quarantined", "blank_lines", "alert_rows", "devices"):
        assert getattr(manifest, count) == getattr(expected, count), count
    assert manifest.rows_in == manifest.rows_scored + manifest.rows_quarantined == 1440
    assert summaries(manifest) == summaries(expected)
    np.testing.assert_allclose(worst_scores(manifest), worst_scores(expected), rtol=FLOAT32)
    written = FileManifest.model_validate_json(
        (tmp_path / "lake" / "manifests" / f"{source.source_id}.json").read_text()
    )
    assert written == manifest and all((tmp_path / "lake" / key).is_file() for key in manifest.outputs)

    ours, theirs = spark_scores(tmp_path / "lake"), scores(aws, stack, source.source_id)
    assert len(ours) == manifest.rows_scored
    exact = [c for c in SCORES_SCHEMA.names if c not in ("score", "rules")]
    pd.testing.assert_frame_equal(ours[exact], theirs[exact], check_dtype=False)
    assert [list(r) for r in ours["rules"]] == [list(r) for r in theirs["rules"]]
    np.testing.assert_allclose(ours["score"], theirs["score"], rtol=FLOAT32)

    bad_ours = [(r["reading_index"], r["reason"], r["stage"]) for r in spark_quarantine(tmp_path / "lake")]
    bad_theirs = [
        (r["reading_index"], r["reason"], r["stage"]) for r in quarantined_rows(aws, stack, source.source_id)
    ]
    assert bad_ours == bad_theirs
    assert len(bad_ours) == (3 if name.endswith(".csv") else 0)

    # drift window summaries: the same objects, keys and counts as the function's (4 devices, 6 hours)
    theirs_windows = {
        key: [WindowSummary.from_dict(d) for d in json.loads(lake_bytes(aws, stack, key))]
        for key in lake_keys(aws, stack, "summaries/")
    }
    lake = tmp_path / "lake"
    ours_windows = {
        path.relative_to(lake).as_posix(): [WindowSummary.from_dict(d) for d in json.loads(path.read_text())]
        for path in sorted(lake.glob("summaries/**/*.json"))
    }
    assert ours_windows == theirs_windows
    windows = [w for group in ours_windows.values() for w in group]
    assert len(windows) >= 6 and sum(w.scored for w in windows) == manifest.rows_scored
    assert sum(w.alerts for w in windows) == manifest.alert_rows
    assert len({d for w in windows for d in w.devices}) == manifest.devices == 4


@pytest.mark.spark
def test_the_glue_job_runs_locally_and_records_a_truncated_file_as_failed(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """``python glue_jobs/score_file.py --master local[2] ...``: a failed manifest, the file set aside, exit 0."""
    cut = gzip.compress(FILES["plant.csv"])[:-500]
    drop_file = tmp_path / "cut.csv.gz"
    drop_file.write_bytes(cut)
    lake = tmp_path / "lake"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "glue_jobs" / "score_file.py"),
            "--master",
            "local[2]",
            "--input",
            str(drop_file),
            "--key",
            "drops/test/cut.csv.gz",
            "--bucket",
            "zaindari-rawbucket",
            "--version",
            "v42",
            "--lake",
            str(lake),
            "--model",
            str(bundle_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "failed" and "truncated gzip file" in summary["error"]
    source_id = FileSource(
        key="drops/test/cut.csv.gz", bucket="zaindari-rawbucket", version_id="v42"
    ).source_id
    manifest = FileManifest.model_validate_json((lake / "manifests" / f"{source_id}.json").read_text())
    assert manifest.status == "failed" and manifest.rows_in == 0
    assert (lake / "quarantine" / "files" / source_id / "cut.csv.gz").read_bytes() == cut
    assert not (lake / "scores").exists() or not list((lake / "scores").rglob("*.parquet"))


def spark_drop(spark: Any, tmp_path: Path, name: str, bundle_dir: Path, options: FileScoringOptions) -> Any:
    """The manifest of ``tmp_path/name`` scored on Spark (2 partitions) into ``tmp_path/spark``."""
    return score_file_on_spark(
        spark,
        str(tmp_path / name),
        FileSource(key=f"drops/{name}", etag="e1"),
        bundle_dir,
        str(tmp_path / "spark"),
        partitions=2,
        options=options,
    )


@pytest.mark.spark
def test_spark_keeps_and_refuses_nested_values_as_the_function_does(
    spark: Any, bundle: ModelBundle, bundle_dir: Path, tmp_path: Path
) -> None:
    # here, after the Spark tests above (a cold session's first mapInPandas job costs ~15 s)
    data = nested_drop(simulate_plant(PlantConfig.small(seed=0)).historian_frame())
    expected = run(bundle, data, "nested.parquet", tmp_path / "function", options=NESTED_KEEP)
    (tmp_path / "nested.parquet").write_bytes(data)

    manifest = spark_drop(spark, tmp_path, "nested.parquet", bundle_dir, NESTED_KEEP)

    assert (manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined) == (
        expected.rows_in,
        expected.rows_scored,
        expected.rows_quarantined,
    )
    ours, theirs = quarantined(tmp_path / "spark"), quarantined(tmp_path / "function")
    assert sorted(ours) == [3, 5, 7]  # the struct site, the bytes that are not UTF-8, the list line
    assert {r: q["reason"] for r, q in ours.items()} == {r: q["reason"] for r, q in theirs.items()}
    kept = ["row", *NESTED_KEEP.keep_columns]
    pd.testing.assert_frame_equal(scores_of(tmp_path / "spark")[kept], scores_of(tmp_path / "function")[kept])


@pytest.mark.spark
def test_spark_keeps_columns_named_like_its_own_as_the_function_does(
    spark: Any, bundle: ModelBundle, bundle_dir: Path, tmp_path: Path
) -> None:
    # payload and kind were Spark's own column names (AMBIGUOUS_REFERENCE), x.y tripped
    # mapInPandas and _metadata hid the Parquet row numbers; __zaindari_row only passes through
    frame = simulate_plant(PlantConfig.small(seed=0)).historian_frame().head(40)
    extra = ("payload", "kind", "x.y", "_metadata", "__zaindari_row")
    for name in extra:
        frame[name] = [f"{name}-{i}" for i in range(len(frame))]
    data = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data)
    (tmp_path / "named.parquet").write_bytes(data.getvalue())
    options = FileScoringOptions(keep_columns=extra[:4])
    expected = run(bundle, data.getvalue(), "named.parquet", tmp_path / "function", options=options)

    manifest = spark_drop(spark, tmp_path, "named.parquet", bundle_dir, options)

    assert manifest.status == expected.status == "scored"
    assert (manifest.rows_in, manifest.rows_scored) == (expected.rows_in, expected.rows_scored) == (40, 40)
    for lake in ("spark", "function"):
        for f in (tmp_path / lake / "scores").rglob("*.parquet"):
            assert pq.read_schema(f).names == [*SCORES_SCHEMA.names, *extra[:4]]
    kept = ["row", *extra[:4]]
    ours = scores_of(tmp_path / "spark")[kept]
    pd.testing.assert_frame_equal(ours, scores_of(tmp_path / "function")[kept])
    assert ours["x.y"].tolist() == [f"x.y-{i}" for i in range(40)]


@pytest.mark.spark
def test_spark_refuses_columns_named_alike_but_for_case_with_a_failed_manifest(
    spark: Any, bundle_dir: Path, tmp_path: Path
) -> None:
    # Spark compares column names ignoring case: `extra` and `EXTRA` cannot be read apart there
    # (the function scores such a file); the drop gets a failed manifest saying why, not a crash
    frame = simulate_plant(PlantConfig.small(seed=0)).historian_frame().head(10)
    frame["extra"], frame["EXTRA"] = "a", "b"
    data = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data)
    (tmp_path / "cased.parquet").write_bytes(data.getvalue())

    manifest = spark_drop(spark, tmp_path, "cased.parquet", bundle_dir, FileScoringOptions())

    assert manifest.status == "failed"
    assert manifest.error is not None and "differ only in case" in manifest.error
    assert (
        json.loads((tmp_path / "spark" / "manifests" / f"{manifest.source_id}.json").read_text())["status"]
        == "failed"
    )
