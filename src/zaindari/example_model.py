"""A real model for the example spec, before any training run: PCA fitted on simulated healthy data.

Used by ``zaindari invoke`` (seeding a function's model), the tests and the benchmarks. It is a real
ONNX model fitted with numpy (``zaindari.pca_model``), never a fake scorer. Needs the dev extras
(``onnx``, and pandas for the simulator).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

__all__ = ["example_model_bundle", "example_spec_text"]


def example_spec_text() -> str:
    """The example spec shipped with the package (``zaindari/data/plant_anomaly.yaml``)."""
    from importlib.resources import files

    return files("zaindari").joinpath("data/plant_anomaly.yaml").read_text(encoding="utf-8")


# Bump when the recipe below changes, so cached bundles are refitted.
_EXAMPLE_FIT_RECIPE = "PlantConfig.small(seed=0..3); readings before the first fault onset; PCA k=3; v3"
_EXAMPLE_FIT_SEEDS = (0, 1, 2, 3)


def example_model_bundle(cache_dir: str | Path) -> Path:
    """A real PCA anomaly bundle for the example spec, fitted once and cached under ``cache_dir``.

    Fitted with numpy on healthy operation: the small simulated plant's readings from before its
    first fault, over four seeds (960 readings), with the example spec
    ``zaindari/data/plant_anomaly.yaml``. Needs ``onnx``. Takes about a second; the cache makes
    the next call instant.
    """
    spec_text = example_spec_text()
    key = hashlib.sha256(f"{_EXAMPLE_FIT_RECIPE}\n{spec_text}".encode()).hexdigest()[:12]
    target = Path(cache_dir) / f"plant-anomaly-{key}"
    if (target / "MANIFEST.json").is_file():
        return target

    import numpy as np

    from zaindari.contract import parse_readings
    from zaindari.features import SensorTable, compute_features
    from zaindari.pca_model import fit_pca_bundle
    from zaindari.simulate import PlantConfig, simulate_plant
    from zaindari.spec import load_spec

    spec = load_spec(spec_text)
    matrices = []
    for seed in _EXAMPLE_FIT_SEEDS:
        config = PlantConfig.small(seed=seed)
        first_fault = min(f.onset for f in config.faults).strftime("%Y-%m-%dT%H:%M:%SZ")
        healthy = [r for r in simulate_plant(config).readings() if r["timestamp"] < first_fault]
        parsed = parse_readings(healthy)
        features = compute_features(spec, SensorTable.from_readings(parsed.readings, spec.sensor_names))
        matrices.append(features.matrix(spec.model_features))
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fit_pca_bundle(spec, np.concatenate(matrices), scratch, version=f"local-{key}")
        try:
            scratch.rename(target)  # atomic: a cached folder is always a complete bundle
        except OSError:
            if not (target / "MANIFEST.json").is_file():  # not a concurrent fit that won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
