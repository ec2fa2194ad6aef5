"""The plant's maintenance log: per device, the windows of time it is known to be faulty or under work.

An anomaly model learns what normal operation looks like, from telemetry that carries no label. A
retraining over recent telemetry then reads the weeks in which machines developed faults, failed
and stood still: a model fitted on them learns a failing machine as normal, raises its thresholds,
and detects less. What tells the rows apart is the maintenance team's record: the work orders of
a CMMS (fault found on ``device`` from ``start``, repaired at ``end``; ``end`` empty while the
machine is still down or not yet repaired), exported to the lake as JSON Lines under
``labels/maintenance/`` (any file name; one :class:`MaintenanceWindow` per line).

Two consumers:

* ``build_training_set`` sets every row inside a window aside (stage ``maintenance``, kept with
  the other rows set aside, so it can be found and replayed): a model of normal operation is fitted
  on normal operation only (:mod:`zaindari.training_set`).
* the promotion gate judges shadow readings inside a window apart from the others: on known faults
  the challenger must alert no less than the champion, on the rest its alert rate must stay within
  the bound of the champion's (:func:`zaindari.registry.shadow_alert_rates`).

Without a log both behave as before: every row trains, every shadow reading counts as normal.

One reader, :func:`read_maintenance_log`, for every place the log is read from: the Glue job
``build_training_set`` (the lake's folder in S3 or on disk) and the gate's
:class:`~zaindari.infra.deploy_ports.S3MaintenanceLog` (the lake's folder in S3), both through a
:class:`~zaindari.file_store.FileStore`, and ``zaindari-registry promote --maintenance FILE`` (a
local file); each reports the reader's :class:`MaintenanceError` as its own error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zaindari.validation import validation_problems

__all__ = [
    "MAINTENANCE_PREFIX",
    "MaintenanceError",
    "MaintenanceLog",
    "MaintenanceWindow",
    "read_maintenance_log",
]

MAINTENANCE_PREFIX = "labels/maintenance"
"""Where the log lives in the lake (``<lake>/labels/maintenance/*.jsonl``)."""


class MaintenanceError(ValueError):
    """A maintenance log line that is not a window; the message names the line and the field."""


class MaintenanceWindow(BaseModel):
    """One work order: ``device_id`` is known faulty (or under maintenance) from ``start`` until
    ``end`` (exclusive; ``None``: not closed yet, the device stays excluded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: str = Field(min_length=1, max_length=256)
    start: datetime
    end: datetime | None = None
    kind: str = Field(default="fault", min_length=1, max_length=64)
    note: str = Field(default="", max_length=2000)

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2024-01-02T06:00:00Z)")
        return None if value is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _ordered(self) -> MaintenanceWindow:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        return self

    def covers(self, device_id: str, moment: datetime) -> bool:
        """Whether the reading of ``device_id`` at ``moment`` (aware) falls inside this window."""
        return (
            device_id == self.device_id and self.start <= moment and (self.end is None or moment < self.end)
        )


@dataclass(frozen=True)
class MaintenanceLog:
    """The windows of a plant, by device."""

    windows: tuple[MaintenanceWindow, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.windows)

    def covers(self, device_id: str, moment: datetime) -> bool:
        """Whether a reading of ``device_id`` at ``moment`` is inside a known window."""
        return any(w.covers(device_id, moment) for w in self.windows)

    @classmethod
    def from_jsonl(cls, data: bytes | str, *, source: str = "maintenance log") -> MaintenanceLog:
        """Parse JSON Lines (blank lines skipped); raises :class:`MaintenanceError` naming the line
        (or the source, for bytes that are not UTF-8)."""
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
        except UnicodeDecodeError as exc:
            raise MaintenanceError(f"{source}: not UTF-8 text: {exc}") from exc
        windows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise MaintenanceError(f"{source} line {number}: not JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise MaintenanceError(f"{source} line {number}: not a JSON object")
            windows.append(_window(record, f"{source} line {number}"))
        return cls(tuple(windows))

    @classmethod
    def merge(cls, logs: Iterable[MaintenanceLog]) -> MaintenanceLog:
        """One log holding the windows of ``logs`` (several export files)."""
        return cls(tuple(w for log in logs for w in log.windows))

    def to_jsonl(self) -> str:
        """The log as JSON Lines (the lake's format)."""
        return "".join(w.model_dump_json() + "\n" for w in self.windows)


def read_maintenance_log(files: Iterable[str], read: Callable[[str], bytes]) -> MaintenanceLog:
    """The log held by ``files`` (the plant's export files, each named as its errors should name
    it: a URI or a path), read with ``read`` and merged in the order given; no file, an empty log.

    ``read``'s own errors (a file or an object that cannot be read) pass through, for the caller to
    report as it reports its store; a file that is not UTF-8 JSON Lines of windows raises
    :class:`MaintenanceError` naming the file and the line.
    """
    return MaintenanceLog.merge(MaintenanceLog.from_jsonl(read(name), source=name) for name in files)


def _window(record: Mapping[str, Any], where: str) -> MaintenanceWindow:
    try:
        return MaintenanceWindow.model_validate(record)
    except ValidationError as exc:
        raise MaintenanceError(f"{where}: {validation_problems(exc, whole='window')}") from exc
