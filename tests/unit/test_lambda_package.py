"""The code asset `make build` ships (sam build runs the same recipe) keeps valid bytecode once zipped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from zaindari.infra.provision import load_template

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


@pytest.mark.parametrize("layer", ["DependenciesLayer", "FileScoringLayer"])
def test_layer_install_asks_uv_for_hash_based_bytecode(layer: str) -> None:
    recipe = subprocess.run(
        ["make", "-n", "--no-print-directory", f"build-{layer}", "ARTIFACTS_DIR=/nonexistent"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "PYC_INVALIDATION_MODE=UNCHECKED_HASH" in recipe and "--compile-bytecode" in recipe


def test_every_resource_sam_builds_with_make_finds_its_makefile_target() -> None:
    # sam build runs `make -f <CodeUri or ContentUri>/Makefile build-<LogicalId>`: a resource whose
    # folder has no Makefile, or whose Makefile lacks the target, fails `sam build` (it once did)
    template = load_template(ROOT / "template.yaml")
    built = {
        logical_id: resource
        for logical_id, resource in template.resources.items()
        if resource.get("Metadata", {}).get("BuildMethod") == "makefile"
    }
    assert {"ScoreEventFunction", "DependenciesLayer", "FileScoringLayer"} <= set(built)
    for logical_id, resource in built.items():
        properties = resource["Properties"]
        folder = ROOT / (properties.get("CodeUri") or properties["ContentUri"])
        assert (folder / "Makefile").is_file(), f"{logical_id}: no Makefile in {folder}"
        dry_run = subprocess.run(
            [
                "make",
                "-n",
                "-f",
                str(folder / "Makefile"),
                f"build-{logical_id}",
                "ARTIFACTS_DIR=/nonexistent",
            ],
            cwd=ROOT,
            check=False,
            capture_output=True,
            text=True,
        )
        assert dry_run.returncode == 0, f"{logical_id}: {dry_run.stderr}"
