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
  :meth:`write_manifest` then puts into the buffer the file's alerts
  (:func:`~zaindari.file_drops.file_alerts`: one per device and rule, ``Zaindari Alert`` on
  EventBridge and the plant's channels; first, so that the room each alert makes never compacts
  this file's own objects), the staged objects (copied a megabyte at a time), the quarantine record
  of a file set aside whole, the manifest itself (last of the objects, as in the cloud: it says the
  run is complete) and the file's entry in the box's list of files, all in **one** SQLite
  transaction. A process killed before it commits
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
import hashlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from zaindari.edge.buffer import BufferedAlerts, EdgeBuffer
from zaindari.file_drops import file_alerts
from zaindari.file_scoring import FileManifest, FileRun, FileScoring, FileSource
from zaindari.jsonable import json_default
from zaindari.local_ports import LocalFileSink
from zaindari.ports import FileSink, PortError, RejectedRecord

__all__ = ["BufferedFileSink", "manifest_key", "posted_source"]

_CONTENT_TYPES = {
    ".parquet": "application/vnd.apache.parquet",
    ".jsonl": "application/x-ndjson",
    ".json": "application/json",
}


def manifest_key(manifest: FileManifest) -> str:
    """Where a manifest goes in the lake (the cloud's ``score_batch`` writes the same key)."""
    part = manifest.part
    if part is None or part.count == 1:
        return f"manifests/{manifest.source_id}.json"
    return f"manifests/{manifest.source_id}/part-{part.index:05d}.json"


def posted_source(box_id: str, name: str, data: bytes) -> FileSource:
    """A file posted to the box as the use case's source: ``edge/<box>/<name>``, its content's
    hash its version (the same file sent twice is the same source: :meth:`BufferedFileSink.read_manifest`
    finds it)."""
    return FileSource(key=f"edge/{box_id}/{name}", etag=hashlib.sha256(data).hexdigest(), size=len(data))


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
        self._alerts = BufferedAlerts(buffer, local_channels=self.local_channels)
        self._one_file = threading.Lock()

    def score_posted(
        self, scoring: FileScoring, source: FileSource, data: bytes
    ) -> tuple[FileManifest, bool]:
        """Score a file posted to the box with ``scoring`` (whose sink this is), one file at a time
        (the box's cores score it, and a file posted twice at once is scored once), keeping its
        bytes (a file refused whole is copied to the lake). Returns its manifest and whether it
        is a duplicate: a file already scored is not scored again (its manifest is returned); one
        that failed is scored again. Raises :class:`~zaindari.ports.PortError` if the buffer fails.
        """
        with self._one_file, self.keeping(source, data):
            previous = self.read_manifest(source)
            if previous is not None and previous.status == "scored":
                return previous, True
            return scoring.score_file(BytesIO(data), source), False

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
        self.buffer.discard_objects(keys)

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
            with self.buffer.transaction():
                # alerts first: each makes room for itself (alerts are never dropped), which may
                # compact older score objects, never this file's, not appended yet. (They read the
                # manifest's status and alert summaries, not its outputs.)
                self._alerts.publish(file_alerts(manifest, key))
                kept = list(others)
                if scores and not self.buffer.make_room(sum(sizes[k] for k, _ in scores)):
                    self.buffer.append_compacted_scores([p for _, p in scores])
                else:
                    kept += scores
                outputs = sorted(k for k, _ in kept)
                for output, path in sorted(kept, key=lambda kp: (not kp[0].startswith("scores/"), kp[0])):
                    with path.open("rb") as data:
                        self.buffer.append_object(
                            output,
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
                        self.buffer.append_object(
                            copy,
                            content_type="application/octet-stream",
                            data=BytesIO(original),
                            size=len(original),
                            items=1,
                        )
                    self._append_json(*set_aside)
                shipped = manifest if outputs == manifest.outputs else _with_outputs(manifest, outputs)
                body = shipped.model_dump(mode="json")
                self._append_json(key, body)
                self.buffer.record_file(key, shipped.status, body)
        except OSError as exc:
            raise PortError(f"edge spool {self.spool}: cannot publish {manifest.source_id}: {exc}") from exc
        for _, path in staged:
            path.unlink(missing_ok=True)
        if self.on_published is not None:
            self.on_published()
        return key

    def read_manifest(self, source: FileSource) -> FileManifest | None:
        """The whole file's manifest, if it was published (a file posted again is a duplicate)."""
        body = self.buffer.published_file(f"manifests/{source.source_id}.json")
        return None if body is None else FileManifest.model_validate(body)

    def close(self) -> None:
        """Remove this process's spool folder."""
        shutil.rmtree(self.spool, ignore_errors=True)

    def _append_json(self, key: str, data: Any) -> None:
        body = _json_bytes(data)
        self.buffer.append_object(
            key, content_type="application/json", data=BytesIO(body), size=len(body), items=1
        )


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
