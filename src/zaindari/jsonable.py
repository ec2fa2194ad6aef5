"""Turning records into strict JSON: one place for the odd values raw data carries.

Dead letters and quarantined rows keep the record as received, which may hold datetimes, bytes,
decimals, or non-finite floats that strict JSON cannot represent.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import orjson

__all__ = ["PlainJson", "decode_json", "finite", "json_default", "json_line", "json_text"]


def decode_json(text: str | bytes) -> Any:
    """``json.loads``, about 3x faster through orjson when orjson accepts the text.

    What orjson refuses (``NaN`` literals, integers beyond 64 bits, lone surrogates, nesting past
    its limit) goes to the standard library, so callers see exactly what ``json.loads`` makes.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def json_default(value: Any) -> Any:
    """``default=`` for ``json.dumps``/``orjson.dumps``: datetimes as ISO 8601, bytes as text."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def finite(value: Any) -> Any:
    """``value`` with nan and infinities (anywhere inside) written as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_line(row: Mapping[str, Any]) -> bytes:
    """One JSON Lines row (no newline) for whatever a hostile payload holds; never raises on it.

    orjson first (the fast path); what orjson refuses (integers beyond 64 bits, lone surrogates,
    nesting deeper than 255 levels) goes through the standard library, non-finite floats as text;
    a ``record`` nested deeper than Python can recurse is kept as a bounded preview instead.
    """
    try:
        return orjson.dumps(row, default=json_default)
    except TypeError:
        pass
    try:
        return json.dumps(finite(row), default=json_default, allow_nan=False).encode()
    except (RecursionError, ValueError):
        preview = reprlib.Repr()
        preview.maxlevel, preview.maxstring, preview.maxother = 20, 4096, 4096
        kept = {k: v for k, v in row.items() if k != "record"}
        kept["record"] = "not storable as JSON (nested too deeply): " + preview.repr(row.get("record"))
        return json.dumps(finite(kept), default=json_default, allow_nan=False).encode()


class PlainJson(dict[str, Any]):
    """A JSON object whose maker checked that it holds only JSON's own values, of exactly these
    types: ``dict``, ``list``, ``str``, ``int``, ``bool``, ``None`` and finite ``float``. Anything
    else (a float subclass such as numpy's, an enum, a datetime, NaN) is written differently by
    orjson and the standard library; for this one, :func:`json_text` may use orjson."""

    __slots__ = ()


_ENCODER = json.JSONEncoder(default=json_default)  # what json.dumps(value, default=json_default) makes


def json_text(value: Any) -> str:
    """``json.dumps(value, default=json_default)``; a :class:`PlainJson` through orjson (~0.3 us
    instead of ~2.7 for a one-reading answer), which writes the same JSON value as compact text:
    no spaces after ``:`` and ``,``, non-ASCII characters as UTF-8 instead of ``\\u`` escapes,
    floats in their shortest form (``1e-07`` as ``1e-7``). What orjson refuses (a lone surrogate,
    an integer beyond 64 bits) goes to the standard library."""
    if type(value) is PlainJson:
        try:
            return orjson.dumps(value).decode()
        except TypeError:  # (orjson.JSONEncodeError)
            pass
    return _ENCODER.encode(value)
