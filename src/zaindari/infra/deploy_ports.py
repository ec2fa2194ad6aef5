"""The deployment ports on AWS: EventBridge + SNS, the SageMaker Model Registry mirror, SageMaker
serverless endpoints, the edge's IoT topic, and recent telemetry in the lake for shadow scoring.

SageMaker names allow letters, digits and hyphens (63 characters): a model's package group is its
name with ``_`` as ``-``; an endpoint model / config is ``<model>-v<version>-<hash8>``, so one
version's objects are created once and a redeploy of the same version changes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pydantic import BaseModel

from zaindari.bundle import MANIFEST_FILE
from zaindari.file_store import FileStoreError
from zaindari.infra.aws import ClientFactory
from zaindari.infra.aws_ports import EVENT_SOURCE, aws_errors
from zaindari.infra.s3_files import S3FileStore
from zaindari.ports import PortError
from zaindari.registry_events import MODEL_REFUSED, MODEL_UPDATE, BundleRefused, ModelUpdate

if TYPE_CHECKING:
    from zaindari.contract import Reading
    from zaindari.deployment import ApprovalStatus, ModelLifecycle
    from zaindari.maintenance import MaintenanceLog
    from zaindari.registry import ModelVersion
    from zaindari.settings import Settings

__all__ = [
    "EventBridgeSnsNotifier",
    "IotEdgePublisher",
    "S3MaintenanceLog",
    "S3RecentTraffic",
    "SageMakerEndpointDeployer",
    "SageMakerPackageMirror",
    "build_model_lifecycle",
    "emr_serverless_job_output",
    "glue_job_output",
    "model_data",
    "sagemaker_name",
]


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def sagemaker_name(*parts: str) -> str:
    """A valid SageMaker resource name from ``parts`` (``[a-zA-Z0-9-]``, at most 63 characters)."""
    name = "-".join(p for p in parts if p)
    cleaned = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    while "--" in cleaned:
        cleaned = cleaned.replace("--", "-")
    return cleaned[:63].rstrip("-")


def model_data(version: ModelVersion) -> dict[str, Any]:
    """SageMaker model data of a version: its bundle prefix, uncompressed, which SageMaker copies to
    /opt/ml/model (where the serving container, ``zaindari serve``, loads it)."""
    uri = version.artifact_uri if version.artifact_uri.endswith("/") else version.artifact_uri + "/"
    return {"S3DataSource": {"S3Uri": uri, "S3DataType": "S3Prefix", "CompressionType": "None"}}


def _s3_location(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise PortError(f"artifact {uri!r} is not an s3://bucket/prefix/ URI")
    prefix = parsed.path.lstrip("/")
    return parsed.netloc, prefix if not prefix or prefix.endswith("/") else prefix + "/"


class EventBridgeSnsNotifier:
    """:class:`~zaindari.deployment.LifecycleNotifier`: events on EventBridge, refusals on SNS too."""

    def __init__(self, factory: ClientFactory, topic_arn: str | None, event_bus: str) -> None:
        self.factory = factory
        self.topic_arn = topic_arn
        self.event_bus = event_bus

    def event(self, detail_type: str, detail: BaseModel) -> None:
        entry = {
            "Source": EVENT_SOURCE,
            "DetailType": detail_type,
            "Detail": detail.model_dump_json(),
            "EventBusName": self.event_bus,
        }
        try:
            answer = self.factory.client("events").put_events(Entries=[entry])
        except aws_errors() as exc:
            raise PortError(f"EventBridge {self.event_bus}: {detail_type} not sent: {exc}") from exc
        if answer.get("FailedEntryCount"):
            raise PortError(f"EventBridge {self.event_bus}: {detail_type} refused: {answer.get('Entries')}")

    def refused(self, refusal: BundleRefused) -> None:
        if self.topic_arn:
            subject = f"[critical] model bundle refused: {refusal.model or refusal.source}"
            try:
                self.factory.client("sns").publish(
                    TopicArn=self.topic_arn,
                    Subject=subject[:100],
                    Message=refusal.model_dump_json(),
                    MessageAttributes={
                        "severity": {"DataType": "String", "StringValue": "critical"},
                        "kind": {"DataType": "String", "StringValue": "model_refused"},
                    },
                )
            except aws_errors() as exc:
                raise PortError(f"SNS {self.topic_arn}: refusal alert not sent: {exc}") from exc
        self.event(MODEL_REFUSED, refusal)


class SageMakerPackageMirror:
    """:class:`~zaindari.deployment.PackageMirror` on the SageMaker Model Registry.

    Each version is one model package (``CustomerMetadataProperties`` name the registry version
    and content hash) in the group named after the model. ``image_uri`` (the serving container)
    fills the package's inference specification when set.
    """

    def __init__(self, factory: ClientFactory, image_uri: str | None = None) -> None:
        self.factory = factory
        self.image_uri = image_uri
        self._groups: set[str] = set()
        self._packages: dict[tuple[str, int], tuple[str, str]] = {}  # -> (arn, status)

    @property
    def _client(self) -> Any:
        return self.factory.client("sagemaker")

    def group_name(self, model: str) -> str:
        return sagemaker_name(model)

    def _ensure_group(self, model: str) -> str:
        group = self.group_name(model)
        if group in self._groups:
            return group
        try:
            self._client.describe_model_package_group(ModelPackageGroupName=group)
        except aws_errors() as exc:
            if _error_code(exc) not in ("ValidationException", "ResourceNotFound"):
                raise PortError(f"SageMaker model package group {group}: {exc}") from exc
            try:
                self._client.create_model_package_group(
                    ModelPackageGroupName=group,
                    ModelPackageGroupDescription=f"Zaindari model {model} (mirrors the Zaindari registry)",
                )
            except aws_errors() as create_exc:
                raise PortError(f"SageMaker model package group {group}: {create_exc}") from create_exc
        self._groups.add(group)
        return group

    def _find(self, group: str, model: str, version: int) -> tuple[str, str] | None:
        cached = self._packages.get((model, version))
        if cached:
            return cached
        kwargs: dict[str, Any] = {"ModelPackageGroupName": group, "ModelPackageType": "Versioned"}
        try:
            while True:
                page = self._client.list_model_packages(**kwargs)
                for summary in page.get("ModelPackageSummaryList", []):
                    arn = summary["ModelPackageArn"]
                    described = self._client.describe_model_package(ModelPackageName=arn)
                    number = (described.get("CustomerMetadataProperties") or {}).get("zaindari_version")
                    if number and number.isdigit():
                        self._packages[(model, int(number))] = (arn, described.get("ModelApprovalStatus", ""))
                if not page.get("NextToken"):
                    break
                kwargs["NextToken"] = page["NextToken"]
        except aws_errors() as exc:
            raise PortError(f"SageMaker model packages of {group}: {exc}") from exc
        return self._packages.get((model, version))

    def sync(self, version: ModelVersion, status: ApprovalStatus, reason: str) -> str:
        group = self._ensure_group(version.model)
        found = self._find(group, version.model, version.version)
        metadata = {
            "zaindari_model": version.model,
            "zaindari_version": str(version.version),
            "content_hash": version.content_hash,
            "artifact_uri": version.artifact_uri[:256],
        }
        try:
            if found is None:
                request: dict[str, Any] = {
                    "ModelPackageGroupName": group,
                    "ModelPackageDescription": (
                        f"{version.model} version {version.version} ({version.task}), {version.artifact_uri}"
                    )[:1024],
                    "ModelApprovalStatus": status,
                    "CustomerMetadataProperties": metadata,
                }
                if self.image_uri:
                    request["InferenceSpecification"] = {
                        "Containers": [{"Image": self.image_uri, "ModelDataSource": model_data(version)}],
                        "SupportedContentTypes": ["text/csv", "application/json"],
                        "SupportedResponseMIMETypes": ["application/json"],
                    }
                arn = str(self._client.create_model_package(**request)["ModelPackageArn"])
                self._packages[(version.model, version.version)] = (arn, status)
                return arn
            arn, current = found
            if current != status:
                # the metadata is sent again: moto 5 drops it on an update that omits it
                self._client.update_model_package(
                    ModelPackageArn=arn,
                    ModelApprovalStatus=status,
                    ApprovalDescription=reason[:1024],
                    CustomerMetadataProperties=metadata,
                )
                self._packages[(version.model, version.version)] = (arn, status)
            return arn
        except aws_errors() as exc:
            raise PortError(f"SageMaker model package of {version.model} v{version.version}: {exc}") from exc


class SageMakerEndpointDeployer:
    """:class:`~zaindari.deployment.EndpointDeployer`: a serverless SageMaker endpoint per model.

    The container (``image_uri``, the serving image built from ``infra/serving``) loads the bundle
    from /opt/ml/model, where SageMaker copies the version's prefix (:func:`model_data`). ``UpdateEndpoint`` switches traffic to the new config without
    downtime; the old model and config stay (they are what a rollback can reuse).
    """

    def __init__(
        self,
        factory: ClientFactory,
        image_uri: str,
        role_arn: str,
        *,
        endpoint_name: str = "zaindari-{model}",
        memory_mb: int = 2048,
        max_concurrency: int = 5,
    ) -> None:
        self.factory = factory
        self.image_uri = image_uri
        self.role_arn = role_arn
        self.endpoint_name = endpoint_name
        self.memory_mb = memory_mb
        self.max_concurrency = max_concurrency

    def deploy(self, version: ModelVersion) -> dict[str, Any]:
        sm = self.factory.client("sagemaker")
        endpoint = sagemaker_name(self.endpoint_name.format(model=version.model))
        name = sagemaker_name(version.model[:40], f"v{version.version}", version.content_hash[:8])
        try:
            if not self._exists(sm.describe_model, ModelName=name):
                sm.create_model(
                    ModelName=name,
                    ExecutionRoleArn=self.role_arn,
                    PrimaryContainer={"Image": self.image_uri, "ModelDataSource": model_data(version)},
                    Tags=[
                        {"Key": "zaindari:model", "Value": version.model},
                        {"Key": "zaindari:version", "Value": str(version.version)},
                    ],
                )
            if not self._exists(sm.describe_endpoint_config, EndpointConfigName=name):
                sm.create_endpoint_config(
                    EndpointConfigName=name,
                    ProductionVariants=[
                        {
                            "VariantName": "AllTraffic",
                            "ModelName": name,
                            "ServerlessConfig": {
                                "MemorySizeInMB": self.memory_mb,
                                "MaxConcurrency": self.max_concurrency,
                            },
                        }
                    ],
                )
            try:
                current = sm.describe_endpoint(EndpointName=endpoint)
            except aws_errors() as exc:
                if _error_code(exc) != "ValidationException":
                    raise
                sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=name)
                action = "created"
            else:
                if current.get("EndpointConfigName") == name:
                    action = "unchanged"
                else:
                    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=name)
                    action = "updated"
        except aws_errors() as exc:
            raise PortError(f"SageMaker endpoint {endpoint}: {exc}") from exc
        return {"endpoint": endpoint, "endpoint_config": name, "model_name": name, "action": action}

    @staticmethod
    def _exists(describe: Any, **key: str) -> bool:
        try:
            describe(**key)
        except aws_errors() as exc:
            if _error_code(exc) in ("ValidationException", "ResourceNotFound"):
                return False
            raise
        return True


class IotEdgePublisher:
    """:class:`~zaindari.deployment.EdgePublisher`: the update on an IoT topic and on EventBridge.

    ``topic`` may hold ``{model}``. URLs are presigned GETs valid ``url_seconds``.
    """

    def __init__(
        self,
        factory: ClientFactory,
        notifier: EventBridgeSnsNotifier,
        *,
        topic: str = "zaindari/models/{model}/update",
        url_seconds: int = 86400,
    ) -> None:
        self.factory = factory
        self.notifier = notifier
        self.topic = topic
        self.url_seconds = url_seconds

    def update_for(self, version: ModelVersion, reason: str) -> ModelUpdate:
        bucket, prefix = _s3_location(version.artifact_uri)
        s3 = self.factory.client("s3")
        try:
            manifest = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST_FILE)["Body"].read()

            def url(name: str) -> str:
                return str(
                    s3.generate_presigned_url(
                        "get_object",
                        Params={"Bucket": bucket, "Key": prefix + name},
                        ExpiresIn=self.url_seconds,
                    )
                )

            urls = {name: url(name) for name in sorted(version.files)} | {MANIFEST_FILE: url(MANIFEST_FILE)}
        except aws_errors() as exc:
            raise PortError(f"{version.artifact_uri}: cannot link the bundle: {exc}") from exc
        now = datetime.now(UTC)
        return ModelUpdate(
            model=version.model,
            version=version.version,
            content_hash=version.content_hash,
            artifact_uri=version.artifact_uri,
            sha256=dict(sorted(version.files.items())),
            manifest_sha256=hashlib.sha256(manifest).hexdigest(),
            urls=urls,
            urls_expire_at=(now + timedelta(seconds=self.url_seconds)).isoformat().replace("+00:00", "Z"),
            reason=reason,
            at=now.isoformat().replace("+00:00", "Z"),
        )

    def publish(self, update: ModelUpdate) -> dict[str, Any]:
        topic = self.topic.format(model=update.model)
        try:
            self.factory.client("iot-data").publish(
                topic=topic, qos=1, payload=update.model_dump_json().encode()
            )
        except aws_errors() as exc:
            raise PortError(f"IoT topic {topic}: model update not published: {exc}") from exc
        self.notifier.event(MODEL_UPDATE, update)
        return {"topic": topic, "eventbridge": MODEL_UPDATE}


class S3RecentTraffic:
    """:class:`~zaindari.deployment.RecentTraffic`: the newest raw telemetry of the lake.

    Reads ``raw/telemetry/date=YYYY-MM-DD/`` partitions from the newest back (JSON Lines, gzipped
    or not, as ``score_event`` writes them; Parquet when pyarrow is installed) until ``limit``
    valid readings are found; returned in time order.
    """

    def __init__(self, factory: ClientFactory, bucket: str, prefix: str = "raw/telemetry/") -> None:
        self.factory = factory
        self.bucket = bucket
        self.prefix = prefix

    def _list(self, **kwargs: Any) -> list[dict[str, Any]]:
        s3 = self.factory.client("s3")
        pages: list[dict[str, Any]] = []
        kwargs = {"Bucket": self.bucket, **kwargs}
        while True:
            page = s3.list_objects_v2(**kwargs)
            pages.append(page)
            if not page.get("IsTruncated"):
                return pages
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def _records(self, key: str, body: bytes) -> list[Any]:
        if key.endswith(".parquet"):
            import io

            import pyarrow.parquet as pq

            return list(pq.read_table(io.BytesIO(body)).to_pylist())
        text = (gzip.decompress(body) if key.endswith(".gz") else body).decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def recent_readings(self, limit: int) -> list[Reading]:
        from zaindari.contract import parse_readings

        s3 = self.factory.client("s3")
        readings: list[Reading] = []
        try:
            partitions = sorted(
                (
                    p["Prefix"]
                    for page in self._list(Prefix=self.prefix, Delimiter="/")
                    for p in page.get("CommonPrefixes", [])
                ),
                reverse=True,
            )
            for partition in partitions:
                objects = [o for page in self._list(Prefix=partition) for o in page.get("Contents", [])]
                for obj in sorted(objects, key=lambda o: o["LastModified"], reverse=True):
                    body = s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                    try:
                        records = self._records(obj["Key"], body)
                    except (ValueError, OSError, ImportError):
                        continue  # not telemetry this reader understands: the next file
                    readings += parse_readings(records).readings
                    if len(readings) >= limit:
                        break
                if len(readings) >= limit:
                    break
        except aws_errors() as exc:
            raise PortError(f"s3://{self.bucket}/{self.prefix}: recent telemetry unreadable: {exc}") from exc
        readings.sort(key=lambda r: r.timestamp)
        return readings[-limit:]


class S3MaintenanceLog:
    """:class:`~zaindari.deployment.MaintenanceLabels`: every JSON Lines file under the lake's
    ``labels/maintenance/`` (:mod:`zaindari.maintenance`), listed and read with the lake's
    :class:`~zaindari.infra.s3_files.S3FileStore`; none there, an empty log. A file that is not a
    log fails the gate's shadow step with the file and line named."""

    def __init__(self, factory: ClientFactory, bucket: str, prefix: str = "") -> None:
        from zaindari.maintenance import MAINTENANCE_PREFIX

        self.store = S3FileStore(factory)
        self.folder = f"s3://{bucket}/{prefix or MAINTENANCE_PREFIX}".rstrip("/") + "/"

    def maintenance_log(self) -> MaintenanceLog:
        from zaindari.maintenance import MaintenanceError, read_maintenance_log

        try:
            files = self.store.list_files(self.folder)
            return read_maintenance_log([f.uri for f in files], self.store.read_bytes)
        except FileStoreError as exc:
            raise PortError(f"{self.folder}: maintenance log unreadable: {exc}") from exc
        except MaintenanceError as exc:
            raise PortError(str(exc)) from exc


def glue_job_output(factory: ClientFactory, job_name: str, run_id: str, argument: str = "--output") -> str:
    """Where a Glue job run wrote its result: its ``--output`` argument (``GetJobRun``)."""
    try:
        run = factory.client("glue").get_job_run(JobName=job_name, RunId=run_id)["JobRun"]
    except aws_errors() as exc:
        raise PortError(f"Glue job {job_name} run {run_id}: cannot be read: {exc}") from exc
    output = (run.get("Arguments") or {}).get(argument)
    if not output:
        raise PortError(f"Glue job {job_name} run {run_id} has no {argument} argument: no bundle to register")
    return str(output)


def emr_serverless_job_output(
    factory: ClientFactory, application_id: str, job_run_id: str, job_name: str, argument: str = "--output"
) -> str | None:
    """Where an EMR Serverless training run wrote its bundle (its ``--output`` entry-point argument);
    ``None`` when the run is not one of ``job_name`` (start_retraining names runs ``<job>-<run id>``)."""
    try:
        run = factory.client("emr-serverless").get_job_run(applicationId=application_id, jobRunId=job_run_id)[
            "jobRun"
        ]
    except aws_errors() as exc:
        raise PortError(
            f"EMR Serverless run {job_run_id} of {application_id}: cannot be read: {exc}"
        ) from exc
    if not str(run.get("name") or "").startswith(job_name):
        return None
    arguments = list(((run.get("jobDriver") or {}).get("sparkSubmit") or {}).get("entryPointArguments") or [])
    for flag, value in itertools.pairwise(arguments):
        if flag == argument:
            return str(value)
    raise PortError(f"EMR Serverless run {job_run_id} has no {argument} argument: no bundle to register")


def _conforms() -> None:
    """Static check (mypy) that the classes satisfy the deployment's ports."""
    from zaindari.deployment import (
        EdgePublisher,
        EndpointDeployer,
        LifecycleNotifier,
        MaintenanceLabels,
        PackageMirror,
        RecentTraffic,
    )

    f = ClientFactory.__new__(ClientFactory)
    n: LifecycleNotifier = EventBridgeSnsNotifier(f, None, "default")
    _m: PackageMirror = SageMakerPackageMirror(f)
    _d: EndpointDeployer = SageMakerEndpointDeployer(f, "image", "role")
    _e: EdgePublisher = IotEdgePublisher(f, EventBridgeSnsNotifier(f, None, "default"))
    _t: RecentTraffic = S3RecentTraffic(f, "b")
    _l: MaintenanceLabels = S3MaintenanceLog(f, "b")
    del n


def build_model_lifecycle(settings: Settings, factory: ClientFactory) -> ModelLifecycle:
    """The register / deploy / rollback use cases wired to DynamoDB, S3, SageMaker, IoT, EventBridge and SNS."""
    from zaindari.deployment import ModelLifecycle
    from zaindari.infra.registry_store import build_model_registry
    from zaindari.registry import GatePolicy

    notifier = EventBridgeSnsNotifier(factory, settings.alert_topic_arn, settings.event_bus_name)
    endpoint = None
    if settings.sagemaker_image_uri and settings.sagemaker_execution_role_arn:
        endpoint = SageMakerEndpointDeployer(
            factory,
            settings.sagemaker_image_uri,
            settings.sagemaker_execution_role_arn,
            endpoint_name=settings.sagemaker_endpoint_name,
            memory_mb=settings.sagemaker_serverless_memory_mb,
            max_concurrency=settings.sagemaker_serverless_max_concurrency,
        )
    return ModelLifecycle(
        build_model_registry(settings, factory),
        notifier,
        mirror=SageMakerPackageMirror(factory, settings.sagemaker_image_uri)
        if settings.sagemaker_model_registry
        else None,
        endpoint=endpoint,
        edge=IotEdgePublisher(
            factory, notifier, topic=settings.model_update_topic, url_seconds=settings.presigned_url_seconds
        )
        if settings.model_update_topic
        else None,
        traffic=S3RecentTraffic(factory, settings.lake_bucket),
        labels=S3MaintenanceLog(factory, settings.lake_bucket),
        policy=GatePolicy(
            tolerance=settings.promotion_tolerance,
            alert_rate_bound=settings.promotion_alert_rate_bound,
            manual_approval=settings.promotion_manual_approval,
        ),
        shadow_readings=settings.shadow_readings,
    )
