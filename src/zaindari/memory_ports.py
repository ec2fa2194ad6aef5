"""In-memory implementations of the ports, for unit tests, benchmarks and local experiments.

They implement the same ``typing.Protocol`` classes as the AWS and edge adapters (mypy checks it),
and can be told to fail, so the use cases' failure paths are testable without any network.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zaindari.alerting import Alert
from zaindari.contract import Reading
from zaindari.pipeline import DeviceState
from zaindari.ports import (
    AlertSink,
    LakeWriter,
    PortError,
    RejectedRecord,
    RejectSink,
    SaveResult,
    StateStore,
)
from zaindari.registry import (
    AliasConflict,
    ArtifactStore,
    HistoryEntry,
    ModelVersion,
    RegistryStore,
    VersionConflict,
)

if TYPE_CHECKING:
    from zaindari.drift import WindowSummary

__all__ = [
    "LocalArtifactStore",
    "MemoryAlertSink",
    "MemoryLake",
    "MemoryRegistryStore",
    "MemoryRejectSink",
    "MemoryStateStore",
]


@dataclass
class MemoryStateStore:
    """Device states kept as JSON, as a real store would (no shared mutable objects)."""

    items: dict[str, str] = field(default_factory=dict)
    fail: bool = False
    fail_devices: set[str] = field(default_factory=set)
    calls: int = 0

    def load(self, device_ids: Sequence[str]) -> dict[str, DeviceState]:
        self.calls += 1
        if self.fail:
            raise PortError("state store unavailable")
        return {d: DeviceState.from_dict(json.loads(self.items[d])) for d in device_ids if d in self.items}

    def save(self, states: Mapping[str, DeviceState]) -> SaveResult:
        self.calls += 1
        if self.fail:
            raise PortError("state store unavailable")
        result = SaveResult()
        for device, state in states.items():
            if device in self.fail_devices:
                result.failed.add(device)
            else:
                self.items[device] = json.dumps(state.to_dict())
        return result


@dataclass
class MemoryLake:
    readings: list[dict[str, Any]] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False

    def write(self, readings: Sequence[Reading], scores: Sequence[Mapping[str, Any]]) -> list[str]:
        if self.fail:
            raise PortError("lake unavailable")
        self.readings.extend(r.to_record() for r in readings)
        self.scores.extend(copy.deepcopy(dict(s)) for s in scores)
        return [f"memory://scores/{len(self.scores)}"]


@dataclass
class MemoryAlertSink:
    delivered: list[Alert] = field(default_factory=list)
    fail: bool = False

    def publish(self, alerts: Sequence[Alert]) -> set[str]:
        if self.fail:
            return {a.dedup_key for a in alerts}
        self.delivered.extend(alerts)
        return set()


@dataclass
class MemoryRejectSink:
    rejected: list[RejectedRecord] = field(default_factory=list)
    fail: bool = False

    def reject(self, rejected: Sequence[RejectedRecord]) -> list[str]:
        if self.fail:
            raise PortError("dead-letter store unavailable")
        self.rejected.extend(rejected)
        return ["memory://quarantine"]


def _conforms() -> None:
    """Static check (mypy) that each in-memory class satisfies its port."""
    _s: StateStore = MemoryStateStore()
    _l: LakeWriter = MemoryLake()
    _a: AlertSink = MemoryAlertSink()
    _r: RejectSink = MemoryRejectSink()


# -- the model registry's ports (zaindari.registry)


@dataclass
class MemoryRegistryStore:
    """The registry's metadata in dicts, with the same conditional semantics as DynamoDB."""

    versions: dict[tuple[str, int], str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    alias_table: dict[str, dict[str, int]] = field(default_factory=dict)
    entries: dict[str, list[str]] = field(default_factory=dict)

    def reserve_version(self, model: str) -> int:
        self.counters[model] = self.counters.get(model, 0) + 1
        return self.counters[model]

    def put_version(self, version: ModelVersion) -> None:
        key = (version.model, version.version)
        if key in self.versions:
            raise VersionConflict(f"{version.model} version {version.version} exists")
        self.versions[key] = version.model_dump_json()

    def get_version(self, model: str, version: int) -> ModelVersion | None:
        raw = self.versions.get((model, version))
        return None if raw is None else ModelVersion.model_validate_json(raw)

    def list_versions(self, model: str) -> list[ModelVersion]:
        return [
            ModelVersion.model_validate_json(v) for (m, _), v in sorted(self.versions.items()) if m == model
        ]

    def list_models(self) -> list[str]:
        return sorted({m for m, _ in self.versions} | set(self.counters))

    def aliases(self, model: str) -> dict[str, int]:
        return dict(self.alias_table.get(model, {}))

    def move_alias(self, entry: HistoryEntry, *, expected: int | None) -> None:
        table = self.alias_table.setdefault(entry.model, {})
        if table.get(entry.alias) != expected:
            raise AliasConflict(f"{entry.model} {entry.alias} is {table.get(entry.alias)}, not {expected}")
        if entry.to_version is None:
            table.pop(entry.alias, None)
        else:
            table[entry.alias] = entry.to_version
        self.append_history(entry)

    def append_history(self, entry: HistoryEntry) -> None:
        self.entries.setdefault(entry.model, []).append(entry.model_dump_json())

    def history(self, model: str) -> list[HistoryEntry]:
        return [HistoryEntry.model_validate_json(e) for e in self.entries.get(model, [])]


@dataclass
class LocalArtifactStore:
    """Bundles as local folders; :meth:`publish` copies them under ``root/models/<name>/<version>/``."""

    root: Path

    def fetch(self, location: str) -> Path:
        return Path(location)

    def publish(self, model: str, version: int, bundle: Path) -> str:
        import shutil

        target = self.root / "models" / model / str(version)
        target.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in bundle.iterdir() if p.is_file() and p.name != "MANIFEST.json")
        for name in [*names, "MANIFEST.json"]:  # the manifest last: a folder with one is complete
            shutil.copyfile(bundle / name, target / name)
        return str(target)


def _conforms_registry() -> None:
    _s: RegistryStore = MemoryRegistryStore()
    _a: ArtifactStore = LocalArtifactStore(Path("."))


# -- drift monitoring (zaindari.drift)


class MemorySummaryStore:
    """Window summaries in a dict keyed like the lake's objects; a replay overwrites its own."""

    def __init__(self) -> None:
        self.objects: dict[str, list[WindowSummary]] = {}
        self.fail = False

    def write(self, summaries: Sequence[WindowSummary], *, source: str, name: str) -> list[str]:
        if self.fail:
            raise PortError("summary store unavailable")
        keys = []
        for s in summaries:
            key = f"{s.model_version}/{s.start}/{source}-{name}"
            self.objects[key] = [s]
            keys.append(key)
        return keys

    def read(self, model: str, start: datetime, end: datetime) -> list[WindowSummary]:
        lo, hi = start.timestamp(), end.timestamp()
        return [
            s
            for items in self.objects.values()
            for s in items
            if s.model_version.split(":")[0] == model and lo <= s.start < hi
        ]


class MemoryDriftTriggerLog:
    """The last drift trigger per model."""

    def __init__(self) -> None:
        self.last: dict[str, datetime] = {}
        self.evidence: dict[str, Mapping[str, Any]] = {}

    def claim(self, model: str, at: datetime, min_interval: timedelta, evidence: Mapping[str, Any]) -> bool:
        last = self.last.get(model)
        if last is not None and at - last < min_interval:
            return False
        self.last[model] = at
        self.evidence[model] = evidence
        return True

    def release(self, model: str, at: datetime) -> None:
        if self.last.get(model) == at:
            del self.last[model]


@dataclass
class MemoryDriftNotifier:
    """Drift events and people alerts, kept in lists."""

    events: list[Mapping[str, Any]] = field(default_factory=list)
    people: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)

    def drift_detected(self, detail: Mapping[str, Any]) -> None:
        self.events.append(detail)

    def tell_people(self, subject: str, message: Mapping[str, Any]) -> None:
        self.people.append((subject, message))


def _conforms_drift() -> None:
    from zaindari.drift import DriftNotifier, DriftTriggerLog, SummaryStore

    _s: SummaryStore = MemorySummaryStore()
    _t: DriftTriggerLog = MemoryDriftTriggerLog()
    _n: DriftNotifier = MemoryDriftNotifier()


__all__ += ["MemoryDriftNotifier", "MemoryDriftTriggerLog", "MemorySummaryStore"]
