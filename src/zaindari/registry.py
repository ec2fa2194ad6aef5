"""The model registry and the promotion gate: which verified bundle runs where, and why.

A registered model has numbered versions (monotonic integers per model, never reused), each the
metadata of one verified bundle (artifact location, content hash, signature summary, metrics,
learned thresholds, lineage, parity), and aliases (``staging``, ``production``, ``archived`` or
custom names) pointing at versions. Every alias change, and every gate decision that changed
nothing, is appended to the model's audit history with the numbers that decided it.

The core knows nothing of AWS: storage is the :class:`RegistryStore` port (DynamoDB in
``zaindari.infra.registry_store``, memory in ``zaindari.memory_ports``) and artifacts go through
the :class:`ArtifactStore` port (S3 under ``models/<name>/<version>/``).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from zaindari.bundle import BundleError, ModelBundle, load_bundle

if TYPE_CHECKING:
    from zaindari.contract import Reading

__all__ = [
    "ALIASES",
    "METRIC_RULES",
    "AliasConflict",
    "ArtifactStore",
    "GateDecision",
    "GatePolicy",
    "HistoryEntry",
    "MetricComparison",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "RegistryStore",
    "ShadowResult",
    "VersionConflict",
    "compare_metrics",
    "metric_value",
    "shadow_alert_rates",
]

ALIASES = ("staging", "production", "archived")
STAGING = "staging"
PRODUCTION = "production"
ARCHIVED = "archived"

Action = Literal["register", "set", "promote", "refused", "awaiting_approval", "rollback"]

# Model and alias names end up in DynamoDB keys, S3 keys and event payloads: a conservative alphabet.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def _checked_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise RegistryError(
            f"invalid {what} name {value!r}: 1 to 128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return value


def _checked_text(value: str | None, what: str) -> None:
    """Free text kept in the history (reasons, actors) must be storable: valid UTF-8."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RegistryError(f"{what} is not valid UTF-8 text: {exc.reason}") from exc


class RegistryError(ValueError):
    """A registry request cannot be honoured (unknown model or version, invalid bundle, ...)."""


class VersionConflict(RuntimeError):
    """Another writer already stored this version number."""


class AliasConflict(RuntimeError):
    """The alias moved since it was read (another writer changed it): re-read and decide again."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelVersion(_Frozen):
    """One registered version: a verified bundle's metadata and where its files are."""

    model: str
    version: int = Field(ge=1)
    artifact_uri: str
    content_hash: str
    files: dict[str, str]
    task: str
    signature: dict[str, Any]
    metrics: dict[str, Any]
    thresholds: dict[str, Any]
    lineage: dict[str, Any] = Field(default_factory=dict)
    parity: dict[str, Any] = Field(default_factory=dict)
    source: str = ""
    bundle_version: str = ""
    registered_at: str
    registered_by: str = ""


class HistoryEntry(_Frozen):
    """One line of a model's audit history (append-only).

    ``alias`` moved ``from_version`` -> ``to_version`` (both ``None`` when the decision moved
    nothing, as for a refusal); ``numbers`` holds the figures that decided it.
    """

    model: str
    at: str
    seq: str
    alias: str
    action: Action
    from_version: int | None = None
    to_version: int | None = None
    candidate: int | None = None
    reason: str = ""
    actor: str = ""
    numbers: dict[str, Any] = Field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.action in ("register", "set", "promote", "rollback")


class RegistryStore(Protocol):
    """Where the registry's metadata lives (one DynamoDB table on AWS).

    Writes are conditional: :meth:`put_version` never overwrites a version, :meth:`move_alias`
    only moves an alias still pointing where the caller saw it, so two writers can neither assign
    one version number twice nor lose an alias change.
    """

    def reserve_version(self, model: str) -> int:
        """The next version number of ``model`` (atomic: each call gets a new, larger one)."""
        ...

    def put_version(self, version: ModelVersion) -> None:
        """Store a version; raises :class:`VersionConflict` when that number is taken."""
        ...

    def get_version(self, model: str, version: int) -> ModelVersion | None: ...

    def list_versions(self, model: str) -> list[ModelVersion]:
        """All versions of ``model``, oldest first."""
        ...

    def list_models(self) -> list[str]: ...

    def aliases(self, model: str) -> dict[str, int]:
        """Alias -> version of ``model``."""
        ...

    def move_alias(self, entry: HistoryEntry, *, expected: int | None) -> None:
        """Point ``entry.alias`` at ``entry.to_version`` (``None``: remove it) and append ``entry``,
        atomically, if the alias still points at ``expected``; else raise :class:`AliasConflict`."""
        ...

    def append_history(self, entry: HistoryEntry) -> None:
        """Record a decision that moved no alias."""
        ...

    def history(self, model: str) -> list[HistoryEntry]:
        """The model's audit history, oldest first."""
        ...


class ArtifactStore(Protocol):
    """Where bundle files live (the lake's ``models/<name>/<version>/`` on AWS)."""

    def fetch(self, location: str) -> Path:
        """A local folder holding the bundle at ``location`` (a folder, or an s3:// prefix)."""
        ...

    def publish(self, model: str, version: int, bundle: Path) -> str:
        """Copy the bundle's files (``MANIFEST.json`` last); returns the artifact's location."""
        ...


# ----------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class MetricRule:
    """A quality figure of a task: where it is in ``metrics.json`` and which way is better."""

    name: str
    path: tuple[str, ...]
    higher_is_better: bool


# Per task, the figures the gate compares (those present in both bundles' metrics.json).
METRIC_RULES: dict[str, tuple[MetricRule, ...]] = {
    "anomaly": (
        MetricRule("auc", ("auc",), True),
        MetricRule("detection_rate", ("at_thresholds", "warning", "detection_rate"), True),
        MetricRule("false_alarm_rate", ("at_thresholds", "warning", "false_alarm_rate"), False),
    ),
    "classification": (
        MetricRule("f1", ("at_learned_threshold", "f1"), True),
        MetricRule("auc", ("auc",), True),
    ),
    "regression": (
        MetricRule("rmse", ("rmse",), False),
        MetricRule("mae", ("mae",), False),
    ),
}


def metric_value(metrics: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """The finite number at ``path`` in ``metrics``, else ``None``."""
    value: Any = metrics
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class MetricComparison:
    """One figure, champion against challenger."""

    name: str
    higher_is_better: bool
    champion: float
    challenger: float
    allowed: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "better": "higher" if self.higher_is_better else "lower",
            "champion": self.champion,
            "challenger": self.challenger,
            "worst_allowed": self.allowed,
            "passed": self.passed,
        }


def compare_metrics(
    task: str, champion: dict[str, Any], challenger: dict[str, Any], tolerance: float
) -> tuple[list[MetricComparison], list[str]]:
    """Compare the task's figures present in the champion's metrics.

    The challenger may be worse than the champion by at most ``tolerance`` times the champion's
    value (relative, so one setting serves AUCs and RMSEs in hours). Returns the comparisons and
    the reasons to refuse (a worse figure, or a figure the champion has and the challenger lacks).
    """
    comparisons: list[MetricComparison] = []
    reasons: list[str] = []
    for rule in METRIC_RULES.get(task, ()):
        old = metric_value(champion, rule.path)
        if old is None:
            continue
        new = metric_value(challenger, rule.path)
        if new is None:
            reasons.append(f"{rule.name}: the champion has {old:.6g}, the challenger reports none")
            continue
        slack = tolerance * abs(old)
        allowed = old - slack if rule.higher_is_better else old + slack
        passed = new >= allowed if rule.higher_is_better else new <= allowed
        comparisons.append(MetricComparison(rule.name, rule.higher_is_better, old, new, allowed, passed))
        if not passed:
            way = "lower" if rule.higher_is_better else "higher"
            reasons.append(
                f"{rule.name}: challenger {new:.6g} is {way} than the champion's {old:.6g} "
                f"beyond the tolerance {tolerance:g} (worst allowed {allowed:.6g})"
            )
    return comparisons, reasons


# ----------------------------------------------------------------------------- shadow scoring


@dataclass(frozen=True)
class ShadowResult:
    """Alert rates of champion and challenger on the same recent readings (fraction of rows scored).

    With a maintenance log (:mod:`zaindari.maintenance`) the readings inside a known fault window
    are counted apart (``known_fault_*``): the ``champion_alert_rate`` and
    ``challenger_alert_rate`` are then those of the other readings (normal operation, as far as
    anyone knows). Without one, every reading is in the first group.
    """

    readings: int
    champion_scored: int
    challenger_scored: int
    champion_alert_rate: float
    challenger_alert_rate: float
    known_fault_scored: int = 0
    champion_known_fault_alert_rate: float | None = None
    challenger_known_fault_alert_rate: float | None = None

    @property
    def difference(self) -> float:
        return self.challenger_alert_rate - self.champion_alert_rate

    @property
    def normal_scored(self) -> int:
        """Rows scored by the challenger outside known fault windows."""
        return self.challenger_scored - self.known_fault_scored

    @property
    def known_fault_difference(self) -> float | None:
        if self.champion_known_fault_alert_rate is None or self.challenger_known_fault_alert_rate is None:
            return None
        return self.challenger_known_fault_alert_rate - self.champion_known_fault_alert_rate

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "readings": self.readings,
            "champion_scored": self.champion_scored,
            "challenger_scored": self.challenger_scored,
            "champion_alert_rate": self.champion_alert_rate,
            "challenger_alert_rate": self.challenger_alert_rate,
            "difference": self.difference,
        }
        if self.known_fault_scored:
            out["known_fault"] = {
                "scored": self.known_fault_scored,
                "champion_alert_rate": self.champion_known_fault_alert_rate,
                "challenger_alert_rate": self.challenger_known_fault_alert_rate,
                "difference": self.known_fault_difference,
            }
            out["normal_scored"] = self.normal_scored
        return out


def shadow_alert_rates(
    champion: ModelBundle,
    challenger: ModelBundle,
    readings: Sequence[Reading],
    known_fault: Callable[[str, datetime], bool] | None = None,
) -> ShadowResult:
    """Score ``readings`` with both models (fresh device state each) and return their alert rates.

    The rate is the share of scored rows on which at least one alert rule fired; both models see
    the same readings in the same order through :func:`zaindari.pipeline.score_readings`.
    ``known_fault(device_id, timestamp)`` (e.g. :meth:`zaindari.maintenance.MaintenanceLog.covers`)
    marks the readings of known faults, whose rates are reported apart.
    """
    from zaindari.pipeline import score_readings

    faulty = {
        (r.device_id, r.timestamp_iso)
        for r in readings
        if known_fault and known_fault(r.device_id, r.timestamp)
    }

    def rates(bundle: ModelBundle) -> tuple[int, float, int, float | None]:
        scored = score_readings(bundle, readings).scored
        inside = [row for row in scored if (row["device_id"], row["timestamp"]) in faulty]
        outside = len(scored) - len(inside)
        alerts_outside = sum(1 for row in scored if row["alert"]) - sum(1 for row in inside if row["alert"])
        return (
            len(scored),
            alerts_outside / outside if outside else 0.0,
            len(inside),
            sum(1 for row in inside if row["alert"]) / len(inside) if inside else None,
        )

    champion_n, champion_rate, _, champion_fault = rates(champion)
    challenger_n, challenger_rate, fault_n, challenger_fault = rates(challenger)
    return ShadowResult(
        len(readings),
        champion_n,
        challenger_n,
        champion_rate,
        challenger_rate,
        fault_n,
        champion_fault,
        challenger_fault,
    )


# ----------------------------------------------------------------------------- the gate


def _shadow_reasons(shadow: ShadowResult, bound: float) -> list[str]:
    """Why the shadow comparison refuses the challenger (empty: it passes).

    Without readings of known faults (no maintenance log, or none of its windows in the sample),
    the challenger's alert rate must be within ``bound`` of the champion's, either way: a model
    that alerts far more, or far less, than the one in production is suspect when nothing tells
    a false alarm from a detection.

    With readings inside known fault windows, those anchor detection: there the challenger must
    alert no less than the champion minus ``bound``; on the other readings (normal operation, as far
    as anyone knows) it must alert no more than the champion plus ``bound``. A challenger that
    keeps detecting the known faults and raises fewer alarms elsewhere is the better model (a
    retrained model that no longer alarms on a recalibrated sensor, or on machines that wore in).
    """
    if shadow.challenger_scored == 0:
        return ["shadow scoring: the challenger scored no reading"]
    reasons = []
    missed = shadow.known_fault_difference
    if missed is None:
        if abs(shadow.difference) > bound:
            reasons.append(
                f"shadow alert rate {shadow.challenger_alert_rate:.4f} vs the champion's "
                f"{shadow.champion_alert_rate:.4f}: difference {shadow.difference:+.4f} beyond the bound {bound:g}"
            )
        return reasons
    if missed < -bound:
        reasons.append(
            f"shadow alert rate on known faults {shadow.challenger_known_fault_alert_rate:.4f} vs the "
            f"champion's {shadow.champion_known_fault_alert_rate:.4f}: the challenger alerts less by "
            f"{-missed:.4f}, beyond the bound {bound:g}"
        )
    if shadow.normal_scored and shadow.difference > bound:
        reasons.append(
            f"shadow alert rate outside known fault windows {shadow.challenger_alert_rate:.4f} vs the "
            f"champion's {shadow.champion_alert_rate:.4f}: the challenger alerts more by "
            f"{shadow.difference:+.4f}, beyond the bound {bound:g}"
        )
    return reasons


class GatePolicy(_Frozen):
    """How the champion/challenger gate decides.

    ``tolerance``: how much worse (relative to the champion's value) a figure may be.
    ``alert_rate_bound``: largest allowed |challenger - champion| shadow alert rate; with readings
    inside known fault windows (the maintenance log), how much less the challenger may alert on
    them and how much more on the others (see :func:`_shadow_reasons`); ``None`` skips shadow
    scoring. ``manual_approval``: a passing challenger waits for a named approver.
    """

    tolerance: float = Field(default=0.0, ge=0.0, le=1.0)
    alert_rate_bound: float | None = Field(default=0.05, ge=0.0, le=1.0)
    manual_approval: bool = False


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided about a candidate, and the numbers behind it."""

    outcome: Literal["promoted", "refused", "awaiting_approval"]
    model: str
    candidate: int
    champion: int | None
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"


def _evaluation_identity(version: ModelVersion) -> Any:
    data = version.lineage.get("data")
    if not isinstance(data, dict):
        return None
    assets = data.get("assets")
    held_out = assets.get("held_out") if isinstance(assets, dict) else None
    return {"content_hash": data.get("content_hash"), "held_out_assets": held_out}


def _evaluation_data(champion: ModelVersion, challenger: ModelVersion) -> dict[str, Any]:
    """Whether both versions' metrics come from the same held-out data (``None``: lineage does not say).

    Recorded, not enforced: each training run reports metrics on its own held-out assets.
    """
    old, new = _evaluation_identity(champion), _evaluation_identity(challenger)
    same = None if old is None or new is None else old == new
    return {"same": same, "champion": old, "challenger": new}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _signature_summary(bundle: ModelBundle) -> dict[str, Any]:
    sig = bundle.signature
    return {
        "input": {"name": sig.input.name, "dtype": sig.input.dtype, "shape": sig.input.shape},
        "features": list(sig.features),
        "outputs": [{"name": o.name, "role": o.role, "dtype": o.dtype} for o in sig.outputs],
    }


class ModelRegistry:
    """The registry's use cases over a :class:`RegistryStore` and an :class:`ArtifactStore`.

    Parameters
    ----------
    store, artifacts
        The ports.
    clock
        The time recorded in history (UTC ISO 8601).
    """

    def __init__(
        self, store: RegistryStore, artifacts: ArtifactStore, *, clock: Callable[[], str] = _now
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.clock = clock

    # -- reads

    def version(self, model: str, version: int) -> ModelVersion:
        _checked_name(model, "model")
        found = self.store.get_version(model, version)
        if found is None:
            raise RegistryError(f"{model} has no version {version}")
        return found

    def alias_version(self, model: str, alias: str) -> int | None:
        _checked_name(model, "model")
        _checked_name(alias, "alias")
        return self.store.aliases(model).get(alias)

    # -- registration

    def register_version(
        self, bundle_location: str, *, model: str | None = None, actor: str = ""
    ) -> ModelVersion:
        """Verify the bundle at ``bundle_location``, store it as the model's next version, point ``staging`` at it.

        Raises
        ------
        RegistryError
            When the bundle is invalid (hash mismatch, ONNX that does not load or disagrees with its
            signature, signature not matching the spec, metrics or parity missing or failed), or
            belongs to another model than ``model``.
        """
        if model is not None:
            _checked_name(model, "model")
        _checked_text(actor, "actor")
        try:
            bundle = load_bundle(self.artifacts.fetch(bundle_location))
        except BundleError as exc:
            raise RegistryError(f"bundle refused: {exc}") from exc
        except Exception as exc:  # onnxruntime raises its own types for a graph it cannot load
            raise RegistryError(f"bundle refused: model.onnx cannot be loaded: {exc}") from exc
        if model is not None and bundle.name != model:
            raise RegistryError(f"bundle refused: it is a bundle of {bundle.name!r}, not {model!r}")
        metrics = bundle.extras.get("metrics.json")
        if not isinstance(metrics, dict) or not metrics:
            raise RegistryError("bundle refused: no metrics.json (the gate has nothing to compare)")
        parity = bundle.extras.get("parity.json")
        if not isinstance(parity, dict) or not parity:
            raise RegistryError("bundle refused: no parity.json (ONNX parity with training unproven)")
        if parity.get("passed") is False:
            raise RegistryError(f"bundle refused: parity.json records a failed parity check: {parity}")
        lineage = bundle.extras.get("lineage.json")

        number = self.store.reserve_version(bundle.name)
        uri = self.artifacts.publish(bundle.name, number, bundle.path)
        version = ModelVersion(
            model=bundle.name,
            version=number,
            artifact_uri=uri,
            content_hash=bundle.content_hash,
            files=dict(bundle.manifest.files),
            task=str(metrics.get("task") or bundle.spec.task),
            signature=_signature_summary(bundle),
            metrics=metrics,
            thresholds=bundle.thresholds.model_dump(mode="json"),
            lineage=lineage if isinstance(lineage, dict) else {},
            parity=parity,
            source=bundle_location,
            bundle_version=bundle.manifest.version or "",
            registered_at=self.clock(),
            registered_by=actor,
        )
        self.store.put_version(version)
        for attempt in range(5):  # a concurrent registration may move staging between read and write
            current = self.store.aliases(version.model).get(STAGING)
            if current is not None and current > number:
                break  # a newer version is already staging
            try:
                self._move(
                    version.model,
                    STAGING,
                    number,
                    action="register",
                    reason=f"registered from {bundle_location}",
                    actor=actor,
                    numbers={"content_hash": version.content_hash},
                    expected=current,
                )
                break
            except AliasConflict:
                if attempt == 4:
                    raise
        return version

    # -- aliases

    def set_alias(
        self, model: str, alias: str, version: int | None, *, reason: str, actor: str = ""
    ) -> HistoryEntry:
        """Point ``alias`` at ``version`` (``None`` removes it) by hand; recorded in the history."""
        _checked_name(model, "model")
        _checked_name(alias, "alias")
        _checked_text(reason, "reason")
        _checked_text(actor, "actor")
        if version is not None:
            self.version(model, version)
        return self._move(model, alias, version, action="set", reason=reason, actor=actor)

    def _move(
        self,
        model: str,
        alias: str,
        version: int | None,
        *,
        action: Action,
        reason: str,
        actor: str,
        numbers: dict[str, Any] | None = None,
        expected: int | Literal["read"] | None = "read",
        candidate: int | None = None,
    ) -> HistoryEntry:
        current = self.store.aliases(model).get(alias) if expected == "read" else expected
        entry = self._entry(
            model,
            alias,
            action,
            from_version=current,
            to_version=version,
            candidate=candidate,
            reason=reason,
            actor=actor,
            numbers=numbers or {},
        )
        self.store.move_alias(entry, expected=current)
        return entry

    def _record(
        self,
        model: str,
        alias: str,
        action: Action,
        *,
        candidate: int,
        reason: str,
        actor: str,
        numbers: dict[str, Any],
    ) -> HistoryEntry:
        entry = self._entry(
            model, alias, action, candidate=candidate, reason=reason, actor=actor, numbers=numbers
        )
        self.store.append_history(entry)
        return entry

    def _entry(self, model: str, alias: str, action: Action, **fields: Any) -> HistoryEntry:
        """A history line stamped now, with a sequence id that orders lines of the same instant."""
        return HistoryEntry(
            model=model, at=self.clock(), seq=uuid.uuid4().hex[:12], alias=alias, action=action, **fields
        )

    # -- the gate

    def promote(
        self,
        model: str,
        candidate: int,
        *,
        policy: GatePolicy | None = None,
        shadow: ShadowResult | None = None,
        approved_by: str | None = None,
        actor: str = "",
        reason: str = "",
    ) -> GateDecision:
        """The champion/challenger gate: make ``candidate`` the ``production`` version if it earns it.

        The candidate's figures (per task, see :data:`METRIC_RULES`) must be no worse than the
        current production version's beyond ``policy.tolerance``; its shadow alert rate must be
        within ``policy.alert_rate_bound`` of the champion's; when the shadow sample holds readings
        of known faults, no lower than the champion's there and no higher elsewhere, by more than
        that bound (:func:`_shadow_reasons`); with ``policy.manual_approval`` a
        passing candidate waits (``awaiting_approval``) until called again with ``approved_by``.
        Every decision is appended to the history with its numbers; a refused candidate keeps
        its aliases (``staging``). The replaced champion becomes ``archived``.
        """
        for text, what in ((approved_by, "approved_by"), (actor, "actor"), (reason, "reason")):
            _checked_text(text, what)
        policy = policy or GatePolicy()
        challenger = self.version(model, candidate)
        aliases = self.store.aliases(model)
        champion_number = aliases.get(PRODUCTION)
        numbers: dict[str, Any] = {
            "policy": policy.model_dump(mode="json"),
            "champion": champion_number,
            "challenger": candidate,
        }
        reasons: list[str] = []
        if champion_number == candidate:
            raise RegistryError(f"{model} version {candidate} is already production")
        if champion_number is not None:
            champion = self.version(model, champion_number)
            if champion.task != challenger.task:
                reasons.append(f"task changed from {champion.task} to {challenger.task}")
            comparisons, metric_reasons = compare_metrics(
                challenger.task, champion.metrics, challenger.metrics, policy.tolerance
            )
            reasons += metric_reasons
            numbers["metrics"] = [c.to_dict() for c in comparisons]
            numbers["evaluation"] = _evaluation_data(champion, challenger)
            if not comparisons and not metric_reasons:
                if challenger.task == "anomaly":
                    numbers["metrics_note"] = (
                        "no labelled figure in both metrics.json (unlabelled anomaly): shadow alert rate decides"
                    )
                else:
                    reasons.append(f"no {challenger.task} figure in both metrics.json to compare")
            if policy.alert_rate_bound is not None:
                if shadow is None:
                    reasons.append("no shadow scoring result (alert_rate_bound is set)")
                else:
                    numbers["shadow"] = shadow.to_dict() | {"bound": policy.alert_rate_bound}
                    reasons += _shadow_reasons(shadow, policy.alert_rate_bound)
        else:
            numbers["note"] = "no production version yet: nothing to compare against"
            if shadow is not None:
                numbers["shadow"] = shadow.to_dict()

        if reasons:
            why = "; ".join(reasons)
            self._record(
                model, PRODUCTION, "refused", candidate=candidate, reason=why, actor=actor, numbers=numbers
            )
            return GateDecision("refused", model, candidate, champion_number, reasons, numbers)
        if policy.manual_approval and not approved_by:
            why = "gate passed; manual approval required"
            self._record(
                model,
                PRODUCTION,
                "awaiting_approval",
                candidate=candidate,
                reason=why,
                actor=actor,
                numbers=numbers,
            )
            return GateDecision("awaiting_approval", model, candidate, champion_number, [why], numbers)
        if approved_by:
            numbers["approved_by"] = approved_by
        why = reason or "gate passed"
        self._move(
            model,
            PRODUCTION,
            candidate,
            action="promote",
            reason=why,
            actor=actor,
            numbers=numbers,
            expected=champion_number,
            candidate=candidate,
        )
        if champion_number is not None:
            self._move(
                model,
                ARCHIVED,
                champion_number,
                action="set",
                reason=f"replaced in production by version {candidate}",
                actor=actor,
            )
        return GateDecision("promoted", model, candidate, champion_number, [why], numbers)

    # -- rollback

    def rollback_target(self, model: str) -> int | None:
        """The production version before the current one, skipping versions rolled back from."""
        entries = [e for e in self.store.history(model) if e.alias == PRODUCTION and e.changed]
        current = self.store.aliases(model).get(PRODUCTION)
        bad = {e.from_version for e in entries if e.action == "rollback" and e.from_version is not None}
        for entry in reversed(entries):
            for number in (entry.to_version, entry.from_version):
                if number is not None and number != current and number not in bad:
                    return number
        return None

    def rollback(
        self, model: str, *, to_version: int | None = None, reason: str, actor: str = ""
    ) -> HistoryEntry:
        """Set ``production`` back to the previous production version (or ``to_version``), recording why."""
        _checked_name(model, "model")
        if not reason.strip():
            raise RegistryError("a rollback needs a reason")
        _checked_text(reason, "reason")
        _checked_text(actor, "actor")
        current = self.store.aliases(model).get(PRODUCTION)
        if current is None:
            raise RegistryError(f"{model} has no production version to roll back")
        target = to_version if to_version is not None else self.rollback_target(model)
        if target is None:
            raise RegistryError(f"{model} has no earlier production version; name one with to_version")
        if target == current:
            raise RegistryError(f"{model} version {target} is already production")
        self.version(model, target)
        return self._move(
            model,
            PRODUCTION,
            target,
            action="rollback",
            reason=reason,
            actor=actor,
            expected=current,
            numbers={"rolled_back_from": current},
        )
