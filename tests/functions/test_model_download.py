"""A bundle in S3 is downloaded with its files fetched at once (one round trip of waiting, not one
per file: a cold start from s3:// or registry:// waits on each), and arrives whole."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tests.functions.conftest import EmbeddedAws
from tests.functions.test_faults_model import model_uri
from tests.functions.test_score_event import env
from zaindari.infra.model_store import download_bundle

__all__ = ["env", "model_uri"]  # fixtures, used by name


def test_a_bundle_downloads_its_files_at_once_and_whole(
    aws: EmbeddedAws, model_uri: str, bundle_dir: Path, tmp_path: Path
) -> None:
    s3 = aws.factory.client("s3")
    fetched_on: list[str] = []

    def on_get(**_: Any) -> None:
        fetched_on.append(threading.current_thread().name)

    s3.meta.events.register("before-send.s3.GetObject", on_get)
    try:
        folder = download_bundle(aws.factory, model_uri, tmp_path / "cache")
    finally:
        s3.meta.events.unregister("before-send.s3.GetObject", on_get)

    shipped = {p.name: p.read_bytes() for p in bundle_dir.iterdir() if p.is_file()}
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == shipped
    # the manifest first, then every other file on the download threads, several at once
    assert len(fetched_on) == len(shipped)
    on_threads = fetched_on[1:]
    assert all(name.startswith("bundle") for name in on_threads)
    assert len(set(on_threads)) > 1
