"""PCA reconstruction-error anomaly model as an ONNX graph, and a numpy fit of it.

The graph standardises the features, projects them on ``k`` principal components, reconstructs,
and returns the squared residual per feature (``contributions``) and its sum (``score``). The Spark
training job fits the same model at scale and writes its weights with :func:`pca_anomaly_onnx`;
:func:`fit_pca_bundle` fits it with numpy for small data (tests, a first model before any training
run). Needs the ``onnx`` package (a training-side dependency, not a scoring one).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from zaindari.bundle import (
    FeatureStats,
    LearnedThresholds,
    OutputSpec,
    Signature,
    TensorSpec,
    write_bundle,
)
from zaindari.spec import ModelSpec

__all__ = ["PcaWeights", "fit_pca", "fit_pca_bundle", "pca_anomaly_onnx", "pca_signature"]

OPSET = 17
MIN_STD = 1e-6


class PcaWeights:
    """Standardisation and principal components (features x k)."""

    def __init__(self, mean: npt.ArrayLike, std: npt.ArrayLike, components: npt.ArrayLike) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.maximum(np.asarray(std, dtype=np.float64), MIN_STD)
        self.components = np.asarray(components, dtype=np.float64)
        if self.components.shape[0] != self.mean.shape[0]:
            raise ValueError("components must be features x k")

    def score(self, matrix: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """The same score the graph computes, in float64 numpy (for checks)."""
        z = (np.asarray(matrix, dtype=np.float64) - self.mean) / self.std
        residual = z - z @ self.components @ self.components.T
        return np.asarray((residual * residual).sum(axis=1))


def fit_pca(matrix: npt.NDArray[Any], n_components: int) -> PcaWeights:
    """Fit standardisation + PCA on ``matrix`` (rows x features) with an SVD."""
    x = np.asarray(matrix, dtype=np.float64)
    if x.shape[0] < 2:
        raise ValueError("need at least two rows to fit")
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), MIN_STD)
    z = (x - mean) / std
    k = max(1, min(n_components, x.shape[1] - 1))
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    return PcaWeights(mean, std, vt[:k].T)


def pca_anomaly_onnx(
    weights: PcaWeights,
    input_name: str = "features",
    *,
    compute_dtype: Literal["float32", "float64"] = "float32",
) -> bytes:
    """The ONNX graph (float32 in, ``score`` and ``contributions`` out) for ``weights``.

    With ``compute_dtype="float64"`` the graph casts its input to double, computes in double and
    returns double outputs: the Spark training job uses it so the exported score equals Spark's
    to ~1e-12 even for large scores (float32 holds a score of 1,000 only to ~6e-5).
    """
    from onnx import TensorProto, helper, numpy_helper

    n_features = weights.mean.shape[0]
    wide = compute_dtype == "float64"
    f32 = np.float64 if wide else np.float32
    out_type = TensorProto.DOUBLE if wide else TensorProto.FLOAT
    initializers = [
        numpy_helper.from_array(weights.mean.astype(f32), "mean"),
        numpy_helper.from_array(weights.std.astype(f32), "std"),
        numpy_helper.from_array(weights.components.astype(f32), "components"),
        numpy_helper.from_array(np.ascontiguousarray(weights.components.T).astype(f32), "components_t"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    cast = [helper.make_node("Cast", [input_name], ["features_wide"], to=TensorProto.DOUBLE)] if wide else []
    first = "features_wide" if wide else input_name
    nodes = [
        *cast,
        helper.make_node("Sub", [first, "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["z"]),
        helper.make_node("MatMul", ["z", "components"], ["projection"]),
        helper.make_node("MatMul", ["projection", "components_t"], ["reconstruction"]),
        helper.make_node("Sub", ["z", "reconstruction"], ["residual"]),
        helper.make_node("Mul", ["residual", "residual"], ["contributions"]),
        helper.make_node("ReduceSum", ["contributions", "axis1"], ["score"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "zaindari_pca_anomaly",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
        [
            helper.make_tensor_value_info("score", out_type, [None]),
            helper.make_tensor_value_info("contributions", out_type, [None, n_features]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="zaindari")
    model.ir_version = 9
    return bytes(model.SerializeToString())


def pca_signature(
    spec: ModelSpec,
    weights: PcaWeights,
    input_name: str = "features",
    *,
    output_dtype: Literal["float32", "float64"] = "float32",
) -> Signature:
    """The signature of :func:`pca_anomaly_onnx`'s graph (``output_dtype`` = its ``compute_dtype``)."""
    features = spec.model_features
    return Signature(
        inputs=[TensorSpec(name=input_name, dtype="float32", shape=[None, len(features)])],
        features=features,
        outputs=[
            OutputSpec(
                name="score",
                dtype=output_dtype,
                shape=[None],
                role="score",
                meaning="PCA reconstruction error of the standardised features (higher = more abnormal)",
            ),
            OutputSpec(
                name="contributions",
                dtype=output_dtype,
                shape=[None, len(features)],
                role="contributions",
                meaning="squared standardised residual per feature; sums to the score",
            ),
        ],
        feature_stats=FeatureStats(mean=weights.mean.tolist(), std=weights.std.tolist()),
    )


def fit_pca_bundle(
    spec: ModelSpec,
    matrix: npt.NDArray[Any],
    out_dir: str | Path,
    *,
    n_components: int = 3,
    quantiles: Mapping[str, float] | None = None,
    extras: dict[str, Any] | None = None,
    version: str | None = None,
) -> Path:
    """Fit the PCA anomaly model on ``matrix`` (the spec's model features) and write a bundle.

    Learned thresholds are quantiles of the training scores (``warning`` at 0.995 and
    ``critical`` at 0.9995 unless given).
    """
    weights = fit_pca(matrix, n_components)
    scores = weights.score(matrix)
    quantiles = dict(quantiles or {"warning": 0.995, "critical": 0.9995})
    levels = {level: float(np.quantile(scores, q)) for level, q in quantiles.items()}
    thresholds = LearnedThresholds.model_validate(
        {
            "levels": levels,
            "direction": "above",
            "method": "quantiles of the training score: "
            + ", ".join(f"{k}={v}" for k, v in quantiles.items()),
        }
    )
    metrics = {
        "task": "anomaly",
        "rows": int(matrix.shape[0]),
        "n_components": int(weights.components.shape[1]),
        "score_quantiles": {str(q): float(np.quantile(scores, q)) for q in (0.5, 0.9, 0.99, 0.999)},
    }
    from zaindari.drift import BASELINE_FILE, compute_baseline

    baseline = compute_baseline(
        spec, spec.model_features, matrix, scores, thresholds, source=f"{matrix.shape[0]} training rows"
    )
    all_extras = {"metrics.json": metrics, BASELINE_FILE: baseline.model_dump(mode="json"), **(extras or {})}
    return write_bundle(
        out_dir,
        model=pca_anomaly_onnx(weights),
        signature=pca_signature(spec, weights),
        spec=spec,
        thresholds=thresholds,
        extras=all_extras,
        version=version,
    )
