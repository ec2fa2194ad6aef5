"""The lake's JSON Lines writer (``zaindari.infra.aws_ports._jsonl_gz``): the line ``json_line``
writes for every row, hostile ones included, gzip-compressed."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from typing import Any

from zaindari.infra.aws_ports import _jsonl_gz
from zaindari.jsonable import json_line


def test_each_row_is_the_line_json_line_writes_even_where_orjson_refuses_it() -> None:
    rows: list[dict[str, Any]] = [
        {"device_id": "pump-07", "score": 0.25, "rules": [], "alert": False},
        {"record": {"temperature": float("nan")}, "at": datetime(2024, 5, 1, tzinfo=UTC)},
        {"record": {"seq": 2**70}},  # beyond 64 bits: orjson refuses, the standard library writes it
        {"record": "\ud800 lone surrogate"},
        {"record": b"\xff bytes"},
    ]

    lines = gzip.decompress(_jsonl_gz(rows)).split(b"\n")

    assert lines == [json_line(row) for row in rows] + [b""]
