"""zaindari.sagemaker_tools with the real sagemaker SDK (its own venv, .tools/sagemaker) against moto:
the Approved package of a model (its production version) deployed to a serverless endpoint."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.functions.conftest import EmbeddedAws
from tests.registry_support import labelled_metrics, registry_bundle
from zaindari.infra.deploy_ports import build_model_lifecycle
from zaindari.infra.registry_store import create_registry_table
from zaindari.settings import Settings

pytestmark = pytest.mark.aws

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("ZAINDARI_TOOLS", ROOT / ".tools"))
ROLE = "arn:aws:iam::123456789012:role/zaindari-sagemaker"


@pytest.fixture(scope="module")
def sdk_python() -> Path:
    """The SDK's venv, made by `make tools-sagemaker` when missing (pinned; from the uv cache)."""
    python = TOOLS / "sagemaker" / "bin" / "python"
    if not python.exists():
        subprocess.run(
            ["make", "--no-print-directory", f"TOOLS={TOOLS}", "tools-sagemaker"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return python


def _run(sdk_python: Path, aws: EmbeddedAws, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(sdk_python), *args],
        cwd=ROOT,
        env={
            **aws.env,
            "PYTHONPATH": str(ROOT / "src"),
            "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
            "HOME": str(home),
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_sdk_deploys_the_production_package_to_a_serverless_endpoint(
    aws: EmbeddedAws, sdk_python: Path, bundle_dir: Path, tmp_path: Path
) -> None:
    # Given a model whose version 1 is production, mirrored to the SageMaker Model Registry
    aws.factory.client("s3").create_bucket(
        Bucket="zaindari-lake", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    create_registry_table(aws.factory, "zaindari-model-registry")
    settings = Settings(
        model_cache_dir=str(tmp_path / "models"),
        sagemaker_image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/zaindari-serving:1",
    )
    lifecycle = build_model_lifecycle(settings, aws.factory)
    bundle = registry_bundle(bundle_dir, tmp_path / "run-1", metrics=labelled_metrics(0.9))
    assert lifecycle.register_trained_bundle(str(bundle)).status == "promoted"

    # When a data scientist asks for a model without production, then deploys this one (one
    # interpreter for both: importing the SDK takes seconds)
    script = (
        "import sys\n"
        "from zaindari.sagemaker_tools import main\n"
        "print('show exit', main(['show', 'no-such-model']))\n"
        f"sys.exit(main(['deploy', 'plant-anomaly', '--role', '{ROLE}', '--endpoint', 'plant-anomaly-sandbox',"
        " '--memory-mb', '3072']))\n"
    )
    done = _run(sdk_python, aws, tmp_path, "-c", script)
    assert done.returncode == 0, done.stderr
    assert "show exit 1" in done.stdout and "no-such-model: no Approved package" in done.stderr
    assert "version 1  s3://zaindari-lake/models/plant-anomaly/1/" in done.stdout

    # Then the endpoint serves the package's container, serverless
    sm = aws.factory.client("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName="plant-anomaly-sandbox")
    variant = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])[
        "ProductionVariants"
    ][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 5}
    container = sm.describe_model(ModelName=variant["ModelName"])
    packages = sm.list_model_packages(ModelPackageGroupName="plant-anomaly")["ModelPackageSummaryList"]
    assert [
        c.get("ModelPackageName")
        for c in container.get("Containers", [container.get("PrimaryContainer", {})])
    ] == [packages[0]["ModelPackageArn"]]
