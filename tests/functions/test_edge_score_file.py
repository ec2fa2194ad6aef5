"""score-file at the edge is stored and forwarded: historian files posted to a box served over HTTP
(``zaindari edge serve``) while its link is down reach the embedded AWS once it is up, under the
keys the cloud's ``score_batch`` writes, each row exactly once, with the file's alerts on
EventBridge; a file posted again is a duplicate and adds nothing."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.edge_support import free_port
from tests.functions.conftest import EmbeddedAws, drain, subscribe_alert_inboxes
from tests.functions.test_edge_box import (
    BUCKET,
    TOKEN,
    box_env,
    box_report,
    create_bucket,
    provision_box,
    readings,  # noqa: F401 (fixture)
    serve_box,
)
from tests.support import http_call
from zaindari.demo.edge import Link

pytestmark = pytest.mark.aws

SENSORS = ("temperature", "vibration_rms", "motor_current", "pressure", "speed", "torque")


def flat(reading: dict[str, Any]) -> dict[str, Any]:
    """A reading as a historian row: identity columns, then one column per sensor."""
    return {k: v for k, v in reading.items() if k != "sensors"} | dict(reading["sensors"])


def historian_csv(rows: list[dict[str, Any]]) -> bytes:
    frame = pd.DataFrame([flat(r) for r in rows])
    # two rows the contract refuses: a sensor value that is no number, a timestamp without a zone
    frame = frame.astype({"temperature": object})
    frame.loc[7, "temperature"] = "hot"
    frame.loc[11, "timestamp"] = "2024-01-01 04:35:00"
    frame["batch"] = "B-0430"  # not scored; kept (ZAINDARI_FILE_KEEP_COLUMNS)
    return frame.to_csv(index=False).encode()


def historian_jsonl(rows: list[dict[str, Any]]) -> bytes:
    lines = [json.dumps(flat(r)) for r in rows]
    lines.insert(5, '{"device_id": "plant-1-press-101", "timestamp": "not a time"}')  # quarantined
    lines.insert(9, "{not json")  # quarantined (parse)
    return ("\n".join(lines) + "\n").encode()


def post_file(port: int, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
    status, _, data = http_call(
        f"http://127.0.0.1:{port}/function/score-file?name={name}",
        method="POST",
        body=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=120,
    )
    answer: dict[str, Any] = json.loads(data)
    return status, answer


def lake_keys(aws: EmbeddedAws, prefix: str) -> list[str]:
    s3 = aws.factory.client("s3")
    return sorted(
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for o in page.get("Contents", [])
    )


def lake_object(aws: EmbeddedAws, key: str) -> bytes:
    body: bytes = aws.factory.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def test_files_posted_offline_reach_the_lake_and_eventbridge_once_under_the_cloud_keys(
    aws: EmbeddedAws,
    tmp_path: Path,
    bundle_dir: Path,
    readings: list[dict[str, Any]],  # noqa: F811
) -> None:
    # Given an installed box served over HTTP, configured to ship but with its link down, and two
    # historian files of the plant's first hour of faults (alerts fire in it), each with bad rows
    provision_box(tmp_path, bundle_dir, readings)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "zaindari-edge-token").write_text(TOKEN + "\n")
    create_bucket(aws)
    sns = aws.factory.client("sns").create_topic(Name="zaindari-alerts")["TopicArn"]
    queues = subscribe_alert_inboxes(aws, sns, "Zaindari Alert", "file-alerts")
    link = Link(aws.port)  # down until started
    env = box_env(
        tmp_path,
        aws,
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{link.port}",
        ZAINDARI_EDGE_UPLINK="aws",
        ZAINDARI_ALERT_TOPIC_ARN=sns,
        ZAINDARI_EDGE_DATA_DIR=str(tmp_path / "data"),
        ZAINDARI_EDGE_SHIP_BACKOFF_SECONDS="0.2",
        ZAINDARI_EDGE_SHIP_BACKOFF_MAX_SECONDS="1",
        ZAINDARI_FILE_KEEP_COLUMNS="batch",
    )
    files = {
        "press-hall_0430.csv": historian_csv(readings[1080:1200]),
        "press-hall_0500.jsonl": historian_jsonl(readings[1200:1320]),
    }
    port = free_port()
    server = serve_box(env, port)
    try:
        # When both are posted offline, and posted again
        manifests = {}
        for name, body in files.items():
            status, answer = post_file(port, name, body)
            assert status == 200 and answer["status"] == "scored", answer
            manifests[name] = answer["manifest"]
        for name, body in files.items():
            status, answer = post_file(port, name, body)
            assert (status, answer["status"]) == (200, "duplicate")
            assert answer["manifest"]["source_id"] == manifests[name]["source_id"]
        csv, jsonl = manifests.values()
        assert (csv["rows_in"], csv["rows_scored"], csv["rows_quarantined"]) == (120, 118, 2)
        assert (jsonl["rows_in"], jsonl["rows_scored"], jsonl["rows_quarantined"]) == (122, 120, 2)
        assert csv["alerts"] or jsonl["alerts"]
        # Then nothing left the box, everything waits in its buffer
        assert box_report(port)["buffered"]["object"] >= 6
        assert not lake_keys(aws, "")

        # When the link comes up, the box's shipper empties its buffer by itself
        link.up()
        deadline = time.monotonic() + 60
        while (report := box_report(port))["buffered"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert report["buffered"] == {}
        # and a file posted again once shipped is still a duplicate
        assert (
            post_file(port, "press-hall_0430.csv", files["press-hall_0430.csv"])[1]["status"] == "duplicate"
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        link.down()

    # Then each file's manifest, scores and quarantined rows are in the lake under the cloud's keys
    for manifest in manifests.values():
        sid = manifest["source_id"]
        assert manifest["source"]["key"].startswith("edge/press-hall-1/")
        assert json.loads(lake_object(aws, f"manifests/{sid}.json")) == manifest
        assert manifest["outputs"] == sorted(
            [f"scores/date=2024-01-01/{sid}.parquet", f"quarantine/date={_today()}/{sid}.jsonl"]
        )
        scores = pd.read_parquet(io.BytesIO(lake_object(aws, f"scores/date=2024-01-01/{sid}.parquet")))
        assert len(scores) == manifest["rows_scored"] == scores["row"].nunique()
        assert set(scores["source_key"]) == {manifest["source"]["key"]}
        # the kept column follows the scores' own, as score_batch writes it; null where a file lacks it
        assert list(scores.columns)[-1] == "batch"
        kept = {"B-0430"} if manifest["source"]["key"].endswith(".csv") else {None}
        assert set(scores["batch"].replace({float("nan"): None})) == kept
        quarantined = [
            json.loads(line)
            for line in lake_object(aws, f"quarantine/date={_today()}/{sid}.jsonl").splitlines()
        ]
        assert len(quarantined) == manifest["rows_quarantined"] and all(q["reason"] for q in quarantined)
    # nothing else, and nothing twice (one object per key, the keys the manifests name)
    objects = lake_keys(aws, "scores/") + lake_keys(aws, "quarantine/") + lake_keys(aws, "manifests/")
    assert len(objects) == 6
    # drift window summaries of the files, under the cloud's summary keys, each scored row once
    drift = [json.loads(lake_object(aws, k)) for k in lake_keys(aws, "summaries/date=")]
    assert sum(s["scored"] for rows in drift for s in rows) == 118 + 120
    # the files' alerts reached EventBridge (and SNS) exactly once, one per device and rule per file
    arrived = [e["detail"] for e in drain(aws, queues["eventbridge"])]
    raised = [
        (m["source_id"], a["device_id"], a["rule_id"])
        for m in manifests.values()
        for a in m["alerts"]
        if a["raised"] or a["escalated"]
    ]
    assert raised
    assert sorted((a["source_id"], a["device_id"], a["rule_id"]) for a in arrived) == sorted(raised)
    assert {a["scope"] for a in arrived} == {"file"} and all(a["worst_rows"] for a in arrived)
    assert len(drain(aws, queues["sns"])) == len(raised)


def _today() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).date().isoformat()
