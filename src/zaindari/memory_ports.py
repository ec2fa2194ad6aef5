"""In-memory implementations of the ports, for unit tests, benchmarks and local experiments.

They implement the same ``typing.Protocol`` classes as the AWS and edge adapters (mypy checks it),
and can be told to fail, so the use cases' failure paths are testable without any network.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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

__all__ = ["MemoryAlertSink", "MemoryLake", "MemoryRejectSink", "MemoryStateStore"]


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
