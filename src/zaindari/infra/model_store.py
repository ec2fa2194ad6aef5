"""Where a function gets its model: a local bundle folder, an S3 prefix copied to local disk, or a
registry alias (``registry://<model>/<alias>``, e.g. ``registry://plant-anomaly/production``).

The bundle is downloaded once per container into ``model_cache_dir`` (keyed by the manifest's
content hash, so two versions never mix files), verified by :func:`zaindari.bundle.load_bundle`,
and kept in memory. A registry alias is read again (one DynamoDB query) once its cached answer is
older than ``alias_ttl`` seconds: a promotion or rollback reaches running functions within that
time, with no redeploy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zaindari.bundle import MANIFEST_FILE, BundleError, ModelBundle, load_bundle
from zaindari.infra.aws import ClientFactory
from zaindari.infra.aws_ports import aws_errors
from zaindari.ports import PortError

__all__ = ["REGISTRY_SCHEME", "ModelSource", "download_bundle", "parse_registry_reference"]

REGISTRY_SCHEME = "registry://"


def download_bundle(factory: ClientFactory, uri: str, cache_dir: str | Path) -> Path:
    """Copy the bundle at ``s3://bucket/prefix/`` to ``cache_dir``; returns the local folder.

    Only the files the manifest lists are fetched, each checked against its sha256 as it arrives: a
    corrupt or truncated download is refused and not cached (``load_bundle`` checks again).
    """
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise BundleError(f"model path {uri!r} is not an s3://bucket/prefix/ URI")
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    s3 = factory.client("s3")
    try:
        manifest_bytes = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST_FILE)["Body"].read()
    except aws_errors() as exc:
        raise BundleError(f"{uri}{MANIFEST_FILE}: cannot be read: {exc}") from exc
    try:
        files = json.loads(manifest_bytes)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{uri}{MANIFEST_FILE}: not a bundle manifest: {exc}") from exc
    if not isinstance(files, dict):
        raise BundleError(f"{uri}{MANIFEST_FILE}: not a bundle manifest: 'files' is not a mapping")
    target = Path(cache_dir) / hashlib.sha256(manifest_bytes).hexdigest()[:16]
    if (target / MANIFEST_FILE).is_file():
        return target
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)

    def fetch(name: str) -> None:
        try:
            body = s3.get_object(Bucket=bucket, Key=prefix + name)["Body"]
            actual = _copy_hashing(body, partial / name)
        except aws_errors() as exc:
            raise BundleError(f"{uri}{name}: cannot be downloaded: {exc}") from exc
        if actual != files[name]:
            raise BundleError(
                f"{uri}{name}: sha256 {actual[:16]}... does not match the manifest's "
                f"{str(files[name])[:16]}... (corrupt or incomplete); not cached, the next load downloads again"
            )

    try:
        unsafe = [name for name in files if "/" in name or name.startswith(".")]
        if unsafe:
            raise BundleError(f"{MANIFEST_FILE} lists an unsafe path {unsafe[0]!r}")
        # all at once: a cold start waits for one round trip to S3 instead of one per file
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(files))), thread_name_prefix="bundle") as pool:
            for _ in pool.map(fetch, files):
                pass  # the first failure is raised here, once every download has ended
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # never leave a corrupt copy to be found later
        raise
    (partial / MANIFEST_FILE).write_bytes(manifest_bytes)
    partial.rename(target)  # atomic: a folder with a manifest is always complete and verified
    return target


def _copy_hashing(body: Any, path: Path) -> str:
    """Stream ``body`` to ``path``; the sha256 of what was written."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        while chunk := body.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def parse_registry_reference(path: str) -> tuple[str, str]:
    """``registry://<model>/<alias>`` -> (model, alias)."""
    model, _, alias = path[len(REGISTRY_SCHEME) :].partition("/")
    if not model or not alias or "/" in alias:
        raise BundleError(f"model path {path!r} is not registry://<model>/<alias>")
    return model, alias


class ModelSource:
    """The bundle a function scores with, loaded once per container (per version for an alias).

    Parameters
    ----------
    path
        A bundle folder, an ``s3://`` prefix, or ``registry://<model>/<alias>``.
    cache_dir
        Where downloaded bundles are kept.
    factory
        AWS clients (for ``s3://`` and ``registry://``).
    registry_table
        The registry's DynamoDB table (for ``registry://``).
    alias_ttl
        Seconds a resolved alias is trusted before it is read again.
    """

    def __init__(
        self,
        path: str,
        cache_dir: str,
        factory: ClientFactory | None = None,
        *,
        registry_table: str = "zaindari-model-registry",
        alias_ttl: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.cache_dir = cache_dir
        self.factory = factory
        self.registry_table = registry_table
        self.alias_ttl = alias_ttl
        self.monotonic = monotonic
        self._bundle: ModelBundle | None = None
        self._checked_at = 0.0
        self._resolved: tuple[int, str] | None = None  # (version, artifact URI) the bundle came from
        self._lock = threading.Lock()
        if path.startswith(REGISTRY_SCHEME):
            parse_registry_reference(path)  # a malformed reference fails at cold start

    def __call__(self) -> ModelBundle:
        if self.path.startswith(REGISTRY_SCHEME):
            return self._from_registry()
        if self._bundle is None:
            with self._lock:
                if self._bundle is None:
                    self._bundle = self._load()
        return self._bundle

    def _load(self) -> ModelBundle:
        if self.path.startswith("s3://"):
            if self.factory is None:
                raise BundleError("an s3:// model path needs AWS clients")
            return load_bundle(download_bundle(self.factory, self.path, self.cache_dir))
        return load_bundle(self.path)

    def _from_registry(self) -> ModelBundle:
        bundle = self._bundle
        if bundle is not None and self.monotonic() - self._checked_at < self.alias_ttl:
            return bundle
        with self._lock:
            if self._bundle is not None and self.monotonic() - self._checked_at < self.alias_ttl:
                return self._bundle
            try:
                self._refresh()
            except PortError:
                if self._bundle is None:
                    raise
                # the registry is unreachable: keep scoring with the version we have, ask again later
            self._checked_at = self.monotonic()
            assert self._bundle is not None
            return self._bundle

    def _refresh(self) -> None:
        from zaindari.infra.registry_store import DynamoRegistryStore

        if self.factory is None:
            raise BundleError("a registry:// model path needs AWS clients")
        model, alias = parse_registry_reference(self.path)
        store = DynamoRegistryStore(self.factory, self.registry_table)
        number = store.aliases(model).get(alias)
        if number is None:
            raise BundleError(f"{self.path}: model {model!r} has no alias {alias!r} in {self.registry_table}")
        if self._bundle is not None and self._resolved is not None and self._resolved[0] == number:
            return
        version = store.get_version(model, number)
        if version is None:
            raise BundleError(f"{self.path}: version {number} is not in {self.registry_table}")
        uri = version.artifact_uri
        folder = download_bundle(self.factory, uri, self.cache_dir) if uri.startswith("s3://") else Path(uri)
        self._bundle = load_bundle(folder, version=str(number))
        self._resolved = (number, uri)
