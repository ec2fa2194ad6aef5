"""score_batch's file scoring fed hostile files (hypothesis): CSV, Parquet and JSON Lines holding
wrong types, NaN and infinity, huge numbers, odd unicode in ids, naive or odd time zones, nesting,
and bytes that are no file at all.

Property: ``score_file`` never raises on a file's content; the file ends ``scored`` with every row
accounted for (``rows_in == rows_scored + rows_quarantined``, each quarantined row in the lake with
its reason, each scored row in the scores), or ``failed`` with a clear error and the file set aside
whole in ``quarantine/files/``. No network: the local lake in a temporary folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.hostile import ODD_NUMBER, ODD_TEXT, ODD_TIMESTAMP, WRONG_TYPE, hostile_reading
from tests.support import plant_readings
from zaindari.bundle import ModelBundle
from zaindari.file_scoring import FileManifest, FileScoring, FileScoringOptions, FileSource
from zaindari.local_ports import LocalFileSink

SENSORS = ["temperature", "vibration_rms", "motor_current", "pressure", "speed", "torque"]
SMALL_CHUNKS = FileScoringOptions(chunk_bytes=4096, chunk_rows=7)


@pytest.fixture(scope="module")
def bases() -> list[dict[str, Any]]:
    return plant_readings()[800:830]


def flat(reading: dict[str, Any]) -> dict[str, Any]:
    """A historian row: identifiers and one column per sensor."""
    sensors = reading.get("sensors")
    sensors = sensors if isinstance(sensors, dict) else {}
    return {
        "device_id": reading.get("device_id"),
        "timestamp": reading.get("timestamp"),
        **{s: sensors.get(s) for s in SENSORS},
    }


def score(bundle: ModelBundle, data: bytes, key: str) -> tuple[FileManifest, Path]:
    lake = Path(tempfile.mkdtemp(prefix="fuzz-lake-"))
    scoring = FileScoring(model=lambda: bundle, sink=LocalFileSink(lake), options=SMALL_CHUNKS)
    manifest = scoring.score_file(io.BytesIO(data), FileSource(key=f"drops/{key}", etag="e1"))
    return manifest, lake


def assert_accounted(manifest: FileManifest, lake: Path, rows_written: int | None) -> None:
    if manifest.status == "failed":
        assert manifest.error and manifest.quarantined_to
        marker = json.loads((lake / manifest.quarantined_to).read_text())
        assert marker["reason"]
        assert not (lake / "scores").exists()  # nothing half-written
        return
    assert manifest.rows_in == manifest.rows_scored + manifest.rows_quarantined
    if rows_written is not None:
        assert manifest.rows_in == rows_written
    scored = sum(pq.read_metadata(f).num_rows for f in (lake / "scores").rglob("*.parquet"))
    assert scored == manifest.rows_scored
    dead = [
        json.loads(line)
        for f in (lake / "quarantine").glob("date=*/*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert len(dead) == manifest.rows_quarantined
    assert all(d["reason"] for d in dead)


def hostile_rows(bases: list[dict[str, Any]]) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(
        st.one_of(st.sampled_from(bases), st.sampled_from(bases).flatmap(hostile_reading)).filter(
            lambda r: isinstance(r, dict)
        ),
        min_size=1,
        max_size=25,
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, allow_nan=True)


@given(data=st.data())
def test_hostile_csv_rows_are_each_scored_or_quarantined(
    bundle: ModelBundle, bases: list[dict[str, Any]], data: st.DataObject
) -> None:
    rows = [flat(r) for r in data.draw(hostile_rows(bases))]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["device_id", "timestamp", *SENSORS], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v).replace("\r", " ").replace("\n", " ") for k, v in row.items()})
    manifest, lake = score(bundle, out.getvalue().encode("utf-8", "surrogatepass"), "fuzz.csv")
    assert_accounted(
        manifest, lake, None if manifest.status == "failed" else len(rows) - manifest.blank_lines
    )


@given(data=st.data())
def test_hostile_json_lines_are_each_scored_or_quarantined(
    bundle: ModelBundle, bases: list[dict[str, Any]], data: st.DataObject
) -> None:
    lines = data.draw(
        st.lists(
            st.one_of(
                st.sampled_from(bases).flatmap(hostile_reading).map(lambda r: json.dumps(r, allow_nan=True)),
                st.sampled_from(bases).map(json.dumps),
                st.sampled_from(["{", "[]", "null", '"text"', "{}", '{"device_id": "a", "device_id": "b"}']),
            ),
            min_size=1,
            max_size=25,
        )
    )
    body = "\n".join(line.replace("\n", " ") for line in lines) + "\n"
    manifest, lake = score(bundle, body.encode("utf-8", "surrogatepass"), "fuzz.jsonl")
    assert_accounted(
        manifest, lake, None if manifest.status == "failed" else len(lines) - manifest.blank_lines
    )


def _column(values: list[Any], kind: str) -> pa.Array:
    if kind == "float":
        return pa.array([v if isinstance(v, float) else None for v in values], pa.float64())
    if kind == "int":
        ints = [v if type(v) is int and abs(v) < 2**63 else None for v in values]
        return pa.array(ints, pa.int64())
    return pa.array(
        [None if v is None else _cell(v).encode("utf-8", "replace").decode() for v in values], pa.string()
    )


@given(data=st.data())
def test_hostile_parquet_columns_are_each_scored_or_quarantined(
    bundle: ModelBundle, bases: list[dict[str, Any]], data: st.DataObject
) -> None:
    n = data.draw(st.integers(1, 20))
    columns: dict[str, pa.Array] = {}
    ids = data.draw(
        st.lists(
            st.one_of(st.sampled_from([b["device_id"] for b in bases]), ODD_TEXT), min_size=n, max_size=n
        )
    )
    columns["device_id"] = _column(ids, data.draw(st.sampled_from(["text", "text", "int"])))
    time_kind = data.draw(st.sampled_from(["iso", "odd", "epoch_ms", "naive", "aware"]))
    stamps = [bases[i % len(bases)]["timestamp"] for i in range(n)]
    if time_kind == "iso":
        columns["timestamp"] = pa.array(stamps, pa.string())
    elif time_kind == "odd":
        columns["timestamp"] = _column(data.draw(st.lists(ODD_TIMESTAMP, min_size=n, max_size=n)), "text")
    elif time_kind == "epoch_ms":
        columns["timestamp"] = pa.array(
            data.draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n)), pa.int64()
        )
    else:
        parsed = pa.array(stamps, pa.string()).cast(pa.timestamp("us", tz="UTC"))
        columns["timestamp"] = parsed.cast(pa.timestamp("us")) if time_kind == "naive" else parsed
    for sensor in SENSORS:
        if sensor != "temperature" and data.draw(st.integers(0, 9)) == 0:
            continue  # a missing column: the whole file fails, with the column named
        kind = data.draw(st.sampled_from(["float", "float", "float", "text", "int"]))
        good = [bases[i % len(bases)]["sensors"][sensor] for i in range(n)]
        values = [
            v if data.draw(st.integers(0, 3)) else data.draw(st.one_of(ODD_NUMBER, WRONG_TYPE)) for v in good
        ]
        columns[sensor] = _column(values, kind)
    table = pa.table(columns)
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=max(1, n // 3))
    manifest, lake = score(bundle, sink.getvalue(), "fuzz.parquet")
    assert_accounted(manifest, lake, None if manifest.status == "failed" else n)
    if manifest.status == "scored" and table.column("temperature").type == pa.float64():
        finite = [v for v in table.column("temperature").to_pylist() if v is not None and math.isfinite(v)]
        assert manifest.rows_scored <= len(finite)  # NaN, infinity and nulls are never scored


@given(
    raw=st.binary(max_size=4096),
    key=st.sampled_from(["x.csv", "x.csv.gz", "x.parquet", "x.jsonl", "x.json.gz"]),
)
def test_bytes_that_are_no_file_fail_clearly_or_are_quarantined_never_raise(
    bundle: ModelBundle, raw: bytes, key: str
) -> None:
    manifest, lake = score(bundle, raw, key)
    assert_accounted(manifest, lake, None)


def test_json_lines_that_are_not_objects_are_quarantined_one_by_one_never_crash_the_process(
    bundle: ModelBundle, bases: list[dict[str, Any]]
) -> None:
    """A bare ``null`` line made pyarrow's JSON reader segfault (found by the deep fuzz profile)."""
    good = [json.dumps(b) for b in bases[:3]]
    lines = [good[0], "null", good[1], "  null ", "42", '"text"', "[1]", good[2]]
    manifest, lake = score(bundle, ("\n".join(lines) + "\n").encode(), "nulls.jsonl")
    assert_accounted(manifest, lake, len(lines))
    assert (manifest.rows_scored, manifest.rows_quarantined) == (3, 5)
