"""The edge's composition roots: settings from the environment, use cases on the box's own ports.

Each edge ``handler.py`` calls these once per container. The ports are the core's
(:mod:`zaindari.ports`): device state in the server process (:class:`InProcessStateStore`), outputs in :class:`~zaindari.edge.local_lake.LocalLake`; the
store-and-forward buffer and local alert sinks plug in here by passing ``ports``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zaindari.event_scoring import EventScoring, HttpAnswer, InboundRecord, ScoringReport, http_answer
from zaindari.infra.model_store import ModelSource
from zaindari.pipeline import DeviceState
from zaindari.ports import AlertSink, LakeWriter, RejectSink, SaveResult, StateStore
from zaindari.settings import Settings, SettingsError

if TYPE_CHECKING:
    from zaindari.file_scoring import FileScoring
    from zaindari.local_ports import LocalFileSink

__all__ = [
    "BatchingEventScoring",
    "EdgePorts",
    "InProcessStateStore",
    "build_edge_event_scoring",
    "build_edge_file_scoring",
    "edge_settings",
]


def edge_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings of an edge function from its environment (``stack.yml``'s ``environment``)."""
    return Settings.from_env(env if env is not None else os.environ)


@dataclass(frozen=True)
class EdgePorts:
    """Where the edge's ``score-event`` puts device state, outputs, dead letters and alerts."""

    states: StateStore
    lake: LakeWriter
    rejects: RejectSink
    alerts: AlertSink


class InProcessStateStore:
    """Device states as objects in the server's memory (a :class:`~zaindari.ports.StateStore`).

    For one process whose scoring calls never overlap (:class:`BatchingEventScoring`): no copy,
    no serialisation (JSON round trips of every device's window history and seen keys were a
    third of the edge's time per request). States are lost when the process stops: windows start
    again and readings replayed after a restart score again.
    """

    def __init__(self) -> None:
        self.states: dict[str, DeviceState] = {}

    def load(self, device_ids: Sequence[str]) -> dict[str, DeviceState]:
        return {d: self.states[d] for d in device_ids if d in self.states}

    def save(self, states: Mapping[str, DeviceState]) -> SaveResult:
        self.states.update(states)
        return SaveResult()


def _model(settings: Settings) -> ModelSource:
    if not settings.model_path:
        raise SettingsError("ZAINDARI_MODEL_PATH must name the model bundle folder on the box")
    if settings.model_path.startswith("s3://"):
        raise SettingsError("at the edge ZAINDARI_MODEL_PATH is a local folder (model-sync fetches bundles)")
    return ModelSource(settings.model_path, settings.model_cache_dir)


class BatchingEventScoring:
    """The ``score_event`` use case for a multi-threaded server: concurrent requests score together.

    Device state is read, updated and written back per scoring call, so two calls must not run at
    once (each would start from the same state, and windows and alert state would lose one). One
    call runs at a time; the requests that arrive meanwhile wait and are then scored together in
    the next call: one contract pass per request, but one state read, one ONNX run, one lake write
    for the whole group (a group commit). Each request gets its own part of the report. HTTP
    parsing, authentication and the contract check stay outside the lock.

    Parameters
    ----------
    scoring
        The use case.
    max_batch
        Most requests scored in one call.
    """

    def __init__(self, scoring: EventScoring, *, max_batch: int = 256) -> None:
        self.scoring = scoring
        self.max_batch = max_batch
        self._pending: list[tuple[InboundRecord, Future[ScoringReport]]] = []
        self._pending_lock = threading.Lock()
        self._scoring_lock = threading.Lock()

    def answer_http(self, body: bytes | str, request_id: str, source: str = "http") -> HttpAnswer:
        """As :meth:`EventScoring.answer_http`; ``request_id`` must be unique among concurrent calls."""
        readings = self.scoring.parse_http(body)
        if isinstance(readings, HttpAnswer):
            return readings
        report = self.score(InboundRecord(request_id, readings, source))
        return http_answer(report.for_record(request_id))

    def score(self, record: InboundRecord) -> ScoringReport:
        """Score ``record`` with whatever else is waiting; returns the report of its group."""
        future: Future[ScoringReport] = Future()
        with self._pending_lock:
            self._pending.append((record, future))
        while not future.done():
            with self._scoring_lock:
                if future.done():
                    break
                with self._pending_lock:
                    group, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                if not group:
                    continue
                try:
                    report = self.scoring.score_records([r for r, _ in group])
                except BaseException as exc:  # a bug, not bad input: every request of the group sees it
                    for _, waiting in group:
                        waiting.set_exception(exc)
                else:
                    for _, waiting in group:
                        waiting.set_result(report)
        return future.result()

    def model_version(self) -> str:
        return self.scoring.model().model_version


def build_edge_event_scoring(settings: Settings, ports: EdgePorts | None = None) -> BatchingEventScoring:
    """The edge's ``score-event``: the Lambda use case, on the box's ports (default: memory state,
    the local lake under ``edge_data_dir``)."""
    if ports is None:
        from zaindari.edge.local_lake import LocalLake

        lake = LocalLake(Path(settings.edge_data_dir))
        ports = EdgePorts(states=InProcessStateStore(), lake=lake, rejects=lake, alerts=lake)
    return BatchingEventScoring(
        EventScoring(
            model=_model(settings),
            states=ports.states,
            lake=ports.lake,
            alerts=ports.alerts,
            rejects=ports.rejects,
            limits=settings.limits,
            dedup_memory=settings.dedup_memory,
            threads=settings.onnx_threads,
        )
    )


def build_edge_file_scoring(settings: Settings) -> tuple[FileScoring, LocalFileSink]:
    """The edge's ``score-file``: the file use case writing to the local lake (and its sink, for
    the manifests that make a resent file a duplicate)."""
    from zaindari.file_scoring import FileScoring, FileScoringOptions
    from zaindari.local_ports import LocalFileSink

    sink = LocalFileSink(settings.edge_data_dir)
    scoring = FileScoring(
        model=_model(settings), sink=sink, options=FileScoringOptions(threads=settings.onnx_threads)
    )
    return scoring, sink


def _conforms() -> None:
    """Static check (mypy) that the in-process store satisfies its port."""
    _s: StateStore = InProcessStateStore()
