"""The code asset `make build` ships (sam build runs the same recipe) keeps valid bytecode once zipped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_code_asset_bytecode_is_used_after_a_zip_round_trip(tmp_path: Path) -> None:
    # Given score_event's code asset, built as sam build builds it
    built = tmp_path / "built"
    subprocess.run(
        ["make", "--no-print-directory", "-s", "build-ScoreEventFunction", f"ARTIFACTS_DIR={built}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    # ... zipped and unzipped with the zip's times (2 s steps), as a deployment does
    archive = tmp_path / "asset.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(built.rglob("*")):
            if path.is_file():
                os.utime(path, (1_700_000_001, 1_700_000_001))  # an odd second: the zip rounds it
                out.write(path, path.relative_to(built))
    deployed = tmp_path / "task"
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(deployed)
        for info in zipped.infolist():
            stamp = time.mktime((*info.date_time, 0, 0, -1))
            os.utime(deployed / info.filename, (stamp, stamp))
    # ... whose sources could not even be compiled: only the shipped bytecode can load them
    sources = [p for p in deployed.rglob("*.py") if p.name != "__init__.py"]
    assert len(sources) > 20
    for source in sources:
        source.write_text("this is not python\n")

    # When a new interpreter imports the core from it, bytecode writes off (read-only /var/task)
    done = subprocess.run(
        [sys.executable, "-B", "-c", "import zaindari.contract, zaindari.infra.wiring; print('ok')"],
        cwd=deployed,
        env={**os.environ, "PYTHONPATH": str(deployed)},
        capture_output=True,
        text=True,
        check=False,
    )

    # Then every module loads from its .pyc (a stale one would be recompiled from the bad source)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_layer_install_asks_uv_for_hash_based_bytecode() -> None:
    recipe = subprocess.run(
        ["make", "-n", "--no-print-directory", "build-FileScoringLayer", "ARTIFACTS_DIR=/nonexistent"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "PYC_INVALIDATION_MODE=UNCHECKED_HASH" in recipe and "--compile-bytecode" in recipe
