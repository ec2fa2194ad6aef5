"""Training on local[2]: wall time and rows/s of ``zaindari.training.train_model`` on 1 million rows.

The data (a simulated plant: 24 machines, 29 days at 60 s, 1,002,240 readings, with faults) is
generated and written to Parquet first; that is not timed. Timed: the whole training run, from
reading the raw table (validation, window features, labels, split by asset, search, fit, ONNX
export, parity check) to a trained model in memory; publishing the bundle is timed apart.

Tasks: ``anomaly`` (the example spec, no label: PCA with k chosen by explained variance) and
``classification`` (failure within 24 h, one random-forest grid point, to keep the run short).
Baseline, measured in the same run: numpy's ``fit_pca`` (``zaindari.pca_model``) on the same
feature matrix collected to the driver (collection not included): what fitting the anomaly model
costs on one core when the data fits in memory. No targets: the figures are printed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

BENCHMARK = "training"
DAYS = 29
LINES, MACHINES_PER_LINE = 4, 6


def _row(metric: str, value: float, unit: str, baseline: float | None = None) -> dict[str, Any]:
    return {
        "benchmark": BENCHMARK,
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": (value / baseline) if baseline else None,
        "target": None,
        "pass": None,
    }


def _write_plant(folder: Path) -> tuple[Path, int]:
    from zaindari.simulate import PlantConfig, simulate_plant

    config = PlantConfig(
        seed=5,
        lines=LINES,
        machines_per_line=MACHINES_PER_LINE,
        duration=timedelta(days=DAYS),
        sample_period_seconds=60.0,
        auto_faults=12,
        fault_lead_hours=(24.0, 72.0),
    )
    frame = simulate_plant(config).historian_frame(ground_truth=True)
    frame["fault_kind"] = frame["fault_kind"].astype("string")  # typed even in a file without faults
    path = folder / "plant"
    path.mkdir()
    for i, start in enumerate(range(0, len(frame), 250_000)):  # a few files, as a lake holds them
        frame.iloc[start : start + 250_000].to_parquet(path / f"part-{i}.parquet", index=False)
    return path, len(frame)


def _spec(name: str, **changes: Any) -> Any:
    from importlib.resources import files

    import yaml

    from zaindari.spec import load_spec

    data = yaml.safe_load(files("zaindari").joinpath(f"data/{name}.yaml").read_text(encoding="utf-8"))
    data.update(changes)
    return load_spec(data)


def main() -> list[dict[str, Any]]:
    import numpy as np

    from zaindari.features_spark import add_features
    from zaindari.pca_model import fit_pca
    from zaindari.spark_jobs import spark_session
    from zaindari.training import publish_bundle, train_model

    out = sys.stdout
    rows: list[dict[str, Any]] = []
    folder = Path(tempfile.mkdtemp(prefix="bench-training-"))
    try:
        print("generating the plant (not timed)...", file=out, flush=True)
        data, n_rows = _write_plant(folder)
        spark = spark_session(
            "bench-training",
            "local[2]",
            **{"spark.driver.memory": "6g", "spark.sql.execution.arrow.pyspark.enabled": "true"},
        )
        spark.sparkContext.setLogLevel("ERROR")
        spark.read.parquet(str(data)).count()  # JVM and reader warm-up, not timed

        tasks = [
            ("anomaly", _spec("plant_anomaly")),
            (
                "classification",
                _spec(
                    "plant_failure",
                    training={"models": {"random_forest": {"numTrees": [20], "maxDepth": [6]}}},
                ),
            ),
        ]
        anomaly_fit_s = None
        anomaly_k = 3
        for task, spec in tasks:
            print(f"training {task} on {n_rows:,} rows...", file=out, flush=True)
            started = time.perf_counter()
            trained = train_model(spark, spec, str(data), log=lambda m: print(f"  {m}", file=out, flush=True))
            wall = time.perf_counter() - started
            started = time.perf_counter()
            publish_bundle(trained, str(folder / f"bundle-{task}"))
            publish_s = time.perf_counter() - started
            label = f"{task}: train_model wall time, {n_rows:,} rows, local[2]"
            if task == "anomaly":
                anomaly_fit_s = wall
                anomaly_k = int(trained.fitted.parameters["k"])
            rows.append(_row(label, wall, "s", None))
            rows.append(_row(f"{task}: rows/s (rows read / wall time)", n_rows / wall, "rows/s"))
            rows.append(_row(f"{task}: publish_bundle (write, verify, move)", publish_s, "s"))
            rows.append(_row(f"{task}: parity max |onnx - spark|", trained.parity["max_abs_diff"], ""))
            print(
                f"  {task}: {wall:.1f} s, {n_rows / wall:,.0f} rows/s, parameters {trained.fitted.parameters}",
                file=out,
            )

        # Baseline: numpy's fit_pca on the anomaly features, collected to the driver (not timed).
        spec = tasks[0][1]
        features = add_features(spark.read.parquet(str(data)), spec).filter("_reject_reason IS NULL")
        matrix = np.asarray(features.select(*spec.model_features).toPandas().to_numpy(), dtype=np.float64)
        k = anomaly_k
        started = time.perf_counter()
        fit_pca(matrix, k)
        numpy_s = time.perf_counter() - started
        rows.append(
            _row(f"numpy fit_pca alone ({matrix.shape[0]:,} x {matrix.shape[1]}, k={k})", numpy_s, "s")
        )
        if anomaly_fit_s is not None:
            rows[0] = _row(rows[0]["metric"], anomaly_fit_s, "s", numpy_s)
        spark.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for row in main():
        print(row)
