"""The model registry on moto: DynamoDB metadata, S3 artifacts, the gate, rollback, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.functions.conftest import EmbeddedAws
from tests.registry_support import labelled_metrics, recent_readings, registry_bundle
from zaindari.bundle import load_bundle
from zaindari.infra.registry_store import DynamoRegistryStore, S3ArtifactStore, create_registry_table
from zaindari.registry import (
    AliasConflict,
    GatePolicy,
    HistoryEntry,
    ModelRegistry,
    RegistryError,
    ShadowResult,
    VersionConflict,
    shadow_alert_rates,
)

pytestmark = pytest.mark.aws

ROOT = Path(__file__).resolve().parents[2]
MODEL = "plant-anomaly"
TABLE = "zaindari-model-registry"
BUCKET = "zaindari-lake"
SAME_RATES = ShadowResult(1000, 1000, 1000, 0.05, 0.05)


@pytest.fixture
def store(aws: EmbeddedAws) -> DynamoRegistryStore:
    create_registry_table(aws.factory, TABLE)
    aws.factory.client("s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": aws.factory.config.region}
    )
    return DynamoRegistryStore(aws.factory, TABLE)


@pytest.fixture
def registry(aws: EmbeddedAws, store: DynamoRegistryStore, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(store, S3ArtifactStore(aws.factory, BUCKET, tmp_path / "downloads"))


def _bundle(bundle_dir: Path, tmp_path: Path, name: str, auc: float, **kw: float) -> Path:
    return registry_bundle(bundle_dir, tmp_path / name, metrics=labelled_metrics(auc), **kw)


def test_register_copies_the_bundle_to_the_lake_and_numbers_versions(
    aws: EmbeddedAws, registry: ModelRegistry, store: DynamoRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    first = registry.register_version(str(_bundle(bundle_dir, tmp_path, "a", 0.9)))
    # a bundle already in S3 (where the training job writes it) registers as well
    second = registry.register_version(first.artifact_uri)

    assert (first.version, second.version) == (1, 2)
    assert first.artifact_uri == f"s3://{BUCKET}/models/{MODEL}/1/"
    keys = [o["Key"] for o in aws.factory.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert f"models/{MODEL}/2/MANIFEST.json" in keys and f"models/{MODEL}/2/model.onnx" in keys
    downloaded = load_bundle(registry.artifacts.fetch(second.artifact_uri))
    assert downloaded.content_hash == first.content_hash == second.content_hash
    assert store.get_version(MODEL, 2) == second
    assert [v.version for v in store.list_versions(MODEL)] == [1, 2]
    assert store.list_models() == [MODEL]
    assert store.aliases(MODEL) == {"staging": 2}


def test_version_numbers_and_alias_moves_are_conditional(
    registry: ModelRegistry, store: DynamoRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    version = registry.register_version(str(_bundle(bundle_dir, tmp_path, "a", 0.9)))

    # two writers never get the same number, nor overwrite a stored version
    assert [store.reserve_version(MODEL) for _ in range(3)] == [2, 3, 4]
    with pytest.raises(VersionConflict):
        store.put_version(version)
    # an alias change based on a stale read is refused, and leaves no history behind
    stale = HistoryEntry(
        model=MODEL, at="2026-11-22T00:00:00Z", seq="s1", alias="staging", action="set", to_version=1
    )
    with pytest.raises(AliasConflict):
        store.move_alias(stale, expected=None)  # staging is 1 already
    assert len(store.history(MODEL)) == 1
    removal = HistoryEntry(
        model=MODEL, at="2026-11-22T00:00:01Z", seq="s2", alias="staging", action="set", from_version=1
    )
    store.move_alias(removal, expected=1)
    assert store.aliases(MODEL) == {}


def test_gate_promote_refuse_and_rollback_leave_a_full_history(
    registry: ModelRegistry, store: DynamoRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    champion_path = _bundle(bundle_dir, tmp_path, "champ", 0.90)
    v1 = registry.register_version(str(champion_path)).version
    assert registry.promote(MODEL, v1).promoted
    worse = registry.register_version(str(_bundle(bundle_dir, tmp_path, "worse", 0.80))).version
    better_path = _bundle(bundle_dir, tmp_path, "better", 0.93)
    better = registry.register_version(str(better_path)).version

    refused = registry.promote(MODEL, worse, policy=GatePolicy(tolerance=0.01), shadow=SAME_RATES)
    # the caller shadow-scores recent readings with both models, fetched from the lake
    shadow = shadow_alert_rates(
        load_bundle(registry.artifacts.fetch(registry.version(MODEL, v1).artifact_uri)),
        load_bundle(registry.artifacts.fetch(registry.version(MODEL, better).artifact_uri)),
        recent_readings(),
    )
    promoted = registry.promote(MODEL, better, policy=GatePolicy(tolerance=0.01), shadow=shadow)
    back = registry.rollback(MODEL, reason="operators report missed alarms", actor="alice")

    assert refused.outcome == "refused" and "auc" in refused.reasons[0]
    assert promoted.promoted and shadow.difference == 0.0
    assert (back.from_version, back.to_version) == (better, v1)
    assert store.aliases(MODEL) == {"staging": better, "production": v1, "archived": v1}
    steps = [(e.alias, e.action, e.from_version, e.to_version, e.candidate) for e in store.history(MODEL)]
    assert steps == [
        ("staging", "register", None, 1, None),
        ("production", "promote", None, 1, 1),
        ("staging", "register", 1, 2, None),
        ("staging", "register", 2, 3, None),
        ("production", "refused", None, None, 2),
        ("production", "promote", 1, 3, 3),
        ("archived", "set", None, 1, None),
        ("production", "rollback", 3, 1, None),
    ]
    refusal = store.history(MODEL)[4]
    assert refusal.numbers["metrics"][0]["challenger"] == 0.8
    assert store.history(MODEL)[-1].reason == "operators report missed alarms"


def test_invalid_bundles_are_refused_and_nothing_is_stored(
    aws: EmbeddedAws, registry: ModelRegistry, store: DynamoRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    tampered = _bundle(bundle_dir, tmp_path, "tampered", 0.9)
    (tampered / "spec.yaml").write_text((tampered / "spec.yaml").read_text() + "\n# edited\n")

    with pytest.raises(RegistryError, match=r"spec\.yaml: sha256"):
        registry.register_version(str(tampered))
    assert store.list_models() == []
    assert "Contents" not in aws.factory.client("s3").list_objects_v2(Bucket=BUCKET)


# -- the CLI, as a subprocess against the same moto server


def _cli(aws: EmbeddedAws, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ZAINDARI_"))}
    env.update(aws.env)
    env.update(
        {
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "ZAINDARI_REGISTRY_TABLE": TABLE,
            "ZAINDARI_LAKE_BUCKET": BUCKET,
            "ZAINDARI_PROMOTION_TOLERANCE": "0.01",
            "ZAINDARI_PROMOTION_ALERT_RATE_BOUND": "0.02",
            "USER": "tester",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "zaindari.cli", "registry", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_registers_promotes_rolls_back_and_prints_tables(
    aws: EmbeddedAws, store: DynamoRegistryStore, bundle_dir: Path, tmp_path: Path
) -> None:
    readings = tmp_path / "recent.jsonl"
    readings.write_text("\n".join(json.dumps(r.to_record()) for r in recent_readings()[:600]))
    paths = [_bundle(bundle_dir, tmp_path, n, auc) for n, auc in (("v1", 0.9), ("v2", 0.8), ("v3", 0.91))]
    for path in paths:
        done = _cli(aws, "register", MODEL, str(path))
        assert done.returncode == 0, done.stderr
    assert "registered plant-anomaly version 3 (staging)" in done.stdout

    first = _cli(aws, "promote", MODEL, "1")
    refused = _cli(aws, "promote", MODEL, "2", "--readings", str(readings))
    # the plant's maintenance log: the first device of the readings known faulty from its 100th reading
    known = recent_readings()[100]
    log = tmp_path / "work-orders.jsonl"
    log.write_text(json.dumps({"device_id": known.device_id, "start": known.timestamp.isoformat()}) + "\n")
    promoted = _cli(
        aws,
        "promote",
        MODEL,
        "3",
        "--readings",
        str(readings),
        "--maintenance",
        str(log),
        "--reason",
        "retrained on November",
    )
    rolled = _cli(aws, "rollback", MODEL, "--reason", "noisy on line 2")
    listed = _cli(aws, "list")
    history = _cli(aws, "history", MODEL)
    shown = _cli(aws, "show", MODEL)
    one = _cli(aws, "show", MODEL, "3")
    no_reason = _cli(aws, "rollback", MODEL)
    unknown = _cli(aws, "show", MODEL, "9")

    assert first.returncode == 0 and first.stdout.startswith("promoted:"), first.stderr
    assert refused.returncode == 1 and refused.stdout.startswith("refused: plant-anomaly version 2")
    assert "auc" in refused.stdout and "WORSE" in refused.stdout
    assert promoted.returncode == 0 and "shadow: 600 readings" in promoted.stdout, promoted.stderr
    assert "known faults (maintenance log): " in promoted.stdout
    assert rolled.returncode == 0 and "from version 3 to 1" in rolled.stdout
    # the rollback deployed version 1 everywhere configured (no serving image here: no endpoint)
    targets = {line.split()[0]: line.split()[1] for line in rolled.stdout.splitlines()[2:]}
    assert targets == {
        "sagemaker_endpoint": "skipped",
        "edge": "deployed",
        "sagemaker_model_registry": "deployed",
        "lambda": "deployed",
    }, rolled.stdout
    assert listed.stdout.splitlines() == [
        "MODEL          VERSIONS  LATEST  PRODUCTION  STAGING  ARCHIVED  OTHER ALIASES",
        "plant-anomaly  3         3       1           3        1         -",
    ]
    lines = history.stdout.splitlines()
    assert lines[0].split() == ["AT", "ALIAS", "ACTION", "FROM", "TO", "BY", "REASON", "NUMBERS"]
    actions = [line.split()[1:3] for line in lines[1:]]
    assert actions == [
        ["staging", "register"],
        ["staging", "register"],
        ["staging", "register"],
        ["production", "promote"],
        ["production", "refused"],
        ["production", "promote"],
        ["archived", "set"],
        ["production", "rollback"],
    ]
    assert "auc 0.9->0.8 WORSE" in lines[5] and "cli:tester" in lines[5]
    assert "alerts" in lines[6] and "retrained on November" in lines[6]
    assert "noisy on line 2" in lines[8]
    assert shown.stdout.splitlines()[0].split()[:4] == ["VERSION", "ALIASES", "TASK", "METRICS"]
    assert "auc=0.91" in shown.stdout.splitlines()[3]
    assert "content hash" in one.stdout and "models/plant-anomaly/3/" in one.stdout
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    assert unknown.returncode == 2 and "has no version 9" in unknown.stderr
