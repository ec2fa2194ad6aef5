"""Composition roots: build each use case from :class:`~zaindari.settings.Settings` for AWS.

Adapters call these once per container; nothing here runs at import time.
"""

from __future__ import annotations

from zaindari.event_scoring import EventScoring
from zaindari.infra.aws import AwsConfig, ClientFactory
from zaindari.infra.aws_ports import DynamoStateStore, S3LakeWriter, S3RejectSink, SnsEventBridgeAlertSink
from zaindari.infra.model_store import ModelSource
from zaindari.settings import Settings, SettingsError

__all__ = ["build_event_scoring", "client_factory"]


def client_factory(env: dict[str, str] | None = None) -> ClientFactory:
    """AWS clients from the standard configuration (``AWS_ENDPOINT_URL`` selects moto/LocalStack)."""
    import os

    return ClientFactory(AwsConfig.from_env(env if env is not None else dict(os.environ)))


def build_event_scoring(settings: Settings, factory: ClientFactory) -> EventScoring:
    """The ``score_event`` use case wired to DynamoDB, S3, SNS and EventBridge."""
    if not settings.model_path:
        raise SettingsError("ZAINDARI_MODEL_PATH must name the model bundle (a folder or s3:// prefix)")
    return EventScoring(
        model=ModelSource(settings.model_path, settings.model_cache_dir, factory),
        states=DynamoStateStore(factory, settings.state_table, settings.state_ttl_days),
        lake=S3LakeWriter(factory, settings.lake_bucket, settings.scores_format),
        alerts=SnsEventBridgeAlertSink(factory, settings.alert_topic_arn, settings.event_bus_name),
        rejects=S3RejectSink(factory, settings.lake_bucket),
        limits=settings.limits,
        dedup_memory=settings.dedup_memory,
        threads=settings.onnx_threads,
    )
