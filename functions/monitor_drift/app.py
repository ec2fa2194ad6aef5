"""monitor_drift on Lambda: an EventBridge schedule -> DriftMonitor (merge the window's summaries,
assess drift against the production bundle's baseline) -> at most one ``Zaindari Drift Detected``
event per model per minimum interval, an SNS alert for people, and a summary of the check."""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from zaindari.drift import DriftMonitor, baseline_of
from zaindari.infra.model_store import ModelSource
from zaindari.infra.wiring import build_drift_monitor, client_factory, model_source
from zaindari.settings import Settings, SettingsError

settings = Settings.from_env(os.environ)  # bad configuration fails the first invocation, clearly
logger = Logger(service="monitor_drift", level=settings.log_level)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Zaindari"), service="monitor_drift"
)


@functools.cache
def monitor() -> tuple[DriftMonitor, ModelSource]:
    """The use case and the production bundle's source (a folder, an s3:// prefix, or
    ``registry://<model>/production``: the alias re-read every ZAINDARI_MODEL_ALIAS_TTL_SECONDS, so a
    promotion or rollback is followed without a new container), built once per container."""
    if not settings.model_path:
        raise SettingsError(
            "ZAINDARI_MODEL_PATH must name the production model bundle (a folder, s3:// prefix or registry:// alias)"
        )
    factory = client_factory()
    return build_drift_monitor(settings, factory), model_source(settings, factory)


def _check_time(event: EventBridgeEvent) -> datetime:
    try:
        return datetime.fromisoformat(event.time.replace("Z", "+00:00")).astimezone(UTC)
    except (TypeError, ValueError, AttributeError):
        return datetime.now(UTC)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    bridge = EventBridgeEvent(event)
    logger.set_correlation_id(bridge.get_id)
    use_case, model = monitor()
    bundle = model()  # the production bundle: its version labels the summaries to merge
    check = use_case.check(baseline_of(bundle), bundle.model_version, _check_time(bridge))
    metrics.add_metric(name=f"Drift_{check.status}", unit=MetricUnit.Count, value=1)
    report = check.report
    summary: dict[str, Any] = {
        "status": check.status,
        "model_version": bundle.model_version,
        "ignored_summaries": check.ignored_summaries,
    }
    if report is not None:
        summary |= {
            "window": [report.window_start, report.window_end],
            "scored": report.scored,
            "drifted_features": report.drifted_features,
            "drifted_sensors": report.drifted_sensors,
            "quality_issues": report.quality_issues,
        }
    log = logger.warning if check.status == "triggered" else logger.info
    log("drift check " + check.status, extra=summary)
    return summary
