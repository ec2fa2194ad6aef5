"""Deploy a model from the SageMaker Model Registry with the ``sagemaker`` SDK, where people work.

``register_model`` mirrors every registered version into a Model Package Group named after the
model (approval status following the aliases). A data scientist who works in SageMaker can deploy
the Approved package, i.e. Zaindari's ``production`` version, to an endpoint of their own (a
notebook's, a load test's) with this helper, serverless by default::

    make tools   # .tools/sagemaker: the SDK in its own venv (it pins numpy>=2 and pandas>=3)
    .tools/sagemaker/bin/python -m zaindari.sagemaker_tools deploy plant-anomaly \\
        --role arn:aws:iam::123456789012:role/zaindari-sagemaker --endpoint plant-anomaly-sandbox

The SDK (v2, ``sagemaker.ModelPackage``) is imported only inside the functions: this module runs
in ``.tools/sagemaker``, never in a Lambda function (those use boto3 through
``zaindari.infra.deploy_ports``). AWS settings come from the standard environment
(``AWS_ENDPOINT_URL`` for moto).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["approved_package", "deploy_package", "main"]


def _session(region: str | None) -> Any:
    import boto3
    import sagemaker

    return sagemaker.Session(boto_session=boto3.Session(region_name=region))


def approved_package(session: Any, model: str) -> dict[str, Any]:
    """The newest Approved model package of ``model``'s group (Zaindari's ``production``).

    Raises
    ------
    LookupError
        When the group has no Approved package.
    """
    group = "".join(c if c.isalnum() else "-" for c in model).strip("-")[:63]
    client = session.sagemaker_client
    found = client.list_model_packages(
        ModelPackageGroupName=group,
        ModelApprovalStatus="Approved",
        SortBy="CreationTime",
        SortOrder="Descending",
    ).get("ModelPackageSummaryList", [])
    if not found:
        raise LookupError(f"model package group {group}: no Approved package (no production version)")
    described: dict[str, Any] = client.describe_model_package(ModelPackageName=found[0]["ModelPackageArn"])
    return described


def deploy_package(
    session: Any,
    package_arn: str,
    *,
    role: str,
    endpoint: str,
    memory_mb: int = 2048,
    max_concurrency: int = 5,
) -> str:
    """Deploy ``package_arn`` to a new serverless endpoint with the SDK; returns the endpoint name."""
    from sagemaker import ModelPackage
    from sagemaker.serverless import ServerlessInferenceConfig

    package = ModelPackage(role=role, model_package_arn=package_arn, sagemaker_session=session)
    package.deploy(
        endpoint_name=endpoint,
        serverless_inference_config=ServerlessInferenceConfig(
            memory_size_in_mb=memory_mb, max_concurrency=max_concurrency
        ),
        wait=False,
    )
    return endpoint


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zaindari.sagemaker_tools", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="the Approved (production) model package of MODEL")
    deploy = sub.add_parser(
        "deploy", help="deploy the Approved model package of MODEL to a new serverless endpoint"
    )
    for p in (show, deploy):
        p.add_argument("model", metavar="MODEL")
        p.add_argument("--region", help="AWS region (default: the environment's)")
    deploy.add_argument("--role", required=True, help="IAM role ARN the SageMaker model runs as")
    deploy.add_argument("--endpoint", required=True, help="name of the new endpoint")
    deploy.add_argument("--memory-mb", type=int, default=2048, help="serverless memory (1024-6144)")
    deploy.add_argument("--max-concurrency", type=int, default=5, help="serverless concurrency")
    args = parser.parse_args(argv)
    session = _session(args.region)
    try:
        package = approved_package(session, args.model)
    except LookupError as exc:
        print(f"zaindari.sagemaker_tools: {exc}", file=sys.stderr)
        return 1
    meta = package.get("CustomerMetadataProperties") or {}
    print(
        f"{package['ModelPackageArn']}  version {meta.get('zaindari_version', '?')}  {meta.get('artifact_uri', '')}"
    )
    if args.command == "deploy":
        name = deploy_package(
            session,
            package["ModelPackageArn"],
            role=args.role,
            endpoint=args.endpoint,
            memory_mb=args.memory_mb,
            max_concurrency=args.max_concurrency,
        )
        print(f"deploying to endpoint {name} (serverless, {args.memory_mb} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
