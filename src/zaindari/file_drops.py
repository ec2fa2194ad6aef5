"""File drops: what ``score_batch`` does with an object dropped in S3 (or a part of one).

The use case around :class:`~zaindari.file_scoring.FileScoring` that makes file scoring safe to
trigger from events, which arrive at least once and sometimes twice:

* **one run per object version**: every drop is *claimed* in a ledger (key plus ETag or version id,
  :attr:`FileSource.source_id`) before anything is read. A drop already scored is answered from the
  ledger (``duplicate``: no output is written again, no alert is raised again); a drop another run
  is scoring right now (its lease not run out) is left to it (``busy``). A run that crashed leaves
  its claim behind until the lease runs out, and then the next delivery takes it over;
* **a route per size** (:func:`choose_route`): small files are scored here (``inline``); files above
  ``fanout_bytes`` are split into parts (:func:`~zaindari.file_reading.plan_parts`: CSV and JSON Lines
  byte ranges on line boundaries, Parquet row groups), one queue message per part, each part scored
  by its own invocation; files above ``spark_bytes`` (when set) go to a Spark job;
* **the last part merges**: each scored part is added to the drop's set of finished parts (one
  atomic, idempotent ledger update); the part whose update completes the set takes the merge (a
  conditional update, so a redelivered last part cannot merge twice), merges the parts' manifests
  (:meth:`FileScoring.complete_parts`) and raises the file's alerts;
* **alerts once, per device per file**: each :class:`~zaindari.file_scoring.AlertSummary` in which
  an alert was raised or escalated becomes one :class:`FileAlert` (an :class:`~zaindari.alerting.Alert`
  with ``scope: "file"``, the counts and the worst rows), published after the manifest is written.
  Alerts a channel refused are kept in the ledger and sent again by the retry.

Nothing here touches AWS: the ledger, the object store, the part queue and the Spark runner are
ports (below), implemented on DynamoDB, S3, SQS and Glue in :mod:`zaindari.infra.file_ports`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePosixPath
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from zaindari.alerting import Alert
from zaindari.file_reading import (
    DEFAULT_PART_BYTES,
    ByteStream,
    FileError,
    FileFormat,
    FilePart,
    detect_format,
    number_parts,
    plan_parts,
)
from zaindari.file_scoring import FileManifest, FileScoring, FileSource, WorstRow
from zaindari.ports import AlertSink, PortError

__all__ = [
    "FILE_PART_MESSAGE",
    "DropConfig",
    "DropLedger",
    "DropObjects",
    "DropOutcome",
    "DropScoring",
    "FileAlert",
    "FilePartMessage",
    "FileRunRecord",
    "LedgerClaim",
    "ManifestStore",
    "PartQueue",
    "Route",
    "SparkRunner",
    "choose_route",
    "file_alerts",
]

Route = Literal["inline", "fanout", "spark"]
FILE_PART_MESSAGE = "zaindari.file_part"


# ----------------------------------------------------------------------------- data shapes


class DropConfig(BaseModel):
    """Routes and leases.

    Parameters
    ----------
    fanout_bytes
        Files larger than this are split into parts scored in parallel (when a part queue exists).
    part_bytes
        Target size of one part (bytes of text, or compressed bytes of Parquet row groups).
    spark_bytes
        Files larger than this go to the Spark job (0: never).
    lease_seconds
        How long a claim on a drop (or on a merge) holds before another delivery may take it over.
    stale_seconds
        How long a fan-out or a Spark run may take before a new delivery of the drop starts again.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    fanout_bytes: int = Field(default=2 * DEFAULT_PART_BYTES, ge=1)
    part_bytes: int = Field(default=DEFAULT_PART_BYTES, ge=1)
    spark_bytes: int = Field(default=0, ge=0)
    lease_seconds: float = Field(default=900.0, gt=0)
    stale_seconds: float = Field(default=6 * 3600.0, gt=0)


class FilePartMessage(BaseModel):
    """One part of a fanned-out drop: the queue message a part worker receives."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["zaindari.file_part"] = "zaindari.file_part"
    source: FileSource
    part: FilePart


class FileRunRecord(BaseModel):
    """A drop as the ledger knows it.

    ``status``: ``claimed`` (a run is scoring it or planning its parts), ``fanned_out`` (its parts
    are queued), ``spark`` (a Spark job run has it), ``done`` (a manifest was written: scored or
    failed), ``released`` (a run gave up with a retryable error; the next delivery starts again).
    """

    model_config = ConfigDict(frozen=True)

    source_id: str
    status: Literal["claimed", "fanned_out", "spark", "done", "released"]
    route: str | None = None
    owner: str | None = None
    lease_until: float = 0.0
    arrivals: int = 0
    parts: int = 0
    parts_done: int = 0
    job_run_id: str | None = None
    manifest: str | None = None
    outcome: str | None = None
    undelivered: list[str] = []
    message: str | None = None


class LedgerClaim(BaseModel):
    """What :meth:`DropLedger.claim` answers: ``claimed`` (yours now) or the record that stopped it."""

    model_config = ConfigDict(frozen=True)

    claimed: bool
    record: FileRunRecord


class FileAlert(Alert):
    """An :class:`~zaindari.file_scoring.AlertSummary` published as an alert.

    The common alert fields keep their meaning (``device_id``, ``rule_id``, ``severity``,
    ``message``, ``started_at``: the first alerting row, ``timestamp``: the last one,
    ``observed``/``thresholds``/``top_contributors``: those of the first raised alert, ``score``: the
    most abnormal score), so consumers of ``Zaindari Alert`` events read it as any other alert;
    ``scope: "file"`` tells it apart, and the file's counts follow. ``alert_id`` is stable per file
    version, device and rule: a consumer can drop a repeated delivery by it.
    """

    scope: Literal["file"] = "file"
    file: FileSource
    source_id: str
    manifest: str | None = None
    rows: int = 0
    raised: int = 0
    escalated: int = 0
    resolved: int = 0
    worst_rows: list[WorstRow] = []


class DropOutcome(BaseModel):
    """What happened to one drop (or part) in this invocation: the adapter's response and metrics."""

    model_config = ConfigDict(frozen=True)

    status: Literal["scored", "failed", "duplicate", "busy", "fanned_out", "spark", "part_scored", "ignored"]
    key: str
    source_id: str
    route: str | None = None
    part: int | None = None
    parts: int | None = None
    manifest: str | None = None
    rows_in: int = 0
    rows_scored: int = 0
    rows_quarantined: int = 0
    alerts: int = 0
    error: str | None = None
    job_run_id: str | None = None
    note: str | None = None


# ----------------------------------------------------------------------------- ports


class DropObjects(Protocol):
    """Where drops are read from (S3 on AWS)."""

    def describe(self, source: FileSource) -> FileSource:
        """``source`` with its size, ETag and version id filled in (raises PortError, FileError)."""
        ...

    def open(self, source: FileSource, *, seekable: bool) -> ByteStream:
        """The object's bytes; ``seekable`` for Parquet and byte-range parts.

        Reading raises :class:`~zaindari.file_reading.FileError` when the object is gone or
        changed, :class:`PortError` when the store fails.
        """
        ...


class DropLedger(Protocol):
    """One record per drop (object version): claims, fan-out progress, outcome."""

    def claim(
        self, source: FileSource, *, route: str, owner: str, now: float, lease_until: float
    ) -> LedgerClaim:
        """Take the drop, or return the record that holds it (counting the arrival either way)."""
        ...

    def release(self, source: FileSource, *, owner: str, message: str) -> None:
        """Give a claim back after a retryable failure."""
        ...

    def fan_out(self, source: FileSource, *, owner: str, parts: int, lease_until: float) -> None:
        """Record that ``parts`` part messages are about to be queued."""
        ...

    def hand_to_spark(self, source: FileSource, *, owner: str, job_run_id: str, lease_until: float) -> None:
        """Record the Spark job run that scores the drop."""
        ...

    def part_done(self, source: FileSource, index: int) -> FileRunRecord | None:
        """Add a part to the finished ones (idempotent); None when the drop is no longer fanned out."""
        ...

    def claim_merge(self, source: FileSource, *, owner: str, now: float, lease_until: float) -> bool:
        """Take the merge of a fanned-out drop whose parts are all done (False: another run has it)."""
        ...

    def finish(
        self, source: FileSource, manifest: FileManifest, *, location: str, undelivered: Sequence[str]
    ) -> None:
        """Record the drop's final manifest (and the alerts not delivered yet)."""
        ...

    def set_undelivered(self, source: FileSource, undelivered: Sequence[str]) -> None:
        """Replace the list of alerts still to deliver."""
        ...

    def find(self, source: FileSource) -> FileRunRecord | None:
        """The drop's record, if any."""
        ...


class ManifestStore(Protocol):
    """Manifests read back: the parts' for a merge, the file's for a replay or a Spark run."""

    def manifest(self, source: FileSource) -> FileManifest | None: ...

    def part_manifests(self, source: FileSource) -> list[FileManifest]: ...

    def manifest_location(self, manifest: FileManifest) -> str: ...


class PartQueue(Protocol):
    """Where part messages go (SQS on AWS); raises PortError when they cannot all be sent."""

    def send(self, messages: Sequence[FilePartMessage]) -> None: ...


class SparkRunner(Protocol):
    """Starts the Spark job that scores one large drop (Glue on AWS)."""

    def start(self, source: FileSource) -> str:
        """Start a run for ``source``; returns its id (raises PortError)."""
        ...

    def source_of(self, job_run_id: str) -> FileSource | None:
        """The drop a run was started for; None when the run is not one of this job's."""
        ...


# ----------------------------------------------------------------------------- routes and alerts


def choose_route(size: int | None, fmt: FileFormat | None, config: DropConfig, *, can_fan_out: bool) -> Route:
    """Where a drop of ``size`` bytes is scored.

    ``spark`` above ``spark_bytes`` (when set); ``fanout`` above ``fanout_bytes`` when the format
    can be split and a part queue exists; otherwise ``inline``. A large gzip file cannot be split:
    it goes to Spark when Spark is on (one reader, but no time limit), else it is scored inline.
    """
    if size is None or fmt is None:
        return "inline"
    spark_on = config.spark_bytes > 0
    if spark_on and size > config.spark_bytes:
        return "spark"
    if size > config.fanout_bytes:
        if fmt.splittable and can_fan_out:
            return "fanout"
        if spark_on and not fmt.splittable:
            return "spark"
    return "inline"


def file_alerts(manifest: FileManifest, location: str | None = None) -> list[FileAlert]:
    """One :class:`FileAlert` per device and rule of a scored file where an alert was raised or escalated.

    Summaries where a rule's condition held on some rows but never long enough to raise an alert
    stay in the manifest only.
    """
    if manifest.status != "scored":
        return []
    name = PurePosixPath(manifest.source.key).name
    alerts = []
    for summary in manifest.alerts:
        if not (summary.raised or summary.escalated):
            continue
        first = summary.first_alert
        worst = summary.worst_rows[0] if summary.worst_rows else None
        severity = summary.severity or (first.severity if first else None) or "warning"
        episodes = summary.raised + summary.escalated
        alerts.append(
            FileAlert(
                alert_id=f"file:{manifest.source_id}:{summary.device_id}:{summary.rule_id}",
                kind="raised",
                device_id=summary.device_id,
                asset=summary.asset,
                line=summary.line,
                site=summary.site,
                rule_id=summary.rule_id,
                source=summary.source,
                severity=severity,
                message=(
                    f"{summary.message or summary.rule_id}: {summary.rows} row(s), "
                    f"{episodes} alert(s) in {name}"
                ),
                timestamp=summary.last_at or (first.timestamp if first else ""),
                started_at=summary.first_at or (first.started_at if first else ""),
                observed=dict(first.observed) if first else {},
                thresholds=dict(first.thresholds) if first else {},
                score=worst.score if worst else None,
                top_contributors=list(first.top_contributors) if first else [],
                sensors=list(first.sensors) if first else [],
                mode=first.mode if first else None,
                model_version=manifest.model_version,
                rule_set_version=manifest.rule_set_version or "",
                file=manifest.source,
                source_id=manifest.source_id,
                manifest=location,
                rows=summary.rows,
                raised=summary.raised,
                escalated=summary.escalated,
                resolved=summary.resolved,
                worst_rows=list(summary.worst_rows),
            )
        )
    return alerts


# ----------------------------------------------------------------------------- the use case


class DropScoring:
    """Scores drops and their parts exactly once per object version (see the module docstring).

    Parameters
    ----------
    scoring
        File scoring wired to the lake's sink.
    objects, ledger, manifests, alerts
        The ports (see above).
    parts
        The part queue; None turns fan-out off (large splittable files are scored inline).
    spark
        The Spark runner; None turns the Spark route off whatever ``config.spark_bytes`` says.
    config
        Routes and leases.
    clock
        Epoch seconds; injectable for tests.
    """

    def __init__(
        self,
        *,
        scoring: FileScoring,
        objects: DropObjects,
        ledger: DropLedger,
        manifests: ManifestStore,
        alerts: AlertSink,
        parts: PartQueue | None = None,
        spark: SparkRunner | None = None,
        config: DropConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scoring = scoring
        self.objects = objects
        self.ledger = ledger
        self.manifests = manifests
        self.alerts = alerts
        self.parts = parts
        self.spark = spark
        config = config or DropConfig()
        if spark is None and config.spark_bytes:
            config = config.model_copy(update={"spark_bytes": 0})
        self.config = config
        self.clock = clock

    # -- a drop ---------------------------------------------------------------------------------

    def score_drop(
        self, source: FileSource, *, owner: str, lease_seconds: float | None = None
    ) -> DropOutcome:
        """Score a dropped object (or queue its parts, or start its Spark run), once per version.

        Parameters
        ----------
        source
            The object as the event names it (size, ETag and version id when the event has them).
        owner
            Who claims the drop (the invocation's request id).
        lease_seconds
            How long the claim holds (default ``config.lease_seconds``): the invocation's remaining
            time, so a crashed run's claim frees itself when its invocation would have ended.

        Raises
        ------
        PortError
            A downstream service failed; the claim is released so a retry starts again.
        """
        if source.key.endswith("/"):
            return self._outcome("ignored", source, note="a folder marker, not a file")
        if source.size is None or (source.etag is None and source.version_id is None):
            source = self.objects.describe(source)
        fmt = _format_of(source)
        route = choose_route(source.size, fmt, self.config, can_fan_out=self.parts is not None)
        now = self.clock()
        lease = lease_seconds if lease_seconds is not None else self.config.lease_seconds
        claim = self.ledger.claim(source, route=route, owner=owner, now=now, lease_until=now + lease)
        if not claim.claimed:
            return self._not_claimed(source, claim.record)
        try:
            if route == "fanout" and fmt is not None:
                return self._fan_out(source, fmt, owner)
            if route == "spark" and self.spark is not None:
                job_run_id = self.spark.start(source)
                self.ledger.hand_to_spark(
                    source, owner=owner, job_run_id=job_run_id, lease_until=now + self.config.stale_seconds
                )
                return self._outcome("spark", source, route="spark", job_run_id=job_run_id)
            with _closing(
                self.objects.open(source, seekable=fmt is not None and fmt.kind == "parquet")
            ) as stream:
                manifest = self.scoring.score_file(stream, source)
        except PortError as exc:
            self.ledger.release(source, owner=owner, message=str(exc))
            raise
        return self._finish(source, manifest, route="inline")

    def _not_claimed(self, source: FileSource, record: FileRunRecord) -> DropOutcome:
        if record.status != "done":
            return self._outcome(
                "busy",
                source,
                route=record.route,
                note=f"another run has it ({record.status}, lease until {record.lease_until:.0f})",
            )
        alerts = self._redeliver(source, record) if record.undelivered else 0
        return self._outcome(
            "duplicate",
            source,
            route=record.route,
            manifest=record.manifest,
            alerts=alerts,
            note=f"already {record.outcome or 'done'}; outputs and alerts not repeated",
        )

    def _redeliver(self, source: FileSource, record: FileRunRecord) -> int:
        """Publish again the alerts a channel refused last time (the ledger keeps their keys)."""
        manifest = self.manifests.manifest(source)
        if manifest is None:
            return 0
        pending = set(record.undelivered)
        alerts = [a for a in file_alerts(manifest, record.manifest) if a.dedup_key in pending]
        failed = self.alerts.publish(alerts) if alerts else set()
        self.ledger.set_undelivered(source, sorted(failed))
        if failed:
            raise PortError(f"{len(failed)} file alert(s) still not delivered")
        return len(alerts)

    def _fan_out(self, source: FileSource, fmt: FileFormat, owner: str) -> DropOutcome:
        if self.parts is None:  # pragma: no cover - choose_route never picks fan-out without a queue
            raise RuntimeError("fan-out without a part queue")
        size = source.size or 0
        if fmt.kind == "parquet":
            import pyarrow.parquet as pq

            try:
                with _closing(self.objects.open(source, seekable=True)) as stream:
                    metadata = pq.ParquetFile(stream).metadata
            except (OSError, ValueError):
                # not readable as Parquet (or gone): scoring it whole records why, in its manifest
                return self._score_inline_after_claim(source)
            parts = plan_parts(fmt, size, metadata, part_bytes=self.config.part_bytes)
        else:
            parts = plan_parts(fmt, size, part_bytes=self.config.part_bytes)
            if len(parts) > 1:
                # the first row of each part, counted once here rather than by every worker
                with _closing(self.objects.open(source, seekable=False)) as stream:
                    parts = number_parts(stream, fmt, parts)
        if len(parts) <= 1:
            return self._score_inline_after_claim(source)
        now = self.clock()
        self.ledger.fan_out(
            source, owner=owner, parts=len(parts), lease_until=now + self.config.stale_seconds
        )
        self.parts.send([FilePartMessage(source=source, part=p) for p in parts])
        return self._outcome("fanned_out", source, route="fanout", parts=len(parts))

    def _score_inline_after_claim(self, source: FileSource) -> DropOutcome:
        fmt = _format_of(source)
        with _closing(
            self.objects.open(source, seekable=fmt is not None and fmt.kind == "parquet")
        ) as stream:
            manifest = self.scoring.score_file(stream, source)
        return self._finish(source, manifest, route="inline")

    # -- a part ---------------------------------------------------------------------------------

    def score_part(self, message: FilePartMessage, *, owner: str) -> DropOutcome:
        """Score one part of a fanned-out drop; the part that completes the set merges the file.

        A redelivered part scores again (its outputs overwrite themselves) and counts once.

        Raises
        ------
        PortError
            A downstream service failed; the message should be retried.
        """
        source, part = message.source, message.part
        current = self.ledger.find(source)
        if current is not None and current.status != "fanned_out":
            # the file was merged (or failed and was cleaned up) already: scoring the part again
            # would bring its outputs back
            return self._outcome(
                "ignored",
                source,
                route="fanout",
                part=part.index,
                parts=part.count,
                note=f"the drop is {current.status}, not fanned out: part not scored again",
            )
        with _closing(self.objects.open(source, seekable=True)) as stream:
            manifest = self.scoring.score_file(stream, source, part=part)
        record = self.ledger.part_done(source, part.index)
        outcome = self._outcome(
            "part_scored",
            source,
            route="fanout",
            part=part.index,
            parts=part.count,
            manifest=self.manifests.manifest_location(manifest),
            rows_in=manifest.rows_in,
            rows_scored=manifest.rows_scored,
            rows_quarantined=manifest.rows_quarantined,
            error=manifest.error,
        )
        if record is None:
            return outcome.model_copy(update={"note": "the drop is no longer fanned out: nothing to merge"})
        if record.parts_done < record.parts:
            return outcome.model_copy(update={"note": f"{record.parts_done} of {record.parts} parts done"})
        now = self.clock()
        if not self.ledger.claim_merge(
            source, owner=owner, now=now, lease_until=now + self.config.lease_seconds
        ):
            return outcome.model_copy(update={"note": "all parts done; another run merges"})
        parts = [m for m in self.manifests.part_manifests(source) if m.parts == record.parts]
        merged = self.scoring.complete_parts(parts)
        finished = self._finish(source, merged, route="fanout")
        return finished.model_copy(update={"part": part.index, "note": f"part {part.index} merged the file"})

    # -- a Spark run ----------------------------------------------------------------------------

    def complete_spark_run(self, job_run_id: str, *, succeeded: bool, message: str = "") -> DropOutcome:
        """Close the ledger record of a drop a Spark run scored (on the job's state change).

        On success the job's manifest is read and the file's alerts are raised; on failure the claim
        is released (the job never finished: the next delivery of the drop starts again).
        """
        source = self.spark.source_of(job_run_id) if self.spark is not None else None
        if source is None:
            return DropOutcome(
                status="ignored",
                key="",
                source_id="",
                route="spark",
                job_run_id=job_run_id,
                note="not a run of the score_file job started for a drop",
            )
        record = self.ledger.find(source)
        if record is None or record.status != "spark" or record.job_run_id != job_run_id:
            return self._outcome(
                "ignored", source, route="spark", job_run_id=job_run_id, note="not the drop's current run"
            )
        if not succeeded:
            self.ledger.release(
                source, owner=record.owner or "", message=f"Spark run {job_run_id}: {message}"
            )
            return self._outcome("failed", source, route="spark", job_run_id=job_run_id, error=message)
        manifest = self.manifests.manifest(source)
        if manifest is None:
            error = f"Spark run {job_run_id} succeeded but wrote no manifest"
            self.ledger.release(source, owner=record.owner or "", message=error)
            return self._outcome("failed", source, route="spark", job_run_id=job_run_id, error=error)
        outcome = self._finish(source, manifest, route="spark")
        return outcome.model_copy(update={"job_run_id": job_run_id})

    # -- shared ---------------------------------------------------------------------------------

    def _finish(self, source: FileSource, manifest: FileManifest, *, route: str) -> DropOutcome:
        """Record the manifest and raise the file's alerts (those refused stay in the ledger)."""
        location = self.manifests.manifest_location(manifest)
        alerts = file_alerts(manifest, location)
        failed = self.alerts.publish(alerts) if alerts else set()
        self.ledger.finish(source, manifest, location=location, undelivered=sorted(failed))
        if failed:
            raise PortError(
                f"{len(failed)} of {len(alerts)} file alert(s) not delivered; retry redelivers them"
            )
        return self._outcome(
            "scored" if manifest.status == "scored" else "failed",
            source,
            route=route,
            parts=manifest.parts,
            manifest=location,
            rows_in=manifest.rows_in,
            rows_scored=manifest.rows_scored,
            rows_quarantined=manifest.rows_quarantined,
            alerts=len(alerts),
            error=manifest.error,
        )

    @staticmethod
    def _outcome(status: str, source: FileSource, **fields: object) -> DropOutcome:
        return DropOutcome.model_validate(
            {"status": status, "key": source.key, "source_id": source.source_id, **fields}
        )


def _format_of(source: FileSource) -> FileFormat | None:
    try:
        return detect_format(source.key)
    except FileError:
        return None  # scored inline: score_file records the unsupported type in a failed manifest


@contextlib.contextmanager
def _closing(stream: ByteStream) -> Iterator[ByteStream]:
    """The stream, closed afterwards when it can be (an S3 body holds a connection until then)."""
    try:
        yield stream
    finally:
        close = getattr(stream, "close", None)
        if callable(close):
            close()
