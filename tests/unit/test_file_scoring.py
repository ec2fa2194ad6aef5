"""File scoring on a real bundle and simulated historian files, written to a local folder.

No network: the example model (PCA fitted on simulated healthy operation) scores the small
simulated plant exported as CSV, gzip CSV, Parquet (several row groups) and JSON Lines. Chunks are
kept small so every file spans many chunks.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zaindari.bundle import ModelBundle
from zaindari.features import SensorTable
from zaindari.file_reading import RawChunk, read_chunks
from zaindari.file_scoring import (
    FileManifest,
    FilePart,
    FileRun,
    FileScoring,
    FileScoringOptions,
    FileSource,
    detect_format,
    merge_manifests,
    number_parts,
    plan_parts,
    validate_chunk,
)
from zaindari.local_ports import LocalFileSink
from zaindari.pipeline import score_table
from zaindari.ports import PortError
from zaindari.simulate import PlantConfig, PlantData, simulate_plant

SMALL_CHUNKS = FileScoringOptions(chunk_bytes=8192, chunk_rows=97)
SENSORS = ["temperature", "vibration_rms", "motor_current", "pressure", "speed", "torque"]


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def plant() -> PlantData:
    return simulate_plant(PlantConfig.small(seed=0))


@pytest.fixture(scope="module")
def frame(plant: PlantData) -> pd.DataFrame:
    return plant.historian_frame()


@pytest.fixture(scope="module")
def files(frame: pd.DataFrame) -> dict[str, bytes]:
    """The same readings in every format the drops come in."""
    csv = frame.to_csv(index=False).encode()
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False, engine="pyarrow", row_group_size=250)
    jsonl = frame.to_json(orient="records", lines=True).encode()
    return {
        "drop.csv": csv,
        "drop.csv.gz": gzip.compress(csv),
        "drop.parquet": parquet.getvalue(),
        "drop.jsonl": jsonl,
        "drop.json.gz": gzip.compress(jsonl),
    }


def run(
    bundle: ModelBundle,
    data: bytes,
    key: str,
    lake: Path,
    *,
    options: FileScoringOptions = SMALL_CHUNKS,
    part: FilePart | None = None,
    sink: LocalFileSink | None = None,
) -> FileManifest:
    scoring = FileScoring(model=lambda: bundle, sink=sink or LocalFileSink(lake), options=options)
    return scoring.score_file(io.BytesIO(data), FileSource(key=f"drops/{key}", etag="e1"), part=part)


def scores_of(lake: Path) -> pd.DataFrame:
    files = sorted((lake / "scores").rglob("*.parquet")) if (lake / "scores").exists() else []
    if not files:
        return pd.DataFrame(columns=["row"])
    return pd.concat([pq.read_table(f).to_pandas() for f in files]).sort_values("row").reset_index(drop=True)


def quarantined(lake: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for f in sorted((lake / "quarantine").glob("date=*/*.jsonl")):
        for line in f.read_text().splitlines():
            record = json.loads(line)
            out[record["reading_index"]] = record
    return out


def assert_accounted(manifest: FileManifest, lake: Path) -> None:
    assert manifest.status == "scored", manifest.error
    assert manifest.rows_in == manifest.rows_scored + manifest.rows_quarantined
    assert len(scores_of(lake)) == manifest.rows_scored
    assert len(quarantined(lake)) == manifest.rows_quarantined


def summary_key(summary: Any) -> tuple[Any, ...]:
    """An alert summary without its floats (ONNX batches of other sizes round differently)."""
    return (
        summary.device_id,
        summary.rule_id,
        summary.severity,
        summary.rows,
        summary.raised,
        summary.escalated,
        summary.resolved,
        summary.first_at,
        summary.last_at,
        [w.row for w in summary.worst_rows],
    )


def lines_of(data: bytes) -> list[bytes]:
    return data.decode().splitlines(keepends=True)  # type: ignore[return-value]


# ------------------------------------------------------------------------------- every format


@pytest.mark.parametrize("key", ["drop.csv", "drop.csv.gz", "drop.parquet", "drop.jsonl", "drop.json.gz"])
def test_each_format_is_scored_in_chunks_with_every_row_accounted(
    bundle: ModelBundle, files: dict[str, bytes], frame: pd.DataFrame, key: str, tmp_path: Path
) -> None:
    manifest = run(bundle, files[key], key, tmp_path)

    assert_accounted(manifest, tmp_path)
    assert manifest.rows_in == len(frame) == manifest.rows_scored
    assert manifest.chunks > 5
    assert manifest.format == key.removeprefix("drop.").replace("json.gz", "jsonl.gz")
    scores = scores_of(tmp_path)
    assert scores["row"].tolist() == list(range(len(frame)))
    assert set(scores["source_key"]) == {f"drops/{key}"}
    assert set(scores["model_version"]) == {bundle.model_version}
    assert scores["device_id"].tolist() == frame["device_id"].tolist()
    assert scores["asset"].tolist() == frame["asset"].tolist()
    assert manifest.extra_columns == ["seq"]
    assert manifest.outputs == [f"scores/date=2024-01-01/{manifest.source_id}.parquet"]


def test_results_are_equal_across_formats(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    results = {}
    for key, data in files.items():
        manifest = run(bundle, data, key, tmp_path / key)
        scores = scores_of(tmp_path / key)
        results[key] = (manifest, scores)
    reference_manifest, reference = results["drop.csv"]
    for key, (manifest, scores) in results.items():
        np.testing.assert_allclose(scores["score"], reference["score"], rtol=1e-6, err_msg=key)
        assert scores["alert"].tolist() == reference["alert"].tolist(), key
        assert scores["severity"].tolist() == reference["severity"].tolist(), key
        assert scores["timestamp"].tolist() == reference["timestamp"].tolist(), key
        assert [summary_key(a) for a in manifest.alerts] == [
            summary_key(a) for a in reference_manifest.alerts
        ]


def test_chunked_scores_equal_score_table_on_the_whole_table(
    bundle: ModelBundle, files: dict[str, bytes], frame: pd.DataFrame, tmp_path: Path
) -> None:
    # Given the whole table scored in one score_table call
    whole = SensorTable(
        device_id=frame["device_id"].to_numpy(dtype=object),
        timestamp=pd.to_datetime(frame["timestamp"], utc=True).astype("int64").to_numpy() / 1e9,
        sensors={s: frame[s].to_numpy(dtype=np.float64) for s in SENSORS},
        mode=frame["mode"].to_numpy(dtype=object),
    )
    expected = score_table(bundle, whole)
    # When the CSV is scored in chunks of about 70 rows
    manifest = run(bundle, files["drop.csv"], "drop.csv", tmp_path)
    # Then the windows crossed the chunk boundaries: every row scores the same
    assert manifest.chunks >= 20
    scores = scores_of(tmp_path)
    assert scores["row"].tolist() == expected.rows.tolist()
    np.testing.assert_allclose(scores["score"], expected.score, rtol=1e-5)
    assert [list(r) for r in scores["rules"]] == expected.row_rules
    assert scores["severity"].tolist() == expected.row_severity
    raised = {(a.device_id, a.rule_id) for a in expected.alerts if a.kind == "raised"}
    assert {(s.device_id, s.rule_id) for s in manifest.alerts if s.raised} == raised
    assert sum(s.raised for s in manifest.alerts) == sum(a.kind == "raised" for a in expected.alerts)


# ----------------------------------------------------------------------------------- bad rows


def test_bad_rows_are_quarantined_with_reasons_and_neighbours_scored(
    bundle: ModelBundle, files: dict[str, bytes], frame: pd.DataFrame, tmp_path: Path
) -> None:
    lines = lines_of(files["drop.csv"])  # lines[0] is the header; row r is lines[r + 1]
    header = lines[0].strip().split(",")
    col = {name: i for i, name in enumerate(header)}

    def edit(row: int, **values: str) -> None:
        fields = lines[row + 1].rstrip("\n").split(",")
        for name, value in values.items():
            fields[col[name]] = value
        lines[row + 1] = ",".join(fields) + "\n"

    edit(10, timestamp="2024-01-01T00:02:00")  # naive
    edit(20, temperature="hot")  # not a number
    edit(30, device_id="")  # missing device id
    edit(40, pressure="900")  # outside the spec's range [0, 400]
    edit(50, timestamp="01/01/2024 00:05")  # not ISO 8601
    edit(60, timestamp="1704068100000")  # epoch milliseconds as text: valid
    edit(70, speed="inf")  # not finite
    lines[81] = "plant-1-press-101,press-101\n"  # row 80: wrong number of fields
    lines.insert(91, "\n")  # a blank line: not a row, row numbers still count it
    data = "".join(lines).encode()

    manifest = run(bundle, data, "bad.csv", tmp_path)

    assert_accounted(manifest, tmp_path)
    assert manifest.rows_in == len(frame)
    assert manifest.blank_lines == 1
    bad = quarantined(tmp_path)
    assert sorted(bad) == [10, 20, 30, 40, 50, 70, 80]
    assert "timestamp" in bad[10]["reason"] and "no timezone" in bad[10]["reason"]
    assert bad[20]["reason"] == "sensors.temperature: value 'hot' is not a number"
    assert bad[30]["reason"] == "device_id: missing"
    assert "outside valid range [0, 400]" in bad[40]["reason"] and bad[40]["stage"] == "features"
    assert "is not ISO 8601" in bad[50]["reason"]
    assert "not finite" in bad[70]["reason"]
    assert bad[80]["reason"] == "row has 2 fields, the header has 13" and bad[80]["stage"] == "parse"
    # the raw row is kept, extra columns included
    assert bad[20]["record"]["seq"] == str(frame["seq"][20]) and bad[20]["record"]["temperature"] == "hot"
    scores = scores_of(tmp_path)
    assert 60 in set(scores["row"]) and 92 in set(scores["row"])  # the row after the blank line
    assert not set(bad) & set(scores["row"])
    assert scores["row"].max() == len(frame)  # the blank line took a number


def test_json_lines_follow_the_event_contract(bundle: ModelBundle, plant: PlantData, tmp_path: Path) -> None:
    # Given event-shaped lines (sensors nested), with epoch-millisecond timestamps on some
    records = list(plant.readings(limit=400))
    records[5]["timestamp"] = int(datetime(2024, 1, 1, 0, 1, tzinfo=UTC).timestamp() * 1000)
    records[7]["sensors"]["pressure"] = "12.5"  # a JSON string is not a number
    records[9]["device_id"] = None
    records[11]["sensors"]["speed"] = True
    text = [json.dumps(r) for r in records]
    text[13] = '{"device_id": "plant-1-press-101", "timestamp": '  # truncated line
    text[15] = "[1, 2, 3]"
    data = ("\n".join(text) + "\n").encode()

    manifest = run(bundle, data, "events.jsonl", tmp_path)

    assert_accounted(manifest, tmp_path)
    assert manifest.rows_in == 400
    bad = quarantined(tmp_path)
    assert sorted(bad) == [7, 9, 11, 13, 15]
    assert bad[7]["reason"] == "sensors.pressure: value '12.5' is not a number"
    assert bad[9]["reason"] == "device_id: missing"
    assert bad[11]["reason"] == "sensors.speed: value true is not a number"
    assert "not valid JSON" in bad[13]["reason"]
    assert "must be a JSON object" in bad[15]["reason"]
    assert 5 in set(scores_of(tmp_path)["row"])


def test_a_line_nested_deep_enough_to_crash_pyarrow_is_quarantined(
    bundle: ModelBundle, plant: PlantData, tmp_path: Path
) -> None:
    # Given a JSON Lines file where one line nests 200,000 brackets: pyarrow's recursive JSON
    # parser dies of a segmentation fault on it (found by tests/unit/test_fuzz_file_scoring.py)
    records = list(plant.readings(limit=300))
    text = [json.dumps(r) for r in records]
    text[17] = '{"device_id": "plant-1-press-101", "x": ' + "[" * 200_000 + "]" * 200_000 + "}"
    data = ("\n".join(text) + "\n").encode()

    manifest = run(bundle, data, "deep.jsonl", tmp_path)

    # Then the process lives, that line is quarantined with its reason and the others are scored
    assert_accounted(manifest, tmp_path)
    bad = quarantined(tmp_path)
    assert sorted(bad) == [17]
    assert "not valid JSON" in bad[17]["reason"] and "recursion" in bad[17]["reason"]
    assert len(scores_of(tmp_path)) == 299


def test_timestamps_are_checked_like_the_contract(bundle: ModelBundle) -> None:
    stamps = [
        "2024-01-01T00:00:00Z",
        "2024-01-01T02:00:00+02:00",
        "2024-01-01 00:00:00.250+0000",
        "1704067200000",
        "2024-01-01T00:00:00",
        "2024-01-01",
        "yesterday",
        "2024-13-01T00:00:00Z",
        "946684799000",
        None,
    ]
    n = len(stamps)
    batch = pa.RecordBatch.from_pydict(
        {
            "device_id": ["d"] * n,
            "timestamp": pa.array(stamps, pa.string()),
            **{s: pa.array([1.0] * n) for s in SENSORS},
        }
    )
    valid = validate_chunk(RawChunk(batch, np.arange(n, dtype=np.int64)), bundle.spec)

    assert valid.positions.tolist() == [0, 1, 2, 3]
    assert valid.table.timestamp.tolist() == [1704067200.0, 1704067200.0, 1704067200.25, 1704067200.0]
    reasons = {i: reason for i, reason, _ in valid.rejected}
    assert "no timezone" in reasons[4] and "no timezone" in reasons[5]
    assert "not ISO 8601" in reasons[6] and "not ISO 8601" in reasons[7]
    assert "before 2000-01-01" in reasons[8]
    assert reasons[9] == "timestamp: missing"


def test_typed_parquet_timestamps_naive_ones_are_quarantined(
    bundle: ModelBundle, plant: PlantData, tmp_path: Path
) -> None:
    frame = plant.frame.loc[:, ["device_id", "timestamp", "mode", *SENSORS]]
    aware, naive = io.BytesIO(), io.BytesIO()
    frame.to_parquet(aware, index=False)
    frame.assign(timestamp=frame["timestamp"].dt.tz_localize(None)).to_parquet(naive, index=False)

    good = run(bundle, aware.getvalue(), "aware.parquet", tmp_path / "aware")
    bad = run(bundle, naive.getvalue(), "naive.parquet", tmp_path / "naive")

    assert good.rows_scored == len(frame)
    assert bad.rows_quarantined == len(frame) and bad.rows_scored == 0
    assert "no timezone" in quarantined(tmp_path / "naive")[0]["reason"]


# ----------------------------------------------------------------------------- whole-file errors


@pytest.mark.parametrize(
    ("key", "make", "message"),
    [
        ("cut.csv.gz", lambda f: f["drop.csv.gz"][: len(f["drop.csv.gz"]) // 2], "truncated gzip file"),
        ("cut.json.gz", lambda f: f["drop.json.gz"][:-20], "truncated gzip file"),
        ("noise.csv.gz", lambda f: bytes(range(256)) * 64, "corrupt gzip file"),
        ("noise.parquet", lambda f: bytes(range(256)) * 64, "not a readable Parquet file"),
        ("cut.parquet", lambda f: f["drop.parquet"][:-100], "not a readable Parquet file"),
        ("noise.csv", lambda f: b"\x00\xff" * 50_000, "not a CSV file: its first line holds binary"),
        ("long.csv", lambda f: b"a" * 9_000_000, "no line end within 8,388,608 bytes"),
        ("noise.jsonl", lambda f: b"garbage\n" * 100, "not a JSON Lines file"),
        ("readme.txt", lambda f: b"hello\n", "unsupported file type"),
        ("empty.csv", lambda f: b"", "empty CSV file"),
    ],
)
def test_corrupt_files_fail_with_a_clear_error_and_write_nothing(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path, key: str, make: Any, message: str
) -> None:
    manifest = run(bundle, make(files), key, tmp_path)

    assert manifest.status == "failed"
    assert manifest.error is not None and message in manifest.error
    assert manifest.rows_in == manifest.rows_scored == manifest.rows_quarantined == 0
    assert manifest.outputs == []
    assert manifest.quarantined_to == f"quarantine/files/{manifest.source_id}.json"
    marker = json.loads((tmp_path / manifest.quarantined_to).read_text())
    assert marker["source"]["key"] == f"drops/{key}" and message in marker["reason"]
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == [f"manifests/{manifest.source_id}.json", manifest.quarantined_to]
    assert LocalFileSink(tmp_path).read_manifest(FileSource(key=f"drops/{key}", etag="e1")) == manifest


def test_truncated_gzip_after_many_chunks_reports_how_far_it_got(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    data = files["drop.csv.gz"][:-30]
    manifest = run(bundle, data, "late-cut.csv.gz", tmp_path)

    assert manifest.status == "failed" and "truncated gzip file" in (manifest.error or "")
    assert manifest.rows_read_before_failure > 1000  # the scored chunks were not kept
    assert not (tmp_path / "scores").exists() or not list((tmp_path / "scores").rglob("*.parquet"))
    assert not list(tmp_path.rglob("*.inprogress"))


def test_missing_columns_are_named(bundle: ModelBundle, frame: pd.DataFrame, tmp_path: Path) -> None:
    data = frame.drop(columns=["pressure", "timestamp"]).to_csv(index=False).encode()
    manifest = run(bundle, data, "thin.csv", tmp_path)

    assert manifest.status == "failed"
    assert manifest.error is not None
    assert manifest.error.startswith("missing required columns timestamp, pressure (the file has: device_id")


# ------------------------------------------------------------------------------------ fan-out


@pytest.mark.parametrize("numbered", [True, False])
def test_csv_byte_range_parts_merge_to_the_whole_file(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path, numbered: bool
) -> None:
    data = files["drop.csv"]
    whole = run(bundle, data, "drop.csv", tmp_path / "whole")
    parts = plan_parts("drop.csv", len(data), part_bytes=20_000)
    if numbered:  # the planner counts the newlines once; otherwise each part counts its own
        parts = number_parts(io.BytesIO(data), "drop.csv", parts)
        assert all(p.first_row is not None for p in parts)
    assert len(parts) > 5

    sink = LocalFileSink(tmp_path / "parts")
    scoring = FileScoring(model=lambda: bundle, sink=sink, options=SMALL_CHUNKS)
    source = FileSource(key="drops/drop.csv", etag="e1")
    manifests = [scoring.score_file(io.BytesIO(data), source, part=p) for p in parts]
    merged = scoring.complete_parts(manifests)

    assert merged.status == "scored" and merged.parts == len(parts)
    for count in ("rows_in", "rows_scored", "rows_quarantined", "alert_rows"):
        assert getattr(merged, count) == getattr(whole, count), count
    assert scores_of(tmp_path / "parts")["row"].tolist() == scores_of(tmp_path / "whole")["row"].tolist()
    assert len(merged.outputs) == len(parts)
    assert (tmp_path / "parts" / "manifests" / f"{source.source_id}.json").is_file()
    assert len(list((tmp_path / "parts" / "manifests" / source.source_id).glob("part-*.json"))) == len(parts)


def test_byte_ranges_hold_every_line_once_whatever_the_boundaries(
    bundle: ModelBundle, files: dict[str, bytes]
) -> None:
    data = files["drop.csv"][:3000]  # a line cut at the end: the last row is malformed, still one row
    expected = len(data.splitlines()) - 1
    for part_bytes in (1, 7, 64, 101, 256, 999, 4096):
        parts = plan_parts("x.csv", len(data), part_bytes=part_bytes)
        rows: list[int] = []
        for part in parts:
            for chunk in read_chunks(io.BytesIO(data), "x.csv", bundle.spec, part=part, chunk_bytes=50):
                rows += chunk.rows.tolist() + [bad.row for bad in chunk.invalid]
        assert sorted(rows) == list(range(expected)), part_bytes


def test_parquet_row_group_parts_merge_to_the_whole_file(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    data = files["drop.parquet"]
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    parts = plan_parts("drop.parquet", len(data), metadata, part_bytes=1)
    assert len(parts) == metadata.num_row_groups > 3
    assert [p.first_row for p in parts] == [250 * i for i in range(len(parts))]

    sink = LocalFileSink(tmp_path)
    scoring = FileScoring(model=lambda: bundle, sink=sink, options=SMALL_CHUNKS)
    source = FileSource(key="drops/drop.parquet", version_id="v7")
    manifests = [scoring.score_file(io.BytesIO(data), source, part=p) for p in reversed(parts)]
    merged = scoring.complete_parts(manifests)

    assert merged.status == "scored"
    assert merged.rows_in == merged.rows_scored == metadata.num_rows
    assert scores_of(tmp_path)["row"].tolist() == list(range(metadata.num_rows))
    assert set(scores_of(tmp_path)["source_version"]) == {"v7"}


def test_a_failed_part_fails_the_file_and_removes_the_other_parts_outputs(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    data = files["drop.csv"]
    parts = plan_parts("drop.csv", len(data), part_bytes=40_000)
    sink = LocalFileSink(tmp_path)
    scoring = FileScoring(model=lambda: bundle, sink=sink, options=SMALL_CHUNKS)
    source = FileSource(key="drops/drop.csv", etag="e1")
    manifests = [scoring.score_file(io.BytesIO(data), source, part=p) for p in parts[1:]]
    manifests.append(
        scoring.score_file(io.BytesIO(b"device_id\n"), source, part=parts[0])  # the columns are gone
    )

    merged = scoring.complete_parts(manifests)

    assert merged.status == "failed"
    assert merged.error is not None and "part 0: missing required columns" in merged.error
    assert merged.rows_in == merged.rows_scored == 0 and merged.outputs == []
    assert scores_of(tmp_path).empty
    assert merge_manifests(manifests[:-1]).error == f"parts [0] of {len(parts)} are missing"


# ------------------------------------------------------------------------------------- alerts


def test_alerts_are_aggregated_one_per_device_and_rule(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    manifest = run(bundle, files["drop.parquet"], "drop.parquet", tmp_path, options=FileScoringOptions())
    scores = scores_of(tmp_path)

    keys = [(a.device_id, a.rule_id) for a in manifest.alerts]
    assert len(keys) == len(set(keys)) > 1
    fired = scores.explode("rules").dropna(subset=["rules"])
    assert manifest.alert_rows == int(scores["alert"].sum()) > len(manifest.alerts)
    for summary in manifest.alerts:
        mine = fired[(fired["device_id"] == summary.device_id) & (fired["rules"] == summary.rule_id)]
        assert summary.rows == len(mine)
        assert summary.asset == mine["asset"].iloc[0]
        worst = mine.sort_values(["score", "row"], ascending=[False, True]).head(5)
        assert [w.row for w in summary.worst_rows] == worst["row"].tolist()
        assert summary.first_at == mine["timestamp"].min().isoformat().replace("+00:00", "Z")
        if summary.raised:
            assert summary.first_alert is not None and summary.first_alert.asset == summary.asset
    learned = [a for a in manifest.alerts if a.rule_id == "model_score" and a.raised]
    assert learned and learned[0].first_alert is not None and learned[0].first_alert.top_contributors


def test_merged_alert_summaries_add_counts_and_rerank_worst_rows(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    data = files["drop.parquet"]
    parts = plan_parts("drop.parquet", len(data), pq.ParquetFile(io.BytesIO(data)).metadata, part_bytes=1)
    scoring = FileScoring(model=lambda: bundle, sink=LocalFileSink(tmp_path), options=SMALL_CHUNKS)
    source = FileSource(key="drops/drop.parquet")
    merged = scoring.complete_parts([scoring.score_file(io.BytesIO(data), source, part=p) for p in parts])
    fired = scores_of(tmp_path).explode("rules").dropna(subset=["rules"])

    for summary in merged.alerts:
        mine = fired[(fired["device_id"] == summary.device_id) & (fired["rules"] == summary.rule_id)]
        assert summary.rows == len(mine)
        assert [w.row for w in summary.worst_rows] == mine.sort_values(
            ["score", "row"], ascending=[False, True]
        ).head(5)["row"].tolist()


# -------------------------------------------------------------------------- outputs and sink


def test_replaying_a_file_overwrites_its_own_outputs(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    first = run(bundle, files["drop.csv"], "drop.csv", tmp_path)
    second = run(bundle, files["drop.csv"], "drop.csv", tmp_path)

    assert first.outputs == second.outputs
    assert len(scores_of(tmp_path)) == first.rows_scored


def test_extra_columns_can_be_kept_in_the_scores(
    bundle: ModelBundle, files: dict[str, bytes], frame: pd.DataFrame, tmp_path: Path
) -> None:
    options = FileScoringOptions(keep_columns=("seq", "absent"))
    run(bundle, files["drop.parquet"], "drop.parquet", tmp_path, options=options)
    scores = scores_of(tmp_path)

    assert scores["seq"].tolist() == frame["seq"].astype(str).tolist()
    assert scores["absent"].isna().all()


class _BrokenSink(LocalFileSink):
    def write_scores(self, run: FileRun, scores: pa.Table) -> None:
        super().write_scores(run, scores)
        raise PortError("disk full")


def test_a_sink_failure_is_raised_for_retry_and_publishes_nothing(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    with pytest.raises(PortError, match="disk full"):
        run(bundle, files["drop.csv"], "drop.csv", tmp_path, sink=_BrokenSink(tmp_path))

    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


class _SinkFailingAt(LocalFileSink):
    """Fails its ``fail_at``-th scores write; counts every scores write."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root)
        self.fail_at, self.writes = fail_at, 0

    def write_scores(self, run: FileRun, scores: pa.Table) -> None:
        self.writes += 1
        super().write_scores(run, scores)
        if self.writes == self.fail_at:
            raise PortError("disk full")


def test_a_sink_failure_on_a_later_chunk_stops_the_writes_and_is_raised_for_retry(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    # Given a sink that fails its third write, the outputs written on their own thread
    sink = _SinkFailingAt(tmp_path, fail_at=3)
    assert SMALL_CHUNKS.read_ahead > 0

    with pytest.raises(PortError, match="disk full"):
        run(bundle, files["drop.csv"], "drop.csv", tmp_path, sink=sink)

    # Then no chunk wrote after the failed one, and nothing was published
    assert sink.writes == 3
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_sink_failure_before_the_file_turns_out_corrupt_is_raised_not_quarantined(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    # Given a gzip cut short after a chunk and a half, and a sink that fails its first write
    text = gzip.decompress(files["drop.csv.gz"])[: SMALL_CHUNKS.chunk_bytes * 3 // 2]
    cut = gzip.compress(text)[:-8]  # (no trailer: the stream ends early)
    sink = _SinkFailingAt(tmp_path, fail_at=1)

    # When the file is scored, the reader failing after the sink did
    with pytest.raises(PortError, match="disk full"):
        run(bundle, cut, "drop.csv.gz", tmp_path, sink=sink)

    # Then the sink's error is what the caller sees (retried, not a file quarantined as corrupt)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_readers_never_hold_more_than_a_chunk(bundle: ModelBundle, files: dict[str, bytes]) -> None:
    def sizes(chunks: Iterator[RawChunk]) -> list[int]:
        return [c.batch.nbytes for c in chunks]

    for key in ("drop.csv", "drop.jsonl", "drop.csv.gz"):
        chunks = sizes(read_chunks(io.BytesIO(files[key]), key, bundle.spec, chunk_bytes=8192))
        assert len(chunks) > 10 and max(chunks) < 4 * 8192, key


def test_json_lines_byte_range_parts_merge_to_the_whole_file(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    data = files["drop.jsonl"]
    parts = number_parts(
        io.BytesIO(data), "drop.jsonl", plan_parts("drop.jsonl", len(data), part_bytes=30_000)
    )
    scoring = FileScoring(model=lambda: bundle, sink=LocalFileSink(tmp_path), options=SMALL_CHUNKS)
    source = FileSource(key="drops/drop.jsonl")

    merged = scoring.complete_parts([scoring.score_file(io.BytesIO(data), source, part=p) for p in parts])

    assert len(parts) > 5 and merged.status == "scored"
    assert scores_of(tmp_path)["row"].tolist() == list(range(merged.rows_in))


def test_gzip_is_one_part_and_cannot_be_entered_mid_stream(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    data = files["drop.csv.gz"]
    assert plan_parts("drop.csv.gz", len(data), part_bytes=1_000) == [FilePart(index=0, count=1)]

    manifest = run(
        bundle, data, "drop.csv.gz", tmp_path, part=FilePart(index=1, count=2, start=500, end=1_000)
    )

    assert manifest.status == "failed" and "cannot be read from a byte offset" in (manifest.error or "")


def test_identifiers_may_be_integers_dictionaries_or_padded(
    bundle: ModelBundle, frame: pd.DataFrame, tmp_path: Path
) -> None:
    numbered = frame.assign(device_id=frame["device_id"].str.len() * 1000 + frame.index % 4)
    padded = frame.assign(device_id="  " + frame["device_id"] + " ", mode=frame["mode"].astype("category"))
    for name, table in (("numbered", numbered), ("padded", padded)):
        data = io.BytesIO()
        table.to_parquet(data, index=False)
        manifest = run(bundle, data.getvalue(), f"{name}.parquet", tmp_path / name)
        assert manifest.rows_scored == len(frame), name
    assert set(scores_of(tmp_path / "padded")["device_id"]) == set(frame["device_id"])
    assert scores_of(tmp_path / "padded")["mode"].tolist() == frame["mode"].tolist()
    assert scores_of(tmp_path / "numbered")["device_id"].iloc[0] == str(numbered["device_id"].iloc[0])


def test_a_header_only_file_scores_nothing_and_succeeds(bundle: ModelBundle, tmp_path: Path) -> None:
    header = ",".join(["device_id", "timestamp", *SENSORS]) + "\n"
    manifest = run(bundle, header.encode(), "empty-day.csv", tmp_path)

    assert manifest.status == "scored" and manifest.rows_in == 0 and manifest.outputs == []


def test_reading_ahead_does_not_change_the_results(
    bundle: ModelBundle, files: dict[str, bytes], tmp_path: Path
) -> None:
    ahead = run(bundle, files["drop.csv"], "drop.csv", tmp_path / "ahead")
    inline = run(
        bundle,
        files["drop.csv"],
        "drop.csv",
        tmp_path / "inline",
        options=SMALL_CHUNKS.model_copy(update={"read_ahead": 0}),
    )

    assert ahead.alerts == inline.alerts
    pd.testing.assert_frame_equal(scores_of(tmp_path / "ahead"), scores_of(tmp_path / "inline"))


@pytest.mark.parametrize("read_ahead", [1, 0])
def test_drift_summaries_of_a_chunked_file_equal_score_tables_own(
    bundle: ModelBundle, files: dict[str, bytes], read_ahead: int, tmp_path: Path
) -> None:
    from zaindari.drift import WindowSummary, baseline_of

    # Given a CSV of many small chunks with padded device ids (codes that trim to one name) and
    # rows that fail validation (so a chunk's table is not all of its rows)
    lines = lines_of(files["drop.csv"])
    for r in range(1, len(lines), 7):
        lines[r] = "  " + lines[r]
    for r in (10, 200, 333):
        lines[r] = lines[r].replace("Z,", ",", 1)  # a naive timestamp: quarantined
    data = "".join(lines).encode()
    options = SMALL_CHUNKS.model_copy(update={"read_ahead": read_ahead})
    kept: list[WindowSummary] = []

    class Kept:
        def write(self, summaries: Any, *, source: str, name: str) -> list[str]:
            kept.extend(summaries)
            return []

        def read(self, model: str, start: datetime, end: datetime) -> list[WindowSummary]:
            return []

    # When the file is scored with its summaries kept (counted beside score_table, on a thread)
    scoring = FileScoring(
        model=lambda: bundle, sink=LocalFileSink(tmp_path), options=options, summaries=Kept()
    )
    manifest = scoring.score_file(io.BytesIO(data), FileSource(key="drops/padded.csv"))

    # Then they are score_table's own summaries of the same chunks, merged per window
    assert manifest.rows_quarantined == 3 and manifest.chunks >= 20
    assert baseline_of(bundle) is not None
    expected: dict[int, WindowSummary] = {}
    states: dict[str, Any] = {}
    for chunk in read_chunks(
        io.BytesIO(data), detect_format("x.csv"), bundle.spec, chunk_bytes=options.chunk_bytes
    ):
        result = score_table(bundle, validate_chunk(chunk, bundle.spec).table, states)
        states.update(result.states)
        for summary in result.summaries:
            known = expected.get(summary.start)
            expected[summary.start] = summary if known is None else known.merge(summary)
    assert [s.to_dict() for s in kept] == [expected[k].to_dict() for k in sorted(expected)]


def test_windows_line_ends_keep_row_numbers(
    bundle: ModelBundle, files: dict[str, bytes], frame: pd.DataFrame, tmp_path: Path
) -> None:
    data = files["drop.csv"].replace(b"\n", b"\r\n")
    lines = data.split(b"\r\n")
    lines[5] = b""  # a blank line, then a short one
    lines[9] = b"plant-1-press-101,press-101"
    manifest = run(bundle, b"\r\n".join(lines), "windows.csv", tmp_path)

    assert_accounted(manifest, tmp_path)
    assert manifest.blank_lines == 1 and manifest.rows_in == len(frame) - 1
    assert sorted(quarantined(tmp_path)) == [8]
    assert scores_of(tmp_path)["row"].tolist() == [r for r in range(len(frame)) if r not in (4, 8)]


def test_scores_are_partitioned_by_the_reading_date(
    bundle: ModelBundle, frame: pd.DataFrame, tmp_path: Path
) -> None:
    # one device's clock is a day ahead: every chunk holds two dates
    ahead = frame["device_id"] == "plant-1-press-101"
    shifted = pd.to_datetime(frame["timestamp"], utc=True) + pd.Timedelta(days=1)
    table = frame.assign(
        timestamp=frame["timestamp"].where(~ahead, shifted.dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    )
    sink = LocalFileSink(tmp_path, max_open_writers=1)

    manifest = run(bundle, table.to_csv(index=False).encode(), "two-days.csv", tmp_path, sink=sink)

    assert_accounted(manifest, tmp_path)
    assert any(o.endswith("-1.parquet") for o in manifest.outputs)  # a date's file was reopened
    for day in ("2024-01-01", "2024-01-02"):
        part = pd.concat(
            pq.read_table(f).to_pandas() for f in (tmp_path / "scores" / f"date={day}").glob("*")
        )
        assert set(part["timestamp"].dt.strftime("%Y-%m-%d")) == {day}
        assert (part["device_id"] == "plant-1-press-101").all() == (day == "2024-01-02")


NESTED_KEEP = FileScoringOptions(keep_columns=("tags", "meta", "attrs", "blob"))


def nested_drop(frame: pd.DataFrame, n: int = 40) -> bytes:
    """A Parquet drop whose extra columns are a list, a struct, a map and bytes, and whose optional
    identifiers ``site`` (a struct at row 3) and ``line`` (a list at row 7) cannot be text."""
    table = pa.Table.from_pandas(frame.head(n).drop(columns=["site", "line"]), preserve_index=False)
    columns = {
        "tags": pa.array([[i, i + 1] if i % 4 else None for i in range(n)], pa.list_(pa.int64())),
        "meta": pa.array([{"a": i, "b": f"x{i}"} for i in range(n)]),
        "attrs": pa.array(
            [[("k", float("nan") if i == 1 else 0.5)] for i in range(n)], pa.map_(pa.string(), pa.float64())
        ),
        "blob": pa.array([b"\xff\xfe" if i == 5 else f"b{i}".encode() for i in range(n)], pa.binary()),
        "site": pa.array([{"name": "north"} if i == 3 else None for i in range(n)]),
        "line": pa.array([["line-1", "line-2"] if i == 7 else None for i in range(n)], pa.list_(pa.string())),
    }
    for name, values in columns.items():
        table = table.append_column(name, values)
    data = io.BytesIO()
    pq.write_table(table, data)
    return data.getvalue()


def test_nested_and_binary_columns_are_kept_as_json_or_quarantined_never_dropped(
    bundle: ModelBundle, frame: pd.DataFrame, tmp_path: Path
) -> None:
    manifest = run(bundle, nested_drop(frame), "nested.parquet", tmp_path, options=NESTED_KEEP)

    # every row is scored or quarantined with the column and the reason
    assert_accounted(manifest, tmp_path)
    bad = quarantined(tmp_path)
    assert sorted(bad) == [3, 5, 7]
    assert bad[3]["reason"] == "site: must be a string, got {'name': 'north'}"
    assert bad[5]["reason"] == "blob: holds bytes that are not UTF-8 text: b'\\xff\\xfe'"
    assert bad[7]["reason"] == "line: must be a string, got ['line-1', 'line-2']"
    assert bad[3]["record"]["site"] == {"name": "north"}  # the raw row, whole
    # the kept columns carry their values as JSON text (nulls stay null)
    scores = scores_of(tmp_path).set_index("row")
    assert scores.loc[2, "tags"] == "[2,3]" and scores.loc[4, "tags"] is None
    assert scores.loc[2, "meta"] == '{"a":2,"b":"x2"}'
    assert scores.loc[1, "attrs"] == '[["k","nan"]]' and scores.loc[2, "attrs"] == '[["k",0.5]]'
    assert scores.loc[2, "blob"] == "b2"
    assert [json.loads(t)["a"] for t in scores["meta"]] == scores.index.tolist()


def test_kept_columns_may_not_shadow_the_scores_columns() -> None:
    with pytest.raises(ValueError, match=r"\['date', 'score'\] would be a second column"):
        FileScoringOptions(keep_columns=("score", "date", "seq"))
    with pytest.raises(ValueError, match="named twice"):
        FileScoringOptions(keep_columns=("seq", "seq"))
    # ignoring case, as Spark resolves names and the Glue catalog (Athena) stores them
    with pytest.raises(ValueError, match=r"\['DATE', 'Score'\] would be a second column .* ignoring case"):
        FileScoringOptions(keep_columns=("Score", "DATE", "seq"))
    with pytest.raises(ValueError, match=r"named twice .*: \['Payload', 'payload'\]"):
        FileScoringOptions(keep_columns=("payload", "Payload"))
    with pytest.raises(ValueError, match="'__zaindari_' are reserved"):
        FileScoringOptions(keep_columns=("__Zaindari_kind",))
    with pytest.raises(ValueError, match="needs a name"):
        FileScoringOptions(keep_columns=(" ",))
    # plausible telemetry names are kept: Spark's own columns carry the reserved prefix
    kept = ("payload", "kind", "_row", "x.y")
    assert FileScoringOptions(keep_columns=kept).keep_columns == kept


def test_kept_columns_from_a_comma_separated_setting() -> None:
    # ZAINDARI_FILE_KEEP_COLUMNS and the Glue job's --keep_columns: blanks around names dropped
    assert FileScoringOptions.keeping(" seq , batch.id,operator ").keep_columns == (
        "seq",
        "batch.id",
        "operator",
    )
    assert FileScoringOptions.keeping("").keep_columns == FileScoringOptions.keeping("  ").keep_columns == ()
    assert FileScoringOptions.keeping("seq", threads=3).threads == 3
    # a refused list names where it came from and why, in one line
    with pytest.raises(ValueError, match=r"^ZAINDARI_FILE_KEEP_COLUMNS 'seq,Score': \['Score'\] would be"):
        FileScoringOptions.keeping("seq,Score", source="ZAINDARI_FILE_KEEP_COLUMNS")
    with pytest.raises(ValueError, match=r"^--keep_columns 'seq,,mode': a kept column needs a name"):
        FileScoringOptions.keeping("seq,,mode", source="--keep_columns")
