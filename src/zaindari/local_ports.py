"""Ports on a local folder: the file sink the edge box's ``score-file`` and the tests use.

The folder is laid out as the lake is (``docs``: lake layout):

* ``scores/date=YYYY-MM-DD/<run>.parquet``: scores, Hive-partitioned by the reading's UTC date;
* ``quarantine/date=YYYY-MM-DD/<run>.jsonl``: quarantined rows, one JSON object per line with its
  reason (partitioned by the day the file was scored: a bad row may have no usable timestamp);
* ``quarantine/files/<source_id>.json``: a file set aside whole, with the reason;
* ``manifests/<source_id>.json`` (a whole file) and ``manifests/<source_id>/part-00003.json``.

Scores and quarantined rows are staged under hidden names (``.<name>.inprogress``, which Hive,
Athena and Spark skip) and renamed into place on commit.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zaindari.file_scoring import FileManifest, FileRun, FileSource
from zaindari.jsonable import finite, json_default
from zaindari.ports import FileSink, PortError, RejectedRecord

if TYPE_CHECKING:
    from zaindari.drift import WindowSummary

__all__ = ["LocalFileSink", "LocalSummaryStore"]

_EPOCH_DAY = date(1970, 1, 1)
_US_PER_DAY = 86_400_000_000


@dataclass
class _Staged:
    """What one run has staged: open Parquet writers per date, the quarantine file, final names."""

    writers: OrderedDict[str, tuple[pq.ParquetWriter, Path]] = field(default_factory=OrderedDict)
    segments: dict[str, int] = field(default_factory=dict)
    quarantine: IO[str] | None = None
    files: list[tuple[Path, Path]] = field(default_factory=list)  # (staged, final)


class LocalFileSink:
    """A :class:`zaindari.ports.FileSink` on a folder.

    Parameters
    ----------
    root
        The folder (created when missing).
    max_open_writers
        Parquet files kept open per run; a file spanning more dates closes the least recently
        used and starts a new segment (``<run>-1.parquet``) when that date comes back.
    """

    def __init__(self, root: str | Path, *, max_open_writers: int = 32) -> None:
        self.root = Path(root)
        self.max_open_writers = max_open_writers
        self._runs: dict[str, _Staged] = {}

    # -- scores and quarantined rows ----------------------------------------------------------

    def write_scores(self, run: FileRun, scores: pa.Table) -> None:
        staged = self._runs.setdefault(run.name, _Staged())
        micros = np.asarray(scores["timestamp"].cast(pa.int64()).to_numpy(), dtype=np.int64)
        days = micros // _US_PER_DAY  # floor: UTC days since 1970-01-01
        distinct = np.unique(days).tolist()
        try:
            for day in distinct:
                name = (_EPOCH_DAY + timedelta(days=int(day))).isoformat()
                part = scores.filter(pa.array(days == day)) if len(distinct) > 1 else scores
                self._writer(staged, run, name, scores.schema).write_table(part)
        except OSError as exc:
            raise PortError(f"local scores folder: {exc}") from exc

    def _writer(self, staged: _Staged, run: FileRun, day: str, schema: pa.Schema) -> pq.ParquetWriter:
        entry = staged.writers.get(day)
        if entry is not None:
            staged.writers.move_to_end(day)
            return entry[0]
        if len(staged.writers) >= self.max_open_writers:
            _, (oldest, _) = staged.writers.popitem(last=False)
            oldest.close()
        segment = staged.segments.get(day, 0)
        staged.segments[day] = segment + 1
        suffix = f"-{segment}" if segment else ""
        final = self.root / "scores" / f"date={day}" / f"{run.name}{suffix}.parquet"
        path = final.with_name(f".{final.name}.inprogress")
        path.parent.mkdir(parents=True, exist_ok=True)
        text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_list(f.type)]
        # dictionaries only where values repeat (ids, versions, rules): floats gain nothing from them
        writer = pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=text)
        staged.writers[day] = (writer, path)
        staged.files.append((path, final))
        return writer

    def write_quarantine(self, run: FileRun, rejected: Sequence[RejectedRecord]) -> None:
        staged = self._runs.setdefault(run.name, _Staged())
        try:
            if staged.quarantine is None:
                day = run.started_at.astimezone(UTC).date().isoformat()
                final = self.root / "quarantine" / f"date={day}" / f"{run.name}.jsonl"
                path = final.with_name(f".{final.name}.inprogress")
                path.parent.mkdir(parents=True, exist_ok=True)
                staged.quarantine = path.open("w", encoding="utf-8")
                staged.files.append((path, final))
            lines = (json.dumps(finite(r.to_dict()), default=json_default, allow_nan=False) for r in rejected)
            staged.quarantine.write("".join(f"{line}\n" for line in lines))
        except OSError as exc:
            raise PortError(f"local quarantine folder: {exc}") from exc

    def commit(self, run: FileRun) -> list[str]:
        staged = self._runs.pop(run.name, None)
        if staged is None:
            return []
        try:
            self._close(staged)
            for path, final in staged.files:
                os.replace(path, final)
        except OSError as exc:
            raise PortError(f"local folder: cannot publish {run.name}: {exc}") from exc
        return sorted(final.relative_to(self.root).as_posix() for _, final in staged.files)

    def abort(self, run: FileRun) -> None:
        staged = self._runs.pop(run.name, None)
        if staged is None:
            return
        self._close(staged)
        for path, _ in staged.files:
            path.unlink(missing_ok=True)

    @staticmethod
    def _close(staged: _Staged) -> None:
        for writer, _ in staged.writers.values():
            writer.close()
        staged.writers.clear()
        if staged.quarantine is not None:
            staged.quarantine.close()
            staged.quarantine = None

    def discard(self, outputs: Sequence[str]) -> None:
        for key in outputs:
            target = (self.root / key).resolve()
            if self.root.resolve() not in target.parents:
                raise PortError(f"refusing to delete {key!r}: outside {self.root}")
            target.unlink(missing_ok=True)

    # -- whole files and manifests ------------------------------------------------------------

    def quarantine_file(self, source: FileSource, reason: str) -> str:
        key = f"quarantine/files/{source.source_id}.json"
        record = {
            "source": source.model_dump(mode="json"),
            "reason": reason,
            "quarantined_at": datetime.now(UTC).isoformat(),
        }
        self._write_json(key, record)
        return key

    def write_manifest(self, manifest: FileManifest) -> str:
        part = manifest.part
        if part is None or part.count == 1:
            key = f"manifests/{manifest.source_id}.json"
        else:
            key = f"manifests/{manifest.source_id}/part-{part.index:05d}.json"
        self._write_json(key, manifest.model_dump(mode="json"))
        return key

    def read_manifest(self, source: FileSource) -> FileManifest | None:
        """The whole file's manifest, if it was written (for idempotency checks at the edge)."""
        path = self.root / "manifests" / f"{source.source_id}.json"
        if not path.is_file():
            return None
        return FileManifest.model_validate_json(path.read_text(encoding="utf-8"))

    def _write_json(self, key: str, data: Any) -> None:
        path = self.root / key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(data, indent=2, default=json_default) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise PortError(f"local folder: cannot write {key}: {exc}") from exc


def _conforms() -> None:
    """Static check (mypy) that the local sink satisfies its port."""
    _f: FileSink = LocalFileSink(".")


class LocalSummaryStore:
    """Drift window summaries in a local folder laid out as the lake's ``summaries/``.

    The edge box keeps what it scored here (``EventScoring(summaries=..., source="edge")`` or
    :func:`zaindari.drift.summarize_table`); uploading the folder to the lake unchanged is all the
    cloud needs: keys are the S3 store's keys, and summaries merge with the cloud's (see
    ``zaindari.drift``). Each object is written to a hidden name and renamed into place.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def write(self, summaries: Sequence[WindowSummary], *, source: str, name: str) -> list[str]:
        from zaindari.drift import summaries_json, summary_objects

        written = []
        try:
            for key, group in summary_objects(summaries, source=source, name=name).items():
                target = self.root / key
                target.parent.mkdir(parents=True, exist_ok=True)
                staged = target.with_name(f".{target.name}.inprogress")
                staged.write_bytes(summaries_json(group))
                os.replace(staged, target)
                written.append(str(target))
        except OSError as exc:
            raise PortError(f"summaries folder {self.root}: {exc}") from exc
        return written

    def read(self, model: str, start: datetime, end: datetime) -> list[WindowSummary]:
        from zaindari.drift import SUMMARIES_PREFIX, WindowSummary, summary_days, summary_key_span

        lo, hi = start.timestamp(), end.timestamp()
        out: list[WindowSummary] = []
        for day in summary_days(start, end):
            folder = self.root / SUMMARIES_PREFIX / f"date={day}" / f"model={model}"
            for path in sorted(folder.glob("version=*/*.json")):
                span = summary_key_span(path.relative_to(self.root).as_posix())
                if span is None or span[1] < lo or span[0] >= hi:
                    continue
                out += [
                    s
                    for s in map(WindowSummary.from_dict, json.loads(path.read_text()))
                    if lo <= s.start < hi
                ]
        return out
