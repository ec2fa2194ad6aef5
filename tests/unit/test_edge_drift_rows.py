"""The edge buffer keeps one drift row per window: each request's window summaries are merged into
it (the counts add up exactly), except while that row is being shipped: a planned row is never
changed, so a restarted shipper re-sends exactly what it planned, under the same name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, plant_readings
from tests.unit.test_edge_buffer import RecordingUplink
from zaindari.bundle import ModelBundle
from zaindari.drift import WindowSummary, merge_windows
from zaindari.edge.box import buffered_scoring
from zaindari.edge.buffer import (
    BufferedSummaries,
    EdgeBuffer,
    Shipper,
)
from zaindari.event_scoring import EventScoring, InboundRecord
from zaindari.ports import PortError


@pytest.fixture(scope="module")
def readings() -> list[dict[str, Any]]:
    return plant_readings()[800:1040]


class TeeSummaries(BufferedSummaries):
    """The buffer's summary store, keeping a copy of every summary the use case writes."""

    def __init__(self, buffer: EdgeBuffer) -> None:
        super().__init__(buffer)
        self.written: list[WindowSummary] = []

    def write(self, summaries: Sequence[WindowSummary], *, source: str, name: str) -> list[str]:
        self.written.extend(summaries)
        return super().write(summaries, source=source, name=name)


def box_scoring(buffer: EdgeBuffer, bundle: ModelBundle, summaries: BufferedSummaries) -> EventScoring:
    return buffered_scoring(buffer, bundle, source="edge-t", summaries=summaries)


def score_one_by_one(
    buffer: EdgeBuffer, scoring: EventScoring, readings: Sequence[Mapping[str, Any]]
) -> None:
    """One reading per request, each request one group transaction (as ``EdgeBox`` scores)."""
    for reading in readings:
        with buffer.transaction():
            report = scoring.score_records([InboundRecord(f"r{reading['seq']}", [dict(reading)], "test")])
        assert not report.retry_ids, report.retry_reasons


def shipped_drift(uplink: RecordingUplink) -> dict[str, list[Mapping[str, Any]]]:
    return {k: v for k, v in uplink.objects.items() if k.startswith("summaries/edge-t-")}


def test_one_drift_row_per_window_whose_shipped_counts_equal_every_request_summary(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given a box scoring one reading per request, offline
    buffer = EdgeBuffer(tmp_path / "edge.db")
    tee = TeeSummaries(buffer)
    score_one_by_one(buffer, box_scoring(buffer, bundle, tee), readings)
    # Then the log holds one drift row per window touched, not one per request
    windows = {(s.model_version, s.start) for s in tee.written}
    assert len(tee.written) == len(readings)
    assert buffer.stats().rows["drift"] == len(windows) < len(readings) // 20
    # When the link comes up
    uplink = RecordingUplink()
    assert Shipper(buffer, uplink, box_id="t", status=dict).ship_once().error is None
    # Then one object per window went out, and its counts are exactly every request's summaries merged
    drift = shipped_drift(uplink)
    assert len(drift) == len(windows)
    shipped = [WindowSummary.from_dict(s) for rows in drift.values() for s in rows]
    assert shipped == merge_windows(tee.written)
    assert sum(s.readings for s in shipped) == len(readings)


def test_a_drift_row_in_flight_is_not_changed_and_is_sent_again_as_planned(
    tmp_path: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given a box whose shipper planned a drift row and died (the link failed) before it was sent
    buffer = EdgeBuffer(tmp_path / "edge.db")
    tee = TeeSummaries(buffer)
    scoring = box_scoring(buffer, bundle, tee)
    first, later = readings[:6], readings[6:12]  # same window: the plant samples once a minute
    score_one_by_one(buffer, scoring, first)
    uplink = DriftDownUplink()
    report = Shipper(buffer, uplink, box_id="t", status=dict).ship_once()
    assert report.error is not None and not shipped_drift(uplink)
    planned = buffer.next_batch(5000)
    assert [e.kind for e in planned] == ["drift"]
    # When more requests of the same window are scored while that row is in flight
    score_one_by_one(buffer, scoring, later)
    # Then the planned row is as it was, and the new summaries started a row of their own
    assert buffer.next_batch(5000) == planned
    assert buffer.stats().rows["drift"] == 2
    # When a restarted shipper (a new process on the same file) ships with the link up
    restarted = EdgeBuffer(tmp_path / "edge.db")
    uplink.drift_down = False
    assert Shipper(restarted, uplink, box_id="t", status=dict).ship_once().error is None
    # Then the planned row went out as planned, under the name it was planned with, then the new one
    drift = shipped_drift(uplink)
    assert len(drift) == 2
    planned_key = f"summaries/edge-t-{planned[0].body['name']}.json"
    assert drift[planned_key] == planned[0].body["summaries"]
    assert sum(s["readings"] for s in drift[planned_key]) == len(first)
    assert merge_windows(
        WindowSummary.from_dict(s) for rows in drift.values() for s in rows
    ) == merge_windows(tee.written)


class DriftDownUplink(RecordingUplink):
    """S3 takes scores but not drift summaries (the link drops mid-shipment)."""

    drift_down = True

    def put_summaries(self, summaries: Sequence[Mapping[str, Any]], *, source: str, name: str) -> list[str]:
        if self.drift_down:
            raise PortError("link down")
        return super().put_summaries(summaries, source=source, name=name)


def _summary(readings: int, device: str, seen: float) -> WindowSummary:
    return WindowSummary(
        model_version="m:1",
        baseline_id="b",
        start=3600,
        end=7200,
        readings=readings,
        scored=readings,
        alerts=0,
        features={"f": (readings, 0)},
        feature_missing={"f": 0},
        score=(0, readings),
        sensor_missing={"s": 0},
        sensor_out_of_range={"s": 0},
        devices={device: seen},
    )


def test_a_rolled_back_merge_and_another_process_merging_leave_exact_counts(tmp_path: Path) -> None:
    # Given a buffer whose window row this process has merged into
    one = EdgeBuffer(tmp_path / "edge.db")
    BufferedSummaries(one).write([_summary(1, "a", 3600.0)], source="edge-t", name="n1")
    # When a group transaction that merged more is rolled back (a failed commit)
    with pytest.raises(RuntimeError), one.transaction():
        BufferedSummaries(one).write([_summary(100, "z", 7000.0)], source="edge-t", name="n2")
        raise RuntimeError("scoring failed after the summary write")
    # and another process on the same file merges into the same row, then this one again
    BufferedSummaries(EdgeBuffer(tmp_path / "edge.db")).write(
        [_summary(2, "b", 3700.0)], source="edge-t", name="n3"
    )
    BufferedSummaries(one).write([_summary(4, "a", 3800.0)], source="edge-t", name="n4")
    # and a summary already written is written again (a request scored again outside a transaction)
    assert BufferedSummaries(one).write([_summary(4, "a", 3800.0)], source="edge-t", name="n4") == []
    # Then the one row counts what was committed, exactly once
    assert one.stats().rows["drift"] == 1
    (held,) = BufferedSummaries(one).read("m", *_hours(0, 3))
    assert (held.readings, held.features["f"], held.devices) == (7, (7, 0), {"a": 3800.0, "b": 3700.0})


def _hours(start: int, end: int) -> tuple[Any, Any]:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(start * 3600, tz=UTC), datetime.fromtimestamp(end * 3600, tz=UTC)


_KILLED_WHILE_SHIPPING_DRIFT = """
import json, os, signal, sys
from zaindari.bundle import load_bundle
from zaindari.edge.buffer import EdgeBuffer, Shipper
from tests.unit.test_edge_buffer import RecordingUplink
from tests.unit.test_edge_drift_rows import TeeSummaries, box_scoring, score_one_by_one

db, bundle_dir, readings = sys.argv[1:]

class DyingUplink(RecordingUplink):
    def put_summaries(self, summaries, *, source, name):
        os.kill(os.getpid(), signal.SIGKILL)  # the drift row is planned, not sent

buffer = EdgeBuffer(db)
scoring = box_scoring(buffer, load_bundle(bundle_dir), TeeSummaries(buffer))
score_one_by_one(buffer, scoring, json.loads(readings))
Shipper(buffer, DyingUplink(), box_id="t", status=dict).ship_once()
"""


def test_a_box_killed_while_shipping_a_drift_row_sends_it_as_planned_and_counts_every_reading(
    tmp_path: Path, bundle_dir: Path, bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    # Given a box killed -9 while its shipper sends a window's drift row (planned, not sent)
    first, later = readings[:6], readings[6:12]
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_KILLED_WHILE_SHIPPING_DRIFT),
            str(tmp_path / "edge.db"),
            str(bundle_dir),
            json.dumps(first),
        ],
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"},
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    # When the restarted box scores more readings of the same window, then ships
    buffer = EdgeBuffer(tmp_path / "edge.db")
    (planned,) = buffer.next_batch(5000)
    assert planned.kind == "drift" and planned.body["summaries"][0]["readings"] == len(first)
    tee = TeeSummaries(buffer)
    score_one_by_one(buffer, box_scoring(buffer, bundle, tee), later)
    assert buffer.next_batch(5000) == [planned]  # the row in flight was not merged into
    uplink = RecordingUplink()
    assert Shipper(buffer, uplink, box_id="t", status=dict).ship_once().error is None
    # Then the planned row went out under its planned name, the later readings in a row of their
    # own, and together they count every reading once
    drift = shipped_drift(uplink)
    assert drift[f"summaries/edge-t-{planned.body['name']}.json"] == planned.body["summaries"]
    assert len(drift) == 2
    assert sum(w["readings"] for rows in drift.values() for w in rows) == len(first) + len(later)
    assert uplink.puts.index(f"summaries/edge-t-{planned.body['name']}.json") == 0
