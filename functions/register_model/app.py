"""register_model on Lambda: Glue or EMR Serverless job state change (train_model succeeded) or "Zaindari Model Trained"
-> ModelLifecycle.register_trained_bundle (verify, register under staging, mirror, gate) -> a summary.

A refused bundle is not an error of the function: it is alerted (SNS, EventBridge) and reported.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from zaindari.deployment import ModelLifecycle
from zaindari.infra.deploy_ports import build_model_lifecycle, emr_serverless_job_output, glue_job_output
from zaindari.infra.wiring import client_factory
from zaindari.registry_events import MODEL_TRAINED, ModelTrained
from zaindari.settings import Settings

settings = Settings.from_env(os.environ)  # bad configuration fails the first invocation, clearly
logger = Logger(service="register_model", level=settings.log_level)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Zaindari"), service="register_model"
)
tracer = Tracer(service="register_model")

_METRIC_OF = {
    "refused": "BundlesRefused",
    "registered": "VersionsRegistered",
    "kept_in_staging": "ChallengersKept",
    "awaiting_approval": "AwaitingApproval",
    "promoted": "VersionsPromoted",
}


@functools.cache
def lifecycle() -> ModelLifecycle:
    """The use cases, built once per container (clients, configuration)."""
    return build_model_lifecycle(settings, client_factory())


def _trained(event: EventBridgeEvent) -> ModelTrained | str:
    """The bundle a training event points at, or why the event is ignored."""
    detail = event.detail or {}
    if event.source == "aws.glue":
        job, state = detail.get("jobName"), detail.get("state")
        if job != settings.train_model_job:
            return f"Glue job {job} is not the training job {settings.train_model_job}"
        if state != "SUCCEEDED":
            return f"training run ended {state}: start_retraining reports it"
        run_id = str(detail.get("jobRunId") or "")
        return ModelTrained(bundle_uri=glue_job_output(client_factory(), job, run_id), run_id=run_id)
    if event.source == "aws.emr-serverless":
        state, run_id = detail.get("state"), str(detail.get("jobRunId") or "")
        if state != "SUCCESS":
            return f"EMR Serverless run ended {state}: start_retraining reports it"
        output = emr_serverless_job_output(
            client_factory(), str(detail.get("applicationId") or ""), run_id, settings.train_model_job
        )
        if output is None:
            return f"EMR Serverless run {run_id} is not a {settings.train_model_job} run"
        return ModelTrained(bundle_uri=output, run_id=run_id)
    if event.detail_type == MODEL_TRAINED:
        return ModelTrained.model_validate(detail)
    return f"no registration trigger for {event.source} / {event.detail_type}"


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    bridge = EventBridgeEvent(event)
    logger.set_correlation_id(bridge.get_id)
    trained = _trained(bridge)
    if isinstance(trained, str):
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
        logger.info("event ignored", extra={"reason": trained})
        return {"status": "ignored", "reason": trained}
    # a PortError propagates: Lambda retries the asynchronous invocation, then dead-letters it
    outcome = lifecycle().register_trained_bundle(
        trained.bundle_uri,
        model=trained.model,
        actor=f"register_model:{bridge.get_id}",
        trigger=bridge.detail_type,
    )
    metrics.add_metric(name=_METRIC_OF[outcome.status], unit=MetricUnit.Count, value=1)
    log = logger.warning if outcome.status == "refused" else logger.info
    log("bundle " + outcome.status, extra=outcome.to_dict())
    return outcome.to_dict()
