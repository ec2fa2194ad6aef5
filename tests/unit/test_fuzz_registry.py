"""The model registry API driven by hypothesis (a state machine): random sequences of register
(good, tampered, incomplete and foreign bundles, paths that are no bundle), promote, rollback and
alias moves with hostile model names, alias names, version numbers and reasons.

Invariants after every step: a call either succeeds or is refused with ``RegistryError`` (its
reason), never another exception; version numbers run 1..n with no gap; every alias points at a
registered version; replaying the audit history gives exactly the current aliases (no move is
unrecorded); a refused bundle stored nothing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.hostile import ODD_TEXT
from tests.registry_support import labelled_metrics, registry_bundle
from zaindari.memory_ports import LocalArtifactStore, MemoryRegistryStore
from zaindari.registry import GatePolicy, ModelRegistry, RegistryError, ShadowResult

MODEL = "plant-anomaly"
BUNDLES: dict[str, Path] = {}
GOOD = ["auc90", "auc95", "auc80"]
BAD = ["tampered", "no_metrics", "failed_parity", "not_onnx"]


@pytest.fixture(scope="module", autouse=True)
def bundles(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> None:
    """Bundles built once: three good ones of different quality, and broken ones."""
    root = tmp_path_factory.mktemp("bundles")
    for name, auc in zip(GOOD, (0.90, 0.95, 0.80), strict=True):
        BUNDLES[name] = registry_bundle(bundle_dir, root / name, metrics=labelled_metrics(auc))
    tampered = registry_bundle(bundle_dir, root / "tampered", metrics=labelled_metrics(0.9))
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(data))
    BUNDLES["tampered"] = tampered
    BUNDLES["no_metrics"] = registry_bundle(bundle_dir, root / "no_metrics", metrics=None)
    BUNDLES["failed_parity"] = registry_bundle(
        bundle_dir,
        root / "failed_parity",
        metrics=labelled_metrics(0.9),
        parity={"passed": False, "max_abs_diff": 1.0},
    )
    not_onnx = registry_bundle(bundle_dir, root / "not_onnx", metrics=labelled_metrics(0.9))
    _rewrite_with_valid_hashes(not_onnx, "model.onnx", b"\x80\x04\x95 not a model: a pickle header")
    BUNDLES["not_onnx"] = not_onnx


def _rewrite_with_valid_hashes(bundle: Path, name: str, content: bytes) -> None:
    """Replace a file and fix the manifest, as an attacker with write access would."""
    import hashlib
    import json

    (bundle / name).write_bytes(content)
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    manifest["files"][name] = hashlib.sha256(content).hexdigest()
    (bundle / "MANIFEST.json").write_text(json.dumps(manifest))


VERSIONS = st.one_of(st.integers(-2, 8), st.sampled_from([0, 2**31, -(2**63)]))
MODELS = st.one_of(st.just(MODEL), st.just(MODEL), ODD_TEXT)
SHADOWS = st.one_of(
    st.none(),
    st.builds(
        ShadowResult,
        st.integers(0, 1000),
        st.integers(0, 1000),
        st.integers(0, 1000),
        st.floats(0, 1),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
)


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lake = Path(tempfile.mkdtemp(prefix="fuzz-registry-"))
        self.store = MemoryRegistryStore()
        self.registry = ModelRegistry(self.store, LocalArtifactStore(self.lake))
        self.registered = 0
        self.refusals = 0

    def teardown(self) -> None:
        shutil.rmtree(self.lake, ignore_errors=True)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RegistryError as exc:
            assert str(exc)  # refused with a reason
            self.refusals += 1
            return None

    @rule(name=st.sampled_from(GOOD + BAD), model=st.one_of(st.none(), MODELS))
    def register(self, name: str, model: str | None) -> None:
        version = self._call(self.registry.register_version, str(BUNDLES[name]), model=model, actor="fuzz")
        if name in BAD:
            assert version is None, f"{name} bundle was registered"
        if version is not None:
            self.registered += 1
            assert version.version == self.registered
            assert self.store.aliases(MODEL)["staging"] == version.version

    @rule(path=st.one_of(ODD_TEXT, st.just("s3://no-such-bucket/x/"), st.just("/dev/null")))
    def register_a_path_that_is_no_bundle(self, path: str) -> None:
        assert self._call(self.registry.register_version, path) is None

    @rule(
        model=MODELS,
        version=VERSIONS,
        shadow=SHADOWS,
        manual=st.booleans(),
        approved_by=st.one_of(st.none(), ODD_TEXT),
    )
    def promote(
        self, model: str, version: int, shadow: ShadowResult | None, manual: bool, approved_by: str | None
    ) -> None:
        policy = GatePolicy(manual_approval=manual)
        self._call(
            self.registry.promote, model, version, policy=policy, shadow=shadow, approved_by=approved_by
        )

    @rule(
        model=MODELS, to=st.one_of(st.none(), VERSIONS), reason=st.one_of(ODD_TEXT, st.just("false alarms"))
    )
    def rollback(self, model: str, to: int | None, reason: str) -> None:
        self._call(self.registry.rollback, model, to_version=to, reason=reason)

    @rule(
        model=MODELS,
        alias=st.one_of(ODD_TEXT, st.sampled_from(["canary", "staging", "x#y"])),
        version=st.one_of(st.none(), VERSIONS),
    )
    def set_alias(self, model: str, alias: str, version: int | None) -> None:
        self._call(self.registry.set_alias, model, alias, version, reason="fuzz")

    @invariant()
    def versions_run_one_to_n_and_aliases_point_at_them(self) -> None:
        numbers = [v.version for v in self.store.list_versions(MODEL)]
        assert sorted(numbers) == list(range(1, self.registered + 1))
        for model in self.store.list_models():
            registered = {v.version for v in self.store.list_versions(model)}
            assert set(self.store.aliases(model).values()) <= registered

    @invariant()
    def the_history_replays_to_the_current_aliases(self) -> None:
        for model in {MODEL, *self.store.list_models()}:
            replayed: dict[str, int] = {}
            for entry in self.store.history(model):
                if entry.changed:
                    if entry.to_version is None:
                        replayed.pop(entry.alias, None)
                    else:
                        replayed[entry.alias] = entry.to_version
            assert replayed == self.store.aliases(model)


RegistryMachine.TestCase.settings = settings(settings.default, stateful_step_count=10)
test_registry_api_under_random_hostile_calls = RegistryMachine.TestCase
