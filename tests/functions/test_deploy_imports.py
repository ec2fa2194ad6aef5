"""The register / deploy Lambdas carry no pyspark: importing them and the gate's maintenance log
must not load it (a fresh interpreter, so other tests' imports cannot hide a leak)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import ROOT

_PROBE = """
import json, sys
from pathlib import Path
from zaindari.infra.lambda_local import import_function
for name in ("register_model", "deploy_model"):
    import_function(Path("functions") / name / "app.py", name)
from zaindari.infra.deploy_ports import S3MaintenanceLog, build_model_lifecycle
print(json.dumps(sorted(sys.modules)))
"""


def test_register_and_deploy_functions_import_the_s3_file_store_without_pyspark() -> None:
    env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "eu-west-1")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout.splitlines()[-1]))
    # the maintenance log reads the lake through the one S3 file store...
    assert {"zaindari.infra.s3_files", "zaindari.file_store"} <= modules
    # ...which, like the rest of these Lambdas, needs neither Spark nor the training set builder
    assert "pyspark" not in modules
    assert "zaindari.training_set" not in modules
