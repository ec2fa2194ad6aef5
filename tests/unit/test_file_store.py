"""The file store port's local adapters (the S3 one runs against moto in tests/functions)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from zaindari.file_store import FileStoreError, LocalFileStore, RoutingFileStore, StoredFile


def test_a_local_folder_lists_every_file_below_it_in_uri_order_with_its_sha256(tmp_path: Path) -> None:
    store = LocalFileStore()
    store.write_bytes(f"file://{tmp_path}/b/day=2/x.jsonl", b"second\n")
    store.write_bytes(f"{tmp_path}/a.jsonl", b"first\n")

    listed = store.list_files(f"file://{tmp_path}")

    assert listed == [
        StoredFile(f"{tmp_path}/a.jsonl", 6, "sha256:" + hashlib.sha256(b"first\n").hexdigest()),
        StoredFile(f"{tmp_path}/b/day=2/x.jsonl", 7, "sha256:" + hashlib.sha256(b"second\n").hexdigest()),
    ]
    assert store.read_bytes(listed[1].uri) == b"second\n"
    assert store.list_files(str(tmp_path / "absent")) == []


def test_replacing_a_local_folder_leaves_exactly_the_staged_files(tmp_path: Path) -> None:
    staged, target = tmp_path / "staged", tmp_path / "target"
    (staged / "date=2026-11-01").mkdir(parents=True)
    (staged / "date=2026-11-01" / "part-0.parquet").write_bytes(b"rows")
    (staged / ".part-0.parquet.crc").write_bytes(b"hidden")
    (target).mkdir()
    (target / "stale.parquet").write_bytes(b"old")

    assert LocalFileStore().replace_folder(staged, str(target)) == 1
    assert [p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()] == [
        "date=2026-11-01/part-0.parquet"
    ]


def test_s3_uris_without_an_s3_store_fail_naming_the_uri_and_local_paths_still_work(tmp_path: Path) -> None:
    store = RoutingFileStore()
    with pytest.raises(FileStoreError, match=r"s3://lake/labels/maintenance/: no S3 access configured"):
        store.list_files("s3://lake/labels/maintenance/")
    store.write_bytes(str(tmp_path / "spec.yaml"), b"name: x\n")
    assert store.read_bytes(str(tmp_path / "spec.yaml")) == b"name: x\n"
