"""start_retraining on Lambda: schedule, drift event, Glue / EMR Serverless job state change or HTTP
POST /retrain -> Retraining (start, record, advance or close a run) -> a summary or an HTTP response."""

from __future__ import annotations

import functools
import os
import uuid
from datetime import UTC, date, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field

from zaindari.infra.http_api import ERROR_CONTENT, json_response
from zaindari.infra.retraining_ports import normalise_job_state
from zaindari.infra.wiring import build_retraining, client_factory
from zaindari.ports import PortError
from zaindari.retraining import JobStateChange, Retraining, RetrainingOutcome, RetrainingRequest
from zaindari.settings import Settings

settings = Settings.from_env(os.environ)  # bad configuration fails the first invocation, clearly
logger = Logger(service="start_retraining", level=settings.log_level)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Zaindari"), service="start_retraining"
)
tracer = Tracer(service="start_retraining")
app = APIGatewayHttpResolver(enable_validation=True)

DRIFT_DETAIL_TYPE = "Zaindari Drift Detected"
_METRIC_OF = {
    "started": "RunsStarted",
    "advanced": "StagesStarted",
    "recorded": "TriggersRecorded",
    "duplicate": "TriggersDuplicate",
    "start_failed": "StartFailures",
    "closed": "RunsClosed",
    "ignored": "EventsIgnored",
}


@functools.cache
def retraining() -> Retraining:
    """The use case, built once per container (clients, configuration)."""
    return build_retraining(settings, client_factory())


class RetrainBody(BaseModel):
    """``POST /retrain``: which model, on which days of raw telemetry (inclusive, UTC)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,62}$")
    start: date
    end: date
    reason: str | None = Field(default=None, max_length=1000)


class DriftDetail(BaseModel):
    """The detail of a ``Zaindari Drift Detected`` event (other keys are kept as evidence)."""

    model_config = ConfigDict(extra="allow")

    model: str
    evidence: Any = None


def _observe(outcomes: list[RetrainingOutcome], trigger: str) -> None:
    metrics.add_dimension(name="trigger", value=trigger)
    for outcome in outcomes:
        metrics.add_metric(name=_METRIC_OF[outcome.status], unit=MetricUnit.Count, value=1)
        log = logger.warning if outcome.status == "start_failed" else logger.info
        log(
            "retraining " + outcome.status,
            extra={"trigger": trigger, **outcome.model_dump(exclude_none=True)},
        )


def _event_time(event: EventBridgeEvent) -> datetime:
    try:
        return datetime.fromisoformat(event.time.replace("Z", "+00:00")).astimezone(UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)


# -- EventBridge: the schedule, drift events, job state changes


def _eventbridge(event: EventBridgeEvent) -> dict[str, Any]:
    detail_type = event.detail_type
    detail = event.detail or {}
    if event.source == "aws.events" and detail_type == "Scheduled Event":
        trigger, outcomes = "schedule", retraining().scheduled(event.get_id, _event_time(event))
    elif detail_type == DRIFT_DETAIL_TYPE:
        drift = DriftDetail.model_validate(detail)
        evidence = drift.evidence if drift.evidence is not None else drift.model_extra or None
        request = RetrainingRequest(
            model=drift.model,
            trigger="drift",
            request_id=event.get_id,
            requested_at=_event_time(event),
            evidence=evidence,
            requested_by=event.source,
        )
        trigger, outcomes = "drift", [retraining().request(request)]
    elif event.source in ("aws.glue", "aws.emr-serverless"):
        change = JobStateChange(
            job_name=detail.get("jobName"),
            job_run_id=str(detail.get("jobRunId") or ""),
            state=normalise_job_state(str(detail.get("state", ""))),
            message=detail.get("message") or detail.get("stateDetails"),
            event_id=event.get_id,
        )
        trigger, outcomes = "job_state", [retraining().on_job_state(change)]
    else:
        logger.warning("event ignored", extra={"source": event.source, "detail_type": detail_type})
        return {"status": "ignored", "reason": f"no retraining trigger for {event.source} / {detail_type}"}
    _observe(outcomes, trigger)
    return {"trigger": trigger, "outcomes": [o.model_dump(mode="json", exclude_none=True) for o in outcomes]}


# -- HTTP: POST /retrain (API Gateway HTTP API, IAM auth)


_OUTCOME_SCHEMA: dict[str, Any] = RetrainingOutcome.model_json_schema(mode="serialization")


@app.post(
    "/retrain",
    summary="Retrain a model on a range of days",
    tags=["retraining"],
    responses={
        202: {
            "description": "Started, or recorded on the model's run already in progress (the outcome says which)",
            "content": {"application/json": {"schema": _OUTCOME_SCHEMA}},
        },
        400: {
            "description": "Invalid request: nothing was started; the errors name each field",
            "content": ERROR_CONTENT,
        },
        502: {
            "description": "The job could not be started after its attempts: the run is closed and alerted",
            "content": {"application/json": {"schema": _OUTCOME_SCHEMA}},
        },
        503: {
            "description": "A downstream service failed: nothing was started; retry",
            "content": ERROR_CONTENT,
        },
    },
)
def post_retrain(body: RetrainBody) -> Response[str]:
    raw_context = app.current_event.raw_event.get("requestContext") or {}
    caller = ((raw_context.get("authorizer") or {}).get("iam") or {}).get("userArn")
    request = RetrainingRequest(
        model=body.model,
        trigger="manual",
        request_id=app.current_event.request_context.request_id or str(uuid.uuid4()),
        requested_at=datetime.now(UTC),
        start=body.start,
        end=body.end,
        evidence={"reason": body.reason} if body.reason else None,
        requested_by=caller or "http",
    )
    outcome = retraining().request(request)
    _observe([outcome], "http")
    status = 502 if outcome.status == "start_failed" else 202
    return json_response(status, outcome.model_dump(mode="json", exclude_none=True))


@app.exception_handler(Exception)
def _validation_or_internal(exc: Exception) -> Response[str]:
    from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

    if isinstance(exc, RequestValidationError):
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        return json_response(
            400, {"message": "invalid retraining request: nothing was started", "errors": errors}
        )
    if isinstance(exc, ValueError):  # the request's own rules (start after end ...)
        return json_response(400, {"message": f"invalid retraining request: {exc}"})
    if isinstance(exc, PortError):
        logger.exception("a downstream service failed")
        return json_response(503, {"message": "a downstream service failed; retry"})
    logger.exception("unhandled error")
    return json_response(500, {"message": "internal error"})


# -- entry point


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if event.get("version") == "2.0" and isinstance(event.get("requestContext"), dict):
        logger.append_keys(trigger="http")
        metrics.add_metric(name="HttpRequests", unit=MetricUnit.Count, value=1)
        return app.resolve(event, context)
    bridge = EventBridgeEvent(event)
    logger.set_correlation_id(bridge.get_id)
    # a PortError propagates: Lambda retries the asynchronous invocation, then dead-letters it
    return _eventbridge(bridge)
