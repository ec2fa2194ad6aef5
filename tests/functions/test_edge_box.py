"""The edge box end to end, on real parts: a box served over HTTP (``zaindari edge serve``) scoring
offline is killed -9 and restarted, then its link comes up and it ships to the embedded AWS; alerts reach a real mosquitto broker and a webhook at once; model
updates come from S3, a corrupt one is refused.

The box runs as ``zaindari edge serve`` in its own process group (so SIGKILL hits the server, and
any worker, mid-write), or as ``python -m zaindari.edge.box`` for the command line; AWS is the moto server of ``conftest.py``; EventBridge is routed to SQS to be read.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.edge_support import (
    alarming_thresholds,
    bundle_variant,
    erroring_model,
    free_port,
    golden_readings,
    mosquitto,
    update_for,
)
from tests.functions.conftest import EmbeddedAws, drain, subscribe_alert_inboxes
from tests.support import http_call, plant_readings, start_server, zaindari_cli
from zaindari.bundle import ModelBundle
from zaindari.demo.edge import Link
from zaindari.edge.box import EdgeBox
from zaindari.edge.buffer import ACK_DETAIL_TYPE
from zaindari.edge.model_sync import write_golden
from zaindari.event_scoring import InboundRecord
from zaindari.infra.edge_uplink import AwsUplink, S3BundleFetcher
from zaindari.registry_events import ModelUpdate
from zaindari.settings import Settings

pytestmark = pytest.mark.aws

BUCKET = "zaindari-lake"
HOUR = slice(1080, 1320)  # 04:30 to 05:30 of the small plant: two faults develop, alerts fire


@pytest.fixture(scope="module")
def readings() -> list[dict[str, Any]]:
    return plant_readings()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with mosquitto(tmp_path_factory.mktemp("mosquitto")) as port:
        yield port


class MqttInbox:
    """A real MQTT subscriber on the broker: every message published on ``zaindari/alerts/#``."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, dict[str, Any]]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"inbox-{os.getpid()}-{time.time_ns()}"
        )
        self.client.on_connect = lambda c, *_: c.subscribe("zaindari/alerts/#", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(5), "MQTT subscription not acknowledged"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Webhook:
    """A loopback HTTP endpoint that records the JSON POSTed to it; can be stopped and restarted."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"auth": self.headers.get("Authorization"), "alert": json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"


def box_env(root: Path, aws: EmbeddedAws, **extra: str) -> dict[str, str]:
    return {
        "ZAINDARI_EDGE_BOX_ID": "press-hall-1",
        "ZAINDARI_EDGE_BUFFER_PATH": str(root / "buffer.db"),
        "ZAINDARI_EDGE_MODEL_DIR": str(root / "models"),
        "ZAINDARI_EDGE_SECRETS_DIR": str(root / "secrets"),
        "ZAINDARI_LAKE_BUCKET": BUCKET,
        **aws.env,
        **extra,
    }


def provision_box(root: Path, bundle_dir: Path, readings: list[dict[str, Any]]) -> None:
    """What an installer does: golden inputs and the first model, version 1."""
    box = EdgeBox.from_settings(Settings.from_env(box_env(root, _NO_AWS)))
    write_golden(box.sync.store.golden_path, golden_readings(readings))
    assert box.sync.seed(bundle_dir, version="1").status == "applied"
    box.close()


class _NoAws:
    env: dict[str, str] = {}


_NO_AWS: Any = _NoAws()


def create_bucket(aws: EmbeddedAws) -> None:
    region = aws.env["AWS_REGION"]
    aws.factory.client("s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": region}
    )


def lake_json(aws: EmbeddedAws, prefix: str) -> dict[str, list[dict[str, Any]]]:
    s3 = aws.factory.client("s3")
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    return {key: json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()) for key in keys}


def lake_rows(aws: EmbeddedAws, prefix: str) -> list[tuple[str, list[dict[str, Any]]]]:
    s3 = aws.factory.client("s3")
    keys = sorted(
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for o in page.get("Contents", [])
    )
    out = []
    for key in keys:
        body = gzip.decompress(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        out.append((key, [json.loads(line) for line in body.splitlines() if line.strip()]))
    return out


TOKEN = "press-hall-token"


def serve_box(env: dict[str, str], port: int) -> Any:
    """``zaindari edge serve`` for the box (its own process group: the server and any worker)."""
    return start_server(
        [*zaindari_cli(), "edge", "serve", "--port", str(port), "--threads", "2"],
        env,
        f"http://127.0.0.1:{port}/healthz",
        new_session=True,
    )


def post_readings(port: int, readings: list[dict[str, Any]]) -> dict[str, Any]:
    status, _, data = http_call(
        f"http://127.0.0.1:{port}/function/score-event",
        method="POST",
        body=json.dumps({"readings": readings}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert status == 200, data
    answer: dict[str, Any] = json.loads(data)
    return answer


def test_box_killed_mid_hour_offline_then_online_delivers_every_score_and_alert_once_in_order(
    aws: EmbeddedAws, tmp_path: Path, bundle_dir: Path, readings: list[dict[str, Any]], broker: int
) -> None:
    # Given an installed box served over HTTP (`zaindari edge serve`), configured to ship to the
    # cloud but with no link to it (nothing answers at its AWS endpoint), and an hour of the
    # plant's telemetry (plus one broken reading) as its devices send it, four readings a request
    provision_box(tmp_path, bundle_dir, readings)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "zaindari-edge-token").write_text(TOKEN + "\n")
    create_bucket(aws)
    sns = aws.factory.client("sns").create_topic(Name="zaindari-alerts")["TopicArn"]
    queues = subscribe_alert_inboxes(aws, sns, "Zaindari Alert", "edge-alerts")
    acks = subscribe_alert_inboxes(aws, sns, ACK_DETAIL_TYPE, "edge-acks")
    link = Link(aws.port)  # down until started
    hour = readings[HOUR]
    # (valid as telemetry, but without the sensors the model needs: scored by no one, dead-lettered)
    broken = {**hour[60], "device_id": "plant-1-press-999", "sensors": {"humidity": 1.0}}
    feed = [*hour[:60], broken, *hour[60:]]
    requests = [feed[i : i + 4] for i in range(0, len(feed), 4)]
    env = box_env(
        tmp_path,
        aws,
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{link.port}",
        ZAINDARI_EDGE_UPLINK="aws",
        ZAINDARI_ALERT_TOPIC_ARN=sns,
        ZAINDARI_EDGE_SHIP_BACKOFF_SECONDS="0.2",
        ZAINDARI_EDGE_SHIP_BACKOFF_MAX_SECONDS="1",
        ZAINDARI_EDGE_MQTT_HOST="127.0.0.1",
        ZAINDARI_EDGE_MQTT_PORT=str(broker),
    )
    inbox = MqttInbox(broker)
    port = free_port()

    # When the box answers 25 requests, then is killed -9 (master and worker) with the 26th in flight
    server = serve_box(env, port)
    answered = [post_readings(port, r) for r in requests[:25]]
    in_flight = threading.Thread(target=lambda: _post_quietly(port, requests[25]), daemon=True)
    in_flight.start()
    time.sleep(0.01)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
    in_flight.join(timeout=30)
    assert sum(len(a["scores"]) for a in answered) == 25 * 4 - 1
    assert [r["record"]["device_id"] for a in answered for r in a["rejected"]] == ["plant-1-press-999"]
    # and restarted, its devices sending again what was not answered, and a few answered requests
    # whose answers they lost
    server = serve_box(env, port)
    try:
        again = [post_readings(port, r) for r in requests[20:]]
        assert sum(a["duplicates"] for a in again) >= 5 * 4  # the 5 answered requests sent again

        # Then, offline, every alert already went to the plant's broker at once
        reference = EdgeBox.from_settings(
            Settings.from_env(
                box_env(tmp_path / "reference", _NO_AWS, ZAINDARI_EDGE_MODEL_DIR=str(tmp_path / "models"))
            )
        )
        expected = reference.score_records([InboundRecord("all", hour, "reference")])  # no crash
        reference.close()
        assert len(expected.alerts) >= 5
        mqtt = inbox.wait_for(len(expected.alerts))
        inbox.close()
        assert {(m["alert_id"], m["kind"]) for _, m in mqtt} == {
            (a.alert_id, a.kind) for a in expected.alerts
        }
        assert not lake_rows(aws, "scores/"), "nothing can have left the box while offline"

        # When the link comes up, the server's shipper empties the buffer by itself
        link.up()
        deadline = time.monotonic() + 60
        while (report := box_report(port))["buffered"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert report["buffered"] == {} and report["version"] == "1"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        link.down()

    # Then every score arrived exactly once, each device's in time order, with its raw telemetry
    scores = lake_rows(aws, "scores/events/")
    rows = [row for _, batch in scores for row in batch]
    assert all(key.split("/")[-1].startswith("edge-press-hall-1-") for key, _ in scores)
    assert len(rows) == len(hour) == len({r["record_key"] for r in rows})
    want = {r["record_key"]: r["score"] for r in expected.scored}
    # the same scores as without the crash (float32: batch size moves the last digit)
    assert {r["record_key"]: r["score"] for r in rows} == pytest.approx(want, rel=1e-5)
    for device in {r["device_id"] for r in rows}:
        times = [r["timestamp"] for r in rows if r["device_id"] == device]
        assert times == sorted(times)
    assert sum(len(b) for _, b in lake_rows(aws, "raw/telemetry/")) == len(hour)
    quarantined = [row for _, b in lake_rows(aws, "quarantine/events/") for row in b]
    assert len(quarantined) == 1 and "required by model spec" in quarantined[0]["reason"]
    assert quarantined[0]["record"]["device_id"] == "plant-1-press-999"
    # drift window summaries under the cloud's keys, each reading counted once
    drift = lake_json(aws, "summaries/date=")
    assert drift and all("-edge-press-hall-1-" in key for key in drift)
    assert sum(s["scored"] for rows in drift.values() for s in rows) == len(hour)
    assert sum(s["readings"] for rows in drift.values() for s in rows) == len(hour) + 1  # + the broken one
    # every alert exactly once, in the order it was raised, with the cloud's payload (= the MQTT one)
    arrived = [e["detail"] for e in drain(aws, queues["eventbridge"])]
    assert [(a["alert_id"], a["kind"]) for a in arrived] == [(a.alert_id, a.kind) for a in expected.alerts]
    assert sorted(arrived, key=lambda a: a["alert_id"] + a["kind"]) == sorted(
        (m for _, m in mqtt), key=lambda a: a["alert_id"] + a["kind"]
    )
    assert len(drain(aws, queues["sns"])) == len(expected.alerts)
    # and the cloud knows which model the box runs
    connected = [e["detail"] for e in drain(aws, acks["eventbridge"]) if e["detail"]["event"] == "connected"]
    assert connected and connected[0]["version"] == "1" and connected[0]["box_id"] == "press-hall-1"


def _post_quietly(port: int, readings: list[dict[str, Any]]) -> None:
    """A request whose answer may never come (the server is killed under it)."""
    with contextlib.suppress(OSError):
        http_call(
            f"http://127.0.0.1:{port}/function/score-event",
            method="POST",
            body=json.dumps({"readings": readings}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )


def box_report(port: int) -> dict[str, Any]:
    """model-sync's GET: the model running and what the buffer still holds."""
    status, _, data = http_call(
        f"http://127.0.0.1:{port}/function/model-sync", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200, data
    report: dict[str, Any] = json.loads(data)
    return report


def test_alerts_go_to_mqtt_and_the_webhook_at_once_and_a_channel_that_was_down_catches_up(
    aws: EmbeddedAws, tmp_path: Path, bundle_dir: Path, readings: list[dict[str, Any]], broker: int
) -> None:
    # Given an offline box with both plant channels, the webhook token in its secret files
    provision_box(tmp_path, bundle_dir, readings)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "webhook-token").write_text("s3cret\n")
    webhook = Webhook()
    inbox = MqttInbox(broker)
    settings = Settings.from_env(
        box_env(
            tmp_path,
            aws,
            ZAINDARI_EDGE_MQTT_HOST="127.0.0.1",
            ZAINDARI_EDGE_MQTT_PORT=str(broker),
            ZAINDARI_EDGE_MQTT_TOPIC="zaindari/alerts/{site}/{device_id}/{severity}",
            ZAINDARI_EDGE_WEBHOOK_URL=webhook.url,
        )
    )
    box = EdgeBox.from_settings(settings)
    # When the first half hour is scored
    first = box.score_records([InboundRecord("a", readings[1080:1200], "t")])
    # Then its alerts are already on both channels when the call returns, with the cloud's payload
    assert first.alerts
    assert [w["alert"] for w in webhook.received] == [a.model_dump(mode="json") for a in first.alerts]
    assert {w["auth"] for w in webhook.received} == {"Bearer s3cret"}
    got = inbox.wait_for(len(first.alerts))
    assert [m for _, m in got] == [a.model_dump(mode="json") for a in first.alerts]
    alert = first.alerts[0]
    assert got[0][0] == f"zaindari/alerts/{alert.site}/{alert.device_id}/{alert.severity}"

    # When the webhook goes down for the next half hour
    webhook.stop()
    second = box.score_records([InboundRecord("b", readings[1200:1320], "t")])
    assert second.alerts and not second.retry_ids  # scoring is not held back by a plant channel
    # Then MQTT still gets them at once, and the webhook's are kept for it
    assert len(inbox.wait_for(len(first.alerts) + len(second.alerts))) == len(first.alerts) + len(
        second.alerts
    )
    assert box.stats().local_alerts_pending == len(second.alerts)
    # and once it is back, the background rounds deliver them (after the channel's retry wait,
    # 1 s here), in order, and nothing twice
    webhook.start()
    deadline = time.monotonic() + 10
    while box.stats().local_alerts_pending and time.monotonic() < deadline:
        box.forward_once()
        time.sleep(0.1)
    assert [w["alert"] for w in webhook.received] == [
        a.model_dump(mode="json") for a in first.alerts + second.alerts
    ]
    assert box.stats().local_alerts_pending == 0
    time.sleep(0.2)
    assert len(inbox.messages) == len(first.alerts) + len(second.alerts)
    box.close()
    inbox.close()
    webhook.stop()


def upload_bundle(aws: EmbeddedAws, folder: Path, prefix: str, *, corrupt: str | None = None) -> str:
    s3 = aws.factory.client("s3")
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        if file.name == corrupt:
            data = data[:-10] + b"x" * 10
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}{file.name}", Body=data)
    return f"s3://{BUCKET}/{prefix}"


def post_update(port: int, update: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, _, data = http_call(
        f"http://127.0.0.1:{port}/function/model-sync",
        method="POST",
        body=json.dumps(update).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=120,
    )
    answer: dict[str, Any] = json.loads(data)
    return status, answer


def test_model_updates_over_http_corrupt_and_smoke_failing_are_refused_an_erroring_one_rolls_back(
    aws: EmbeddedAws, tmp_path: Path, bundle_dir: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given a box served over HTTP, online, running version 1; versions published to S3: 2 (also
    # once damaged in transit), 3 (thresholds that alarm on normal operation), 4 (a graph that
    # passes the smoke test, then fails on hot readings)
    provision_box(tmp_path, bundle_dir, readings)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "zaindari-edge-token").write_text(TOKEN + "\n")
    create_bucket(aws)
    sns = aws.factory.client("sns").create_topic(Name="zaindari-alerts")["TopicArn"]
    acks = subscribe_alert_inboxes(aws, sns, ACK_DETAIL_TYPE, "edge-acks")
    v2 = bundle_variant(bundle, tmp_path / "v2", version="2")
    v3 = bundle_variant(bundle, tmp_path / "v3", version="3", thresholds=alarming_thresholds(bundle))
    model, signature = erroring_model(bundle, feature="temperature", above=100.0)
    v4 = bundle_variant(bundle, tmp_path / "v4", version="4", model=model, signature=signature)
    damaged = update_for(v2, upload_bundle(aws, v2, "models/x/2-damaged/", corrupt="model.onnx"), "2")
    good = update_for(v2, upload_bundle(aws, v2, "models/x/2/"), "2")
    alarming = update_for(v3, upload_bundle(aws, v3, "models/x/3/"), "3")
    erroring = update_for(v4, upload_bundle(aws, v4, "models/x/4/"), "4")
    env = box_env(
        tmp_path,
        aws,
        ZAINDARI_EDGE_UPLINK="aws",
        ZAINDARI_ALERT_TOPIC_ARN=sns,
        ZAINDARI_EDGE_ROLLBACK_AFTER_ERRORS="2",
    )
    normal = iter(readings[1000 + 4 * i : 1004 + 4 * i] for i in range(20))
    hot = iter(
        [
            {**r, "sensors": {**r["sensors"], "temperature": 120.0}}
            for r in readings[1100 + 4 * i : 1104 + 4 * i]
        ]
        for i in range(5)
    )
    port = free_port()
    server = serve_box(env, port)
    try:
        # When the damaged update is POSTed: refused (hashes), version 1 keeps serving
        status, answer = post_update(port, damaged.model_dump())
        assert (status, answer["status"], answer["serving"]) == (422, "refused", "1")
        assert "model.onnx" in answer["reason"]
        assert post_readings(port, next(normal))["model_version"] == "plant-anomaly:1"
        # one whose artifact is not in S3: refused (not pending: retrying cannot help)
        status, answer = post_update(port, update_for(v2, f"s3://{BUCKET}/models/x/9/", "9").model_dump())
        assert status == 422 and "NoSuchKey" in answer["reason"]
        # the one that alarms on the golden inputs: refused by the smoke test, never serves
        status, answer = post_update(port, alarming.model_dump())
        assert status == 422 and answer["reason"].startswith("smoke test failed")
        assert post_readings(port, next(normal))["model_version"] == "plant-anomaly:1"
        # the good one, as the cloud's EventBridge event: applied, serves at once
        event = {"detail-type": "Zaindari Model Update", "detail": good.model_dump()}
        status, answer = post_update(port, event)
        assert (status, answer["status"], answer["serving"]) == (200, "applied", "2")
        assert post_readings(port, next(normal))["model_version"] == "plant-anomaly:2"
        # the erroring one: applied (normal readings score), then fails live traffic twice in a row
        assert post_update(port, erroring.model_dump())[0] == 200
        assert post_readings(port, next(normal))["model_version"] == "plant-anomaly:4"
        status, _, data = http_call(
            f"http://127.0.0.1:{port}/function/score-event",
            method="POST",
            body=json.dumps({"readings": next(hot)}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert status == 503 and json.loads(data)["message"].startswith("scoring failed")
        # Then the second failure rolls it back by itself, and that request is scored by version 2
        rescued = post_readings(port, next(hot))
        assert rescued["model_version"] == "plant-anomaly:2" and len(rescued["scores"]) == 4
        report = box_report(port)
        assert report["version"] == "2" and "plant-anomaly:4" in report["rolled_back"]
        assert [(o["event"], o.get("version")) for o in report["outcomes"]] == [
            ("model_refused", "2"),
            ("model_refused", "9"),
            ("model_refused", "3"),
            ("model_applied", "2"),
            ("model_applied", "4"),
            ("model_rolled_back", "2"),
        ]
        # and the same version is refused if it comes again
        status, answer = post_update(port, erroring.model_dump())
        assert status == 422 and "rolled back before" in answer["reason"]
        # and the cloud hears every outcome, in order, as Edge Acks
        deadline = time.monotonic() + 30
        while box_report(port)["buffered"] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    events = [e["detail"] for e in drain(aws, acks["eventbridge"])]
    assert [(e["event"], e.get("version")) for e in events if e["event"] != "connected"] == [
        ("model_applied", "1"),  # the installer's seed
        ("model_refused", "2"),
        ("model_refused", "9"),
        ("model_refused", "3"),
        ("model_applied", "2"),
        ("model_applied", "4"),
        ("model_rolled_back", "2"),
        ("model_refused", "4"),
    ]


def test_update_while_the_link_is_down_waits_and_is_applied_when_it_comes_back(
    aws: EmbeddedAws, tmp_path: Path, bundle_dir: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    from zaindari.infra.aws import AwsConfig, ClientFactory

    provision_box(tmp_path, bundle_dir, readings)
    create_bucket(aws)
    v2 = bundle_variant(bundle, tmp_path / "v2", version="2")
    uri = upload_bundle(aws, v2, "models/plant-anomaly/2/")
    # a closed loopback port: the link is down
    dead = ClientFactory(AwsConfig(endpoint_url="http://127.0.0.1:9", connect_timeout_s=0.5, max_attempts=1))
    offline = EdgeBox.from_settings(Settings.from_env(box_env(tmp_path, aws)), fetcher=S3BundleFetcher(dead))
    pending = offline.apply_update(update_for(v2, uri, "2"))
    offline.close()
    assert (pending.status, pending.serving) == ("pending", "1")
    online = EdgeBox.from_settings(
        Settings.from_env(box_env(tmp_path, aws)),
        uplink=AwsUplink(aws.factory, bucket=BUCKET, event_bus="default"),
        fetcher=S3BundleFetcher(aws.factory),
    )
    online.forward_once()
    assert online.sync.current().version == "2"
    online.close()


def test_background_forwarder_ships_new_work_by_itself(
    aws: EmbeddedAws, tmp_path: Path, bundle_dir: Path, readings: list[dict[str, Any]]
) -> None:
    provision_box(tmp_path, bundle_dir, readings)
    create_bucket(aws)
    box = EdgeBox.from_settings(
        Settings.from_env(box_env(tmp_path, aws)),
        uplink=AwsUplink(aws.factory, bucket=BUCKET, event_bus="default"),
    )
    box.start(idle_seconds=5.0)
    try:
        box.score_records([InboundRecord("r", readings[1080:1120], "t")])
        deadline = time.monotonic() + 15
        while box.stats().rows and time.monotonic() < deadline:
            time.sleep(0.05)
        assert box.stats().rows == {}  # woken by the new rows, not by the 5 s idle timer
    finally:
        box.close()
    assert sum(len(b) for _, b in lake_rows(aws, "scores/events/")) == 40


def test_command_line_seeds_replays_updates_reports_and_ships(
    aws: EmbeddedAws,
    tmp_path: Path,
    bundle_dir: Path,
    readings: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from zaindari.edge.box import main

    for name, value in box_env(tmp_path, aws).items():
        monkeypatch.setenv(name, value)
    create_bucket(aws)
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps(r) + "\n" for r in golden_readings(readings)))
    feed = tmp_path / "feed.jsonl"
    feed.write_text("".join(json.dumps(r) + "\n" for r in readings[1080:1100]))
    update = tmp_path / "update.json"
    update.write_text(update_for(bundle_dir, str(bundle_dir), "2").model_dump_json())

    def run(*argv: str) -> tuple[int, list[dict[str, Any]]]:
        code = main(list(argv))
        return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert (
        run("seed", str(bundle_dir), "--version", "1", "--golden", str(golden))[1][0]["status"] == "applied"
    )
    code, batches = run("replay", str(feed), "--batch", "10")
    assert code == 0 and sum(b["readings_scored"] for b in batches) == 20
    assert run("update", str(update), "--offline")[1][0]["serving"] == "2"
    status = run("status")[1][0]
    assert status["version"] == "2" and status["buffered"]["scores"] == 2
    code, shipped = run("ship")
    assert code == 0 and shipped[0]["shipped"]["scores"] == 20 and shipped[0]["remaining"] == {}


def test_mqtt_channel_refused_while_the_broker_is_down_then_delivers_when_it_is_up(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    from tests.edge_support import free_port
    from zaindari.contract import parse_readings
    from zaindari.edge.local_alerts import ChannelError, MqttChannel
    from zaindari.pipeline import score_readings

    alert = score_readings(bundle, parse_readings(readings[1080:1320]).readings).alerts[0]
    port = free_port()
    channel = MqttChannel("127.0.0.1", port, timeout_seconds=2.0)
    began = time.monotonic()
    with pytest.raises(ChannelError, match="refused"):
        channel.send(alert)
    assert time.monotonic() - began < 1.0  # a refused connection costs no timeout
    with mosquitto(tmp_path, port):
        inbox = MqttInbox(port)
        channel.send(alert)
        got = inbox.wait_for(1)
        inbox.close()
    channel.close()
    assert got == [(f"zaindari/alerts/{alert.device_id}", alert.model_dump(mode="json"))]


def presigned(aws: EmbeddedAws, prefix: str, names: list[str]) -> dict[str, str]:
    s3 = aws.factory.client("s3")
    return {
        name: s3.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": f"{prefix}{name}"}, ExpiresIn=600
        )
        for name in names
    }


def test_update_with_presigned_urls_needs_no_credentials_and_a_tampered_manifest_is_refused(
    aws: EmbeddedAws, tmp_path: Path, bundle_dir: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    import hashlib

    # Given a box with no AWS access at all, and deploy_model's event for version 2 with
    # presigned GETs (real HTTP to the embedded S3)
    provision_box(tmp_path, bundle_dir, readings)
    create_bucket(aws)
    v2 = bundle_variant(bundle, tmp_path / "v2", version="2")
    upload_bundle(aws, v2, "models/plant-anomaly/2/")
    names = sorted(p.name for p in v2.iterdir())
    event = {
        **update_for(v2, f"s3://{BUCKET}/models/plant-anomaly/2/", "2").model_dump(),
        "version": 2,  # the registry's integer version
        "urls": presigned(aws, "models/plant-anomaly/2/", names),
        "manifest_sha256": hashlib.sha256((v2 / "MANIFEST.json").read_bytes()).hexdigest(),
        "urls_expire_at": "2099-01-01T00:00:00Z",
        "alias": "production",
    }
    box = EdgeBox.from_settings(Settings.from_env(box_env(tmp_path, _NO_AWS)))
    # When an event whose manifest digest is not the manifest's arrives, then the right one
    tampered = box.apply_update({**event, "manifest_sha256": "0" * 64})
    applied = box.apply_update(event)
    # Then the first is refused and the second is applied from the URLs alone
    assert tampered.status == "refused" and "MANIFEST.json" in tampered.reason
    assert (applied.status, applied.serving) == ("applied", "2")
    # and an event whose URLs are refused (moto does not check signatures: a missing object) is
    # refused, not left pending
    missing = {**event, "version": 3, "urls": presigned(aws, "models/plant-anomaly/3/", names)}
    assert ModelUpdate.model_validate(missing).urls
    refused = box.apply_update(missing)
    box.close()
    assert refused.status == "refused" and "presigned URL was refused" in refused.reason


def test_server_pipeline_answers_before_a_slow_plant_channel_and_a_failed_fsync_refuses_until_restart(
    tmp_path: Path,
    bundle_dir: Path,
    readings: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from zaindari.edge.wiring import batching_scoring
    from zaindari.ports import PortError

    # Given a box running the server's pipeline, whose plant webhook hangs until released
    provision_box(tmp_path, bundle_dir, readings)
    arrived, release = threading.Event(), threading.Event()

    class Hanging(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            arrived.set()
            release.wait(10)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hanging)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    settings = Settings.from_env(box_env(tmp_path, _NO_AWS, ZAINDARI_EDGE_WEBHOOK_URL=url))
    box = EdgeBox.from_settings(settings)
    box.start(idle_seconds=30.0)  # only a wake makes a round soon
    scoring = batching_scoring(box)
    hot = json.dumps({"readings": readings[1080:1200]})
    # When a group raises alerts
    started = time.monotonic()
    answer = scoring.answer_http(hot, "r1")
    # Then it is answered while the webhook still hangs (delivery is not on the answers' path)
    assert answer.status == 200 and answer.body["alerts"]
    assert not release.is_set() and time.monotonic() - started < 5
    # and the background thread, woken by the settle, sends them at once
    assert arrived.wait(5)
    release.set()
    deadline = time.monotonic() + 10
    while box.stats().local_alerts_pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert box.stats().local_alerts_pending == 0

    # When the fsync of the next group fails (EIO), the disk working again right after
    real_fsync = os.fsync
    failures = [OSError(5, "Input/output error (injected)")]

    def fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    # (as under OpenFaaS: the watchdog's environment and the lock file its health check needs)
    monkeypatch.setenv("fprocess", "python index.py")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / ".lock").write_bytes(b"")
    body = json.dumps({"readings": readings[1200:1206]})
    with pytest.raises(PortError, match="Input/output error"):
        scoring.answer_http(body, "r2")
    assert not (tmp_path / ".lock").exists()  # /_/health answers 503: the orchestrator restarts it
    # Then the request sent again is refused too (not answered "duplicate" from a group the
    # disk may not hold), and so is every other, until the server restarts
    with pytest.raises(PortError, match="restart the edge server"):
        scoring.answer_http(body, "r3")
    assert box.buffer.failed is not None
    box.close()
    restarted = EdgeBox.from_settings(settings)
    again = batching_scoring(restarted).answer_http(body, "r4")
    assert again.status == 200
    assert len(again.body["scores"]) + again.body["duplicates"] == 6
    restarted.close()
    server.shutdown()
    server.server_close()
