"""Bundles for the registry tests: the real example model rewritten with chosen metrics, parity and thresholds."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from zaindari.bundle import MODEL_FILE, load_bundle, write_bundle
from zaindari.contract import Reading, parse_readings
from zaindari.simulate import PlantConfig, simulate_plant

PASSED_PARITY: dict[str, Any] = {
    "rows_compared": 200,
    "max_abs_diff": 1e-9,
    "tolerance": 1e-6,
    "passed": True,
}


def labelled_metrics(auc: float, detection: float = 0.8, false_alarm: float = 0.02) -> dict[str, Any]:
    return {
        "task": "anomaly",
        "auc": auc,
        "at_thresholds": {"warning": {"detection_rate": detection, "false_alarm_rate": false_alarm}},
    }


def registry_bundle(
    example_dir: Path,
    out: Path,
    *,
    metrics: dict[str, Any] | None = None,
    parity: dict[str, Any] | None = PASSED_PARITY,
    threshold_scale: float = 1.0,
    lineage: dict[str, Any] | None = None,
) -> Path:
    """The example model (its bundle at ``example_dir``: the ``bundle_dir`` fixture) as a new bundle
    at ``out`` with these extras (``None`` leaves one out).

    ``threshold_scale`` multiplies the learned thresholds: below 1 the model alerts more often.
    """
    base = load_bundle(example_dir)
    extras: dict[str, Any] = {"lineage.json": lineage or {"training_set": "s3://lake/training/run-1/"}}
    if metrics is not None:
        extras["metrics.json"] = metrics
    if parity is not None:
        extras["parity.json"] = parity
    thresholds = base.thresholds.model_copy(
        update={"levels": {k: v * threshold_scale for k, v in base.thresholds.levels.items()}}
    )
    if out.exists():
        shutil.rmtree(out)
    return write_bundle(
        out,
        model=(base.path / MODEL_FILE).read_bytes(),
        signature=base.signature,
        spec=base.spec,
        thresholds=thresholds,
        extras=extras,
        version=out.name,
    )


def recent_readings(seed: int = 1) -> list[Reading]:
    """The small simulated plant's readings (faults included), validated."""
    raw = list(simulate_plant(PlantConfig.small(seed=seed)).readings())
    return list(parse_readings(raw).readings)
