"""score-file's sink on the edge buffer: a file's outputs enter the log in one transaction (a process
killed -9 inside it leaves nothing of the file), ship in order under the cloud's keys, and the
buffer's bound and compaction policy apply to them."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.support import ROOT, plant_readings
from tests.unit.test_edge_buffer import RecordingUplink
from zaindari.bundle import ModelBundle
from zaindari.edge.buffer import BufferedLake, BufferedSummaries, EdgeBuffer, Shipper, SqliteStateStore
from zaindari.edge.file_outbox import BufferedFileSink, posted_source
from zaindari.edge.local_alerts import LocalAlerts
from zaindari.event_scoring import EventScoring, InboundRecord
from zaindari.file_scoring import FileManifest, FileScoring, FileSource


@pytest.fixture(scope="module")
def historian_csv() -> bytes:
    """The plant's first hour of faults as a historian CSV, one row the contract refuses."""
    rows = [
        {k: v for k, v in r.items() if k != "sensors"} | r["sensors"] for r in plant_readings()[1080:1320]
    ]
    frame = pd.DataFrame(rows).astype({"temperature": object})
    frame.loc[3, "temperature"] = "hot"
    return frame.to_csv(index=False).encode()


SOURCE = FileSource(key="edge/t/hall.csv", etag="e1", size=1)


def score(buffer: EdgeBuffer, bundle: ModelBundle, spool: Path, data: bytes) -> FileManifest:
    sink = BufferedFileSink(buffer, spool, local_channels=["mqtt"])
    scoring = FileScoring(model=lambda: bundle, sink=sink, summaries=BufferedSummaries(buffer))
    return scoring.score_file(io.BytesIO(data), SOURCE)


def ship(buffer: EdgeBuffer) -> RecordingUplink:
    uplink = RecordingUplink()
    report = Shipper(buffer, uplink, box_id="t", status=dict).ship_once()
    assert report.error is None and report.remaining == 0
    return uplink


def test_a_files_objects_ship_in_order_under_the_cloud_keys_with_its_alerts(
    tmp_path: Path, bundle: ModelBundle, historian_csv: bytes
) -> None:
    buffer = EdgeBuffer(tmp_path / "edge.db")
    manifest = score(buffer, bundle, tmp_path / "spool", historian_csv)
    sid = manifest.source_id
    assert (manifest.rows_scored, manifest.rows_quarantined) == (239, 1)
    # the file's alerts are buffered for the cloud and queued for the plant's channel, which gets
    # them whole (the file's counts and worst rows, as on EventBridge)
    alerts = buffer.stats().items["alert"]
    assert alerts >= 1 and buffer.stats().local_alerts_pending == alerts
    plant = _PlantChannel()
    LocalAlerts(buffer, [plant]).deliver()
    assert len(plant.sent) == alerts and all(a["scope"] == "file" and a["worst_rows"] for a in plant.sent)
    uplink = ship(buffer)
    # scores first, then quarantined rows, then the manifest (it says the run is complete)
    objects = [k for k in uplink.puts if k in uplink.blobs]
    assert objects == [*sorted(manifest.outputs, reverse=True), f"manifests/{sid}.json"]
    scores = pd.read_parquet(io.BytesIO(uplink.blobs[f"scores/date=2024-01-01/{sid}.parquet"]))
    assert len(scores) == 239
    assert json.loads(uplink.blobs[f"manifests/{sid}.json"]) == manifest.model_dump(mode="json")
    assert {a.model_dump()["scope"] for a in uplink.alerts} == {"file"} and len(uplink.alerts) == alerts
    # the spool holds nothing once the file is in the buffer
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]


_KILLED_IN_THE_TRANSACTION = """
import io, os, signal, sys
from zaindari.bundle import load_bundle
from zaindari.edge.buffer import BufferedSummaries, EdgeBuffer
from zaindari.edge.file_outbox import BufferedFileSink, posted_source
from zaindari.file_scoring import FileScoring, FileSource

db, spool, bundle_dir, data = sys.argv[1:]
buffer = EdgeBuffer(db)
sink = BufferedFileSink(buffer, spool)
real = sink._append_json

def append_json(key, body):
    if key.startswith("manifests/"):  # the scores and quarantine are in, uncommitted
        os.kill(os.getpid(), signal.SIGKILL)
    real(key, body)

sink._append_json = append_json
bundle = load_bundle(bundle_dir)
source = FileSource(key="edge/t/hall.csv", etag="e1", size=1)
scoring = FileScoring(model=lambda: bundle, sink=sink, summaries=BufferedSummaries(buffer))
scoring.score_file(open(data, "rb"), source)
"""


def test_a_box_killed_inside_a_files_transaction_keeps_nothing_of_it_and_the_repost_lands_once(
    tmp_path: Path, bundle_dir: Path, bundle: ModelBundle, historian_csv: bytes
) -> None:
    # Given a process scoring a file that is killed -9 inside the file's transaction (after its
    # scores and quarantined rows were written to the log, before the manifest and the commit)
    (tmp_path / "hall.csv").write_bytes(historian_csv)
    args = [str(tmp_path / "edge.db"), str(tmp_path / "spool"), str(bundle_dir), str(tmp_path / "hall.csv")]
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_IN_THE_TRANSACTION), *args],
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    # Then nothing of the file is in the log (its drift summaries were, and stay once)
    buffer = EdgeBuffer(tmp_path / "edge.db")
    assert set(buffer.stats().rows) == {"drift"}
    assert [p for p in (tmp_path / "spool").iterdir()]  # the dead process's staged files
    # When the file is posted again to the restarted box
    sink = BufferedFileSink(buffer, tmp_path / "spool")
    assert sink.read_manifest(SOURCE) is None
    scoring = FileScoring(model=lambda: bundle, sink=sink, summaries=BufferedSummaries(buffer))
    manifest = scoring.score_file(io.BytesIO(historian_csv), SOURCE)
    # Then the dead process's spool is gone, and every object ships once
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [sink.spool.name]
    assert sink.read_manifest(SOURCE) == manifest
    uplink = ship(buffer)
    objects = [k for k in uplink.puts if k in uplink.blobs]
    assert len(objects) == len(set(objects)) == 3
    drift = [k for k in uplink.puts if k.startswith("summaries/")]
    assert len(drift) == 1
    assert sum(w["scored"] for w in uplink.objects[drift[0]]) == manifest.rows_scored


def test_a_full_buffer_keeps_a_files_scores_as_hourly_summaries_and_its_quarantine_and_manifest_whole(
    tmp_path: Path, bundle: ModelBundle, historian_csv: bytes
) -> None:
    # Given a buffer whose bound cannot hold the file's scores
    buffer = EdgeBuffer(tmp_path / "edge.db", max_bytes=4096)
    manifest = score(buffer, bundle, tmp_path / "spool", historian_csv)
    # Then its scores were kept as per-device hourly summaries that count every scored row
    stats = buffer.stats()
    assert stats.compacted_readings == manifest.rows_scored == 239
    uplink = ship(buffer)
    summaries = [r for k, rows in uplink.objects.items() if k.startswith("summaries/edge/") for r in rows]
    assert sum(s["readings"] for s in summaries) == 239
    assert {(s["device_id"], s["hour"][:13]) for s in summaries} == {
        (d, h) for d in {s["device_id"] for s in summaries} for h in ("2024-01-01T04", "2024-01-01T05")
    }
    # and the quarantined row and the manifest arrived whole, the manifest naming what was kept
    shipped = json.loads(uplink.blobs[f"manifests/{manifest.source_id}.json"])
    assert shipped["outputs"] == [o for o in manifest.outputs if o.startswith("quarantine/")]
    assert shipped["rows_scored"] == 239


def test_a_files_buffered_scores_are_compacted_when_later_work_needs_the_room(
    tmp_path: Path, bundle: ModelBundle, historian_csv: bytes
) -> None:
    # Given a file's scores in a buffer with room for them but not for much more
    buffer = EdgeBuffer(tmp_path / "edge.db", max_bytes=24_000)
    manifest = score(buffer, bundle, tmp_path / "spool", historian_csv)
    assert buffer.stats().compacted_readings == 0
    # When the box's devices send readings that do not fit
    events = EventScoring(
        model=lambda: bundle,
        states=SqliteStateStore(buffer),
        lake=BufferedLake(buffer),
        alerts=_NoAlerts(),
        rejects=_NoRejects(),
    )
    readings = plant_readings()[0:400]
    for begin in range(0, len(readings), 40):
        events.score_records([InboundRecord(f"r{begin}", readings[begin : begin + 40], "t")])
    # Then the older raw scores, the file's among them, became summaries in their place in the log
    stats = buffer.stats()
    assert stats.bytes <= 24_000
    uplink = ship(buffer)
    assert f"scores/date=2024-01-01/{manifest.source_id}.parquet" not in uplink.blobs
    assert stats.compacted_readings >= manifest.rows_scored
    summaries = [r for k, rows in uplink.objects.items() if k.startswith("summaries/edge/") for r in rows]
    assert sum(s["readings"] for s in summaries) == stats.compacted_readings


class _PlantChannel:
    name = "mqtt"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, alert: Any) -> None:
        self.sent.append(json.loads(alert.model_dump_json()))

    def close(self) -> None:
        return None


class _NoAlerts:
    def publish(self, alerts: Any) -> set[str]:
        return set()


class _NoRejects:
    def reject(self, rejected: Any) -> list[str]:
        return []


def test_a_file_refused_whole_ships_its_reason_and_a_copy_to_replay_and_no_scores(
    tmp_path: Path, bundle: ModelBundle
) -> None:
    # Given a file without the columns the model needs, scored while the sink keeps its bytes
    buffer = EdgeBuffer(tmp_path / "edge.db")
    sink = BufferedFileSink(buffer, tmp_path / "spool")
    data = b"a,b\n1,2\n"
    with sink.keeping(SOURCE, data):
        manifest = FileScoring(model=lambda: bundle, sink=sink).score_file(io.BytesIO(data), SOURCE)
    # Then it failed with its reason, and the lake gets the record, the copy and the manifest only
    assert manifest.status == "failed" and manifest.error
    assert sink.read_manifest(SOURCE) == manifest  # a repost is scored again (failed is not final)
    uplink = ship(buffer)
    sid = manifest.source_id
    assert sorted(uplink.blobs) == [
        f"manifests/{sid}.json",
        f"quarantine/files/{sid}.json",
        f"quarantine/files/{sid}/hall.csv",
    ]
    record = json.loads(uplink.blobs[f"quarantine/files/{sid}.json"])
    assert record["reason"] == manifest.error and record["copy"] == f"quarantine/files/{sid}/hall.csv"
    assert uplink.blobs[record["copy"]] == data
    assert manifest.quarantined_to == f"quarantine/files/{sid}.json"


def test_the_list_of_files_posted_keeps_as_many_as_the_buffer_remembers_keys(
    tmp_path: Path, bundle: ModelBundle, historian_csv: bytes
) -> None:
    buffer = EdgeBuffer(tmp_path / "edge.db", key_memory=1)
    sink = BufferedFileSink(buffer, tmp_path / "spool")
    scoring = FileScoring(model=lambda: bundle, sink=sink)
    first, second = (FileSource(key=f"edge/t/{n}.csv", etag=n, size=1) for n in ("a", "b"))
    scoring.score_file(io.BytesIO(historian_csv), first)
    assert sink.read_manifest(first) is not None
    scoring.score_file(io.BytesIO(historian_csv), second)
    assert sink.read_manifest(first) is None and sink.read_manifest(second) is not None


def test_a_file_posted_again_is_a_duplicate_and_one_refused_whole_is_scored_again(
    tmp_path: Path, bundle: ModelBundle, historian_csv: bytes
) -> None:
    buffer = EdgeBuffer(tmp_path / "edge.db")
    sink = BufferedFileSink(buffer, tmp_path / "spool")
    scoring = FileScoring(model=lambda: bundle, sink=sink)
    # the content's hash is the version: the same bytes are the same source, other bytes another
    source = posted_source("t", "hall.csv", historian_csv)
    assert source == posted_source("t", "hall.csv", historian_csv) != posted_source("t", "hall.csv", b"x")
    first, duplicate = sink.score_posted(scoring, source, historian_csv)
    assert (first.status, duplicate) == ("scored", False)
    rows = buffer.stats().rows
    again, duplicate = sink.score_posted(scoring, source, historian_csv)
    assert duplicate and again == first and buffer.stats().rows == rows  # nothing added
    # a file refused whole (failed) is scored again when posted again, and its copy kept each time
    bad = b"a,b\n1,2\n"
    refused = posted_source("t", "bad.csv", bad)
    assert [sink.score_posted(scoring, refused, bad)[1] for _ in range(2)] == [False, False]
    assert sink.read_manifest(refused) is not None and sink.read_manifest(refused).status == "failed"  # type: ignore[union-attr]
    assert ship(buffer).puts.count(f"quarantine/files/{refused.source_id}/bad.csv") == 2


def test_a_buffer_made_before_object_keys_were_kept_beside_their_bytes_is_migrated(
    tmp_path: Path, bundle: ModelBundle, historian_csv: bytes
) -> None:
    # Given a file's objects in a buffer of the schema before (outbox_blobs without the key column)
    path = tmp_path / "edge.db"
    manifest = score(EdgeBuffer(path), bundle, tmp_path / "spool", historian_csv)
    with sqlite3.connect(path) as raw:
        raw.execute("DROP INDEX outbox_blobs_key")
        raw.execute("ALTER TABLE outbox_blobs DROP COLUMN key")
    # When a box of this version opens it, discards one object and needs room for more
    buffer = EdgeBuffer(path, max_bytes=4096)
    (quarantined,) = (o for o in manifest.outputs if o.startswith("quarantine/"))
    assert buffer.discard_objects([quarantined, "no/such/key"]) == 1
    buffer.make_room(0)  # over its bound: the file's scores are compacted
    # Then every object row has its key beside its bytes, the file's scores became summaries
    # counting every row, and what is left ships under its keys
    with sqlite3.connect(path) as raw:
        keys = sorted(k for (k,) in raw.execute("SELECT key FROM outbox_blobs"))
        indexed = raw.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox_blobs_key'").fetchone()
    assert indexed is not None
    assert keys == [f"manifests/{manifest.source_id}.json"]
    assert buffer.stats().compacted_readings == manifest.rows_scored == 239
    uplink = ship(buffer)
    assert sorted(uplink.blobs) == keys
    summaries = [r for k, rows in uplink.objects.items() if k.startswith("summaries/edge/") for r in rows]
    assert sum(s["readings"] for s in summaries) == 239


def test_near_the_bound_every_output_the_shipped_manifest_lists_ships_and_every_row_is_counted(
    tmp_path: Path, bundle: ModelBundle, historian_csv: bytes
) -> None:
    # Given the bytes a file takes in an unbounded buffer (its objects, manifest and alerts)
    whole = EdgeBuffer(tmp_path / "whole.db")
    score(whole, bundle, tmp_path / "spool0", historian_csv)
    size, alerts = whole.stats().bytes, whole.stats().items["alert"]
    assert alerts >= 1
    # When it is scored into buffers whose bound falls anywhere in its last few kilobytes (where
    # making room for its alerts could compact its own scores)
    for n, cut in enumerate(range(0, 6000, 500)):
        buffer = EdgeBuffer(tmp_path / f"edge{n}.db", max_bytes=size - cut)
        manifest = score(buffer, bundle, tmp_path / f"spool{n}", historian_csv)
        compacted = buffer.stats().compacted_readings
        uplink = ship(buffer)
        # Then the manifest that ships names only objects that ship, and each scored row is in a
        # shipped score object or counted in a summary, once
        shipped = json.loads(uplink.blobs[f"manifests/{manifest.source_id}.json"])
        sent = set(uplink.blobs) | set(uplink.objects)
        assert set(shipped["outputs"]) <= sent, cut
        kept_rows = sum(
            pq.read_table(io.BytesIO(blob)).num_rows
            for k, blob in uplink.blobs.items()
            if k.startswith("scores/")
        )
        assert kept_rows + compacted == manifest.rows_scored == 239, cut
        assert len(uplink.alerts) == alerts, cut
