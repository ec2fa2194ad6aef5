"""Drift monitoring: baselines, mergeable window summaries, statistics and the quiet trigger.

The fleet is simulated (``zaindari.simulate``): the baseline is trained on 20 seeded plants of 24
machines, and each monitoring window (one hour, 1,440 readings) is another seeded plant of the same
population, so a window without drift differs from the baseline only by the fleet's natural
machine-to-machine variation. The simulated ambient follows a +-4 degC daily cycle, so the one-hour
test windows are taken at the baseline's hour of day, one per day; in production the window spans
whole days (``ZAINDARI_DRIFT_WINDOW_HOURS`` defaults to 24) for the same reason.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import FLEET_DEVICES, FLEET_START, fit_fleet_bundle, fleet_readings
from zaindari.bundle import ModelBundle, load_bundle
from zaindari.contract import parse_readings
from zaindari.drift import (
    BASELINE_FILE,
    Baseline,
    DriftMonitor,
    DriftThresholds,
    SummaryStore,
    WindowSummary,
    assess_drift,
    baseline_of,
    compute_baseline,
    ks_from_histograms,
    merge_summaries,
    merge_windows,
    psi,
    summarize_table,
)
from zaindari.example_model import example_spec_text
from zaindari.features import SensorTable, compute_features
from zaindari.memory_ports import MemoryDriftNotifier, MemoryDriftTriggerLog, MemorySummaryStore
from zaindari.pca_model import fit_pca_bundle
from zaindari.pipeline import score_table
from zaindari.spec import load_spec

SPEC = load_spec(example_spec_text())
START = FLEET_START
# Calibrated on this simulated fleet: a window of 24 machines without drift reaches PSI ~0.55 and
# D ~0.3 on its most variable feature (temperature, per-machine ambient); see the module docstring.
THRESHOLDS = DriftThresholds(psi=1.0, ks=0.25, score_psi=1.0, min_readings=1000)
DEVICES = FLEET_DEVICES


def _table(seed: int, start: datetime, *, drifted: bool = False) -> SensorTable:
    parsed = parse_readings(fleet_readings(seed, start, drifted=drifted))
    return SensorTable.from_readings(parsed.readings, SPEC.sensor_names)


@pytest.fixture(scope="module")
def fleet_bundle(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    return load_bundle(fit_fleet_bundle(tmp_path_factory.mktemp("fleet")))


def _stream(
    bundle: ModelBundle, windows: int, drift_from: int | None
) -> list[tuple[datetime, list[WindowSummary]]]:
    """One hour per window, each a seeded plant; from ``drift_from`` on, the two sensors shift."""
    out = []
    for k in range(windows):
        start = START + timedelta(days=30 + k)  # same hour of day as the baseline: see the docstring
        drifted = drift_from is not None and k >= drift_from
        result = score_table(bundle, _table(1000 + k, start, drifted=drifted))
        out.append((start + timedelta(hours=1), result.summaries))
    return out


def _monitor() -> tuple[DriftMonitor, MemorySummaryStore, MemoryDriftNotifier]:
    store, notifier = MemorySummaryStore(), MemoryDriftNotifier()
    monitor = DriftMonitor(
        summaries=store,
        triggers=MemoryDriftTriggerLog(),
        notifier=notifier,
        thresholds=THRESHOLDS,
        window=timedelta(hours=1),
        min_interval=timedelta(days=30),
    )
    return monitor, store, notifier


# ----------------------------------------------------------------------------- baseline


def test_bundle_carries_a_baseline_hashed_in_its_manifest(fleet_bundle: ModelBundle) -> None:
    assert BASELINE_FILE in fleet_bundle.manifest.files
    baseline = baseline_of(fleet_bundle)
    assert baseline is not None
    assert baseline.features == fleet_bundle.signature.features
    assert baseline.rows == 20 * len(DEVICES) * 60
    assert all(sum(c) == baseline.rows for c in baseline.counts)
    assert sum(baseline.score_counts) == baseline.rows
    assert baseline.feature_sensors["mech_power"] == ["speed", "torque"]
    assert baseline.alert_rate is not None and 0.0 < baseline.alert_rate < 0.02


def test_bundle_without_baseline_loads_and_is_not_summarised(tmp_path: Path) -> None:
    matrix = compute_features(SPEC, _table(1, START)).matrix(SPEC.model_features)
    folder = fit_pca_bundle(SPEC, matrix, tmp_path / "b")
    manifest = (folder / "MANIFEST.json").read_text()
    (folder / BASELINE_FILE).unlink()
    data = json.loads(manifest)
    del data["files"][BASELINE_FILE]
    (folder / "MANIFEST.json").write_text(json.dumps(data))
    bundle = load_bundle(folder)
    assert baseline_of(bundle) is None
    assert score_table(bundle, _table(2, START)).summaries == []


# ----------------------------------------------------------------------------- statistics


def test_psi_and_ks_are_zero_on_identical_histograms_and_grow_with_a_shift() -> None:
    same = [100, 200, 300, 200, 100]
    assert psi(same, same) == pytest.approx(0.0)
    assert ks_from_histograms(same, same) == (0.0, 1.0)
    shifted = [0, 100, 200, 300, 300]
    d, p = ks_from_histograms(same, shifted)
    assert psi(same, shifted) > 0.2
    assert d == pytest.approx(1 / 3)  # the CDFs at the third edge: 600/900 vs 300/900
    assert p < 1e-6


def test_small_samples_give_no_verdict(fleet_bundle: ModelBundle) -> None:
    baseline = baseline_of(fleet_bundle)
    assert baseline is not None
    result = score_table(fleet_bundle, _table(5, START))
    merged = merge_summaries(result.summaries, WindowSummary.empty(baseline, fleet_bundle.model_version))
    strict = THRESHOLDS.model_copy(update={"min_readings": merged.scored + 1})
    assert assess_drift(baseline, merged, None, strict).verdict == "insufficient_data"


def test_quality_signals_name_missing_sensors_and_silent_devices(fleet_bundle: ModelBundle) -> None:
    baseline = baseline_of(fleet_bundle)
    assert baseline is not None
    table = _table(6, START)
    table.sensors["pressure"][::4] = np.nan  # a quarter of the readings lose their pressure
    current = score_table(fleet_bundle, table)
    previous = score_table(fleet_bundle, _table(7, START - timedelta(hours=1)))
    empty = WindowSummary.empty(baseline, fleet_bundle.model_version)
    now = merge_summaries(current.summaries, empty)
    before = merge_summaries(previous.summaries, empty)
    # a device the previous window saw that is silent now
    before = before.merge(dataclasses.replace(empty, devices={"plant-1-press-999": START.timestamp()}))
    report = assess_drift(baseline, now, before, THRESHOLDS)
    assert report.missing_rate["pressure"] == pytest.approx(0.25, abs=0.01)
    assert report.missing_rate["temperature"] == 0.0
    assert report.silent_devices == ["plant-1-press-999"]
    assert any(issue.startswith("pressure:") for issue in report.quality_issues)


# ----------------------------------------------------------------------------- merge guarantee


@functools.cache
def _small_baseline() -> Baseline:
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(500, 3))
    spec = load_spec(example_spec_text())
    names = spec.model_features[:3]
    return compute_baseline(spec, names, matrix, rng.gamma(2.0, size=500))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=300),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=4),
    seed=st.integers(min_value=0, max_value=2**16),
    order=st.randoms(use_true_random=False),
)
def test_summaries_merge_in_any_grouping_to_one_summary_over_all_data(
    n: int, cuts: list[int], seed: int, order: object
) -> None:
    """Edge + cloud: parts summarised apart, merged in any order and grouping, equal the whole."""
    empty = WindowSummary.empty(_small_baseline(), "plant-anomaly:1")
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(n)
    # the same rows, summarised whole ...
    whole_parts = _summaries_for(permutation, np.arange(n), seed)
    whole = merge_summaries(whole_parts, empty)
    # ... and split into parts (edge box, cloud, ...) summarised separately
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    parts = [
        s for a, b in itertools.pairwise(bounds) for s in _summaries_for(permutation, np.arange(a, b), seed)
    ]
    order.shuffle(parts)  # type: ignore[attr-defined]
    left = merge_summaries(parts, empty)
    right = functools.reduce(lambda acc, s: s.merge(acc), reversed(parts), empty)
    half = len(parts) // 2
    tree = merge_summaries(parts[:half], empty).merge(merge_summaries(parts[half:], empty))
    assert left.to_dict() == whole.to_dict()
    assert right.to_dict() == whole.to_dict()
    assert tree.to_dict() == whole.to_dict()
    assert WindowSummary.from_dict(whole.to_dict()) == whole
    # merged per window (what the Spark route writes from its partitions): the whole's windows
    assert [w.to_dict() for w in merge_windows(parts)] == [w.to_dict() for w in whole_parts]


def _summaries_for(permutation: np.ndarray, positions: np.ndarray, seed: int) -> list[WindowSummary]:
    """Summaries of the rows ``permutation[positions]``; every row's data depends only on its id."""
    rows = permutation[positions]
    if not len(rows):
        return []
    baseline = _small_baseline()
    data = _row_data(seed, len(permutation))
    return summarize_table(
        baseline,
        model_version="plant-anomaly:1",
        devices=data["devices"][rows],
        timestamps=data["timestamps"][rows],
        sensors={s: v[rows] for s, v in data["sensors"].items()},
        rows=np.flatnonzero(data["scored"][rows]),
        matrix=data["matrix"][rows][data["scored"][rows]],
        score=data["score"][rows][data["scored"][rows]],
        alerts=data["alerts"][rows][data["scored"][rows]],
    )


def _row_data(seed: int, n: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    baseline = _small_baseline()
    sensors = {s: rng.normal(50.0, 30.0, n) for s in baseline.sensors}
    sensors["pressure"][rng.random(n) < 0.1] = np.nan
    matrix = rng.normal(size=(n, 3))
    matrix[rng.random(matrix.shape) < 0.02] = np.nan
    return {
        "devices": np.array([f"d{r % 7}" for r in range(n)], dtype=object),
        "timestamps": 1_700_000_000 + rng.uniform(0, 4 * 3600, n),
        "sensors": sensors,
        "scored": rng.random(n) < 0.9,
        "matrix": matrix,
        "score": rng.gamma(2.0, size=n),
        "alerts": rng.random(n) < 0.05,
    }


# ----------------------------------------------------------------------------- the monitor


def test_a_stream_without_drift_triggers_nothing_over_50_windows(fleet_bundle: ModelBundle) -> None:
    monitor, store, notifier = _monitor()
    baseline = baseline_of(fleet_bundle)
    statuses = []
    for end, summaries in _stream(fleet_bundle, 50, drift_from=None):
        store.write(summaries, source="events", name=str(end.timestamp()))
        statuses.append(monitor.check(baseline, fleet_bundle.model_version, end).status)
    assert statuses.count("no_drift") == 50, statuses  # false positive rate 0 of 50
    assert notifier.events == []


def test_two_shifted_sensors_trigger_exactly_one_retraining_naming_them(fleet_bundle: ModelBundle) -> None:
    monitor, store, notifier = _monitor()
    baseline = baseline_of(fleet_bundle)
    checks = []
    for end, summaries in _stream(fleet_bundle, 16, drift_from=8):
        store.write(summaries, source="events", name=str(end.timestamp()))
        checks.append(monitor.check(baseline, fleet_bundle.model_version, end))
    statuses = [c.status for c in checks]
    assert statuses[:8] == ["no_drift"] * 8
    assert statuses[8] == "triggered"
    assert statuses[9:] == ["suppressed"] * 7  # the minimum interval keeps it to one
    assert len(notifier.events) == 1
    detail = notifier.events[0]
    assert detail["model"] == "plant-anomaly"
    assert detail["model_version"] == fleet_bundle.model_version
    evidence = detail["evidence"]
    assert evidence["sensors"] == ["pressure", "temperature"]
    named = {f["feature"] for f in evidence["features"]}
    assert {"temperature", "pressure"} <= named
    assert all(set(f["sensors"]) <= {"temperature", "pressure"} for f in evidence["features"])
    assert all(f["psi"] >= THRESHOLDS.psi and f["ks"] >= THRESHOLDS.ks for f in evidence["features"])
    assert evidence["window"]["readings"] == len(DEVICES) * 60
    assert any("retraining requested" in subject for subject, _ in notifier.people)


# ----------------------------------------------------------------------------- scoring paths


def test_edge_and_cloud_summaries_merge_to_the_summary_of_one_file_of_all_the_data(
    fleet_bundle: ModelBundle, tmp_path: Path
) -> None:
    """Half the fleet scored at an edge box (local folder), half in the cloud (three event batches);
    merged, they equal score_batch's summary of one CSV file holding every reading."""
    import io

    import pandas as pd

    from zaindari.event_scoring import EventScoring, InboundRecord
    from zaindari.file_scoring import FileScoring, FileSource
    from zaindari.local_ports import LocalFileSink, LocalSummaryStore
    from zaindari.memory_ports import MemoryAlertSink, MemoryLake, MemoryRejectSink, MemoryStateStore

    hour = START + timedelta(days=40)
    readings = fleet_readings(2000, hour)
    edge_devices = set(DEVICES[:12])
    edge_store, cloud_store, files_store = (
        LocalSummaryStore(tmp_path / "edge"),
        MemorySummaryStore(),
        MemorySummaryStore(),
    )

    def scoring(store: SummaryStore, source: str) -> EventScoring:
        return EventScoring(
            model=lambda: fleet_bundle,
            states=MemoryStateStore(),
            lake=MemoryLake(),
            alerts=MemoryAlertSink(),
            rejects=MemoryRejectSink(),
            summaries=store,
            source=source,
        )

    edge, cloud = scoring(edge_store, "edge"), scoring(cloud_store, "events")
    at_edge = [r for r in readings if r["device_id"] in edge_devices]
    in_cloud = [r for r in readings if r["device_id"] not in edge_devices]
    report = edge.score_records([InboundRecord("e1", {"readings": at_edge}, "edge")])
    (edge_file,) = report.lake_objects[-1:]
    assert "/summaries/date=2024-04-10/model=plant-anomaly/version=fleet-1/0000-0000-edge-" in edge_file
    for i in range(0, len(in_cloud), 240):
        cloud.score_records([InboundRecord(f"c{i}", {"readings": in_cloud[i : i + 240]}, "sqs")])

    frame = pd.DataFrame(
        [{**{k: v for k, v in r.items() if k != "sensors"}, **r["sensors"]} for r in readings]
    )
    FileScoring(
        model=lambda: fleet_bundle, sink=LocalFileSink(tmp_path / "lake"), summaries=files_store
    ).score_file(io.BytesIO(frame.to_csv(index=False).encode()), FileSource(key="drops/hour.csv", etag="e1"))

    baseline = baseline_of(fleet_bundle)
    assert baseline is not None
    empty = WindowSummary.empty(baseline, fleet_bundle.model_version)
    window = (hour, hour + timedelta(hours=1))
    from_edge = edge_store.read("plant-anomaly", *window)
    from_cloud = cloud_store.read("plant-anomaly", *window)
    assert len(from_edge) == 1 and len(from_cloud) == 3
    merged = merge_summaries(from_edge + from_cloud, empty)
    whole = merge_summaries(files_store.read("plant-anomaly", *window), empty)
    assert merged.to_dict() == whole.to_dict()
    assert whole.scored == len(readings) and set(whole.devices) == set(DEVICES)


def test_a_summary_store_failure_sends_the_batch_back_for_retry(fleet_bundle: ModelBundle) -> None:
    from zaindari.event_scoring import EventScoring, InboundRecord
    from zaindari.memory_ports import MemoryAlertSink, MemoryLake, MemoryRejectSink, MemoryStateStore

    store = MemorySummaryStore()
    store.fail = True
    states = MemoryStateStore()
    scoring = EventScoring(
        model=lambda: fleet_bundle,
        states=states,
        lake=MemoryLake(),
        alerts=MemoryAlertSink(),
        rejects=MemoryRejectSink(),
        summaries=store,
    )
    readings = fleet_readings(2001, START + timedelta(days=41))[:50]
    report = scoring.score_records([InboundRecord("r1", {"readings": readings}, "test")])
    assert report.status == {"r1": "retry"} and "summaries" in report.retry_reasons["r1"]
    store.fail = False  # the redelivery scores and summarises it (nothing was remembered)
    again = scoring.score_records([InboundRecord("r1", {"readings": readings}, "test")])
    assert again.status == {"r1": "scored"} and len(store.objects) == 1


def test_a_fleet_gone_silent_alerts_people_but_triggers_no_retraining(fleet_bundle: ModelBundle) -> None:
    monitor, store, notifier = _monitor()
    baseline = baseline_of(fleet_bundle)
    ((end, summaries),) = _stream(fleet_bundle, 1, drift_from=None)
    store.write(summaries, source="events", name="before")
    # the next hour nothing arrives
    check = monitor.check(baseline, fleet_bundle.model_version, end + timedelta(hours=1))
    assert check.status == "insufficient_data"
    assert notifier.events == []
    ((subject, message),) = notifier.people
    assert subject == "Zaindari data quality: plant-anomaly"
    assert check.report is not None and check.report.silent_devices == sorted(DEVICES)
    assert any("24 device(s) silent" in issue for issue in message["issues"])


def test_baselines_compare_by_their_fields_whatever_they_worked_out_and_cached() -> None:
    fields: dict[str, Any] = dict(
        model_name="m", features=["a"], edges=[[0.0, 1.0]], counts=[[1, 1, 1]], score_edges=[0.5],
        score_counts=[1, 1], rows=3, sensors={}, feature_sensors={},
    )  # fmt: skip
    a, b = Baseline(**fields), Baseline(**fields)
    assert a._edge_matrix.shape == b._edge_matrix.shape == (2, 2)  # both cached (numpy arrays)
    assert a == b and a != Baseline(**{**fields, "rows": 4})
    assert a.model_copy(update={"score_edges": [0.25]})._edge_matrix[1, 0] == 0.25
