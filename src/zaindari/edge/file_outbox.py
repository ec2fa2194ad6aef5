"""score-file's outputs through the edge buffer: store and forward for historian files.

:class:`BufferedFileSink` is the :class:`~zaindari.ports.FileSink` of the edge's ``score-file``.
It lays a run's outputs out as the cloud's ``score_batch`` does (the same keys:
``scores/date=YYYY-MM-DD/<run>.parquet``, ``quarantine/date=YYYY-MM-DD/<run>.jsonl``,
``quarantine/files/<source_id>.json``, ``manifests/<source_id>.json``) and hands them to the box's
SQLite buffer (:class:`~zaindari.edge.buffer.EdgeBuffer`) as ready lake objects (outbox rows of
kind ``object``), which its one shipper sends to S3 in sequence order, under those keys.

* **Staging, bounded memory.** Chunks are staged as the cloud's sink stages them: Parquet writers
  per date and a JSON Lines quarantine file in a spool folder on disk
  (:class:`~zaindari.local_ports.LocalFileSink`, as :class:`~zaindari.infra.file_ports.S3FileSink`
  does on Lambda), so memory holds one chunk, not the file.
* **One transaction per file (or part).** :meth:`commit` only closes the staged files;
  :meth:`write_manifest` then copies them into the buffer (a megabyte at a time), with the
  quarantine record of a file set aside whole, the manifest itself (last, as in the cloud: it says
  the run is complete), the file's alerts (:func:`~zaindari.file_drops.file_alerts`: one per
  device and rule, ``Zaindari Alert`` on EventBridge and the plant's channels) and the file's entry
  in the box's list of files, all in **one** SQLite transaction. A process killed before it commits
  leaves nothing in the log (its spool folder is removed when the next process starts); after it,
  everything. A file posted again is found in that list (:meth:`read_manifest`: the content's hash
  is in the source id), and its objects keep their names, so even a file scored twice lands once.
* **A file refused whole** (corrupt, truncated, without the columns the model needs) is set aside
  as the cloud sets a drop aside: its reason in ``quarantine/files/<source id>.json`` and, when the
  caller lets the sink keep its bytes (:meth:`BufferedFileSink.keeping`, as ``score-file`` does),
  a copy under ``quarantine/files/<source id>/<name>``, so it can be replayed.
* **The bound.** The objects count against the buffer's ``max_bytes``: room is made by compacting
  the oldest raw scores (the buffer's policy); when none is left, the file's scores are stored as
  hourly per-device summaries at once (``summaries/edge/``, :func:`~zaindari.edge.buffer.compact_scores`),
  and the shipped manifest lists only the objects that were kept. Quarantined rows, manifests and
  alerts (and a refused file's copy) are kept beyond the bound, as dead letters and alerts are.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zaindari.edge.buffer import EdgeBuffer, _decode, _encode, compact_scores
from zaindari.file_drops import file_alerts
from zaindari.file_scoring import FileManifest, FileRun, FileSource
from zaindari.jsonable import json_default
from zaindari.local_ports import LocalFileSink
from zaindari.ports import FileSink, PortError, RejectedRecord

__all__ = ["BufferedFileSink", "compact_scores_file", "manifest_key"]

_FILES_SCHEMA = """
CREATE TABLE IF NOT EXISTS edge_files (     -- every file (or part) published: a repost is a duplicate
    name TEXT PRIMARY KEY,                  -- the manifest's key
    status TEXT NOT NULL,
    manifest BLOB NOT NULL,                 -- zlib-compressed JSON
    published_at REAL NOT NULL
) WITHOUT ROWID;
"""
_CONTENT_TYPES = {
    ".parquet": "application/vnd.apache.parquet",
    ".jsonl": "application/x-ndjson",
    ".json": "application/json",
}
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


def manifest_key(manifest: FileManifest) -> str:
    """Where a manifest goes in the lake (the cloud's ``score_batch`` writes the same key)."""
    part = manifest.part
    if part is None or part.count == 1:
        return f"manifests/{manifest.source_id}.json"
    return f"manifests/{manifest.source_id}/part-{part.index:05d}.json"


def _content_type(key: str) -> str:
    return _CONTENT_TYPES.get(Path(key).suffix, "application/octet-stream")


def _json_bytes(data: Any) -> bytes:
    return orjson.dumps(data, default=json_default, option=orjson.OPT_INDENT_2) + b"\n"


class BufferedFileSink:
    """A :class:`~zaindari.ports.FileSink` whose outputs are shipped by the edge buffer (see the
    module docstring).

    Parameters
    ----------
    buffer
        The box's buffer.
    spool_dir
        Where runs are staged until their manifest is written (a folder of this process is made
        in it; those of processes no longer running are removed).
    local_channels
        The plant's alert channels a file's alerts are queued for (as every alert of the box).
    on_published
        Called after a file's transaction committed (the box delivers its local alerts at once).
    """

    def __init__(
        self,
        buffer: EdgeBuffer,
        spool_dir: str | Path,
        *,
        local_channels: Sequence[str] = (),
        on_published: Callable[[], object] | None = None,
    ) -> None:
        self.buffer = buffer
        self.local_channels = tuple(local_channels)
        self.on_published = on_published
        root = Path(spool_dir)
        root.mkdir(parents=True, exist_ok=True)
        _remove_orphans(root)
        self.spool = Path(tempfile.mkdtemp(prefix=f"{_host()}-{os.getpid()}-", dir=root))
        self._staged = LocalFileSink(self.spool)
        self._set_aside: dict[str, tuple[str, dict[str, Any]]] = {}  # source_id -> (key, record)
        self._copies: dict[str, bytes] = {}  # source_id -> the file's bytes, while it is scored
        self._copy_keys: dict[str, str] = {}  # source_id -> where its copy goes, once set aside
        self.buffer._db().executescript(_FILES_SCHEMA)

    # -- staged per run (the spool) -------------------------------------------------------------

    def write_scores(self, run: FileRun, scores: pa.Table) -> None:
        self._staged.write_scores(run, scores)

    def write_quarantine(self, run: FileRun, rejected: Sequence[RejectedRecord]) -> None:
        self._staged.write_quarantine(run, rejected)

    def commit(self, run: FileRun) -> list[str]:
        """Close the run's staged files; they enter the buffer with the manifest (its ``outputs``)."""
        return self._staged.commit(run)

    def abort(self, run: FileRun) -> None:
        self._staged.abort(run)

    def discard(self, outputs: Sequence[str]) -> None:
        """Drop outputs not shipped yet: still in the spool, or in the buffer (the box never
        deletes from the lake; at the edge a file is scored whole, so parts are not discarded)."""
        keys = list(outputs)
        for key in keys:
            with contextlib.suppress(OSError):
                (self.spool / key).unlink(missing_ok=True)
        with self.buffer._write() as db:
            low, high = self.buffer._plan(db) or (0, -1)  # a batch in flight is left to the shipper
            for seq, body in db.execute(
                "SELECT seq, body FROM outbox WHERE kind = 'object' AND NOT (seq BETWEEN ? AND ?)",
                (low, high),
            ).fetchall():
                if _decode(body)["key"] in keys:
                    freed = db.execute("DELETE FROM outbox WHERE seq = ? RETURNING bytes", (seq,)).fetchone()
                    db.execute("DELETE FROM outbox_blobs WHERE seq = ?", (seq,))
                    self.buffer._bump(db, "bytes", -int(freed[0]))

    # -- whole files and manifests --------------------------------------------------------------

    @contextlib.contextmanager
    def keeping(self, source: FileSource, data: bytes) -> Iterator[None]:
        """While ``source`` is scored, its bytes: a file set aside whole is copied to the lake
        with its record (``quarantine/files/<source id>/<name>``, as the cloud's sink copies a
        drop), so it can be replayed."""
        self._copies[source.source_id] = data
        try:
            yield
        finally:
            self._copies.pop(source.source_id, None)
            self._copy_keys.pop(source.source_id, None)

    def quarantine_file(self, source: FileSource, reason: str) -> str:
        """The record of a file set aside whole (and its copy, when the sink is :meth:`keeping`
        its bytes); they enter the buffer with the file's manifest."""
        key = f"quarantine/files/{source.source_id}.json"
        copy = None
        if source.source_id in self._copies:
            copy = f"quarantine/files/{source.source_id}/{Path(source.key).name or 'file'}"
            self._copy_keys[source.source_id] = copy
        record = {
            "source": source.model_dump(mode="json"),
            "source_id": source.source_id,
            "reason": reason,
            "copy": copy,
            "note": None if copy else "posted to an edge box: the file stays with its sender",
            "quarantined_at": datetime.now(UTC).isoformat(),
        }
        self._set_aside[source.source_id] = (key, record)
        return key

    def write_manifest(self, manifest: FileManifest) -> str:
        """Publish the run: its staged outputs, set-aside record, manifest and alerts, and its
        entry in the list of files, in one transaction (see the module docstring)."""
        key = manifest_key(manifest)
        set_aside = self._set_aside.pop(manifest.source_id, None)
        staged = [(output, self.spool / output) for output in manifest.outputs]
        scores = [(k, p) for k, p in staged if k.startswith("scores/")]
        others = [(k, p) for k, p in staged if not k.startswith("scores/")]
        try:
            sizes = {k: p.stat().st_size for k, p in staged}
            with self.buffer._write() as db:
                kept = list(others)
                if scores and not self.buffer._make_room(db, sum(sizes[k] for k, _ in scores)):
                    self._insert_compacted(db, [p for _, p in scores])
                else:
                    kept += scores
                outputs = sorted(k for k, _ in kept)
                for output, path in sorted(kept, key=lambda kp: (not kp[0].startswith("scores/"), kp[0])):
                    with path.open("rb") as data:
                        self.buffer._insert_object(
                            db,
                            key=output,
                            content_type=_content_type(output),
                            data=data,
                            size=sizes[output],
                            items=_rows(path),
                            day=_day(output),
                        )
                if set_aside is not None:
                    copy = self._copy_keys.pop(manifest.source_id, None)
                    if copy is not None:
                        original = self._copies[manifest.source_id]
                        self.buffer._insert_object(
                            db,
                            key=copy,
                            content_type="application/octet-stream",
                            data=BytesIO(original),
                            size=len(original),
                            items=1,
                        )
                    self._insert_json(db, *set_aside)
                shipped = manifest if outputs == manifest.outputs else _with_outputs(manifest, outputs)
                body = shipped.model_dump(mode="json")
                self._insert_json(db, key, body)
                self._insert_alerts(db, shipped, key)
                db.execute(
                    "INSERT OR REPLACE INTO edge_files (name, status, manifest, published_at) VALUES (?, ?, ?, ?)",
                    (key, shipped.status, _encode(body), datetime.now(UTC).timestamp()),
                )
                # remembered as long as the buffer remembers keys (a file older than that, posted
                # again, is scored again: its objects keep their names, so it still lands once)
                db.execute(
                    "DELETE FROM edge_files WHERE name IN (SELECT name FROM edge_files "
                    "ORDER BY published_at DESC LIMIT -1 OFFSET ?)",
                    (self.buffer.key_memory,),
                )
        except OSError as exc:
            raise PortError(f"edge spool {self.spool}: cannot publish {manifest.source_id}: {exc}") from exc
        for _, path in staged:
            path.unlink(missing_ok=True)
        if self.on_published is not None:
            self.on_published()
        return key

    def read_manifest(self, source: FileSource) -> FileManifest | None:
        """The whole file's manifest, if it was published (a file posted again is a duplicate)."""
        row = (
            self.buffer._db()
            .execute(
                "SELECT manifest FROM edge_files WHERE name = ?", (f"manifests/{source.source_id}.json",)
            )
            .fetchone()
        )
        if row is None:
            return None
        return FileManifest.model_validate(_decode(row[0]))

    def close(self) -> None:
        """Remove this process's spool folder."""
        shutil.rmtree(self.spool, ignore_errors=True)

    # -- inside the transaction -----------------------------------------------------------------

    def _insert_json(self, db: Any, key: str, data: Any) -> None:
        body = _json_bytes(data)
        self.buffer._insert_object(
            db, key=key, content_type="application/json", data=BytesIO(body), size=len(body), items=1
        )

    def _insert_alerts(self, db: Any, manifest: FileManifest, location: str) -> None:
        """The file's alerts, as :class:`~zaindari.edge.buffer.BufferedAlerts` buffers any alert
        (one row each, queued for the plant's channels, not again when already buffered)."""
        for alert in file_alerts(manifest, location):
            keys = [f"alert:{alert.dedup_key}"]
            if self.buffer._all_written(db, keys):
                continue
            data = _encode(alert.model_dump(mode="json"))
            self.buffer._insert(db, "alert", "", 1, data)
            self.buffer._remember(db, keys)
            db.executemany(
                "INSERT INTO local_alerts (channel, body) VALUES (?, ?)",
                [(channel, data) for channel in self.local_channels],
            )

    def _insert_compacted(self, db: Any, paths: Sequence[Path]) -> None:
        """No room for the scores: keep them as hourly per-device summaries (the buffer's policy)."""
        by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
        readings = 0
        for path in paths:
            for summary in compact_scores_file(path):
                by_day[summary["hour"][:10]].append(summary)
                readings += int(summary["readings"])
        for day, summaries in sorted(by_day.items()):
            self.buffer._insert(db, "summary", day, len(summaries), _encode(summaries))
        self.buffer._bump(db, "compacted_readings", readings)


def _with_outputs(manifest: FileManifest, outputs: list[str]) -> FileManifest:
    return FileManifest.model_validate(manifest.model_dump() | {"outputs": outputs})


def _day(key: str) -> str:
    for part in key.split("/"):
        if part.startswith("date="):
            return part[5:]
    return ""


def _rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    with path.open("rb") as f:
        return sum(1 for _ in f)


def compact_scores_file(source: str | Path | IO[bytes], batch_rows: int = 65_536) -> list[dict[str, Any]]:
    """A file's scores (Parquet, ``SCORES_SCHEMA``) as :func:`~zaindari.edge.buffer.compact_scores`
    summaries, per device and hour, read a batch at a time; a device-hour spread over batches is
    merged (counts, extremes and alerting rows add up; the mean is weighted by readings)."""
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


def _merge_compacted(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
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


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:64] or "host"


def _remove_orphans(root: Path) -> None:
    """Remove the spool folders of this host's processes that are gone (killed before they
    published). Folders of other hosts (replicas sharing the volume) are theirs to clean."""
    prefix = _host() + "-"
    for folder in root.iterdir():
        if not (folder.is_dir() and folder.name.startswith(prefix)):
            continue
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        # a folder named with this process's id is a previous life's (a restarted container
        # often gets the same pid): this process has not made its own yet
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _conforms() -> None:
    """Static check (mypy) that the sink satisfies its port."""
    _f: FileSink = BufferedFileSink(EdgeBuffer(":memory:"), ".")
