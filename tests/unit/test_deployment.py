"""The deployment use cases with in-memory ports, and the SageMaker requests checked against the API.

moto 5 lacks ``UpdateEndpoint``; here every SageMaker call of a create-then-update deployment goes
through botocore's ``Stubber``, which validates each request against the service's shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tests.registry_support import labelled_metrics, registry_bundle
from zaindari.deployment import ApprovalStatus, ModelLifecycle, approval_status
from zaindari.infra.aws import AwsConfig, ClientFactory
from zaindari.infra.deploy_ports import SageMakerEndpointDeployer, sagemaker_name
from zaindari.memory_ports import MemoryRegistryStore
from zaindari.ports import PortError
from zaindari.registry import GatePolicy, ModelRegistry, ModelVersion
from zaindari.registry_events import BundleRefused, ModelUpdate

MODEL = "plant-anomaly"


class LocalFolders:
    """ArtifactStore over local folders (publish copies nothing: the bundle stays where it is)."""

    def fetch(self, location: str) -> Path:
        return Path(location)

    def publish(self, model: str, version: int, bundle: Path) -> str:
        return str(bundle)


class Notes:
    """LifecycleNotifier keeping what was sent."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.refusals: list[BundleRefused] = []

    def event(self, detail_type: str, detail: BaseModel) -> None:
        self.events.append((detail_type, detail.model_dump()))

    def refused(self, refusal: BundleRefused) -> None:
        self.refusals.append(refusal)


class Mirror:
    def __init__(self) -> None:
        self.status: dict[int, str] = {}

    def sync(self, version: ModelVersion, status: ApprovalStatus, reason: str) -> str:
        self.status[version.version] = status
        return f"arn:{version.version}"


class BrokenEndpoint:
    def deploy(self, version: ModelVersion) -> dict[str, Any]:
        raise PortError("SageMaker endpoint zaindari-plant-anomaly: ThrottlingException")


class Edge:
    def __init__(self) -> None:
        self.published: list[ModelUpdate] = []

    def update_for(self, version: ModelVersion, reason: str) -> ModelUpdate:
        return ModelUpdate(
            model=version.model,
            version=version.version,
            content_hash=version.content_hash,
            artifact_uri=version.artifact_uri,
            sha256=dict(version.files),
            manifest_sha256="0" * 64,
            urls={},
            urls_expire_at="2026-11-23T00:00:00Z",
            reason=reason,
            at="2026-11-22T00:00:00Z",
        )

    def publish(self, update: ModelUpdate) -> dict[str, Any]:
        self.published.append(update)
        return {"topic": "t"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> list[Path]:
    out = tmp_path_factory.mktemp("bundles")
    return [registry_bundle(bundle_dir, out / f"run-{i}", metrics=labelled_metrics(0.9)) for i in (1, 2)]


def lifecycle(notes: Notes, mirror: Mirror, edge: Edge, endpoint: Any = None) -> ModelLifecycle:
    return ModelLifecycle(
        ModelRegistry(MemoryRegistryStore(), LocalFolders()),
        notes,
        mirror=mirror,
        endpoint=endpoint,
        edge=edge,
        traffic=None,
        policy=GatePolicy(alert_rate_bound=None),
    )


def test_approval_status_follows_the_aliases() -> None:
    aliases = {"production": 2, "staging": 3, "archived": 1, "canary": 4}
    assert [approval_status(v, aliases) for v in (1, 2, 3, 4, 5)] == [
        "Rejected",
        "Approved",
        "PendingManualApproval",
        "PendingManualApproval",
        "Rejected",
    ]
    assert approval_status(2, {"production": 2, "staging": 2}) == "Approved"
    # rolled back from: rejected even while it still holds staging
    assert approval_status(3, aliases, frozenset({3})) == "Rejected"
    assert approval_status(2, aliases, frozenset({2})) == "Approved"  # production again later


def test_a_failed_target_does_not_stop_the_others_and_the_rollback_is_still_announced(
    bundles: list[Path],
) -> None:
    notes, mirror, edge = Notes(), Mirror(), Edge()
    flow = lifecycle(notes, mirror, edge, BrokenEndpoint())
    for bundle in bundles:
        assert flow.register_trained_bundle(str(bundle)).status == "promoted"

    with pytest.raises(PortError, match=r"sagemaker_endpoint: SageMaker endpoint .* ThrottlingException"):
        flow.rollback(MODEL, reason="noisy")

    # the edge and the package statuses were still brought to version 1
    assert [u.version for u in edge.published] == [1]
    assert mirror.status == {1: "Approved", 2: "Rejected"}
    detail_type, detail = notes.events[-1]
    assert detail_type == "Zaindari Model Rolled Back"
    assert (detail["version"], detail["previous"], detail["deployed"]) == (1, 2, False)


def test_an_unknown_bundle_is_refused_and_alerted(tmp_path: Path) -> None:
    notes = Notes()
    outcome = lifecycle(notes, Mirror(), Edge()).register_trained_bundle(str(tmp_path), trigger="test")
    assert outcome.status == "refused" and "no MANIFEST.json" in outcome.reason
    assert [r.reason for r in notes.refusals] == [outcome.reason]
    assert notes.events == []


def _version(number: int) -> ModelVersion:
    return ModelVersion(
        model=MODEL,
        version=number,
        artifact_uri=f"s3://zaindari-lake/models/{MODEL}/{number}/",
        content_hash=f"{number:x}" * 64,
        files={},
        task="anomaly",
        signature={},
        metrics={},
        thresholds={},
        registered_at="2026-11-22T00:00:00Z",
    )


def test_sagemaker_create_then_update_requests_match_the_api() -> None:
    from botocore.stub import Stubber

    factory = ClientFactory(AwsConfig(region="eu-west-1"), botocore_only=True)
    client = factory.client("sagemaker")
    deployer = SageMakerEndpointDeployer(
        factory,
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/zaindari-serving:1",
        "arn:aws:iam::123456789012:role/zaindari-sagemaker",
        memory_mb=3072,
        max_concurrency=10,
    )
    v1, v2 = _version(1), _version(2)
    name1, name2 = (sagemaker_name(MODEL, f"v{v.version}", v.content_hash[:8]) for v in (v1, v2))
    missing = {"service_error_code": "ValidationException", "service_message": "Could not find"}
    endpoint_arn = "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/zaindari-plant-anomaly"

    def expect_model_and_config(stub: Stubber, name: str, version: ModelVersion) -> None:
        stub.add_client_error("describe_model", expected_params={"ModelName": name}, **missing)
        stub.add_response(
            "create_model",
            {"ModelArn": f"arn:aws:sagemaker:eu-west-1:123456789012:model/{name}"},
            {
                "ModelName": name,
                "ExecutionRoleArn": "arn:aws:iam::123456789012:role/zaindari-sagemaker",
                "PrimaryContainer": {
                    "Image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/zaindari-serving:1",
                    "ModelDataSource": {
                        "S3DataSource": {
                            "S3Uri": version.artifact_uri,
                            "S3DataType": "S3Prefix",
                            "CompressionType": "None",
                        }
                    },
                },
                "Tags": [
                    {"Key": "zaindari:model", "Value": MODEL},
                    {"Key": "zaindari:version", "Value": str(version.version)},
                ],
            },
        )
        stub.add_client_error(
            "describe_endpoint_config", expected_params={"EndpointConfigName": name}, **missing
        )
        stub.add_response(
            "create_endpoint_config",
            {"EndpointConfigArn": f"arn:aws:sagemaker:eu-west-1:123456789012:endpoint-config/{name}"},
            {
                "EndpointConfigName": name,
                "ProductionVariants": [
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": name,
                        "ServerlessConfig": {"MemorySizeInMB": 3072, "MaxConcurrency": 10},
                    }
                ],
            },
        )

    with Stubber(client) as stub:
        expect_model_and_config(stub, name1, v1)
        stub.add_client_error(
            "describe_endpoint", expected_params={"EndpointName": "zaindari-plant-anomaly"}, **missing
        )
        stub.add_response(
            "create_endpoint",
            {"EndpointArn": endpoint_arn},
            {"EndpointName": "zaindari-plant-anomaly", "EndpointConfigName": name1},
        )
        assert deployer.deploy(v1)["action"] == "created"

        expect_model_and_config(stub, name2, v2)
        stub.add_response(
            "describe_endpoint",
            {
                "EndpointName": "zaindari-plant-anomaly",
                "EndpointArn": endpoint_arn,
                "EndpointConfigName": name1,
                "EndpointStatus": "InService",
                "CreationTime": "2026-11-22T00:00:00Z",
                "LastModifiedTime": "2026-11-22T00:00:00Z",
            },
            {"EndpointName": "zaindari-plant-anomaly"},
        )
        stub.add_response(
            "update_endpoint",
            {"EndpointArn": endpoint_arn},
            {"EndpointName": "zaindari-plant-anomaly", "EndpointConfigName": name2},
        )
        assert deployer.deploy(v2) == {
            "endpoint": "zaindari-plant-anomaly",
            "endpoint_config": name2,
            "model_name": name2,
            "action": "updated",
        }
        stub.assert_no_pending_responses()


def test_a_redelivered_training_event_registers_nothing_twice(
    bundles: list[Path], bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    notes, mirror, edge = Notes(), Mirror(), Edge()
    flow = lifecycle(notes, mirror, edge)
    worse = registry_bundle(
        bundle_dir,
        tmp_path_factory.mktemp("worse") / "run-3",
        metrics=labelled_metrics(0.7),
    )
    first = [flow.register_trained_bundle(str(b)).status for b in (bundles[0], worse)]
    history = flow.registry.store.history(MODEL)

    again = [flow.register_trained_bundle(str(b)) for b in (bundles[0], worse)]

    assert first == ["promoted", "kept_in_staging"]
    assert [(o.status, o.version) for o in again] == [("promoted", 1), ("kept_in_staging", 2)]
    assert "auc: challenger 0.7" in again[1].reason
    assert [v.version for v in flow.registry.store.list_versions(MODEL)] == [1, 2]
    assert flow.registry.store.history(MODEL) == history  # no decision taken twice
    promoted = [d["version"] for t, d in notes.events if t == "Zaindari Model Promoted"]
    assert promoted == [1, 1]  # re-announced: deploy_model's work is idempotent
