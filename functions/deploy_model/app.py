"""deploy_model on Lambda: "Zaindari Model Promoted" or "Zaindari Model Rolled Back" -> ModelLifecycle
(deploy production to the SageMaker endpoint and the edge, sync the SageMaker Model Registry) -> a summary."""

from __future__ import annotations

import functools
import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from zaindari.deployment import ModelLifecycle
from zaindari.infra.deploy_ports import build_model_lifecycle
from zaindari.infra.wiring import client_factory
from zaindari.registry_events import MODEL_PROMOTED, MODEL_ROLLED_BACK, ProductionChanged
from zaindari.settings import Settings

settings = Settings.from_env(os.environ)  # bad configuration fails the first invocation, clearly
logger = Logger(service="deploy_model", level=settings.log_level)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Zaindari"), service="deploy_model"
)
tracer = Tracer(service="deploy_model")


@functools.cache
def lifecycle() -> ModelLifecycle:
    """The use cases, built once per container (clients, configuration)."""
    return build_model_lifecycle(settings, client_factory())


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    bridge = EventBridgeEvent(event)
    logger.set_correlation_id(bridge.get_id)
    if bridge.detail_type not in (MODEL_PROMOTED, MODEL_ROLLED_BACK):
        reason = f"no deployment trigger for {bridge.source} / {bridge.detail_type}"
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
        logger.info("event ignored", extra={"reason": reason})
        return {"status": "ignored", "reason": reason}
    change = ProductionChanged.model_validate(bridge.detail)
    # a PortError (a target failed) propagates: Lambda retries; deployment is idempotent
    outcome = lifecycle().on_production_changed(change)
    metrics.add_metric(
        name="Deployments" if outcome.status == "deployed" else "DeploymentsSkipped",
        unit=MetricUnit.Count,
        value=1,
    )
    logger.info("deployment " + outcome.status, extra=outcome.to_dict())
    return outcome.to_dict()
