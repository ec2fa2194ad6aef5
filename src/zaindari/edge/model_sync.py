"""Model sync at the edge: take a model update, prove it, swap it in atomically, roll it back.

The box keeps its models in a local store (:class:`LocalModelStore`)::

    <model dir>/
        bundles/<model>-<version>-<hash12>/   verified bundles (MANIFEST.json and its files)
        current.json                          which bundle serves, and the one before it
        pending.json                          an update waiting for the link
        golden.jsonl                          the box's golden inputs (see below)

An update (:class:`zaindari.registry_events.ModelUpdate`, the event ``deploy_model`` sends: model,
version, artifact URI, sha256 of each file, presigned URLs) is applied by
:meth:`ModelSync.apply`, in this order; any failure refuses it and the old model keeps serving:

1. **download** the bundle: with the update's presigned URLs when it has them (no credentials on
   the box), else from ``artifact_uri`` (S3: ``zaindari.infra.edge_uplink.S3BundleFetcher``). A
   link that is down leaves the update *pending* (kept in ``pending.json``, retried when the box is online);
2. **verify**: the bundle's ``MANIFEST.json`` must list exactly the files and hashes the update
   names, then :func:`zaindari.bundle.load_bundle` checks every file's sha256, the model signature
   against the spec, and the ONNX graph against the signature;
3. **smoke test** (:func:`smoke_test`) on the golden inputs: readings of normal operation on this
   box's own devices, installed with the box (``golden.jsonl``, one reading per line; the
   installer writes them with :func:`write_golden`). The new model must score every one of them
   (a model needing a sensor this box lacks fails here), give finite scores, and flag at most
   ``max_golden_alert_rate`` of them (normal operation that alarms means broken thresholds). A
   model that fails never serves: the update is refused;
4. **swap**: the bundle is fsynced into ``bundles/``, then ``current.json`` is replaced atomically
   (write, fsync, rename, fsync the folder): a power cut leaves the old pointer or the new one;
5. **watch** live traffic: :meth:`ModelSync.record_batch` counts consecutive failed batches
   (scoring raised, or gave a non-finite score); after ``rollback_after_errors`` of them the
   previous bundle is restored by the same atomic swap, and the version is remembered as rolled
   back so that the same update is not applied again.

Each outcome is reported through ``on_event`` (the box buffers it as a ``Zaindari Edge Ack``). There
is no cryptographic signature on bundles yet: the trust anchor is the update event (its hashes),
which the box receives from the cloud; "signature" here is the model signature (inputs, outputs,
features) that ``load_bundle`` checks.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from zaindari.bundle import MANIFEST_FILE, BundleError, Manifest, ModelBundle, load_bundle
from zaindari.contract import parse_readings
from zaindari.pipeline import score_readings
from zaindari.ports import PortError
from zaindari.registry_events import ModelUpdate

__all__ = [
    "BundleFetcher",
    "Installed",
    "LocalBundleFetcher",
    "LocalModelStore",
    "ModelSync",
    "SmokeResult",
    "SyncOutcome",
    "fetch_presigned",
    "read_golden",
    "smoke_test",
    "write_golden",
]

SyncStatus = Literal["applied", "unchanged", "pending", "refused", "rolled_back"]


class Installed(BaseModel):
    """One installed bundle: what it is and where it lies in the store."""

    model_config = ConfigDict(frozen=True)

    model: str
    version: str
    folder: str
    content_hash: str
    installed_at: str


class _Pointer(BaseModel):
    current: Installed | None = None
    previous: Installed | None = None
    rolled_back: dict[str, str] = {}  # "<model>:<version>" -> why


@dataclass(frozen=True)
class SmokeResult:
    """The smoke test's verdict and its figures."""

    passed: bool
    reason: str
    readings: int
    scored: int
    alert_rate: float


@dataclass(frozen=True)
class SyncOutcome:
    """What an update (or a rollback) did, and which version serves now."""

    status: SyncStatus
    model: str
    version: str
    reason: str
    serving: str | None


class BundleFetcher(Protocol):
    """Downloads a bundle into a local folder.

    Raises PortError when a later try may succeed (the link is down) and BundleError when the
    artifact is wrong (missing, not a bundle).
    """

    def fetch(self, uri: str, into: Path) -> Path: ...


class LocalBundleFetcher:
    """Bundles from local folders (``/path`` or ``file:///path``): a USB stick, a test."""

    def fetch(self, uri: str, into: Path) -> Path:
        source = Path(uri.removeprefix("file://"))
        if not (source / MANIFEST_FILE).is_file():
            raise BundleError(f"{uri}: no {MANIFEST_FILE}; not a model bundle")
        target = into / f"local-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        return target


def fetch_presigned(update: ModelUpdate, into: Path, *, timeout_seconds: float = 30.0) -> Path:
    """Download the bundle with the update's presigned URLs into a fresh folder under ``into``.

    ``MANIFEST.json`` is checked against ``manifest_sha256`` as it arrives (the files are checked
    by :meth:`ModelSync.apply`). Raises PortError when the link fails (retry later) and BundleError
    when the URLs are refused (expired or wrong: the update cannot succeed).
    """
    import hashlib
    import urllib.error
    import urllib.request

    target = into / f"urls-{update.model}-{update.version}-{os.getpid()}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in [*sorted(update.sha256), MANIFEST_FILE]:
        try:
            with (
                urllib.request.urlopen(update.urls[name], timeout=timeout_seconds) as response,
                (target / name).open("wb") as out,
            ):
                shutil.copyfileobj(response, out, 1 << 20)
        except urllib.error.HTTPError as exc:
            shutil.rmtree(target, ignore_errors=True)
            if exc.code in (403, 404, 410):
                raise BundleError(f"{name}: the presigned URL was refused (HTTP {exc.code})") from exc
            raise PortError(f"{name}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise PortError(f"{name}: {exc}") from exc
    if update.manifest_sha256:
        actual = hashlib.sha256((target / MANIFEST_FILE).read_bytes()).hexdigest()
        if actual != update.manifest_sha256:
            shutil.rmtree(target, ignore_errors=True)
            raise BundleError(f"{MANIFEST_FILE}: sha256 {actual[:16]}... is not the update's")
    return target


# -- golden inputs and the smoke test ------------------------------------------------------------


def write_golden(path: str | Path, readings: Iterable[Mapping[str, Any]]) -> Path:
    """Write the box's golden inputs (readings of normal operation), one JSON object per line."""
    target = Path(path)
    lines = "".join(json.dumps(dict(r), separators=(",", ":")) + "\n" for r in readings)
    _atomic_write(target, lines.encode())
    return target


def read_golden(path: str | Path) -> list[dict[str, Any]]:
    """The golden inputs at ``path`` (empty when the file does not exist)."""
    file = Path(path)
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def smoke_test(
    bundle: ModelBundle,
    golden: Sequence[Mapping[str, Any]],
    *,
    max_alert_rate: float = 0.2,
    threads: int = 1,
) -> SmokeResult:
    """Score the golden inputs with ``bundle`` (fresh device state) and judge the result.

    Fails when there are no golden inputs, when a golden reading breaks the contract or cannot be
    scored by this model, when scoring raises, when a score is not finite, or when more than
    ``max_alert_rate`` of the readings meet an alert condition.
    """
    if not golden:
        return SmokeResult(False, "no golden inputs to test the model on", 0, 0, 0.0)
    parsed = parse_readings(golden)
    if parsed.rejections:
        first = parsed.rejections[0]
        return SmokeResult(
            False, f"golden reading {first.index} is invalid: {first.reason}", len(golden), 0, 0.0
        )
    try:
        outcome = score_readings(bundle, parsed.readings, threads=threads)
    except Exception as exc:  # any failure of the model is a failed smoke test, with its reason
        return SmokeResult(False, f"scoring raised {type(exc).__name__}: {exc}", len(golden), 0, 0.0)
    scored = len(outcome.scored)
    if outcome.rejections:
        first_rej = outcome.rejections[0]
        return SmokeResult(
            False,
            f"the model cannot score {len(outcome.rejections)} of {len(golden)} golden readings "
            f"(first: {first_rej.reason})",
            len(golden),
            scored,
            0.0,
        )
    bad = [row["score"] for row in outcome.scored if not math.isfinite(float(row["score"]))]
    if bad:
        return SmokeResult(False, f"{len(bad)} golden readings scored {bad[0]}", len(golden), scored, 0.0)
    rate = sum(1 for row in outcome.scored if row["alert"]) / max(scored, 1)
    if rate > max_alert_rate:
        return SmokeResult(
            False,
            f"{rate:.0%} of the golden (normal) readings meet an alert condition; at most "
            f"{max_alert_rate:.0%} allowed",
            len(golden),
            scored,
            rate,
        )
    return SmokeResult(True, "ok", len(golden), scored, rate)


# -- the store -----------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old content or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class LocalModelStore:
    """The box's model folder: installed bundles and the atomic ``current.json`` pointer."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.bundles = self.root / "bundles"
        self.downloads = self.root / "downloads"
        self.pointer_path = self.root / "current.json"
        self.pending_path = self.root / "pending.json"
        self.golden_path = self.root / "golden.jsonl"

    def pointer(self) -> _Pointer:
        if not self.pointer_path.is_file():
            return _Pointer()
        return _Pointer.model_validate_json(self.pointer_path.read_bytes())

    def write_pointer(self, pointer: _Pointer) -> None:
        _atomic_write(self.pointer_path, pointer.model_dump_json(indent=2).encode())

    def stamp(self) -> tuple[int, int, int] | None:
        """Changes whenever ``current.json`` is replaced (cheap to check on every batch)."""
        try:
            st = self.pointer_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def install(self, staged: Path, model: str, version: str) -> Installed:
        """Move a verified bundle folder into ``bundles/`` (fsynced); returns its record."""
        manifest = Manifest.model_validate_json((staged / MANIFEST_FILE).read_bytes())
        name = f"{model}-{version}-{manifest.content_hash[:12]}"
        target = self.bundles / name
        if not (target / MANIFEST_FILE).is_file():
            for file in staged.iterdir():
                with file.open("rb") as handle:
                    os.fsync(handle.fileno())
            self.bundles.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(staged, target)
            _fsync_dir(self.bundles)
        else:
            shutil.rmtree(staged, ignore_errors=True)
        return Installed(
            model=model,
            version=version,
            folder=name,
            content_hash=manifest.content_hash,
            installed_at=_now(),
        )

    def path_of(self, installed: Installed) -> Path:
        return self.bundles / installed.folder

    def prune(self, keep: Iterable[Installed | None]) -> None:
        """Delete installed bundles other than ``keep`` (the current and the previous one)."""
        names = {k.folder for k in keep if k is not None}
        if self.bundles.is_dir():
            for folder in self.bundles.iterdir():
                if folder.name not in names:
                    shutil.rmtree(folder, ignore_errors=True)


# -- the use case --------------------------------------------------------------------------------


class ModelSync:
    """Applies model updates to the local store, serves the current bundle, rolls back.

    Parameters
    ----------
    store
        The local model store.
    fetcher
        Downloads update bundles.
    golden
        Golden inputs for the smoke test (by default read from the store's ``golden.jsonl``).
    max_golden_alert_rate
        Share of golden readings that may meet an alert condition.
    rollback_after_errors
        Consecutive failed live batches after which the previous model is restored.
    on_event
        Receives one dict per outcome (applied, refused, rolled back), for the ack to the cloud.
    threads
        onnxruntime threads for the smoke test.
    """

    def __init__(
        self,
        store: LocalModelStore,
        fetcher: BundleFetcher,
        *,
        golden: Sequence[Mapping[str, Any]] | None = None,
        max_golden_alert_rate: float = 0.2,
        rollback_after_errors: int = 3,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        threads: int = 1,
    ) -> None:
        if rollback_after_errors < 1:
            raise ValueError("rollback_after_errors must be at least 1")
        self.store = store
        self.fetcher = fetcher
        self._golden = list(golden) if golden is not None else None
        self.max_golden_alert_rate = max_golden_alert_rate
        self.rollback_after_errors = rollback_after_errors
        self.on_event = on_event or (lambda _event: None)
        self.threads = threads
        self._lock = threading.RLock()
        self._errors_lock = threading.Lock()  # the live error count (record_batch), never held long
        self._bundle: ModelBundle | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._errors = 0

    @property
    def golden(self) -> list[dict[str, Any]]:
        return (
            [dict(g) for g in self._golden]
            if self._golden is not None
            else read_golden(self.store.golden_path)
        )

    # -- serving ------------------------------------------------------------------------------

    def current(self) -> ModelBundle:
        """The bundle that serves now (reloaded when ``current.json`` changed, in any process)."""
        stamp = self.store.stamp()
        if self._bundle is not None and stamp == self._stamp:
            return self._bundle
        with self._lock:
            stamp = self.store.stamp()
            if self._bundle is None or stamp != self._stamp:
                installed = self.store.pointer().current
                if installed is None:
                    raise BundleError(f"{self.store.root}: no model installed (seed the box's model store)")
                self._bundle = load_bundle(self.store.path_of(installed), version=installed.version)
                self._stamp = stamp
                self._errors = 0
            return self._bundle

    def status(self) -> dict[str, Any]:
        """What the box runs, for acks: model, version, content hash (None before a first install)."""
        pointer = self.store.pointer()
        current = pointer.current
        return {
            "model": current.model if current else None,
            "version": current.version if current else None,
            "content_hash": current.content_hash if current else None,
            "previous_version": pointer.previous.version if pointer.previous else None,
        }

    # -- installing ---------------------------------------------------------------------------

    def seed(self, bundle_dir: str | Path, *, version: str | None = None) -> SyncOutcome:
        """Install a first bundle from a local folder (box provisioning): verified (hashes, model
        signature, graph), then made current."""
        with self._lock:
            bundle = load_bundle(bundle_dir, version=version)
            staged = LocalBundleFetcher().fetch(str(bundle_dir), self._downloads())
            return self._swap_in(
                staged,
                bundle.name,
                version or bundle.version or bundle.content_hash[:12],
                reason="verified and installed",
            )

    def pending(self) -> ModelUpdate | None:
        """The update waiting for the link (None when there is none)."""
        try:
            return ModelUpdate.model_validate_json(self.store.pending_path.read_bytes())
        except FileNotFoundError:
            return None

    def request(self, update: ModelUpdate) -> SyncOutcome:
        """Take an update: keep it as pending (it survives a restart), then try to apply it."""
        with self._lock:
            _atomic_write(self.store.pending_path, update.model_dump_json().encode())
            return self.retry_pending() or self._outcome("pending", update, "queued")

    def retry_pending(self) -> SyncOutcome | None:
        """Apply the pending update, if any (called when the link comes back)."""
        with self._lock:
            if not self.store.pending_path.is_file():
                return None
            update = ModelUpdate.model_validate_json(self.store.pending_path.read_bytes())
            outcome = self.apply(update)
            if outcome.status != "pending":
                self.store.pending_path.unlink(missing_ok=True)
            return outcome

    def apply(self, update: ModelUpdate) -> SyncOutcome:
        """Download, verify, smoke-test and swap in ``update`` (see the module docstring)."""
        with self._lock:
            pointer = self.store.pointer()
            current = pointer.current
            if current and (current.model, current.version) == (update.model, str(update.version)):
                return self._outcome("unchanged", update, "this version already serves")
            why = pointer.rolled_back.get(f"{update.model}:{update.version}")
            if why:
                return self._refuse(update, f"this version was rolled back before: {why}")
            try:
                if update.urls:
                    staged = fetch_presigned(update, self._downloads())
                else:
                    staged = self.fetcher.fetch(update.artifact_uri, self._downloads())
            except PortError as exc:
                return self._outcome("pending", update, f"download failed, will retry: {exc}")
            except BundleError as exc:
                return self._refuse(update, f"download refused: {exc}")
            try:
                bundle = self._verify(staged, update)
            except BundleError as exc:
                shutil.rmtree(staged, ignore_errors=True)
                return self._refuse(update, f"verification failed: {exc}")
            smoke = smoke_test(
                bundle, self.golden, max_alert_rate=self.max_golden_alert_rate, threads=self.threads
            )
            if not smoke.passed:
                shutil.rmtree(staged, ignore_errors=True)
                return self._refuse(update, f"smoke test failed: {smoke.reason}")
            try:
                return self._swap_in(staged, update.model, str(update.version), smoke=smoke)
            except BundleError as exc:
                return self._refuse(update, str(exc))

    def _downloads(self) -> Path:
        self.store.downloads.mkdir(parents=True, exist_ok=True)
        return self.store.downloads

    @staticmethod
    def _verify(staged: Path, update: ModelUpdate) -> ModelBundle:
        try:
            manifest = Manifest.model_validate_json((staged / MANIFEST_FILE).read_bytes())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{MANIFEST_FILE}: unreadable: {exc}") from exc
        if manifest.model_name != update.model:
            raise BundleError(
                f"the bundle is model {manifest.model_name!r}, the update names {update.model!r}"
            )
        if manifest.files != update.sha256:
            differ = sorted(
                name
                for name in set(manifest.files) | set(update.sha256)
                if manifest.files.get(name) != update.sha256.get(name)
            )
            raise BundleError(f"{MANIFEST_FILE} disagrees with the update's hashes on {differ}")
        return load_bundle(staged, version=str(update.version))

    def _swap_in(
        self,
        staged: Path,
        model: str,
        version: str,
        *,
        smoke: SmokeResult | None = None,
        reason: str = "verified, smoke-tested and swapped in",
    ) -> SyncOutcome:
        installed = self.store.install(staged, model, version)
        pointer = self.store.pointer()
        new = _Pointer(current=installed, previous=pointer.current, rolled_back=pointer.rolled_back)
        self.store.write_pointer(new)
        try:
            self.current()  # loads through the pointer, as live traffic will
        except BundleError as exc:  # the installed copy is unreadable: put the old pointer back
            self.store.write_pointer(pointer)
            self._bundle = None
            raise BundleError(f"installed bundle {installed.folder} does not load: {exc}") from exc
        self.store.prune([new.current, new.previous])
        detail: dict[str, Any] = {
            "event": "model_applied",
            "model": model,
            "version": version,
            "content_hash": installed.content_hash,
            "previous_version": pointer.current.version if pointer.current else None,
        }
        if smoke is not None:
            detail["smoke_test"] = {"readings": smoke.readings, "alert_rate": smoke.alert_rate}
        self.on_event(detail)
        return SyncOutcome("applied", model, version, reason, version)

    def _refuse(self, update: ModelUpdate, reason: str) -> SyncOutcome:
        serving = self.store.pointer().current
        self.on_event(
            {
                "event": "model_refused",
                "model": update.model,
                "version": str(update.version),
                "reason": reason,
                "serving_version": serving.version if serving else None,
            }
        )
        return self._outcome("refused", update, reason)

    def _outcome(self, status: SyncStatus, update: ModelUpdate, reason: str) -> SyncOutcome:
        serving = self.store.pointer().current
        return SyncOutcome(
            status, update.model, str(update.version), reason, serving.version if serving else None
        )

    # -- live traffic and rollback ------------------------------------------------------------

    def record_batch(self, ok: bool, reason: str = "") -> SyncOutcome | None:
        """Count a live batch; after ``rollback_after_errors`` failed ones in a row, roll back.

        Returns the rollback's outcome when one happened. A batch that scored takes no lock:
        :meth:`apply` holds the sync's lock through a download, its verification and smoke test,
        and the edge server scores its groups on its event loop (waiting here stalled every
        request for the whole update). Only a failed batch that reaches the count waits for it.
        """
        if ok:
            with self._errors_lock:  # (never held long: not the sync's lock)
                self._errors = 0
            return None
        with self._errors_lock:
            self._errors += 1
            errors = self._errors
        if errors < self.rollback_after_errors or self.store.pointer().previous is None:
            return None
        with self._lock:
            if self._errors < self.rollback_after_errors:  # a batch scored, or rolled back, meanwhile
                return None
            return self.rollback(
                f"{self._errors} consecutive scoring errors on live traffic (last: {reason})"
            )

    def rollback(self, reason: str) -> SyncOutcome:
        """Restore the previous bundle (atomic swap); the current version is not applied again."""
        with self._lock:
            pointer = self.store.pointer()
            bad, previous = pointer.current, pointer.previous
            if bad is None or previous is None:
                raise BundleError("no previous model to roll back to")
            rolled = {**pointer.rolled_back, f"{bad.model}:{bad.version}": reason}
            self.store.write_pointer(_Pointer(current=previous, previous=None, rolled_back=rolled))
            self._errors = 0
            self.current()
            self.on_event(
                {
                    "event": "model_rolled_back",
                    "model": bad.model,
                    "version": previous.version,
                    "rolled_back_version": bad.version,
                    "content_hash": previous.content_hash,
                    "reason": reason,
                }
            )
            return SyncOutcome("rolled_back", bad.model, bad.version, reason, previous.version)
