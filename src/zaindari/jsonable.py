"""Turning records into strict JSON: one place for the odd values raw data carries.

Dead letters and quarantined rows keep the record as received, which may hold datetimes, bytes,
decimals, or non-finite floats that strict JSON cannot represent.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

__all__ = ["finite", "json_default"]


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
