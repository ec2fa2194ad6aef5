"""File scoring's ports on AWS: S3 drops and lake, a DynamoDB ledger of drops, SQS parts, Glue runs.

* :class:`S3DropObjects` reads a drop without holding it in memory: CSV and JSON Lines stream from
  one ``GetObject`` body (re-opened at the offset after a seek); Parquet and byte-range parts read
  through ranged ``GetObject`` calls behind a buffer (:class:`S3ObjectFile`). Reads are pinned to the
  version (``VersionId``) or the ETag (``IfMatch``) the event named, so a drop overwritten while it
  is read fails clearly instead of mixing two versions.
* :class:`S3FileSink` stages a run's scores and quarantined rows in a local spool folder (Lambda's
  ``/tmp``; :class:`~zaindari.local_ports.LocalFileSink` lays them out) and uploads them under their
  final keys only on ``commit``: an S3 object appears whole or not at all, and nothing of an aborted
  run ever reaches the lake. The manifest, written last, says the run is complete.
* :class:`DynamoDropLedger`: one item per drop version (``source_id``), claimed with a conditional
  write, with a lease so a crashed run's claim frees itself; fan-out progress as a number set of
  finished parts (an atomic, idempotent ``ADD``).
* :class:`SqsPartQueue` and :class:`GlueSparkRunner`: the fan-out queue and the Spark job.

Lake layout (as the local sink's): ``scores/date=YYYY-MM-DD/<run>.parquet``,
``quarantine/date=YYYY-MM-DD/<run>.jsonl``, ``quarantine/files/<source_id>.json`` (why) and
``quarantine/files/<source_id>/<file name>`` (a copy of the file), ``manifests/<source_id>.json``
and ``manifests/<source_id>/part-NNNNN.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from zaindari.file_drops import FilePartMessage, FileRunRecord, LedgerClaim
from zaindari.file_reading import ByteStream, FileError
from zaindari.file_scoring import FileManifest, FileRun, FileSource
from zaindari.infra.aws import ClientFactory
from zaindari.infra.aws_ports import aws_errors
from zaindari.local_ports import LocalFileSink
from zaindari.ports import PortError, RejectedRecord

__all__ = [
    "DynamoDropLedger",
    "GlueSparkRunner",
    "S3DropObjects",
    "S3FileSink",
    "S3ObjectFile",
    "SqsPartQueue",
    "source_from_uri",
]

_GONE = ("NoSuchKey", "NoSuchVersion", "404", "NotFound", "NoSuchBucket")
_CHANGED = ("PreconditionFailed", "412")
MAX_COPY_BYTES = 5 * 1024**3  # CopyObject's limit; a larger drop stays where it is, the record says so


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def source_from_uri(uri: str, *, etag: str | None = None, version_id: str | None = None) -> FileSource:
    """``s3://bucket/key`` as a :class:`FileSource`."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return FileSource(key=parsed.path.lstrip("/"), bucket=parsed.netloc, etag=etag, version_id=version_id)


# ----------------------------------------------------------------------------- reading drops


class S3ObjectFile(io.RawIOBase):
    """An S3 object as a seekable binary file, without holding it.

    ``ranged``: each read is one ``GetObject`` of exactly the bytes asked (Parquet: footer, column
    chunks; the connection is reused). Otherwise reads stream from one open body, re-opened at the
    new offset after a seek (CSV, JSON Lines, byte-range parts), and a stream that breaks is
    re-opened where it broke (twice at most) before the failure counts.
    """

    def __init__(
        self,
        client: Any,
        source: FileSource,
        size: int,
        *,
        ranged: bool,
        retries: int = 2,
    ) -> None:
        super().__init__()
        if not source.bucket:
            raise ValueError(f"{source.key}: no bucket")
        self.client = client
        self.source = source
        self.size = size
        self.ranged = ranged
        self.retries = retries
        self.requests = 0
        self._pos = 0
        self._body: Any = None
        self._stream_errors: tuple[type[BaseException], ...] = (OSError, *aws_errors())

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if target < 0:
            raise OSError(f"negative seek position {target}")
        if target != self._pos:
            self._drop_body()
            self._pos = target
        return self._pos

    def close(self) -> None:
        self._drop_body()
        super().close()

    def _drop_body(self) -> None:
        if self._body is not None:
            # closing a half-read body only drops its connection
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def _get(self, byte_range: str | None) -> Any:
        request: dict[str, Any] = {"Bucket": self.source.bucket, "Key": self.source.key}
        if self.source.version_id:
            request["VersionId"] = self.source.version_id
        elif self.source.etag:
            request["IfMatch"] = '"' + self.source.etag.strip('"') + '"'
        if byte_range:
            request["Range"] = byte_range
        self.requests += 1
        try:
            return self.client.get_object(**request)["Body"]
        except aws_errors() as exc:
            code = _code(exc)
            where = f"s3://{self.source.bucket}/{self.source.key}"
            if code in _GONE:
                raise FileError(f"{where} (version {self.source.version}) no longer exists") from exc
            if code in _CHANGED:
                raise FileError(
                    f"{where} changed since it was dropped (ETag is no longer {self.source.etag}): "
                    "its new version is scored on its own event"
                ) from exc
            if code == "InvalidRange":
                return None
            raise PortError(f"S3 GetObject {where}: {exc}") from exc

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self.size - self._pos)
        if wanted <= 0:
            return 0
        if self.ranged:
            body = self._get(f"bytes={self._pos}-{self._pos + wanted - 1}")
            data = b"" if body is None else self._read_body(body, wanted)
        else:
            data = self._stream(wanted)
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def _read_body(self, body: Any, wanted: int) -> bytes:
        try:
            data: bytes = body.read(wanted)
            return data
        except aws_errors() as exc:
            raise PortError(f"S3 read of {self.source.key} at byte {self._pos}: {exc}") from exc
        except OSError as exc:  # urllib3 protocol errors, resets
            raise PortError(f"S3 read of {self.source.key} at byte {self._pos}: {exc}") from exc

    def _stream(self, wanted: int) -> bytes:
        attempts = 0
        while True:
            if self._body is None:
                self._body = self._get(f"bytes={self._pos}-" if self._pos else None)
                if self._body is None:
                    return b""
            try:
                data: bytes = self._body.read(wanted)
                if data or self._pos >= self.size:
                    return data
                error: BaseException = OSError(f"the stream ended at byte {self._pos} of {self.size}")
            except self._stream_errors as exc:
                error = exc
            self._drop_body()
            attempts += 1
            if attempts > self.retries:
                raise PortError(f"S3 read of {self.source.key} broke at byte {self._pos}: {error}")


class S3DropObjects:
    """Drops in S3 (see :class:`S3ObjectFile`).

    Parameters
    ----------
    buffer_bytes
        Read buffer: the smallest request a ranged (Parquet) read makes.
    """

    def __init__(self, factory: ClientFactory, *, buffer_bytes: int = 1 << 20) -> None:
        self.factory = factory
        self.buffer_bytes = buffer_bytes

    def describe(self, source: FileSource) -> FileSource:
        if not source.bucket:
            raise PortError(f"{source.key}: no bucket named")
        request: dict[str, Any] = {"Bucket": source.bucket, "Key": source.key}
        if source.version_id:
            request["VersionId"] = source.version_id
        try:
            head = self.factory.client("s3").head_object(**request)
        except aws_errors() as exc:
            if _code(exc) in _GONE:
                return source  # scoring it records that it is gone, in a failed manifest
            raise PortError(f"S3 HeadObject s3://{source.bucket}/{source.key}: {exc}") from exc
        return source.model_copy(
            update={
                "size": int(head["ContentLength"]),
                "etag": source.etag or str(head.get("ETag", "")).strip('"') or None,
                "version_id": source.version_id or head.get("VersionId") or None,
            }
        )

    def open(self, source: FileSource, *, seekable: bool) -> ByteStream:
        if source.size is None:
            source = self.describe(source)
        raw = S3ObjectFile(self.factory.client("s3"), source, source.size or 0, ranged=seekable)
        return io.BufferedReader(raw, buffer_size=self.buffer_bytes)


# ----------------------------------------------------------------------------- the lake


class S3FileSink:
    """A :class:`zaindari.ports.FileSink` on the lake bucket, spooled locally until commit.

    Parameters
    ----------
    factory
        AWS clients.
    bucket
        The lake bucket.
    spool_dir
        Where staged outputs wait for commit (Lambda: under ``/tmp``; the function's ephemeral
        storage bounds the scores of one run, about a tenth of the input for Parquet scores).
    """

    def __init__(self, factory: ClientFactory, bucket: str, spool_dir: str | Path) -> None:
        self.factory = factory
        self.bucket = bucket
        Path(spool_dir).mkdir(parents=True, exist_ok=True)
        self.spool = Path(tempfile.mkdtemp(prefix="sink-", dir=spool_dir))
        self._local = LocalFileSink(self.spool)

    def _s3(self) -> Any:
        return self.factory.client("s3")

    # -- staged per run -------------------------------------------------------------------------

    def write_scores(self, run: FileRun, scores: Any) -> None:
        self._local.write_scores(run, scores)

    def write_quarantine(self, run: FileRun, rejected: Sequence[RejectedRecord]) -> None:
        self._local.write_quarantine(run, rejected)

    def commit(self, run: FileRun) -> list[str]:
        keys = self._local.commit(run)
        client = self._s3()
        try:
            for key in keys:
                path = self.spool / key
                with path.open("rb") as body:  # one PutObject each: a run's objects are far below 5 GB
                    client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=_content_type(key))
                path.unlink()
        except aws_errors() as exc:
            for key in keys:
                (self.spool / key).unlink(missing_ok=True)
            raise PortError(f"S3 {self.bucket}: cannot publish {run.name}: {exc}") from exc
        return keys

    def abort(self, run: FileRun) -> None:
        self._local.abort(run)

    def discard(self, outputs: Sequence[str]) -> None:
        keys = list(outputs)
        client = self._s3()
        try:
            for i in range(0, len(keys), 1000):
                client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
                )
        except aws_errors() as exc:
            raise PortError(f"S3 {self.bucket}: cannot delete outputs: {exc}") from exc

    # -- whole files and manifests --------------------------------------------------------------

    def quarantine_file(self, source: FileSource, reason: str) -> str:
        key = f"quarantine/files/{source.source_id}.json"
        copy = None
        note = None
        if source.bucket:
            name = PurePosixPath(source.key).name or "file"
            target = f"quarantine/files/{source.source_id}/{name}"
            if source.size is not None and source.size > MAX_COPY_BYTES:
                note = f"larger than {MAX_COPY_BYTES} bytes: not copied, left at s3://{source.bucket}/{source.key}"
            else:
                copy_source: dict[str, str] = {"Bucket": source.bucket, "Key": source.key}
                if source.version_id:
                    copy_source["VersionId"] = source.version_id
                try:
                    self._s3().copy_object(Bucket=self.bucket, Key=target, CopySource=copy_source)
                    copy = f"s3://{self.bucket}/{target}"
                except aws_errors() as exc:
                    if _code(exc) not in _GONE:
                        raise PortError(
                            f"S3 {self.bucket}: cannot copy {source.key} to quarantine: {exc}"
                        ) from exc
                    note = "the object no longer exists: nothing to copy"
        record = {
            "source": source.model_dump(mode="json"),
            "source_id": source.source_id,
            "reason": reason,
            "copy": copy,
            "note": note,
            "quarantined_at": datetime.now(UTC).isoformat(),
        }
        self._put_json(key, record)
        return key

    def manifest_location(self, manifest: FileManifest) -> str:
        part = manifest.part
        if part is None or part.count == 1:
            return f"manifests/{manifest.source_id}.json"
        return f"manifests/{manifest.source_id}/part-{part.index:05d}.json"

    def write_manifest(self, manifest: FileManifest) -> str:
        key = self.manifest_location(manifest)
        self._put_json(key, manifest.model_dump(mode="json"))
        return key

    def manifest(self, source: FileSource) -> FileManifest | None:
        data = self._get_json(f"manifests/{source.source_id}.json")
        return None if data is None else FileManifest.model_validate(data)

    def part_manifests(self, source: FileSource) -> list[FileManifest]:
        prefix = f"manifests/{source.source_id}/part-"
        keys: list[str] = []
        try:
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                keys += [o["Key"] for o in page.get("Contents", [])]
        except aws_errors() as exc:
            raise PortError(f"S3 {self.bucket}: cannot list {prefix}: {exc}") from exc
        manifests = []
        for key in sorted(keys):
            data = self._get_json(key)
            if data is not None:
                manifests.append(FileManifest.model_validate(data))
        return manifests

    def _put_json(self, key: str, data: Any) -> None:
        body = json.dumps(data, indent=2, default=str).encode() + b"\n"
        try:
            self._s3().put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")
        except aws_errors() as exc:
            raise PortError(f"S3 {self.bucket}: cannot write {key}: {exc}") from exc

    def _get_json(self, key: str) -> Any:
        try:
            body = self._s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except aws_errors() as exc:
            if _code(exc) in _GONE:
                return None
            raise PortError(f"S3 {self.bucket}: cannot read {key}: {exc}") from exc
        return json.loads(body)

    def cleanup(self) -> None:
        """Remove the spool folder (staged outputs of runs never committed or aborted)."""
        shutil.rmtree(self.spool, ignore_errors=True)


def _content_type(key: str) -> str:
    if key.endswith(".parquet"):
        return "application/vnd.apache.parquet"
    if key.endswith(".jsonl"):
        return "application/x-ndjson"
    return "application/octet-stream"


# ----------------------------------------------------------------------------- the ledger


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: float) -> dict[str, str]:
    return {"N": repr(float(value)) if isinstance(value, float) else str(value)}


def _record(item: dict[str, Any]) -> FileRunRecord:
    def text(key: str) -> str | None:
        value = item.get(key)
        return None if value is None else str(value["S"])

    def number(key: str) -> float:
        value = item.get(key)
        return 0.0 if value is None else float(value["N"])

    return FileRunRecord(
        source_id=str(text("source_id")),
        status=text("status") or "claimed",
        route=text("route"),
        owner=text("owner"),
        lease_until=number("lease_until"),
        arrivals=int(number("arrivals")),
        parts=int(number("parts")),
        parts_done=len(item.get("parts_done", {}).get("NS", [])),
        job_run_id=text("job_run_id"),
        manifest=text("manifest"),
        outcome=text("outcome"),
        undelivered=list(item.get("undelivered", {}).get("SS", [])),
        message=text("message"),
    )


class DynamoDropLedger:
    """The drops ledger in DynamoDB: one item per ``source_id`` (key and version of the object).

    Items keep: ``bucket``, ``object_key``, ``version``, ``size``, ``route``, ``status``, ``owner``,
    ``lease_until`` (epoch seconds), ``arrivals`` (deliveries of the drop's event, replays
    included), ``first_seen``/``updated_at``, and per outcome ``parts``/``parts_done`` (a number set),
    ``merge_until``, ``job_run_id``, ``manifest``, ``outcome`` (``scored``/``failed``), the counts,
    ``undelivered`` (alert keys a channel refused) and ``message``.
    """

    def __init__(self, factory: ClientFactory, table: str) -> None:
        self.factory = factory
        self.table = table

    def _client(self) -> Any:
        return self.factory.client("dynamodb")

    @staticmethod
    def _key(source: FileSource) -> dict[str, Any]:
        return {"source_id": _s(source.source_id)}

    def _update(self, source: FileSource, **request: Any) -> dict[str, Any] | None:
        """One UpdateItem; None when its condition failed."""
        from botocore.exceptions import ClientError

        try:
            response = self._client().update_item(
                TableName=self.table, Key=self._key(source), ReturnValues="ALL_NEW", **request
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return None
            raise PortError(f"DynamoDB {self.table}: {exc}") from exc
        except aws_errors() as exc:
            raise PortError(f"DynamoDB {self.table}: {exc}") from exc
        attributes: dict[str, Any] = response.get("Attributes", {})
        return attributes

    def claim(
        self, source: FileSource, *, route: str, owner: str, now: float, lease_until: float
    ) -> LedgerClaim:
        values: dict[str, Any] = {
            ":claimed": _s("claimed"),
            ":done": _s("done"),
            ":route": _s(route),
            ":owner": _s(owner),
            ":lease": _n(lease_until),
            ":now": _n(now),
            ":one": _n(1),
            ":bucket": _s(source.bucket or ""),
            ":key": _s(source.key),
            ":version": _s(source.version or ""),
            ":size": _n(source.size or 0),
        }
        # a conditional write: first delivery (no item), or a claim whose lease ran out
        item = self._update(
            source,
            UpdateExpression=(
                "SET #status = :claimed, #route = :route, #owner = :owner, lease_until = :lease, "
                "#bucket = :bucket, object_key = :key, version = :version, #size = :size, "
                "first_seen = if_not_exists(first_seen, :now), updated_at = :now "
                "ADD arrivals :one REMOVE parts_done, merge_until, job_run_id"
            ),
            ConditionExpression="attribute_not_exists(source_id) OR (#status <> :done AND lease_until < :now)",
            ExpressionAttributeNames={
                "#status": "status",
                "#route": "route",
                "#owner": "owner",
                "#size": "size",
                "#bucket": "bucket",
            },
            ExpressionAttributeValues=values,
        )
        if item is not None:
            return LedgerClaim(claimed=True, record=_record(item))
        # held or done: count the arrival, and answer with the record as it is
        seen = self._update(
            source,
            UpdateExpression="ADD arrivals :one SET last_seen = :now",
            ExpressionAttributeValues={":one": _n(1), ":now": _n(now)},
        )
        return LedgerClaim(claimed=False, record=_record(seen or {"source_id": _s(source.source_id)}))

    def release(self, source: FileSource, *, owner: str, message: str) -> None:
        self._update(
            source,
            UpdateExpression="SET #status = :released, lease_until = :zero, message = :message, updated_at = :now",
            ConditionExpression="#status <> :done",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":released": _s("released"),
                ":done": _s("done"),
                ":zero": _n(0),
                ":message": _s(message[:2000] or "released"),
                ":now": _n(time.time()),
            },
        )

    def fan_out(self, source: FileSource, *, owner: str, parts: int, lease_until: float) -> None:
        item = self._update(
            source,
            UpdateExpression=(
                "SET #status = :fanned, parts = :parts, lease_until = :lease, updated_at = :now "
                "REMOVE parts_done, merge_until"
            ),
            ConditionExpression="#owner = :owner AND #status = :claimed",
            ExpressionAttributeNames={"#status": "status", "#owner": "owner"},
            ExpressionAttributeValues={
                ":fanned": _s("fanned_out"),
                ":claimed": _s("claimed"),
                ":parts": _n(parts),
                ":lease": _n(lease_until),
                ":owner": _s(owner),
                ":now": _n(time.time()),
            },
        )
        if item is None:
            raise PortError(f"{source.source_id}: the claim was lost before its parts were queued")

    def hand_to_spark(self, source: FileSource, *, owner: str, job_run_id: str, lease_until: float) -> None:
        item = self._update(
            source,
            UpdateExpression="SET #status = :spark, job_run_id = :run, lease_until = :lease, updated_at = :now",
            ConditionExpression="#owner = :owner AND #status = :claimed",
            ExpressionAttributeNames={"#status": "status", "#owner": "owner"},
            ExpressionAttributeValues={
                ":spark": _s("spark"),
                ":claimed": _s("claimed"),
                ":run": _s(job_run_id),
                ":lease": _n(lease_until),
                ":owner": _s(owner),
                ":now": _n(time.time()),
            },
        )
        if item is None:
            raise PortError(f"{source.source_id}: the claim was lost after Spark run {job_run_id} started")

    def part_done(self, source: FileSource, index: int) -> FileRunRecord | None:
        item = self._update(
            source,
            UpdateExpression="ADD parts_done :part SET updated_at = :now",
            ConditionExpression="#status = :fanned",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":part": {"NS": [str(index)]},
                ":fanned": _s("fanned_out"),
                ":now": _n(time.time()),
            },
        )
        return None if item is None else _record(item)

    def claim_merge(self, source: FileSource, *, owner: str, now: float, lease_until: float) -> bool:
        item = self._update(
            source,
            UpdateExpression="SET merge_until = :lease, merged_by = :owner",
            ConditionExpression=(
                "#status = :fanned AND (attribute_not_exists(merge_until) OR merge_until < :now)"
            ),
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":fanned": _s("fanned_out"),
                ":lease": _n(lease_until),
                ":owner": _s(owner),
                ":now": _n(now),
            },
        )
        return item is not None

    def finish(
        self, source: FileSource, manifest: FileManifest, *, location: str, undelivered: Sequence[str]
    ) -> None:
        values: dict[str, Any] = {
            ":done": _s("done"),
            ":outcome": _s(manifest.status),
            ":manifest": _s(location),
            ":rows_in": _n(manifest.rows_in),
            ":rows_scored": _n(manifest.rows_scored),
            ":rows_quarantined": _n(manifest.rows_quarantined),
            ":alerts": _n(len(manifest.alerts)),
            ":now": _n(time.time()),
            ":zero": _n(0),
        }
        sets = [
            "#status = :done",
            "outcome = :outcome",
            "manifest = :manifest",
            "rows_in = :rows_in",
            "rows_scored = :rows_scored",
            "rows_quarantined = :rows_quarantined",
            "alert_summaries = :alerts",
            "lease_until = :zero",
            "updated_at = :now",
        ]
        removes = []
        if manifest.error:
            values[":message"] = _s(manifest.error[:2000])
            sets.append("message = :message")
        else:
            removes.append("message")
        if undelivered:
            values[":undelivered"] = {"SS": sorted(set(undelivered))}
            sets.append("undelivered = :undelivered")
        else:
            removes.append("undelivered")
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        self._update(
            source,
            UpdateExpression=expression,
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=values,
        )

    def set_undelivered(self, source: FileSource, undelivered: Sequence[str]) -> None:
        if undelivered:
            self._update(
                source,
                UpdateExpression="SET undelivered = :u",
                ExpressionAttributeValues={":u": {"SS": sorted(set(undelivered))}},
            )
        else:
            self._update(source, UpdateExpression="REMOVE undelivered")

    def find(self, source: FileSource) -> FileRunRecord | None:
        try:
            item = self._client().get_item(TableName=self.table, Key=self._key(source), ConsistentRead=True)
        except aws_errors() as exc:
            raise PortError(f"DynamoDB {self.table}: {exc}") from exc
        found = item.get("Item")
        return None if not found else _record(found)


# ----------------------------------------------------------------------------- fan-out and Spark


class SqsPartQueue:
    """Part messages to the fan-out queue, ten per ``SendMessageBatch``."""

    def __init__(self, factory: ClientFactory, queue_url: str) -> None:
        self.factory = factory
        self.queue_url = queue_url

    def send(self, messages: Sequence[FilePartMessage]) -> None:
        client = self.factory.client("sqs")
        for i in range(0, len(messages), 10):
            chunk = messages[i : i + 10]
            entries = [{"Id": str(k), "MessageBody": m.model_dump_json()} for k, m in enumerate(chunk)]
            try:
                response = client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except aws_errors() as exc:
                raise PortError(f"SQS {self.queue_url}: {exc}") from exc
            if response.get("Failed"):
                raise PortError(f"SQS {self.queue_url}: {len(response['Failed'])} part message(s) refused")


class GlueSparkRunner:
    """Starts the ``score_file`` Glue job for one drop, and finds the drop a job run scored.

    The drop travels as job arguments: ``--input s3://bucket/key``, ``--etag``, ``--version`` (the
    version id), ``--size``; the job reads the model and the lake from its default arguments (``--model``,
    ``--lake``), overridden here when given; ``--keep_columns`` (comma-separated) when the function keeps
    some (``ZAINDARI_FILE_KEEP_COLUMNS``), so both routes write the same scores columns.
    """

    def __init__(
        self,
        factory: ClientFactory,
        job_name: str,
        *,
        model: str | None = None,
        lake: str | None = None,
        keep_columns: Sequence[str] = (),
    ) -> None:
        self.factory = factory
        self.job_name = job_name
        self.model = model
        self.lake = lake
        self.keep_columns = tuple(keep_columns)

    def start(self, source: FileSource) -> str:
        arguments = {
            "--input": f"s3://{source.bucket}/{source.key}",
            "--etag": source.etag or "",
            "--version": source.version_id or "",
            "--size": str(source.size or ""),
        }
        if self.model:
            arguments["--model"] = self.model
        if self.lake:
            arguments["--lake"] = self.lake
        if self.keep_columns:
            arguments["--keep_columns"] = ",".join(self.keep_columns)
        try:
            response = self.factory.client("glue").start_job_run(JobName=self.job_name, Arguments=arguments)
        except aws_errors() as exc:
            raise PortError(f"Glue StartJobRun {self.job_name}: {exc}") from exc
        return str(response["JobRunId"])

    def source_of(self, job_run_id: str) -> FileSource | None:
        """The drop a run of the job was started for (from its arguments); None if unknown."""
        try:
            run = self.factory.client("glue").get_job_run(JobName=self.job_name, RunId=job_run_id)["JobRun"]
        except aws_errors() as exc:
            if _code(exc) == "EntityNotFoundException":
                return None
            raise PortError(f"Glue GetJobRun {self.job_name}/{job_run_id}: {exc}") from exc
        arguments = run.get("Arguments") or {}
        uri = arguments.get("--input")
        if not uri:
            return None
        size = arguments.get("--size") or None
        source = source_from_uri(
            uri, etag=arguments.get("--etag") or None, version_id=arguments.get("--version") or None
        )
        return source.model_copy(update={"size": int(size) if size else None})
