"""Store and forward: the edge box's durable buffer (SQLite) and the shipper that empties it.

Everything the box produces while scoring goes into one SQLite database before anything else
happens to it: raw telemetry with its scores, dead letters, alerts, drift window summaries and
version acks,
each a row of one append-only log (``outbox``) numbered by a sequence that is never reused. The
device state the scoring use case keeps (windows, alert hysteresis, keys of readings seen) lives in
the same file. The classes at the bottom adapt the buffer to the core's ports
(:class:`~zaindari.ports.LakeWriter`, :class:`~zaindari.ports.RejectSink`,
:class:`~zaindari.ports.AlertSink`, :class:`~zaindari.ports.StateStore`), so
:class:`zaindari.event_scoring.EventScoring` writes into it unchanged.

Files. ``score-file``'s outputs arrive as ready lake objects (kind ``object``: a key and its bytes,
kept in ``outbox_blobs``), written with their manifest and alerts in one transaction by
:class:`zaindari.edge.file_outbox.BufferedFileSink`, and shipped as they are under their keys.

Durability. WAL mode with ``synchronous=FULL``: every commit is fsynced before the call returns.
``NORMAL`` would survive a killed process (the WAL is in the OS's page cache) but may lose the last
commits on a power cut, and at the edge a power cut is the usual way a box stops; a device whose
request was answered has forgotten its readings, so an answered batch must be on disk. The price is
one fsync per commit, not per reading (``bench/bench_edge_buffer.py`` measures both). The edge box
scores each group of requests inside :meth:`EdgeBuffer.transaction`: everything the group writes,
device state included, is one transaction and one fsync (a group commit), so a crash keeps all of
it or none. The edge server commits a group without waiting for the disk
(``transaction(durable=False)``) and answers it after :meth:`EdgeBuffer.sync` (one fsync of the
log for every group committed meanwhile), scoring the next group in between. A failed
fsync leaves the buffer refusing every write until the process restarts (:meth:`EdgeBuffer.sync`). Outside a transaction, device state alone is committed without waiting for the disk:
the next durable commit persists it (the WAL is written in order), and if a power cut takes the
last state write, the readings the devices send again are recognised by the keys the log keeps
with their scores and alerts (nothing is buffered twice); windows and alert hysteresis then miss
that one request's update.

Shipping. :class:`Shipper` sends the log to the cloud strictly in sequence order through an
:class:`Uplink` (S3 and EventBridge: ``zaindari.infra.edge_uplink``). Consecutive rows of one kind
and date are merged into one object. Before sending, the shipper records its *plan* (first and last
sequence numbers) in the database; after a crash the same plan is sent again, so the object gets the
same name (``edge-<box>-<epoch>-<first seq>``) and overwrites itself: each score row lands exactly
once. EventBridge has no idempotent put: a crash after ``PutEvents`` succeeded and before the row
was deleted sends that one event again, with the same ``alert_id`` and ``kind`` that consumers
de-duplicate on (as in the cloud path).

Bounded size. ``max_bytes`` bounds the log (compressed payload bytes). When an append would pass
it, the oldest raw scores are *compacted* (:func:`compact_scores`): per device and hour, counts and
score statistics replace the readings (raw telemetry is given up: this is the stated price of a box
offline for longer than its disk allows). Alerts, dead letters, summaries and acks are never
dropped or compacted; drift window summaries are merged (one per model version and window: their
counts add up, so nothing the drift monitor reads is lost; :meth:`EdgeBuffer.append_drift` already
keeps one row per window, so this merges rows written while their window's row was in flight, and
posted files' rows). A file's score objects are compacted the same way, after the event scores.
When nothing is left to compact, they are kept beyond the bound, and new scores are stored
compacted at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import sqlite3
import threading
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import orjson

from zaindari.alerting import Alert
from zaindari.contract import Reading
from zaindari.drift import SummaryStore, WindowSummary
from zaindari.jsonable import json_default
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

__all__ = [
    "ACK_DETAIL_TYPE",
    "BufferStats",
    "BufferedAlerts",
    "BufferedLake",
    "BufferedRejects",
    "BufferedSummaries",
    "EdgeBuffer",
    "Entry",
    "ShipReport",
    "Shipper",
    "SqliteStateStore",
    "StateConflict",
    "Uplink",
    "buffered_alert",
    "compact_scores",
    "compact_scores_file",
]

Kind = Literal["scores", "reject", "alert", "summary", "drift", "ack", "object"]
ACK_DETAIL_TYPE = "Zaindari Edge Ack"

# Lake prefixes of what the box ships (the cloud's layout; object names start with ``edge-``).
RAW_PREFIX = "raw/telemetry"
SCORES_PREFIX = "scores/events"
QUARANTINE_PREFIX = "quarantine/events"
SUMMARIES_PREFIX = "summaries/edge"

log = logging.getLogger(__name__)
#: SQLite's primary result code for an I/O error (``sqlite3.Error.sqlite_errorcode & 0xFF``)
_SQLITE_IOERR = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after rows are deleted
    kind TEXT NOT NULL,
    day TEXT NOT NULL,                      -- lake date partition ('' for events)
    items INTEGER NOT NULL,                 -- readings, rows or alerts held
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    body BLOB NOT NULL                      -- zlib-compressed JSON
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, seq);
CREATE TABLE IF NOT EXISTS written (        -- keys already in the log, for idempotent appends
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS local_alerts (   -- alerts the plant's own channels have not taken yet
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS device_state (
    device_id TEXT PRIMARY KEY,
    state BLOB NOT NULL,
    updated_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0      -- bumped by every write (optimistic concurrency)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_seen (  -- each device's remembered reading keys, oldest first
    device_id TEXT NOT NULL,
    n INTEGER NOT NULL,                     -- the key's position in the device's sequence of keys
    key TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (device_id, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_blobs (  -- the bytes of 'object' rows (ready lake objects)
    seq INTEGER PRIMARY KEY,
    key TEXT,                              -- the object's lake key (read without decoding the row)
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS drift_open (  -- per window, the drift row new summaries are added to
    slot TEXT PRIMARY KEY,                 -- source, model version, baseline id, window start
    seq INTEGER NOT NULL,
    token INTEGER NOT NULL DEFAULT 0       -- drawn at each write: a process's copy is current if equal
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


_BUMP = (
    "INSERT INTO meta (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = CAST(value AS INTEGER) + ?"
)


# a device's state row (its version bumped; 1 for a new row)
_SAVE_STATE = (
    "INSERT INTO device_state (device_id, state, updated_at, version, seen_from, seen_next, seen_last) "
    "VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET state = excluded.state, "
    "updated_at = excluded.updated_at, version = device_state.version + 1, "
    "seen_from = excluded.seen_from, seen_next = excluded.seen_next, seen_last = excluded.seen_last"
)

# what append_drift reads of a window's slot: whether the write's key is in the log, the
# shipper's plan, and the window's open drift row (seq, token, bytes; NULL bytes: none open)
_DRIFT_SLOT = (
    "SELECT EXISTS (SELECT 1 FROM written WHERE key = ?), (SELECT value FROM meta WHERE name = 'plan'), "
    "d.seq, d.token, o.bytes FROM (SELECT ? AS slot) AS s LEFT JOIN drift_open d ON d.slot = s.slot "
    "LEFT JOIN outbox o ON o.seq = d.seq AND o.kind = 'drift'"
)


# SQLite's automatic checkpoint (pages of the write-ahead log), and the bound on it while the
# checkpoints are left to a background thread that is called every _CHECKPOINT_EVERY commits
# (EdgeBuffer.defer_checkpoints)
_AUTOCHECKPOINT_PAGES = 1000
_BACKSTOP_PAGES = 3_000
_CHECKPOINT_EVERY = 64
# a log this long is checkpointed to its end under the writers' lock (checkpoint_passive)
_RESTART_PAGES = 2_000

# keys appended, given as one JSON array (json_each: built into SQLite since 3.38, and in the
# JSON1 extension that Debian's and Python's builds carried before)
_REMEMBER_ALL = "INSERT OR IGNORE INTO written (key) SELECT value FROM json_each(?)"


def _reading_key(score: Mapping[str, Any]) -> str:
    """A score row's reading key as the log's key memory (``written``) holds it: after the
    reading's timestamp (``<timestamp>/<record_key>``; '' when the row has no key).

    The keys are hashes: one per reading of a group of 8 was one random leaf of the key index
    rewritten per group, ~8 of its ~25 pages of write-ahead log. After their timestamps, a
    group's keys (readings of the same moments) share a leaf or two at the index's end. Keys a
    buffer held before (bare hashes) are not looked up: a reading sent again that old is found
    by its device's memory of keys, or refused as too old to deduplicate (its state's
    ``evicted_until``), as it is by code older than the key memory; code older than this
    change looks up bare keys, and finds readings sent again by the same device memory."""
    key = score.get("record_key")
    return f"{score['timestamp']}/{key}" if key else ""


def _parse_plan(value: Any) -> tuple[int, int] | None:
    """The shipper's plan (``meta`` row ``plan``: first and last sequence numbers), or None."""
    if not value:
        return None
    low, high = (int(x) for x in str(value).split(":"))
    return low, high


def _encode(data: Any) -> bytes:
    """``data`` as zlib-compressed JSON (what ``_decode`` and every older buffer's reader take).

    Level 1 with ``memLevel=5``: deflate sets up (and clears) its hash table at each call, 64
    KiB at the default ``memLevel`` 8 and 8 KiB at 5; a group's ~5 KB score row compresses to
    the same size (within 0.1 %) with 16 % fewer instructions (callgrind, 200 score rows of the
    benchmark's plant: 270,000 against 228,000 per row)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 5)
    return (
        packer.compress(orjson.dumps(data, default=json_default, option=orjson.OPT_SERIALIZE_NUMPY))
        + packer.flush()
    )


def _decode(body: bytes) -> Any:
    # device states are stored as plain JSON (``DeviceState.to_json``: compressing them cost more
    # than the rest of their write); everything else, and states written before, is zlib-compressed
    return orjson.loads(body if body[:1] == b"{" else zlib.decompress(body))


class StateConflict(Exception):
    """Raised at the first write of a :meth:`EdgeBuffer.transaction` when a device state read in it
    (before the write lock) was written since by another process: nothing of the transaction is
    kept; score the group again with ``transaction(immediate=True)``."""


#: a device state row's ``(seen_from, seen_next, seen_last)``: where its keys are in ``device_seen``
#: (None: no row, or its keys are in its JSON)
_SeenRow = tuple[int, int, str | None] | None


@dataclass
class _Transaction:
    """A thread's :meth:`EdgeBuffer.transaction` in progress."""

    begun: bool = False
    #: device -> version of each device state read before the write lock (0: no state yet),
    #: checked when the lock is taken
    read_versions: dict[str, int] = field(default_factory=dict)
    #: device states written in it, with their new versions and key rows: kept in memory at commit
    states: dict[str, tuple[int, DeviceState, _SeenRow]] = field(default_factory=dict)
    #: the cross-process write lock file held for it (see :meth:`EdgeBuffer._lock_writers`)
    lock: IO[bytes] | None = None
    #: committed without waiting for the disk (``transaction(durable=False)``; :meth:`EdgeBuffer.sync`)
    relaxed: bool = False
    #: why a write inside failed (the transaction is rolled back at its end); None: none did
    broken: str | None = None
    #: counters of ``meta`` as read under the write lock, and what the transaction adds to them
    #: (written once, at the commit)
    counters: dict[str, int] = field(default_factory=dict)
    deltas: dict[str, int] = field(default_factory=dict)
    #: keys appended in it (:meth:`EdgeBuffer._remember`), inserted into ``written`` at the commit
    #: but those its device states hold (``held``; see :meth:`EdgeBuffer._flush`)
    keys: dict[str, None] = field(default_factory=dict)
    #: device -> the reading keys of its scores appended (or found in the log) in it, each with
    #: its record key (the hash a device state remembers)
    reading_keys: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: of those, the ones the device's state saved in it remembers (as last saved)
    held: set[str] = field(default_factory=set)
    #: keys of drift writes appended in it (:meth:`EdgeBuffer.append_drift`)
    drift_keys: set[str] = field(default_factory=set)
    #: whether the scores appended in it were all new to the log (None: none appended)
    scores_new: bool | None = None
    #: drift window slot -> its open row as written in it (seq, token, bytes), kept at the commit
    drift_rows: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    #: drift rows merged or deleted in it (compaction): what the connection knew of them is stale
    drift_moved: bool = False
    #: device -> its row's version and ``(seen_from, seen_next, seen_last)`` as read or written in
    #: it (0 and None: no row); what the row holds once the versions read are checked at the lock
    rows: dict[str, tuple[int, _SeenRow]] = field(default_factory=dict)


@dataclass
class _Memory:
    """What a thread's connection knows of the database without reading it again: the version
    of device state rows and the ``meta`` counters as of its ``PRAGMA data_version`` ``seen``,
    with its own transactions' changes since. ``data_version`` changes only when another
    connection (another thread or process) commits, so while it is still ``seen``, what is held
    here is what the rows hold (None: nothing is known)."""

    seen: int | None = None
    #: device -> its row's version (0: no row)
    versions: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    #: at least the greatest reading key in the log's key memory (see EdgeBuffer._all_new; None:
    #: unknown): a group's keys held by its device states count too, though not written
    #: (EdgeBuffer._flush), so _all_new is only ever more cautious
    top: str | None = None
    #: the shipper's plan (``meta`` row ``plan``) as read, if ``plan_known``
    plan: tuple[int, int] | None = None
    plan_known: bool = False
    #: drift window slot -> its open row (seq, token, bytes) as read or written (EdgeBuffer.append_drift)
    drift: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def reset(self, seen: int | None) -> None:
        self.seen = seen
        self.versions = {}
        self.counters = {}
        self.top = None
        self.plan, self.plan_known = None, False
        self.drift = {}


class _Scope:
    """:meth:`EdgeBuffer.transaction` as a context manager."""

    __slots__ = ("buffer", "durable", "immediate", "txn")

    def __init__(self, buffer: EdgeBuffer, immediate: bool, durable: bool) -> None:
        self.buffer = buffer
        self.immediate = immediate
        self.durable = durable
        self.txn: _Transaction | None = None

    def __enter__(self) -> None:
        self.txn = self.buffer._open(self.immediate, self.durable)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        txn, self.txn = self.txn, None
        if txn is None:  # joined an outer transaction: it ends there
            return
        if kind is not None:
            self.buffer._abandon(txn)
            return
        self.buffer._close(txn)


class _Joined:
    """:meth:`EdgeBuffer._write` inside a transaction: the write lock taken at the first write;
    one that fails breaks the transaction."""

    __slots__ = ("buffer", "txn")

    def __init__(self, buffer: EdgeBuffer, txn: _Transaction) -> None:
        self.buffer = buffer
        self.txn = txn

    def __enter__(self) -> sqlite3.Connection:
        buffer, txn = self.buffer, self.txn
        db = buffer._db()
        if not txn.begun:
            try:
                buffer._begin(txn, db)
            except BaseException as exc:
                instead = buffer._join_failed(txn, exc)
                if instead is not None:
                    raise instead from exc
                raise
        return db

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            instead = self.buffer._join_failed(self.txn, exc)
            if instead is not None:
                raise instead from exc


@dataclass(frozen=True)
class Entry:
    """One row of the log as the shipper sees it."""

    seq: int
    kind: str
    day: str
    items: int
    body: Any


@dataclass(frozen=True)
class BufferStats:
    """What the buffer holds now, and what it has done since it was created."""

    rows: dict[str, int]
    items: dict[str, int]
    kind_bytes: dict[str, int]
    bytes: int
    max_bytes: int
    local_alerts_pending: int
    compacted_readings: int
    shipped_rows: int

    @property
    def over_limit(self) -> bool:
        return self.bytes > self.max_bytes


class EdgeBuffer:
    """The durable log, the device states and the local-alert queue, in one SQLite file.

    Parameters
    ----------
    path
        The database file (its folder is created). One box, one file.
    max_bytes
        Bound on the log's compressed payload bytes (see the module docstring for the policy).
    synchronous
        SQLite ``synchronous`` pragma: ``FULL`` (default, survives a power cut) or ``NORMAL``
        (survives a killed process only; for benchmarks and throwaway boxes).
    key_memory
        How many appended keys (reading keys of buffered scores, alert keys) are remembered to
        make a repeated append a no-op (a batch re-scored after a crash between the lake write and
        the state write).
    compact_chunk
        Rows of raw scores compacted at a time.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        key_memory: int = 200_000,
        compact_chunk: int = 256,
    ) -> None:
        if max_bytes < 1024:
            raise ValueError("max_bytes must be at least 1024")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.synchronous = synchronous
        self.key_memory = key_memory
        self.compact_chunk = compact_chunk
        self._local = threading.local()
        self._untrimmed = 0  # keys remembered since the key memory was last trimmed
        # device states as last written by this process, with their versions and key rows: one is
        # used while its row still has that version (no other process wrote it since)
        self._states: dict[str, tuple[int, DeviceState, _SeenRow]] = {}
        self._states_lock = threading.Lock()
        # each window's open drift row as this process last wrote it: slot -> (seq, token, body
        # without its summary, summary); used while the row's token is still the one written
        self._drift: dict[str, tuple[int, int, dict[str, Any], WindowSummary]] = {}
        #: why the buffer refuses every write: a failed fsync (see :meth:`sync`); None: healthy
        self.failed: str | None = None
        #: called once with the reason when the buffer fails (e.g. to fail a health check)
        self.on_failed: Callable[[str], object] | None = None
        # one long-lived handle on the write-ahead log, fsynced by sync(): Linux reports a
        # writeback error once per open file, so a handle opened after SQLite's own fsync saw it
        # would sync "successfully"; one open since before the error still sees it
        self._wal_fd: int | None = None
        self._wal_lock = threading.Lock()
        # checkpoints left to a background thread (defer_checkpoints): called every
        # _CHECKPOINT_EVERY commits of a transaction; None: each connection checkpoints itself
        self._checkpoint_due: Callable[[], object] | None = None
        self._commits = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db()  # creates the schema
        self._migrate()
        with self._wal_lock, contextlib.suppress(OSError):
            self._wal_handle()
        # names shipped objects with the sequence: a re-created database must not reuse them
        self.epoch = self._meta_default("epoch", uuid.uuid4().hex[:8])

    # -- connections and transactions -----------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections are not shared between threads)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("PRAGMA foreign_keys=OFF")
            db.executescript(_SCHEMA)
            self._local.db = db
            self._local.relaxed = False  # at the buffer's own synchronous level (_synchronous)
            self._local.autocheckpoint = _AUTOCHECKPOINT_PAGES  # SQLite's default (see _begin)
            self._local.memory = _Memory()  # (data_version numbers are the connection's own)
        return db

    def _migrate(self) -> None:
        """Bring a buffer made by an earlier version up to this schema (idempotent)."""
        db = self._db()
        columns = {row[1] for row in db.execute("PRAGMA table_info(device_state)")}
        if "version" not in columns:
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
                db.execute("ALTER TABLE device_state ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
        # a state's remembered keys in device_seen, rows seen_from .. seen_next - 1 (NULL: in its JSON)
        for column in ("seen_from INTEGER", "seen_next INTEGER", "seen_last TEXT"):
            if column.split()[0] not in columns:
                with contextlib.suppress(sqlite3.OperationalError):
                    db.execute(f"ALTER TABLE device_state ADD COLUMN {column}")
        self._objects_schema(db)

    def _objects_schema(self, db: sqlite3.Connection) -> None:
        """Object rows keep their key beside their bytes (``outbox_blobs.key``, read through its
        index): a buffer made before gets the column, filled from each row, in one transaction."""
        if not any(column[1] == "key" for column in db.execute("PRAGMA table_info(outbox_blobs)")):
            db.execute("BEGIN IMMEDIATE")
            try:
                # another process may have migrated it while this one waited for the lock
                if not any(column[1] == "key" for column in db.execute("PRAGMA table_info(outbox_blobs)")):
                    db.execute("ALTER TABLE outbox_blobs ADD COLUMN key TEXT")
                    rows = db.execute(
                        "SELECT o.seq, o.body FROM outbox o JOIN outbox_blobs b ON b.seq = o.seq "
                        "WHERE o.kind = 'object'"
                    ).fetchall()
                    db.executemany(
                        "UPDATE outbox_blobs SET key = ? WHERE seq = ?",
                        [(_decode(body)["key"], seq) for seq, body in rows],
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        # in an old buffer the column comes after the bytes, in their pages: read through this index
        db.execute("CREATE INDEX IF NOT EXISTS outbox_blobs_key ON outbox_blobs (key)")

    def transaction(self, *, immediate: bool = False, durable: bool = True) -> _Scope:
        """Everything this thread writes inside is one transaction, committed (one fsync) at the
        end: a group commit. A write inside that fails raises :class:`PortError` as it would on
        its own and breaks the transaction: at its end nothing of it is kept and
        :class:`PortError` is raised (the caller answers every record of the group ``retry``).
        If the commit fails, likewise. Nested calls join the outer transaction. (Each write
        used to be a savepoint, undone alone: two statements more per write, ~8 per group,
        for a case that at the edge, one SQLite file, fails the other writes too.)

        The ``meta`` counters (the log's bytes...) and the keys appended (``written``) are kept
        in memory while it is open and written once, just before the commit.

        The write lock is taken at the first write (``immediate``: at once). Device states read
        inside before it (:meth:`load_states`) are checked then: if another process wrote one
        since, :class:`StateConflict` is raised (and nothing is kept). Under ``immediate``, states
        are read under the lock, so no conflict can arise.

        ``durable=False`` commits without waiting for the disk: the transaction is committed (other
        connections see it; a killed process keeps it) but a power cut may take it until
        :meth:`sync` returns. A caller that answers for what it wrote calls :meth:`sync` first;
        meanwhile the next transaction can be written (the edge server scores the next group
        while the disk flushes this one).

        (A plain context manager, not ``contextlib``'s generator: it is entered once per group.)
        """
        return _Scope(self, immediate, durable)

    def _open(self, immediate: bool, durable: bool) -> _Transaction | None:
        """Start this thread's transaction (None: one is open already, which the caller joins)."""
        local = self._local
        if getattr(local, "txn", None) is not None:
            return None
        self.check_failed()
        txn = _Transaction(relaxed=not durable and self.synchronous == "FULL")
        local.txn = txn
        if immediate:
            try:
                self._begin(txn, self._db())
            except BaseException:
                self._abandon(txn)
                raise
        return txn

    def _abandon(self, txn: _Transaction) -> None:
        """End ``txn`` after an exception inside it: rolled back, nothing of it kept."""
        self._local.txn = None
        if txn.begun:
            with contextlib.suppress(sqlite3.Error):
                self._db().execute("ROLLBACK")
        self._unlock_writers(txn)

    def _close(self, txn: _Transaction) -> None:
        """End ``txn`` whose body returned: committed, or rolled back if a write inside failed."""
        self._local.txn = None
        if not txn.begun:
            if txn.broken is not None:  # its first write could not take the write lock
                raise PortError(f"edge buffer {self.path}: a write of the transaction failed: {txn.broken}")
            return
        db = self._db()
        try:
            if self.failed is not None or txn.broken is not None:
                # poisoned while it was open (another thread's sync), or a write inside failed
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                self.check_failed()
                raise PortError(f"edge buffer {self.path}: a write of the transaction failed: {txn.broken}")
            self._flush(txn, db)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._poison_on_io_error(exc)
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise PortError(f"edge buffer {self.path}: {exc}") from exc
        except BaseException:
            # anything else (a key orjson or SQLite cannot encode: a lone surrogate) rolls it
            # back too: a connection left inside BEGIN IMMEDIATE once the file lock is released
            # would hold SQLite's write lock and wedge every other writer
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        finally:
            self._unlock_writers(txn)
        # committed: this connection's memory now holds what the transaction wrote (no other
        # connection wrote meanwhile: it held the write lock since its _begin checked)
        memory: _Memory = self._local.memory
        memory.versions.update((device, kept[0]) for device, kept in txn.states.items())
        memory.counters = {
            name: stored + txn.deltas.get(name, 0) for name, stored in txn.counters.items()
        }  # (a counter bumped without being read is read again next time)
        if memory.top is not None:
            memory.top = max(memory.top, max((k for k in txn.keys if k < ":"), default=""))
        if txn.drift_moved:
            memory.drift = {}
        elif txn.drift_rows:
            if len(memory.drift) > 256:  # windows long shipped; the current ones are read again once
                memory.drift = {}
            memory.drift.update(txn.drift_rows)
        if txn.states:
            with self._states_lock:
                self._states.update(txn.states)
        due = self._checkpoint_due
        if due is not None:
            self._commits += 1
            if self._commits >= _CHECKPOINT_EVERY:
                self._commits = 0
                due()

    def _begin(self, txn: _Transaction, db: sqlite3.Connection) -> None:
        """Take the write lock for ``txn`` and check the device states it read before.

        When no other connection committed since this connection's memory was current (``PRAGMA
        data_version`` unchanged, one statement), the versions read before the lock are still
        those of the rows and the ``meta`` counters those remembered: nothing is read again."""
        self._lock_writers(txn)
        try:
            self._synchronous(db, relaxed=txn.relaxed)
            pages = _BACKSTOP_PAGES if self._checkpoint_due is not None else _AUTOCHECKPOINT_PAGES
            if getattr(self._local, "autocheckpoint", _AUTOCHECKPOINT_PAGES) != pages:
                db.execute(f"PRAGMA wal_autocheckpoint={pages}")
                self._local.autocheckpoint = pages
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._unlock_writers(txn)
            raise PortError(f"edge buffer {self.path}: {exc}") from exc
        txn.begun = True
        memory: _Memory = self._local.memory
        seen = self._data_version(db)
        if seen == memory.seen:
            txn.counters.update(memory.counters)
            return
        memory.reset(seen)
        if txn.read_versions:
            now = self._versions(db, list(txn.read_versions))
            memory.versions.update((d, now.get(d, 0)) for d in txn.read_versions)
            changed = sorted(d for d, v in txn.read_versions.items() if now.get(d, 0) != v)
            if changed:
                raise StateConflict(f"device states written by another process: {', '.join(changed[:5])}")

    @staticmethod
    def _data_version(db: sqlite3.Connection) -> int:
        """``PRAGMA data_version``: changes when another connection commits (not this one)."""
        return int(db.execute("PRAGMA data_version").fetchone()[0])

    def _synchronous(self, db: sqlite3.Connection, *, relaxed: bool) -> None:
        """Set this thread's connection to ``synchronous=NORMAL`` for a transaction committed
        without waiting for the disk, or back to the buffer's own level for one that waits; left
        as it is between transactions (the edge server's scorer commits every group relaxed: two
        statements a group less). Only a write transaction commits, and each sets it first.
        (SQLite refuses to change it inside a transaction.)"""
        if getattr(self._local, "relaxed", False) == relaxed:
            return
        db.execute(f"PRAGMA synchronous={'NORMAL' if relaxed else self.synchronous}")
        self._local.relaxed = relaxed

    def _flush(self, txn: _Transaction, db: sqlite3.Connection) -> None:
        """Write what ``txn`` kept in memory: its keys appended and its counters.

        The keys of readings that a device state saved in ``txn`` remembers are not written to
        ``written``: that state, committed with them, is their memory. The log's key memory only
        guards appends against a batch scored again, and such a reading cannot be scored again:
        the scoring use case drops a reading its device remembers (a duplicate) and refuses one
        older than what the device has forgotten (``DeviceState.too_late``: every key it forgot
        is at most that old). A device's memory only loses keys that way: each state saved in a
        transaction follows the one its versions were read from (:meth:`_begin`), in the same
        commit as the scores. The same holds for the transaction's drift writes when every
        reading of its scores is so held: a drift write is named after the readings it counts
        (``EventScoring``), which cannot be scored again either. Anything else is remembered as
        before (keys written outside a transaction, or not held by a state saved in it: a
        crash between two separate writes is what ``written`` is for). So is an older buffer:
        its keys stay in ``written`` and are looked up as before. Half the group's pages of
        write-ahead log were ``written``'s (its key index and rows), and one statement."""
        if txn.keys:
            held = txn.held
            if held or txn.drift_keys:
                tracked = sum(len(keys) for keys in txn.reading_keys.values())
                all_held = tracked > 0 and len(held) == tracked
                keys = [k for k in txn.keys if k not in held and not (all_held and k in txn.drift_keys)]
            else:
                keys = list(txn.keys)
            if keys:
                self._remember_now(db, keys)
        deltas = [(name, str(delta), delta) for name, delta in txn.deltas.items() if delta]
        if len(deltas) == 1:  # (the usual group: its bytes)
            db.execute(_BUMP, deltas[0])
        elif deltas:
            db.executemany(_BUMP, deltas)

    def sync(self) -> None:
        """Flush to disk every transaction committed so far (``transaction(durable=False)``):
        one ``fsync`` of the write-ahead log, which holds them in order (a checkpoint has
        already synced what it copied out of it). Raises :class:`PortError` when the disk fails.

        A failed fsync poisons the buffer (as PostgreSQL does): the kernel may have dropped the
        pages it could not write and a later fsync that succeeds proves nothing about them, yet
        the transactions they hold are committed and visible here (their reading keys remembered,
        the states cached). Answering a resent request ``duplicate`` from them would lose its
        readings. So from then on every transaction and sync of this buffer raises
        :class:`PortError` (score-event answers 503, retry) until the process restarts and
        reopens the buffer: SQLite then reads what the disk really holds."""
        self.check_failed()
        if self.synchronous != "FULL":
            return
        with self._wal_lock:
            try:
                fd = self._wal_handle()
            except FileNotFoundError:  # no log: nothing committed since the last checkpoint
                return
            except OSError as exc:
                raise PortError(f"edge buffer {self.path}: {exc}") from exc
            try:
                os.fsync(fd)
            except OSError as exc:
                self._poison(f"fsync of {self.path}-wal failed: {exc}")
                raise PortError(f"edge buffer {self.path}: {exc}; restart the edge server") from exc

    def _wal_handle(self) -> int:
        """The long-lived handle on the write-ahead log (under ``_wal_lock``): opened once, opened
        again only when the path names another file (the log was deleted and made anew, e.g. after
        every connection closed). Raises ``FileNotFoundError`` when there is no log."""
        wal = f"{self.path}-wal"
        now = os.stat(wal)
        if self._wal_fd is not None:
            held = os.fstat(self._wal_fd)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return self._wal_fd
            os.close(self._wal_fd)
            self._wal_fd = None
        self._wal_fd = os.open(wal, os.O_RDONLY)
        return self._wal_fd

    def _poison(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
            log.error(
                "edge buffer %s: %s; it refuses every write now: restart the edge server", self.path, why
            )
            if self.on_failed is not None:
                try:
                    self.on_failed(why)
                except Exception:  # the buffer refuses writes whatever the hook does
                    log.exception("edge buffer %s: its on_failed hook failed", self.path)

    def _poison_on_io_error(self, exc: sqlite3.Error) -> None:
        """SQLite's own fsync (a durable commit, an auto-checkpoint) may be the one the kernel
        reports a writeback error to, once: an I/O error from a commit or a write poisons the
        buffer as a failed :meth:`sync` does."""
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_IOERR:
            self._poison(f"SQLite I/O error on {self.path}: {exc}")

    def check_failed(self) -> None:
        """Raise :class:`PortError` if the buffer is poisoned (:meth:`sync`)."""
        if self.failed is not None:
            raise PortError(f"edge buffer {self.path}: {self.failed}; restart the edge server")

    def _lock_writers(self, txn: _Transaction) -> None:
        """Queue for the write lock on a file lock (``<buffer>.write.lock``) before SQLite's own:
        a writer waiting on SQLite's lock polls (sleeping 1 ms, then longer), one waiting on the
        file lock is woken when it is released. Worker processes of one box commit groups
        hundreds of times a second, so the wait is usually a fraction of a millisecond."""
        import fcntl

        # one handle per thread (flock excludes open files, so threads exclude each other too)
        handle: IO[bytes] | None = getattr(self._local, "write_lock", None)
        if handle is None:
            handle = self.path.with_name(self.path.name + ".write.lock").open("ab")
            self._local.write_lock = handle
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        txn.lock = handle

    def writers_busy(self) -> bool:
        """Whether a writer (a thread or process of this box) holds the write lock now: a probe
        that takes nothing (the lock taken and let go at once, or found held). The edge server's
        event loop asks it before scoring a group on the loop (see
        :class:`zaindari.edge.wiring.BatchingEventScoring`)."""
        import fcntl

        probe: IO[bytes] | None = getattr(self._local, "write_probe", None)
        if probe is None:
            probe = self.path.with_name(self.path.name + ".write.lock").open("ab")
            self._local.write_probe = probe
        try:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
        return False

    @staticmethod
    def _unlock_writers(txn: _Transaction) -> None:
        if txn.lock is not None:
            import fcntl

            fcntl.flock(txn.lock.fileno(), fcntl.LOCK_UN)
            txn.lock = None

    @contextlib.contextmanager
    def process_lock(self, name: str) -> Iterator[None]:
        """Hold the box-wide lock ``name`` (a blocking ``flock`` on ``<buffer>.<name>.lock``,
        released if its holder dies): one thread of one process of the box at a time."""
        import fcntl

        with self.path.with_name(f"{self.path.name}.{name}.lock").open("ab") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield

    @staticmethod
    def _versions(db: sqlite3.Connection, devices: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for begin in range(0, len(devices), 500):
            chunk = list(devices[begin : begin + 500])
            marks = ",".join("?" * len(chunk))
            out.update(
                db.execute(f"SELECT device_id, version FROM device_state WHERE device_id IN ({marks})", chunk)
            )
        return out

    def in_transaction(self) -> bool:
        """Whether this thread is inside :meth:`transaction`."""
        return getattr(self._local, "txn", None) is not None

    def _write(self, *, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction (taken at once, so two writers queue instead of deadlocking).

        ``durable=False`` commits without waiting for the disk (``synchronous=NORMAL`` for this
        transaction): the next durable commit fsyncs the WAL, and this one with it, in order.
        Inside :meth:`transaction`, part of it (committed with it; one that fails breaks it; a
        plain context manager: a group enters it four times or more).
        """
        txn: _Transaction | None = getattr(self._local, "txn", None)
        if txn is not None:
            return _Joined(self, txn)
        return self._own_write(durable)

    @contextlib.contextmanager
    def _own_write(self, durable: bool) -> Iterator[sqlite3.Connection]:
        """:meth:`_write` outside :meth:`transaction`."""
        self.check_failed()
        db = self._db()
        relaxed = not durable and self.synchronous == "FULL"
        try:
            self._synchronous(db, relaxed=relaxed)
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise PortError(f"edge buffer {self.path}: {exc}") from exc
        # this connection's own writes outside a transaction do not change its data_version:
        # what its memory holds may no longer be what the rows hold
        self._local.memory.reset(None)
        try:
            yield db
            self.check_failed()  # poisoned while it was open: roll back (below), never commit
            db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                self._poison_on_io_error(exc)
                raise PortError(f"edge buffer {self.path}: {exc}") from exc
            raise

    def _join_failed(self, txn: _Transaction, exc: BaseException) -> BaseException | None:
        """A write inside ``txn`` failed with ``exc``: it breaks the transaction (rolled back at
        its end, see :meth:`transaction`). Returns the :class:`PortError` to raise instead of an
        SQLite error (None: raise ``exc``). A :class:`StateConflict` (from :meth:`_begin`: the
        caller scores the group again) breaks it too, in case a caller swallowed it: the
        transaction must not commit states read before the lock."""
        txn.broken = txn.broken or f"{type(exc).__name__}: {exc}"
        if isinstance(exc, sqlite3.Error):
            self._poison_on_io_error(exc)
            return PortError(f"edge buffer {self.path}: {exc}")
        return None

    def defer_checkpoints(self, due: Callable[[], object] | None) -> None:
        """Leave the write-ahead log's checkpoints to a background thread: ``due`` is called
        (on the committing thread) every 64 commits of :meth:`transaction`, and that thread then
        calls :meth:`checkpoint_passive`, which past 2,000 pages of log copies its end under the
        writers' lock so that the next commit starts the log over (a passive checkpoint beside a
        busy writer never catches up with it by itself). A connection committing a transaction
        checkpoints the log itself only past 3,000 pages (12 MiB; little is left to copy by
        then); None: back to SQLite's own 1,000.

        SQLite's automatic checkpoint runs in the connection whose commit takes the log past its
        size, the edge server's event loop: every ~40 groups of 8 one commit copied the pages of
        1,000 frames and fsynced the database file, ~1 ms: ~25 µs per group on average, and a
        latency spike for the requests of that group. A passive checkpoint on another thread
        runs beside the loop's commits (SQLite releases the GIL while it works)."""
        self._checkpoint_due = due

    def checkpoint_passive(self) -> None:
        """Copy what it can of the write-ahead log into the database file without waiting for
        other connections (``wal_checkpoint(PASSIVE)``), on this thread's connection; nothing on
        a failed buffer (:meth:`sync`). An I/O error poisons the buffer."""
        if self.failed is not None:
            return
        try:
            db = self._db()
            _, log, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if log >= _RESTART_PAGES:
                # the log starts over only at a commit that finds all of it copied, which a busy
                # writer never leaves time for (it commits again while the fsync runs): what it
                # added meanwhile (a few commits) is copied under the writers' lock, so the next
                # commit writes from the log's start (the loop waits at most for that copy)
                txn = _Transaction()
                self._lock_writers(txn)
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                finally:
                    self._unlock_writers(txn)
        except sqlite3.Error as exc:
            self._poison_on_io_error(exc)
            raise PortError(f"edge buffer {self.path}: {exc}") from exc

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file and empty it (a clean stop); refused
        on a failed buffer (:meth:`sync`): the restart reads the log as the disk holds it."""
        self.check_failed()
        try:
            self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self._poison_on_io_error(exc)
            raise PortError(f"edge buffer {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends) and the handle
        on the write-ahead log (opened again by the next :meth:`sync`)."""
        with self._wal_lock:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
        for name in ("write_lock", "write_probe"):
            lock: IO[bytes] | None = getattr(self._local, name, None)
            if lock is not None:
                lock.close()
                setattr(self._local, name, None)

    def _meta_default(self, name: str, value: str) -> str:
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", (name, value))
            row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0])

    def _counter(self, db: sqlite3.Connection, name: str) -> int:
        """Counter ``name`` of ``meta``, with what this thread's transaction adds to it."""
        txn: _Transaction | None = getattr(self._local, "txn", None)
        if txn is not None and txn.begun:  # (under the write lock: no other writer moves it)
            stored = txn.counters.get(name)
            if stored is None:
                stored = txn.counters[name] = self._stored_counter(db, name)
            return stored + txn.deltas.get(name, 0)
        return self._stored_counter(db, name)

    @staticmethod
    def _stored_counter(db: sqlite3.Connection, name: str) -> int:
        row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, db: sqlite3.Connection, name: str, delta: int) -> None:
        """Add ``delta`` to counter ``name`` (inside :meth:`transaction`: at its commit)."""
        txn: _Transaction | None = getattr(self._local, "txn", None)
        if txn is not None and txn.begun:
            txn.deltas[name] = txn.deltas.get(name, 0) + delta
            return
        db.execute(_BUMP, (name, str(delta), delta))

    # -- appending ------------------------------------------------------------------------

    def append(
        self,
        kind: Kind,
        body: Any,
        *,
        day: str = "",
        items: int = 1,
        keys: Sequence[str] = (),
        local_channels: Sequence[str] = (),
        durable: bool = True,
    ) -> int | None:
        """Append one row; returns its sequence number, or None when every key was seen before.

        ``keys`` make the append idempotent: if all of them were appended before, nothing is
        written. With ``local_channels``, ``body`` (an alert) is also queued for each of those
        channels, in the same transaction. ``durable=False`` does not wait for the disk (see
        :meth:`_write`).
        """
        data = _encode(body)
        with self._write(durable=durable) as db:
            if keys and self._all_written(db, keys):
                return None
            self._make_room(db, len(data))
            seq = self._insert(db, kind, day, items, data)
            self._remember(db, keys)
            db.executemany(
                "INSERT INTO local_alerts (channel, body) VALUES (?, ?)",
                [(channel, data) for channel in local_channels],
            )
        return seq

    def append_scores(
        self, raw: Sequence[Mapping[str, Any]], scores: Sequence[Mapping[str, Any]]
    ) -> list[int]:
        """Append raw telemetry with its scores, one row per date; rows whose ``record_key`` is
        already in the log are left out (a batch scored again after a crash).

        The log's key memory (``written``) holds a reading's key after its timestamp
        (:func:`_reading_key`), so a group's keys are neighbours in its index."""
        with self._write() as db:
            keys = [_reading_key(s) for s in scores]
            known = self._known(db, [k for k in keys if k])
            txn: _Transaction | None = getattr(self._local, "txn", None)
            if txn is not None:  # which device state may hold each key (see _flush)
                new = not known and any(keys)
                txn.scores_new = new if txn.scores_new is None else txn.scores_new and new
                tracked = txn.reading_keys
                for key, score in zip(keys, scores, strict=True):
                    if key:
                        # (a row without a device is held by no state: its key goes into `written`)
                        tracked.setdefault(score.get("device_id", ""), []).append((key, score["record_key"]))
            by_day: dict[str, list[int]] = defaultdict(list)
            for i, score in enumerate(scores):
                if keys[i] and keys[i] in known:
                    continue
                by_day[str(score["timestamp"])[:10]].append(i)
            seqs: list[int] = []
            for day, rows in sorted(by_day.items()):
                body = {"raw": [raw[i] for i in rows], "scores": [scores[i] for i in rows]}
                data = _encode(body)
                if self._make_room(db, len(data)):
                    seqs.append(self._insert(db, "scores", day, len(rows), data))
                else:  # nothing left to compact: keep these readings as a summary at once
                    for summary_day, summaries in _summaries_by_day([scores[i] for i in rows]).items():
                        seqs.append(
                            self._insert(db, "summary", summary_day, len(summaries), _encode(summaries))
                        )
                    self._bump(db, "compacted_readings", len(rows))
                self._remember(db, [keys[i] for i in rows if keys[i]])
        return seqs

    def append_drift(self, summaries: Sequence[WindowSummary], *, source: str, name: str) -> list[int]:
        """Add a write's drift window summaries to the log; returns the rows written (none when
        ``name`` was added before: the same request scored again outside a transaction).

        A write of one window (a scoring group, almost always) is merged into the row its window
        already has (same ``source``, model version, baseline and window start), unless that row
        is being shipped (in the shipper's plan: a batch in flight is never changed, so a restarted
        shipper re-sends exactly what it planned); then, or for a window new to the log, it starts
        that window's row (named ``name``, for its object). A write of several windows (a posted
        file spanning hours, a group across the hour) is a row of its own, shipped as one object
        per day as the cloud writes it.

        So the log, the shipper's PUTs and the drift monitor's reads grow with the windows, not
        with the request rate; the counts add up exactly (:meth:`WindowSummary.merge`). Not
        waiting for the disk (see :meth:`_write`).
        """
        key = f"drift:{source}:{name}"
        txn: _Transaction | None = getattr(self._local, "txn", None)
        if txn is not None:
            txn.drift_keys.add(key)
        if len(summaries) != 1:
            if not summaries:
                return []
            body = {"source": source, "name": name, "summaries": [s.to_dict() for s in summaries]}
            day = datetime.fromtimestamp(min(s.start for s in summaries), tz=UTC).date().isoformat()
            own = self.append("drift", body, day=day, items=len(summaries), keys=[key], durable=False)
            return [] if own is None else [own]
        (summary,) = summaries
        slot = f"{source}|{summary.model_version}|{summary.baseline_id}|{summary.start}"
        with self._write(durable=False) as db:
            if txn is not None and key in txn.keys:
                return []
            memory: _Memory = self._local.memory
            known = self._drift_slot_known(txn, memory, slot)
            row: tuple[int, int, int] | None
            if known is not None:
                row, plan = known
            else:
                # one statement: whether the write was added before, the shipper's plan, the window's row
                written, stored_plan, *found = db.execute(_DRIFT_SLOT, (key, slot)).fetchone()
                if written:
                    return []
                plan = _parse_plan(stored_plan)
                row = None if found[2] is None else (int(found[0]), int(found[1]), int(found[2]))
                if txn is not None and txn.begun and memory.seen is not None:
                    memory.plan, memory.plan_known = plan, True
            low, high = plan or (0, -1)
            held = None
            if row is not None and not low <= row[0] <= high:  # not in flight: add to it
                seq, token, size = row
                cached = self._drift.get(slot)
                if cached is not None and cached[:2] == (seq, token):
                    held = cached[2], cached[3]
                else:  # written by another process, or a transaction rolled back since
                    body = db.execute("SELECT body FROM outbox WHERE seq = ?", (seq,)).fetchone()
                    held = _open_drift(_decode(body[0]), source, summary)
            token = random.getrandbits(62)
            if row is not None and held is not None:
                meta, merged = held[0], held[1].merge(summary)
                data = _drift_json(meta, merged)
                if len(data) > size:
                    self._make_room(db, len(data) - size, keep=seq)
                db.execute("UPDATE outbox SET bytes = ?, body = ? WHERE seq = ?", (len(data), data, seq))
                db.execute("UPDATE drift_open SET token = ? WHERE slot = ?", (token, slot))
                self._bump(db, "bytes", len(data) - size)
            else:
                meta, merged = {"source": source, "name": name}, summary
                data = _drift_json(meta, merged)
                self._make_room(db, len(data))
                day = datetime.fromtimestamp(summary.start, tz=UTC).date().isoformat()
                seq = self._insert(db, "drift", day, 1, data)
                db.execute(
                    "INSERT OR REPLACE INTO drift_open (slot, seq, token) VALUES (?, ?, ?)",
                    (slot, seq, token),
                )
            self._remember(db, [key])
            if txn is not None and txn.begun:
                txn.drift_rows[slot] = (seq, token, len(data))
            # a rolled-back transaction leaves this copy behind with a token the row never got
            if len(self._drift) > 256:  # windows long shipped; the current ones are read again once
                self._drift.clear()
            self._drift[slot] = (seq, token, meta, merged)
        return [seq]

    @staticmethod
    def _drift_slot_known(
        txn: _Transaction | None, memory: _Memory, slot: str
    ) -> tuple[tuple[int, int, int] | None, tuple[int, int] | None] | None:
        """What :meth:`append_drift` reads of a window's slot (its open row and the shipper's
        plan), when this connection knows it without reading: None when it must read.

        It knows them inside a transaction holding the write lock while no other connection has
        committed since its memory was current (:meth:`_begin`): the rows it wrote or read then
        are as it left them, the plan too (only the shipper, on its own connection, writes it),
        unless this transaction compacted drift rows. The read also tells whether the write's
        key is in the log's key memory (``written``); that need not be asked when the
        transaction's scores were all new to the log: a drift write is named after the readings
        it counts, written after their scores (``EventScoring``), so one written before would
        have left those readings' keys in the log, found as the scores were appended (or held by
        their device states, whose readings are not scored again: see :meth:`_flush`)."""
        if (
            txn is None
            or not txn.begun
            or memory.seen is None
            or txn.drift_moved
            or not txn.scores_new
            or not memory.plan_known
        ):
            return None
        row = txn.drift_rows.get(slot) or memory.drift.get(slot)
        return None if row is None else (row, memory.plan)

    def _insert(self, db: sqlite3.Connection, kind: str, day: str, items: int, data: bytes) -> int:
        cursor = db.execute(
            "INSERT INTO outbox (kind, day, items, bytes, created_at, body) VALUES (?, ?, ?, ?, ?, ?)",
            (kind, day, items, len(data), time.time(), data),
        )
        self._bump(db, "bytes", len(data))
        return int(cursor.lastrowid or 0)

    def object_data(self, seq: int) -> bytes:
        """The bytes of the ``object`` row ``seq``."""
        row = self._db().execute("SELECT data FROM outbox_blobs WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise PortError(f"edge buffer {self.path}: object row {seq} has no data")
        return bytes(row[0])

    def _known(self, db: sqlite3.Connection, keys: Sequence[str]) -> set[str]:
        """The ``keys`` already in the log's key memory (or appended in this transaction)."""
        txn: _Transaction | None = getattr(self._local, "txn", None)
        found: set[str] = set()
        if txn is not None and txn.keys:  # appended in this transaction, not inserted yet
            found.update(k for k in keys if k in txn.keys)
        if txn is not None and txn.begun and keys and self._all_new(db, keys):
            return found
        for begin in range(0, len(keys), 500):
            chunk = list(keys[begin : begin + 500])
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in db.execute(f"SELECT key FROM written WHERE key IN ({marks})", chunk))
        return found

    def _all_new(self, db: sqlite3.Connection, keys: Sequence[str]) -> bool:
        """Whether reading ``keys`` (``<timestamp>/<hash>``, :func:`_reading_key`) all come after
        the greatest reading key of the log's key memory, so none of them is in it: what this
        connection's memory knows of that key while no other connection has committed (one
        query when it does not know it). Readings arrive in time order, so a group's keys
        usually do: no lookup of each. (Keys before ':' are those of readings, timestamps first;
        alert and drift keys start with letters. Bare hashes of an older buffer that start with
        a digit count too: lookups, until they are trimmed.)"""
        memory: _Memory = self._local.memory
        if memory.seen is None or not all(k < ":" for k in keys):
            return False
        top = memory.top
        if top is None:
            row = db.execute("SELECT max(key) FROM written WHERE key < ':'").fetchone()
            top = memory.top = row[0] or ""
        return min(keys) > top

    def _all_written(self, db: sqlite3.Connection, keys: Sequence[str]) -> bool:
        return len(self._known(db, keys)) == len(set(keys))

    def _remember(self, db: sqlite3.Connection, keys: Sequence[str]) -> None:
        """Remember appended keys (inside :meth:`transaction`: inserted at its commit, all of the
        transaction's in one statement)."""
        if not keys:
            return
        txn: _Transaction | None = getattr(self._local, "txn", None)
        if txn is not None and txn.begun:
            txn.keys.update(dict.fromkeys(keys))
            return
        self._remember_now(db, keys)

    def _remember_now(self, db: sqlite3.Connection, keys: Sequence[str]) -> None:
        # one statement for all (a JSON array): ~15 % less CPU than executemany (as text: SQLite
        # 3.45 and later read a BLOB argument as JSONB). Not with a NUL in a key: json_each cuts
        # a string at it ('a\x00b' would be remembered as 'a'), so those go one by one
        array = orjson.dumps(list(keys)).decode() if len(keys) > 1 else None
        if array is not None and "\\u0000" not in array:
            db.execute(_REMEMBER_ALL, (array,))
        else:
            db.executemany("INSERT OR IGNORE INTO written (key) VALUES (?)", [(k,) for k in keys])
        # trimmed once per ~0.1 % of the memory's keys added by this process (a statement less
        # in nearly every group): the table holds at most that many keys beyond the memory
        self._untrimmed += len(keys)
        if self._untrimmed > self.key_memory // 1000:
            db.execute(
                "DELETE FROM written WHERE id <= (SELECT max(id) FROM written) - ?", (self.key_memory,)
            )
            self._untrimmed = 0

    # -- the size bound -------------------------------------------------------------------

    def _make_room(self, db: sqlite3.Connection, incoming: int, *, keep: int | None = None) -> bool:
        """Compact the oldest raw scores until ``incoming`` bytes fit; False if they cannot.
        ``keep``: a drift row being added to, left as it is."""
        total = self._counter(db, "bytes")
        if total + incoming <= self.max_bytes:
            return True
        # compact down to 90 % of the bound, so that compaction does not run on every append
        target = max(int(self.max_bytes * 0.9) - incoming, 0)
        plan = self._plan(db)
        while total > target:
            freed = self._compact_oldest(db, plan)
            if freed == 0:
                break
            total -= freed
        while total > target:  # then score-file's score objects, oldest first
            freed = self._compact_oldest_file_scores(db, plan)
            if freed == 0:
                break
            total -= freed
        merged = -1
        while total > target and merged != 0:  # then drift summaries: merged per window, nothing lost
            merged = self._merge_drift(db, plan, keep)
            total -= merged
        return total + incoming <= self.max_bytes

    def _merge_drift(
        self, db: sqlite3.Connection, plan: tuple[int, int] | None, keep: int | None = None
    ) -> int:
        """Merge the oldest drift rows' window summaries (one per model version, baseline and
        window: the counts add up exactly); returns the bytes freed (0: nothing left to merge).
        Since :meth:`append_drift` keeps one row per window, this finds work only in rows written
        while their window's row was in flight, or by an older buffer; the rows it writes are not
        open for new summaries (``drift_open`` forgets the rows it replaces)."""
        low, high = plan if plan else (0, -1)
        rows = db.execute(
            "SELECT seq, bytes, body FROM outbox WHERE kind = 'drift' AND NOT (seq BETWEEN ? AND ?) "
            "AND seq != ? ORDER BY seq LIMIT ?",
            (low, high, -1 if keep is None else keep, self.compact_chunk),
        ).fetchall()
        bodies = [_decode(r[2]) for r in rows]
        groups: dict[tuple[str, str, str, int], WindowSummary] = {}
        for body in bodies:
            for summary in map(WindowSummary.from_dict, body["summaries"]):
                key = (body["source"], summary.model_version, summary.baseline_id, summary.start)
                groups[key] = groups[key].merge(summary) if key in groups else summary
        if len(rows) < 2 or len(groups) >= sum(len(b["summaries"]) for b in bodies):
            return 0  # nothing would get smaller
        seqs = [int(r[0]) for r in rows]
        freed = sum(int(r[1]) for r in rows)
        txn: _Transaction | None = getattr(self._local, "txn", None)
        if txn is not None:
            txn.drift_moved = True
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(q,) for q in seqs])
        db.executemany("DELETE FROM drift_open WHERE seq = ?", [(q,) for q in seqs])
        by_source_day: dict[tuple[str, str], list[WindowSummary]] = defaultdict(list)
        for (source, *_), summary in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][3])):
            day = datetime.fromtimestamp(summary.start, tz=UTC).date().isoformat()
            by_source_day[(source, day)].append(summary)
        names = "\n".join(sorted(b["name"] for b in bodies))
        added = 0
        for seq, ((source, day), summaries) in zip(seqs, sorted(by_source_day.items()), strict=False):
            name = "merged-" + hashlib.blake2b(f"{names}\n{day}".encode(), digest_size=12).hexdigest()
            body = {"source": source, "name": name, "summaries": [s.to_dict() for s in summaries]}
            data = _encode(body)
            db.execute(
                "INSERT INTO outbox (seq, kind, day, items, bytes, created_at, body) "
                "VALUES (?, 'drift', ?, ?, ?, ?, ?)",
                (seq, day, len(summaries), len(data), time.time(), data),
            )
            added += len(data)
        self._bump(db, "bytes", added - freed)
        return max(freed - added, 0)

    def _compact_oldest(self, db: sqlite3.Connection, plan: tuple[int, int] | None) -> int:
        """Replace the oldest rows of raw scores by summaries; returns the bytes freed."""
        low, high = plan if plan else (0, -1)
        rows = db.execute(
            "SELECT seq, bytes, body FROM outbox WHERE kind = 'scores' AND NOT (seq BETWEEN ? AND ?) "
            "ORDER BY seq LIMIT ?",
            (low, high, self.compact_chunk),
        ).fetchall()
        if not rows:
            return 0
        scores = [s for _, _, body in rows for s in _decode(body)["scores"]]
        by_day = _summaries_by_day(scores)
        seqs = [int(r[0]) for r in rows]
        freed = sum(int(r[1]) for r in rows)
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        # the summaries take the oldest sequence numbers of the rows they replace (one per day,
        # and a row holds one day, so there are enough), keeping their place in the log
        added = 0
        for seq, (day, summaries) in zip(seqs, sorted(by_day.items()), strict=False):
            data = _encode(summaries)
            db.execute(
                "INSERT INTO outbox (seq, kind, day, items, bytes, created_at, body) "
                "VALUES (?, 'summary', ?, ?, ?, ?, ?)",
                (seq, day, len(summaries), len(data), time.time(), data),
            )
            added += len(data)
        self._bump(db, "bytes", added - freed)
        self._bump(db, "compacted_readings", len(scores))
        return freed - added

    # -- reading the log (the shipper) ----------------------------------------------------

    @staticmethod
    def _plan(db: sqlite3.Connection) -> tuple[int, int] | None:
        row = db.execute("SELECT value FROM meta WHERE name = 'plan'").fetchone()
        return None if row is None else _parse_plan(row[0])

    def next_batch(self, max_items: int) -> list[Entry]:
        """The rows to ship next, oldest first: the planned batch if one is in flight, else the
        longest run of rows of one kind and day at the head of the log (one alert or ack alone),
        up to ``max_items`` items; the plan is recorded before it is returned."""
        with self._write() as db:
            plan = self._plan(db)
            if plan is not None:
                rows = db.execute(
                    "SELECT seq, kind, day, items, body FROM outbox WHERE seq BETWEEN ? AND ? ORDER BY seq",
                    plan,
                ).fetchall()
                if rows:
                    return [Entry(int(r[0]), r[1], r[2], int(r[3]), _decode(r[4])) for r in rows]
            head = db.execute("SELECT seq, kind, day, items FROM outbox ORDER BY seq LIMIT 512").fetchall()
            chosen: list[tuple[int, str, str, int]] = []
            items = 0
            for seq, kind, day, count in head:
                if chosen and (
                    kind != chosen[0][1]
                    or day != chosen[0][2]
                    or kind in ("alert", "ack")
                    or items + count > max_items
                ):
                    break
                chosen.append((int(seq), kind, day, int(count)))
                items += int(count)
            bodies = dict(
                db.execute(
                    "SELECT seq, body FROM outbox WHERE seq BETWEEN ? AND ?",
                    (chosen[0][0], chosen[-1][0]),
                ).fetchall()
                if chosen
                else []
            )
            batch = [Entry(seq, kind, day, count, _decode(bodies[seq])) for seq, kind, day, count in chosen]
            if batch:
                db.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES ('plan', ?)",
                    (f"{batch[0].seq}:{batch[-1].seq}",),
                )
            return batch

    def mark_shipped(self, batch: Sequence[Entry]) -> None:
        """Delete a shipped batch and its plan, in one transaction."""
        if not batch:
            return
        with self._write() as db:
            freed = 0
            for entry in batch:
                row = db.execute("DELETE FROM outbox WHERE seq = ? RETURNING bytes", (entry.seq,)).fetchone()
                freed += int(row[0]) if row else 0
                if entry.kind == "object":
                    db.execute("DELETE FROM outbox_blobs WHERE seq = ?", (entry.seq,))
                elif entry.kind == "drift":
                    db.execute("DELETE FROM drift_open WHERE seq = ?", (entry.seq,))
            db.execute("DELETE FROM meta WHERE name = 'plan'")
            self._bump(db, "bytes", -freed)
            self._bump(db, "shipped_rows", len(batch))

    def bodies(self, kind: str) -> list[Any]:
        """The bodies of the rows of ``kind`` still in the log, oldest first."""
        rows = self._db().execute("SELECT body FROM outbox WHERE kind = ? ORDER BY seq", (kind,))
        return [_decode(body) for (body,) in rows.fetchall()]

    # -- the local-alert queue ------------------------------------------------------------

    def pending_local_alerts(self, channel: str, limit: int = 100) -> list[tuple[int, Any]]:
        """Alerts ``channel`` has not taken yet, oldest first."""
        rows = self._db().execute(
            "SELECT seq, body FROM local_alerts WHERE channel = ? ORDER BY seq LIMIT ?", (channel, limit)
        )
        return [(int(seq), _decode(body)) for seq, body in rows.fetchall()]

    def local_alerts_done(self, delivered: Sequence[int], failed: Mapping[int, str]) -> None:
        """Drop delivered local alerts; count an attempt and keep the error on the others."""
        with self._write() as db:
            db.executemany("DELETE FROM local_alerts WHERE seq = ?", [(s,) for s in delivered])
            db.executemany(
                "UPDATE local_alerts SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                [(error[:500], seq) for seq, error in failed.items()],
            )

    # -- device state ---------------------------------------------------------------------

    def load_states(self, device_ids: Sequence[str]) -> dict[str, DeviceState]:
        """The states of these devices (those never saved are left out).

        A state this process wrote last is served from memory (decoding one cost ~0.2 ms) while
        its row still has the version written (another process's write bumps it). Inside
        :meth:`transaction`, the versions read are checked when the write lock is taken. Changing
        a state returned changes nothing until it is saved: outside a transaction it is a copy;
        inside one (before its write lock) it is the state held in memory, taken out of it (the
        transaction's commit keeps the states it saves; one not saved, or a transaction rolled
        back, leaves the device to be read from the database next time). Two copies per device
        and group fewer (~4 µs each, with 512 remembered keys).

        Invariant the log's key memory relies on (:meth:`_flush`: a group's reading keys a saved
        state holds are not written to ``written``): a device's saved state forgets a key only
        by eviction, which it records (``evicted_until``), and no code deletes, resets or
        replaces a ``device_state`` row with one that forgot keys otherwise. A feature that does
        (a device reset, a state time-to-live, a migration) must write the keys it drops to
        ``written`` first, or resent readings would be buffered and drift-counted again.
        """
        db = self._db()
        out: dict[str, DeviceState] = {}
        ids = sorted(set(device_ids))
        memory: _Memory = self._local.memory
        txn: _Transaction | None = getattr(self._local, "txn", None)
        # a state written in this open transaction is read as it holds it (not committed yet)
        own = txn is not None and any(d in txn.states for d in ids)
        # inside a transaction (a state lent to it, see below) whose write lock is still to be taken
        lend = txn is not None and not txn.begun
        try:
            # the rows' versions: from this connection's memory while no other connection has
            # committed since it was current (one PRAGMA, ~5 µs, instead of a query), else read.
            # Asked every time, also in a transaction whose write lock is still to be taken: a
            # state another worker process (--workers) wrote since is then read again at once,
            # not found stale at the lock (a StateConflict: the group scored twice)
            seen = self._data_version(db)
            if not own and seen == memory.seen and all(d in memory.versions for d in ids):
                known = memory.versions
                versions = {d: known[d] for d in ids if known[d]}
            else:
                versions = self._versions(db, ids)
                if own:
                    memory.reset(None)
                else:
                    if seen != memory.seen:
                        memory.reset(seen)
                    memory.versions.update((d, versions.get(d, 0)) for d in ids)
            missing: list[str] = []
            seen_rows: dict[str, _SeenRow] = {}
            with self._states_lock:
                for device, version in versions.items():
                    cached = self._states.get(device)
                    if cached is not None and cached[0] == version:
                        if lend:  # the state itself, taken out of memory (no copy): see the docstring
                            del self._states[device]
                            out[device] = cached[1]
                        else:
                            out[device] = cached[1].successor(cached[1].history, cached[1].alerts)
                        seen_rows[device] = cached[2]
                    else:
                        missing.append(device)
            for begin in range(0, len(missing), 500):
                chunk = missing[begin : begin + 500]
                marks = ",".join("?" * len(chunk))
                for device, state, version, seen_from, seen_next, seen_last in db.execute(
                    "SELECT device_id, state, version, seen_from, seen_next, seen_last FROM device_state "
                    f"WHERE device_id IN ({marks})",
                    chunk,
                ).fetchall():
                    seen_rows[device] = (
                        None if seen_next is None else (int(seen_from), int(seen_next), seen_last)
                    )
                    loaded = (
                        DeviceState.from_json(state)
                        if state[:1] == b"{"
                        else DeviceState.from_dict(orjson.loads(zlib.decompress(state)))
                    )
                    if seen_next is not None:  # its keys are rows of device_seen
                        rows = [
                            (str(key), float(ts))
                            for key, ts in db.execute(
                                "SELECT key, ts FROM device_seen WHERE device_id = ? AND n >= ? AND n < ? "
                                "ORDER BY n",
                                (device, seen_from, seen_next),
                            )
                        ]
                        # keys in the JSON as well: code older than device_seen wrote this state
                        # (a box rolled back past it), starting from the JSON's empty list; its
                        # keys came after the rows'. Both are kept; the next save stores them as rows
                        loaded.seen = _merge_seen(rows, loaded.seen) if loaded.seen else rows
                    out[device] = loaded
                    versions[device] = version  # as read with the state (it may have moved)
                    if version != memory.versions.get(device):  # (another connection wrote it
                        memory.reset(None)  # between the two reads: what was read is not current)
        except sqlite3.Error as exc:
            raise PortError(f"edge buffer {self.path}: {exc}") from exc
        if txn is not None:
            if not txn.begun:  # checked when the write lock is taken
                for device in ids:
                    txn.read_versions.setdefault(device, versions.get(device, 0))
            # each row's version and keys as read, for save_states: what the row holds in this
            # transaction, whose versions are checked at the lock (or were read under it)
            for device in ids:
                txn.rows.setdefault(device, (versions.get(device, 0), seen_rows.get(device)))
        return out

    def save_states(self, states: Mapping[str, DeviceState]) -> None:
        """Write device states without waiting for the disk (see the module docstring), each
        with its version bumped.

        A state's remembered reading keys (up to the deduplication memory, ~17 KB of JSON at 512)
        are rows of ``device_seen``, not part of its JSON: a write adds the keys remembered since
        the last one (found after the last key written, ``seen_last``) and the row keeps the range
        of positions that make up the list (``seen_from``, ``seen_next``); keys forgotten are
        deleted 64 at a time. So a group's transaction writes a few hundred bytes of state per
        device, not the whole memory. A state whose keys do not continue the stored ones (another
        list altogether) has them all rewritten.

        Inside :meth:`transaction` the states given are kept in memory as they are once it
        commits (no copy): the caller does not change a state after saving it, unless it saves
        it again in the same transaction (the scoring use case clears a state's delivered alerts
        so). Outside one, a copy is kept."""
        now = time.time()
        kept: dict[str, tuple[int, DeviceState, _SeenRow]] = {}
        txn: _Transaction | None = getattr(self._local, "txn", None)
        # what each row holds now: read (or written) in this transaction, else read here
        known = {} if txn is None else {d: txn.rows[d] for d in states if d in txn.rows}
        clear: list[tuple[str]] = []  # devices whose keys are all written again
        added: list[tuple[str, int, str, float]] = []
        forgotten: list[tuple[str, int]] = []
        rows: list[tuple[str, bytes, float, int, int, str | None]] = []
        with self._write(durable=False) as db:
            for device, state in states.items():
                seen = state.seen
                stored: _SeenRow
                if device in known:
                    stored = known[device][1]
                else:
                    row = db.execute(
                        "SELECT seen_from, seen_next, seen_last FROM device_state WHERE device_id = ?",
                        (device,),
                    ).fetchone()
                    stored = (
                        (int(row[0]), int(row[1]), row[2]) if row is not None and row[1] is not None else None
                    )
                start = None if stored is None else _continues(seen, stored[2], stored[1] - stored[0])
                base = 0 if stored is None else stored[1]
                old_from: int | None = None
                if start is None or stored is None:  # not a continuation: every key written again
                    clear.append((device,))
                    new_keys = seen
                else:
                    new_keys, old_from = seen[start:], stored[0]
                added += [(device, base + i, key, ts) for i, (key, ts) in enumerate(new_keys)]
                next_n = base + len(new_keys)
                first_n = next_n - len(seen)
                if old_from is not None and first_n // 64 != old_from // 64:
                    forgotten.append((device, first_n))
                bare = DeviceState(state.history, state.alerts, [], state.evicted_until, state.outbox)
                last = seen[-1][0] if seen else None
                rows.append((device, bare.to_json().encode(), now, first_n, next_n, last))
                # inside a transaction the state itself is kept (committed with it): see the docstring
                held = state if txn is not None else state.successor(state.history, state.alerts)
                kept[device] = (0, held, (first_n, next_n, last))
                if txn is not None and device in txn.reading_keys:  # its keys that need no `written` row
                    remembered = state.seen_keys()
                    for key, record_key in txn.reading_keys[device]:
                        if record_key in remembered:
                            txn.held.add(key)
                        else:
                            txn.held.discard(key)
            # one statement per table for all the devices (in this order: a device's keys written
            # again are deleted before they are added, forgotten ones after)
            if clear:
                db.executemany("DELETE FROM device_seen WHERE device_id = ?", clear)
            if added:
                db.executemany("INSERT INTO device_seen (device_id, n, key, ts) VALUES (?, ?, ?, ?)", added)
            if forgotten:
                db.executemany("DELETE FROM device_seen WHERE device_id = ? AND n < ?", forgotten)
            if len(known) == len(rows):  # every version known: each becomes its successor
                db.executemany(_SAVE_STATE, rows)
                versions = {device: known[device][0] + 1 for device, *_ in rows}
            else:
                versions = {
                    row[0]: int(db.execute(_SAVE_STATE + " RETURNING version", row).fetchone()[0])
                    for row in rows
                }
        for device, (_, copy, seen_row) in kept.items():
            kept[device] = (versions[device], copy, seen_row)
            if txn is not None:
                txn.rows[device] = (versions[device], seen_row)
        if txn is not None:
            txn.states.update(kept)  # kept in memory once the transaction commits
        else:
            with self._states_lock:
                self._states.update(kept)

    # -- inspection -----------------------------------------------------------------------

    def stats(self) -> BufferStats:
        db = self._db()
        rows: dict[str, int] = {}
        items: dict[str, int] = {}
        kind_bytes: dict[str, int] = {}
        for kind, count, total, size in db.execute(
            "SELECT kind, count(*), sum(items), sum(bytes) FROM outbox GROUP BY kind"
        ):
            rows[kind] = int(count)
            items[kind] = int(total)
            kind_bytes[kind] = int(size)
        pending_local = int(db.execute("SELECT count(*) FROM local_alerts").fetchone()[0])
        return BufferStats(
            rows=rows,
            items=items,
            kind_bytes=kind_bytes,
            bytes=self._counter(db, "bytes"),
            max_bytes=self.max_bytes,
            local_alerts_pending=pending_local,
            compacted_readings=self._counter(db, "compacted_readings"),
            shipped_rows=self._counter(db, "shipped_rows"),
        )

    # -- score-file's outputs: ready lake objects and the list of files -------------------
    # What :class:`zaindari.edge.file_outbox.BufferedFileSink` writes a posted file through, all
    # inside one :meth:`transaction` (its objects, set-aside record, manifest and alerts, and its
    # entry in the list of files). An object row's key is kept beside its bytes
    # (``outbox_blobs.key``, read through its index), so finding a file's rows decodes no body and
    # reads no bytes; a buffer made before that column gets it, and its object rows their keys, at
    # the first of these calls (in that call's transaction).

    _FILES_SCHEMA = (
        "CREATE TABLE IF NOT EXISTS edge_files ("  # every file (or part) published: a repost is a duplicate
        "name TEXT PRIMARY KEY, "  # the manifest's key
        "status TEXT NOT NULL, "
        "manifest BLOB NOT NULL, "  # zlib-compressed JSON
        "published_at REAL NOT NULL) WITHOUT ROWID"
    )

    def make_room(self, incoming: int) -> bool:
        """Apply the bound for ``incoming`` more bytes (see the module docstring): compact the
        oldest raw scores, then files' score objects, then merge drift rows; False when the bytes
        still do not fit."""
        with self._write() as db:
            return self._make_room(db, incoming)

    def append_object(
        self, key: str, *, content_type: str, data: IO[bytes], size: int, items: int, day: str = ""
    ) -> int:
        """Append one ready lake object (kind ``object``: shipped as is under ``key``); its
        ``size`` bytes are copied from ``data`` a megabyte at a time and count against the bound
        (no room is made for them: the caller decides, :meth:`make_room`)."""
        with self._write() as db:
            return self._insert_object(
                db, key=key, content_type=content_type, data=data, size=size, items=items, day=day
            )

    def append_compacted_scores(self, sources: Sequence[str | Path | IO[bytes]]) -> list[int]:
        """Files' scores (Parquet, ``SCORES_SCHEMA``) appended as hourly per-device summaries (one
        ``summary`` row per day) and counted as compacted readings: what is kept of scores the
        bound has no room for."""
        with self._write() as db:
            seqs, _ = self._insert_file_summaries(db, sources)
        return seqs

    def discard_objects(self, keys: Sequence[str]) -> int:
        """Delete the object rows of ``keys`` not shipped yet (a batch in flight is left to the
        shipper); returns how many were deleted."""
        wanted = sorted(set(keys))
        if not wanted:
            return 0
        deleted = 0
        with self._write() as db:
            low, high = self._plan(db) or (0, -1)
            for begin in range(0, len(wanted), 500):
                chunk = wanted[begin : begin + 500]
                marks = ",".join("?" * len(chunk))
                seqs = [
                    int(seq)
                    for (seq,) in db.execute(
                        f"SELECT seq FROM outbox_blobs WHERE key IN ({marks}) AND NOT (seq BETWEEN ? AND ?)",
                        (*chunk, low, high),
                    ).fetchall()
                ]
                for seq in seqs:
                    freed = db.execute("DELETE FROM outbox WHERE seq = ? RETURNING bytes", (seq,)).fetchone()
                    db.execute("DELETE FROM outbox_blobs WHERE seq = ?", (seq,))
                    self._bump(db, "bytes", -int(freed[0]) if freed else 0)
                deleted += len(seqs)
        return deleted

    def record_file(self, name: str, status: str, manifest: Mapping[str, Any]) -> None:
        """Enter a published file (its manifest's key, status and body) in the list of files,
        replacing an earlier entry of that name. The list keeps as many files as the buffer
        remembers keys (a file older than that, posted again, is scored again: its objects keep
        their names, so it still lands once)."""
        with self._write() as db:
            db.execute(self._FILES_SCHEMA)
            db.execute(
                "INSERT OR REPLACE INTO edge_files (name, status, manifest, published_at) VALUES (?, ?, ?, ?)",
                (name, status, _encode(manifest), datetime.now(UTC).timestamp()),
            )
            db.execute(
                "DELETE FROM edge_files WHERE name IN (SELECT name FROM edge_files "
                "ORDER BY published_at DESC LIMIT -1 OFFSET ?)",
                (self.key_memory,),
            )

    def published_file(self, name: str) -> Any | None:
        """The manifest (its JSON body) of the file entered as ``name``, or None."""
        db = self._db()
        try:
            db.execute(self._FILES_SCHEMA)  # a no-op once the list exists
            row = db.execute("SELECT manifest FROM edge_files WHERE name = ?", (name,)).fetchone()
        except sqlite3.Error as exc:
            raise PortError(f"edge buffer {self.path}: {exc}") from exc
        return None if row is None else _decode(row[0])

    def _insert_object(
        self,
        db: sqlite3.Connection,
        *,
        key: str,
        content_type: str,
        data: IO[bytes],
        size: int,
        items: int,
        day: str = "",
    ) -> int:
        meta = _encode({"key": key, "content_type": content_type, "size": size})
        cursor = db.execute(
            "INSERT INTO outbox (kind, day, items, bytes, created_at, body) VALUES ('object', ?, ?, ?, ?, ?)",
            (day, items, len(meta) + size, time.time(), meta),
        )
        seq = int(cursor.lastrowid or 0)
        db.execute("INSERT INTO outbox_blobs (seq, key, data) VALUES (?, ?, zeroblob(?))", (seq, key, size))
        if size:
            with db.blobopen("outbox_blobs", "data", seq) as blob:
                while piece := data.read(1 << 20):
                    blob.write(piece)
        self._bump(db, "bytes", len(meta) + size)
        return seq

    def _insert_file_summaries(
        self, db: sqlite3.Connection, sources: Sequence[str | Path | IO[bytes]], places: Sequence[int] = ()
    ) -> tuple[list[int], int]:
        """Files' scores as hourly per-device summaries, one ``summary`` row per day, counted as
        compacted readings; the first days take the sequence numbers ``places`` (the rows they
        replace, keeping their place in the log). Returns the rows written and their bytes."""
        by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for source in sources:
            for summary in compact_scores_file(source):
                by_day[summary["hour"][:10]].append(summary)
        seqs: list[int] = []
        added = 0
        free = iter(places)
        for day, summaries in sorted(by_day.items()):
            data = _encode(summaries)
            place = next(free, None)
            if place is None:
                seqs.append(self._insert(db, "summary", day, len(summaries), data))
            else:
                db.execute(
                    "INSERT INTO outbox (seq, kind, day, items, bytes, created_at, body) "
                    "VALUES (?, 'summary', ?, ?, ?, ?, ?)",
                    (place, day, len(summaries), len(data), time.time(), data),
                )
                self._bump(db, "bytes", len(data))
                seqs.append(place)
            added += len(data)
        self._bump(
            db, "compacted_readings", sum(int(s["readings"]) for rows in by_day.values() for s in rows)
        )
        return seqs, added

    def _compact_oldest_file_scores(self, db: sqlite3.Connection, plan: tuple[int, int] | None) -> int:
        """Replace the oldest score object of a file by its hourly per-device summaries, in its
        place in the log; returns the bytes freed (0: none left)."""
        low, high = plan if plan else (0, -1)
        row = db.execute(
            "SELECT o.seq, o.bytes FROM outbox_blobs b JOIN outbox o ON o.seq = b.seq "
            "WHERE b.key >= 'scores/' AND b.key < 'scores0' AND NOT (b.seq BETWEEN ? AND ?) "
            "ORDER BY b.seq LIMIT 1",
            (low, high),
        ).fetchone()
        if row is None:
            return 0
        from io import BytesIO

        seq, size = int(row[0]), int(row[1])
        data = db.execute("DELETE FROM outbox_blobs WHERE seq = ? RETURNING data", (seq,)).fetchone()[0]
        db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
        self._bump(db, "bytes", -size)
        _, added = self._insert_file_summaries(db, [BytesIO(data)], [seq])
        return size - added or 1  # negative for a tiny object: its summaries are bigger


def _merge_seen(
    rows: list[tuple[str, float]], json_seen: Sequence[tuple[str, float]]
) -> list[tuple[str, float]]:
    """A state's remembered keys from its ``device_seen`` rows, then those in its JSON that the
    rows do not hold (see :meth:`EdgeBuffer.load_states`)."""
    known = {key for key, _ in rows}
    return rows + [(key, ts) for key, ts in json_seen if key not in known]


def _continues(seen: Sequence[tuple[str, float]], last: str | None, stored: int) -> int | None:
    """Where the keys not stored yet start in ``seen``, when it continues the stored list (of
    ``stored`` keys ending with ``last``); None when it does not."""
    if last is None:
        return 0 if stored == 0 else None
    for i in range(len(seen) - 1, -1, -1):  # the new keys are the last few: search from the end
        if seen[i][0] == last:
            return i + 1 if i + 1 <= stored else None
    return None


def _drift_json(meta: Mapping[str, Any], summary: WindowSummary) -> bytes:
    """A drift row's body: plain JSON (it is rewritten at each request, where compressing it cost
    more than the rest of the write; ``_decode`` reads both)."""
    return orjson.dumps({**meta, "summaries": [summary.to_dict()]})


def _open_drift(
    body: Mapping[str, Any], source: str, summary: WindowSummary
) -> tuple[dict[str, Any], WindowSummary] | None:
    """A window's open drift row as (its body without the summary, its summary), or None if it
    holds something else (one summary of the same source, model version, baseline and window)."""
    held = body.get("summaries", [])
    if body.get("source") != source or len(held) != 1:
        return None
    current = WindowSummary.from_dict(held[0])
    if (current.model_version, current.baseline_id, current.start) != (
        summary.model_version,
        summary.baseline_id,
        summary.start,
    ):
        return None
    return {k: v for k, v in body.items() if k != "summaries"}, current


def _hour(timestamp: str) -> str:
    return f"{timestamp[:13]}:00:00Z"


def compact_scores(scores: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per device and hour: how many readings, score statistics, alerting rows, worst severity.

    What a compacted stretch of raw scores leaves behind (``summaries/edge/`` in the lake).
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in scores:
        groups[(str(row["device_id"]), _hour(str(row["timestamp"])))].append(row)
    from zaindari.spec import SEVERITY_RANK

    out: list[dict[str, Any]] = []
    for (device, hour), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        values = [float(r["score"]) for r in rows if r.get("score") is not None]
        finite = [v for v in values if math.isfinite(v)]
        severities = [str(r["severity"]) for r in rows if r.get("severity")]
        first = rows[0]
        out.append(
            {
                "kind": "compacted_scores",
                "device_id": device,
                "asset": first.get("asset"),
                "line": first.get("line"),
                "site": first.get("site"),
                "hour": hour,
                "first_timestamp": min(str(r["timestamp"]) for r in rows),
                "last_timestamp": max(str(r["timestamp"]) for r in rows),
                "readings": len(rows),
                "score_min": min(finite) if finite else None,
                "score_max": max(finite) if finite else None,
                "score_mean": sum(finite) / len(finite) if finite else None,
                "alerting_readings": sum(1 for r in rows if r.get("alert")),
                "worst_severity": max(severities, key=lambda s: SEVERITY_RANK.get(s, -1))
                if severities
                else None,
                "model_versions": sorted({str(r.get("model_version")) for r in rows}),
            }
        )
    return out


def _summaries_by_day(scores: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for summary in compact_scores(scores):
        by_day[summary["hour"][:10]].append(summary)
    return dict(by_day)


def compact_scores_file(source: str | Path | IO[bytes], batch_rows: int = 65_536) -> list[dict[str, Any]]:
    """A file's scores (Parquet, ``SCORES_SCHEMA``: score-file's score objects) as
    :func:`compact_scores` summaries, per device and hour, read a batch at a time; a device-hour
    spread over batches is merged (counts, extremes and alerting rows add up; the mean is weighted
    by readings)."""
    import pyarrow as pa  # only boxes that score files read Parquet
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    merged: dict[tuple[str, str], dict[str, Any]] = {}
    parquet = pq.ParquetFile(source)
    names = [c for c in _COMPACT_COLUMNS if c in parquet.schema_arrow.names]
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=names):
        table = pa.Table.from_batches([batch])
        stamps = pc.strftime(table["timestamp"], format="%Y-%m-%dT%H:%M:%SZ")
        table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", stamps)
        for summary in compact_scores(table.to_pylist()):
            key = (summary["device_id"], summary["hour"])
            merged[key] = _merge_compacted(merged[key], summary) if key in merged else summary
    return [merged[k] for k in sorted(merged, key=lambda k: (k[1], k[0]))]


_COMPACT_COLUMNS = (
    "device_id",
    "asset",
    "line",
    "site",
    "timestamp",
    "score",
    "severity",
    "alert",
    "model_version",
)


def _merge_compacted(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two summaries of one device and hour as one."""
    from zaindari.spec import SEVERITY_RANK

    def pick(f: Callable[..., Any], x: Any, y: Any) -> Any:
        present = [v for v in (x, y) if v is not None]
        return f(present) if present else None

    n = a["readings"] + b["readings"]
    means = [(s["score_mean"], s["readings"]) for s in (a, b) if s["score_mean"] is not None]
    severities = [s for s in (a["worst_severity"], b["worst_severity"]) if s]
    return {
        **a,
        "first_timestamp": min(a["first_timestamp"], b["first_timestamp"]),
        "last_timestamp": max(a["last_timestamp"], b["last_timestamp"]),
        "readings": n,
        "score_min": pick(min, a["score_min"], b["score_min"]),
        "score_max": pick(max, a["score_max"], b["score_max"]),
        "score_mean": sum(m * w for m, w in means) / sum(w for _, w in means) if means else None,
        "alerting_readings": a["alerting_readings"] + b["alerting_readings"],
        "worst_severity": max(severities, key=lambda s: SEVERITY_RANK.get(s, -1)) if severities else None,
        "model_versions": sorted(set(a["model_versions"]) | set(b["model_versions"])),
    }


# -- the core's ports on the buffer --------------------------------------------------------------


class SqliteStateStore:
    """:class:`~zaindari.ports.StateStore` in the buffer's database (one row per device)."""

    def __init__(self, buffer: EdgeBuffer) -> None:
        self.buffer = buffer

    def load(self, device_ids: Sequence[str]) -> dict[str, DeviceState]:
        return self.buffer.load_states(device_ids)

    def save(self, states: Mapping[str, DeviceState]) -> SaveResult:
        self.buffer.save_states(states)
        return SaveResult()


class BufferedLake:
    """:class:`~zaindari.ports.LakeWriter` that appends to the buffer (shipped to ``raw/`` and
    ``scores/`` later). Returns ``buffer:<seq>`` for each row written."""

    def __init__(self, buffer: EdgeBuffer) -> None:
        self.buffer = buffer

    def write(self, readings: Sequence[Reading], scores: Sequence[Mapping[str, Any]]) -> list[str]:
        seqs = self.buffer.append_scores([r.to_record() for r in readings], scores)
        return [f"buffer:{s}" for s in seqs]


class BufferedRejects:
    """:class:`~zaindari.ports.RejectSink` that appends dead letters to the buffer (shipped to
    ``quarantine/events/``), one row per date they were received."""

    def __init__(self, buffer: EdgeBuffer) -> None:
        self.buffer = buffer

    def reject(self, rejected: Sequence[RejectedRecord]) -> list[str]:
        by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
        today = datetime.now(UTC).date().isoformat()
        for r in rejected:
            by_day[r.received_at[:10] or today].append(r.to_dict())
        out = []
        for day, rows in sorted(by_day.items()):
            seq = self.buffer.append("reject", rows, day=day, items=len(rows))
            out.append(f"buffer:{seq}")
        return out


class BufferedAlerts:
    """:class:`~zaindari.ports.AlertSink` that appends alerts to the buffer (shipped to
    EventBridge as ``Zaindari Alert``) and queues them for the plant's ``local_channels``
    (``zaindari.edge.local_alerts``). An alert already buffered (same ``alert_id`` and ``kind``)
    is not added again. Every alert accepted is durable, so nothing is reported as failed."""

    def __init__(self, buffer: EdgeBuffer, *, local_channels: Sequence[str] = ()) -> None:
        self.buffer = buffer
        self.local_channels = tuple(local_channels)

    def publish(self, alerts: Sequence[Alert]) -> set[str]:
        for alert in alerts:
            body = alert.model_dump(mode="json")
            self.buffer.append(
                "alert",
                body,
                keys=[f"alert:{alert.dedup_key}"],
                local_channels=self.local_channels,
            )
        return set()


class BufferedSummaries:
    """:class:`~zaindari.drift.SummaryStore` that adds drift window summaries to the buffer (one
    row per window, :meth:`EdgeBuffer.append_drift`); shipped under the keys the cloud's store
    writes (``summaries/date=.../model=.../...``, named after the row's first write, so a batch
    sent again overwrites itself). :meth:`read` sees the summaries not shipped yet."""

    def __init__(self, buffer: EdgeBuffer) -> None:
        self.buffer = buffer

    def write(self, summaries: Sequence[WindowSummary], *, source: str, name: str) -> list[str]:
        # each window's summary is added to that window's row (EdgeBuffer.append_drift); not
        # waiting for the disk: inside the box's group transaction it is committed with the scores
        # it summarises; on its own, a power cut that takes it takes the device state written
        # after it, so the readings sent again are summarised again (the lake rows are not
        # doubled: the log knows their keys)
        return [f"buffer:{seq}" for seq in self.buffer.append_drift(summaries, source=source, name=name)]

    def read(self, model: str, start: datetime, end: datetime) -> list[WindowSummary]:
        lo, hi = start.timestamp(), end.timestamp()
        return [
            summary
            for body in self.buffer.bodies("drift")
            for summary in map(WindowSummary.from_dict, body["summaries"])
            if summary.model_version.partition(":")[0] == model and lo <= summary.start < hi
        ]


def _conforms() -> None:
    """Static check (mypy) that the buffer's adapters satisfy the core's ports."""
    buffer = EdgeBuffer(":memory:")
    _d: SummaryStore = BufferedSummaries(buffer)
    _s: StateStore = SqliteStateStore(buffer)
    _l: LakeWriter = BufferedLake(buffer)
    _r: RejectSink = BufferedRejects(buffer)
    _a: AlertSink = BufferedAlerts(buffer)


# -- shipping ------------------------------------------------------------------------------------


class Uplink(Protocol):
    """Where the shipper sends the log (S3 and EventBridge: ``zaindari.infra.edge_uplink``).

    Every method raises :class:`~zaindari.ports.PortError` when the link or the service fails.
    """

    def put_rows(self, prefix: str, day: str, name: str, rows: Sequence[Mapping[str, Any]]) -> str:
        """Write rows as one lake object ``<prefix>/date=<day>/<name>.<ext>``; returns its key."""
        ...

    def publish_alerts(self, alerts: Sequence[Alert]) -> set[str]:
        """Publish alerts as the cloud does; returns the ``dedup_key`` of those not delivered."""
        ...

    def put_event(self, detail_type: str, detail: Mapping[str, Any]) -> None:
        """Put one event on the bus."""
        ...

    def put_summaries(self, summaries: Sequence[Mapping[str, Any]], *, source: str, name: str) -> list[str]:
        """Write drift window summaries (``WindowSummary.to_dict``) as the cloud's summary store
        does; returns the keys."""
        ...

    def put_object(self, key: str, data: bytes, content_type: str) -> str:
        """Write one lake object as it is (score-file's outputs and manifests); returns its key."""
        ...


@dataclass
class ShipReport:
    """What one :meth:`Shipper.ship_once` did."""

    online: bool = False
    reconnected: bool = False
    busy: bool = False  # another shipper holds the buffer; nothing was sent
    shipped: dict[str, int] = field(default_factory=dict)
    objects: list[str] = field(default_factory=list)
    error: str | None = None
    remaining: int = 0


class Shipper:
    """Empties the buffer into the cloud in sequence order, with retries and exponential backoff.

    Parameters
    ----------
    buffer, uplink
        The log and where it goes.
    box_id
        Names the box in object names and acks.
    status
        The box's current status (model and version it runs) for the ``Zaindari Edge Ack`` sent
        first on every (re)connection; that ack is also the link probe.
    backoff_seconds, backoff_max_seconds
        First wait after a failure, doubled on each further failure up to the maximum, with
        +-20 % jitter (a fleet of boxes reconnecting does not hit the cloud in step).
    max_items
        Most readings (or rows) in one shipped object.
    """

    def __init__(
        self,
        buffer: EdgeBuffer,
        uplink: Uplink,
        *,
        box_id: str,
        status: Callable[[], Mapping[str, Any]],
        backoff_seconds: float = 1.0,
        backoff_max_seconds: float = 300.0,
        max_items: int = 5000,
        rng: random.Random | None = None,
    ) -> None:
        self.buffer = buffer
        self.uplink = uplink
        self.box_id = box_id
        self.status = status
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.max_items = max_items
        self.online = False
        self.failures = 0
        self._rng = rng or random.Random()

    def object_name(self, seq: int) -> str:
        return f"edge-{self.box_id}-{self.buffer.epoch}-{seq:012d}"

    def next_delay(self) -> float:
        """Seconds to wait after ``failures`` consecutive failures."""
        if self.failures == 0:
            return 0.0
        base = min(self.backoff_seconds * 2 ** (self.failures - 1), self.backoff_max_seconds)
        return float(base * self._rng.uniform(0.8, 1.2))

    def ship_once(self, *, max_batches: int | None = None) -> ShipReport:
        """Probe the link if it was down (an ack), then ship batches until the log is empty, a
        send fails, or ``max_batches`` were sent.

        One shipper at a time per buffer, across processes (an exclusive lock on
        ``<buffer>.ship.lock``, released if its holder dies): two would send the same planned batch
        twice, which S3 absorbs but EventBridge does not. When another holds it, nothing is sent.
        """
        with _exclusive(self.buffer.path.with_name(self.buffer.path.name + ".ship.lock")) as mine:
            if not mine:
                stats = self.buffer.stats()
                return ShipReport(online=self.online, busy=True, remaining=sum(stats.rows.values()))
            return self._ship(max_batches)

    def _ship(self, max_batches: int | None) -> ShipReport:
        report = ShipReport()
        try:
            if not self.online:
                ack = {**self.status(), "box_id": self.box_id, "event": "connected", "at": _now()}
                self.uplink.put_event(ACK_DETAIL_TYPE, ack)
                self.online = report.reconnected = True
            sent = 0
            while max_batches is None or sent < max_batches:
                batch = self.buffer.next_batch(self.max_items)
                if not batch:
                    break
                report.objects.extend(self._send(batch))
                self.buffer.mark_shipped(batch)
                kind = batch[0].kind
                report.shipped[kind] = report.shipped.get(kind, 0) + sum(e.items for e in batch)
                sent += 1
            self.failures = 0
        except PortError as exc:
            self.online = False
            self.failures += 1
            report.error = str(exc)
        report.online = self.online
        stats = self.buffer.stats()
        report.remaining = sum(stats.rows.values())
        return report

    def _send(self, batch: Sequence[Entry]) -> list[str]:
        first = batch[0]
        name = self.object_name(first.seq)
        if first.kind == "scores":
            raw = [row for e in batch for row in e.body["raw"]]
            scores = [row for e in batch for row in e.body["scores"]]
            # scores first: a reader that finds raw telemetry can count on its scores being there
            return [
                self.uplink.put_rows(SCORES_PREFIX, first.day, name, scores),
                self.uplink.put_rows(RAW_PREFIX, first.day, name, raw),
            ]
        if first.kind == "reject":
            rows = [row for e in batch for row in e.body]
            return [self.uplink.put_rows(QUARANTINE_PREFIX, first.day, name, rows)]
        if first.kind == "summary":
            rows = [row for e in batch for row in e.body]
            return [self.uplink.put_rows(SUMMARIES_PREFIX, first.day, name, rows)]
        if first.kind == "object":
            return [
                self.uplink.put_object(e.body["key"], self.buffer.object_data(e.seq), e.body["content_type"])
                for e in batch
            ]
        if first.kind == "alert":
            alerts = [buffered_alert(e.body) for e in batch]
            failed = self.uplink.publish_alerts(alerts)
            if failed:
                raise PortError(f"alerts not delivered: {sorted(failed)}")
            return []
        if first.kind == "drift":
            keys: list[str] = []
            for entry in batch:
                body = entry.body
                keys += self.uplink.put_summaries(body["summaries"], source=body["source"], name=body["name"])
            return keys
        if first.kind == "ack":
            for entry in batch:
                self.uplink.put_event(ACK_DETAIL_TYPE, {**entry.body, "box_id": self.box_id})
            return []
        raise PortError(f"edge buffer row {first.seq} has an unknown kind {first.kind!r}")


def buffered_alert(body: Mapping[str, Any]) -> Alert:
    """An alert as it was buffered: a file's alert keeps its own fields (``scope: "file"``,
    :class:`~zaindari.file_drops.FileAlert`), for the cloud and the plant's channels alike."""
    if body.get("scope") == "file":
        from zaindari.file_drops import FileAlert

        return FileAlert.model_validate(body)
    return Alert.model_validate(body)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """A non-blocking exclusive ``flock`` on ``path``: yields whether this process holds it."""
    import fcntl

    with path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
