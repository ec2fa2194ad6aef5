"""build_training_set on local Spark: every row accounted for, the online features, a data version."""

from __future__ import annotations

import gzip
import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import example_spec, plant_readings
from zaindari.contract import parse_readings
from zaindari.features import SensorTable, compute_features

pytestmark = pytest.mark.spark

from zaindari.file_store import LocalFileStore  # noqa: E402
from zaindari.training_set import (  # noqa: E402
    TrainingSetError,
    build_training_set,
    spec_hash,
    training_columns,
)

START, END = date(2026, 11, 1), date(2026, 11, 3)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def good_readings() -> list[dict[str, Any]]:
    """360 readings of the simulated plant (4 devices), one every 48 minutes from 2026-11-01 00:00Z."""
    out = []
    seen: dict[str, int] = {}
    for r in plant_readings():  # one reading per device per minute: keep every 4th of each device
        n = seen[r["device_id"]] = seen.get(r["device_id"], -1) + 1
        if n % 4 == 0:
            moment = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=12 * n)
            out.append({**r, "timestamp": moment.isoformat().replace("+00:00", "Z")})
    return out


def bad_rows(good: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows each refused for one reason, by the stage that refuses them (placed on 2026-11-02)."""
    base = {**good[0], "timestamp": "2026-11-02T12:34:00Z", "seq": 99_000}
    sensors = base["sensors"]
    return {
        "contract": [
            "{not json",
            {k: v for k, v in base.items() if k != "device_id"},
            {**base, "device_id": "   "},
            {**base, "timestamp": "2026-11-02T12:34:00"},  # no timezone
            {**base, "timestamp": "yesterday"},
            {**base, "sensors": {**sensors, "vibration_rms": "0.35"}},  # a string
            {**base, "sensors": {**sensors, "temperature": "NaN"}},
            {**base, "sensors": {**sensors, "pressure": None}},
            {**base, "sensors": {}},
            {**base, "firmware": "1.2"},  # unknown field
            {**base, "seq": -4},
        ],
        "features": [{**base, "device_id": "plant-1-press-999", "sensors": {**sensors, "pressure": 999.0}}],
        # a reading of 2026-10-31 found in a partition of the range
        "range": [{**base, "timestamp": "2026-10-31T23:59:00Z"}],
        "duplicate": [good[5]],
    }


def write_jsonl_gz(path: Path, rows: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)  # sensors become a struct column, as S3LakeWriter does
    path.write_bytes(sink.getvalue())


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A lake with three days of raw telemetry (jsonl.gz and Parquet), bad rows, and a day outside."""
    root = tmp_path_factory.mktemp("lake")
    good = good_readings()
    # one reading in epoch milliseconds: valid by the contract
    epoch = dict(good[7])
    epoch["timestamp"] = int(datetime.fromisoformat(epoch["timestamp"]).timestamp() * 1000)
    good_as_written = [*good[:7], epoch, *good[8:]]
    bad = bad_rows(good)
    by_day: dict[str, list[Any]] = {}
    for r, written in zip(good, good_as_written, strict=True):
        by_day.setdefault(r["timestamp"][:10], []).append(written)
    raw = root / "raw" / "telemetry"
    day1, day2, day3 = (by_day[d] for d in ("2026-11-01", "2026-11-02", "2026-11-03"))
    write_jsonl_gz(raw / "date=2026-11-01" / "events-a.jsonl.gz", day1[: len(day1) // 2] + bad["range"])
    write_jsonl_gz(raw / "date=2026-11-01" / "events-b.jsonl.gz", day1[len(day1) // 2 :])
    write_jsonl_gz(
        raw / "date=2026-11-02" / "events-c.jsonl.gz",
        day2 + bad["contract"] + bad["features"] + bad["duplicate"],
    )
    write_parquet(raw / "date=2026-11-03" / "events-d.parquet", day3)
    (raw / "date=2026-11-03" / "_SUCCESS").write_text("")
    write_jsonl_gz(raw / "date=2026-11-04" / "events-e.jsonl.gz", [good[0]])  # outside the range
    return {"root": root, "good": good, "bad": bad}


def run(spark: Any, lake: dict[str, Any], out: Path, start: date = START, end: date = END) -> dict[str, Any]:
    return build_training_set(
        spark,
        example_spec(),
        lake=str(lake["root"]),
        start=start,
        end=end,
        output=str(out / "set"),
        rejected=str(out / "rejected"),
        store=LocalFileStore(),
        stage_s3=False,
        scratch=out / "scratch",
        spec_uri="specs/plant-anomaly.yaml",
        now=NOW,
    )


@pytest.fixture(scope="module")
def built(spark: Any, lake: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("out")
    version = run(spark, lake, out)
    rows = spark.read.parquet(str(out / "set")).collect()
    rejected = [
        {**json.loads(line), "date": p.parent.name.removeprefix("date=")}
        for p in sorted((out / "rejected").rglob("*.json.gz"))
        for line in gzip.decompress(p.read_bytes()).splitlines()
    ]
    return {"out": out, "version": version, "rows": rows, "rejected": rejected}


def test_every_row_is_either_in_the_training_set_or_set_aside_with_its_reason(
    built: dict[str, Any], lake: dict[str, Any]
) -> None:
    counts = built["version"]["rows"]
    bad = lake["bad"]
    rows_in = len(lake["good"]) + sum(len(v) for v in bad.values())
    assert counts["in"] == rows_in == counts["valid"] + counts["rejected"]
    assert counts["rejected_by_stage"] == {stage: len(rows) for stage, rows in sorted(bad.items())}
    assert counts["valid"] == len(built["rows"]) == len(lake["good"]) == 360
    assert len(built["rejected"]) == counts["rejected"]
    assert {r["stage"] for r in built["rejected"]} == set(bad)
    assert all(r["reason"] and r["input"].endswith(".jsonl.gz") for r in built["rejected"])


def test_rejections_name_the_field_like_the_contract(built: dict[str, Any]) -> None:
    reasons = sorted(r["reason"] for r in built["rejected"] if r["stage"] == "contract")
    expected_fragments = [
        "device_id: Field required",
        "device_id: String should have at least 1 character",
        "firmware: Extra inputs are not permitted",
        "reading: must be a JSON object",
        "sensors.pressure: value null is not a finite number",
        "sensors.temperature: value NaN is not a finite number",
        "sensors.vibration_rms: value 0.35 is not a finite number",
        "sensors: must hold at least one value",
        "seq: must be a non-negative integer",
        "timestamp: must carry a timezone",
        "timestamp: yesterday is not ISO 8601",
    ]
    for fragment in expected_fragments:
        assert sum(fragment in r for r in reasons) == 1, (fragment, reasons)
    (features,) = [r for r in built["rejected"] if r["stage"] == "features"]
    assert features["reason"] == "sensors.pressure: value 999.0 outside valid range [0, 400]"
    (duplicate,) = [r for r in built["rejected"] if r["stage"] == "duplicate"]
    assert "duplicate of an earlier reading" in duplicate["reason"]
    (outside,) = [r for r in built["rejected"] if r["stage"] == "range"]
    assert "outside the requested range 2026-11-01..2026-11-03" in outside["reason"]
    assert outside["date"] == "2026-11-01"  # rows set aside are partitioned by their input's date


def test_features_equal_the_online_numpy_features(built: dict[str, Any], lake: dict[str, Any]) -> None:
    spec = example_spec()
    parsed = parse_readings(lake["good"])
    assert not parsed.rejections
    batch = compute_features(spec, SensorTable.from_readings(parsed.readings, spec.sensor_names))
    assert len(batch) == len(parsed.readings)  # the plant's readings are all valid
    key = {(r.device_id, r.timestamp): i for i, r in enumerate(parsed.readings)}
    spark_rows = {(r["device_id"], r["timestamp"].replace(tzinfo=UTC)): r for r in built["rows"]}
    assert set(spark_rows) == set(key)
    order = [spark_rows[(parsed.readings[i].device_id, parsed.readings[i].timestamp)] for i in batch.rows]
    for name in spec.column_names:
        got = np.array([r[name] for r in order], dtype=np.float64)
        np.testing.assert_allclose(got, batch.columns[name], rtol=1e-9, atol=1e-9, err_msg=name)


def test_the_training_set_is_partitioned_by_date_with_identifiers_first(
    built: dict[str, Any], spark: Any
) -> None:
    folder = built["out"] / "set"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "date=2026-11-01",
        "date=2026-11-02",
        "date=2026-11-03",
    ]
    frame = spark.read.parquet(str(folder))
    assert frame.columns == training_columns(example_spec())
    assert dict(frame.dtypes)["timestamp"] == "timestamp" and dict(frame.dtypes)["seq"] == "bigint"


def test_the_data_version_describes_inputs_counts_hashes_and_range(
    built: dict[str, Any], lake: dict[str, Any]
) -> None:
    version = json.loads((built["out"] / "set" / "_data_version.json").read_text())
    assert version == built["version"]
    assert version["time_range"] == {
        "start": "2026-11-01",
        "end": "2026-11-03",
        "inclusive": True,
        "timezone": "UTC",
    }
    assert version["created_at"] == "2026-11-22T12:00:00Z"
    assert version["spec_hash"] == spec_hash(example_spec())
    assert version["spec"] == {"name": "plant-anomaly", "task": "anomaly", "uri": "specs/plant-anomaly.yaml"}
    files = version["inputs"]["files"]
    assert [Path(f["uri"]).name for f in files] == [
        "events-a.jsonl.gz",
        "events-b.jsonl.gz",
        "events-c.jsonl.gz",
        "events-d.parquet",
    ]  # not _SUCCESS, not the day after the range
    for f in files:
        assert f["size"] == Path(f["uri"]).stat().st_size and f["etag"].startswith("sha256:")
    assert version["devices"] == 4
    assert sum(version["rows_by_date"].values()) == version["rows"]["valid"]
    assert version["content_hash"].startswith("sha256:") and len(version["content_hash"]) == 71
    assert version["data_version"] == f"2026-11-01_2026-11-03-{version['content_hash'][7:19]}"


def test_a_rebuild_of_the_same_range_gives_the_same_content_hash(
    spark: Any, lake: dict[str, Any], built: dict[str, Any], tmp_path: Path
) -> None:
    again = run(spark, lake, tmp_path)
    assert again["content_hash"] == built["version"]["content_hash"]
    shorter = run(spark, lake, tmp_path, end=date(2026, 11, 2))  # replaces the previous output
    assert shorter["content_hash"] != again["content_hash"]
    assert sorted(p.name for p in (tmp_path / "set").iterdir() if p.is_dir()) == [
        "date=2026-11-01",
        "date=2026-11-02",
    ]


def test_an_empty_range_is_a_clear_error_and_writes_nothing(
    spark: Any, lake: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(
        TrainingSetError, match=r"no raw telemetry under .*raw/telemetry/ for 2025-01-01..2025-01-31"
    ):
        run(spark, lake, tmp_path, start=date(2025, 1, 1), end=date(2025, 1, 31))
    assert list(tmp_path.iterdir()) == []


def test_the_job_script_fails_on_an_empty_range_before_spark_starts(
    lake: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from glue_jobs.build_training_set import main

    spec = tmp_path / "spec.yaml"
    spec.write_text(example_spec().to_yaml())
    argv = ["--lake", str(lake["root"]), "--start", "2025-01-01", "--end", "2025-01-02", "--spec", str(spec)]
    argv += ["--output", str(tmp_path / "set"), "--master", "local[2]"]
    assert main(argv) == 2
    assert "no raw telemetry" in capsys.readouterr().err
    assert not (tmp_path / "set").exists()


def test_the_job_script_builds_a_local_lake(lake: dict[str, Any], tmp_path: Path, spark: Any) -> None:
    from glue_jobs.build_training_set import main

    spec = tmp_path / "spec.yaml"
    spec.write_text(example_spec().to_yaml())
    argv = ["--lake", str(lake["root"]), "--start", "2026-11-01", "--end", "2026-11-03", "--spec", str(spec)]
    assert main([*argv, "--master", "local[2]"]) == 0
    version = json.loads(
        (lake["root"] / "training/sets/plant-anomaly/2026-11-01_2026-11-03/_data_version.json").read_text()
    )
    assert version["rows"]["valid"] == 360
    assert (lake["root"] / "training/rejected/plant-anomaly/2026-11-01_2026-11-03/date=2026-11-02").is_dir()


def test_rows_inside_a_maintenance_window_are_set_aside_with_the_window(spark: Any) -> None:
    from zaindari.maintenance import MaintenanceLog, MaintenanceWindow
    from zaindari.training_set import exclude_maintenance

    # Given rows of two devices (one already set aside for another reason) and a log with one
    # closed window on press-1 and one still open on spindle-2
    at = [datetime(2026, 11, 2, h, tzinfo=UTC) for h in (5, 6, 12, 18, 23)]
    rows = [("press-1", t, None, None) for t in at] + [("spindle-2", t, None, None) for t in at]
    rows.append(
        ("spindle-2", datetime(2026, 11, 2, 22, tzinfo=UTC), "duplicate", "duplicate of an earlier reading")
    )
    frame = spark.createDataFrame(
        rows, "device_id string, timestamp timestamp, _stage string, _reason string"
    )
    log = MaintenanceLog(
        (
            MaintenanceWindow(device_id="press-1", start=at[1], end=at[3], kind="bearing"),
            MaintenanceWindow(device_id="spindle-2", start=at[3]),
        )
    )
    # When the known faults are excluded
    out = {
        (r["device_id"], r["timestamp"].hour): (r["_stage"], r["_reason"])
        for r in exclude_maintenance(frame, log).collect()
    }
    # Then exactly the rows inside a window are set aside as `maintenance`, naming their window
    inside = {("press-1", 6), ("press-1", 12), ("spindle-2", 18), ("spindle-2", 23)}
    assert {k for k, (stage, _) in out.items() if stage == "maintenance"} == inside
    assert out[("press-1", 6)][1] == (
        "maintenance log: press-1 bearing from 2026-11-02T06:00:00+00:00 to 2026-11-02T18:00:00+00:00"
    )
    assert out[("spindle-2", 23)][1].endswith("to open")
    assert out[("press-1", 18)] == (None, None)  # the end is exclusive
    assert out[("spindle-2", 22)][0] == "duplicate"  # a row already set aside keeps its first reason
    assert exclude_maintenance(frame, MaintenanceLog()) is frame


def test_a_bad_maintenance_log_stops_the_job_before_spark_naming_file_and_line(
    lake: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from glue_jobs.build_training_set import main

    orders = tmp_path / "labels"
    orders.mkdir()
    (orders / "bad.jsonl").write_text('{"device_id": "x", "start": "2026-11-02T06:00:00"}\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text(example_spec().to_yaml())
    argv = ["--lake", str(lake["root"]), "--start", "2026-11-01", "--end", "2026-11-03", "--spec", str(spec)]
    argv += ["--output", str(tmp_path / "set"), "--maintenance", str(orders), "--master", "local[2]"]
    assert main(argv) == 2
    assert "bad.jsonl line 1: start: give a time zone" in capsys.readouterr().err
    assert not (tmp_path / "set").exists()
