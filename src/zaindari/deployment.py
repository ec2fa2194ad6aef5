"""From a trained bundle to production everywhere: register, gate, deploy, roll back.

:class:`ModelLifecycle` holds the use cases behind the ``register_model`` and ``deploy_model``
functions and ``zaindari registry rollback``:

* :meth:`~ModelLifecycle.register_trained_bundle`: verify and register a bundle under ``staging``
  (a refused bundle raises an alert with its reason), mirror it to the SageMaker Model Registry,
  announce it, then run the champion/challenger gate; a promotion is announced too.
* :meth:`~ModelLifecycle.deploy_production`: put the ``production`` version on every target (the
  SageMaker endpoint, the edge through a :class:`~zaindari.registry_events.ModelUpdate`) and bring
  every version's SageMaker approval status in line with its aliases. Lambda needs nothing: its
  scorers resolve ``registry://<model>/production`` with a short cache.
* :meth:`~ModelLifecycle.rollback`: move ``production`` back and deploy it, in one call.

AWS stays behind the ports below (``zaindari.infra.deploy_ports``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel

from zaindari.bundle import BundleError, load_bundle
from zaindari.ports import PortError
from zaindari.registry import (
    ARCHIVED,
    PRODUCTION,
    GateDecision,
    GatePolicy,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    ShadowResult,
    _now,
    shadow_alert_rates,
)
from zaindari.registry_events import (
    MODEL_PROMOTED,
    MODEL_REGISTERED,
    MODEL_ROLLED_BACK,
    BundleRefused,
    ModelRegistered,
    ModelUpdate,
    ProductionChanged,
)

if TYPE_CHECKING:
    from zaindari.contract import Reading
    from zaindari.maintenance import MaintenanceLog

__all__ = [
    "ApprovalStatus",
    "DeploymentOutcome",
    "EdgePublisher",
    "EndpointDeployer",
    "LifecycleNotifier",
    "MaintenanceLabels",
    "ModelLifecycle",
    "PackageMirror",
    "RecentTraffic",
    "RegistrationOutcome",
    "TargetResult",
    "approval_status",
]

ApprovalStatus = Literal["Approved", "PendingManualApproval", "Rejected"]


def approval_status(
    version: int, aliases: dict[str, int], rolled_back: frozenset[int] = frozenset()
) -> ApprovalStatus:
    """The SageMaker Model Registry status of ``version`` given the model's aliases.

    ``production`` -> Approved; rolled back from (``rolled_back``), ``archived`` or no alias ->
    Rejected; ``staging`` (or a custom alias) -> PendingManualApproval. The first that applies wins.
    """
    held = {alias for alias, number in aliases.items() if number == version}
    if PRODUCTION in held:
        return "Approved"
    if version in rolled_back:
        return "Rejected"
    if held - {ARCHIVED}:
        return "PendingManualApproval"
    return "Rejected"


# ----------------------------------------------------------------------------- ports


class LifecycleNotifier(Protocol):
    """Where registry events go (EventBridge) and refusals are alerted (SNS and EventBridge)."""

    def event(self, detail_type: str, detail: BaseModel) -> None:
        """Publish one event; raises :class:`PortError` when it was not accepted."""
        ...

    def refused(self, refusal: BundleRefused) -> None:
        """Alert people (SNS) and machines (EventBridge ``Zaindari Model Refused``)."""
        ...


class PackageMirror(Protocol):
    """The SageMaker Model Registry view: one model package per version, in a group per model."""

    def sync(self, version: ModelVersion, status: ApprovalStatus, reason: str) -> str:
        """Create the version's package if missing and set its approval status; returns its ARN."""
        ...


class EndpointDeployer(Protocol):
    """A serving endpoint running one version (SageMaker serverless inference on AWS)."""

    def deploy(self, version: ModelVersion) -> dict[str, Any]:
        """Make the endpoint serve ``version`` (create or update); returns what was done."""
        ...


class EdgePublisher(Protocol):
    """Tells edge boxes to fetch a bundle (IoT topic and EventBridge)."""

    def update_for(self, version: ModelVersion, reason: str) -> ModelUpdate:
        """The update event for ``version`` (presigned URLs of its files)."""
        ...

    def publish(self, update: ModelUpdate) -> dict[str, Any]: ...


class RecentTraffic(Protocol):
    """Recent readings to shadow-score (the lake's ``raw/telemetry/``)."""

    def recent_readings(self, limit: int) -> list[Reading]: ...


class MaintenanceLabels(Protocol):
    """The plant's maintenance log (the lake's ``labels/maintenance/``, :mod:`zaindari.maintenance`)."""

    def maintenance_log(self) -> MaintenanceLog: ...


# ----------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class TargetResult:
    """What a deployment did on one target."""

    target: str
    status: Literal["deployed", "skipped", "failed"]
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, **self.detail}


@dataclass(frozen=True)
class DeploymentOutcome:
    """The result of putting a model's ``production`` version on every target."""

    model: str
    version: int | None
    status: Literal["deployed", "skipped"]
    reason: str = ""
    targets: list[TargetResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "status": self.status,
            "reason": self.reason,
            "targets": [t.to_dict() for t in self.targets],
        }


@dataclass(frozen=True)
class RegistrationOutcome:
    """The result of handling one trained bundle."""

    status: Literal["refused", "registered", "promoted", "awaiting_approval", "kept_in_staging"]
    source: str
    model: str | None = None
    version: int | None = None
    reason: str = ""
    decision: GateDecision | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "source": self.source,
            "model": self.model,
            "version": self.version,
            "reason": self.reason,
        }
        if self.decision is not None:
            out["gate"] = {
                "outcome": self.decision.outcome,
                "champion": self.decision.champion,
                "reasons": self.decision.reasons,
                "numbers": self.decision.numbers,
            }
        return out


# ----------------------------------------------------------------------------- the use cases


class ModelLifecycle:
    """Registration, promotion, deployment and rollback of models over the registry.

    Parameters
    ----------
    registry
        The model registry (versions, aliases, audit history).
    notifier, mirror, endpoint, edge, traffic, labels
        The ports; ``mirror``, ``endpoint``, ``traffic`` and ``labels`` may be ``None`` (not
        configured: that step is skipped, and the outcome says so). With ``labels``, the gate
        judges shadow readings inside known fault windows apart (:func:`shadow_alert_rates`).
    policy
        The promotion gate's policy.
    shadow_readings
        How many recent readings the gate shadow-scores.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        notifier: LifecycleNotifier,
        *,
        mirror: PackageMirror | None,
        endpoint: EndpointDeployer | None,
        edge: EdgePublisher | None,
        traffic: RecentTraffic | None,
        policy: GatePolicy,
        shadow_readings: int = 2000,
        clock: Callable[[], str] = _now,
        labels: MaintenanceLabels | None = None,
    ) -> None:
        self.registry = registry
        self.notifier = notifier
        self.mirror = mirror
        self.endpoint = endpoint
        self.edge = edge
        self.traffic = traffic
        self.policy = policy
        self.shadow_readings = shadow_readings
        self.clock = clock
        self.labels = labels

    # -- register_model

    def register_trained_bundle(
        self, bundle_location: str, *, model: str | None = None, actor: str = "", trigger: str = ""
    ) -> RegistrationOutcome:
        """Register the bundle at ``bundle_location`` under ``staging``, then run the promotion gate.

        An invalid bundle (hash mismatch, ONNX that does not load, signature not matching the spec,
        metrics or parity missing) is refused: nothing is registered, people and machines are
        alerted with the reason, and the outcome says ``refused``.

        Idempotent: a redelivered event (same location, same content) finds its version instead of
        registering another; the steps after registration are redone (they are idempotent too),
        and a gate decision already recorded for that version is reported, not taken again.
        """
        known = self._registered_before(bundle_location)
        if known is not None:
            return self._after_registration(known, bundle_location, actor, redelivered=True)
        try:
            version = self.registry.register_version(bundle_location, model=model, actor=actor)
        except (RegistryError, BundleError) as exc:
            reason = str(exc)
            self.notifier.refused(
                BundleRefused(
                    source=bundle_location, reason=reason, at=self.clock(), model=model, trigger=trigger
                )
            )
            return RegistrationOutcome("refused", bundle_location, model, None, reason)
        return self._after_registration(version, bundle_location, actor, redelivered=False)

    def _registered_before(self, bundle_location: str) -> ModelVersion | None:
        """The version already registered from ``bundle_location`` with the same content, if any."""
        try:
            bundle = load_bundle(self.registry.artifacts.fetch(bundle_location), verify_graph=False)
        except (BundleError, RegistryError, PortError, OSError):
            return None  # registration proper reports what is wrong with it
        for version in self.registry.store.list_versions(bundle.name):
            if version.source == bundle_location and version.content_hash == bundle.content_hash:
                return version
        return None

    def _after_registration(
        self, version: ModelVersion, bundle_location: str, actor: str, *, redelivered: bool
    ) -> RegistrationOutcome:
        self._mirror_model(version.model, reason=f"registered from {bundle_location}")
        self.notifier.event(
            MODEL_REGISTERED,
            ModelRegistered(
                model=version.model,
                version=version.version,
                content_hash=version.content_hash,
                artifact_uri=version.artifact_uri,
                source=bundle_location,
                registered_at=version.registered_at,
            ),
        )
        if redelivered:
            previous = self._decided(version)
            if previous is not None:
                return previous
        decision = self.gate(version.model, version.version, actor=actor)
        status: Literal["promoted", "awaiting_approval", "kept_in_staging"] = (
            "promoted"
            if decision.promoted
            else "awaiting_approval"
            if decision.outcome == "awaiting_approval"
            else "kept_in_staging"
        )
        return RegistrationOutcome(
            status, bundle_location, version.model, version.version, "; ".join(decision.reasons), decision
        )

    def _decided(self, version: ModelVersion) -> RegistrationOutcome | None:
        """The gate's earlier decision on ``version`` (a redelivery): re-announced if it was promoted."""
        source = version.source
        if self.registry.alias_version(version.model, PRODUCTION) == version.version:
            self.notifier.event(
                MODEL_PROMOTED,
                ProductionChanged(
                    model=version.model,
                    version=version.version,
                    action="promote",
                    reason="redelivered: already production",
                    at=self.clock(),
                ),
            )
            return RegistrationOutcome(
                "promoted", source, version.model, version.version, "already production (event redelivered)"
            )
        outcomes = {"refused": "kept_in_staging", "awaiting_approval": "awaiting_approval"}
        for entry in reversed(self.registry.store.history(version.model)):
            if entry.candidate == version.version and entry.action in outcomes:
                status: Literal["kept_in_staging", "awaiting_approval"] = (
                    "kept_in_staging" if entry.action == "refused" else "awaiting_approval"
                )
                return RegistrationOutcome(status, source, version.model, version.version, entry.reason)
        return None

    def shadow(self, model: str, candidate: int) -> ShadowResult | None:
        """Shadow-score recent traffic with production and ``candidate`` (``None``: nothing to compare)."""
        champion = self.registry.alias_version(model, PRODUCTION)
        if champion is None or self.policy.alert_rate_bound is None or self.traffic is None:
            return None
        readings = self.traffic.recent_readings(self.shadow_readings)
        if not readings:
            return None  # the gate refuses for want of a shadow result, with that reason

        def bundle(number: int) -> Any:
            return load_bundle(
                self.registry.artifacts.fetch(self.registry.version(model, number).artifact_uri),
                version=str(number),
            )

        log = self.labels.maintenance_log() if self.labels is not None else None
        return shadow_alert_rates(
            bundle(champion), bundle(candidate), readings, known_fault=log.covers if log else None
        )

    def gate(
        self, model: str, candidate: int, *, actor: str = "", approved_by: str | None = None
    ) -> GateDecision:
        """Run the champion/challenger gate on ``candidate``; a promotion is mirrored and announced."""
        decision = self.registry.promote(
            model,
            candidate,
            policy=self.policy,
            shadow=self.shadow(model, candidate),
            approved_by=approved_by,
            actor=actor,
        )
        if decision.promoted:
            self.announce_promotion(decision, actor=actor)
        return decision

    def announce_promotion(self, decision: GateDecision, *, actor: str = "") -> None:
        """After a promotion: SageMaker approval statuses follow, ``Zaindari Model Promoted`` is sent
        (``deploy_model`` deploys on it). For promotions decided elsewhere (``zaindari registry promote``)."""
        self._mirror_model(decision.model, reason=f"version {decision.candidate} promoted to production")
        self.notifier.event(
            MODEL_PROMOTED,
            ProductionChanged(
                model=decision.model,
                version=decision.candidate,
                previous=decision.champion,
                action="promote",
                reason="; ".join(decision.reasons),
                actor=actor,
                at=self.clock(),
                numbers=decision.numbers,
            ),
        )

    # -- deploy_model

    def on_production_changed(self, change: ProductionChanged) -> DeploymentOutcome:
        """React to a Promoted / Rolled Back event: deploy, unless it is stale or already done."""
        current = self.registry.alias_version(change.model, PRODUCTION)
        if current is None:
            return DeploymentOutcome(
                change.model, None, "skipped", f"{change.model} has no production version in the registry"
            )
        if current != change.version:
            return DeploymentOutcome(
                change.model,
                current,
                "skipped",
                f"production is now version {current}, not {change.version}: a later event deploys it",
            )
        if change.deployed:
            return DeploymentOutcome(
                change.model, current, "skipped", "already deployed by the call that changed production"
            )
        return self.deploy_production(change.model, reason=f"{change.action}: {change.reason}".strip(": "))

    def deploy_production(self, model: str, *, reason: str = "") -> DeploymentOutcome:
        """Put ``model``'s production version on every configured target.

        Every target is tried; when one fails the others still run, and :class:`PortError` is
        raised afterwards naming each failure (deployment is idempotent: a retry redoes the rest).
        """
        number = self.registry.alias_version(model, PRODUCTION)
        if number is None:
            return DeploymentOutcome(model, None, "skipped", f"{model} has no production version")
        version = self.registry.version(model, number)
        results: list[TargetResult] = []

        def attempt(target: str, action: Callable[[], dict[str, Any]] | None) -> None:
            if action is None:
                results.append(TargetResult(target, "skipped", {"reason": "not configured"}))
                return
            try:
                results.append(TargetResult(target, "deployed", action()))
            except (PortError, BundleError) as exc:
                results.append(TargetResult(target, "failed", {"error": str(exc)}))

        endpoint, edge = self.endpoint, self.edge
        attempt("sagemaker_endpoint", (lambda: endpoint.deploy(version)) if endpoint else None)
        attempt(
            "edge",
            (lambda: edge.publish(edge.update_for(version, reason)) | {"version": number}) if edge else None,
        )
        attempt(
            "sagemaker_model_registry",
            (lambda: {"statuses": self._mirror_model(model, reason=reason or "production changed")})
            if self.mirror
            else None,
        )
        # nothing to push: scoring functions whose model path is registry://<model>/production
        # read the alias again within their ZAINDARI_MODEL_ALIAS_TTL_SECONDS
        results.append(
            TargetResult(
                "lambda",
                "deployed",
                {
                    "reference": f"registry://{model}/{PRODUCTION}",
                    "version": number,
                    "via": "alias, within its TTL",
                },
            )
        )
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise PortError(
                f"{model} version {number}: deployment failed on "
                + "; ".join(f"{r.target}: {r.detail.get('error')}" for r in failed)
            )
        return DeploymentOutcome(model, number, "deployed", reason, results)

    def _mirror_model(self, model: str, *, reason: str) -> dict[str, str]:
        """Bring every version's SageMaker approval status in line with the aliases."""
        if self.mirror is None:
            return {}
        aliases = self.registry.store.aliases(model)
        rolled_back = frozenset(
            e.from_version
            for e in self.registry.store.history(model)
            if e.action == "rollback" and e.from_version is not None
        )
        statuses: dict[str, str] = {}
        for version in self.registry.store.list_versions(model):
            status = approval_status(version.version, aliases, rolled_back)
            self.mirror.sync(version, status, reason)
            statuses[str(version.version)] = status
        return statuses

    # -- rollback

    def rollback(
        self, model: str, *, reason: str, to_version: int | None = None, actor: str = ""
    ) -> DeploymentOutcome:
        """Set ``production`` back to the previous (or ``to_version``) version, deploy it, announce it.

        The history records the move with its reason; the ``Zaindari Model Rolled Back`` event
        says it is already deployed (``deployed``), so ``deploy_model`` does not repeat it.
        """
        entry = self.registry.rollback(model, to_version=to_version, reason=reason, actor=actor)
        assert entry.to_version is not None

        def announce(deployed: bool) -> None:
            self.notifier.event(
                MODEL_ROLLED_BACK,
                ProductionChanged(
                    model=model,
                    version=entry.to_version or 0,
                    previous=entry.from_version,
                    action="rollback",
                    reason=reason,
                    actor=actor,
                    at=entry.at,
                    deployed=deployed,
                ),
            )

        try:
            outcome = self.deploy_production(model, reason=f"rollback: {reason}")
        except PortError:
            announce(False)  # deploy_model retries the deployment from the event
            raise
        announce(outcome.status == "deployed")
        return outcome
