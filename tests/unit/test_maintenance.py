"""The maintenance log: known fault windows per device, read from JSON Lines with clear errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from zaindari.maintenance import MaintenanceError, MaintenanceLog, MaintenanceWindow, read_maintenance_log

T0 = datetime(2024, 1, 2, 6, 0, tzinfo=UTC)


def test_a_window_covers_its_device_from_start_until_end_exclusive_or_open() -> None:
    log = MaintenanceLog.from_jsonl(
        '{"device_id": "press-1", "start": "2024-01-02T06:00:00Z", "end": "2024-01-02T18:00:00Z"}\n'
        "\n"
        '{"device_id": "spindle-2", "start": "2024-01-02T08:00:00+02:00", "kind": "cooling"}\n'
    )
    press, spindle = log.windows
    assert press.kind == "fault" and spindle.kind == "cooling" and spindle.end is None
    assert spindle.start == datetime(2024, 1, 2, 6, 0, tzinfo=UTC)  # normalised to UTC
    assert log.covers("press-1", T0) and log.covers("press-1", T0 + timedelta(hours=11, minutes=59))
    assert not log.covers("press-1", T0 + timedelta(hours=12))  # end is exclusive
    assert not log.covers("press-1", T0 - timedelta(seconds=1))
    assert log.covers("spindle-2", T0 + timedelta(days=300))  # still open
    assert not log.covers("press-9", T0)
    assert MaintenanceLog.from_jsonl(log.to_jsonl()) == log


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not JSON"),
        ("[1, 2]", "line 2: not a JSON object"),
        ('{"device_id": "p", "start": "2024-01-02T06:00:00"}', "line 2: start: give a time zone"),
        (
            '{"device_id": "p", "start": "2024-01-02T06:00:00Z", "end": "2024-01-02T05:00:00Z"}',
            "line 2: window: end 2024-01-02T05:00:00+00:00 is not after start 2024-01-02T06:00:00+00:00",
        ),
        ('{"start": "2024-01-02T06:00:00Z"}', "device_id: Field required"),
        ('{"device_id": "p", "start": "2024-01-02T06:00:00Z", "shift": 2}', "shift: Extra inputs"),
    ],
)
def test_a_bad_line_is_refused_naming_the_file_line_and_field(line: str, message: str) -> None:
    good = '{"device_id": "p", "start": "2024-01-02T06:00:00Z"}'
    with pytest.raises(MaintenanceError, match=r"orders\.jsonl") as caught:
        MaintenanceLog.from_jsonl(f"{good}\n{line}\n", source="orders.jsonl")
    assert message in str(caught.value)


def test_logs_of_several_files_merge_and_an_empty_log_is_false() -> None:
    one = MaintenanceLog((MaintenanceWindow(device_id="a", start=T0),))
    two = MaintenanceLog((MaintenanceWindow(device_id="b", start=T0),))
    merged = MaintenanceLog.merge([one, MaintenanceLog(), two])
    assert [w.device_id for w in merged.windows] == ["a", "b"]
    assert not MaintenanceLog() and merged


def test_one_reader_merges_the_files_in_order_and_names_the_file_it_cannot_take(tmp_path: Path) -> None:
    files = {
        "a.jsonl": b'{"device_id": "a", "start": "2024-01-02T06:00:00Z"}\n',
        "b.jsonl": b'\n{"device_id": "b", "start": "2024-01-02T06:00:00Z", "kind": "bearing"}\n',
    }
    log = read_maintenance_log(["b.jsonl", "a.jsonl"], files.__getitem__)
    assert [(w.device_id, w.kind) for w in log.windows] == [("b", "bearing"), ("a", "fault")]
    assert read_maintenance_log([], files.__getitem__) == MaintenanceLog()
    # a file that is not UTF-8 text is refused by name; the reader's own errors pass through
    files["latin.jsonl"] = '{"device_id": "pr\u00e9", "start": "2024-01-02T06:00:00Z"}\n'.encode("latin-1")
    with pytest.raises(MaintenanceError, match=r"^latin\.jsonl: not UTF-8 text"):
        read_maintenance_log(["a.jsonl", "latin.jsonl"], files.__getitem__)
    with pytest.raises(FileNotFoundError):
        read_maintenance_log([str(tmp_path / "none.jsonl")], lambda name: Path(name).read_bytes())
