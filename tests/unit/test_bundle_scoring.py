"""Verified model bundles and cached ONNX scoring, on a real PCA anomaly bundle.

No network, no Spark: the bundle is fitted with numpy (``fit_pca_bundle``) on a seeded matrix whose
width is the example spec's model features, and scored by onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest

import zaindari
from zaindari.bundle import (
    MODEL_FILE,
    BundleError,
    LearnedThresholds,
    ModelBundle,
    Signature,
    load_bundle,
    write_bundle,
)
from zaindari.pca_model import PcaWeights, fit_pca, fit_pca_bundle, pca_anomaly_onnx, pca_signature
from zaindari.scoring import Scorer, get_scorer
from zaindari.spec import ModelSpec, load_spec

SPEC_PATH = Path(zaindari.__file__).resolve().parent / "data" / "plant_anomaly.yaml"
TRAIN_ROWS = 4000
N_COMPONENTS = 3


# ----------------------------------------------------------------------------- fixtures & helpers


def _correlated_matrix(rows: int, width: int, seed: int) -> npt.NDArray[np.float64]:
    """Rows driven by three latent factors plus noise, with per-column offsets and scales."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(rows, 3))
    loadings = np.random.default_rng(1234).normal(size=(3, width))
    noise = rng.normal(scale=0.3, size=(rows, width))
    offsets = np.linspace(-50.0, 200.0, width)
    scales = np.linspace(0.5, 40.0, width)
    return np.asarray((latent @ loadings + noise) * scales + offsets)


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec(SPEC_PATH.read_text())


@pytest.fixture(scope="module")
def train(spec: ModelSpec) -> npt.NDArray[np.float64]:
    return _correlated_matrix(TRAIN_ROWS, len(spec.model_features), seed=7)


@pytest.fixture(scope="module")
def bundle_dir(
    spec: ModelSpec, train: npt.NDArray[np.float64], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return fit_pca_bundle(spec, train, tmp_path_factory.mktemp("bundle") / "plant", n_components=N_COMPONENTS)


@pytest.fixture(scope="module")
def other_bundle_dir(spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second bundle, fitted on other data (so its content hash differs)."""
    other = _correlated_matrix(500, len(spec.model_features), seed=99)
    return fit_pca_bundle(spec, other, tmp_path_factory.mktemp("other") / "plant", n_components=N_COMPONENTS)


@pytest.fixture(scope="module")
def weights(train: npt.NDArray[np.float64]) -> PcaWeights:
    return fit_pca(train, N_COMPONENTS)


@pytest.fixture
def copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the fitted bundle, free to damage."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_manifest(root: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest_path = root / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest, indent=2))


def _rehash(root: Path, name: str) -> None:
    """Record ``name``'s current sha256 in the manifest (as an honest re-packaging would)."""

    def edit(manifest: dict[str, Any]) -> None:
        manifest["files"][name] = _sha256(root / name)

    _edit_manifest(root, edit)


def _expected_content_hash(root: Path) -> str:
    """sha256 over ``name=sha256\\n`` of every listed file, sorted by name, from the bytes on disk."""
    listed = sorted(json.loads((root / "MANIFEST.json").read_text())["files"])
    digest = hashlib.sha256()
    for name in listed:
        digest.update(f"{name}={_sha256(root / name)}\n".encode())
    return digest.hexdigest()


def _learned_thresholds(scores: npt.NDArray[np.float64]) -> LearnedThresholds:
    return LearnedThresholds.model_validate(
        {"levels": {"warning": float(np.quantile(scores, 0.995))}, "direction": "above"}
    )


def _refusal(root: Path) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    return str(info.value)


class CountingSession:
    """Instrumentation around the real onnxruntime session: counts ``run`` calls and the rows fed."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[int] = []

    def run(self, output_names: Any, feed: dict[str, npt.NDArray[Any]], *args: Any) -> Any:
        self.calls.append(next(iter(feed.values())).shape[0])
        return self.real.run(output_names, feed, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


# ----------------------------------------------------------------------------- loading


def test_loaded_bundle_has_the_spec_name_and_hash_label_without_a_registry_version(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)

    assert bundle.name == "plant-anomaly"
    assert bundle.version == ""
    content_hash = _expected_content_hash(bundle_dir)
    assert bundle.content_hash == content_hash
    assert re.fullmatch(r"[0-9a-f]{12}", content_hash[:12])
    assert bundle.model_version == f"plant-anomaly:{content_hash[:12]}"


def test_registry_version_labels_the_model_instead_of_the_hash(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir, version="42")

    assert bundle.version == "42"
    assert bundle.model_version == "plant-anomaly:42"


def test_manifest_version_is_used_when_no_registry_version_is_given_and_registry_wins_otherwise(
    spec: ModelSpec, train: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    root = fit_pca_bundle(spec, train[:200], tmp_path / "v3", version="3")

    assert load_bundle(root).model_version == "plant-anomaly:3"
    assert load_bundle(root, version="4").model_version == "plant-anomaly:4"


def test_loaded_bundle_carries_signature_spec_thresholds_and_metrics(
    bundle_dir: Path, spec: ModelSpec
) -> None:
    bundle = load_bundle(bundle_dir)

    assert bundle.spec == spec
    assert bundle.signature.features == spec.model_features
    assert len(spec.model_features) == 14
    assert bundle.signature.input.shape == [None, 14]
    assert bundle.signature.score_output.name == "score"
    assert set(bundle.thresholds.levels) == {"warning", "critical"}
    assert bundle.extras["metrics.json"]["rows"] == TRAIN_ROWS
    assert bundle.extras["metrics.json"]["n_components"] == N_COMPONENTS
    assert bundle.model_path == bundle_dir / MODEL_FILE


def test_content_hash_is_stable_across_loads(bundle_dir: Path) -> None:
    assert load_bundle(bundle_dir).content_hash == load_bundle(bundle_dir).content_hash


def test_content_hash_depends_on_content_not_on_write_time(
    spec: ModelSpec, train: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    first = fit_pca_bundle(spec, train[:300], tmp_path / "a")
    second = fit_pca_bundle(spec, train[:300], tmp_path / "b")

    assert load_bundle(first).content_hash == load_bundle(second).content_hash


def _change_model(path: Path) -> None:
    model = onnx.load_from_string(path.read_bytes())
    model.doc_string = "re-exported"
    path.write_bytes(model.SerializeToString())


def _change_json(path: Path) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4, sort_keys=True))


def _change_yaml(path: Path) -> None:
    path.write_text(path.read_text() + "# reviewed\n")


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("model.onnx", _change_model),
        ("signature.json", _change_json),
        ("spec.yaml", _change_yaml),
        ("thresholds.json", _change_json),
        ("metrics.json", _change_json),
    ],
)
def test_content_hash_changes_when_any_file_changes(
    copy: Path, bundle_dir: Path, name: str, change: Callable[[Path], None]
) -> None:
    before = load_bundle(bundle_dir)
    old_bytes = (copy / name).read_bytes()

    change(copy / name)
    _rehash(copy, name)
    after = load_bundle(copy)

    assert (copy / name).read_bytes() != old_bytes
    assert after.content_hash == _expected_content_hash(copy)
    assert after.content_hash != before.content_hash
    assert after.model_version != before.model_version


# ----------------------------------------------------------------------------- refusals


def test_flipped_byte_in_model_is_refused_as_hash_mismatch(copy: Path) -> None:
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))

    message = _refusal(copy)

    assert message.startswith("model.onnx")
    assert "does not match the manifest" in message


def test_tampered_thresholds_are_refused_as_hash_mismatch(copy: Path) -> None:
    path = copy / "thresholds.json"
    thresholds = json.loads(path.read_text())
    thresholds["levels"]["critical"] = thresholds["levels"]["critical"] * 100
    path.write_text(json.dumps(thresholds, indent=2))

    message = _refusal(copy)

    assert message.startswith("thresholds.json")
    assert "does not match the manifest" in message


@pytest.mark.parametrize("name", ["spec.yaml", "metrics.json"])
def test_file_listed_in_manifest_but_missing_is_refused(copy: Path, name: str) -> None:
    (copy / name).unlink()

    message = _refusal(copy)

    assert name in message
    assert "listed in MANIFEST.json but missing" in message


@pytest.mark.parametrize("name", ["model.onnx", "signature.json", "spec.yaml", "thresholds.json"])
def test_manifest_without_a_required_file_is_refused(copy: Path, name: str) -> None:
    _edit_manifest(copy, lambda m: m["files"].pop(name))

    message = _refusal(copy)

    assert "MANIFEST.json" in message
    assert "does not list required files" in message
    assert repr(name) in message


@pytest.mark.parametrize("unsafe", ["../spec.yaml", "../../etc/passwd", "sub/../spec.yaml", ".hidden"])
def test_manifest_path_escaping_the_bundle_is_refused_as_unsafe(copy: Path, unsafe: str) -> None:
    spec_hash = _sha256(copy / "spec.yaml")

    def edit(manifest: dict[str, Any]) -> None:
        manifest["files"][unsafe] = spec_hash

    _edit_manifest(copy, edit)

    message = _refusal(copy)

    assert "MANIFEST.json" in message
    assert "unsafe path" in message
    assert repr(unsafe) in message


def test_missing_manifest_is_refused(copy: Path) -> None:
    (copy / "MANIFEST.json").unlink()

    message = _refusal(copy)

    assert "no MANIFEST.json" in message


def test_signature_features_differing_from_the_spec_are_refused_even_with_correct_hashes(
    spec: ModelSpec, weights: PcaWeights, tmp_path: Path
) -> None:
    # Given a signature whose features are the spec's, two of them swapped: same width, so the graph
    # and the signature agree, and write_bundle records honest hashes for everything
    signature = pca_signature(spec, weights)
    swapped = list(signature.features)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    bad = Signature.model_validate({**signature.model_dump(), "features": swapped})
    scores = weights.score(np.zeros((1, len(swapped))))
    root = write_bundle(
        tmp_path / "b",
        model=pca_anomaly_onnx(weights),
        signature=bad,
        spec=spec,
        thresholds=_learned_thresholds(scores),
    )

    message = _refusal(root)

    assert message.startswith("signature.json")
    assert "do not match the spec's model features" in message


def test_graph_whose_input_width_disagrees_with_the_signature_is_refused(
    spec: ModelSpec, train: npt.NDArray[np.float64], weights: PcaWeights, tmp_path: Path
) -> None:
    narrow = fit_pca(train[:, :-1], N_COMPONENTS)  # 13 features; the signature declares 14
    root = write_bundle(
        tmp_path / "b",
        model=pca_anomaly_onnx(narrow),
        signature=pca_signature(spec, weights),
        spec=spec,
        thresholds=_learned_thresholds(weights.score(train)),
    )

    message = _refusal(root)

    assert message.startswith("model.onnx")
    assert "input shape" in message
    assert "14 features" in message


def test_graph_whose_output_is_not_in_the_signature_is_refused(
    spec: ModelSpec, train: npt.NDArray[np.float64], weights: PcaWeights, tmp_path: Path
) -> None:
    # Given a valid graph whose score output is called "anomaly" while the signature says "score"
    model = onnx.load_from_string(pca_anomaly_onnx(weights))
    for node in model.graph.node:
        node.output[:] = ["anomaly" if out == "score" else out for out in node.output]
    for output in model.graph.output:
        if output.name == "score":
            output.name = "anomaly"
    onnx.checker.check_model(model)
    root = write_bundle(
        tmp_path / "b",
        model=model.SerializeToString(),
        signature=pca_signature(spec, weights),
        spec=spec,
        thresholds=_learned_thresholds(weights.score(train)),
    )

    message = _refusal(root)

    assert "model.onnx" in message
    assert "'score'" in message
    assert "not produced" in message


def test_model_that_is_not_onnx_is_refused_even_with_correct_hashes(
    spec: ModelSpec, train: npt.NDArray[np.float64], weights: PcaWeights, tmp_path: Path
) -> None:
    garbage = np.random.default_rng(3).integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    root = write_bundle(
        tmp_path / "b",
        model=garbage,
        signature=pca_signature(spec, weights),
        spec=spec,
        thresholds=_learned_thresholds(weights.score(train)),
    )

    message = _refusal(root)

    assert "model.onnx cannot be loaded by onnxruntime" in message


# ----------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> ModelBundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def fresh(spec: ModelSpec) -> npt.NDArray[np.float64]:
    """1000 rows the model has not seen, the last 50 pushed well off the training manifold."""
    rows = _correlated_matrix(1000, len(spec.model_features), seed=2024)
    rows[-50:] += np.random.default_rng(5).normal(scale=30.0, size=(50, rows.shape[1]))
    return rows


def test_onnx_score_equals_the_numpy_float64_score(
    bundle: ModelBundle, weights: PcaWeights, fresh: npt.NDArray[np.float64]
) -> None:
    out = get_scorer(bundle).score(fresh)

    expected = weights.score(fresh)
    assert out.score.dtype == np.float64
    assert out.score.shape == (1000,)
    np.testing.assert_allclose(out.score, expected, rtol=1e-4)
    # the off-manifold rows really are the anomalous ones
    assert out.score[-50:].min() > np.median(out.score[:-50])


def test_contributions_are_per_feature_and_sum_to_the_score(
    bundle: ModelBundle, weights: PcaWeights, fresh: npt.NDArray[np.float64]
) -> None:
    out = get_scorer(bundle).score(fresh)

    assert out.contributions is not None
    assert out.contributions.shape == (1000, 14)
    assert (out.contributions >= 0).all()
    np.testing.assert_allclose(out.contributions.sum(axis=1), out.score, rtol=1e-5)
    z = (fresh - weights.mean) / weights.std
    residual = z - z @ weights.components @ weights.components.T
    np.testing.assert_allclose(out.contributions, residual**2, rtol=1e-3, atol=1e-4)
    assert set(out.raw) == {"score", "contributions"}


def test_whole_matrix_is_scored_in_one_session_run(
    bundle: ModelBundle, fresh: npt.NDArray[np.float64], monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = get_scorer(bundle)
    counting = CountingSession(scorer.session)
    monkeypatch.setattr(scorer, "session", counting)

    out = scorer.score(fresh)

    assert counting.calls == [1000]
    assert out.score.shape == (1000,)


def test_zero_rows_give_empty_arrays(bundle: ModelBundle) -> None:
    out = get_scorer(bundle).score(np.zeros((0, 14)))

    assert out.score.shape == (0,)
    assert out.contributions is not None
    assert out.contributions.shape == (0, 14)


@pytest.mark.parametrize("shape", [(5, 13), (5, 15), (14,), (2, 7, 2)])
def test_matrix_of_the_wrong_shape_is_rejected(bundle: ModelBundle, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="does not fit 14 features"):
        get_scorer(bundle).score(np.zeros(shape))


def test_scorer_is_cached_per_bundle_and_thread_count(bundle: ModelBundle, other_bundle_dir: Path) -> None:
    first = get_scorer(bundle, threads=1)
    again = get_scorer(load_bundle(bundle.path), threads=1)
    other = get_scorer(load_bundle(other_bundle_dir), threads=1)
    two_threads = get_scorer(bundle, threads=2)

    assert again is first
    assert other is not first
    assert other.session is not first.session
    assert two_threads is not first
    assert get_scorer(bundle, threads=2) is two_threads


def test_other_version_label_reuses_the_session_but_reports_its_label(bundle_dir: Path) -> None:
    unlabelled = load_bundle(bundle_dir)
    labelled = load_bundle(bundle_dir, version="2026.11")

    base = get_scorer(unlabelled)
    relabelled = get_scorer(labelled)

    assert relabelled.session is base.session
    assert relabelled.bundle.model_version == "plant-anomaly:2026.11"
    assert base.bundle.model_version == f"plant-anomaly:{unlabelled.content_hash[:12]}"
    np.testing.assert_array_equal(
        relabelled.score(np.ones((3, 14))).score, base.score(np.ones((3, 14))).score
    )


@pytest.mark.parametrize("threads", [1, 3])
def test_intra_op_thread_count_is_set_explicitly(bundle: ModelBundle, threads: int) -> None:
    scorer = get_scorer(bundle, threads=threads)

    assert scorer.session.get_session_options().intra_op_num_threads == threads


def test_scorer_rejects_a_thread_count_below_one(bundle: ModelBundle) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Scorer(bundle, threads=0)


# ----------------------------------------------------------------------------- learned thresholds & graph


def test_learned_thresholds_are_quantiles_of_the_training_scores(
    bundle: ModelBundle, train: npt.NDArray[np.float64]
) -> None:
    # Recompute the training scores independently: standardise, top-3 eigenvectors of the covariance
    x = np.asarray(train, dtype=np.float64)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    _, vectors = np.linalg.eigh(z.T @ z)
    top = vectors[:, ::-1][:, :N_COMPONENTS]
    residual = z - z @ top @ top.T
    scores = (residual**2).sum(axis=1)

    levels = bundle.thresholds.levels
    assert bundle.thresholds.direction == "above"
    assert levels["warning"] == pytest.approx(float(np.quantile(scores, 0.995)), rel=1e-9)
    assert levels["critical"] == pytest.approx(float(np.quantile(scores, 0.9995)), rel=1e-9)
    assert levels["warning"] < levels["critical"]
    assert [name for name, _ in bundle.thresholds.ordered()] == ["warning", "critical"]


def test_pca_anomaly_graph_passes_the_onnx_checker(weights: PcaWeights, bundle_dir: Path) -> None:
    model = onnx.load_from_string(pca_anomaly_onnx(weights))

    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["features"]
    assert [o.name for o in model.graph.output] == ["score", "contributions"]
    onnx.checker.check_model(onnx.load(str(bundle_dir / MODEL_FILE)), full_check=True)


def test_bundle_spec_is_json_read_without_a_yaml_parser(bundle_dir: Path, spec: ModelSpec) -> None:
    import subprocess
    import sys

    assert json.loads((bundle_dir / "spec.yaml").read_text()) == spec.model_dump(
        mode="json", exclude_none=True
    )
    code = (
        "import sys; from zaindari.bundle import load_bundle; "
        f"b = load_bundle({str(bundle_dir)!r}, verify_graph=False); print(b.spec.name, 'yaml' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [spec.name, "False"]


def test_spec_written_as_yaml_still_loads(spec: ModelSpec) -> None:
    assert load_spec(spec.to_yaml()) == spec
    assert load_spec(spec.to_json() + "\n# reviewed\n") == spec  # JSON with a YAML comment


def test_spec_with_an_infinite_bound_is_written_as_yaml_and_loads_unchanged(
    spec: ModelSpec, weights: PcaWeights, tmp_path: Path
) -> None:
    # JSON has no infinity (pydantic writes null): such a spec would come back changed, or refused
    sensors = [
        s.model_copy(update={"max": float("inf")}) if i == 0 else s for i, s in enumerate(spec.sensors)
    ]
    unbounded = spec.model_copy(update={"sensors": sensors})
    assert load_spec(unbounded.to_json()) != unbounded

    scores = weights.score(np.zeros((1, len(pca_signature(spec, weights).features))))
    root = write_bundle(
        tmp_path / "b",
        model=pca_anomaly_onnx(weights),
        signature=pca_signature(spec, weights),
        spec=unbounded,
        thresholds=_learned_thresholds(scores),
    )

    assert ".inf" in (root / "spec.yaml").read_text()
    assert load_bundle(root, verify_graph=False).spec == unbounded
