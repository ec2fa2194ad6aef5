"""The edge box killed -9 many times at random points (writing, compacting, shipping to moto), then
checked: the buffer is intact after every kill, every answered reading reaches the lake exactly
once and in order (or its hour's compacted summary), and every alert reaches the bus.

The harness is ``tests/edge_crash.py`` (a zygote forks one box per run, so restarts are cheap).
``ZAINDARI_KILL9_RUNS`` sets the number of kills (default 12: ~15-20 s on a loaded 2-core machine);
``bench/bench_edge_kill9.py`` runs many more and prints where they landed.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.edge_crash import POINTS, CrashHarness, CrashReport
from tests.functions.conftest import EmbeddedAws, drain, subscribe_alert_inboxes
from tests.functions.test_edge_box import _NO_AWS, box_env, create_bucket, lake_json, lake_rows, provision_box
from tests.support import plant_readings
from zaindari.demo.edge import Link
from zaindari.drift import SUMMARY_WINDOW_SECONDS
from zaindari.edge.box import EdgeBox
from zaindari.event_scoring import InboundRecord
from zaindari.settings import Settings

pytestmark = pytest.mark.aws

RUNS = int(os.environ.get("ZAINDARI_KILL9_RUNS", "12"))
BROKEN_DEVICE = "plant-1-press-999"


def crash_feed(size: int = 4) -> tuple[list[dict[str, Any]], list[str]]:
    """The plant's six hours (four devices, 1,440 readings) and the requests its gateway sends:
    ``size`` readings each, one broken reading (valid telemetry without the model's sensors: a
    dead letter)."""
    readings = plant_readings()
    broken = {**readings[100], "device_id": BROKEN_DEVICE, "sensors": {"humidity": 1.0}}
    feed = [*readings[:100], broken, *readings[100:]]
    return readings, [json.dumps({"readings": feed[i : i + size]}) for i in range(0, len(feed), size)]


def run_kills(
    aws: EmbeddedAws,
    root: Path,
    bundle_dir: Path,
    kills: int,
    seed: int,
    *,
    per_request: int = 4,
    max_bytes: int = 48 * 1024,
) -> tuple[CrashReport, dict[str, Any]]:
    """Provision a box under ``root``, kill it ``kills`` times, finish, and check what arrived."""
    readings, requests = crash_feed(per_request)
    provision_box(root, bundle_dir, readings)
    (root / "secrets").mkdir()
    (root / "secrets" / "zaindari-edge-token").write_text("unused\n")
    create_bucket(aws)
    topic = aws.factory.client("sns").create_topic(Name="zaindari-alerts")["TopicArn"]
    inbox = subscribe_alert_inboxes(aws, topic, "Zaindari Alert", "kill9-alerts")["eventbridge"]
    relay = Link(aws.port)
    env = box_env(
        root,
        aws,
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{relay.port}",
        ZAINDARI_EDGE_UPLINK="aws",
        ZAINDARI_EDGE_SHIP_BACKOFF_SECONDS="0.05",
        ZAINDARI_EDGE_SHIP_BACKOFF_MAX_SECONDS="0.5",
    )
    harness = CrashHarness(
        root, env, relay, requests, max_bytes=max_bytes, dead_devices=frozenset({BROKEN_DEVICE})
    )
    try:
        report = harness.kill_many(kills, seed)
        harness.finish()
    finally:
        harness.close()
    figures = check_delivery(aws, root, readings, inbox)
    return report, figures


def check_delivery(
    aws: EmbeddedAws, root: Path, readings: list[dict[str, Any]], inbox: str, *, devices_in_step: bool = True
) -> dict[str, Any]:
    """What the lake and the bus hold once the box shipped everything; returns figures.

    ``devices_in_step``: the devices' requests went out in time order across devices (one
    gateway), so alerts must arrive in time order; otherwise (a client per device) in time order
    per device."""
    # every reading is in scores/ once, or counted in its device-hour's compacted summary
    objects = lake_rows(aws, "scores/events/")
    rows = [row for _, batch in objects for row in batch]
    keys = Counter(r["record_key"] for r in rows)
    assert not [k for k, n in keys.items() if n > 1], "a reading was shipped twice"
    assert all(key.split("/")[-1].startswith("edge-press-hall-1-") for key, _ in objects)
    raw = [row for _, batch in lake_rows(aws, "raw/telemetry/") for row in batch]
    assert len(raw) == len(rows)
    compacted = [row for _, batch in lake_rows(aws, "summaries/edge/") for row in batch]
    expected: Counter[tuple[str, str]] = Counter(
        (r["device_id"], f"{r['timestamp'][:13]}:00:00Z") for r in readings
    )
    arrived: Counter[tuple[str, str]] = Counter(
        (r["device_id"], f"{r['timestamp'][:13]}:00:00Z") for r in rows
    )
    for summary in compacted:
        arrived[(summary["device_id"], summary["hour"])] += summary["readings"]
    assert arrived == expected, "readings lost or doubled (raw rows + compacted counts per device-hour)"
    # each device's rows in time order, in the order of the objects' names (sequence numbers)
    times: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        times[row["device_id"]].append(row["timestamp"])
    assert all(t == sorted(t) for t in times.values()), "a device's readings shipped out of order"
    quarantined = [row for _, batch in lake_rows(aws, "quarantine/events/") for row in batch]
    assert quarantined and {q["record"]["device_id"] for q in quarantined} == {BROKEN_DEVICE}
    # drift window summaries: each reading counted once
    drift = lake_json(aws, "summaries/date=")
    counted = sum(s["scored"] for batch in drift.values() for s in batch)
    if counted != len(readings):
        windows: Counter[int] = Counter()
        for batch in drift.values():
            for summary in batch:
                windows[summary["start"]] += summary["scored"]
        stamps = [datetime.fromisoformat(r["timestamp"]).timestamp() for r in readings]
        excess = {
            datetime.fromtimestamp(start, UTC).isoformat(): n
            - sum(1 for t in stamps if start <= t < start + SUMMARY_WINDOW_SECONDS)
            for start, n in sorted(windows.items())
        }
        raise AssertionError(
            f"drift summaries count {counted} readings scored, not {len(readings)}; "
            f"excess per window: { {w: n for w, n in excess.items() if n} }"
        )
    # every alert, in the order raised (EventBridge is at least once: a kill after PutEvents and
    # before the row's deletion sends it again, same alert_id and kind)
    reference = EdgeBox.from_settings(
        Settings.from_env(box_env(root / "reference", _NO_AWS, ZAINDARI_EDGE_MODEL_DIR=str(root / "models")))
    )
    want = reference.score_records([InboundRecord("all", readings, "reference")]).alerts
    reference.close()
    events = [(e["detail"]["alert_id"], e["detail"]["kind"]) for e in drain(aws, inbox)]
    first = list(dict.fromkeys(events))
    # (the reference scored the feed as one batch: its alerts come device by device; the box's
    # came request by request, i.e. in time order)
    ordered = sorted(want, key=lambda a: a.timestamp)
    if devices_in_step:
        assert want and first == [(a.alert_id, a.kind) for a in ordered]
    else:
        assert want and set(first) == {(a.alert_id, a.kind) for a in want}
        device_of = {(a.alert_id, a.kind): a.device_id for a in want}
        for device in {a.device_id for a in want}:
            assert [e for e in first if device_of[e] == device] == [
                (a.alert_id, a.kind) for a in ordered if a.device_id == device
            ]
    return {
        "readings": len(readings),
        "raw_rows": len(rows),
        "compacted_readings": sum(s["readings"] for s in compacted),
        "objects": len(objects),
        "alerts": len(want),
        "alert_events": len(events),
        "dead_letters": len(quarantined),
    }


def test_box_killed_at_many_points_loses_nothing_and_ships_everything_once_in_order(
    aws: EmbeddedAws, tmp_path: Path, bundle_dir: Path
) -> None:
    report, figures = run_kills(aws, tmp_path, bundle_dir, RUNS, seed=10)
    where = report.where()
    print(f"{len(report.kills)} kills in {report.seconds:.1f} s: {dict(where)}; {figures}")
    assert len(report.kills) == RUNS
    # the kills landed at several named points (writing, shipping...), and some at random moments
    hit = {k.point for k in report.kills if k.how == "point"}
    assert len(hit) >= min(3, RUNS // 4) and hit <= set(POINTS), hit
    assert any(k.how == "timed" for k in report.kills)
