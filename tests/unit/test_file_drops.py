"""The score_batch use case (``DropScoring``) with in-memory ports: routes, claims, file alerts.

The fakes implement the use case's ports (``DropLedger``, ``DropObjects``, ``ManifestStore``,
``PartQueue``, ``AlertSink``) and are checked against them by mypy-style assignments at the end.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pytest

from zaindari.alerting import Alert
from zaindari.bundle import ModelBundle
from zaindari.file_drops import (
    DropConfig,
    DropLedger,
    DropObjects,
    DropScoring,
    FileAlert,
    FilePartMessage,
    FileRunRecord,
    LedgerClaim,
    ManifestStore,
    PartQueue,
    choose_route,
    file_alerts,
)
from zaindari.file_reading import ByteStream, FileFormat
from zaindari.file_scoring import FileManifest, FileScoring, FileSource
from zaindari.local_ports import LocalFileSink
from zaindari.ports import AlertSink, PortError
from zaindari.simulate import PlantConfig, simulate_plant

# ----------------------------------------------------------------------------------- fakes


class MemoryLedger:
    def __init__(self) -> None:
        self.items: dict[str, dict[str, object]] = {}

    def _record(self, source: FileSource) -> FileRunRecord:
        item = self.items[source.source_id]
        return FileRunRecord.model_validate(
            {k: v for k, v in item.items() if k in FileRunRecord.model_fields}
            | {"source_id": source.source_id, "parts_done": len(item.get("done", set()))}  # type: ignore[arg-type]
        )

    def claim(
        self, source: FileSource, *, route: str, owner: str, now: float, lease_until: float
    ) -> LedgerClaim:
        item = self.items.setdefault(source.source_id, {"status": "new", "arrivals": 0, "lease_until": 0.0})
        item["arrivals"] = int(item["arrivals"]) + 1  # type: ignore[call-overload]
        if item["status"] == "new" or (item["status"] != "done" and float(item["lease_until"]) < now):  # type: ignore[arg-type]
            item.update(status="claimed", route=route, owner=owner, lease_until=lease_until, done=set())
            return LedgerClaim(claimed=True, record=self._record(source))
        return LedgerClaim(claimed=False, record=self._record(source))

    def release(self, source: FileSource, *, owner: str, message: str) -> None:
        self.items[source.source_id].update(status="released", lease_until=0.0, message=message)

    def fan_out(self, source: FileSource, *, owner: str, parts: int, lease_until: float) -> None:
        self.items[source.source_id].update(status="fanned_out", parts=parts, lease_until=lease_until)

    def hand_to_spark(self, source: FileSource, *, owner: str, job_run_id: str, lease_until: float) -> None:
        self.items[source.source_id].update(status="spark", job_run_id=job_run_id, lease_until=lease_until)

    def part_done(self, source: FileSource, index: int) -> FileRunRecord | None:
        item = self.items.get(source.source_id)
        if item is None or item["status"] != "fanned_out":
            return None
        item["done"].add(index)  # type: ignore[attr-defined]
        return self._record(source)

    def claim_merge(self, source: FileSource, *, owner: str, now: float, lease_until: float) -> bool:
        item = self.items[source.source_id]
        if item.get("merging"):
            return False
        item["merging"] = True
        return True

    def finish(
        self, source: FileSource, manifest: FileManifest, *, location: str, undelivered: Sequence[str]
    ) -> None:
        self.items[source.source_id].update(
            status="done", outcome=manifest.status, manifest=location, undelivered=list(undelivered)
        )

    def set_undelivered(self, source: FileSource, undelivered: Sequence[str]) -> None:
        self.items[source.source_id]["undelivered"] = list(undelivered)

    def find(self, source: FileSource) -> FileRunRecord | None:
        return self._record(source) if source.source_id in self.items else None


class MemoryObjects:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def describe(self, source: FileSource) -> FileSource:
        return source.model_copy(update={"size": len(self.objects[source.key]), "etag": "e"})

    def open(self, source: FileSource, *, seekable: bool) -> ByteStream:
        return io.BytesIO(self.objects[source.key])


class FolderManifests:
    def __init__(self, sink: LocalFileSink) -> None:
        self.sink = sink

    def manifest(self, source: FileSource) -> FileManifest | None:
        return self.sink.read_manifest(source)

    def part_manifests(self, source: FileSource) -> list[FileManifest]:
        folder = self.sink.root / "manifests" / source.source_id
        return [FileManifest.model_validate_json(p.read_text()) for p in sorted(folder.glob("part-*.json"))]

    def manifest_location(self, manifest: FileManifest) -> str:
        part = manifest.part
        if part is None or part.count == 1:
            return f"manifests/{manifest.source_id}.json"
        return f"manifests/{manifest.source_id}/part-{part.index:05d}.json"


class ListQueue:
    def __init__(self) -> None:
        self.messages: list[FilePartMessage] = []

    def send(self, messages: Sequence[FilePartMessage]) -> None:
        self.messages.extend(messages)


class FlakyAlerts:
    """Refuses the first alert of the first publish (a channel failing once), accepts the rest."""

    def __init__(self, failures: int = 1) -> None:
        self.failures = failures
        self.sent: list[Alert] = []

    def publish(self, alerts: Sequence[Alert]) -> set[str]:
        refused = {a.dedup_key for a in alerts[: self.failures]}
        self.failures = 0
        self.sent += [a for a in alerts if a.dedup_key not in refused]
        return refused


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def csv() -> bytes:
    text: str = simulate_plant(PlantConfig.small(seed=0)).historian_frame().to_csv(index=False)
    return text.encode()


def drops(
    bundle: ModelBundle, folder: Path, objects: dict[str, bytes], alerts: AlertSink, **config: int
) -> tuple[DropScoring, MemoryLedger, ListQueue]:
    sink = LocalFileSink(folder)
    ledger, queue = MemoryLedger(), ListQueue()
    scoring = DropScoring(
        scoring=FileScoring(model=lambda: bundle, sink=sink),
        objects=MemoryObjects(objects),
        ledger=ledger,
        manifests=FolderManifests(sink),
        alerts=alerts,
        parts=queue,
        config=DropConfig(**config),
    )
    return scoring, ledger, queue


# ----------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("size", "fmt", "queue", "expected"),
    [
        (100, "csv", True, "inline"),
        (2_000, "csv", True, "fanout"),
        (2_000, "csv", False, "inline"),  # no part queue: one invocation
        (2_000, "parquet", True, "fanout"),
        (2_000, "csv.gz", True, "spark"),  # gzip cannot be split: Spark when on
        (20_000, "csv", True, "spark"),
        (None, "csv", True, "inline"),
    ],
)
def test_routes_follow_the_sizes(size: int | None, fmt: str, queue: bool, expected: str) -> None:
    kind, _, zipped = fmt.partition(".")
    file_format = FileFormat.model_validate({"kind": kind, "compression": "gzip" if zipped else None})
    config = DropConfig(fanout_bytes=1_000, spark_bytes=10_000)
    assert choose_route(size, file_format, config, can_fan_out=queue) == expected
    assert (
        choose_route(20_000, file_format, config.model_copy(update={"spark_bytes": 0}), can_fan_out=False)
        == "inline"
    )


def test_file_alerts_are_alerts_one_per_device_and_rule_that_raised(
    bundle: ModelBundle, csv: bytes, tmp_path: Path
) -> None:
    scoring = FileScoring(model=lambda: bundle, sink=LocalFileSink(tmp_path))
    manifest = scoring.score_file(io.BytesIO(csv), FileSource(key="drops/plant.csv", bucket="raw", etag="e1"))

    alerts = file_alerts(manifest, "manifests/x.json")

    raised = [s for s in manifest.alerts if s.raised or s.escalated]
    assert len(alerts) == len(raised) > 0 and len(manifest.alerts) > len(raised)  # rows-only summaries stay
    for alert, summary in zip(alerts, raised, strict=True):
        assert isinstance(alert, Alert) and alert.scope == "file"
        assert alert.alert_id == f"file:{manifest.source_id}:{summary.device_id}:{summary.rule_id}"
        assert (alert.rows, alert.raised, alert.worst_rows) == (
            summary.rows,
            summary.raised,
            summary.worst_rows,
        )
        assert alert.started_at == summary.first_at and alert.timestamp == summary.last_at
        assert alert.score == summary.worst_rows[0].score
        assert "plant.csv" in alert.message and alert.manifest == "manifests/x.json"
    assert FileAlert.model_validate_json(alerts[0].model_dump_json()) == alerts[0]


def test_refused_alerts_are_delivered_by_the_retry_and_the_others_never_twice(
    bundle: ModelBundle, csv: bytes, tmp_path: Path
) -> None:
    alerts = FlakyAlerts()
    scoring, ledger, _ = drops(bundle, tmp_path, {"drops/plant.csv": csv}, alerts)
    source = FileSource(key="drops/plant.csv", bucket="raw", etag="e1", size=len(csv))

    with pytest.raises(PortError, match="not delivered"):
        scoring.score_drop(source, owner="first")
    assert ledger.items[source.source_id]["status"] == "done"  # scored once; one alert owed
    delivered_first = len(alerts.sent)

    retry = scoring.score_drop(source, owner="retry")

    assert retry.status == "duplicate" and retry.alerts == 1
    keys = [a.dedup_key for a in alerts.sent]
    assert len(keys) == len(set(keys)) == delivered_first + 1
    assert scoring.score_drop(source, owner="again").alerts == 0


def test_parts_merge_once_whatever_their_order_and_redeliveries(
    bundle: ModelBundle, csv: bytes, tmp_path: Path
) -> None:
    alerts = FlakyAlerts(failures=0)
    scoring, ledger, queue = drops(
        bundle, tmp_path, {"drops/plant.csv": csv}, alerts, fanout_bytes=50_000, part_bytes=30_000
    )
    source = FileSource(key="drops/plant.csv", bucket="raw", etag="e1", size=len(csv))

    planned = scoring.score_drop(source, owner="planner")
    assert planned.status == "fanned_out" and planned.parts == len(queue.messages) > 2
    first, *rest = queue.messages
    outcomes = [scoring.score_part(m, owner=f"w{i}") for i, m in enumerate([*reversed(rest), rest[0]])]
    assert [o.status for o in outcomes].count("scored") == 0  # the first part is still missing
    last = scoring.score_part(first, owner="last")

    assert last.status == "scored" and last.rows_in == 1440 and last.parts == planned.parts
    assert ledger.items[source.source_id]["status"] == "done"
    assert scoring.score_part(first, owner="late").status == "ignored"
    keys = [a.dedup_key for a in alerts.sent]
    assert len(keys) == len(set(keys)) == last.alerts > 0


def _conforms() -> None:
    """The fakes satisfy the ports (checked by mypy when it reads the tests)."""
    _ledger: DropLedger = MemoryLedger()
    _objects: DropObjects = MemoryObjects({})
    _manifests: ManifestStore = FolderManifests(LocalFileSink("."))
    _queue: PartQueue = ListQueue()
    _alerts: AlertSink = FlakyAlerts()
