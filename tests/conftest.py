"""Shared fixtures: one local Spark session and one example model bundle per run, and paths."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from zaindari.bundle import ModelBundle

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example model bundle (``tests.support.fit_example_bundle``), fitted once per run.

    Every module that scores with the example model shares it: read it, never change it (a test
    that edits a bundle works on its own copy or variant). A module needing another bundle (other
    training data, a drift baseline) defines its own ``bundle_dir`` and ``bundle``, which win.
    At the end of the run the folder is checked: a test that changed it fails the run here.
    """
    from tests.support import fit_example_bundle
    from zaindari.bundle import load_bundle

    folder = fit_example_bundle(tmp_path_factory.mktemp("example-bundle"))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    yield folder
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == files, (
        "a test added or removed files of the shared example bundle"
    )
    load_bundle(folder)  # checks every file against the manifest's hashes


@pytest.fixture(scope="session")
def bundle(bundle_dir: Path) -> ModelBundle:
    """The example model bundle of :func:`bundle_dir`, loaded once per run."""
    from zaindari.bundle import load_bundle

    return load_bundle(bundle_dir)


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
