"""The scoring use case every runtime calls: readings in; scores, alerts, rejections and state out.

``score_readings`` is what ``score_event`` (Lambda), the edge ``score-event`` handler and the
contract tests call; ``score_table`` is the columnar form that file scoring uses chunk by chunk.
Both validate features, build one matrix, make **one** ONNX call, evaluate the alert policy and
return each device's new :class:`DeviceState` for the caller to store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import numpy.typing as npt
import orjson

from zaindari.alerting import Alert, AlertState, evaluate_alerts
from zaindari.bundle import ModelBundle
from zaindari.contract import Reading, Rejection
from zaindari.drift import WindowSummary, baseline_of, summarize_table
from zaindari.features import DeviceHistory, FeatureBatch, SensorTable, compute_features
from zaindari.jsonable import decode_json
from zaindari.scoring import get_scorer

__all__ = ["DeviceState", "ScoringOutcome", "TableScores", "score_readings", "score_table"]


@dataclass
class DeviceState:
    """Everything the core needs to remember about one device between invocations.

    ``seen`` holds ``[key, timestamp]`` of the device's most recent readings (short hashes of
    device, timestamp and sequence number, for idempotency); ``evicted_until`` is the latest
    timestamp among keys already forgotten, so a reading at or before it cannot be told from a
    duplicate. ``outbox`` holds alerts not yet delivered.
    """

    history: DeviceHistory = field(default_factory=DeviceHistory)
    alerts: AlertState = field(default_factory=AlertState)
    seen: list[tuple[str, float]] = field(default_factory=list)
    evicted_until: float | None = None
    outbox: list[dict[str, Any]] = field(default_factory=list)
    #: ``seen``'s keys as a set, built on first use and kept up to date by :meth:`remember`
    #: (rebuilding it on every call cost the edge ~0.2 ms per request at 512 keys).
    _keys: set[str] | None = field(default=None, init=False, repr=False, compare=False)
    #: ``_keys`` is shared with a :meth:`successor` (or its origin): copied before it changes.
    #: (Copying 512 keys cost the edge ~5 us per device at each of a group's two copies, the
    #: buffer's read and its save; this way the one state whose keys grow pays once.)
    _keys_shared: bool = field(default=False, init=False, repr=False, compare=False)

    def seen_keys(self) -> set[str]:
        """The keys of the readings remembered (a live view: do not mutate)."""
        if self._keys is None or len(self._keys) != len(self.seen):
            self._keys = {key for key, _ in self.seen}
            self._keys_shared = False
        return self._keys

    def too_late(self, timestamp: float) -> bool:
        """True when a reading this old may have been seen and forgotten."""
        return self.evicted_until is not None and timestamp <= self.evicted_until

    def remember(self, key: str, timestamp: float, memory: int) -> None:
        """Add a processed reading's key, forgetting the oldest beyond ``memory``."""
        self.remember_all([(key, timestamp)], memory)

    def remember_all(self, keys: Sequence[tuple[str, float]], memory: int) -> None:
        """:meth:`remember` each ``(key, timestamp)`` in order, trimming once at the end (the
        same keys are kept and forgotten as one by one)."""
        seen = self.seen
        seen.extend(keys)
        known = self._keys
        if known is not None:
            if self._keys_shared:
                known = self._keys = set(known)
                self._keys_shared = False
            known.update([k for k, _ in keys])
        excess = len(seen) - memory
        if excess > 0:
            dropped = seen[:excess]
            del seen[:excess]
            if known is not None:
                known.difference_update([k for k, _ in dropped])
            latest = max([ts for _, ts in dropped])
            self.evicted_until = latest if self.evicted_until is None else max(self.evicted_until, latest)

    def successor(self, history: DeviceHistory, alerts: AlertState) -> DeviceState:
        """This state with a new history and alert state; its own lists copied (its key set
        shared until either of them remembers a key)."""
        state = DeviceState(history, alerts, list(self.seen), self.evicted_until, list(self.outbox))
        if self._keys is not None and len(self._keys) == len(self.seen):
            state._keys = self._keys
            state._keys_shared = self._keys_shared = True
        return state

    def to_dict(self) -> dict[str, Any]:
        return self._fields([[k, ts] for k, ts in self.seen])

    def _fields(self, seen: Any) -> dict[str, Any]:
        """Every stored field, ``seen`` as given (one list of fields for both encodings)."""
        return {
            "history": self.history.to_dict(),
            "alerts": self.alerts.to_dict(),
            "seen": seen,
            "evicted_until": self.evicted_until,
            "outbox": self.outbox,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DeviceState:
        data = data or {}
        evicted = data.get("evicted_until")
        return cls(
            DeviceHistory.from_dict(data.get("history")),
            AlertState.from_dict(data.get("alerts")),
            seen=[
                (k, ts) if type(ts) is float and type(k) is str else (str(k), float(ts))
                for k, ts in data.get("seen", [])
            ],
            evicted_until=None if evicted is None else float(evicted),
            outbox=[dict(a) for a in data.get("outbox", [])],
        )

    def to_json(self) -> str:
        """:meth:`to_dict` as compact JSON text, what a state store keeps (:meth:`from_json` reads it).

        orjson for the bulk (history, seen keys: finite numbers by construction); the outbox through
        the standard library, because an alert may observe ``nan`` (a rate with no previous
        reading), which orjson would write as ``null`` and the alert could not be read back.
        """
        data = self._fields(self.seen)  # the (key, timestamp) tuples as they are: the same arrays
        outbox = data.pop("outbox")
        head = orjson.dumps(data).decode()
        text = json.dumps(outbox, separators=(",", ":")) if outbox else "[]"  # (usually empty)
        return f'{head[:-1]},"outbox":{text}}}'

    @classmethod
    def from_json(cls, text: str | bytes) -> DeviceState:
        """The state :meth:`to_json` wrote."""
        return cls.from_dict(decode_json(text))


@dataclass
class TableScores:
    """Scores of the valid rows of a table; ``rows`` are their positions in the input table."""

    features: FeatureBatch
    score: npt.NDArray[np.float64]
    row_rules: list[list[str]]
    row_severity: list[str | None]
    alerts: list[Alert]
    states: dict[str, DeviceState]
    model_version: str
    #: What was scored, per time window (``zaindari.drift``); empty when the bundle has no baseline.
    summaries: list[WindowSummary] = field(default_factory=list)

    @property
    def rows(self) -> npt.NDArray[np.intp]:
        return self.features.rows

    @property
    def rejections(self) -> list[Rejection]:
        return self.features.rejections


@dataclass
class ScoringOutcome:
    """What :func:`score_readings` returns.

    ``scored`` holds one row per scored reading, JSON-ready (what goes to the lake's ``scores/``; the
    sensor values go to ``raw/telemetry/`` with the same ``record_key``); ``rejections``
    refer to positions in the ``readings`` argument.
    """

    scored: list[dict[str, Any]]
    scored_positions: list[int]
    rejections: list[Rejection]
    alerts: list[Alert]
    states: dict[str, DeviceState]
    model_version: str
    summaries: list[WindowSummary] = field(default_factory=list)


class _Lazy(Sequence[Mapping[str, str | None]]):
    """Per row, identity fields (``asset``, ``line``, ``site``) made when asked: the alert policy
    asks only for the rows that raise an alert, a few of a batch."""

    def __init__(self, row: Callable[[int], Mapping[str, str | None]], n: int) -> None:
        self.row = row
        self.n = n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> Mapping[str, str | None]: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Mapping[str, str | None]]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self.row(k) for k in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.row(i % self.n)


def score_table(
    bundle: ModelBundle,
    table: SensorTable,
    states: Mapping[str, DeviceState] | None = None,
    *,
    identity: Sequence[Mapping[str, str | None]] | None = None,
    threads: int = 1,
    base_row: int = 0,
    summarize: bool = True,
    owned: bool = False,
) -> TableScores:
    """Score every row of ``table`` with ``bundle``: features, one ONNX call, alert policy.

    Parameters
    ----------
    bundle
        A verified model bundle.
    table
        The rows (any order; windows follow each device's timestamps).
    states
        Each device's state before these rows; devices not present start fresh.
    identity
        Per input row: ``asset``, ``line``, ``site`` (copied onto alerts).
    threads
        onnxruntime intra-op threads.
    base_row
        Offset added to rejection indices (for file chunks).
    summarize
        Whether to compute the drift window summaries (a caller that keeps none skips them).
    owned
        The caller owns ``states`` and will not use them again (it loaded them from its store,
        which hands out copies): each device's new state is its given state with the new
        history and alert state, not a copy of it (a copy of 512 remembered keys cost the edge
        ~5 us per device and group). One object given for several devices is updated for the
        first only, the others get copies. Otherwise the given states are left as they were.
    """
    states = states or {}
    spec = bundle.spec
    histories = {d: s.history for d, s in states.items()}
    features = compute_features(spec, table, histories, base_row=base_row)
    matrix = features.matrix(bundle.signature.features)
    outputs = get_scorer(bundle, threads).score(matrix)
    rows = features.rows
    every = len(rows) == len(table)  # (the usual table: its columns as they are, not gathered)
    evaluation = (
        evaluate_alerts(
            spec=spec,
            signature=bundle.signature,
            thresholds=bundle.thresholds,
            model_version=bundle.model_version,
            columns=features.columns,
            matrix=matrix.astype(np.float64),
            score=outputs.score,
            contributions=outputs.contributions,
            devices=(table.device_id if every else table.device_id[rows]).tolist(),
            timestamps=table.timestamp if every else table.timestamp[rows],
            modes=[None] * len(rows)
            if table.mode is None
            else (table.mode if every else table.mode[rows]).tolist(),
            late=features.late,
            identity=None if identity is None else _Lazy(lambda i: identity[int(rows[i])], len(rows)),
            states={d: s.alerts for d, s in states.items()},
        )
        if len(rows)
        else None
    )
    new_states: dict[str, DeviceState] = {}
    reused: set[int] = set()  # (owned: one state object given for two devices is updated for one)
    for device, history in features.histories.items():
        alerts = evaluation.states.get(device) if evaluation else None
        previous = states.get(device)
        if previous is None:
            new_states[device] = DeviceState(
                history=history, alerts=alerts if alerts is not None else AlertState()
            )
        elif owned and id(previous) not in reused:
            reused.add(id(previous))
            previous.history = history
            if alerts is not None:
                previous.alerts = alerts
            new_states[device] = previous
        else:
            new_states[device] = previous.successor(
                history, alerts if alerts is not None else previous.alerts
            )
    row_rules = evaluation.row_rules if evaluation else []
    baseline = baseline_of(bundle) if summarize else None
    summaries = (
        summarize_table(
            baseline,
            model_version=bundle.model_version,
            devices=table.device_id,
            timestamps=table.timestamp,
            sensors=table.sensors,
            rows=rows,
            matrix=matrix,
            score=outputs.score,
            alerts=np.array([bool(r) for r in row_rules], dtype=bool),
        )
        if baseline is not None
        else []
    )
    return TableScores(
        features=features,
        score=outputs.score,
        row_rules=row_rules,
        row_severity=evaluation.row_severity if evaluation else [],
        alerts=evaluation.alerts if evaluation else [],
        states=new_states,
        model_version=bundle.model_version,
        summaries=summaries,
    )


def _identity(reading: Reading) -> dict[str, str | None]:
    return {"asset": reading.asset, "line": reading.line, "site": reading.site}


def score_readings(
    bundle: ModelBundle,
    readings: Sequence[Reading],
    states: Mapping[str, DeviceState] | None = None,
    *,
    threads: int = 1,
    summarize: bool = True,
    owned: bool = False,
) -> ScoringOutcome:
    """Score validated readings (one ONNX call for all of them) and evaluate the alert policy.

    Readings missing a sensor the spec needs, or holding an implausible value, come back as
    rejections (stage ``features``) with the reading itself, ready for a dead-letter store.
    ``summarize``, ``owned``: see :func:`score_table`.
    """
    table = SensorTable.from_readings(readings, bundle.spec.sensor_names)
    result = score_table(
        bundle,
        table,
        states,
        identity=_Lazy(lambda i: _identity(readings[i]), len(readings)),
        threads=threads,
        summarize=summarize,
        owned=owned,
    )
    rejections = [
        Rejection(r.index, r.reason, r.errors, readings[r.index].to_record(), r.stage)
        for r in result.rejections
    ]
    rule_set = bundle.spec.alert_policy.rule_set_version
    version = result.model_version
    positions = result.rows.tolist()
    # Python lists once (indexing numpy arrays element by element costs ~0.1 us a time)
    scored: list[dict[str, Any]] = []
    for pos, score, severity, rules, late in zip(
        positions,
        result.score.tolist(),
        result.row_severity,
        result.row_rules,
        result.features.late.tolist(),
        strict=True,
    ):
        reading = readings[pos]
        values = reading.__dict__  # its fields (as in Reading.to_record: quicker than attributes)
        scored.append(
            {
                "device_id": values["device_id"],
                "asset": values["asset"],
                "line": values["line"],
                "site": values["site"],
                "timestamp": reading.timestamp_iso,
                "seq": values["seq"],
                "mode": values["mode"],
                "score": score,
                "severity": severity,
                "rules": rules,
                "alert": bool(rules),
                "late": late,
                "model_version": version,
                "rule_set_version": rule_set,
            }
        )
    return ScoringOutcome(
        scored=scored,
        scored_positions=positions,
        rejections=rejections,
        alerts=result.alerts,
        states=result.states,
        model_version=result.model_version,
        summaries=result.summaries,
    )
