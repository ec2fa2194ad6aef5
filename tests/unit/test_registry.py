"""The model registry and the champion/challenger gate on in-memory ports, with real bundles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.registry_support import labelled_metrics, recent_readings, registry_bundle
from zaindari.bundle import load_bundle
from zaindari.maintenance import MaintenanceLog, MaintenanceWindow
from zaindari.memory_ports import LocalArtifactStore, MemoryRegistryStore
from zaindari.registry import (
    AliasConflict,
    GatePolicy,
    HistoryEntry,
    ModelRegistry,
    RegistryError,
    ShadowResult,
    compare_metrics,
    shadow_alert_rates,
)

MODEL = "plant-anomaly"
SAME_RATES = ShadowResult(1000, 1000, 1000, 0.05, 0.06)


@pytest.fixture
def store() -> MemoryRegistryStore:
    return MemoryRegistryStore()


@pytest.fixture
def registry(store: MemoryRegistryStore, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(store, LocalArtifactStore(tmp_path / "lake"))


def _register(
    registry: ModelRegistry, bundle_dir: Path, tmp_path: Path, name: str, auc: float, **kw: object
) -> int:
    path = registry_bundle(bundle_dir, tmp_path / name, metrics=labelled_metrics(auc), **kw)  # type: ignore[arg-type]
    return registry.register_version(str(path), actor="test").version


def _production(store: MemoryRegistryStore) -> int | None:
    return store.aliases(MODEL).get("production")


def test_versions_are_monotonic_and_registered_under_staging(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    numbers = [_register(registry, bundle_dir, tmp_path, f"b{i}", 0.9) for i in range(3)]

    assert numbers == [1, 2, 3]
    assert store.aliases(MODEL) == {"staging": 3}
    v2 = registry.version(MODEL, 2)
    assert v2.task == "anomaly" and v2.metrics["auc"] == 0.9 and v2.parity["passed"] is True
    assert v2.signature["features"] and v2.thresholds["levels"]
    assert v2.lineage == {"training_set": "s3://lake/training/run-1/"}
    # the artifact is a verified copy under models/<name>/<version>/ with the same content hash
    assert v2.artifact_uri.endswith("models/plant-anomaly/2")
    assert load_bundle(v2.artifact_uri).content_hash == v2.content_hash
    staging = [e for e in store.history(MODEL) if e.alias == "staging"]
    assert [(e.from_version, e.to_version, e.action) for e in staging] == [
        (None, 1, "register"),
        (1, 2, "register"),
        (2, 3, "register"),
    ]


def test_first_version_is_promoted_without_a_champion(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    v1 = _register(registry, bundle_dir, tmp_path, "b1", 0.9)

    decision = registry.promote(MODEL, v1, shadow=None, policy=GatePolicy(alert_rate_bound=0.02))

    assert decision.promoted and _production(store) == 1
    last = store.history(MODEL)[-1]
    assert (last.action, last.alias, last.from_version, last.to_version) == ("promote", "production", None, 1)


@pytest.mark.parametrize("auc", [0.90, 0.95, 0.895])
def test_gate_accepts_a_better_or_equal_challenger_within_tolerance(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path, auc: float
) -> None:
    registry.promote(MODEL, _register(registry, bundle_dir, tmp_path, "champ", 0.90))
    challenger = _register(registry, bundle_dir, tmp_path, "chall", auc)

    decision = registry.promote(MODEL, challenger, policy=GatePolicy(tolerance=0.01), shadow=SAME_RATES)

    assert decision.outcome == "promoted", decision.reasons
    assert store.aliases(MODEL) == {"staging": 2, "production": 2, "archived": 1}
    promote = next(e for e in store.history(MODEL) if e.action == "promote" and e.to_version == 2)
    assert promote.from_version == 1
    auc_row = next(m for m in promote.numbers["metrics"] if m["metric"] == "auc")
    assert (auc_row["champion"], auc_row["challenger"], auc_row["passed"]) == (0.90, auc, True)
    assert promote.numbers["shadow"]["challenger_alert_rate"] == 0.06


def test_worse_challenger_is_refused_with_its_numbers_and_stays_in_staging(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    registry.promote(MODEL, _register(registry, bundle_dir, tmp_path, "champ", 0.90))
    challenger = _register(registry, bundle_dir, tmp_path, "chall", 0.80)

    decision = registry.promote(MODEL, challenger, policy=GatePolicy(tolerance=0.01), shadow=SAME_RATES)

    assert decision.outcome == "refused"
    assert "auc: challenger 0.8 is lower than the champion's 0.9" in decision.reasons[0]
    assert store.aliases(MODEL) == {"staging": 2, "production": 1}
    refused = store.history(MODEL)[-1]
    assert (refused.action, refused.candidate, refused.to_version) == ("refused", 2, None)
    assert refused.reason.startswith("auc: challenger 0.8")
    auc_row = next(m for m in refused.numbers["metrics"] if m["metric"] == "auc")
    assert auc_row == {
        "metric": "auc",
        "better": "higher",
        "champion": 0.9,
        "challenger": 0.8,
        "worst_allowed": pytest.approx(0.891),
        "passed": False,
    }


def test_lower_is_better_for_regression_errors() -> None:
    champion = {"task": "regression", "rmse": 10.0, "mae": 7.0}

    _, ok = compare_metrics("regression", champion, {"rmse": 10.4, "mae": 6.0}, tolerance=0.05)
    rows, worse = compare_metrics("regression", champion, {"rmse": 11.0, "mae": 6.0}, tolerance=0.05)

    assert ok == []
    assert worse == [
        "rmse: challenger 11 is higher than the champion's 10 beyond the tolerance 0.05 (worst allowed 10.5)"
    ]
    assert [r.name for r in rows] == ["rmse", "mae"]


def test_classification_compares_f1_and_auc_and_a_missing_figure_refuses() -> None:
    champion = {"at_learned_threshold": {"f1": 0.7}, "auc": 0.9}

    _, reasons = compare_metrics("classification", champion, {"auc": 0.95}, tolerance=0.0)

    assert reasons == ["f1: the champion has 0.7, the challenger reports none"]


def test_alert_rate_beyond_the_bound_is_refused(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    champion_path = registry_bundle(bundle_dir, tmp_path / "champ", metrics=labelled_metrics(0.9))
    chatty_path = registry_bundle(
        bundle_dir, tmp_path / "chatty", metrics=labelled_metrics(0.95), threshold_scale=0.3
    )
    registry.promote(MODEL, registry.register_version(str(champion_path)).version)
    chatty = registry.register_version(str(chatty_path)).version
    # the caller shadow-scores recent readings with both models
    shadow = shadow_alert_rates(load_bundle(champion_path), load_bundle(chatty_path), recent_readings())
    assert shadow.challenger_alert_rate > shadow.champion_alert_rate + 0.03

    decision = registry.promote(MODEL, chatty, policy=GatePolicy(alert_rate_bound=0.02), shadow=shadow)
    missing = registry.promote(MODEL, chatty, policy=GatePolicy(alert_rate_bound=0.02), shadow=None)
    loose = registry.promote(MODEL, chatty, policy=GatePolicy(alert_rate_bound=0.2), shadow=shadow)

    assert decision.outcome == "refused" and "beyond the bound 0.02" in decision.reasons[0]
    assert missing.outcome == "refused" and missing.reasons == [
        "no shadow scoring result (alert_rate_bound is set)"
    ]
    assert loose.promoted
    refusal = next(e for e in store.history(MODEL) if e.action == "refused")
    assert refusal.numbers["shadow"]["bound"] == 0.02
    assert refusal.numbers["shadow"]["challenger_alert_rate"] == shadow.challenger_alert_rate


def test_manual_approval_waits_then_promotes_with_the_approver(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    policy = GatePolicy(manual_approval=True)
    registry.promote(MODEL, _register(registry, bundle_dir, tmp_path, "champ", 0.90), approved_by="ops")
    challenger = _register(registry, bundle_dir, tmp_path, "chall", 0.92)

    waiting = registry.promote(MODEL, challenger, policy=policy, shadow=SAME_RATES)
    approved = registry.promote(MODEL, challenger, policy=policy, shadow=SAME_RATES, approved_by="alice")

    assert waiting.outcome == "awaiting_approval"
    assert [e.action for e in store.history(MODEL)][-3:] == ["awaiting_approval", "promote", "set"]
    assert approved.promoted and _production(store) == 2
    assert store.history(MODEL)[-2].numbers["approved_by"] == "alice"


def test_worse_challenger_is_refused_even_with_approval(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    registry.promote(MODEL, _register(registry, bundle_dir, tmp_path, "champ", 0.90))
    challenger = _register(registry, bundle_dir, tmp_path, "chall", 0.70)

    decision = registry.promote(MODEL, challenger, shadow=SAME_RATES, approved_by="alice")

    assert decision.outcome == "refused" and _production(store) == 1


def test_rollback_to_previous_then_to_a_named_version(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    for i in range(3):
        registry.promote(MODEL, _register(registry, bundle_dir, tmp_path, f"b{i}", 0.9), shadow=SAME_RATES)
    assert _production(store) == 3

    back = registry.rollback(MODEL, reason="false alarms on line 2", actor="alice")
    again = registry.rollback(MODEL, reason="still noisy")  # not back to 3: it was rolled back from
    named = registry.rollback(MODEL, to_version=3, reason="fixed upstream sensor")

    assert (back.from_version, back.to_version, back.reason, back.actor) == (
        3,
        2,
        "false alarms on line 2",
        "alice",
    )
    assert (again.from_version, again.to_version) == (2, 1)
    assert (named.from_version, named.to_version, named.action) == (1, 3, "rollback")
    assert _production(store) == 3
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.rollback(MODEL, reason=" ")


def test_rollback_without_an_earlier_production_version_is_refused(
    registry: ModelRegistry, bundle_dir: Path, tmp_path: Path
) -> None:
    registry.promote(MODEL, _register(registry, bundle_dir, tmp_path, "b1", 0.9))

    with pytest.raises(RegistryError, match="no earlier production version"):
        registry.rollback(MODEL, reason="oops")


def test_set_alias_moves_are_recorded_and_conflicts_detected(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    _register(registry, bundle_dir, tmp_path, "b1", 0.9)

    entry = registry.set_alias(MODEL, "canary-line-2", 1, reason="trial on line 2", actor="bob")

    assert store.aliases(MODEL)["canary-line-2"] == 1
    assert (entry.from_version, entry.to_version, entry.action) == (None, 1, "set")
    stale = HistoryEntry(model=MODEL, at="t", seq="x", alias="canary-line-2", action="set", to_version=1)
    with pytest.raises(AliasConflict):
        store.move_alias(stale, expected=None)  # someone else moved it since it was read
    with pytest.raises(RegistryError, match="no version 9"):
        registry.set_alias(MODEL, "staging", 9, reason="typo")


def test_bundle_with_a_wrong_hash_is_refused(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    path = registry_bundle(bundle_dir, tmp_path / "tampered", metrics=labelled_metrics(0.9))
    thresholds = json.loads((path / "thresholds.json").read_text())
    thresholds["levels"]["warning"] *= 10
    (path / "thresholds.json").write_text(json.dumps(thresholds))

    with pytest.raises(RegistryError, match=r"bundle refused: thresholds.json: sha256 .* does not match"):
        registry.register_version(str(path))
    assert store.list_versions(MODEL) == [] and store.history(MODEL) == []


def test_bundle_with_a_broken_onnx_file_is_refused(
    registry: ModelRegistry, bundle_dir: Path, tmp_path: Path
) -> None:
    path = registry_bundle(bundle_dir, tmp_path / "broken", metrics=labelled_metrics(0.9))
    (path / "model.onnx").write_bytes(b"not an onnx graph")
    manifest = json.loads((path / "MANIFEST.json").read_text())
    manifest["files"]["model.onnx"] = hashlib.sha256(b"not an onnx graph").hexdigest()  # hashes fine
    (path / "MANIFEST.json").write_text(json.dumps(manifest))

    with pytest.raises(RegistryError, match=r"bundle refused: .*onnx"):
        registry.register_version(str(path))


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"metrics": None}, "no metrics.json"),
        ({"metrics": labelled_metrics(0.9), "parity": None}, "no parity.json"),
        (
            {"metrics": labelled_metrics(0.9), "parity": {"passed": False, "max_abs_diff": 1.0}},
            "failed parity",
        ),
    ],
)
def test_bundle_without_metrics_or_parity_is_refused(
    registry: ModelRegistry, bundle_dir: Path, tmp_path: Path, kwargs: dict[str, object], reason: str
) -> None:
    path = registry_bundle(bundle_dir, tmp_path / "incomplete", **kwargs)  # type: ignore[arg-type]

    with pytest.raises(RegistryError, match=reason):
        registry.register_version(str(path))


def test_bundle_of_another_model_is_refused(
    registry: ModelRegistry, bundle_dir: Path, tmp_path: Path
) -> None:
    path = registry_bundle(bundle_dir, tmp_path / "b", metrics=labelled_metrics(0.9))

    with pytest.raises(RegistryError, match="not 'pump-rul'"):
        registry.register_version(str(path), model="pump-rul")


def test_registration_racing_another_keeps_staging_on_the_newest(
    store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    class RacingStore(MemoryRegistryStore):
        """Another writer registers version 2 between this writer's read and write of staging."""

        raced = False

        def move_alias(self, entry: HistoryEntry, *, expected: int | None) -> None:
            if entry.action == "register" and not self.raced:
                self.raced = True
                other = HistoryEntry(
                    model=MODEL, at="t", seq="other", alias="staging", action="register", to_version=2
                )
                super().move_alias(other, expected=self.aliases(MODEL).get("staging"))
            super().move_alias(entry, expected=expected)

    racing = RacingStore()
    registry = ModelRegistry(racing, LocalArtifactStore(tmp_path / "lake"))

    version = registry.register_version(
        str(registry_bundle(bundle_dir, tmp_path / "b", metrics=labelled_metrics(0.9)))
    )

    assert version.version == 1
    assert racing.aliases(MODEL) == {"staging": 2}  # the newer version stays staging, no error


def test_gate_records_whether_both_versions_were_evaluated_on_the_same_data(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    same = {"data": {"content_hash": "abc", "assets": {"held_out": ["press-3"]}}}
    other = {"data": {"content_hash": "def", "assets": {"held_out": ["press-1"]}}}
    registry.promote(MODEL, _register(registry, bundle_dir, tmp_path, "a", 0.9, lineage=same))
    on_same = _register(registry, bundle_dir, tmp_path, "b", 0.9, lineage=same)
    on_other = _register(registry, bundle_dir, tmp_path, "c", 0.9, lineage=other)

    first = registry.promote(MODEL, on_other, shadow=SAME_RATES, policy=GatePolicy(manual_approval=True))
    second = registry.promote(MODEL, on_same, shadow=SAME_RATES, policy=GatePolicy(manual_approval=True))

    assert first.numbers["evaluation"]["same"] is False
    assert second.numbers["evaluation"]["same"] is True
    assert store.history(MODEL)[-1].numbers["evaluation"]["champion"] == {
        "content_hash": "abc",
        "held_out_assets": ["press-3"],
    }


def _known_fault_log() -> MaintenanceLog:
    """The small plant's faults as a maintenance team would log them (onset, open-ended)."""
    from zaindari.simulate import PlantConfig, simulate_plant

    faults = simulate_plant(PlantConfig.small(seed=1)).faults
    return MaintenanceLog(tuple(MaintenanceWindow(device_id=f.device_id, start=f.onset) for f in faults))


def test_shadow_rates_count_known_fault_readings_apart(bundle_dir: Path, tmp_path: Path) -> None:
    champion = load_bundle(registry_bundle(bundle_dir, tmp_path / "champ", metrics=labelled_metrics(0.9)))
    readings = recent_readings()
    log = _known_fault_log()
    inside = sum(1 for r in readings if log.covers(r.device_id, r.timestamp))
    assert 0 < inside < len(readings)

    plain = shadow_alert_rates(champion, champion, readings)
    split = shadow_alert_rates(champion, champion, readings, known_fault=log.covers)

    assert plain.known_fault_scored == 0 and plain.champion_known_fault_alert_rate is None
    assert split.known_fault_scored == inside and split.normal_scored == split.challenger_scored - inside
    # the faults alert far more than normal operation; the overall rate is the weighted mix
    assert split.champion_known_fault_alert_rate is not None
    assert split.champion_known_fault_alert_rate > split.champion_alert_rate
    mixed = (
        split.champion_alert_rate * split.normal_scored + split.champion_known_fault_alert_rate * inside
    ) / split.challenger_scored
    assert mixed == pytest.approx(plain.champion_alert_rate)
    assert split.to_dict()["known_fault"]["scored"] == inside


def test_a_challenger_deaf_to_known_faults_is_refused_where_the_plain_rate_hides_it(
    registry: ModelRegistry, store: MemoryRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    # Given a champion, and a challenger whose learned thresholds are ten times higher (what
    # fitting a model on fault rows does: the faults look normal to it; the expert rules remain)
    champion_path = registry_bundle(bundle_dir, tmp_path / "champ", metrics=labelled_metrics(0.9))
    deaf_path = registry_bundle(
        bundle_dir, tmp_path / "deaf", metrics=labelled_metrics(0.9), threshold_scale=10.0
    )
    registry.promote(MODEL, registry.register_version(str(champion_path)).version)
    deaf = registry.register_version(str(deaf_path)).version
    champion_bundle, deaf_bundle, readings = (
        load_bundle(champion_path),
        load_bundle(deaf_path),
        recent_readings(),
    )
    policy = GatePolicy(alert_rate_bound=0.04)
    # When the gate shadow-scores recent readings with the maintenance log's windows apart
    shadow = shadow_alert_rates(champion_bundle, deaf_bundle, readings, known_fault=_known_fault_log().covers)
    decision = registry.promote(MODEL, deaf, policy=policy, shadow=shadow)
    # Then it is refused for alerting less on the known faults, with the numbers
    assert decision.outcome == "refused" and len(decision.reasons) == 1
    assert "on known faults" in decision.reasons[0] and "alerts less by" in decision.reasons[0]
    known = decision.numbers["shadow"]["known_fault"]
    assert known["challenger_alert_rate"] < known["champion_alert_rate"] - 0.04
    assert _production(store) == 1
    # while the plain rate over all readings, diluted by normal operation, would have let it through
    plain = shadow_alert_rates(champion_bundle, deaf_bundle, readings)
    assert registry.promote(MODEL, deaf, policy=policy, shadow=plain).promoted


@pytest.mark.parametrize(
    ("normal", "fault", "refused_for"),
    [
        ((0.010, 0.012), (0.40, 0.70), None),  # alerts more on known faults: not held against it
        ((0.010, 0.012), (0.40, 0.36), None),  # a little less, within the bound
        ((0.120, 0.010), (0.40, 0.40), None),  # fewer false alarms, detects as well: better
        ((0.010, 0.012), (0.40, 0.30), "on known faults"),
        ((0.010, 0.120), (0.40, 0.40), "outside known fault windows"),  # chattier on normal operation
        ((0.120, 0.010), None, "difference -0.1100 beyond"),  # no known fault: quieter is suspect too
        ((0.010, 0.120), None, "difference +0.1100 beyond"),
    ],
)
def test_known_faults_anchor_detection_so_fewer_alarms_elsewhere_can_pass(
    registry: ModelRegistry,
    bundle_dir: Path,
    tmp_path: Path,
    normal: tuple[float, float],
    fault: tuple[float, float] | None,
    refused_for: str | None,
) -> None:
    champion = _register(registry, bundle_dir, tmp_path, "champ", 0.9)
    registry.promote(MODEL, champion)
    challenger = _register(registry, bundle_dir, tmp_path, "chall", 0.9)
    shadow = (
        ShadowResult(2000, 2000, 2000, *normal, 500, *fault)
        if fault
        else ShadowResult(2000, 2000, 2000, *normal)
    )

    decision = registry.promote(MODEL, challenger, policy=GatePolicy(alert_rate_bound=0.05), shadow=shadow)

    if refused_for is None:
        assert decision.promoted, decision.reasons
    else:
        assert decision.outcome == "refused" and len(decision.reasons) == 1
        assert refused_for in decision.reasons[0]
