"""score_event on Lambda: IoT rule, SQS, Kinesis, EventBridge and HTTP telemetry -> EventScoring ->
partial batch response (SQS, Kinesis), HTTP response, or a summary (IoT, EventBridge).

Cold start: what only one trigger needs (the batch utility, the HTTP resolver with its OpenAPI
models, the X-Ray SDK) is imported on the first event that needs it; the cyclic garbage collector
is paused while the modules load and again through the first event (what they build lives as long
as the container), then those objects are frozen out of later collections.
"""

# ruff: noqa: E402 (the collector is paused before the imports below)
import gc

gc.disable()  # cold start: no cyclic collections while the modules below load (resumed after them)

import base64
import binascii
import functools
import json
import os
from typing import TYPE_CHECKING, Annotated, Any

# Before numpy loads: OpenBLAS (numpy's linear algebra, which scoring never calls) otherwise starts
# a thread per core that spins in sched_yield for ~90 ms of CPU after the import, on a cold start
# that has at most a fraction of one core to spare.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from zaindari.contract import TelemetryPayload, parse_payload
from zaindari.event_scoring import EventScoring, InboundRecord, ScoringReport
from zaindari.infra.allocator import retain_freed_heap
from zaindari.infra.http_api import ERROR_CONTENT, json_response
from zaindari.infra.observability import first_call_without_gc, traced
from zaindari.infra.wiring import build_event_scoring, client_factory
from zaindari.settings import Settings

# What the imports built (modules, pydantic schemas, numpy) lives as long as the container: out of
# every later collection's scan. Collections during the imports cost ~50 ms CPU of a cold start.
# (Resumed here, before anything that can raise on bad configuration.)
gc.freeze()
gc.enable()

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
    from aws_lambda_powertools.utilities.typing import LambdaContext

settings = Settings.from_env(os.environ)  # bad configuration fails the first invocation, clearly
retain_freed_heap()  # a warm container reuses its heap instead of faulting it in on every batch
gc.set_threshold(20_000)  # a batch's short-lived objects are not rescanned ~20 times (~2 ms per 1,000)
logger = Logger(service="score_event", level=settings.log_level)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Zaindari"), service="score_event")


@functools.cache
def scoring() -> EventScoring:
    """The use case, built once per container (clients, model session)."""
    # botocore skips its client-side parameter check (the ports' calls are fixed and tested) and
    # makes the User-Agent header once, not twice per request (AwsConfig)
    return build_event_scoring(settings, client_factory(validate_parameters=False, fixed_user_agent=True))


def trigger_of(event: Any) -> str:
    """Which of the five triggers sent ``event`` (an IoT rule sends the device's JSON as is)."""
    if isinstance(event, dict):
        records = event.get("Records")
        if isinstance(records, list) and records and isinstance(records[0], dict):
            source = records[0].get("eventSource")
            if source == "aws:sqs":
                return "sqs"
            if source == "aws:kinesis":
                return "kinesis"
        if "detail-type" in event and "detail" in event and "source" in event:
            return "eventbridge"
        if event.get("version") == "2.0" and isinstance(event.get("requestContext"), dict):
            return "http"
    return "iot"


def _observe(report: ScoringReport, trigger: str) -> None:
    counts = report.counts()
    metrics.add_dimension(name="trigger", value=trigger)
    metrics.add_metric(name="ReadingsScored", unit=MetricUnit.Count, value=counts["readings_scored"])
    metrics.add_metric(name="ReadingsRejected", unit=MetricUnit.Count, value=counts["readings_rejected"])
    metrics.add_metric(name="ReadingsDuplicate", unit=MetricUnit.Count, value=counts["readings_duplicate"])
    metrics.add_metric(name="RecordsRetried", unit=MetricUnit.Count, value=counts["retry_records"])
    metrics.add_metric(name="Alerts", unit=MetricUnit.Count, value=counts["alerts"])
    metrics.add_metric(name="ScoringLatency", unit=MetricUnit.Milliseconds, value=report.work_seconds * 1000)
    logger.info(
        "batch scored",
        extra={
            "trigger": trigger,
            "model_version": report.model_version,
            **counts,
            "retry": report.retry_reasons,
        },
    )


# -- SQS and Kinesis: score the whole batch at once, then let Powertools build the partial response


def _score_batch(event: dict[str, Any], context: "LambdaContext", trigger: str) -> dict[str, Any]:
    from aws_lambda_powertools.utilities.batch import EventType, process_partial_response
    from aws_lambda_powertools.utilities.data_classes import KinesisStreamEvent

    if trigger == "sqs":
        event_type = EventType.SQS
        # the records' two fields read from the event as AWS sends it: the batch utility below makes
        # its own SQSRecord of each record (making them twice cost ~0.15 ms per 1,000 records)
        inbound = [InboundRecord(r["messageId"], r["body"], "sqs") for r in event["Records"]]
    else:
        event_type = EventType.KinesisDataStreams
        inbound = []
        for r in KinesisStreamEvent(event).records:
            try:
                payload: Any = r.kinesis.data_as_bytes()
            except (binascii.Error, ValueError):
                payload = r.kinesis.data  # not base64: the contract will reject it with its reason
            inbound.append(InboundRecord(r.kinesis.sequence_number, payload, "kinesis"))
    report = scoring().score_records(inbound)
    _observe(report, trigger)

    # the records to retry with their reasons (usually none): the handler keeps only these, not the
    # report, which the processor (kept for the container's life) would hold until the next batch
    retry = {rid: report.retry_reasons.get(rid, "retry") for rid in report.retry_ids}
    if not retry:
        # nothing to hand back (every record scored, rejected to the dead letters, or a duplicate):
        # the response the processor gives when no record failed, without its walk over the batch
        # (a data class and two handler calls per record: ~1 ms per 1,000 records)
        return {"batchItemFailures": []}

    def record_handler(record: Any) -> None:
        record_id = record.message_id if trigger == "sqs" else record.kinesis.sequence_number
        if record_id in retry:
            raise RuntimeError(retry[record_id])

    return process_partial_response(
        event=event, record_handler=record_handler, processor=_processor(event_type), context=context
    )


@functools.cache
def _processor(event_type: "EventType") -> "BatchProcessor":
    """One batch processor per event type for the container's life, as Powertools' examples make it
    at module level. A processor holds bound methods of itself (a reference cycle): one made per
    batch left the whole batch (its records, our report and its 1,000 score rows) to the cyclic
    garbage collector, a young-generation collection every ~3 batches in the handler's thread."""
    from aws_lambda_powertools.utilities.batch import BatchProcessor

    return BatchProcessor(event_type=event_type)


# -- IoT rule and EventBridge: one record per invocation (asynchronous: raising makes Lambda retry)


class RetryableFailure(RuntimeError):
    """A downstream system failed; the asynchronous invocation is retried by Lambda."""


def _score_single(payload: Any, record_id: str, trigger: str) -> dict[str, Any]:
    report = scoring().score_records([InboundRecord(record_id, payload, trigger)])
    _observe(report, trigger)
    if report.retry_ids:
        raise RetryableFailure("; ".join(report.retry_reasons.values()))
    return {"status": report.status[record_id], **report.counts(), "model_version": report.model_version}


# -- HTTP (API Gateway HTTP API and Lambda function URLs, payload format 2.0)


@functools.cache
def http_app() -> "APIGatewayHttpResolver":
    """The HTTP routes, with their OpenAPI schema (built on the first HTTP event)."""
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
    from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
    from aws_lambda_powertools.event_handler.openapi.params import Body

    app = APIGatewayHttpResolver(enable_validation=True)

    @app.post(
        "/readings",
        summary="Score one reading or a batch",
        tags=["telemetry"],
        responses={
            200: {
                "description": "Scored: scores, alerts, the readings rejected with their reasons, duplicates"
            },
            400: {
                "description": "Invalid telemetry: nothing was scored; the errors name each field",
                "content": ERROR_CONTENT,
            },
            413: {"description": "Payload above ZAINDARI_MAX_PAYLOAD_BYTES", "content": ERROR_CONTENT},
            503: {
                "description": "A downstream service failed: nothing is lost, retry after Retry-After",
                "content": ERROR_CONTENT,
            },
        },
    )
    def post_readings(payload: Annotated[TelemetryPayload, Body()]) -> Any:
        # the body is parsed again with the receiver's clock and limits (future skew, sizes)
        request_id = app.current_event.request_context.request_id or "http"
        answer = scoring().answer_http(app.current_event.decoded_body or "", request_id)
        if answer.report is not None:
            _observe(answer.report, "http")
        elif answer.status == 400:
            metrics.add_metric(
                name="ReadingsRejected", unit=MetricUnit.Count, value=len(answer.body["errors"])
            )
        return json_response(answer.status, answer.body, answer.headers)

    @app.get("/health", summary="Liveness and the model version in use", tags=["ops"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "model_version": scoring().model().model_version}

    @app.exception_handler(Exception)
    def validation_or_internal(exc: Exception) -> Any:
        # RecursionError: a body nested deeper than the JSON parser recurses (the request's fault)
        if isinstance(exc, RequestValidationError | RecursionError):
            # report the contract's own field errors (the schema check only names a union branch)
            parsed = parse_payload(app.current_event.decoded_body or "", limits=settings.limits)
            errors = [r.to_dict() for r in parsed.rejections] or [
                {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
                for e in (exc.errors() if isinstance(exc, RequestValidationError) else [])
            ]
            metrics.add_metric(name="ReadingsRejected", unit=MetricUnit.Count, value=max(len(errors), 1))
            return json_response(400, {"message": "invalid telemetry: nothing was scored", "errors": errors})
        logger.exception("unhandled error")
        return json_response(500, {"message": "internal error"})

    return app


def _http(event: dict[str, Any], context: "LambdaContext") -> dict[str, Any]:
    metrics.add_metric(name="HttpRequests", unit=MetricUnit.Count, value=1)
    body = event.get("body") or ""
    size = (
        len(body.encode())
        if not event.get("isBase64Encoded")
        else len(base64.b64decode(body, validate=False))
    )
    if size > settings.max_payload_bytes:
        return {
            "statusCode": 413,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps(
                {"message": f"payload is {size} bytes, above the limit of {settings.max_payload_bytes}"}
            ),
        }
    return http_app().resolve(event, context)


# -- entry point


@first_call_without_gc  # what the first event builds (clients, model) is frozen after it
@logger.inject_lambda_context(clear_state=True)
@traced("score_event")
@metrics.log_metrics
def lambda_handler(event: Any, context: "LambdaContext") -> dict[str, Any]:
    trigger = trigger_of(event)
    logger.append_keys(trigger=trigger)
    if trigger in ("sqs", "kinesis"):
        return _score_batch(event, context, trigger)
    if trigger == "http":
        return _http(event, context)
    if trigger == "eventbridge":
        logger.set_correlation_id(event.get("id"))
        return _score_single(event["detail"], str(event.get("id", context.aws_request_id)), "eventbridge")
    return _score_single(event, context.aws_request_id, "iot")
