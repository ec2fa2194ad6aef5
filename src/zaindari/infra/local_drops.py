"""Drops for local invocations: the objects an S3 event names, put into the embedded AWS.

A sample event (``events/s3_object_created_csv.json`` ...) names an object in the raw bucket that a
fresh moto does not hold. :func:`seed_drop_objects` uploads it from ``events/data/`` (the file with
the key's file name) when it is missing, and points the event at the object's current version:
moto gives every upload to a versioned bucket a new version id, which the sample cannot know.
Used by ``zaindari invoke`` and the function tests; never against real AWS.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote_plus

from zaindari.infra.aws import ClientFactory

__all__ = ["seed_drop_objects"]


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def seed_drop_objects(factory: ClientFactory, event: Any, data_dir: Path) -> tuple[Any, list[str]]:
    """Make the objects ``event`` names exist; returns the event pointed at them, and notes.

    Understands S3 notifications (``Records[].s3``), EventBridge ``Object Created`` events and SQS
    records whose body is a file part message. Objects in buckets that do not exist are left alone
    (the function records them as gone). Any other event is returned as it is.
    """
    if factory.config.endpoint_url is None:
        raise ValueError("refusing to seed objects into real AWS")
    patched = copy.deepcopy(event)
    notes: list[str] = []
    if not isinstance(patched, dict):
        return patched, notes

    def seed(bucket: str, key: str, etag: str | None) -> str | None:
        version, note = _ensure_object(factory, bucket, key, etag, data_dir)
        if note:
            notes.append(note)
        return version

    for record in patched.get("Records") or []:
        if not isinstance(record, dict):
            continue
        if record.get("eventSource") == "aws:s3":
            s3 = record.get("s3") or {}
            obj = s3.get("object") or {}
            version = seed(
                s3.get("bucket", {}).get("name", ""), unquote_plus(obj.get("key", "")), obj.get("eTag")
            )
            if version and obj.get("versionId") != version:
                obj["versionId"] = version
        elif record.get("eventSource") == "aws:sqs":
            try:
                body = json.loads(record.get("body") or "")
            except ValueError:
                continue
            source = (
                body.get("source")
                if isinstance(body, dict) and body.get("kind") == "zaindari.file_part"
                else None
            )
            if isinstance(source, dict):
                version = seed(source.get("bucket") or "", source.get("key") or "", source.get("etag"))
                if version and source.get("version_id") != version:
                    source["version_id"] = version
                    record["body"] = json.dumps(body, separators=(",", ":"))
    if patched.get("source") == "aws.s3" and isinstance(patched.get("detail"), dict):
        detail = patched["detail"]
        obj = detail.get("object") or {}
        version = seed((detail.get("bucket") or {}).get("name", ""), obj.get("key", ""), obj.get("etag"))
        if version and obj.get("version-id") != version:
            obj["version-id"] = version
    return patched, notes


def _ensure_object(
    factory: ClientFactory, bucket: str, key: str, etag: str | None, data_dir: Path
) -> tuple[str | None, str | None]:
    """The object's current version id (uploading it when missing), and a note for the user."""
    from botocore.exceptions import ClientError

    if not bucket or not key:
        return None, None
    s3 = factory.client("s3")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
            raise
        head = None
    if head is None:
        local = data_dir / PurePosixPath(key).name
        if not local.is_file():
            return None, f"s3://{bucket}/{key} does not exist and {local} has no file to upload"
        try:
            put = s3.put_object(Bucket=bucket, Key=key, Body=local.read_bytes())
        except ClientError as exc:
            if _code(exc) == "NoSuchBucket":
                return None, f"bucket {bucket} does not exist: s3://{bucket}/{key} not seeded"
            raise
        version = put.get("VersionId")
        actual = str(put.get("ETag", "")).strip('"')
        note = f"uploaded {local} to s3://{bucket}/{key}" + (f" (version {version})" if version else "")
    else:
        version = head.get("VersionId")
        actual = str(head.get("ETag", "")).strip('"')
        note = None
    if etag and actual and etag.strip('"') != actual:
        note = (note + "; " if note else "") + (
            f"s3://{bucket}/{key} has ETag {actual}, the event says {etag}: regenerate the event"
        )
    return (version if version and version != "null" else None), note
