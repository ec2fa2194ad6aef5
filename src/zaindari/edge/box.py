"""The edge box: scoring, local alerts, store-and-forward and model sync, wired once per process.

:class:`EdgeBox` is what an edge runtime (an OpenFaaS ``handler.py``, ``zaindari edge serve``)
holds for the life of its process. It runs the cloud's scoring use case
(:class:`zaindari.event_scoring.EventScoring`) on the box's own ports: device state, lake writes,
dead letters and alerts all go into the SQLite buffer (``zaindari.edge.buffer``), alerts also to
the plant's channels at once (``zaindari.edge.local_alerts``), and the model comes from the local
store that model sync maintains (``zaindari.edge.model_sync``). A background thread
(:meth:`EdgeBox.start`) ships the buffer when the link is up, retries local alerts that a channel
did not take, and applies a model update that waited for the link.

``python -m zaindari.edge.box`` runs a box from ``ZAINDARI_*`` settings for a device feed replayed
from a file, one shipment, an update, or a status report (see ``--help``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zaindari.alerting import Alert
from zaindari.bundle import ModelBundle
from zaindari.drift import SummaryStore
from zaindari.edge.buffer import (
    BufferedAlerts,
    BufferedLake,
    BufferedRejects,
    BufferedSummaries,
    BufferStats,
    EdgeBuffer,
    Shipper,
    ShipReport,
    SqliteStateStore,
    StateConflict,
    Uplink,
)
from zaindari.edge.http import watchdog_unhealthy
from zaindari.edge.local_alerts import AlertChannel, LocalAlerts, MqttChannel, WebhookChannel
from zaindari.edge.model_sync import (
    BundleFetcher,
    LocalBundleFetcher,
    LocalModelStore,
    ModelSync,
    SyncOutcome,
    read_golden,
    write_golden,
)
from zaindari.event_scoring import EventScoring, InboundRecord, ScoringReport
from zaindari.ports import AlertSink, PortError, StateStore
from zaindari.registry_events import ModelUpdate
from zaindari.settings import Settings

__all__ = ["EdgeBox", "LocalFirstAlerts", "buffered_scoring", "main", "read_secret"]

log = logging.getLogger(__name__)


def buffered_scoring(
    buffer: EdgeBuffer,
    model: ModelBundle | Callable[[], ModelBundle],
    *,
    source: str,
    alerts: AlertSink | None = None,
    summaries: SummaryStore | None = None,
    settings: Settings | None = None,
    states: StateStore | None = None,
) -> EventScoring:
    """The scoring use case on a box's buffer: device state, lake, alerts, dead letters and drift
    summaries all written into it. ``model`` is a bundle or a callable giving the current one;
    ``settings`` (contract limits, deduplication memory, threads) default to the use case's own;
    ``states`` to the buffer's own state store (:class:`SqliteStateStore`)."""
    tuning: dict[str, Any] = (
        {}
        if settings is None
        else {
            "limits": settings.limits,
            "dedup_memory": settings.dedup_memory,
            "threads": settings.onnx_threads,
        }
    )
    return EventScoring(
        model=model if callable(model) else (lambda: model),
        states=states or SqliteStateStore(buffer),
        lake=BufferedLake(buffer),
        alerts=alerts or BufferedAlerts(buffer),
        rejects=BufferedRejects(buffer),
        summaries=summaries or BufferedSummaries(buffer),
        source=source,
        **tuning,
    )


def read_secret(secrets_dir: str | Path, name: str) -> str | None:
    """The content of secret file ``name`` (stripped), or None when it does not exist."""
    path = Path(secrets_dir) / name
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


class LocalFirstAlerts:
    """:class:`~zaindari.ports.AlertSink` of the box: buffer every alert (cloud and plant queues,
    one transaction), then deliver the plant's queues at once (inside a buffer transaction: once
    it is committed, by :meth:`deliver`). A channel that is down keeps its queue; the alert still
    counts as delivered, because it is durable and will go out."""

    def __init__(self, buffer: EdgeBuffer, local: LocalAlerts | None) -> None:
        self.buffered = BufferedAlerts(buffer, local_channels=local.names if local else ())
        self.local = local

    def publish(self, alerts: Sequence[Alert]) -> set[str]:
        failed = self.buffered.publish(alerts)
        if not self.buffered.buffer.in_transaction():
            self.deliver()
        return failed

    def deliver(self) -> None:
        """Send the plant's queues now (what a channel does not take stays queued)."""
        if self.local is not None:
            report = self.local.deliver()
            for channel, error in report.errors.items():
                log.warning("local alert channel %s is down; alerts stay queued: %s", channel, error)


class EdgeBox:
    """One edge box: see the module docstring.

    Parameters
    ----------
    buffer
        The store-and-forward buffer (also the device-state store).
    sync
        Model sync over the local model store.
    box_id
        Names the box in shipped objects and acks.
    local
        The plant's alert channels (None: none configured).
    uplink
        The link to the cloud (None: the box never ships, e.g. a test of the offline side).
    settings
        Contract limits, deduplication memory, threads, backoff.
    """

    def __init__(
        self,
        *,
        buffer: EdgeBuffer,
        sync: ModelSync,
        box_id: str,
        local: LocalAlerts | None = None,
        uplink: Uplink | None = None,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings()
        self.buffer = buffer
        self.sync = sync
        self.box_id = box_id
        self.local = local
        self._observer = sync.on_event
        self.sync.on_event = self._ack
        self._outcomes: deque[dict[str, Any]] = deque(maxlen=20)  # model outcomes since the start
        self.alerts = LocalFirstAlerts(buffer, local)
        self.scoring = buffered_scoring(
            buffer, sync.current, source=f"edge-{box_id}", alerts=self.alerts, settings=settings
        )
        self.shipper = (
            Shipper(
                buffer,
                uplink,
                box_id=box_id,
                status=self.status,
                backoff_seconds=settings.edge_ship_backoff_seconds,
                backoff_max_seconds=settings.edge_ship_backoff_max_seconds,
            )
            if uplink is not None
            else None
        )
        #: groups scored again because another worker process changed one of their device states
        self.conflicts = 0
        self._undelivered = False  # alerts of batches scored with durable=False, not yet settled
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._checkpoint_wanted = threading.Event()
        self._checkpointer: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        uplink: Uplink | None = None,
        fetcher: BundleFetcher | None = None,
    ) -> EdgeBox:
        """A box from its settings; ``uplink`` and ``fetcher`` come from the runtime's wiring
        (``zaindari.infra.edge_uplink`` on a box with AWS credentials)."""
        secrets = settings.edge_secrets_dir
        channels: list[AlertChannel] = []
        if settings.edge_webhook_url:
            channels.append(
                WebhookChannel(settings.edge_webhook_url, token=read_secret(secrets, "webhook-token"))
            )
        if settings.edge_mqtt_host:
            channels.append(
                MqttChannel(
                    settings.edge_mqtt_host,
                    settings.edge_mqtt_port,
                    topic=settings.edge_mqtt_topic,
                    client_id=f"zaindari-{settings.edge_box_id}",
                    username=read_secret(secrets, "mqtt-username"),
                    password=read_secret(secrets, "mqtt-password"),
                )
            )
        buffer = EdgeBuffer(
            settings.edge_buffer_path,
            max_bytes=settings.edge_buffer_max_bytes,
            synchronous=settings.edge_buffer_synchronous,
        )
        buffer.on_failed = watchdog_unhealthy  # under OpenFaaS: its health check fails, a restart follows
        sync = ModelSync(
            LocalModelStore(settings.edge_model_dir),
            fetcher or LocalBundleFetcher(),
            max_golden_alert_rate=settings.edge_max_golden_alert_rate,
            rollback_after_errors=settings.edge_rollback_after_errors,
            threads=settings.onnx_threads,
        )
        return cls(
            buffer=buffer,
            sync=sync,
            box_id=settings.edge_box_id,
            local=LocalAlerts(buffer, channels) if channels else None,
            uplink=uplink,
            settings=settings,
        )

    # -- scoring ------------------------------------------------------------------------------

    def score_records(self, records: Sequence[InboundRecord], *, durable: bool = True) -> ScoringReport:
        """Score a batch (the ``score_event`` use case) and watch the model on live traffic.

        Everything the batch writes to the buffer (dead letters, scores, drift summaries, alerts,
        device state) is one transaction, committed with one fsync before this returns (a group
        commit; the plant's alert channels are sent to after it): a crash keeps all of it or
        none. If the commit fails, every record is answered ``retry``.

        ``durable=False``: committed without waiting for the disk; the caller must call
        :meth:`settle` before it answers for the batch (its plant alerts are sent after that, by
        the background thread), and may score the next batch meanwhile.

        A batch whose scoring raises, or that yields a non-finite score, counts as a model error
        (nothing of it is stored); when that rolls the model back, the batch is scored again with
        the restored model.
        """
        try:
            report = self._score_in_one_transaction(records, durable)
        except Exception as exc:
            outcome = self.sync.record_batch(False, f"{type(exc).__name__}: {exc}")
            if outcome is not None and outcome.status == "rolled_back":
                log.error("model %s rolled back: %s", outcome.version, outcome.reason)
                return self._score_in_one_transaction(records, durable)
            raise
        bad = sum(1 for row in report.scored if not math.isfinite(float(row["score"])))
        outcome = self.sync.record_batch(bad == 0, f"{bad} non-finite scores")
        if outcome is not None:
            log.error("model %s rolled back: %s", outcome.version, outcome.reason)
        if self.shipper is not None and (report.scored or report.alerts) and not self._wake.is_set():
            self._wake.set()  # only the shipper has work from a batch (plant alerts went out above)
        return report

    def settle(self) -> None:
        """Make every batch scored with ``durable=False`` so far durable (one fsync of the
        buffer's log). Raises :class:`~zaindari.ports.PortError` when the disk fails (the batches
        must not be answered; the buffer refuses every write from then on, see
        :meth:`EdgeBuffer.sync`).

        The plant's alerts they raised are not sent here (a slow channel or the box-wide alerts
        lock would hold up every answer): the background thread (:meth:`start`) is woken to send
        them at once. A box not started sends them here, its failures logged, not raised: the
        batches are durable whatever a channel does."""
        self.buffer.sync()
        if self._undelivered:
            self._undelivered = False
            if self._thread is not None:
                self._wake.set()
            else:
                self.deliver_local()

    def _score_in_one_transaction(
        self, records: Sequence[InboundRecord], durable: bool = True
    ) -> ScoringReport:
        try:
            try:
                with self.buffer.transaction(durable=durable):
                    report = self.scoring.score_records(records)
            except StateConflict:
                # another worker process of the box wrote a state this group read (the same
                # device in both at once): nothing was kept; score it again, reading the states
                # under the write lock this time
                self.conflicts += 1
                with self.buffer.transaction(immediate=True, durable=durable):
                    report = self.scoring.score_records(records)
        except PortError as exc:  # the commit failed: nothing of the batch was kept
            report = ScoringReport(model_version=None)
            for record in records:
                report.status[record.record_id] = "retry"
                report.retry_reasons[record.record_id] = f"edge buffer: {exc}"
            return report
        if report.alerts:
            if durable:
                self.deliver_local()
            else:  # once they are on disk (settle)
                self._undelivered = True
        return report

    # -- model sync ---------------------------------------------------------------------------

    def apply_update(self, update: ModelUpdate | Mapping[str, Any]) -> SyncOutcome:
        """Take a model-update event (applied now if the bundle can be fetched, else pending).
        Raises :class:`PortError` (model-sync answers 503) on a failed buffer, before touching the
        model: its ack could not be recorded, so the swap would go unreported."""
        self.buffer.check_failed()
        parsed = update if isinstance(update, ModelUpdate) else ModelUpdate.model_validate(update)
        return self.sync.request(parsed)

    def status(self) -> dict[str, Any]:
        """What the box runs (model, version, content hash) and what its buffer holds."""
        stats = self.buffer.stats()
        return {
            **self.sync.status(),
            "buffered": stats.rows,
            "buffer_bytes": stats.bytes,
            "local_alerts_pending": stats.local_alerts_pending,
        }

    def model_report(self) -> dict[str, Any]:
        """What model-sync's GET answers: the model running (and what the buffer holds, see
        :meth:`status`), the update waiting for the link, the versions rolled back (never applied again) and the outcomes since this process started
        (applied, refused, rolled back), newest last."""
        pending = self.sync.pending()
        return {
            **self.status(),
            "pending": {"model": pending.model, "version": str(pending.version)} if pending else None,
            "rolled_back": self.sync.store.pointer().rolled_back,
            "outcomes": list(self._outcomes),
        }

    def _ack(self, detail: dict[str, Any]) -> None:
        self._observer(detail)
        self._outcomes.append({**detail, "at": _now()})
        self.buffer.append("ack", {**detail, "box_id": self.box_id, "at": _now()})
        self._wake.set()

    # -- forwarding ---------------------------------------------------------------------------

    def forward_once(self) -> ShipReport | None:
        """One round of the background work: local alert queues, then the buffer to the cloud,
        then a model update that waited for the link."""
        if self.local is not None and self.buffer.stats().local_alerts_pending:
            self.deliver_local()  # (on disk before they leave: LocalAlerts.deliver syncs first)
        if self.shipper is None:
            return None
        report = self.shipper.ship_once()
        if report.online:
            outcome = self.sync.retry_pending()
            if outcome is not None:
                log.info(
                    "model update %s:%s %s: %s",
                    outcome.model,
                    outcome.version,
                    outcome.status,
                    outcome.reason,
                )
                report = self.shipper.ship_once()  # its ack
        return report

    def deliver_local(self) -> None:
        """Send the plant's queues; a failure is logged (the alerts stay queued for the next round)."""
        try:
            self.alerts.deliver()
        except PortError as exc:
            log.error("local alerts not delivered (they stay queued): %s", exc)

    def start(self, *, idle_seconds: float = 1.0) -> None:
        """Run :meth:`forward_once` in a background thread: at once after new work, every
        ``idle_seconds`` otherwise, and after the shipper's backoff while the link is down."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            told = False  # the failed buffer was logged (once: every later round would fail alike)
            while not self._stop.is_set():
                self._wake.clear()  # before the round: work queued during it wakes the next one
                if self._stop.is_set():  # (a stop set between the test above and the clear)
                    break
                if self.buffer.failed is not None:  # nothing to do until the process restarts
                    if not told:
                        log.error("edge forwarding stopped: %s; restart the edge server", self.buffer.failed)
                        told = True
                    self._wake.wait(idle_seconds)
                    continue
                try:
                    report = self.forward_once()
                except Exception:  # the loop must outlive any one failure; the next round retries
                    log.exception("edge forwarding round failed")
                    report = None
                delay = idle_seconds
                if report is not None and report.error and self.shipper is not None:
                    delay = self.shipper.next_delay()
                self._wake.wait(delay)

        self._thread = threading.Thread(target=loop, name="zaindari-edge-forward", daemon=True)
        self._thread.start()
        self._checkpoint_wanted.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="zaindari-edge-checkpoint", daemon=True
        )
        self._checkpointer.start()
        self.buffer.defer_checkpoints(self._checkpoint_wanted.set)

    def _checkpoint_loop(self) -> None:
        """The buffer's write-ahead log checkpoints, off the thread that scores and commits the
        groups (:meth:`EdgeBuffer.defer_checkpoints`): one passive checkpoint each time the
        buffer asks (every 64 group commits)."""
        while True:
            self._checkpoint_wanted.wait()
            self._checkpoint_wanted.clear()
            if self._stop.is_set():
                return
            try:
                self.buffer.checkpoint_passive()
            except Exception:  # (an I/O error poisoned the buffer: the forward loop says so)
                log.exception("edge buffer checkpoint failed")

    def stats(self) -> BufferStats:
        return self.buffer.stats()

    def close(self) -> None:
        """Stop the background thread, close the channels, checkpoint the buffer's write-ahead log
        and close this thread's database handle."""
        if self.conflicts:
            log.info(
                "%d scoring groups were scored again after another process wrote their states", self.conflicts
            )
        self._stop.set()
        self._wake.set()
        self.buffer.defer_checkpoints(None)
        self._checkpoint_wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=30)
            self._checkpointer = None
        # plant alerts of the last groups settled before the stop go out now, not at the next start
        # (one bounded round: at most 100 per channel, a channel down or waiting is skipped)
        if self.local is not None and self.buffer.failed is None:
            try:
                self.deliver_local()
            except Exception:  # a stop must finish
                log.exception("local alerts not delivered at close (they stay queued)")
        if self.local is not None:
            self.local.close()
        try:
            self.buffer.checkpoint()
        except PortError as exc:  # the WAL stays; the next start replays it
            log.warning("edge buffer not checkpointed at close: %s", exc)
        self.buffer.close()


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# -- command line (python -m zaindari.edge.box) ---------------------------------------------------


def _box(settings: Settings, online: bool) -> EdgeBox:
    uplink: Uplink | None = None
    fetcher: BundleFetcher | None = None
    if online:
        from zaindari.infra.edge_uplink import aws_link

        uplink, fetcher = aws_link(settings)
    return EdgeBox.from_settings(settings, uplink=uplink, fetcher=fetcher)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zaindari.edge.box {replay,ship,update,status}``; settings from ``ZAINDARI_*``."""
    import os

    parser = argparse.ArgumentParser(prog="python -m zaindari.edge.box", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    replay = sub.add_parser("replay", help="score a device feed (JSON Lines of readings) in batches, offline")
    replay.add_argument("readings", type=Path)
    replay.add_argument("--batch", type=int, default=10, help="readings per request (default 10)")
    replay.add_argument("--source", default="edge-replay")
    ship = sub.add_parser(
        "ship", help="ship the buffer to AWS (AWS_ENDPOINT_URL and credentials from the env)"
    )
    ship.add_argument("--max-batches", type=int, default=None)
    update = sub.add_parser("update", help="apply a model-update event (a JSON file)")
    update.add_argument("event", type=Path)
    update.add_argument(
        "--offline", action="store_true", help="do not fetch from S3 (local bundle paths only)"
    )
    seed = sub.add_parser("seed", help="install a first model bundle from a local folder")
    seed.add_argument("bundle", type=Path)
    seed.add_argument("--version", default=None)
    seed.add_argument(
        "--golden", type=Path, default=None, help="golden inputs: JSON Lines of normal readings"
    )
    sub.add_parser("status", help="print what the box runs and what its buffer holds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    settings = Settings.from_env(os.environ)
    box = _box(settings, online=args.command == "ship" or (args.command == "update" and not args.offline))
    try:
        if args.command == "replay":
            _replay(box, args.readings, args.batch, args.source)
        elif args.command == "ship":
            report = box.shipper.ship_once(max_batches=args.max_batches) if box.shipper else None
            out = (
                {"online": report.online, "shipped": report.shipped, "error": report.error} if report else {}
            )
            print(json.dumps({**out, "remaining": box.buffer.stats().rows}))
            return 0 if report is not None and report.error is None else 1
        elif args.command == "update":
            outcome = box.apply_update(json.loads(args.event.read_text()))
            print(json.dumps(vars(outcome)))
            return 0 if outcome.status in ("applied", "unchanged", "pending") else 1
        elif args.command == "seed":
            if args.golden is not None:
                write_golden(box.sync.store.golden_path, read_golden(args.golden))
            print(json.dumps(vars(box.sync.seed(args.bundle, version=args.version))))
        else:
            print(json.dumps(box.status()))
    finally:
        box.close()
    return 0


def _replay(box: EdgeBox, path: Path, batch: int, source: str) -> None:
    """Score a feed in batches, printing one JSON line per batch (its first reading and counts)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for begin in range(0, len(lines), batch):
        payload = [json.loads(line) for line in lines[begin : begin + batch]]
        report = box.score_records([InboundRecord(f"{source}-{begin:08d}", payload, source)])
        print(json.dumps({"offset": begin, **report.counts()}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
