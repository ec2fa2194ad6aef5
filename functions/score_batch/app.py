"""score_batch on Lambda: S3 drops (EventBridge "Object Created" or a direct S3 notification), fan-out
part messages (SQS) and score_file job state changes (EventBridge) -> DropScoring -> a summary per
drop, or a partial batch response (SQS).

Cold start: the use case (model session, pyarrow, clients) is built on the first event; the batch
utility is imported by the first SQS event.
"""

import functools
import os
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, S3Event
from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventBridgeNotificationEvent

from zaindari.infra.observability import traced
from zaindari.settings import Settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from zaindari.file_drops import DropOutcome, DropScoring
    from zaindari.file_scoring import FileSource

settings = Settings.from_env(os.environ)  # bad configuration fails the first invocation, clearly
logger = Logger(service="score_batch", level=settings.log_level)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Zaindari"), service="score_batch")
LEASE_MARGIN_SECONDS = 30.0  # a claim outlives its invocation by this much

_METRIC_OF = {
    "scored": "FilesScored",
    "failed": "FilesFailed",
    "duplicate": "FilesDuplicate",
    "busy": "FilesBusy",
    "fanned_out": "FilesFannedOut",
    "spark": "FilesToSpark",
    "part_scored": "PartsScored",
    "ignored": "EventsIgnored",
}


@functools.cache
def drops() -> "DropScoring":
    """The use case, built once per container (clients, model session)."""
    from zaindari.infra.wiring import build_drop_scoring, client_factory

    return build_drop_scoring(settings, client_factory())


class RetryableFailure(RuntimeError):
    """A downstream service failed; the asynchronous invocation is retried by Lambda."""


def trigger_of(event: Any) -> str:
    """Which trigger sent ``event``: ``s3``, ``eventbridge`` (S3 Object Created), ``glue``, ``sqs``."""
    if isinstance(event, dict):
        records = event.get("Records")
        if isinstance(records, list) and records and isinstance(records[0], dict):
            source = records[0].get("eventSource")
            if source == "aws:s3":
                return "s3"
            if source == "aws:sqs":
                return "sqs"
        if event.get("source") == "aws.s3" and event.get("detail-type") == "Object Created":
            return "eventbridge"
        if event.get("source") == "aws.glue" and event.get("detail-type") == "Glue Job State Change":
            return "glue"
    return "unknown"


def _lease(context: "LambdaContext") -> float:
    return context.get_remaining_time_in_millis() / 1000 + LEASE_MARGIN_SECONDS


def _observe(outcome: "DropOutcome", trigger: str) -> None:
    metrics.add_metric(name=_METRIC_OF[outcome.status], unit=MetricUnit.Count, value=1)
    if outcome.status in ("scored", "failed", "part_scored"):
        metrics.add_metric(name="RowsIn", unit=MetricUnit.Count, value=outcome.rows_in)
        metrics.add_metric(name="RowsScored", unit=MetricUnit.Count, value=outcome.rows_scored)
        metrics.add_metric(name="RowsQuarantined", unit=MetricUnit.Count, value=outcome.rows_quarantined)
    if outcome.alerts:
        metrics.add_metric(name="FileAlerts", unit=MetricUnit.Count, value=outcome.alerts)
    log = logger.warning if outcome.status == "failed" else logger.info
    log("drop " + outcome.status, extra={"trigger": trigger, **outcome.model_dump(exclude_none=True)})


# -- drops: S3 notifications and EventBridge Object Created (asynchronous: raising retries)


def _sources(event: dict[str, Any], trigger: str) -> list["FileSource"]:
    from urllib.parse import unquote_plus

    from zaindari.file_scoring import FileSource

    if trigger == "s3":
        out = []
        for record in S3Event(event).records:
            if not record.event_name.startswith("ObjectCreated:"):
                continue
            obj = record.s3.get_object
            out.append(
                FileSource(
                    bucket=record.s3.bucket.name,
                    key=unquote_plus(obj.key),  # keys in S3 notifications are URL-encoded
                    etag=obj.etag or None,
                    version_id=obj.version_id or None,
                    size=obj.size,
                )
            )
        return out
    detail = S3EventBridgeNotificationEvent(event).detail
    obj = detail.object
    return [
        FileSource(
            bucket=detail.bucket.name,
            key=obj.key,
            etag=obj.etag or None,
            version_id=obj.get("version-id") or None,  # absent when the bucket is not versioned
            size=obj.size,
        )
    ]


def _score_drops(event: dict[str, Any], context: "LambdaContext", trigger: str) -> dict[str, Any]:
    from zaindari.ports import PortError

    outcomes: list[dict[str, Any]] = []
    failures: list[str] = []
    for source in _sources(event, trigger):
        logger.append_keys(object_key=source.key, source_id=source.source_id)
        try:
            outcome = drops().score_drop(source, owner=context.aws_request_id, lease_seconds=_lease(context))
        except PortError as exc:
            logger.warning("drop not scored: a downstream service failed", extra={"error": str(exc)})
            failures.append(f"{source.key}: {exc}")
            continue
        _observe(outcome, trigger)
        outcomes.append(outcome.model_dump(mode="json", exclude_none=True))
    if failures:  # the drops that succeeded answer "duplicate" on the retry
        raise RetryableFailure("; ".join(failures))
    return {"trigger": trigger, "outcomes": outcomes}


def _glue_state_change(event: dict[str, Any]) -> dict[str, Any]:
    from zaindari.ports import PortError

    detail = EventBridgeEvent(event).detail
    state = str(detail.get("state", ""))
    if state not in ("SUCCEEDED", "FAILED", "TIMEOUT", "STOPPED", "ERROR"):
        return {"trigger": "glue", "outcomes": [], "message": f"state {state}: nothing to do"}
    try:
        outcome = drops().complete_spark_run(
            str(detail.get("jobRunId", "")),
            succeeded=state == "SUCCEEDED",
            message=str(detail.get("message") or state),
        )
    except PortError as exc:
        raise RetryableFailure(str(exc)) from exc
    _observe(outcome, "glue")
    return {"trigger": "glue", "outcomes": [outcome.model_dump(mode="json", exclude_none=True)]}


# -- fan-out parts (SQS): one part per message, failures handed back one by one


def _score_parts(event: dict[str, Any], context: "LambdaContext") -> dict[str, Any]:
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

    from zaindari.file_drops import FilePartMessage

    def record_handler(record: Any) -> None:
        message = FilePartMessage.model_validate_json(record.body)  # a malformed message goes to the DLQ
        logger.append_keys(object_key=message.source.key, part=message.part.index)
        outcome = drops().score_part(message, owner=context.aws_request_id)
        _observe(outcome, "sqs")

    processor = BatchProcessor(event_type=EventType.SQS)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )


# -- entry point


@logger.inject_lambda_context(clear_state=True)
@traced("score_batch")
@metrics.log_metrics
def lambda_handler(event: Any, context: "LambdaContext") -> dict[str, Any]:
    trigger = trigger_of(event)
    logger.append_keys(trigger=trigger)
    metrics.add_dimension(name="trigger", value=trigger)
    if trigger == "sqs":
        return _score_parts(event, context)
    if trigger in ("s3", "eventbridge"):
        if trigger == "eventbridge":
            logger.set_correlation_id(event.get("id"))
        return _score_drops(event, context, trigger)
    if trigger == "glue":
        return _glue_state_change(event)
    logger.warning("event ignored: not a drop, a part or a score_file job state change")
    metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
    return {"trigger": trigger, "outcomes": [], "message": "not an event score_batch handles"}
