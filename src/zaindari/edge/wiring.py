"""The edge's composition roots: settings from the environment, use cases on the box's own ports.

Each edge ``handler.py`` calls these once per container. The ports are the core's
(:mod:`zaindari.ports`): device state in memory (one process holds it: see
:mod:`zaindari.edge.server`), outputs in :class:`~zaindari.edge.local_lake.LocalLake`; the
store-and-forward buffer and local alert sinks plug in here by passing ``ports``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zaindari.event_scoring import EventScoring, HttpAnswer
from zaindari.infra.model_store import ModelSource
from zaindari.memory_ports import MemoryStateStore
from zaindari.ports import AlertSink, LakeWriter, RejectSink, StateStore
from zaindari.settings import Settings, SettingsError

if TYPE_CHECKING:
    from zaindari.file_scoring import FileScoring
    from zaindari.local_ports import LocalFileSink

__all__ = [
    "EdgePorts",
    "SerialEventScoring",
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


def _model(settings: Settings) -> ModelSource:
    if not settings.model_path:
        raise SettingsError("ZAINDARI_MODEL_PATH must name the model bundle folder on the box")
    if settings.model_path.startswith("s3://"):
        raise SettingsError("at the edge ZAINDARI_MODEL_PATH is a local folder (model-sync fetches bundles)")
    return ModelSource(settings.model_path, settings.model_cache_dir)


class SerialEventScoring:
    """The ``score_event`` use case for a multi-threaded server: one request scores at a time.

    Device state is read, updated and written back per request; two requests of one device
    scoring at once would each start from the same state (windows and alert state would lose one
    of them). The lock keeps the order; HTTP parsing, authentication and JSON encoding stay
    outside it.
    """

    def __init__(self, scoring: EventScoring) -> None:
        self.scoring = scoring
        self._lock = threading.Lock()

    def answer_http(self, body: bytes | str, request_id: str, source: str = "http") -> HttpAnswer:
        with self._lock:
            return self.scoring.answer_http(body, request_id, source)

    def model_version(self) -> str:
        return self.scoring.model().model_version


def build_edge_event_scoring(settings: Settings, ports: EdgePorts | None = None) -> SerialEventScoring:
    """The edge's ``score-event``: the Lambda use case, on the box's ports (default: memory state,
    the local lake under ``edge_data_dir``)."""
    if ports is None:
        from zaindari.edge.local_lake import LocalLake

        lake = LocalLake(Path(settings.edge_data_dir))
        ports = EdgePorts(states=MemoryStateStore(), lake=lake, rejects=lake, alerts=lake)
    return SerialEventScoring(
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
