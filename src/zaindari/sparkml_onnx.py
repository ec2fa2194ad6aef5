"""Spark ML classifiers and regressors to ONNX with onnxmltools, shaped to the core's signature.

``onnxmltools.convert_sparkml`` converts the fitted model stage alone (no VectorAssembler): its
input is ``features`` (float32, ``[None, n]``, the spec's model features in order). Its stock
converters are used as they are for ``LogisticRegressionModel`` and ``LinearRegressionModel``.
For the tree ensembles (GBT and random forest, classifier and regressor) we pass our own
conversion functions to ``convert_sparkml`` (its ``custom_conversion_functions`` hook), because on
onnxmltools 1.16 with pyspark 4:

* the stock ``GBTRegressionModel`` converter returns the arg-max of ``[-F, F]`` (an int64 0/1)
  instead of the prediction ``F`` (onnx/onnxmltools#703);
* the stock tree converters save *every tree* through Spark to a local temporary folder and read
  it back (about 0.6 s per tree here), which on a cluster (YARN, Glue) the driver cannot read
  unless the master is ``spark://``.

* the stock tree converters round each split threshold to the *nearest* float32, so a float32
  input equal to a neighbouring training value can take the other branch than in Spark (seen
  here: a random-forest RUL off by 0.4 h on one row of 1,581).

Ours save the whole ensemble once, to a scratch location the caller chooses (a local folder, or
S3 on a cluster), store each threshold as the largest float32 not above Spark's (exact for float32
inputs; the training job rounds features to float32 before Spark sees them), and emit one
``TreeEnsembleRegressor`` node (ONNX-ML) per model. The graphs use
opset 15 (the highest the sparkml converters accept; onnxruntime 1.16 reads up to 19) and IR <= 9.

The exported graph's outputs: classification ``score`` (float32 ``[None]``, probability of
class 1), ``probability`` (float32 ``[None, 2]``) and ``label`` (int64 ``[None]``, Spark's own
decision); regression ``score`` (float32 ``[None]``, the prediction).
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["OPSET", "UnsupportedModel", "sparkml_to_onnx"]

OPSET = 15
IR_VERSION_MAX = 9

_ENSEMBLES = {
    "GBTClassificationModel": ("gbt", True),
    "GBTRegressionModel": ("gbt", False),
    "RandomForestClassificationModel": ("random_forest", True),
    "RandomForestRegressionModel": ("random_forest", False),
}
_LINEAR = {"LogisticRegressionModel": True, "LinearRegressionModel": False}


class UnsupportedModel(ValueError):
    """The fitted model cannot be exported (type, classes or categorical splits)."""


def _ensemble_tables(spark: Any, model: Any, scratch_dir: str) -> list[Any]:
    """The ensemble's nodes, one pandas frame per tree (sorted by node id), from one save."""
    path = f"{scratch_dir.rstrip('/')}/{type(model).__name__}-{uuid.uuid4().hex}"
    model.write().overwrite().save(path)
    nodes = (
        spark.read.parquet(f"{path}/data")
        .selectExpr(
            "treeID AS tree",
            "nodeData.id AS id",
            "nodeData.prediction AS prediction",
            "nodeData.impurityStats AS stats",
            "nodeData.leftChild AS left",
            "nodeData.rightChild AS right",
            "nodeData.split.featureIndex AS feature",
            "nodeData.split.leftCategoriesOrThreshold AS threshold",
            "nodeData.split.numCategories AS categories",
        )
        .toPandas()
    )
    _remove_scratch(spark, path)
    if (nodes["categories"] != -1).any():
        raise UnsupportedModel("categorical tree splits cannot be exported (features must be continuous)")
    return [group.sort_values("id") for _, group in nodes.groupby("tree", sort=True)]


def _remove_scratch(spark: Any, path: str) -> None:
    """Delete the saved copy through Hadoop's file system (local, HDFS or S3 alike)."""
    jvm = spark._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    hadoop_path.getFileSystem(spark._jsc.hadoopConfiguration()).delete(hadoop_path, True)


def _float32_at_or_below(threshold: float) -> float:
    """The largest float32 not above ``threshold``: for every float32 ``x``,
    ``x <= threshold`` exactly when ``x <= result``.

    ONNX stores split thresholds as float32; rounding Spark's double threshold to the *nearest*
    float32 can land on a data value (Spark's thresholds are midpoints between training values)
    and send that value down the other branch: a whole leaf of difference.
    """
    below = np.float32(threshold)
    if float(below) > threshold:
        below = np.nextafter(below, np.float32(-np.inf), dtype=np.float32)
    return float(below)


def _tree_attributes(trees: list[Any], leaf_values: Callable[[Any, int], list[float]]) -> dict[str, Any]:
    """TreeEnsembleRegressor attributes: Spark sends ``x <= threshold`` left (BRANCH_LEQ true)."""
    attrs: dict[str, list[Any]] = {
        key: []
        for key in (
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_modes",
            "nodes_values",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "nodes_missing_value_tracks_true",
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        )
    }
    for tree_id, tree in enumerate(trees):
        values = leaf_values(tree, tree_id)
        for row, value in zip(tree.itertuples(index=False), values, strict=True):
            leaf = row.left < 0
            attrs["nodes_treeids"].append(tree_id)
            attrs["nodes_nodeids"].append(int(row.id))
            attrs["nodes_featureids"].append(0 if leaf else int(row.feature))
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_values"].append(0.0 if leaf else _float32_at_or_below(float(row.threshold[0])))
            attrs["nodes_truenodeids"].append(0 if leaf else int(row.left))
            attrs["nodes_falsenodeids"].append(0 if leaf else int(row.right))
            attrs["nodes_missing_value_tracks_true"].append(0)
            if leaf:
                attrs["target_treeids"].append(tree_id)
                attrs["target_nodeids"].append(int(row.id))
                attrs["target_ids"].append(0)
                attrs["target_weights"].append(float(value))
    return {
        **attrs,
        "n_targets": 1,
        "aggregate_function": "SUM",
        "post_transform": "NONE",
        "base_values": [0.0],
    }


def _ensemble_converter(trees: list[Any]) -> Callable[[Any, Any, Any], None]:
    """An onnxmltools conversion function for one fitted tree ensemble (its trees pre-read)."""

    def convert(scope: Any, operator: Any, container: Any) -> None:
        model = operator.raw_operator
        kind, classifier = _ENSEMBLES[type(model).__name__]
        n_trees = len(trees)
        if kind == "gbt":
            weights = [float(w) for w in model.treeWeights]

            def leaf_values(tree: Any, tree_id: int) -> list[float]:
                return [float(p) * weights[tree_id] for p in tree["prediction"]]

        elif classifier:

            def leaf_values(tree: Any, tree_id: int) -> list[float]:
                out = []
                for stats in tree["stats"]:
                    total = float(np.sum(stats))
                    out.append(float(stats[1]) / total / n_trees if total else 0.0)
                return out

        else:

            def leaf_values(tree: Any, tree_id: int) -> list[float]:
                return [float(p) / n_trees for p in tree["prediction"]]

        ensemble = scope.get_unique_variable_name("ensemble")
        container.add_node(
            "TreeEnsembleRegressor",
            operator.input_full_names,
            ensemble if classifier else operator.outputs[0].full_name,
            op_domain="ai.onnx.ml",
            name=scope.get_unique_operator_name("TreeEnsembleRegressor"),
            **_tree_attributes(trees, leaf_values),
        )
        if not classifier:
            return

        def const(name: str, value: float) -> str:
            unique: str = scope.get_unique_variable_name(name)
            container.add_initializer(unique, 1, [1], [value])  # 1 = TensorProto.FLOAT
            return unique

        def node(op: str, inputs: list[str], **attrs: Any) -> str:
            out: str = scope.get_unique_variable_name(op.lower())
            container.add_node(op, inputs, out, name=scope.get_unique_operator_name(op), **attrs)
            return out

        if kind == "gbt":  # Spark: p1 = 1 / (1 + exp(-2 F)); class 1 when F > 0
            p1 = node("Sigmoid", [node("Mul", [ensemble, const("two", 2.0)])])
            decide = node("Greater", [ensemble, const("zero", 0.0)])
        else:  # Spark: p1 = mean over trees of the leaf's class-1 share; class 1 when p1 > p0
            p1 = ensemble
            decide = node("Greater", [p1, const("half", 0.5)])
        p0 = node("Sub", [const("one", 1.0), p1])
        container.add_node(
            "Concat",
            [p0, p1],
            operator.outputs[1].full_name,
            name=scope.get_unique_operator_name("Concat"),
            axis=1,
        )
        flat = node("Reshape", [decide, _int64_const(scope, container, "flat", [-1])])
        container.add_node(
            "Cast",
            flat,
            operator.outputs[0].full_name,
            name=scope.get_unique_operator_name("Cast"),
            to=7,  # TensorProto.INT64
        )

    return convert


def _int64_const(scope: Any, container: Any, name: str, values: list[int]) -> str:
    unique: str = scope.get_unique_variable_name(name)
    container.add_initializer(unique, 7, [len(values)], values)  # 7 = TensorProto.INT64
    return unique


def _regressor_shape(operator: Any) -> None:
    from onnxmltools.convert.common.data_types import FloatTensorType

    operator.outputs[0].type = FloatTensorType([operator.inputs[0].type.shape[0], 1])


def sparkml_to_onnx(model: Any, n_features: int, *, spark: Any, scratch_dir: str) -> bytes:
    """Convert a fitted Spark ML classifier or regressor (the model stage alone) to ONNX bytes.

    Parameters
    ----------
    model
        A fitted ``GBT*``, ``RandomForest*``, ``LogisticRegressionModel`` (binary) or
        ``LinearRegressionModel``, trained on a ``features`` vector of ``n_features`` doubles.
    n_features
        Width of the input.
    spark
        The active session (tree ensembles are saved and read back through it).
    scratch_dir
        Where a tree ensemble may be saved for reading (local folder, ``hdfs://`` or ``s3://``
        on a cluster); the copy is deleted afterwards.

    Returns
    -------
    bytes
        The serialized graph: input ``features``; outputs as in the module docstring.

    Raises
    ------
    UnsupportedModel
        For another model type, a multi-class classifier or categorical splits.
    """
    from onnxmltools import convert_sparkml
    from onnxmltools.convert.common.data_types import FloatTensorType

    name = type(model).__name__
    if name in _ENSEMBLES:
        classifier = _ENSEMBLES[name][1]
    elif name in _LINEAR:
        classifier = _LINEAR[name]
    else:
        raise UnsupportedModel(f"cannot export a {name} to ONNX")
    if classifier and int(model.numClasses) != 2:
        raise UnsupportedModel(
            f"only binary classifiers are exported; this one has {model.numClasses} classes"
        )
    operator = f"pyspark.ml.{'classification' if classifier else 'regression'}.{name}"
    converters: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    if name in _ENSEMBLES:
        converters[operator] = _ensemble_converter(_ensemble_tables(spark, model, scratch_dir))
        if not classifier:
            shapes[operator] = _regressor_shape
    with contextlib.redirect_stdout(io.StringIO()):  # the linear classifier converter pprints its attributes
        proto = convert_sparkml(
            model,
            "zaindari",
            [("features", FloatTensorType([None, n_features]))],
            spark_session=spark,
            target_opset=OPSET,
            custom_conversion_functions=converters,
            custom_shape_calculators=shapes,
        )
    return _signature_outputs(proto, classifier)


def _signature_outputs(proto: Any, classifier: bool) -> bytes:
    """Rename and add outputs so the graph returns ``score`` (and ``probability``, ``label``)."""
    from onnx import TensorProto, checker, helper, numpy_helper

    graph = proto.graph
    produced = {o.name: o for o in graph.output}
    if classifier:
        if "probability" not in produced or "prediction" not in produced:
            raise UnsupportedModel(f"the converted classifier has outputs {sorted(produced)}")
        graph.initializer.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "class_one"))
        graph.node.extend(
            [
                helper.make_node("Gather", ["probability", "class_one"], ["score"], axis=1),
                helper.make_node("Cast", ["prediction"], ["label"], to=TensorProto.INT64),
            ]
        )
        outputs = [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
        ]
    else:
        (only,) = produced
        graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape"))
        graph.node.append(helper.make_node("Reshape", [only, "flat_shape"], ["score"]))
        outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])]
    del graph.output[:]
    graph.output.extend(outputs)
    if not any(o.domain in ("", "ai.onnx") for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("", OPSET))
    proto.ir_version = min(int(proto.ir_version), IR_VERSION_MAX)
    checker.check_model(proto)
    return bytes(proto.SerializeToString())
