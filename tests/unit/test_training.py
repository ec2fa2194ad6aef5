"""Training on local Spark: each task trains on a simulated plant, exports ONNX, passes parity,
beats a trivial baseline, and its bundle scores through the core; bad inputs write no model."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from zaindari.bundle import load_bundle
from zaindari.scoring import get_scorer
from zaindari.spec import ModelSpec, load_spec
from zaindari.training import (
    TrainingError,
    assign_held_out,
    roc_auc,
    threshold_for_precision,
)

pytestmark = pytest.mark.spark

DATA = Path(__file__).resolve().parents[2] / "src" / "zaindari" / "data"
JOB = Path(__file__).resolve().parents[2] / "glue_jobs" / "train_model.py"


def _plant(seed: int, days: float) -> Any:
    from zaindari.simulate import PlantConfig, simulate_plant

    # 12 machines, 9 of them fail after a slowly developing fault (48 to 72 h of warning);
    # every machine wears. 10-minute samples keep the table small (10,368 rows over 6 days).
    config = PlantConfig(
        seed=seed,
        lines=3,
        machines_per_line=4,
        duration=timedelta(days=days),
        sample_period_seconds=600.0,
        auto_faults=9,
        fault_lead_hours=(48.0, 72.0),
    )
    return simulate_plant(config)


def _spec(name: str, **changes: Any) -> ModelSpec:
    data = yaml.safe_load((DATA / f"{name}.yaml").read_text())
    for key, value in changes.items():
        data[key] = value
    return load_spec(data)


def _write_spec(spec: ModelSpec, folder: Path) -> Path:
    path = folder / f"{spec.name}.yaml"
    path.write_text(spec.to_yaml())
    return path


def _load_job() -> Any:
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("train_model_job", JOB)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = _plant(seed=3, days=6)
    frame = data.historian_frame(ground_truth=True)
    frame["abnormal"] = frame["in_fault"] | frame["failed"]
    folder = tmp_path_factory.mktemp("plant")
    raw = folder / "raw"
    raw.mkdir()
    frame.to_parquet(raw / "part-0.parquet", index=False)
    return {"data": data, "frame": frame, "raw": raw, "folder": folder}


ANOMALY = {"label": {"column": "abnormal"}, "training": {"components": [2, 3, 4, 5, 6]}}


@pytest.fixture(scope="module")
def anomaly_bundle(spark: Any, plant: dict[str, Any]) -> Path:
    """The anomaly model trained by the job itself (main with arguments, as on EMR or locally)."""
    spec = _spec("plant_anomaly", **ANOMALY)
    out = plant["folder"] / "bundles" / "anomaly"
    code = _load_job().main(
        [
            "--master",
            "local[2]",
            "--spec",
            str(_write_spec(spec, plant["folder"])),
            "--input",
            str(plant["raw"]),
            "--output",
            str(out),
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def failure_model(spark: Any, plant: dict[str, Any]) -> Any:
    """Classification from a curated training set (features computed beforehand)."""
    from zaindari.features_spark import add_features
    from zaindari.training import publish_bundle, train_model

    spec = _spec(
        "plant_failure",
        training={
            "models": {
                "random_forest": {"numTrees": [20], "maxDepth": [5]},
                "logistic_regression": {"regParam": [0.01]},
            }
        },
    )
    curated = plant["folder"] / "curated"
    add_features(spark.read.parquet(str(plant["raw"])), spec).write.parquet(str(curated))
    trained = train_model(spark, spec, str(curated))
    bundle = publish_bundle(trained, str(plant["folder"] / "bundles" / "failure"))
    return trained, Path(bundle)


@pytest.fixture(scope="module")
def rul_model(spark: Any, plant: dict[str, Any]) -> Any:
    from zaindari.training import publish_bundle, train_model

    spec = _spec("plant_rul", training={"models": {"random_forest": {"numTrees": [20], "maxDepth": [6]}}})
    trained = train_model(spark, spec, str(plant["raw"]))
    bundle = publish_bundle(trained, str(plant["folder"] / "bundles" / "rul"))
    return trained, Path(bundle)


# ----------------------------------------------------------------------------- pure functions


def test_held_out_assets_are_stratified_deterministic_and_never_all_or_none() -> None:
    assets = [(f"a{i}", i < 4) for i in range(12)]
    held = assign_held_out(assets, 0.25, seed=1)
    assert held == assign_held_out(assets, 0.25, seed=1)
    assert len(held & {f"a{i}" for i in range(4)}) == 1  # round(0.25 * 4) failing assets
    assert len(held - {f"a{i}" for i in range(4)}) == 2  # round(0.25 * 8) healthy assets
    assert assign_held_out(assets, 0.25, seed=2) != held
    assert len(assign_held_out([("x", True), ("y", True)], 0.01, seed=0)) == 1
    assert len(assign_held_out([("x", False), ("y", False)], 0.99, seed=0)) == 1
    with pytest.raises(TrainingError, match="at least two assets"):
        assign_held_out([("x", True)], 0.5, seed=0)


def test_threshold_is_the_lowest_reaching_the_target_precision() -> None:
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    # flagged at >= 0.6: 3 of 4 right (0.75); at >= 0.3: 4 of 7
    assert threshold_for_precision(labels, scores, 0.75) == (0.6, 0.75)
    assert threshold_for_precision(labels, scores, 1.0) == (0.8, 1.0)
    assert threshold_for_precision(np.zeros(3), scores[:3], 0.5) is None
    assert roc_auc(labels, scores) == pytest.approx(12 / 16)  # pairs ranked right
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([1, 1], [0.1, 0.2]) is None


# ----------------------------------------------------------------------------- the three tasks


def test_anomaly_job_writes_a_verified_bundle_with_parity_and_lineage(anomaly_bundle: Path) -> None:
    bundle = load_bundle(anomaly_bundle)
    parity = bundle.extras["parity.json"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and parity["rows_compared"] > 1000
    lineage = bundle.extras["lineage.json"]
    assets = lineage["data"]["assets"]
    assert not set(assets["train"]) & set(assets["held_out"])
    assert len(assets["train"]) + len(assets["held_out"]) == 12
    assert len(lineage["data"]["content_hash"]) == 64 and lineage["data"]["rows_read"] == 10_368
    assert lineage["spark"]["version"] and lineage["code"]["package"] == "zaindari"
    assert lineage["started_at"] <= lineage["ended_at"]
    metrics = bundle.extras["metrics.json"]
    assert metrics["rows"]["trained_on"] == 10_368 and metrics["rows"]["rejected"] == 0
    healthy, abnormal = metrics["healthy_score_quantiles"], metrics["abnormal_score_quantiles"]
    assert abnormal["0.5"] > 5 * healthy["0.5"]
    assert metrics["auc"] > 0.85
    assert set(bundle.thresholds.levels) == {"warning", "critical"}
    assert bundle.thresholds.direction == "above"
    manifest = json.loads((anomaly_bundle / "MANIFEST.json").read_text())
    assert {"model.onnx", "parity.json", "lineage.json", "metrics.json", "baseline.json"} <= set(
        manifest["files"]
    )
    # the drift baseline: the held-out rows' features and scores on decile bins
    from zaindari.drift import baseline_of

    baseline = baseline_of(bundle)
    assert baseline is not None and baseline.features == bundle.signature.features
    assert baseline.rows == metrics["rows"]["held_out_rows"]
    assert all(sum(c) == baseline.rows and len(c) <= 10 for c in baseline.counts)


def test_anomaly_bundle_flags_the_last_hour_before_failures_on_a_new_plant(anomaly_bundle: Path) -> None:
    """Scored by the core use case (score_readings) on a plant the model never saw."""
    from zaindari.contract import parse_readings
    from zaindari.features import SensorTable, compute_features
    from zaindari.pipeline import score_readings

    bundle = load_bundle(anomaly_bundle)
    new = _plant(seed=6, days=5)  # 3 bearing, 3 cooling and 3 seal-leak faults
    parsed = parse_readings(list(new.readings()))
    assert not parsed.rejections
    outcome = score_readings(bundle, parsed.readings)
    scores = np.array([row["score"] for row in outcome.scored])
    assert len(scores) == len(new.frame)

    # the same scores as the bundle's own scorer on the core's features
    table = SensorTable.from_readings(parsed.readings, bundle.spec.sensor_names)
    features = compute_features(bundle.spec, table)
    direct = get_scorer(bundle).score(features.matrix(bundle.spec.model_features)).score
    np.testing.assert_allclose(scores, direct, rtol=0, atol=0)

    truth = new.frame
    warning = bundle.thresholds.levels["warning"]
    flagged = scores >= warning
    healthy = ~(truth["in_fault"] | truth["failed"]).to_numpy()
    assert flagged[healthy].mean() < 0.02
    assert scores[~healthy].mean() > 10 * scores[healthy].mean()
    last_hour = (truth["in_fault"] & (truth["rul_hours"] <= 1.0)).to_numpy()
    for kind in ("bearing", "cooling"):
        rows = last_hour & (truth["fault_kind"] == kind).to_numpy()
        assert rows.sum() >= 15
        assert flagged[rows].mean() >= 0.9, kind
    # Honest limit: a seal leak (pressure down, current up a little) looks like another operating
    # mode to one linear PCA over presses and spindles together, so this model misses most of
    # them; the supervised models (failure within 24 h, remaining life) do learn them.


def test_classification_beats_the_positive_rate_baseline_and_its_onnx_matches_spark(
    failure_model: Any, spark: Any
) -> None:
    trained, path = failure_model
    metrics = trained.metrics
    assert trained.lineage["data"]["curated_training_set"] is True
    assert metrics["auc"] >= 0.9
    learned = metrics["at_learned_threshold"]
    assert learned["f1"] >= 3 * metrics["baseline"]["f1_always_positive"]
    assert learned["precision"] >= 0.8 and metrics["target_precision_reached"]
    assert {s["model"] for s in trained.fitted.search} == {"random_forest", "logistic_regression"}
    assert len(trained.fitted.search) == 2
    assert trained.parity["max_abs_diff"] <= 1e-4
    rows = metrics["rows"]
    assert rows["failure_rows_excluded"] > 0 and rows["label_unknown_excluded"] > 0
    assert rows["trained_on"] == rows["train_rows"] + rows["held_out_rows"]

    # held-out rows come from held-out assets only, and the bundle scores them as Spark did
    held = set(trained.held_out_assets)
    sample = trained.fitted.scored_validation.limit(500).toPandas()
    assert set(sample["_asset_key"]) <= held and not held & set(trained.train_assets)
    bundle = load_bundle(path)
    outputs = get_scorer(bundle).score(np.stack(sample["features"].map(lambda v: v.toArray())))
    np.testing.assert_allclose(outputs.score, sample["_score"], atol=1e-4)
    assert outputs.raw["label"].dtype == np.int64 and outputs.raw["probability"].shape == (500, 2)
    assert bundle.thresholds.direction == "above" and bundle.thresholds.levels["warning"] > 0


def test_regression_rmse_is_well_below_predicting_the_training_mean(rul_model: Any) -> None:
    trained, path = rul_model
    metrics = trained.metrics
    assert metrics["model"] == "random_forest"
    assert metrics["rmse"] <= 0.6 * metrics["baseline"]["rmse"]
    assert metrics["mae"] < metrics["baseline"]["mae"]
    assert trained.parity["max_abs_diff"] <= 1e-4
    bundle = load_bundle(path)
    assert bundle.thresholds.direction == "below"
    assert bundle.thresholds.levels == {"warning": 48.0, "critical": 12.0}
    assert bundle.signature.score_output.meaning.startswith("predicted remaining useful life")
    labels = trained.fitted.validation["_label"]
    assert labels.max() == 72.0 and labels.min() >= 0


def test_cross_validation_search_uses_asset_folds(spark: Any, plant: dict[str, Any]) -> None:
    from zaindari.training import train_model

    spec = _spec(
        "plant_rul",
        training={
            "search": {"method": "cross_validation", "folds": 2},
            "models": {"linear_regression": {"regParam": [0.0, 1.0]}},
        },
    )
    trained = train_model(spark, spec, str(plant["raw"]))
    assert [s["params"]["regParam"] for s in trained.fitted.search] == [0.0, 1.0]
    assert all(s["metric"] == "rmse" and s["value"] > 0 for s in trained.fitted.search)
    assert trained.metrics["rmse"] < trained.metrics["baseline"]["rmse"]


def test_every_supported_spark_model_exports_to_onnx_with_spark_s_predictions(
    spark: Any, tmp_path: Path
) -> None:
    """Including GBTRegressor, whose stock onnxmltools converter returns an int64 0/1 (#703)."""
    import onnxruntime as ort
    from pyspark.ml.classification import GBTClassifier, LogisticRegression, RandomForestClassifier
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import Vectors
    from pyspark.ml.regression import GBTRegressor, LinearRegression, RandomForestRegressor

    from zaindari.sparkml_onnx import sparkml_to_onnx

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)).astype(np.float32).astype(np.float64)
    klass = (x[:, 0] + x[:, 1] ** 2 + 0.3 * rng.normal(size=600) > 1).astype(float)
    value = 3 * x[:, 0] + x[:, 1] ** 2 + rng.normal(size=600)
    df = spark.createDataFrame(
        [(float(c), float(v), Vectors.dense(row)) for c, v, row in zip(klass, value, x, strict=True)],
        ["klass", "value", "features"],
    )
    estimators = [
        GBTClassifier(labelCol="klass", maxIter=5, maxDepth=3),
        RandomForestClassifier(labelCol="klass", numTrees=5, maxDepth=4),
        LogisticRegression(labelCol="klass"),
        GBTRegressor(labelCol="value", maxIter=5, maxDepth=3),
        RandomForestRegressor(labelCol="value", numTrees=5, maxDepth=4),
        LinearRegression(labelCol="value"),
    ]
    for estimator in estimators:
        model = estimator.fit(df)
        graph = sparkml_to_onnx(model, 4, spark=spark, scratch_dir=str(tmp_path))
        session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, {"features": x.astype(np.float32)}), strict=True))
        predicted = model.transform(df)
        if "probability" in predicted.columns:
            assert names == ["score", "probability", "label"]
            spark_out = predicted.select(
                vector_to_array("probability")[1].alias("p"), "prediction"
            ).toPandas()
            np.testing.assert_allclose(
                outputs["score"], spark_out["p"], atol=1e-6, err_msg=type(model).__name__
            )
            np.testing.assert_array_equal(outputs["label"], spark_out["prediction"].astype(np.int64))
        else:
            assert names == ["score"]
            spark_out = predicted.select("prediction").toPandas()
            np.testing.assert_allclose(
                outputs["score"], spark_out["prediction"], atol=1e-4, err_msg=type(model).__name__
            )
    assert not list(tmp_path.iterdir())  # the saved ensembles are cleaned up


# ----------------------------------------------------------------------------- failures write nothing


def _run_job(folder: Path, spec: ModelSpec, data: Path, *extra: str) -> tuple[int, Path]:
    out = folder / "out-bundle"
    code = _load_job().main(
        [
            "--master",
            "local[2]",
            "--spec",
            str(_write_spec(spec, folder)),
            "--input",
            str(data),
            "--output",
            str(out),
            *extra,
        ]
    )
    return code, out


def test_a_corrupt_parquet_file_fails_the_job_and_writes_no_model(
    spark: Any, plant: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    plant["frame"].iloc[:500].to_parquet(data / "part-0.parquet", index=False)
    (data / "part-1.parquet").write_bytes(b"PAR1 this is not a parquet file at all")
    code, out = _run_job(tmp_path, _spec("plant_anomaly"), data)
    assert code == 1 and not out.exists()
    message = capsys.readouterr().err
    assert "train_model failed: input" in message and "cannot be read" in message


def test_an_empty_input_or_range_fails_the_job_and_writes_no_model(
    spark: Any, plant: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    plant["frame"].iloc[:0].to_parquet(empty / "part-0.parquet", index=False)
    code, out = _run_job(tmp_path, _spec("plant_anomaly"), empty)
    assert code == 1 and not out.exists()
    assert "is empty (0 rows)" in capsys.readouterr().err

    code, out = _run_job(
        tmp_path,
        _spec("plant_anomaly"),
        plant["raw"],
        "--start",
        "2030-01-01T00:00:00Z",
        "--end",
        "2030-02-01",
    )
    assert code == 1 and not out.exists()
    assert (
        "10368 rows but none with 2030-01-01T00:00:00Z <= timestamp < 2030-02-01" in capsys.readouterr().err
    )


def test_a_spec_naming_a_missing_sensor_fails_the_job_and_writes_no_model(
    spark: Any, plant: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load((DATA / "plant_anomaly.yaml").read_text())
    data["sensors"].append({"name": "oil_level", "unit": "%", "min": 0, "max": 100})
    code, out = _run_job(tmp_path, load_spec(data), plant["raw"])
    assert code == 1 and not out.exists()
    assert "names sensors ['oil_level'] that the input table does not have" in capsys.readouterr().err


def test_a_time_range_limits_the_rows_trained_on(spark: Any, plant: dict[str, Any]) -> None:
    from zaindari.training import read_input

    data = read_input(
        spark,
        str(plant["raw"]),
        _spec("plant_anomaly"),
        start="2024-01-02T00:00:00Z",
        end="2024-01-03T00:00:00Z",
    )
    assert data.rows_read == 10_368 and data.rows_in_range == 12 * 144


def test_a_bundle_is_published_to_s3_manifest_last_and_never_over_another(
    rul_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    import moto

    from zaindari.training import publish_bundle, read_spec

    trained, _ = rul_model
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket="lake", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        s3.put_object(Bucket="lake", Key="specs/rul.yaml", Body=trained.spec.to_yaml().encode())
        assert read_spec("s3://lake/specs/rul.yaml") == trained.spec
        publish_bundle(trained, "s3://lake/models/plant-rul/7/")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix="models/")["Contents"]]
        assert {k.rsplit("/", 1)[1] for k in keys} >= {"model.onnx", "parity.json", "MANIFEST.json"}
        for key in keys:
            s3.download_file("lake", key, str(tmp_path / key.rsplit("/", 1)[1]))
        assert load_bundle(tmp_path).extras["parity.json"]["passed"]
        with pytest.raises(TrainingError, match="already holds a bundle"):
            publish_bundle(trained, "s3://lake/models/plant-rul/7")


def test_labels_are_derived_from_failure_flags_or_run_to_failure_and_censored_when_unknown(
    spark: Any,
) -> None:
    from zaindari.training import FAILED, LABEL, derive_labels

    rows = [("a", float(t), t >= 4) for t in range(6)] + [("b", float(t), False) for t in range(6)]
    df = spark.createDataFrame(rows, "asset string, cycle double, broken boolean")

    def labels(label: dict[str, Any], frame: Any = df) -> dict[tuple[str, float], Any]:
        spec = load_spec(
            {
                "name": "toy",
                "task": "regression",
                "sensors": [{"name": "x"}],
                "identifiers": {"asset": "asset", "time": "cycle", "mode": None},
                "label": label,
            }
        )
        out = derive_labels(frame, spec, is_time=False).collect()
        return {(r["asset"], r["cycle"]): (r[LABEL], r[FAILED]) for r in out}

    rul = labels({"column": "rul", "derive": "remaining_useful_life", "failure_column": "broken", "cap": 2})
    assert [rul[("a", t)] for t in (0.0, 2.0, 3.0, 4.0)] == [
        (2.0, False),
        (2.0, False),
        (1.0, False),
        (0.0, True),
    ]
    # b never fails: known to be >= 2 while 2 cycles of data lie ahead, unknown after
    assert [rul[("b", t)][0] for t in (0.0, 3.0, 4.0, 5.0)] == [2.0, 2.0, None, None]

    soon = labels({"column": "soon", "derive": "failure_within", "failure_column": "broken", "horizon": 1.5})
    assert [soon[("a", t)][0] for t in (0.0, 2.0, 3.0)] == [0.0, 0.0, 1.0]
    assert [soon[("b", t)][0] for t in (3.0, 4.0)] == [0.0, None]

    run_to_failure = labels({"column": "rul", "derive": "remaining_useful_life"}, df.filter("asset = 'b'"))
    assert [run_to_failure[("b", float(t))][0] for t in range(6)] == [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]


def test_the_job_refuses_to_train_over_an_existing_bundle_unless_told(
    anomaly_bundle: Path, plant: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    before = (anomaly_bundle / "MANIFEST.json").read_text()
    arguments = ["--spec", str(DATA / "plant_anomaly.yaml"), "--input", str(plant["raw"])]
    code = _load_job().main([*arguments, "--output", str(anomaly_bundle)])
    assert code == 1 and "already holds a bundle" in capsys.readouterr().err
    assert (anomaly_bundle / "MANIFEST.json").read_text() == before
