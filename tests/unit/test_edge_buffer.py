"""The edge buffer: the scoring use case writes into it unchanged, a batch re-scored after a crash is
not buffered twice, the size bound compacts raw scores and never drops alerts, and the shipper sends
in order, resends a failed batch under the same names, and backs off."""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support import plant_readings
from zaindari.alerting import Alert
from zaindari.bundle import ModelBundle
from zaindari.edge.box import buffered_scoring
from zaindari.edge.buffer import (
    ACK_DETAIL_TYPE,
    BufferedAlerts,
    BufferedLake,
    BufferedRejects,
    BufferedSummaries,
    EdgeBuffer,
    Shipper,
    SqliteStateStore,
    StateConflict,
    compact_scores,
)
from zaindari.event_scoring import EventScoring, InboundRecord
from zaindari.features import DeviceHistory
from zaindari.pipeline import DeviceState
from zaindari.ports import PortError


@pytest.fixture(scope="module")
def readings() -> list[dict[str, Any]]:
    return plant_readings()


def scoring_on(buffer: EdgeBuffer, bundle: ModelBundle) -> EventScoring:
    return buffered_scoring(buffer, bundle, source="edge-t")


def score_in_batches(scoring: EventScoring, readings: list[dict[str, Any]], size: int = 40) -> None:
    for begin in range(0, len(readings), size):
        report = scoring.score_records([InboundRecord(f"r{begin}", readings[begin : begin + size], "test")])
        assert not report.retry_ids, report.retry_reasons


class RecordingUplink:
    """An uplink that keeps what it is sent, and fails on demand (the link is down)."""

    def __init__(self) -> None:
        self.objects: dict[str, list[Mapping[str, Any]]] = {}
        self.blobs: dict[str, bytes] = {}
        self.puts: list[str] = []
        self.alerts: list[Alert] = []
        self.events: list[tuple[str, Mapping[str, Any]]] = []
        self.fail_after: int | None = None  # succeed this many more calls, then fail

    def _call(self) -> None:
        if self.fail_after is not None:
            if self.fail_after <= 0:
                raise PortError("link down")
            self.fail_after -= 1

    def put_rows(self, prefix: str, day: str, name: str, rows: Sequence[Mapping[str, Any]]) -> str:
        self._call()
        key = f"{prefix}/date={day}/{name}.jsonl.gz"
        self.objects[key] = list(rows)
        self.puts.append(key)
        return key

    def publish_alerts(self, alerts: Sequence[Alert]) -> set[str]:
        self._call()
        self.alerts.extend(alerts)
        return set()

    def put_event(self, detail_type: str, detail: Mapping[str, Any]) -> None:
        self._call()
        self.events.append((detail_type, dict(detail)))

    def put_summaries(self, summaries: Sequence[Mapping[str, Any]], *, source: str, name: str) -> list[str]:
        self._call()
        key = f"summaries/{source}-{name}.json"
        self.objects[key] = list(summaries)
        self.puts.append(key)
        return [key]

    def put_object(self, key: str, data: bytes, content_type: str) -> str:
        self._call()
        self.blobs[key] = data
        self.puts.append(key)
        return key


def test_scoring_use_case_writes_scores_alerts_and_state_into_the_buffer(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given a buffer behind the unchanged scoring use case
    buffer = EdgeBuffer(tmp_path / "edge.db")
    part = readings[800:1200]
    # When the plant's readings are scored
    score_in_batches(scoring_on(buffer, bundle), part)
    # Then every reading is buffered once with its raw telemetry, alerts are buffered, and the
    # device state (windows, keys seen) is in the same database
    stats = buffer.stats()
    assert stats.items["scores"] == len(part)
    assert stats.items.get("alert", 0) >= 1
    states = SqliteStateStore(buffer).load(sorted({r["device_id"] for r in part}))
    assert len(states) == 4
    assert all(len(s.seen) > 0 for s in states.values())
    # drift window summaries too, readable while they wait for the link
    pending = BufferedSummaries(buffer).read(
        bundle.name, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    )
    assert sum(w.readings for w in pending) == len(part)
    # and a fresh process reading the same file sees the same log
    reopened = EdgeBuffer(tmp_path / "edge.db")
    assert reopened.stats().items == stats.items
    assert reopened.epoch == buffer.epoch


def test_batch_scored_again_after_a_crash_before_the_state_write_is_not_buffered_twice(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given a batch whose scores reached the buffer but whose device state was never written
    # (the process died between EventScoring's lake write and its state write)
    buffer = EdgeBuffer(tmp_path / "edge.db")
    batch = [InboundRecord("r1", readings[800:840], "test")]
    crashed = EventScoring(
        model=lambda: bundle,
        states=_ForgetfulStates(buffer),
        lake=BufferedLake(buffer),
        alerts=BufferedAlerts(buffer),
        rejects=BufferedRejects(buffer),
    )
    crashed.score_records(batch)
    assert buffer.stats().items["scores"] == 40
    # When the device sends the batch again to the restarted box
    report = scoring_on(buffer, bundle).score_records(batch)
    # Then it is scored (the state did not know it) but its rows are not buffered a second time
    assert len(report.scored) == 40
    assert buffer.stats().items["scores"] == 40


class _ForgetfulStates(SqliteStateStore):
    def save(self, states: Any) -> Any:
        raise PortError("killed before the state write")


def test_full_buffer_compacts_the_oldest_scores_into_summaries_and_keeps_every_alert(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given a buffer whose bound holds only part of the plant's scores
    buffer = EdgeBuffer(tmp_path / "edge.db", max_bytes=40_000, compact_chunk=8)
    # When the whole run is scored offline
    part = readings[800:]
    score_in_batches(scoring_on(buffer, bundle), part)
    unbounded = EdgeBuffer(tmp_path / "unbounded.db")
    score_in_batches(scoring_on(unbounded, bundle), part)
    # Then the bound holds (up to one row), the oldest raw scores became summaries that account
    # for every compacted reading, and no alert was dropped
    stats = buffer.stats()
    assert stats.bytes <= 40_000
    assert stats.compacted_readings > 0
    assert stats.items["scores"] + stats.compacted_readings == len(part)
    assert stats.items["alert"] == unbounded.stats().items["alert"]
    shipped = RecordingUplink()
    shipper = Shipper(buffer, shipped, box_id="t", status=dict)
    assert shipper.ship_once().error is None
    summaries = [
        row for key, rows in shipped.objects.items() if key.startswith("summaries/edge/") for row in rows
    ]
    assert sum(s["readings"] for s in summaries) == stats.compacted_readings
    assert {s["kind"] for s in summaries} == {"compacted_scores"}
    # the summaries came first: they replaced the oldest rows and kept their place in the log
    scores_keys = [k for k in shipped.puts if k.startswith("scores/")]
    assert shipped.puts.index(scores_keys[0]) > min(
        i for i, k in enumerate(shipped.puts) if k.startswith("summaries/edge/")
    )
    # drift window summaries were merged, not dropped: every reading is still counted once
    drift = [
        row for key, rows in shipped.objects.items() if key.startswith("summaries/edge-t-") for row in rows
    ]
    assert sum(w["readings"] for w in drift) == len(part)


def test_full_buffer_then_merges_drift_summaries_per_window_and_keeps_every_count(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given a bound so small that compacting every raw score is not enough
    buffer = EdgeBuffer(tmp_path / "edge.db", max_bytes=12_000)
    part = readings[800:1040]
    score_in_batches(scoring_on(buffer, bundle), part, size=10)
    # Then the drift rows (one per request) were merged per window, and still count every reading
    stats = buffer.stats()
    assert stats.rows["drift"] < len(part) // 10
    merged = BufferedSummaries(buffer).read(
        bundle.name, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    )
    assert sum(w.readings for w in merged) == len(part)
    assert len(merged) < len(part) // 10  # fewer summaries than requests: windows were merged


def test_alerts_are_kept_beyond_the_bound_when_nothing_is_left_to_compact(tmp_path: Path) -> None:
    # Given a tiny buffer already full of alerts
    buffer = EdgeBuffer(tmp_path / "edge.db", max_bytes=2048)
    alerts = [_alert(i) for i in range(60)]
    BufferedAlerts(buffer).publish(alerts)
    # Then every alert is kept, past the bound
    stats = buffer.stats()
    assert stats.items["alert"] == 60
    assert stats.over_limit
    # and scores arriving now are stored compacted at once
    scores = [
        {"device_id": "d1", "timestamp": f"2024-01-01T00:{m:02d}:00Z", "score": float(m), "alert": False}
        for m in range(30)
    ]
    buffer.append_scores([{"device_id": "d1"}] * 30, scores)
    assert "scores" not in buffer.stats().items
    assert buffer.stats().compacted_readings == 30


def test_compacted_summary_has_counts_and_score_statistics_per_device_and_hour() -> None:
    rows = [
        {"device_id": "a", "timestamp": "2024-01-01T00:10:00Z", "score": 1.0, "alert": False},
        {
            "device_id": "a",
            "timestamp": "2024-01-01T00:50:00Z",
            "score": 3.0,
            "alert": True,
            "severity": "warning",
        },
        {
            "device_id": "a",
            "timestamp": "2024-01-01T01:05:00Z",
            "score": 5.0,
            "alert": True,
            "severity": "critical",
        },
        {"device_id": "b", "timestamp": "2024-01-01T00:20:00Z", "score": 2.0, "alert": False},
    ]
    summaries = compact_scores(rows)
    by_key = {(s["device_id"], s["hour"]): s for s in summaries}
    first = by_key[("a", "2024-01-01T00:00:00Z")]
    assert (first["readings"], first["score_min"], first["score_max"], first["score_mean"]) == (
        2,
        1.0,
        3.0,
        2.0,
    )
    assert (first["alerting_readings"], first["worst_severity"]) == (1, "warning")
    assert by_key[("a", "2024-01-01T01:00:00Z")]["worst_severity"] == "critical"
    assert by_key[("b", "2024-01-01T00:00:00Z")]["readings"] == 1


def test_shipper_sends_in_sequence_order_and_resends_a_failed_batch_under_the_same_names(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given a buffer holding scores, dead letters and alerts, and a link that drops mid-batch
    buffer = EdgeBuffer(tmp_path / "edge.db")
    scoring = scoring_on(buffer, bundle)
    score_in_batches(scoring, readings[800:1000])
    scoring.score_records([InboundRecord("bad", [{"device_id": "x"}], "test")])
    score_in_batches(scoring, readings[1000:1440])
    uplink = RecordingUplink()
    shipper = Shipper(buffer, uplink, box_id="b1", status=lambda: {"version": "7"}, max_items=100)
    uplink.fail_after = 2  # the ack and the scores object go, the raw object does not
    first = shipper.ship_once()
    assert first.error == "link down" and not first.online
    assert uplink.events[0][0] == ACK_DETAIL_TYPE and uplink.events[0][1]["version"] == "7"
    failed_name = uplink.puts[0]
    # When the link comes back
    uplink.fail_after = None
    second = shipper.ship_once()
    # Then the interrupted batch is sent again under the same name, before anything else, and
    # everything else follows in sequence order, once
    assert second.error is None and second.reconnected and second.remaining == 0
    assert uplink.puts[1] == failed_name
    score_puts = [k for k in uplink.puts if k.startswith("scores/")]
    assert len(score_puts) == len(set(score_puts)) + 1  # only the interrupted one was put twice
    shipped_scores = [row for key in sorted(set(score_puts)) for row in uplink.objects[key]]
    assert len(shipped_scores) == 640
    for device in {r["device_id"] for r in shipped_scores}:
        times = [r["timestamp"] for r in shipped_scores if r["device_id"] == device]
        assert times == sorted(set(times)), device  # each device's scores in order, once
    assert any(k.startswith("quarantine/events/") for k in uplink.puts)
    alert_times = [a.timestamp for a in uplink.alerts]
    assert alert_times == sorted(alert_times) and len(alert_times) == len(
        {a.dedup_key for a in uplink.alerts}
    )
    assert buffer.stats().rows == {}


def test_backoff_doubles_up_to_its_maximum_with_jitter(tmp_path: Path) -> None:
    shipper = Shipper(
        EdgeBuffer(tmp_path / "edge.db"),
        RecordingUplink(),
        box_id="b",
        status=dict,
        backoff_seconds=1.0,
        backoff_max_seconds=10.0,
        rng=random.Random(0),
    )
    delays = []
    for failures in range(6):
        shipper.failures = failures
        delays.append(shipper.next_delay())
    assert delays[0] == 0.0
    for got, base in zip(delays[1:], [1, 2, 4, 8, 10], strict=True):
        assert 0.8 * base <= got <= 1.2 * base


def _alert(i: int) -> Alert:
    return Alert(
        alert_id=f"a{i:04d}",
        kind="raised",
        device_id="d1",
        rule_id="model_score",
        source="learned",
        severity="warning",
        message="score above its learned threshold " * 3,
        timestamp=f"2024-01-01T00:{i % 60:02d}:00Z",
        started_at="2024-01-01T00:00:00Z",
        observed={"score": float(i)},
        thresholds={"warning": 1.0},
        model_version="m:1",
        rule_set_version="r1",
    )


def test_only_one_shipper_at_a_time_sends(tmp_path: Path) -> None:
    from zaindari.edge.buffer import _exclusive

    buffer = EdgeBuffer(tmp_path / "edge.db")
    BufferedAlerts(buffer).publish([_alert(1)])
    uplink = RecordingUplink()
    shipper = Shipper(buffer, uplink, box_id="b", status=dict)
    with _exclusive(tmp_path / "edge.db.ship.lock") as held:  # another process's shipper, in effect
        assert held
        report = shipper.ship_once()
    assert report.busy and report.remaining == 1 and not uplink.alerts and not uplink.events
    assert shipper.ship_once().remaining == 0 and len(uplink.alerts) == 1


def test_a_group_is_one_transaction_and_a_failed_write_inside_fails_all_of_it(tmp_path: Path) -> None:
    buffer, other = EdgeBuffer(tmp_path / "buffer.db"), EdgeBuffer(tmp_path / "buffer.db")
    # Given a group of good writes
    with buffer.transaction():
        buffer.append("ack", {"n": 1}, keys=["k1"])
        buffer.append("ack", {"n": 2})
        # Then nothing of it is visible to another connection before the commit
        assert other.bodies("ack") == []
        # and a key appended in it is known to the rest of it (kept in memory until the commit)
        assert buffer.append("ack", {"n": 1}, keys=["k1"]) is None
    assert other.bodies("ack") == [{"n": 1}, {"n": 2}]
    assert other.stats().bytes == buffer.stats().bytes > 0  # the counters written at the commit

    # When a write inside a group fails (a statement SQLite refuses), it raises as on its own
    # and the whole group is undone at its end: PortError (every record of it answered retry)
    before = other.stats().bytes
    with pytest.raises(PortError, match="a write of the transaction failed"), buffer.transaction():
        buffer.append("ack", {"n": 3}, keys=["k3"])
        with pytest.raises(PortError), buffer._write() as db:
            db.execute("INSERT INTO outbox (kind) VALUES ('ack')")  # NOT NULL columns missing
        buffer.append("ack", {"n": 4})
    assert other.bodies("ack") == [{"n": 1}, {"n": 2}] and other.stats().bytes == before
    assert buffer.append("ack", {"n": 3}, keys=["k3"]) is not None  # its key was not kept either

    # When a group raises, none of it is kept
    with pytest.raises(RuntimeError), buffer.transaction():
        buffer.append("ack", {"n": 5})
        raise RuntimeError("the model failed")
    assert other.bodies("ack") == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_a_commit_that_fails_outside_sqlite_rolls_back_and_leaves_the_buffer_writable(tmp_path: Path) -> None:
    buffer, other = EdgeBuffer(tmp_path / "buffer.db"), EdgeBuffer(tmp_path / "buffer.db")
    with buffer.transaction():
        buffer.append("ack", {"n": 0}, keys=["0warm"])
    # Given a group whose keys cannot be encoded at its commit (a lone surrogate: orjson's TypeError)
    with pytest.raises(TypeError), buffer.transaction():
        buffer.append("ack", {"n": 1}, keys=["9a\ud800", "9b"])
    # Then it is rolled back: the connection holds no write lock, and both handles write on
    assert not buffer._db().in_transaction
    other._db().execute("PRAGMA busy_timeout=200")
    with other.transaction():
        other.append("ack", {"n": 2})
    with buffer.transaction():
        buffer.append("ack", {"n": 3})
    assert other.bodies("ack") == [{"n": 0}, {"n": 2}, {"n": 3}]


def test_keys_with_a_nul_are_remembered_whole(tmp_path: Path) -> None:
    buffer = EdgeBuffer(tmp_path / "buffer.db")
    keys = ["nul\x00mid", "plain", 'quote"d', "back\\u0000slash"]
    with buffer.transaction():
        buffer.append("ack", {"n": 1}, keys=keys)
    assert {k for (k,) in buffer._db().execute("SELECT key FROM written")} == set(keys)
    # so the same keys make the append a no-op, and a key cut at its NUL is still new
    assert buffer.append("ack", {"n": 1}, keys=keys) is None
    assert buffer.append("ack", {"n": 2}, keys=["nul"]) is not None


def test_a_reopened_connection_takes_the_deferred_checkpoint_bound_again(tmp_path: Path) -> None:
    buffer = EdgeBuffer(tmp_path / "buffer.db")
    buffer.defer_checkpoints(lambda: None)
    with buffer.transaction():
        buffer.append("ack", {"n": 1})
    bound = buffer._db().execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert bound > 1000
    # When this thread's connection is closed and opened again (SQLite's default 1,000 on it)
    buffer.close()
    with buffer.transaction():
        buffer.append("ack", {"n": 2})
    # Then its first transaction sets the bound on it again
    assert buffer._db().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == bound


def test_device_states_written_by_another_process_are_read_not_the_ones_in_memory(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given two handles on one buffer (two processes), both scoring the same devices in turn
    first, second = EdgeBuffer(tmp_path / "buffer.db"), EdgeBuffer(tmp_path / "buffer.db")
    one, two = scoring_on(first, bundle), scoring_on(second, bundle)
    part = readings[:120]
    score_in_batches(one, part[:40])
    score_in_batches(two, part[40:80])
    score_in_batches(one, part[80:])
    # Then each saw the other's state: every reading is remembered once, in the state both read
    devices = sorted({r["device_id"] for r in part})
    for store in (first, second):
        states = store.load_states(devices)
        assert sum(len(s.seen) for s in states.values()) == len(part)
        assert sum(s.history.count for s in states.values()) == len(part)
    # and a state changed in memory after it was read changes nothing until it is saved
    state = first.load_states(devices[:1])[devices[0]]
    state.seen.clear()
    assert len(first.load_states(devices[:1])[devices[0]].seen) > 0


def test_a_worker_that_committed_groups_in_a_row_reads_another_workers_state_before_its_lock(
    tmp_path: Path,
) -> None:
    # Given two handles on one buffer (two worker processes of a box) scoring one device in turn,
    # never at once: A twice (its memory current), then B, again and again
    a, b = EdgeBuffer(tmp_path / "buffer.db"), EdgeBuffer(tmp_path / "buffer.db")
    scored_twice = 0

    def group(buffer: EdgeBuffer, n: int) -> None:
        nonlocal scored_twice
        for immediate in (False, True):  # as EventScoring does: again under the lock on a conflict
            try:
                with buffer.transaction(durable=False, immediate=immediate):
                    state = buffer.load_states(["d1"]).get("d1") or DeviceState()
                    state.history = DeviceHistory(count=state.history.count + 1)
                    state.remember_all([(f"k{n}", float(n))], 512)
                    buffer.save_states({"d1": state})
                return
            except StateConflict:
                scored_twice += 1

    n = 0
    for _ in range(6):
        for worker in (a, a, b):
            group(worker, n)
            n += 1
    # Then no group meets the other worker's write only at its lock (each asks whether another
    # connection committed before it reads), and every group counted once
    assert scored_twice == 0
    assert a.load_states(["d1"])["d1"].history.count == b.load_states(["d1"])["d1"].history.count == n


def test_a_device_state_with_an_undelivered_nan_alert_reads_back_from_disk(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given a state whose outbox holds an alert that observed NaN (a rate with no previous reading)
    writer = EdgeBuffer(tmp_path / "buffer.db")
    score_in_batches(scoring_on(writer, bundle), readings[:40])
    device = readings[0]["device_id"]
    state = writer.load_states([device])[device]
    state.outbox.append({"alert_id": "a-1", "observed": {"temperature_rate": float("nan")}})
    writer.save_states({device: state})
    # When another handle (another process: nothing in its memory) reads it
    read = EdgeBuffer(tmp_path / "buffer.db").load_states([device])[device]
    # Then the NaN is still a number, not null, and the rest of the state is what was saved
    observed = read.outbox[-1]["observed"]["temperature_rate"]
    assert isinstance(observed, float) and math.isnan(observed)
    assert read.seen == state.seen and read.history.to_dict() == state.history.to_dict()


def test_two_worker_processes_scoring_one_device_at_once_count_every_reading_once(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    from zaindari.edge.box import EdgeBox
    from zaindari.edge.model_sync import LocalBundleFetcher, LocalModelStore, ModelSync

    # Given two boxes on one buffer and one model store (two server worker processes)
    def worker() -> EdgeBox:
        sync = ModelSync(LocalModelStore(tmp_path / "models"), LocalBundleFetcher())
        return EdgeBox(buffer=EdgeBuffer(tmp_path / "buffer.db"), sync=sync, box_id="b")

    first, second = worker(), worker()
    first.sync.seed(bundle.path, version="1")
    device = readings[0]["device_id"]
    own = [r for r in readings if r["device_id"] == device][:30]
    # When the second commits a group of the device while the first has read its state and is
    # still scoring (the first read is checked when the first takes the write lock)
    load = first.scoring.states.load
    interleaved = iter(own[20:30])

    def load_then_the_other_worker_commits(devices: Sequence[str]) -> Any:
        states = load(devices)
        if first.buffer._local.txn.begun:  # the group scored again, under the write lock
            return states
        reading = next(interleaved, None)
        if reading is not None:
            assert not second.score_records([InboundRecord(f"w2-{reading['seq']}", [reading], "t")]).retry_ids
        return states

    first.scoring.states.load = load_then_the_other_worker_commits  # type: ignore[method-assign]
    for i, reading in enumerate(own[:10]):
        report = first.score_records([InboundRecord(f"w1-{i}", [reading], "t")])
        assert not report.retry_ids and len(report.scored) == 1
    # Then each of the first's groups was scored again under the lock, and nothing was lost or
    # counted twice: the log holds 20 scores, the drift rows count 20, and the device's state is
    # the one a single process scoring the groups in their commit order leaves
    assert first.conflicts == 10 and second.conflicts == 0
    buffer = EdgeBuffer(tmp_path / "buffer.db")
    assert sum(len(b["scores"]) for b in buffer.bodies("scores")) == 20
    assert sum(s["scored"] for b in buffer.bodies("drift") for s in b["summaries"]) == 20
    serial = scoring_on(EdgeBuffer(tmp_path / "serial.db"), bundle)
    for k in range(10):
        for reading in (own[20 + k], own[k]):
            serial.score_records([InboundRecord(f"s{k}", [reading], "t")])
    state = buffer.load_states([device])[device]
    assert len(state.seen) == 20
    assert state.to_dict() == serial.states.load([device])[device].to_dict()
    # and a state written by the other worker is read from the database, not from memory
    assert second.buffer.load_states([device])[device].to_dict() == state.to_dict()


def test_worker_processes_starting_at_once_install_the_first_model_once(
    tmp_path: Path, bundle: ModelBundle
) -> None:
    import threading

    from zaindari.edge.box import EdgeBox
    from zaindari.edge.wiring import _provision
    from zaindari.settings import Settings

    # Given a box with an empty model store and a first bundle to install, and four workers
    # (threads here: the lock is a file lock, which excludes open files, not only processes)
    settings = Settings(
        model_path=str(bundle.path),
        edge_data_dir=str(tmp_path),
        edge_buffer_path=str(tmp_path / "buffer.db"),
        edge_model_dir=str(tmp_path / "models"),
    )
    boxes = [EdgeBox.from_settings(settings) for _ in range(4)]
    failures: list[BaseException] = []

    def start(box: EdgeBox) -> None:
        try:
            _provision(box, settings)
            box.sync.current()
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)

    # When they all start at once
    threads = [threading.Thread(target=start, args=(box,)) for box in boxes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every one serves the one bundle installed
    assert failures == []
    assert len({box.sync.current().model_version for box in boxes}) == 1
    assert len(list((tmp_path / "models" / "bundles").iterdir())) == 1


def test_a_buffer_made_before_state_versions_is_upgraded_and_keeps_its_states(tmp_path: Path) -> None:
    import sqlite3

    # Given a buffer file whose device_state table has no version column (an earlier release)
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE device_state (device_id TEXT PRIMARY KEY, state BLOB NOT NULL, "
            "updated_at REAL NOT NULL) WITHOUT ROWID"
        )
        state = DeviceState(seen=[("k1", 1.0)])
        db.execute("INSERT INTO device_state VALUES ('d1', ?, 0)", (state.to_json().encode(),))
    # When this release opens it
    buffer = EdgeBuffer(path)
    # Then the state is read as it was, and a write bumps its version as for any other
    assert buffer.load_states(["d1"])["d1"].seen == [("k1", 1.0)]
    buffer.save_states({"d1": DeviceState(seen=[("k1", 1.0), ("k2", 2.0)])})
    assert EdgeBuffer(path).load_states(["d1"])["d1"].seen == [("k1", 1.0), ("k2", 2.0)]
    assert buffer._versions(buffer._db(), ["d1"]) == {"d1": 1}


def test_remembered_keys_are_written_as_they_come_and_read_back_whole_after_trims(tmp_path: Path) -> None:

    # Given a device remembering at most 100 keys, saved after every few new ones (groups),
    # past its memory several times, then once with a list that does not continue the stored one
    path = tmp_path / "buffer.db"
    writer = EdgeBuffer(path)
    state = DeviceState()
    rng = random.Random(5)
    n = 0
    while n < 700:
        step = rng.randint(1, 9)
        state.remember_all([(f"k{i}", float(i)) for i in range(n, n + step)], 100)
        n += step
        writer.save_states({"d1": state})
        # Then another handle (another process: nothing in its memory) reads the same keys
        if rng.random() < 0.2:
            read = EdgeBuffer(path).load_states(["d1"])["d1"]
            assert read.seen == state.seen and read.evicted_until == state.evicted_until
    assert len(state.seen) == 100 and state.evicted_until == float(n - 101)
    # and forgotten keys are deleted: the table holds the memory and less than one trim step more
    rows = writer._db().execute("SELECT count(*) FROM device_seen WHERE device_id = 'd1'").fetchone()[0]
    assert 100 <= rows < 100 + 64
    other = DeviceState(seen=[("x1", 1.0), ("x2", 2.0)])
    writer.save_states({"d1": other})
    assert EdgeBuffer(path).load_states(["d1"])["d1"].seen == [("x1", 1.0), ("x2", 2.0)]
    # and a state row holds no keys itself (a few hundred bytes)
    assert writer._db().execute("SELECT length(state) FROM device_state").fetchone()[0] < 300


def test_a_transaction_committed_without_waiting_for_the_disk_is_seen_then_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a durable buffer (synchronous=FULL)
    buffer = EdgeBuffer(tmp_path / "buffer.db")
    # When a transaction commits without waiting for the disk
    with buffer.transaction(durable=False):
        buffer.append("ack", {"n": 1})
    # Then another handle (another process) sees it at once, sync() flushes it (one fsync, of
    # the write-ahead log), and the connection waits for the disk again for the next durable write
    assert EdgeBuffer(tmp_path / "buffer.db").bodies("ack") == [{"n": 1}]
    synced = _count_fsyncs(monkeypatch)
    buffer.sync()
    assert synced == [str(tmp_path / "buffer.db-wal")]
    assert buffer._db().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL, left as it is
    buffer.append("ack", {"n": 2})
    assert buffer._db().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # and so it is after one that fails (nothing of it kept)
    with pytest.raises(RuntimeError), buffer.transaction(durable=False):
        buffer.append("ack", {"n": 3})
        raise RuntimeError("the model failed")
    with buffer.transaction():
        buffer.append("ack", {"n": 4})
        assert buffer._db().execute("PRAGMA synchronous").fetchone()[0] == 2
    assert buffer.bodies("ack") == [{"n": 1}, {"n": 2}, {"n": 4}]


def _count_fsyncs(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[str]:
    """The files os.fsync is called on from now on (the real fsync runs; ``fail``: EIO instead)."""
    import os

    real = os.fsync
    files: list[str] = []

    def fsync(fd: int) -> None:
        files.append(os.readlink(f"/proc/self/fd/{fd}"))
        if fail:
            raise OSError(5, "Input/output error (injected)")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return files


def test_a_failed_sync_poisons_the_buffer_until_it_is_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a transaction committed without waiting for the disk, whose fsync fails (EIO)
    buffer = EdgeBuffer(tmp_path / "buffer.db")
    with buffer.transaction(durable=False):
        buffer.append("ack", {"n": 1})
    synced = _count_fsyncs(monkeypatch, fail=True)
    with pytest.raises(PortError, match="restart the edge server"):
        buffer.sync()
    assert len(synced) == 1
    # Then the buffer refuses everything that could answer from it, even once the disk works again
    # (a later fsync that succeeds does not prove the pages of the failed one reached the disk)
    monkeypatch.undo()
    for attempt in (
        buffer.sync,
        lambda: buffer.append("ack", {"n": 2}),
        lambda: buffer.save_states({"d1": DeviceState()}),
        buffer.checkpoint,
    ):
        with pytest.raises(PortError, match=r"Input/output error.*restart the edge server"):
            attempt()
    with pytest.raises(PortError), buffer.transaction(durable=False):
        pytest.fail("a failed buffer began a transaction")
    assert buffer.failed is not None and "fsync" in buffer.failed
    # and a new process's buffer on the same file works (it reads what the disk holds)
    reopened = EdgeBuffer(tmp_path / "buffer.db")
    reopened.append("ack", {"n": 3})
    reopened.sync()
    assert reopened.failed is None and {"n": 3} in reopened.bodies("ack")


def test_after_a_write_that_cannot_begin_durable_writes_still_wait_for_the_disk(tmp_path: Path) -> None:
    import sqlite3

    # Given a buffer whose write lock another connection holds (and a short busy timeout)
    buffer = EdgeBuffer(tmp_path / "buffer.db")
    buffer._db().execute("PRAGMA busy_timeout=50")
    other = sqlite3.connect(tmp_path / "buffer.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    # When a write that does not wait for the disk (device state) cannot begin
    with pytest.raises(PortError, match="locked"):
        buffer.save_states({"d1": DeviceState()})
    other.execute("ROLLBACK")
    # Then later durable writes still wait for the disk (each write sets the level it commits at)
    buffer.append("ack", {"n": 1})
    assert buffer._db().execute("PRAGMA synchronous").fetchone()[0] == 2


def test_keys_older_code_wrote_into_a_newer_buffer_are_kept(tmp_path: Path) -> None:
    import json
    import sqlite3

    # Given a state saved by this code (its keys as device_seen rows, none in its JSON)
    path = tmp_path / "buffer.db"
    buffer = EdgeBuffer(path)
    buffer.save_states({"d1": DeviceState(seen=[("a", 1.0), ("b", 2.0)])})
    # When code older than device_seen (a box rolled back) reads it (an empty key list in the
    # JSON), remembers key "c" and writes its JSON, leaving the seen_* columns alone
    db = sqlite3.connect(path, isolation_level=None)
    (raw,) = db.execute("SELECT state FROM device_state WHERE device_id = 'd1'").fetchone()
    older = json.loads(raw)
    assert older["seen"] == []
    older["seen"] = [["c", 3.0]]
    db.execute(
        "UPDATE device_state SET state = ?, version = version + 1 WHERE device_id = 'd1'",
        (json.dumps(older).encode(),),
    )
    db.close()
    # Then this code (a new process) knows every key: the rows', then the JSON's
    loaded = EdgeBuffer(path).load_states(["d1"])["d1"]
    assert loaded.seen == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    # and its next save stores them all as rows again (the JSON empty)
    loaded.remember_all([("d", 4.0)], 512)
    again = EdgeBuffer(path)
    again.save_states({"d1": loaded})
    assert EdgeBuffer(path).load_states(["d1"])["d1"].seen == [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)]
    (raw,) = again._db().execute("SELECT state FROM device_state WHERE device_id = 'd1'").fetchone()
    assert json.loads(raw)["seen"] == []


def test_plant_alerts_are_on_disk_before_they_leave_the_box(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zaindari.edge.local_alerts import LocalAlerts

    # Given a plant alert queued by a group committed without waiting for the disk
    buffer = EdgeBuffer(tmp_path / "buffer.db")
    with buffer.transaction(durable=False):
        BufferedAlerts(buffer, local_channels=["plant"]).publish([_alert(1)])
    events: list[str] = []
    synced = _count_fsyncs(monkeypatch)

    class Plant:
        name = "plant"

        def send(self, alert: Alert) -> None:
            events.append(f"send {alert.alert_id} after {len(synced)} fsyncs")

        def close(self) -> None:
            return None

    # When it is delivered
    report = LocalAlerts(buffer, [Plant()]).deliver()
    # Then the log holding it was fsynced (after it was read) before it was sent
    assert report.delivered == {"plant": 1}
    assert events == ["send a0001 after 1 fsyncs"]
    assert synced[0] == str(tmp_path / "buffer.db-wal")
    # and with nothing queued, delivery costs no fsync
    LocalAlerts(buffer, [Plant()]).deliver()
    assert len(synced) == 1


def test_healthz_answers_503_while_the_processs_buffer_is_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import os
    from types import SimpleNamespace

    from zaindari.edge import wiring
    from zaindari.edge.server import EdgeApp

    # Given the edge server's app, and this process's box on a buffer
    buffer = EdgeBuffer(tmp_path / "buffer.db")
    monkeypatch.setattr(wiring, "_boxes", {os.getpid(): SimpleNamespace(buffer=buffer)})
    app = EdgeApp({}, max_body_bytes=1024)

    def healthz() -> tuple[str, dict[str, Any]]:
        got: list[str] = []
        body = app({"PATH_INFO": "/healthz", "wsgi.input": io.BytesIO()}, lambda s, h: got.append(s))
        return got[0], json.loads(b"".join(body))

    assert healthz()[0].startswith("200")
    # When its fsync fails
    with buffer.transaction(durable=False):
        buffer.append("ack", {"n": 1})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    with pytest.raises(PortError):
        buffer.sync()
    # Then the liveness probe fails, saying why (and that a restart clears it)
    status, body = healthz()
    assert status.startswith("503") and body["status"] == "failed"
    assert "Input/output error" in body["message"] and "restart the edge server" in body["message"]


# An LD_PRELOAD shim failing the first fsync/fdatasync of a *-wal file once, after the file named by
# $FSYNC_FAULT_ARM exists (removed then): the kernel reports a writeback error once, to one caller.
_FSYNC_FAULT_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int maybe_fail(int fd) {
  const char *arm = getenv("FSYNC_FAULT_ARM");
  if (arm == NULL || access(arm, F_OK) != 0) return 0;
  char p[64], t[4096]; snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(p, t, sizeof t - 1); if (n < 0) return 0; t[n] = 0;
  if (n < 4 || strcmp(t + n - 4, "-wal") != 0) return 0;
  if (unlink(arm) != 0) return 0;
  errno = EIO; return 1;
}
int fsync(int fd) { static int (*r)(int); if (!r) r = dlsym(RTLD_NEXT, "fsync");
  if (maybe_fail(fd)) return -1; return r(fd); }
int fdatasync(int fd) { static int (*r)(int); if (!r) r = dlsym(RTLD_NEXT, "fdatasync");
  if (maybe_fail(fd)) return -1; return r(fd); }
"""

_SQLITE_SAW_THE_ERROR = """
import sys
from zaindari.edge.buffer import EdgeBuffer
from zaindari.ports import PortError
buffer = EdgeBuffer(sys.argv[1])
with buffer.transaction(durable=False):  # a group committed relaxed, not yet settled
    buffer.append("ack", {"group": 1})
open(sys.argv[2], "w").close()  # the next fsync of the log fails: SQLite's own, at a durable commit
try:
    buffer.append("ack", {"durable": True})
    print("durable write: ok")
except PortError as exc:
    print("durable write: PortError", exc)
print("failed:", buffer.failed)
try:
    buffer.sync()  # the settler of group 1
    print("sync: ok")
except PortError:
    print("sync: PortError")
"""


def test_an_io_error_seen_by_sqlites_own_fsync_poisons_the_buffer(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed to build the fsync fault shim")
    (tmp_path / "shim.c").write_text(_FSYNC_FAULT_SHIM)
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-o", str(tmp_path / "shim.so"), str(tmp_path / "shim.c"), "-ldl"],
        check=True,
    )
    # Given a group committed without waiting for the disk, when the writeback error is reported to
    # SQLite's fsync (a durable write of another thread) rather than to the settler's sync()
    env = {**os.environ, "LD_PRELOAD": str(tmp_path / "shim.so"), "FSYNC_FAULT_ARM": str(tmp_path / "arm")}
    run = subprocess.run(
        [sys.executable, "-c", _SQLITE_SAW_THE_ERROR, str(tmp_path / "buffer.db"), str(tmp_path / "arm")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    # Then that write fails, the buffer is poisoned, and the settler's sync refuses (503, not 2xx)
    lines = run.stdout.splitlines()
    assert not (tmp_path / "arm").exists()  # the fault did fire
    assert lines[0].startswith("durable write: PortError"), lines
    assert lines[1].startswith("failed: SQLite I/O error"), lines
    assert lines[2] == "sync: PortError", lines


def test_sync_fsyncs_one_handle_on_the_log_opened_before_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    # Given a buffer just opened (the log exists once the schema is written)
    buffer = EdgeBuffer(tmp_path / "buffer.db")
    held = buffer._wal_fd
    assert held is not None and os.readlink(f"/proc/self/fd/{held}") == str(tmp_path / "buffer.db-wal")
    # When groups are committed and synced
    fds: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fds.append(fd), real(fd))[1])
    for n in range(3):
        with buffer.transaction(durable=False):
            buffer.append("ack", {"n": n})
        buffer.sync()
    # Then every sync fsyncs that same handle (a writeback error reported to it before is not missed)
    assert fds == [held, held, held]
    buffer.close()
    assert buffer._wal_fd is None


def test_a_transaction_open_when_the_buffer_is_poisoned_is_not_committed(tmp_path: Path) -> None:
    import threading

    buffer = EdgeBuffer(tmp_path / "buffer.db")
    poison = threading.Thread(target=lambda: setattr(buffer, "failed", "fsync failed (test)"))
    # Given a group transaction and a single write begun before the buffer is poisoned
    with pytest.raises(PortError, match="restart the edge server"), buffer.transaction():
        buffer.append("ack", {"group": 1})
        poison.start()
        poison.join()
    buffer.failed = None  # (the state under test: healthy again for the single write)
    with pytest.raises(PortError, match="restart the edge server"), buffer._write() as db:
        buffer.failed = "fsync failed (test)"
        db.execute("INSERT INTO meta (name, value) VALUES ('x', '1')")
    # Then neither is committed (a new process sees nothing of them)
    reopened = EdgeBuffer(tmp_path / "buffer.db")
    assert reopened.bodies("ack") == []
    assert reopened._db().execute("SELECT count(*) FROM meta WHERE name = 'x'").fetchone()[0] == 0


def test_states_saved_in_a_group_keep_the_versions_their_rows_have(tmp_path: Path) -> None:
    # Given a device with a state, one without, and one (migrated from an older buffer) at version 0
    buffer = EdgeBuffer(tmp_path / "buffer.db")
    buffer.save_states({"d1": DeviceState(seen=[("a", 1.0)])})
    buffer.save_states({"d3": DeviceState()})
    buffer._db().execute("UPDATE device_state SET version = 0 WHERE device_id = 'd3'")
    # When a group reads them, saves them (the versions known from the read: no RETURNING) and
    # saves one again (an outbox cleared), and another group saves a state it did not read
    for k in range(2):
        with buffer.transaction():
            states = buffer.load_states(["d1", "d2", "d3"])
            states["d1"].remember(f"b{k}", 2.0 + k, 512)
            buffer.save_states({"d1": states["d1"], "d2": DeviceState(), "d3": DeviceState()})
            buffer.save_states({"d1": states["d1"]})
    with buffer.transaction():
        buffer.save_states({"d2": DeviceState(seen=[("c", 3.0)])})
    # Then the versions kept in memory are the rows' (so another process's write is noticed and
    # this process's own is not read again), and the keys are all there
    rows = dict(buffer._db().execute("SELECT device_id, version FROM device_state").fetchall())
    assert rows == {"d1": 5, "d2": 3, "d3": 2}
    assert {d: buffer._states[d][0] for d in rows} == rows
    read = EdgeBuffer(tmp_path / "buffer.db").load_states(["d1"])["d1"].seen
    assert read == [("a", 1.0), ("b0", 2.0), ("b1", 3.0)]


def test_a_reading_sent_again_in_a_later_group_is_found_whoever_appended_newer_ones_since(
    tmp_path: Path,
) -> None:
    # Given a buffer whose groups skip the key lookup for readings newer than every key it holds
    # (a reading's key is kept after its timestamp), and a second process on the same file
    def scores(minute: int, key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        ts = f"2024-01-01T00:{minute:02d}:00Z"
        return [{"device_id": "d1", "timestamp": ts}], [
            {"device_id": "d1", "timestamp": ts, "record_key": key}
        ]

    buffer, other = EdgeBuffer(tmp_path / "edge.db"), EdgeBuffer(tmp_path / "edge.db")
    with buffer.transaction():
        assert buffer.append_scores(*scores(0, "k0"))
    # When the other process appends a newer reading, then this one is sent that reading again,
    # then an older one again, then one between them
    with other.transaction():
        assert other.append_scores(*scores(2, "k2"))
    with buffer.transaction():
        again = buffer.append_scores(*scores(2, "k2"))
    with buffer.transaction():
        older = buffer.append_scores(*scores(0, "k0"))
    with buffer.transaction():
        between = buffer.append_scores(*scores(1, "k1"))
    # Then the readings sent again are left out and the new one is kept: three rows, once each
    assert again == [] and older == [] and len(between) == 1
    assert sorted(s["record_key"] for b in buffer.bodies("scores") for s in b["scores"]) == ["k0", "k1", "k2"]


def test_checkpoints_left_to_another_thread_are_asked_for_every_64_commits_and_done_there(
    tmp_path: Path,
) -> None:
    import sqlite3
    import threading

    # Given a buffer whose checkpoints are left to a background thread (as EdgeBox.start does)
    buffer = EdgeBuffer(tmp_path / "edge.db")
    asked: list[int] = []
    buffer.defer_checkpoints(lambda: asked.append(1))
    # When 130 group transactions commit
    for i in range(130):
        with buffer.transaction(durable=False):
            buffer.append("ack", {"i": i})
    # Then the thread was asked twice, and the committing connection checkpoints itself only past
    # 3,000 pages of log
    assert len(asked) == 2
    assert buffer._db().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 3_000
    # and a passive checkpoint on another thread copies the log into the database file itself
    worker = threading.Thread(target=buffer.checkpoint_passive)
    worker.start()
    worker.join()
    main_file = sqlite3.connect(f"file:{tmp_path / 'edge.db'}?mode=ro&immutable=1", uri=True)
    try:
        assert main_file.execute("SELECT count(*) FROM outbox WHERE kind = 'ack'").fetchone()[0] == 130
    finally:
        main_file.close()


def test_the_log_starts_over_beside_a_writer_that_never_pauses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import threading

    from zaindari.edge import buffer as module

    # Given a buffer whose checkpoints are left to another thread, the log copied to its end
    # under the writers' lock past 200 pages (the committing connection never checkpoints here)
    monkeypatch.setattr(module, "_RESTART_PAGES", 200)
    monkeypatch.setattr(module, "_BACKSTOP_PAGES", 100_000)
    buffer = EdgeBuffer(tmp_path / "edge.db", synchronous="NORMAL")
    buffer.defer_checkpoints(lambda: None)
    body = {"x": os.urandom(3000).hex()}
    commits, stop = [0], threading.Event()

    def writer() -> None:  # groups back to back (~7 pages of log each)
        while not stop.is_set():
            with buffer.transaction(durable=False):
                buffer.append("ack", body)
                buffer.append("ack", body)
            commits[0] += 1

    def after(n: int) -> None:
        target = commits[0] + n
        while commits[0] < target:
            stop.wait(0.001)

    def salt() -> bytes:  # the log's header salt: SQLite draws a new one each time it starts over
        with (tmp_path / "edge.db-wal").open("rb") as log:
            return log.read(24)[16:20]

    thread = threading.Thread(target=writer)
    thread.start()
    restarts = 0
    try:
        # When the checkpoint thread runs every 60 of its commits, five times
        for _ in range(5):
            after(60)
            before = salt()
            buffer.checkpoint_passive()
            after(2)
            restarts += salt() != before
    finally:
        stop.set()
        thread.join()
    # Then the writer's next commit started the log over after each
    assert restarts == 5
    assert len(buffer.bodies("ack")) == 2 * commits[0]


def test_a_group_keeps_its_reading_keys_in_its_device_states_not_in_the_key_memory(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given the edge box's group transaction around the scoring use case
    buffer = EdgeBuffer(tmp_path / "edge.db")
    scoring = scoring_on(buffer, bundle)
    group = [InboundRecord("r1", readings[800:808], "test")]
    with buffer.transaction():
        first = scoring.score_records(group)
    assert len(first.scored) == 8
    # Then its readings and its drift write are remembered by the device states committed with
    # them, and the log's key memory holds none of them
    assert buffer._db().execute("SELECT count(*) FROM written").fetchone()[0] == 0
    held = {k for (k,) in buffer._db().execute("SELECT key FROM device_seen")}
    assert {row["record_key"] for row in first.scored} <= held
    # When the group is sent again, in a group of its own and with a new reading
    with buffer.transaction():
        again = scoring.score_records([InboundRecord("r2", readings[800:809], "test")])
    # Then only the new reading is scored: its score rows and drift counts once each
    assert again.duplicates == 8 and len(again.scored) == 1
    assert buffer.stats().items["scores"] == 9
    drift = BufferedSummaries(buffer).read(
        bundle.name, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    )
    assert sum(w.readings for w in drift) == 9


def test_reading_keys_a_saved_state_does_not_hold_stay_in_the_key_memory(tmp_path: Path) -> None:
    # Given a transaction whose scores' keys are not all remembered by the state saved with them
    buffer = EdgeBuffer(tmp_path / "edge.db")

    def score(minute: int, key: str) -> dict[str, Any]:
        return {"device_id": "d1", "timestamp": f"2024-01-01T00:{minute:02d}:00Z", "record_key": key}

    rows = [score(0, "k0"), score(1, "k1")]
    with buffer.transaction():
        buffer.load_states(["d1"])
        buffer.append_scores(rows, rows)
        buffer.append_drift([], source="s", name="n")  # (no summary: nothing written)
        buffer.save_states({"d1": DeviceState(seen=[("k0", 0.0)])})
    # Then the key the state holds is left out of the key memory, the other is kept there
    written = {k for (k,) in buffer._db().execute("SELECT key FROM written")}
    assert written == {"2024-01-01T00:01:00Z/k1"}
    # and so both are found when they are appended again, by whoever
    with buffer.transaction():
        assert buffer.append_scores([score(1, "k1")], [score(1, "k1")]) == []
    # A state saved again in the transaction without a key it held makes that key remembered
    with buffer.transaction():
        buffer.load_states(["d2"])
        two = [{**score(2, "k2"), "device_id": "d2"}]
        buffer.append_scores(two, two)
        buffer.save_states({"d2": DeviceState(seen=[("k2", 0.0)])})
        buffer.save_states({"d2": DeviceState()})
    assert "2024-01-01T00:02:00Z/k2" in {k for (k,) in buffer._db().execute("SELECT key FROM written")}
    # and outside a transaction every key is remembered, as before
    buffer.append_scores([score(3, "k3")], [score(3, "k3")])
    buffer.save_states({"d1": DeviceState(seen=[("k0", 0.0), ("k3", 3.0)])})
    assert "2024-01-01T00:03:00Z/k3" in {k for (k,) in buffer._db().execute("SELECT key FROM written")}


@pytest.mark.parametrize("first_in_a_transaction", [False, True])
def test_a_batch_whose_keys_only_the_key_memory_holds_is_not_buffered_twice_by_a_group(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]], first_in_a_transaction: bool
) -> None:
    # Given scores and a drift write that reached the buffer without their device state (a crash
    # between separate writes, what older code could leave; or a state write that failed inside
    # a group, whose scores were committed: then this connection knows the window's drift row)
    buffer = EdgeBuffer(tmp_path / "edge.db")
    batch = [InboundRecord("r1", readings[800:808], "test")]
    crashed = buffered_scoring(buffer, bundle, source="edge-t", states=_ForgetfulStates(buffer))
    with buffer.transaction() if first_in_a_transaction else contextlib.nullcontext():
        crashed.score_records(batch)
    # When the device sends it again and the box scores it in a group transaction
    with buffer.transaction():
        report = scoring_on(buffer, bundle).score_records(batch)
    # Then it is scored (its device did not know it) but neither its rows nor its drift counts
    # are buffered a second time: the log's key memory still holds them
    assert len(report.scored) == 8
    assert buffer.stats().items["scores"] == 8
    drift = BufferedSummaries(buffer).read(
        bundle.name, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    )
    assert sum(w.readings for w in drift) == 8
