"""A folder laid out as the lake: the edge box's own record of scores, raw readings, dead letters
and alerts while it has no store-and-forward buffer wired in (or no link at all).

Append-only JSON Lines, one file per kind and UTC day: ``raw/telemetry/date=.../events.jsonl``,
``scores/events/date=.../events.jsonl``, ``quarantine/events/date=.../events.jsonl`` (each rejected
record with its reason, replayable) and ``alerts/date=.../alerts.jsonl``. Writes are flushed
before the call returns, so a record the use case was told is stored survives the process.
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zaindari.alerting import Alert
from zaindari.contract import Reading
from zaindari.jsonable import finite, json_line
from zaindari.ports import AlertSink, LakeWriter, PortError, RejectedRecord, RejectSink

__all__ = ["LocalLake"]


class LocalLake:
    """The lake (:class:`~zaindari.ports.LakeWriter`), dead letters (:class:`~zaindari.ports.RejectSink`)
    and alerts (:class:`~zaindari.ports.AlertSink`) as JSON Lines under ``root``.

    Parameters
    ----------
    root
        The folder (created when missing).
    fsync
        Also ``fsync`` each append (survives a power cut, at a cost per request).
    """

    def __init__(self, root: str | Path, *, fsync: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._lock = threading.Lock()

    def _append(
        self, prefix: str, rows_by_day: Mapping[str, Sequence[Mapping[str, Any]]], name: str
    ) -> list[str]:
        written = []
        with self._lock:
            for day, rows in rows_by_day.items():
                key = f"{prefix}/date={day}/{name}.jsonl"
                path = self.root / key
                # non-finite floats as text first, then orjson (json_line falls back to the
                # standard library for what orjson refuses)
                data = b"".join(json_line(finite(dict(r))) + b"\n" for r in rows)
                try:
                    try:
                        out = path.open("ab")
                    except FileNotFoundError:  # a new day's folder (checked per call cost ~40 us)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        out = path.open("ab")
                    with out:
                        out.write(data)
                        out.flush()
                        if self.fsync:
                            os.fsync(out.fileno())
                except OSError as exc:
                    raise PortError(f"local lake {key}: {exc}") from exc
                written.append(key)
        return written

    def write(self, readings: Sequence[Reading], scores: Sequence[Mapping[str, Any]]) -> list[str]:
        raw: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for reading, score in zip(readings, scores, strict=True):
            raw[_day(reading.timestamp)].append(
                {**reading.to_record(), "record_key": score.get("record_key")}
            )
        by_day: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for score in scores:
            by_day[str(score["timestamp"])[:10]].append(score)
        return self._append("raw/telemetry", raw, "events") + self._append("scores/events", by_day, "events")

    def reject(self, rejected: Sequence[RejectedRecord]) -> list[str]:
        today = _day(datetime.now(UTC))
        return self._append("quarantine/events", {today: [r.to_dict() for r in rejected]}, "events")

    def publish(self, alerts: Sequence[Alert]) -> set[str]:
        by_day: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for alert in alerts:
            by_day[_day(datetime.now(UTC))].append(alert.model_dump(mode="json"))
        try:
            self._append("alerts", by_day, "alerts")
        except PortError:
            return {a.dedup_key for a in alerts}
        return set()

    def read(self, prefix: str) -> list[dict[str, Any]]:
        """Every row under ``prefix`` (``scores/events``, ``alerts``...), oldest day first."""
        rows: list[dict[str, Any]] = []
        for path in sorted((self.root / prefix).glob("date=*/*.jsonl")):
            rows.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
        return rows


def _day(when: datetime) -> str:
    return when.astimezone(UTC).date().isoformat()


def _conforms() -> None:
    """Static check (mypy) that the local lake satisfies its ports."""
    _l: LakeWriter = LocalLake(".")
    _r: RejectSink = LocalLake(".")
    _a: AlertSink = LocalLake(".")
