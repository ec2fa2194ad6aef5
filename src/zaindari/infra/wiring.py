"""Composition roots: build each use case from :class:`~zaindari.settings.Settings` for AWS.

Adapters call these once per container; nothing here runs at import time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from zaindari.event_scoring import EventScoring
from zaindari.infra.aws import AwsConfig, ClientFactory
from zaindari.infra.aws_ports import DynamoStateStore, S3LakeWriter, S3RejectSink, SnsEventBridgeAlertSink
from zaindari.infra.model_store import ModelSource
from zaindari.settings import Settings, SettingsError

if TYPE_CHECKING:
    from zaindari.drift import DriftMonitor, SummaryStore
    from zaindari.file_drops import DropScoring
    from zaindari.retraining import Retraining

__all__ = [
    "build_drift_monitor",
    "build_drop_scoring",
    "build_event_scoring",
    "build_retraining",
    "client_factory",
]


def client_factory(
    env: dict[str, str] | None = None, *, validate_parameters: bool = True, fixed_user_agent: bool = False
) -> ClientFactory:
    """AWS clients from the standard configuration (``AWS_ENDPOINT_URL`` selects moto/LocalStack).

    ``validate_parameters=False`` skips botocore's client-side parameter check and
    ``fixed_user_agent=True`` makes the User-Agent header once (see
    :class:`~zaindari.infra.aws.AwsConfig`): for a hot path whose calls are fixed and tested.
    """
    import os

    config = AwsConfig.from_env(env if env is not None else dict(os.environ))
    if not validate_parameters:
        config = config.model_copy(update={"validate_parameters": False})
    if fixed_user_agent:
        config = config.model_copy(update={"fixed_user_agent": True})
    return ClientFactory(config, botocore_only=True)


def model_source(settings: Settings, factory: ClientFactory) -> ModelSource:
    """The model of a scoring function (or of monitor_drift): a folder, an s3:// prefix or a registry:// alias (re-read
    every ``model_alias_ttl_seconds``)."""
    return ModelSource(
        str(settings.model_path),
        settings.model_cache_dir,
        factory,
        registry_table=settings.registry_table,
        alias_ttl=settings.model_alias_ttl_seconds,
    )


def build_event_scoring(settings: Settings, factory: ClientFactory) -> EventScoring:
    """The ``score_event`` use case wired to DynamoDB, S3, SNS and EventBridge."""
    if not settings.model_path:
        raise SettingsError("ZAINDARI_MODEL_PATH must name the model bundle (a folder or s3:// prefix)")
    return EventScoring(
        model=model_source(settings, factory),
        states=DynamoStateStore(factory, settings.state_table, settings.state_ttl_days),
        lake=S3LakeWriter(factory, settings.lake_bucket, settings.scores_format),
        alerts=SnsEventBridgeAlertSink(factory, settings.alert_topic_arn, settings.event_bus_name),
        rejects=S3RejectSink(factory, settings.lake_bucket),
        limits=settings.limits,
        dedup_memory=settings.dedup_memory,
        threads=settings.onnx_threads,
        summaries=_summary_store(settings, factory),
    )


def _summary_store(settings: Settings, factory: ClientFactory) -> SummaryStore | None:
    from zaindari.infra.drift_ports import S3SummaryStore

    return S3SummaryStore(factory, settings.lake_bucket) if settings.drift_summaries else None


def build_drift_monitor(settings: Settings, factory: ClientFactory) -> DriftMonitor:
    """The ``monitor_drift`` use case wired to S3 (summaries), DynamoDB (triggers), EventBridge and SNS."""
    from datetime import timedelta

    from zaindari.drift import DriftMonitor, DriftThresholds
    from zaindari.infra.drift_ports import DynamoDriftTriggerLog, S3SummaryStore, SnsEventBridgeDriftNotifier

    return DriftMonitor(
        summaries=S3SummaryStore(factory, settings.lake_bucket),
        triggers=DynamoDriftTriggerLog(factory, settings.drift_state_table),
        notifier=SnsEventBridgeDriftNotifier(factory, settings.alert_topic_arn, settings.event_bus_name),
        thresholds=DriftThresholds(
            psi=settings.drift_psi,
            ks=settings.drift_ks,
            score_psi=settings.drift_score_psi,
            min_readings=settings.drift_min_readings,
            missing_rate=settings.drift_missing_rate,
            out_of_range_rate=settings.drift_out_of_range_rate,
            alert_rate_change=settings.drift_alert_rate_change,
        ),
        window=timedelta(hours=settings.drift_window_hours),
        min_interval=timedelta(hours=settings.drift_min_interval_hours),
    )


def build_drop_scoring(settings: Settings, factory: ClientFactory) -> DropScoring:
    """The ``score_batch`` use case wired to S3 (drops, lake), DynamoDB (ledger), SQS, Glue, SNS, EventBridge."""
    from zaindari.file_drops import DropConfig, DropScoring
    from zaindari.file_scoring import FileScoring, FileScoringOptions
    from zaindari.infra.file_ports import (
        DynamoDropLedger,
        GlueSparkRunner,
        S3DropObjects,
        S3FileSink,
        SqsPartQueue,
    )

    if not settings.model_path:
        raise SettingsError("ZAINDARI_MODEL_PATH must name the model bundle (a folder or s3:// prefix)")
    sink = S3FileSink(factory, settings.lake_bucket, settings.file_spool_dir)
    options = FileScoringOptions.from_settings(settings)
    return DropScoring(
        scoring=FileScoring(
            model=model_source(settings, factory),
            sink=sink,
            options=options,
            summaries=_summary_store(settings, factory),
        ),
        objects=S3DropObjects(factory),
        ledger=DynamoDropLedger(factory, settings.file_runs_table),
        manifests=sink,
        alerts=SnsEventBridgeAlertSink(factory, settings.alert_topic_arn, settings.event_bus_name),
        parts=SqsPartQueue(factory, settings.file_parts_queue_url) if settings.file_parts_queue_url else None,
        spark=(
            GlueSparkRunner(
                factory,
                settings.score_file_job,
                model=settings.model_path,
                lake=f"s3://{settings.lake_bucket}",
                keep_columns=options.keep_columns,
            )
            if settings.spark_bytes
            else None
        ),
        config=DropConfig(
            fanout_bytes=settings.fanout_bytes,
            part_bytes=settings.part_bytes,
            spark_bytes=settings.spark_bytes,
            lease_seconds=settings.file_lease_seconds,
            stale_seconds=settings.file_stale_hours * 3600,
        ),
    )


def build_retraining(
    settings: Settings, factory: ClientFactory, *, sleep: Callable[[float], None] | None = None
) -> Retraining:
    """The ``start_retraining`` use case wired to Glue (or EMR Serverless), DynamoDB, SNS and EventBridge."""
    from zaindari.infra.retraining_ports import (
        DynamoRunLog,
        EmrServerlessJobRunner,
        GlueJobRunner,
        SnsEventBridgeRetrainingAlerts,
    )
    from zaindari.retraining import JobRunner, Retraining, RetrainingConfig, parse_models

    runner: JobRunner
    if settings.training_runner == "emr-serverless":
        missing = [
            f"ZAINDARI_{name.upper()}"
            for name in ("emr_application_id", "emr_execution_role_arn", "emr_scripts_uri")
            if not getattr(settings, name)
        ]
        if missing:
            raise SettingsError(f"ZAINDARI_TRAINING_RUNNER=emr-serverless needs {', '.join(missing)}")
        runner = EmrServerlessJobRunner(
            factory,
            str(settings.emr_application_id),
            str(settings.emr_execution_role_arn),
            str(settings.emr_scripts_uri),
            settings.emr_spark_submit_parameters,
        )
    else:
        runner = GlueJobRunner(factory)
    config = RetrainingConfig(
        lake_uri=f"s3://{settings.lake_bucket}",
        spec_uri=settings.training_spec_uri,
        job_names={
            "build_training_set": settings.build_training_set_job,
            "train_model": settings.train_model_job,
        },
        scheduled_models=parse_models(settings.retrain_models),
        lookback_days=settings.retrain_lookback_days,
        start_attempts=settings.retrain_start_attempts,
        backoff_seconds=settings.retrain_backoff_seconds,
        lease_hours=settings.retrain_lease_hours,
    )
    return Retraining(
        runner,
        DynamoRunLog(factory, settings.runs_table),
        SnsEventBridgeRetrainingAlerts(factory, settings.alert_topic_arn, settings.event_bus_name),
        config,
        sleep=sleep or time.sleep,
    )
