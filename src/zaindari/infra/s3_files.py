"""Files in S3 for the Spark jobs and the promotion gate: list (sizes, ETags), read, write, stage folders.

Implements :class:`zaindari.file_store.FileStore` with boto3, so a local Spark (which has no S3
filesystem offline, see :mod:`zaindari.training_set`) can work on S3 data through local copies, and
a Lambda without pyspark (the promotion gate's maintenance log) can read the lake's files.
Downloads and uploads run in a small thread pool (clients are thread-safe) with plain
``GetObject``/``PutObject`` calls, so the store works with botocore-only clients too.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from zaindari.file_store import FileStore, FileStoreError, StoredFile
from zaindari.infra.aws import ClientFactory
from zaindari.infra.aws_ports import aws_errors

__all__ = ["S3FileStore", "split_s3_uri"]


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` as ``("bucket", "key/prefix")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise FileStoreError(f"{uri!r} is not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


class S3FileStore:
    """S3 objects as files (see the module docstring)."""

    def __init__(self, factory: ClientFactory, threads: int = 8) -> None:
        self.factory = factory
        self.threads = threads

    def list_files(self, prefix: str) -> list[StoredFile]:
        bucket, key = split_s3_uri(prefix)
        if key and not key.endswith("/"):
            key += "/"
        found: list[StoredFile] = []
        try:
            pages = (
                self.factory.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):
                        continue
                    found.append(
                        StoredFile(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), obj["ETag"].strip('"'))
                    )
        except aws_errors() as exc:
            raise FileStoreError(f"cannot list {prefix}: {exc}") from exc
        return sorted(found, key=lambda f: f.uri)

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        try:
            body: bytes = self.factory.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        except aws_errors() as exc:
            raise FileStoreError(f"cannot read {uri}: {exc}") from exc
        return body

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3_uri(uri)
        try:
            self.factory.client("s3").put_object(Bucket=bucket, Key=key, Body=data)
        except aws_errors() as exc:
            raise FileStoreError(f"cannot write {uri}: {exc}") from exc

    def download(self, files: Sequence[StoredFile], folder: Path, root: str) -> list[Path]:
        root = root.rstrip("/") + "/"
        targets = []
        for f in files:
            if not f.uri.startswith(root):
                raise FileStoreError(f"{f.uri} is not under {root}")
            targets.append(folder / f.uri[len(root) :])
        client = self.factory.client("s3")

        def fetch(pair: tuple[StoredFile, Path]) -> None:
            stored, target = pair
            target.parent.mkdir(parents=True, exist_ok=True)
            bucket, key = split_s3_uri(stored.uri)
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            with target.open("wb") as f:  # plain botocore clients: no download_file
                for chunk in body.iter_chunks(1 << 20):
                    f.write(chunk)

        try:
            with ThreadPoolExecutor(max_workers=self.threads) as pool:
                list(pool.map(fetch, zip(files, targets, strict=True)))
        except aws_errors() as exc:
            raise FileStoreError(f"cannot download from {root}: {exc}") from exc
        return targets

    def replace_folder(self, folder: Path, prefix: str) -> int:
        bucket, key = split_s3_uri(prefix)
        key = key.rstrip("/") + "/"
        client = self.factory.client("s3")
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
        try:
            stale = [f.uri for f in self.list_files(f"s3://{bucket}/{key}")]
            keep = {f"s3://{bucket}/{key}{p.relative_to(folder).as_posix()}" for p in files}
            doomed = [split_s3_uri(u)[1] for u in stale if u not in keep]
            for i in range(0, len(doomed), 1000):
                client.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": k} for k in doomed[i : i + 1000]], "Quiet": True},
                )

            def put(path: Path) -> None:
                with path.open("rb") as f:  # one request per file: Spark part files are far below 5 GB
                    client.put_object(Bucket=bucket, Key=key + path.relative_to(folder).as_posix(), Body=f)

            with ThreadPoolExecutor(max_workers=self.threads) as pool:
                list(pool.map(put, files))
        except aws_errors() as exc:
            raise FileStoreError(f"cannot upload {folder} to {prefix}: {exc}") from exc
        return len(files)


def _conforms() -> None:
    """Static check (mypy) that the store satisfies the port."""
    _s: FileStore = S3FileStore(ClientFactory.__new__(ClientFactory))
