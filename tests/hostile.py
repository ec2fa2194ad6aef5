"""Hostile telemetry for the fuzz tests: hypothesis strategies of malformed readings and payloads.

Every strategy starts from real readings of the simulated plant and breaks them the ways devices,
gateways and attackers do: wrong types, NaN and infinity, huge numbers, deep nesting, huge strings,
odd unicode in ids, duplicate JSON keys, wrong or missing time zones, batches mixing good and bad.

The hypothesis settings profiles (``ci``, the default, and ``deep``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

# -- pieces

ODD_TEXT = st.one_of(
    st.text(max_size=40),  # any unicode, surrogates and controls included
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "dev\x00ice",
            "\u202eevil",  # right-to-left override
            "\ufeffbom",
            "\uff50\uff4c\uff41\uff4e\uff54",  # full-width "plant"
            "e\u0301",  # combining accent
            "\ud800",  # lone surrogate
            "💥" * 10,
            "../../etc/passwd",
            "a" * 10_000,
            "<script>alert(1)</script>",
            "'; DROP TABLE devices; --",
        ]
    ),
)
ODD_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 2**64, 5e-324]),
)
WRONG_TYPE = st.one_of(
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    ODD_TEXT,
)
ODD_TIMESTAMP = st.one_of(
    st.sampled_from(
        [
            "2024-01-01T00:00:00",  # naive
            "2024-01-01T00:00:00+14:00",
            "2024-01-01T00:00:00-12:00",
            "2024-01-01T00:00:00+25:00",  # no such offset
            "2024-02-30T00:00:00Z",
            "2024-01-01 00:00:00 PST",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "yesterday",
            "",
        ]
    ),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    ODD_NUMBER,
    WRONG_TYPE,
)


def deep_json(depth: int) -> str:
    """A JSON document nested ``depth`` lists deep (parsers recurse on it)."""
    return "[" * depth + "]" * depth


@st.composite
def hostile_reading(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """A reading broken in one to three ways, or left valid (so batches mix good and bad)."""
    reading: dict[str, Any] = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        how = draw(
            st.sampled_from(
                ["device", "timestamp", "sensor", "sensors", "extra", "drop", "nest", "seq", "whole"]
            )
        )
        if how == "device":
            reading["device_id"] = draw(st.one_of(ODD_TEXT, WRONG_TYPE))
        elif how == "timestamp":
            reading["timestamp"] = draw(ODD_TIMESTAMP)
        elif how == "sensor":
            name = (
                draw(st.sampled_from([*reading["sensors"], "x", ""]))
                if isinstance(reading.get("sensors"), dict)
                else "x"
            )
            sensors = reading["sensors"] if isinstance(reading.get("sensors"), dict) else {}
            sensors[name] = draw(st.one_of(ODD_NUMBER, WRONG_TYPE))
            reading["sensors"] = sensors
        elif how == "sensors":
            reading["sensors"] = draw(
                st.one_of(
                    WRONG_TYPE,
                    st.just({f"s{i}": 1.0 for i in range(300)}),  # above max_sensors
                    st.dictionaries(ODD_TEXT, ODD_NUMBER, max_size=4),
                )
            )
        elif how == "extra":
            reading[draw(ODD_TEXT)] = draw(WRONG_TYPE)
        elif how == "drop":
            reading.pop(draw(st.sampled_from(["device_id", "timestamp", "sensors"])), None)
        elif how == "nest":
            reading["sensors"] = {"temperature": json.loads(deep_json(draw(st.integers(1, 50))))}
        elif how == "seq":
            reading["seq"] = draw(st.one_of(ODD_NUMBER, WRONG_TYPE))
        else:
            return draw(st.one_of(WRONG_TYPE, ODD_NUMBER))
    return reading


def _dumps(value: Any) -> str:
    # NaN and Infinity as the bare tokens many device SDKs emit (not valid JSON, but json.loads takes them)
    return json.dumps(value, allow_nan=True)


@st.composite
def hostile_body(draw: st.DrawFn, bases: list[dict[str, Any]]) -> str:
    """One message body as text: a reading, a list or ``{"readings": [...]}`` of hostile readings,
    or text that is not a payload at all (broken JSON, duplicate keys, deep nesting, huge)."""
    base = draw(st.sampled_from(bases))
    kind = draw(
        st.sampled_from(["one", "list", "wrapped", "duplicate_keys", "broken", "deep", "huge", "raw"])
    )
    if kind == "one":
        return _dumps(draw(hostile_reading(base)))
    if kind in ("list", "wrapped"):
        readings = draw(st.lists(hostile_reading(draw(st.sampled_from(bases))), max_size=5))
        return _dumps(readings if kind == "list" else {"readings": readings})
    if kind == "duplicate_keys":
        valid = _dumps(base)
        return valid[:-1] + ', "device_id": ' + _dumps(draw(ODD_TEXT)) + "}"
    if kind == "broken":
        valid = _dumps(base)
        return valid[: draw(st.integers(0, max(len(valid) - 1, 0)))]
    if kind == "deep":
        return deep_json(draw(st.sampled_from([100, 1_000, 100_000])))
    if kind == "huge":
        return _dumps({**base, "device_id": "d" * 300_000})  # above the 256 KiB payload limit
    return draw(st.text(max_size=200))


def hostile_bodies(bases: list[dict[str, Any]], max_size: int = 8) -> st.SearchStrategy[list[str]]:
    """A batch of bodies mixing valid readings and hostile ones."""
    return st.lists(
        st.one_of(st.sampled_from(bases).map(_dumps), hostile_body(bases)), min_size=1, max_size=max_size
    )


@st.composite
def kinesis_data(draw: st.DrawFn, bases: list[dict[str, Any]]) -> str:
    """A Kinesis record's ``data``: base64 of a (hostile) body, or something that is not base64."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(["not base64!", "====", "", "\u00e9t\u00e9"]))
    body = draw(st.one_of(st.sampled_from(bases).map(_dumps), hostile_body(bases)))
    raw = body.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        raw = raw + draw(st.binary(max_size=8))  # trailing binary garbage
    return base64.b64encode(raw).decode()


def hostile_document(bases: list[dict[str, Any]]) -> st.SearchStrategy[Any]:
    """An already-decoded payload (IoT rule event, EventBridge detail): any JSON value."""
    return st.one_of(
        st.sampled_from(bases),
        st.sampled_from(bases).flatmap(hostile_reading),
        st.lists(st.sampled_from(bases).flatmap(hostile_reading), max_size=4),
        st.sampled_from(bases)
        .flatmap(lambda b: st.lists(hostile_reading(b), max_size=3))
        .map(lambda rs: {"readings": rs}),
        WRONG_TYPE,
        ODD_NUMBER,
    )
