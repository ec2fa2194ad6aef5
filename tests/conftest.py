"""Shared fixtures: one local Spark session per run, the example spec, and paths."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Property-based tests (fuzzing, schemathesis): "ci", the default, keeps the suite fast and repeatable
# (few examples, derandomized); HYPOTHESIS_PROFILE=deep runs many more, for a soak by hand.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci", max_examples=25, derandomize=True, deadline=None, suppress_health_check=_QUIET
)
settings.register_profile("deep", max_examples=500, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A small local Spark session shared by every Spark test (Java 17, ``local[2]``)."""
    from pyspark.sql import SparkSession

    # Python workers (mapInPandas) run this interpreter: its venv has the core, pandas and pyarrow
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    session = (
        SparkSession.builder.master("local[2]")
        .appName("zaindari-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
