"""The plant simulator: deterministic, contract-valid readings, plausible physics, exact ground truth."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from zaindari.contract import Reading, parse_reading
from zaindari.simulate import (
    SENSORS,
    DriftEvent,
    FaultEvent,
    PlantConfig,
    PlantData,
    simulate_plant,
)


@pytest.fixture(scope="module")
def small() -> PlantData:
    return simulate_plant(PlantConfig.small())


@pytest.fixture(scope="module")
def small_without_events() -> PlantData:
    """The same plant and seed with no faults and no drift: the noise is identical."""
    return simulate_plant(PlantConfig.small().model_copy(update={"faults": (), "drifts": ()}))


def _device(data: PlantData, device_id: str) -> Any:
    return data.frame[data.frame["device_id"] == device_id].reset_index(drop=True)


def _fault(data: PlantData, kind: str) -> FaultEvent:
    return next(f for f in data.faults if f.kind == kind)


def _between(rows: Any, start: datetime, end: datetime) -> Any:
    return rows[(rows["timestamp"] >= pd.Timestamp(start)) & (rows["timestamp"] < pd.Timestamp(end))]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_frame() -> None:
    first = simulate_plant(PlantConfig.small(seed=3))
    second = simulate_plant(PlantConfig.small(seed=3))
    pd.testing.assert_frame_equal(first.frame, second.frame)
    assert first.faults == second.faults


def test_different_seed_gives_different_readings() -> None:
    first = simulate_plant(PlantConfig.small(seed=3)).frame
    second = simulate_plant(PlantConfig.small(seed=4)).frame
    assert not np.allclose(first["temperature"], second["temperature"])
    assert not (first["mode"] == second["mode"]).all()


def test_automatic_faults_are_seeded_and_fit_the_run() -> None:
    config = PlantConfig.demo(seed=11)
    first = simulate_plant(config)
    second = simulate_plant(config)
    assert first.faults == second.faults
    assert len(first.faults) == config.auto_faults
    assert len({f.device_id for f in first.faults}) == config.auto_faults
    end = config.start + config.duration
    for fault in first.faults:
        assert config.start < fault.onset < fault.failure < end
        assert timedelta(hours=0) < fault.lead_time <= timedelta(hours=72)


# ----------------------------------------------------------------------------- readings and exports


def test_every_reading_passes_the_contract(small: PlantData) -> None:
    records = list(small.readings())
    results = [parse_reading(json.loads(json.dumps(r)), index=i) for i, r in enumerate(records)]
    rejections = [r for r in results if not isinstance(r, Reading)]
    assert rejections == []
    assert len(records) == len(small.frame) == small.config.n_readings
    assert all(r["timestamp"].endswith("Z") for r in records)
    assert set(records[0]) == {"device_id", "asset", "line", "site", "timestamp", "mode", "seq", "sensors"}
    assert tuple(records[0]["sensors"]) == SENSORS


def test_readings_come_in_time_order_with_per_device_sequence(small: PlantData) -> None:
    readings = list(small.readings())
    parsed = [parse_reading(r) for r in readings]
    times = [p.timestamp for p in parsed if isinstance(p, Reading)]
    assert times == sorted(times)
    per_device: dict[str, list[int]] = {}
    for record in readings:
        per_device.setdefault(record["device_id"], []).append(record["seq"])
    assert all(seqs == list(range(small.config.n_steps)) for seqs in per_device.values())


def test_readings_limit_stops_early(small: PlantData) -> None:
    assert len(list(small.readings(limit=5))) == 5


def test_frame_timestamps_are_utc_aware(small: PlantData) -> None:
    stamps = small.frame["timestamp"]
    assert str(stamps.dt.tz) == "UTC"
    assert stamps.iloc[0] == pd.Timestamp(small.config.start)


def test_historian_csv_has_one_row_per_reading_and_iso_timestamps(small: PlantData, tmp_path: Path) -> None:
    path = small.to_csv(tmp_path / "historian.csv")
    table = pd.read_csv(path)
    assert len(table) == len(small.frame)
    assert list(table.columns) == ["device_id", "asset", "line", "site", "timestamp", "mode", "seq", *SENSORS]
    assert table["timestamp"].iloc[0] == "2024-01-01T00:00:00Z"
    np.testing.assert_allclose(table["temperature"], small.frame["temperature"])


def test_historian_parquet_can_carry_ground_truth(small: PlantData, tmp_path: Path) -> None:
    path = small.to_parquet(tmp_path / "historian.parquet", ground_truth=True)
    table = pd.read_parquet(path)
    assert len(table) == len(small.frame)
    assert {"fault_kind", "in_fault", "failed", "rul_hours"} <= set(table.columns)
    assert table["failed"].sum() == small.frame["failed"].sum()
    assert table["timestamp"].str.endswith("Z").all()


# ----------------------------------------------------------------------------- physics


def test_heavy_mode_runs_hotter_than_idle() -> None:
    frame = simulate_plant(PlantConfig.demo()).frame
    running = frame[~frame["failed"]]
    means = running.groupby("mode")["temperature"].mean()
    assert means["heavy"] > means["run"] > means["idle"] + 3.0


def test_mechanical_power_and_current_follow_torque(small: PlantData) -> None:
    frame = small.frame[~small.frame["failed"]]
    for _, machines in frame.groupby("kind"):
        correlation = np.corrcoef(machines["torque"], machines["motor_current"])[0, 1]
        assert correlation > 0.99


def test_bearing_fault_vibration_climbs_far_above_the_first_hour(small: PlantData) -> None:
    fault = _fault(small, "bearing")
    rows = _device(small, fault.device_id)
    first_hour = _between(rows, small.config.start, small.config.start + timedelta(hours=1))
    last_hour = _between(rows, fault.failure - timedelta(hours=1), fault.failure)
    assert last_hour["vibration_rms"].mean() > 2.5 * first_hour["vibration_rms"].mean()
    assert last_hour["vibration_rms"].max() > 7.1  # ISO 10816 zone D before it fails


def test_seal_leak_drops_pressure(small: PlantData, small_without_events: PlantData) -> None:
    fault = _fault(small, "seal_leak")
    leaking = _between(_device(small, fault.device_id), fault.failure - timedelta(hours=1), fault.failure)
    healthy = _between(
        _device(small_without_events, fault.device_id), fault.failure - timedelta(hours=1), fault.failure
    )
    assert leaking["pressure"].mean() < 0.6 * healthy["pressure"].mean()
    before = _between(_device(small, fault.device_id), small.config.start, fault.onset)
    same_before = _between(_device(small_without_events, fault.device_id), small.config.start, fault.onset)
    np.testing.assert_array_equal(before["pressure"], same_before["pressure"])


def test_cooling_fault_heats_the_machine_for_the_same_work(
    small: PlantData, small_without_events: PlantData
) -> None:
    fault = _fault(small, "cooling")
    end = small.config.start + small.config.duration
    late = _between(_device(small, fault.device_id), end - timedelta(hours=1), end)
    healthy = _between(_device(small_without_events, fault.device_id), end - timedelta(hours=1), end)
    np.testing.assert_array_equal(late["speed"], healthy["speed"])
    assert (late["temperature"] - healthy["temperature"]).mean() > 2.0


def test_failed_machine_stops_but_keeps_reporting_idle(small: PlantData) -> None:
    fault = _fault(small, "bearing")
    after = _device(small, fault.device_id).query("failed")
    assert len(after) > 0
    assert (after["mode"] == "idle").all()
    assert (after["speed"] == 0).all() and (after["torque"] == 0).all() and (after["pressure"] == 0).all()
    assert after["temperature"].iloc[-1] < after["temperature"].iloc[0]


def test_temperature_offset_drift_reaches_its_configured_magnitude(
    small: PlantData, small_without_events: PlantData
) -> None:
    drift = small.drifts[0]
    assert drift.sensor == "temperature" and drift.kind == "offset"
    drifted = _device(small, drift.devices[0])
    clean = _device(small_without_events, drift.devices[0])
    offset = drifted["temperature"] - clean["temperature"]
    before = drifted["timestamp"] < pd.Timestamp(drift.start)
    settled = drifted["timestamp"] >= pd.Timestamp(drift.start + drift.ramp)
    assert np.abs(offset[before]).max() < 1e-9
    np.testing.assert_allclose(offset[settled], drift.magnitude, atol=0.011)
    ramping = offset[~before & ~settled]
    assert (np.diff(ramping.to_numpy()) >= -0.011).all()  # grows through the ramp


def test_gain_drift_scales_only_the_chosen_device() -> None:
    base = PlantConfig.small().model_copy(update={"faults": (), "drifts": ()})
    target = base.machines()[0].device_id
    drift = DriftEvent(
        sensor="vibration_rms",
        start=base.start + timedelta(hours=2),
        kind="gain",
        magnitude=0.5,
        devices=(target,),
    )
    clean = simulate_plant(base).frame
    drifted = simulate_plant(base.model_copy(update={"drifts": (drift,)})).frame
    after = (drifted["timestamp"] >= pd.Timestamp(drift.start)) & (drifted["device_id"] == target)
    ratio = drifted.loc[after, "vibration_rms"] / clean.loc[after, "vibration_rms"]
    np.testing.assert_allclose(ratio, 1.5, rtol=0.01)
    pd.testing.assert_frame_equal(drifted.loc[~after], clean.loc[~after])


# ----------------------------------------------------------------------------- ground truth


def test_in_fault_holds_exactly_between_onset_and_failure(small: PlantData) -> None:
    frame = small.frame
    faults = {f.device_id: f for f in small.faults}
    for device_id, rows in frame.groupby("device_id"):
        fault = faults.get(str(device_id))
        if fault is None:
            assert not rows["in_fault"].any() and not rows["failed"].any()
            assert rows["fault_kind"].isna().all()
            continue
        expected = (rows["timestamp"] >= pd.Timestamp(fault.onset)) & (
            rows["timestamp"] < pd.Timestamp(fault.failure)
        )
        assert (rows["in_fault"] == expected).all()
        assert (rows["failed"] == (rows["timestamp"] >= pd.Timestamp(fault.failure))).all()
        assert (rows["fault_kind"].notna() == (rows["timestamp"] >= pd.Timestamp(fault.onset))).all()
        assert set(rows["fault_kind"].dropna()) == {fault.kind}


def test_remaining_useful_life_falls_to_zero_at_failure(small: PlantData) -> None:
    fault = _fault(small, "bearing")
    rows = _device(small, fault.device_id)
    rul = rows["rul_hours"].to_numpy()
    assert (np.diff(rul) <= 0).all()
    hours_left = (pd.Timestamp(fault.failure) - rows["timestamp"]).dt.total_seconds() / 3600
    np.testing.assert_allclose(rul, np.maximum(hours_left, 0.0))
    first_failed = rows.index[rows["failed"]][0]
    assert rul[first_failed] == 0.0
    assert (rul[:first_failed] > 0).all()


def test_devices_that_never_fail_have_no_remaining_useful_life(small: PlantData) -> None:
    faulty = {f.device_id for f in small.faults}
    healthy = small.frame[~small.frame["device_id"].isin(faulty)]
    assert len(healthy) > 0 and healthy["rul_hours"].isna().all()


def test_fault_failing_after_the_run_leaves_machine_in_fault_at_the_end(small: PlantData) -> None:
    fault = _fault(small, "cooling")
    assert fault.failure > small.config.start + small.config.duration
    last = _device(small, fault.device_id).iloc[-1]
    assert last["in_fault"] and not last["failed"] and last["rul_hours"] > 0


def test_fault_affected_sensors_follow_from_its_kind() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    fault = FaultEvent(device_id="d", kind="seal_leak", onset=start, failure=start + timedelta(hours=1))
    assert fault.sensors == ("pressure", "motor_current")
    assert FaultEvent.model_validate(fault.model_dump()) == fault


# ----------------------------------------------------------------------------- configuration


def test_naive_start_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        PlantConfig(start=datetime(2024, 1, 1))


def test_fault_on_unknown_device_is_refused() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    fault = FaultEvent(device_id="nope", kind="bearing", onset=start, failure=start + timedelta(hours=1))
    with pytest.raises(ValidationError, match="unknown device"):
        PlantConfig(faults=(fault,))


def test_failure_before_onset_is_refused() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationError, match="after onset"):
        FaultEvent(device_id="d", kind="cooling", onset=start, failure=start)


def test_sub_second_sample_period_gives_millisecond_timestamps() -> None:
    config = PlantConfig(duration=timedelta(seconds=2), sample_period_seconds=0.5)
    data = simulate_plant(config)
    stamps = [r["timestamp"] for r in data.readings()]
    assert stamps[:: len(config.machines())][:2] == ["2024-01-01T00:00:00.000Z", "2024-01-01T00:00:00.500Z"]
    assert all(isinstance(parse_reading(r), Reading) for r in data.readings())
