"""Model bundles: the files a trained model travels as, verified before anything runs them.

A bundle is a folder (or an S3 prefix copied to one) holding ``model.onnx``, ``signature.json``,
``spec.yaml`` (written as JSON, which is YAML, unless the spec has an infinite bound), ``thresholds.json``, optionally ``metrics.json``,
``lineage.json`` and ``baseline.json``, and ``MANIFEST.json`` with the sha256 of every other file. :func:`load_bundle`
refuses a bundle whose hashes do not match, whose signature disagrees with its spec, or whose ONNX
graph disagrees with its signature. Models are ONNX only: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from zaindari.spec import ModelSpec, Severity, SpecError, load_spec
from zaindari.validation import CachedModel

__all__ = [
    "MODEL_FILE",
    "BundleError",
    "FeatureStats",
    "LearnedThresholds",
    "Manifest",
    "ModelBundle",
    "OutputSpec",
    "Signature",
    "TensorSpec",
    "load_bundle",
    "sha256_file",
    "write_bundle",
]

MODEL_FILE = "model.onnx"
SIGNATURE_FILE = "signature.json"
SPEC_FILE = "spec.yaml"
THRESHOLDS_FILE = "thresholds.json"
MANIFEST_FILE = "MANIFEST.json"
REQUIRED_FILES = (MODEL_FILE, SIGNATURE_FILE, SPEC_FILE, THRESHOLDS_FILE)
OPTIONAL_JSON = ("metrics.json", "lineage.json", "baseline.json", "parity.json")

DType = Literal["float32", "float64", "int64"]


class BundleError(ValueError):
    """A bundle is incomplete, tampered with, or inconsistent; the message says which file and why."""


class _Strict(CachedModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Strict):
    """One ONNX input: name, element type and shape (``None`` for the batch dimension)."""

    name: str
    dtype: DType = "float32"
    shape: list[int | None]


class OutputSpec(TensorSpec):
    """One ONNX output and what it means.

    ``role`` tells the core how to use it: ``score`` (compared with the learned thresholds),
    ``contributions`` (rows x features, larger = more responsible, used in alert explanations),
    ``label`` or ``probability`` (classification), ``other``.
    """

    role: Literal["score", "contributions", "label", "probability", "prediction", "other"] = "other"
    meaning: str = ""


class FeatureStats(_Strict):
    """Training mean and standard deviation per feature, in signature order (for explanations)."""

    mean: list[float]
    std: list[float]


class Signature(_Strict):
    """What the ONNX graph takes and returns, and which feature each input column is."""

    inputs: list[TensorSpec] = Field(min_length=1, max_length=1)
    features: list[str] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    feature_stats: FeatureStats | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Signature:
        shape = self.inputs[0].shape
        if len(shape) != 2 or shape[1] != len(self.features):
            raise ValueError(f"input shape {shape} does not fit {len(self.features)} features")
        if [o.role for o in self.outputs].count("score") != 1:
            raise ValueError("exactly one output must have role 'score'")
        if self.feature_stats and not (
            len(self.feature_stats.mean) == len(self.feature_stats.std) == len(self.features)
        ):
            raise ValueError("feature_stats must have one mean and one std per feature")
        return self

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def score_output(self) -> OutputSpec:
        return next(o for o in self.outputs if o.role == "score")

    def output(self, role: str) -> OutputSpec | None:
        return next((o for o in self.outputs if o.role == role), None)


class LearnedThresholds(_Strict):
    """Alert levels on the model's score, learned from data by the training job.

    ``levels`` maps a severity to the score at which it starts; with ``direction`` ``below``
    (for example a predicted remaining useful life) low scores are the alarming ones.
    """

    levels: dict[Severity, float] = Field(min_length=1)
    direction: Literal["above", "below"] = "above"
    method: str = ""

    def ordered(self) -> list[tuple[str, float]]:
        """Levels from least to most severe."""
        from zaindari.spec import SEVERITY_RANK

        return sorted(self.levels.items(), key=lambda kv: SEVERITY_RANK[kv[0]])


class Manifest(_Strict):
    """The bundle's table of contents: sha256 of every file, and where the bundle comes from."""

    format_version: Literal[1] = 1
    model_name: str
    files: dict[str, str]
    created_at: str
    version: str | None = None

    @cached_property
    def content_hash(self) -> str:
        """One hash for the whole bundle: sha256 over the sorted file hashes (worked out once: a
        frozen model; every scoring call asks for it)."""
        digest = hashlib.sha256()
        for name in sorted(self.files):
            digest.update(f"{name}={self.files[name]}\n".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class ModelBundle:
    """A verified bundle, ready for :class:`zaindari.scoring.Scorer`."""

    path: Path
    manifest: Manifest
    spec: ModelSpec
    signature: Signature
    thresholds: LearnedThresholds
    extras: dict[str, Any] = field(default_factory=dict)
    version: str = ""

    @property
    def name(self) -> str:
        return self.manifest.model_name

    @property
    def content_hash(self) -> str:
        return self.manifest.content_hash

    @property
    def model_version(self) -> str:
        """``name:version`` (the registry's version, else the first 12 hex digits of the content hash)."""
        return f"{self.name}:{self.version or self.content_hash[:12]}"

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path.name}: cannot be read as JSON: {exc}") from exc


def load_bundle(path: str | Path, *, version: str | None = None, verify_graph: bool = True) -> ModelBundle:
    """Load and verify a bundle folder.

    Parameters
    ----------
    path
        The bundle folder.
    version
        The registry version to label scores with (``MANIFEST.json``'s, if absent).
    verify_graph
        Also open ``model.onnx`` in onnxruntime and check it against the signature.

    Raises
    ------
    BundleError
        On a missing file, a hash mismatch, an invalid signature or spec, or a graph that
        disagrees with the signature.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{root}: no {MANIFEST_FILE}; not a model bundle")
    try:
        manifest = Manifest.model_validate(_read_json(manifest_path))
    except ValidationError as exc:
        raise BundleError(f"{MANIFEST_FILE}: invalid: {exc.errors(include_url=False)}") from exc
    missing = [f for f in REQUIRED_FILES if f not in manifest.files]
    if missing:
        raise BundleError(f"{MANIFEST_FILE} does not list required files {missing}")
    for name, expected in manifest.files.items():
        if "/" in name or name.startswith("."):
            raise BundleError(f"{MANIFEST_FILE} lists an unsafe path {name!r}")
        file = root / name
        if not file.is_file():
            raise BundleError(f"{name}: listed in {MANIFEST_FILE} but missing")
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(
                f"{name}: sha256 {actual[:16]}... does not match the manifest's {expected[:16]}..."
            )

    try:
        spec = load_spec((root / SPEC_FILE).read_text())
    except SpecError as exc:
        raise BundleError(f"{SPEC_FILE}: {exc}") from exc
    try:
        signature = Signature.model_validate(_read_json(root / SIGNATURE_FILE))
        thresholds = LearnedThresholds.model_validate(_read_json(root / THRESHOLDS_FILE))
    except ValidationError as exc:
        raise BundleError(f"signature or thresholds invalid: {exc.errors(include_url=False)}") from exc
    if signature.features != spec.model_features:
        raise BundleError(
            f"{SIGNATURE_FILE} features {signature.features} do not match the spec's model features "
            f"{spec.model_features}"
        )
    extras = {name: _read_json(root / name) for name in OPTIONAL_JSON if name in manifest.files}
    bundle = ModelBundle(
        path=root,
        manifest=manifest,
        spec=spec,
        signature=signature,
        thresholds=thresholds,
        extras=extras,
        version=version or manifest.version or "",
    )
    if verify_graph:
        from zaindari.scoring import check_graph

        check_graph(bundle)
    return bundle


def write_bundle(
    out_dir: str | Path,
    *,
    model: bytes,
    signature: Signature,
    spec: ModelSpec,
    thresholds: LearnedThresholds,
    extras: dict[str, Any] | None = None,
    version: str | None = None,
) -> Path:
    """Write a bundle folder with its ``MANIFEST.json``; returns the folder."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / MODEL_FILE).write_bytes(model)
    (root / SIGNATURE_FILE).write_text(signature.model_dump_json(indent=2))
    (root / SPEC_FILE).write_text(spec.to_bundle_text())  # JSON (which is YAML) when it can say the same
    (root / THRESHOLDS_FILE).write_text(thresholds.model_dump_json(indent=2))
    for name, data in (extras or {}).items():
        if name not in OPTIONAL_JSON:
            raise BundleError(f"unknown bundle file {name!r}; expected one of {OPTIONAL_JSON}")
        (root / name).write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    files = {
        p.name: sha256_file(p)
        for p in sorted(root.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE and (p.name in REQUIRED_FILES or p.name in OPTIONAL_JSON)
    }
    manifest = Manifest(
        model_name=spec.name,
        files=files,
        created_at=datetime.now(UTC).isoformat(),
        version=version,
    )
    (root / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return root
