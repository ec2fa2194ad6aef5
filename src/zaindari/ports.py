"""Ports: what the scoring use cases need from the outside world, as ``typing.Protocol`` classes.

Each runtime plugs in its own implementation: DynamoDB, S3, SNS and EventBridge on AWS
(``zaindari.infra.aws_ports``); SQLite and the local broker at the edge. Any failure an
implementation cannot absorb is raised as :class:`PortError` so the use case can decide which
records go back for retry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from zaindari.alerting import Alert
from zaindari.contract import Reading
from zaindari.pipeline import DeviceState

if TYPE_CHECKING:
    import pyarrow as pa

    from zaindari.file_scoring import FileManifest, FileRun, FileSource

__all__ = [
    "AlertSink",
    "FileSink",
    "LakeWriter",
    "PortError",
    "RejectSink",
    "RejectedRecord",
    "SaveResult",
    "StateStore",
]


class PortError(RuntimeError):
    """A downstream system failed (throttled, unreachable, refused); the work can be retried."""


@dataclass(frozen=True)
class RejectedRecord:
    """A record (or one reading of it) that will not be scored, with everything needed to replay it."""

    source: str
    record_id: str
    reason: str
    errors: tuple[dict[str, str], ...] = ()
    record: Any = None
    stage: str = "contract"
    reading_index: int | None = None
    received_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "record_id": self.record_id,
            "reading_index": self.reading_index,
            "stage": self.stage,
            "reason": self.reason,
            "errors": list(self.errors),
            "record": self.record,
            "received_at": self.received_at,
        }


@dataclass
class SaveResult:
    """Devices whose state could not be saved (their records go back for retry)."""

    failed: set[str] = field(default_factory=set)


class StateStore(Protocol):
    """Per-device state, read and written in bulk."""

    def load(self, device_ids: Sequence[str]) -> dict[str, DeviceState]:
        """States of the devices that have one (raises PortError when the store fails).

        The caller owns what it gets: the use case carries these states on and changes them in
        place (``score_table(owned=True)``), so a store must not keep or share them (a store that
        caches states hands out copies, or takes them back only through :meth:`save`)."""
        ...

    def save(self, states: Mapping[str, DeviceState]) -> SaveResult:
        """Write states; per-device failures are returned, a total failure raises PortError."""
        ...


class LakeWriter(Protocol):
    """The data lake: raw telemetry and scores, in micro-batches partitioned by date."""

    def write(self, readings: Sequence[Reading], scores: Sequence[Mapping[str, Any]]) -> list[str]:
        """Write one batch; returns the object keys written (raises PortError on failure)."""
        ...


class AlertSink(Protocol):
    """Where alerts go: people (SNS, webhook) and machines (EventBridge, MQTT)."""

    def publish(self, alerts: Sequence[Alert]) -> set[str]:
        """Publish; returns the ``dedup_key`` of each alert that could not be delivered."""
        ...


class RejectSink(Protocol):
    """The dead-letter store: rejected records with their reasons, findable and replayable."""

    def reject(self, rejected: Sequence[RejectedRecord]) -> list[str]:
        """Store; returns the locations written (raises PortError on failure)."""
        ...


class FileSink(Protocol):
    """Where file scoring's outputs go (S3 on AWS, a local folder at the edge).

    Scores and quarantined rows of a run (a file, or one part of it) are *staged* as they come and
    published together by :meth:`commit`, or dropped by :meth:`abort`: a reader of the lake never
    sees half a file. Object names derive from ``run.name``, so a replay overwrites its own outputs.
    Every method raises PortError when the storage fails.
    """

    def write_scores(self, run: FileRun, scores: pa.Table) -> None:
        """Stage one chunk's scores (``zaindari.file_scoring.SCORES_SCHEMA``), partitioned by date."""
        ...

    def write_quarantine(self, run: FileRun, rejected: Sequence[RejectedRecord]) -> None:
        """Stage one chunk's quarantined rows, each with its reason and raw record."""
        ...

    def commit(self, run: FileRun) -> list[str]:
        """Publish everything staged for ``run``; returns the locations written."""
        ...

    def abort(self, run: FileRun) -> None:
        """Drop everything staged for ``run`` (nothing of it becomes visible)."""
        ...

    def discard(self, outputs: Sequence[str]) -> None:
        """Delete published outputs (the other parts of a fanned-out file that failed)."""
        ...

    def quarantine_file(self, source: FileSource, reason: str) -> str:
        """Set a whole file aside (corrupt, truncated, unreadable); returns where."""
        ...

    def write_manifest(self, manifest: FileManifest) -> str:
        """Write a file's (or a part's) manifest at its deterministic location; returns it."""
        ...
