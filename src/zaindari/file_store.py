"""Files by URI: list a folder (sizes, fingerprints), read and write small files, stage folders.

The port, :class:`FileStore`, and its adapters that need nothing but the standard library: a
local folder (:class:`LocalFileStore`) and :class:`RoutingFileStore`, which sends ``s3://`` URIs
to an S3 store (:class:`zaindari.infra.s3_files.S3FileStore`, boto3) and everything else to the
local one. The Spark jobs read their inputs, spec and maintenance log through it
(:mod:`zaindari.training_set`); the promotion gate reads the maintenance log through the S3 one
(:class:`zaindari.infra.deploy_ports.S3MaintenanceLog`). Nothing here imports pyspark or boto3,
so a Lambda without them can use it.

A store reports a file or folder it cannot list, read or write as :class:`FileStoreError`, the
URI named; a local file that does not exist raises the ``OSError`` ``open`` raises.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = ["FileStore", "FileStoreError", "LocalFileStore", "RoutingFileStore", "StoredFile"]


class FileStoreError(RuntimeError):
    """A file or folder that cannot be listed, read or written (the message names its URI)."""


@dataclass(frozen=True)
class StoredFile:
    """One file: where it is, its size, and a fingerprint (S3 ETag, or sha256 of a local file);
    ``day`` is the UTC day of the lake partition it was found in, when the finder knows it."""

    uri: str
    size: int
    etag: str
    day: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "size": self.size, "etag": self.etag, "date": self.day}


class FileStore(Protocol):
    """Files by URI: a local folder here, S3 on AWS (``zaindari.infra.s3_files``)."""

    def list_files(self, prefix: str) -> list[StoredFile]:
        """Every file under the folder ``prefix`` (recursive), sorted by URI."""
        ...

    def read_bytes(self, uri: str) -> bytes: ...

    def write_bytes(self, uri: str, data: bytes) -> None: ...

    def download(self, files: Sequence[StoredFile], folder: Path, root: str) -> list[Path]:
        """Local copies of ``files`` under ``folder``, each at its path relative to ``root``."""
        ...

    def replace_folder(self, folder: Path, prefix: str) -> int:
        """Make ``prefix`` hold exactly the files of the local ``folder``; returns the files written."""
        ...


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class LocalFileStore:
    """Files in the local filesystem; URIs are paths (``file://`` accepted)."""

    @staticmethod
    def path(uri: str) -> Path:
        return Path(uri.removeprefix("file://"))

    def list_files(self, prefix: str) -> list[StoredFile]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return [
            StoredFile(str(p), p.stat().st_size, "sha256:" + _sha256_file(p))
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        ]

    def read_bytes(self, uri: str) -> bytes:
        return self.path(uri).read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        target = self.path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def download(self, files: Sequence[StoredFile], folder: Path, root: str) -> list[Path]:
        return [self.path(f.uri) for f in files]  # already local: Spark reads them in place

    def replace_folder(self, folder: Path, prefix: str) -> int:
        target = self.path(prefix)
        if target.resolve() == folder.resolve():
            return sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns(".*"))
        return sum(1 for p in target.rglob("*") if p.is_file())


class RoutingFileStore:
    """``s3://`` URIs to ``s3``, everything else to a :class:`LocalFileStore`."""

    def __init__(self, s3: FileStore | None = None, local: FileStore | None = None) -> None:
        self.s3 = s3
        self.local = local or LocalFileStore()

    def _for(self, uri: str) -> FileStore:
        if uri.startswith("s3://"):
            if self.s3 is None:
                raise FileStoreError(f"{uri}: no S3 access configured")
            return self.s3
        return self.local

    def list_files(self, prefix: str) -> list[StoredFile]:
        return self._for(prefix).list_files(prefix)

    def read_bytes(self, uri: str) -> bytes:
        return self._for(uri).read_bytes(uri)

    def write_bytes(self, uri: str, data: bytes) -> None:
        self._for(uri).write_bytes(uri, data)

    def download(self, files: Sequence[StoredFile], folder: Path, root: str) -> list[Path]:
        return self._for(root).download(files, folder, root)

    def replace_folder(self, folder: Path, prefix: str) -> int:
        return self._for(prefix).replace_folder(folder, prefix)


def _conforms() -> None:
    """Static check (mypy) that the adapters satisfy the port."""
    _l: FileStore = LocalFileStore()
    _r: FileStore = RoutingFileStore()
