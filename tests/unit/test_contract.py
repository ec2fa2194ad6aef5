"""The telemetry contract: which raw payloads become readings, and how bad records are rejected.

Every expected value below is written out by hand (epoch milliseconds, UTC instants, dedup keys),
so a test fails when the contract changes, not only when the code disagrees with itself.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile import hostile_bodies, hostile_reading
from zaindari.contract import (
    ContractLimits,
    ParsedPayload,
    PayloadTooLarge,
    Reading,
    Rejection,
    parse_payload,
    parse_payloads,
    parse_reading,
    parse_readings,
)
from zaindari.jsonable import decode_json

# 2024-05-01T12:00:00Z: 2024-01-01 is 1_704_067_200 s; + 121 days (Jan..Apr) * 86_400 s + 12 h.
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
NOW_EPOCH_MS = 1_714_564_800_000
_DROP = object()


def record(**overrides: Any) -> dict[str, Any]:
    """A valid raw reading; pass ``field=_DROP`` to leave a field out."""
    base: dict[str, Any] = {
        "device_id": "pump-07",
        "timestamp": "2024-05-01T12:00:00Z",
        "sensors": {"temperature": 61.5, "pressure": 4.25},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


def accepted(obj: Any, **kwargs: Any) -> Reading:
    result = parse_reading(obj, **kwargs)
    assert isinstance(result, Reading), f"expected a reading, got {result!r}"
    return result


def rejected(obj: Any, **kwargs: Any) -> Rejection:
    result = parse_reading(obj, **kwargs)
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    assert result.stage == "contract"
    assert result.record == obj, "the raw record must be kept for replay"
    return result


def fields(rejection: Rejection) -> list[str]:
    return [e["field"] for e in rejection.errors]


def messages(rejection: Rejection) -> str:
    return " | ".join(e["message"] for e in rejection.errors)


# ----------------------------------------------------------------------------- valid readings


def test_valid_reading_keeps_every_field_and_normalises_the_timestamp_to_utc() -> None:
    # Given a reading with every optional field
    raw = record(asset="P-07", line="L2", site="bilbao", mode="run", seq=42)

    # When it is parsed
    reading = accepted(raw)

    # Then each field is kept and the sensors are floats
    assert reading.device_id == "pump-07"
    assert (reading.asset, reading.line, reading.site, reading.mode, reading.seq) == (
        "P-07",
        "L2",
        "bilbao",
        "run",
        42,
    )
    assert reading.timestamp == NOW
    assert reading.timestamp.utcoffset() == timedelta(0)
    assert reading.sensors == {"temperature": 61.5, "pressure": 4.25}
    assert all(type(v) is float for v in reading.sensors.values())


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        pytest.param("2024-05-01T12:00:00Z", NOW, id="iso-with-Z"),
        pytest.param("2024-05-01T14:00:00+02:00", NOW, id="iso-plus-two-hours"),
        pytest.param("2024-05-01T07:30:00-04:30", NOW, id="iso-negative-half-hour-offset"),
        pytest.param("2024-05-01T12:00:00.250Z", NOW + timedelta(milliseconds=250), id="iso-fraction"),
        pytest.param(NOW_EPOCH_MS, NOW, id="epoch-ms-int"),
        pytest.param(1_714_564_800_250.0, NOW + timedelta(milliseconds=250), id="epoch-ms-float"),
        pytest.param(
            datetime(2024, 5, 1, 14, 0, tzinfo=datetime.fromisoformat("2024-01-01T00:00+02:00").tzinfo),
            NOW,
            id="aware-datetime-object",
        ),
    ],
)
def test_timestamp_in_any_accepted_format_becomes_the_same_utc_instant(
    timestamp: Any, expected: datetime
) -> None:
    reading = accepted(record(timestamp=timestamp))

    assert reading.timestamp == expected
    assert reading.timestamp.tzinfo is UTC


def test_integer_sensor_values_are_accepted_as_floats() -> None:
    reading = accepted(record(sensors={"speed": 1500, "torque": -3}))

    assert reading.sensors == {"speed": 1500.0, "torque": -3.0}
    assert type(reading.sensors["speed"]) is float


def test_identifiers_are_stripped_of_surrounding_whitespace() -> None:
    reading = accepted(record(device_id="  pump-07 ", mode=" run"))

    assert reading.device_id == "pump-07"
    assert reading.mode == "run"


def test_timestamp_exactly_at_2000_is_accepted() -> None:
    reading = accepted(record(timestamp="2000-01-01T00:00:00Z"))

    assert reading.timestamp == datetime(2000, 1, 1, tzinfo=UTC)


# ----------------------------------------------------------------------------- sensor values


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(float("nan"), "not finite", id="nan"),
        pytest.param(float("inf"), "not finite", id="infinity"),
        pytest.param(float("-inf"), "not finite", id="minus-infinity"),
        pytest.param("12.5", "not a number", id="numeric-string"),
        pytest.param(True, "not a number", id="bool-true"),
        pytest.param(False, "not a number", id="bool-false"),
        pytest.param(None, "not a number", id="null"),
        pytest.param({"value": 12.5}, "not a number", id="nested-object"),
        pytest.param([12.5], "not a number", id="list"),
    ],
)
def test_bad_sensor_value_is_rejected_naming_the_sensor(value: Any, problem: str) -> None:
    # Given a reading whose temperature is not a finite number
    raw = record(sensors={"pressure": 4.25, "temperature": value})

    # When it is parsed
    rejection = rejected(raw)

    # Then the rejection points at the sensors and names the offending one and why
    assert len(rejection.errors) == 1
    assert fields(rejection)[0].split(".")[0] == "sensors"
    assert "temperature" in messages(rejection) + fields(rejection)[0]
    assert problem in messages(rejection)
    assert problem in rejection.reason


@pytest.mark.parametrize("value", [float("nan"), "12.5", None], ids=["nan", "string", "null"])
def test_bad_sensor_value_is_named_by_its_dotted_path(value: Any) -> None:
    # The Rejection docstring promises dotted paths ("sensors.temperature"), and the features
    # stage already reports "sensors.<name>": the contract stage should name the sensor the same way.
    rejection = rejected(record(sensors={"pressure": 4.25, "temperature": value}))

    assert fields(rejection) == ["sensors.temperature"]


def test_every_bad_sensor_of_a_reading_is_named_not_only_the_first() -> None:
    # parse_reading promises "a Rejection naming each failing field"
    rejection = rejected(record(sensors={"temperature": float("nan"), "pressure": "high", "speed": 1.0}))

    named = " ".join(fields(rejection)) + " " + messages(rejection)
    assert "temperature" in named
    assert "pressure" in named
    assert "speed" not in named


@pytest.mark.parametrize(
    ("literal", "shown"),
    [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf")],
)
def test_non_finite_json_literals_in_a_payload_are_rejected(literal: str, shown: str) -> None:
    # Given JSON text with a literal Python's json module accepts but the contract must not
    text = (
        '{"device_id": "pump-07", "timestamp": "2024-05-01T12:00:00Z", '
        f'"sensors": {{"temperature": {literal}, "pressure": 4.25}}}}'
    )

    # When the payload is parsed
    parsed = parse_payload(text)

    # Then nothing is scored and the one rejection names the sensor
    assert parsed.readings == []
    assert len(parsed.rejections) == 1
    rejection = parsed.rejections[0]
    assert rejection.index == 0
    assert fields(rejection)[0].startswith("sensors")
    assert "temperature" in rejection.reason
    assert f"value {shown} is not finite" in rejection.reason
    assert rejection.record["device_id"] == "pump-07"


def test_sensor_integer_too_large_for_a_float_is_rejected_not_raised() -> None:
    # "Nothing here raises on bad records": an integer beyond float range must become a rejection
    rejection = rejected(record(sensors={"temperature": 10**400}))

    assert fields(rejection)[0].startswith("sensors")


def test_payload_with_a_huge_integer_sensor_value_yields_a_rejection() -> None:
    text = (
        '{"device_id": "pump-07", "timestamp": "2024-05-01T12:00:00Z", '
        '"sensors": {"temperature": 1' + "0" * 400 + "}}"
    )

    parsed = parse_payload(text)

    assert parsed.readings == []
    assert [r.index for r in parsed.rejections] == [0]


def test_empty_sensors_are_rejected() -> None:
    rejection = rejected(record(sensors={}))

    assert fields(rejection) == ["sensors"]
    assert "at least one value" in messages(rejection)


@pytest.mark.parametrize("sensors", [[61.5], "temperature=61.5", 61.5], ids=["list", "string", "number"])
def test_sensors_that_are_not_an_object_are_rejected(sensors: Any) -> None:
    rejection = rejected(record(sensors=sensors))

    assert fields(rejection) == ["sensors"]
    assert "must be an object" in messages(rejection)


def test_missing_sensors_field_is_rejected() -> None:
    rejection = rejected(record(sensors=_DROP))

    assert fields(rejection) == ["sensors"]
    assert "required" in messages(rejection).lower()


def test_more_sensors_than_the_limit_are_rejected_with_count_and_limit() -> None:
    # Given a limit of 2 sensors per reading
    limits = ContractLimits(max_sensors=2)

    # When 2 and then 3 sensors arrive
    ok = accepted(record(sensors={"a": 1.0, "b": 2.0}), limits=limits)
    rejection = rejected(record(sensors={"a": 1.0, "b": 2.0, "c": 3.0}), limits=limits)

    # Then 2 pass and 3 are rejected with both numbers in the message
    assert ok.sensors == {"a": 1.0, "b": 2.0}
    assert fields(rejection) == ["sensors"]
    assert messages(rejection) == "3 sensors, above the limit of 2"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("temp erature", id="inner-space"),
        pytest.param("temperatura_º", id="non-ascii"),
        pytest.param("t" * 129, id="129-characters"),
        pytest.param("temp;drop", id="semicolon"),
        pytest.param(7, id="not-a-string"),
    ],
)
def test_bad_sensor_name_is_rejected(name: Any) -> None:
    rejection = rejected(record(sensors={name: 1.0}))

    assert len(rejection.errors) == 1
    assert fields(rejection)[0].startswith("sensors")
    if isinstance(name, str) and name:
        assert name[:32] in fields(rejection)[0] + messages(rejection)


@pytest.mark.parametrize(
    "name",
    ["temperature\n", " temperature", "temperature ", "\ttemperature"],
    ids=["trailing-newline", "leading-space", "trailing-space", "leading-tab"],
)
def test_whitespace_padded_sensor_name_is_rejected_not_renamed(name: str) -> None:
    # Whitespace is outside the sensor-name alphabet [A-Za-z0-9_.:-/]; stripping it would turn
    # " temperature" into "temperature", silently another sensor.
    result = parse_reading(record(sensors={name: 1.0}))

    assert isinstance(result, Rejection), f"accepted as {getattr(result, 'sensors', result)!r}"
    assert fields(result)[0].startswith("sensors")


def test_two_names_that_differ_only_by_whitespace_never_lose_a_value_silently() -> None:
    # Given "temperature" and "temperature " (trailing space) in one reading
    result = parse_reading(record(sensors={"temperature": 20.0, "temperature ": 99.0}))

    # Then the reading is refused, rather than one of the two values overwriting the other
    assert isinstance(result, Rejection), f"accepted as {getattr(result, 'sensors', result)!r}"


@pytest.mark.parametrize(
    "name", ["temperature", "T", "bearing.de:vib-x/rms", "a_1", "t" * 128], ids=lambda n: n[:20]
)
def test_good_sensor_names_are_accepted(name: str) -> None:
    assert accepted(record(sensors={name: 1.0})).sensors == {name: 1.0}


# ----------------------------------------------------------------------------- identity fields


@pytest.mark.parametrize(
    ("overrides", "field_name", "fragment"),
    [
        pytest.param({"device_id": _DROP}, "device_id", "Field required", id="missing-device"),
        pytest.param({"device_id": ""}, "device_id", "at least 1 character", id="empty-device"),
        pytest.param({"device_id": "   "}, "device_id", "at least 1 character", id="blank-device"),
        pytest.param({"device_id": 7}, "device_id", "valid string", id="numeric-device"),
        pytest.param({"device_id": "pump\x0007"}, "device_id", "printable", id="nul-in-device"),
        pytest.param({"device_id": "p" * 129}, "device_id", "at most 128", id="long-device"),
        pytest.param({"mode": "run\n\x1b[31m"}, "mode", "printable", id="escape-in-mode"),
        # U+001C-U+001F are control characters (str.strip would drop them: they are refused instead)
        pytest.param({"device_id": "pump-07\x1f"}, "device_id", "printable", id="unit-separator-at-end"),
        pytest.param({"site": "bil\u2028bao"}, "site", "printable", id="inner-line-separator"),
        pytest.param({"seq": -1}, "seq", "greater than or equal to 0", id="negative-seq"),
        pytest.param({"seq": 2**63}, "seq", "less than or equal to", id="seq-above-int64"),
        pytest.param({"temperature": 61.5}, "temperature", "Extra inputs", id="unknown-top-level"),
        pytest.param({"Device_Id": "x"}, "Device_Id", "Extra inputs", id="misspelt-field"),
    ],
)
def test_bad_identity_field_is_rejected_naming_the_field(
    overrides: dict[str, Any], field_name: str, fragment: str
) -> None:
    rejection = rejected(record(**overrides))

    assert fields(rejection) == [field_name]
    assert fragment in messages(rejection)
    assert rejection.reason.startswith(f"{field_name}: ")


@pytest.mark.parametrize("seq", [True, False], ids=["true", "false"])
def test_boolean_seq_is_rejected(seq: bool) -> None:
    # Booleans are refused as sensor values and as timestamps; a sequence number of `true` is a
    # producer bug too, and accepting it as 1 would collide dedup keys.
    result = parse_reading(record(seq=seq))

    assert isinstance(result, Rejection), f"accepted with seq={getattr(result, 'seq', None)!r}"
    assert fields(result) == ["seq"]


def test_each_failing_field_of_one_reading_is_named() -> None:
    # Given a reading wrong in three independent ways
    raw = record(device_id=_DROP, timestamp="2024-05-01T12:00:00", seq=-5)

    # When parsed
    rejection = rejected(raw)

    # Then all three fields are named, in the reason too
    assert sorted(fields(rejection)) == ["device_id", "seq", "timestamp"]
    for name in ("device_id", "seq", "timestamp"):
        assert f"{name}: " in rejection.reason


def test_record_that_is_not_an_object_is_rejected_with_its_type() -> None:
    rejection = parse_reading([1, 2, 3], index=4)

    assert isinstance(rejection, Rejection)
    assert rejection.index == 4
    assert rejection.reason == "reading must be a JSON object, got list"
    assert rejection.record == [1, 2, 3]


# ----------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    "timestamp",
    [
        pytest.param("2024-05-01T12:00:00", id="iso-naive"),
        pytest.param("2024-05-01", id="date-only"),
        pytest.param(datetime(2024, 5, 1, 12, 0), id="naive-datetime-object"),
    ],
)
def test_naive_timestamp_is_rejected_naming_the_field(timestamp: Any) -> None:
    rejection = rejected(record(timestamp=timestamp))

    assert fields(rejection) == ["timestamp"]
    assert messages(rejection) == "timestamp must carry a timezone (for example 'Z' or '+01:00')"


@pytest.mark.parametrize(
    ("timestamp", "fragment"),
    [
        pytest.param("yesterday", "'yesterday' is not ISO 8601", id="words"),
        pytest.param("", "is not ISO 8601", id="empty-string"),
        pytest.param(True, "not a boolean", id="boolean"),
        pytest.param(None, "ISO 8601 string or epoch milliseconds", id="null"),
        pytest.param([2024, 5, 1], "ISO 8601 string or epoch milliseconds", id="list"),
        pytest.param(float("nan"), "finite number of epoch milliseconds", id="nan-epoch"),
        pytest.param(float("inf"), "finite number of epoch milliseconds", id="infinite-epoch"),
        pytest.param(1e300, "out of range for epoch milliseconds", id="epoch-beyond-year-9999"),
    ],
)
def test_unreadable_timestamp_is_rejected_naming_the_field(timestamp: Any, fragment: str) -> None:
    rejection = rejected(record(timestamp=timestamp))

    assert fields(rejection) == ["timestamp"]
    assert fragment in messages(rejection)


def test_timestamp_integer_too_large_for_a_float_is_rejected_not_raised() -> None:
    rejection = rejected(record(timestamp=10**400))

    assert fields(rejection) == ["timestamp"]


@pytest.mark.parametrize(
    ("timestamp", "shown"),
    [
        # 1_714_564_800 is 2024-05-01T12:00:00Z in *seconds*; read as ms it is 1970-01-20T20:16:04.8
        pytest.param(1_714_564_800, "1970-01-20T20:16:04.800000+00:00", id="epoch-seconds-as-ms"),
        pytest.param("1999-12-31T23:59:59Z", "1999-12-31T23:59:59+00:00", id="last-second-of-1999"),
        pytest.param(0, "1970-01-01T00:00:00+00:00", id="epoch-zero"),
    ],
)
def test_timestamp_before_2000_is_rejected_as_probable_epoch_seconds(timestamp: Any, shown: str) -> None:
    rejection = rejected(record(timestamp=timestamp))

    assert fields(rejection) == ["timestamp"]
    assert messages(rejection) == (
        f"timestamp {shown} is before 2000-01-01: epoch seconds sent as milliseconds?"
    )


@pytest.mark.parametrize(
    ("ahead", "skew", "ok"),
    [
        pytest.param(timedelta(seconds=299), 300.0, True, id="299s-inside-default-300s"),
        pytest.param(timedelta(seconds=300), 300.0, True, id="exactly-300s-is-inside"),
        pytest.param(timedelta(seconds=300, milliseconds=1), 300.0, False, id="300.001s-outside"),
        pytest.param(timedelta(hours=1), 300.0, False, id="one-hour-ahead"),
        pytest.param(timedelta(days=-365), 300.0, True, id="a-year-late-is-not-future"),
        pytest.param(timedelta(seconds=59), 60.0, True, id="59s-inside-60s"),
        pytest.param(timedelta(seconds=61), 60.0, False, id="61s-outside-60s"),
        pytest.param(timedelta(0), 0.0, True, id="now-with-zero-skew"),
        pytest.param(timedelta(milliseconds=1), 0.0, False, id="1ms-ahead-with-zero-skew"),
    ],
)
def test_timestamp_ahead_of_the_receiver_clock_is_rejected_beyond_the_skew(
    ahead: timedelta, skew: float, ok: bool
) -> None:
    # Given the receiver's clock at NOW and an allowed skew
    limits = ContractLimits(max_future_skew_seconds=skew)
    raw = record(timestamp=(NOW + ahead).isoformat())

    # When a reading stamped `ahead` of it arrives
    result = parse_reading(raw, limits=limits, now=NOW)

    # Then it is accepted only within the skew
    if ok:
        assert isinstance(result, Reading)
        assert result.timestamp == NOW + ahead
    else:
        assert isinstance(result, Rejection)
        assert fields(result) == ["timestamp"]
        assert f"more than {skew:g} s ahead of the receiver's clock" in messages(result)
        assert NOW.isoformat() in messages(result)


def test_future_skew_uses_the_epoch_ms_value_too() -> None:
    result = parse_reading(record(timestamp=NOW_EPOCH_MS + 301_000), now=NOW)

    assert isinstance(result, Rejection)
    assert fields(result) == ["timestamp"]


def test_without_a_receiver_clock_a_future_timestamp_is_not_checked() -> None:
    reading = accepted(record(timestamp="2099-01-01T00:00:00Z"))

    assert reading.timestamp == datetime(2099, 1, 1, tzinfo=UTC)


# ----------------------------------------------------------------------------- payloads


def test_payload_above_the_byte_limit_raises_with_size_and_limit() -> None:
    # Given a limit of 100 bytes and a payload of 101
    limits = ContractLimits(max_payload_bytes=100)
    payload = b"[" + b" " * 99 + b"]"
    assert len(payload) == 101

    # When parsed, Then nothing is read and the error carries both sizes
    with pytest.raises(PayloadTooLarge) as caught:
        parse_payload(payload, limits=limits)

    assert caught.value.size == 101
    assert caught.value.limit == 100
    assert str(caught.value) == "payload is 101 bytes, above the limit of 100 bytes"
    assert isinstance(caught.value, ValueError)


def test_payload_exactly_at_the_byte_limit_is_parsed() -> None:
    limits = ContractLimits(max_payload_bytes=100)
    payload = "[" + " " * 98 + "]"

    parsed = parse_payload(payload, limits=limits)

    assert parsed.readings == []
    assert parsed.rejections == []


def test_payload_size_is_counted_in_utf8_bytes_not_characters() -> None:
    # "é" is 2 bytes in UTF-8: 56 characters, 110 bytes
    limits = ContractLimits(max_payload_bytes=100)
    text = '"' + "é" * 54 + '"'
    assert len(text) == 56
    assert len(text.encode()) == 110

    with pytest.raises(PayloadTooLarge) as caught:
        parse_payload(text, limits=limits)

    assert caught.value.size == 110


@pytest.mark.parametrize(
    "text",
    [
        '{"device_id": "pump-07",',
        "not json at all",
        "",
        "{'device_id': 'pump-07'}",
    ],
    ids=["truncated", "prose", "empty", "single-quotes"],
)
def test_invalid_json_is_one_rejection_that_keeps_the_text(text: str) -> None:
    parsed = parse_payload(text)

    assert parsed.readings == []
    assert parsed.indices == []
    assert len(parsed.rejections) == 1
    rejection = parsed.rejections[0]
    assert rejection.index == 0
    assert rejection.stage == "contract"
    assert rejection.reason.startswith("payload is not valid JSON: ")
    assert rejection.record == text


def test_invalid_utf8_bytes_are_rejected_with_the_text_kept() -> None:
    parsed = parse_payload(b'{"device_id": "\xff\xfe"')

    assert len(parsed.rejections) == 1
    assert parsed.rejections[0].reason.startswith("payload is not valid JSON")
    assert parsed.rejections[0].record == '{"device_id": "\ufffd\ufffd"'


def _two_readings() -> list[dict[str, Any]]:
    return [
        record(device_id="pump-01", sensors={"temperature": 60.0}),
        record(device_id="pump-02", sensors={"temperature": 70.0}),
    ]


@pytest.mark.parametrize(
    ("payload", "devices"),
    [
        pytest.param(record(), ["pump-07"], id="one-object"),
        pytest.param(_two_readings(), ["pump-01", "pump-02"], id="list"),
        pytest.param({"readings": _two_readings()}, ["pump-01", "pump-02"], id="readings-envelope"),
        pytest.param(json.dumps(_two_readings()), ["pump-01", "pump-02"], id="list-as-text"),
        pytest.param(
            json.dumps({"readings": _two_readings()}).encode(), ["pump-01", "pump-02"], id="envelope-bytes"
        ),
        pytest.param(bytearray(json.dumps(record()).encode()), ["pump-07"], id="bytearray"),
        pytest.param([], [], id="empty-list"),
    ],
)
def test_each_payload_shape_yields_its_readings_in_order(payload: Any, devices: list[str]) -> None:
    parsed = parse_payload(payload)

    assert parsed.rejections == []
    assert [r.device_id for r in parsed.readings] == devices
    assert parsed.indices == list(range(len(devices)))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(42, id="number"),
        pytest.param("42", id="number-as-text"),
        pytest.param('"hello"', id="string-as-text"),
        pytest.param("null", id="null-as-text"),
        pytest.param(None, id="none"),
        pytest.param({"readings": "pump-07"}, id="readings-not-a-list"),
    ],
)
def test_payload_that_is_not_a_reading_list_or_envelope_is_one_rejection(payload: Any) -> None:
    parsed = parse_payload(payload)

    assert parsed.readings == []
    assert len(parsed.rejections) == 1
    rejection = parsed.rejections[0]
    assert rejection.index == 0
    assert rejection.reason == (
        "payload must be a reading object, a list of readings, or {'readings': [...]} with no other key"
    )
    expected_record = json.loads(payload) if isinstance(payload, str) else payload
    assert rejection.record == expected_record


def test_an_object_with_readings_and_device_id_is_one_reading_not_an_envelope() -> None:
    # Given a reading that also carries a "readings" key
    raw = record(readings=[record()])

    # When parsed, Then it is validated as one reading, and the unknown field is named
    parsed = parse_payload(raw)

    assert parsed.readings == []
    assert len(parsed.rejections) == 1
    assert fields(parsed.rejections[0]) == ["readings"]


def test_batch_mixing_good_and_bad_keeps_order_indices_and_raw_records() -> None:
    # Given five records: good, NaN sensor, not an object, good, missing device
    records = [
        record(device_id="pump-01"),
        record(device_id="pump-02", sensors={"temperature": float("nan")}),
        "pump-03,61.5",
        record(device_id="pump-04", timestamp=NOW_EPOCH_MS),
        record(device_id=_DROP),
    ]
    text = json.dumps(records)  # NaN is written as the NaN literal

    # When the payload is parsed
    parsed = parse_payload(text.encode())

    # Then the good ones come out in order with their payload positions
    assert [r.device_id for r in parsed.readings] == ["pump-01", "pump-04"]
    assert parsed.indices == [0, 3]
    # and each bad one keeps its position, its named field and its raw record
    assert [r.index for r in parsed.rejections] == [1, 2, 4]
    nan_rejection, string_rejection, missing_rejection = parsed.rejections
    assert fields(nan_rejection)[0].startswith("sensors")
    assert nan_rejection.record["device_id"] == "pump-02"
    assert math.isnan(nan_rejection.record["sensors"]["temperature"])
    assert string_rejection.record == "pump-03,61.5"
    assert string_rejection.reason == "reading must be a JSON object, got str"
    assert fields(missing_rejection) == ["device_id"]
    assert missing_rejection.record == records[4]


def test_a_rejected_record_replays_to_a_reading_once_fixed() -> None:
    # Given a rejection from a batch
    parsed = parse_payload([record(), record(device_id="pump-09", sensors={"temperature": "61.5"})])
    rejection = parsed.rejections[0]
    assert rejection.index == 1

    # When an operator fixes the kept record and replays it (through JSON, as a DLQ would)
    replay = json.loads(json.dumps(rejection.to_dict()))["record"]
    replay["sensors"]["temperature"] = 61.5
    replayed = parse_payload(json.dumps(replay))

    # Then it is accepted
    assert replayed.rejections == []
    assert replayed.readings[0].device_id == "pump-09"
    assert replayed.readings[0].sensors == {"temperature": 61.5}


def test_rejection_to_dict_holds_index_stage_reason_errors_and_record() -> None:
    rejection = rejected(record(seq=-1), index=3)

    assert rejection.to_dict() == {
        "index": 3,
        "stage": "contract",
        "reason": "seq: Input should be greater than or equal to 0",
        "errors": [{"field": "seq", "message": "Input should be greater than or equal to 0"}],
        "record": record(seq=-1),
    }


@pytest.mark.parametrize("envelope", [False, True], ids=["list", "readings-envelope"])
def test_more_readings_than_the_batch_limit_reject_the_whole_payload(envelope: bool) -> None:
    # Given a limit of 3 readings per payload and 4 readings
    limits = ContractLimits(max_batch_readings=3)
    records = [record(seq=i) for i in range(4)]
    document: Any = {"readings": records} if envelope else records

    # When parsed
    parsed = parse_payload(json.dumps(document), limits=limits)

    # Then none is read and one rejection explains why, keeping the document
    assert parsed.readings == []
    assert len(parsed.rejections) == 1
    assert parsed.rejections[0].index == 0
    assert parsed.rejections[0].reason == "4 readings in one payload, above the limit of 3"
    assert parsed.rejections[0].record == document


def test_readings_at_the_batch_limit_are_all_read() -> None:
    limits = ContractLimits(max_batch_readings=3)

    parsed = parse_payload([record(seq=i) for i in range(3)], limits=limits)

    assert [r.seq for r in parsed.readings] == [0, 1, 2]
    assert parsed.rejections == []


def test_payload_limits_and_clock_reach_every_reading() -> None:
    limits = ContractLimits(max_sensors=1, max_future_skew_seconds=10)
    records = [
        record(sensors={"a": 1.0}),
        record(sensors={"a": 1.0, "b": 2.0}),
        record(sensors={"a": 1.0}, timestamp=(NOW + timedelta(seconds=11)).isoformat()),
    ]

    parsed = parse_payload(records, limits=limits, now=NOW)

    assert parsed.indices == [0]
    assert [(r.index, fields(r)) for r in parsed.rejections] == [(1, ["sensors"]), (2, ["timestamp"])]


def test_parse_readings_numbers_records_from_the_start_index() -> None:
    parsed = parse_readings([record(), 5, record()], start_index=10)

    assert parsed.indices == [10, 12]
    assert [r.index for r in parsed.rejections] == [11]


def test_extending_a_parsed_payload_shifts_positions_by_the_offset() -> None:
    # Given a first chunk of two rows and a second chunk of two rows
    first = parse_readings([record(seq=0), 1])
    second = parse_readings([2, record(seq=3)])

    # When the second is appended at offset 2
    total = ParsedPayload()
    total.extend(first)
    total.extend(second, offset=2)

    # Then positions refer to the whole input
    assert total.indices == [0, 3]
    assert [r.seq for r in total.readings] == [0, 3]
    assert [(r.index, r.record) for r in total.rejections] == [(1, 1), (2, 2)]


# ----------------------------------------------------------------------------- identity


def test_dedup_key_is_the_same_whatever_the_timestamp_format() -> None:
    # Given one reading (device, instant 2024-05-01T12:00:00.250Z, seq 7) in four spellings
    spellings = [
        "2024-05-01T12:00:00.250Z",
        "2024-05-01T14:00:00.250+02:00",
        1_714_564_800_250,
        1_714_564_800_250.0,
    ]

    # When each is parsed
    keys = {accepted(record(timestamp=ts, seq=7)).dedup_key() for ts in spellings}

    # Then they share one key
    assert keys == {"pump-07|2024-05-01T12:00:00.250000+00:00|7"}


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        pytest.param({}, "pump-07|2024-05-01T12:00:00+00:00|", id="no-seq"),
        pytest.param({"seq": 0}, "pump-07|2024-05-01T12:00:00+00:00|0", id="seq-zero"),
        pytest.param({"seq": 8}, "pump-07|2024-05-01T12:00:00+00:00|8", id="seq-eight"),
        pytest.param({"device_id": "pump-08"}, "pump-08|2024-05-01T12:00:00+00:00|", id="other-device"),
        pytest.param(
            {"sensors": {"temperature": 99.0}}, "pump-07|2024-05-01T12:00:00+00:00|", id="values-ignored"
        ),
    ],
)
def test_dedup_key_is_device_instant_and_seq(overrides: dict[str, Any], key: str) -> None:
    assert accepted(record(**overrides)).dedup_key() == key


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="minimal"),
        pytest.param(
            {
                "asset": "P-07",
                "line": "L2",
                "site": "bilbao",
                "mode": "run",
                "seq": 2**63 - 1,
                "timestamp": "2024-05-01T14:00:00.123456+02:00",
                "sensors": {"temperature": 61.5, "vib.x:rms": 1e-9, "count": 3},
            },
            id="every-field",
        ),
    ],
)
def test_to_record_round_trips_through_parse_reading(overrides: dict[str, Any]) -> None:
    # Given a parsed reading
    reading = accepted(record(**overrides))

    # When written as a record, through JSON, and parsed again
    out = reading.to_record()
    again = accepted(json.loads(json.dumps(out)))

    # Then nothing changed, and the record is JSON-ready with a UTC timestamp and no nulls
    assert again == reading
    assert again.dedup_key() == reading.dedup_key()
    assert isinstance(out["timestamp"], str)
    assert out["timestamp"].endswith("Z")
    assert None not in out.values()


def test_to_record_writes_the_utc_instant() -> None:
    reading = accepted(record(timestamp="2024-05-01T14:00:00+02:00", seq=1))

    assert reading.to_record() == {
        "device_id": "pump-07",
        "timestamp": "2024-05-01T12:00:00Z",
        "sensors": {"temperature": 61.5, "pressure": 4.25},
        "seq": 1,
    }


def test_reading_is_immutable() -> None:
    reading = accepted(record())

    with pytest.raises(ValueError, match="frozen"):
        reading.device_id = "other"  # type: ignore[misc]


# -- the short paths (parse_payloads, and one reading per payload) decide as parse_reading does


_NEAR_NOW = st.one_of(
    st.floats(min_value=-600, max_value=600).map(lambda s: (NOW + timedelta(seconds=s)).isoformat()),
    st.integers(min_value=-600_000, max_value=600_000).map(lambda ms: NOW_EPOCH_MS + ms),
    st.sampled_from(
        [
            "1999-12-31T23:59:59.999999Z",
            "2000-01-01T00:00:00Z",
            946_684_799_999,
            " 2024-05-01T12:00:00Z ",
            "2024-05-01T12:00:00",
            "1714564800000",
            True,
        ]
    ),
)
_SOME_SENSORS = st.integers(min_value=0, max_value=5).map(lambda n: {f"s{i}": float(i) for i in range(n)})
_LIMITS = st.sampled_from([ContractLimits(), ContractLimits(max_sensors=3, max_future_skew_seconds=30.0)])


@st.composite
def _document(draw: st.DrawFn) -> Any:
    """A raw reading near the contract's edges (clock window, sensor count), or a hostile one."""
    if draw(st.booleans()):
        return draw(hostile_reading(record(seq=3, asset="p7")))
    return record(timestamp=draw(_NEAR_NOW), sensors=draw(_SOME_SENSORS))


def _outcome(parsed: ParsedPayload) -> tuple[list[Any], list[int], list[dict[str, Any]]]:
    return [r.model_dump() for r in parsed.readings], parsed.indices, [r.to_dict() for r in parsed.rejections]


@settings(max_examples=300)
@given(document=_document(), limits=_LIMITS, now=st.sampled_from([NOW, None]))
def test_one_reading_payload_is_decided_as_parse_reading_decides(
    document: Any, limits: ContractLimits, now: datetime | None
) -> None:
    # Given one raw reading, When it arrives as a payload of its own (the short path), in a list,
    # and through parse_reading (the full validator)
    text = json.dumps(document, allow_nan=True)
    alone = parse_payload(text, limits=limits, now=now)
    listed = parse_readings([document], limits=limits, now=now)
    full = parse_reading(document, limits=limits, now=now)
    full_of_text = parse_reading(decode_json(text), limits=limits, now=now)  # (JSON may change a number)

    # Then all three agree: the same reading, or the same rejection with the same errors
    expected = (
        ParsedPayload([full], [0], []) if isinstance(full, Reading) else ParsedPayload(rejections=[full])
    )
    assert _outcome(listed) == _outcome(expected)
    if type(document) is dict and "readings" not in document:  # (else not a one-reading payload)
        if isinstance(full_of_text, Reading):
            assert [r.model_dump() for r in alone.readings] == [full_of_text.model_dump()]
        else:
            assert [r.reason for r in alone.rejections] == [full_of_text.reason]


@given(bodies=hostile_bodies([record(seq=i) for i in range(3)]), limits=_LIMITS)
def test_a_batch_of_payloads_yields_what_each_payload_yields_alone(
    bodies: list[str], limits: ContractLimits
) -> None:
    batch = parse_payloads(
        [*bodies, *(b.encode("utf-8", "surrogatepass") for b in bodies)], limits=limits, now=NOW
    )

    for i, body in enumerate([*bodies, *(b.encode("utf-8", "surrogatepass") for b in bodies)]):
        try:
            alone = parse_payload(body, limits=limits, now=NOW)
        except PayloadTooLarge as exc:
            assert [str(e) for p, e in batch.too_large if p == i] == [str(exc)]
            continue
        mine = [k for k, p in enumerate(batch.payloads) if p == i]
        assert [batch.readings[k] for k in mine] == alone.readings
        assert [batch.indices[k] for k in mine] == alone.indices
        assert [r for p, r in batch.rejections if p == i] == alone.rejections


@pytest.mark.parametrize(
    ("timestamp", "iso"),
    [
        ("2024-05-01T14:00:00.000123+02:00", "2024-05-01T12:00:00.000123Z"),
        ("2024-05-01T12:00:00.5Z", "2024-05-01T12:00:00.500000Z"),
        ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z"),
        (NOW_EPOCH_MS + 7, "2024-05-01T12:00:00.007000Z"),
    ],
)
def test_timestamp_iso_is_isoformat_in_utc_with_z(timestamp: Any, iso: str) -> None:
    reading = accepted(record(timestamp=timestamp))

    assert reading.timestamp_iso == iso == reading.timestamp.isoformat().replace("+00:00", "Z")
    assert reading.dedup_key() == f"pump-07|{iso[:-1]}+00:00|"


@pytest.mark.parametrize(
    "sensors_and_more",
    [
        '"sensors":{"a":1.0},"device_id":"b"',  # a duplicate key: the last one holds
        '"sensors":{"a":1.0,"a":2.0}',
        '"sensors":{"a":1e-400}',  # underflows to 0.0
        '"sensors":{"a":100000000000000000000}',  # an integer beyond 64 bits, a float's range
        '"sensors":{"a":9007199254740993}',
        '"sensors":{"a":NaN}',
        '"sensors":{"a":1},"seq":-0',
        '"sensors":{"a":1},"seq":-9223372036854775809',
        '"sensors":{"a":1},"seq":1E2',
        '"sensors":{"a":1}}x{',  # trailing garbage
    ],
)
def test_a_batch_reads_json_edge_cases_as_one_payload_does(sensors_and_more: str) -> None:
    body = '{"device_id":"a","timestamp":"2024-05-01T12:00:00Z",' + sensors_and_more + "}"

    batch = parse_payloads([body], now=NOW)
    alone = parse_payload(body, now=NOW)

    assert batch.readings == alone.readings
    assert [r for _, r in batch.rejections] == alone.rejections
