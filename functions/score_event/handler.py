"""score-event on OpenFaaS (python3-http) and `zaindari edge serve`: POST readings -> EventScoring
(the same use case as app.py's HTTP route) on the edge box (its SQLite buffer, local alerts, the
model model-sync installed) -> the same JSON body; GET -> the model version.

``handle`` is the template's entry (called from a thread); ``handle_async`` is the same function
for the edge server's event loop (RSGI): the same checks before scoring and the same answer after
it, the readings scored on the loop and the answer made while the disk flushes them
(:meth:`BatchingEventScoring.finish_http_async`)."""

import functools
import logging
from typing import Any

from zaindari.edge.http import HttpEvent, RequestIds, Response, guard, json_response, read_tokens
from zaindari.edge.wiring import BatchingEventScoring, build_edge_event_scoring, edge_settings
from zaindari.event_scoring import HttpAnswer

settings = edge_settings()  # bad configuration (or a missing token secret) fails the cold start
tokens = read_tokens(settings)
logger = logging.getLogger("zaindari.edge.score_event")
_request_ids = RequestIds()


@functools.cache
def scoring() -> BatchingEventScoring:
    """The use case on the process's edge box, built once per container."""
    return build_edge_event_scoring(settings)


def handle(event: HttpEvent, context: Any) -> Response:
    checked = _before_scoring(event)
    if not isinstance(checked, str):
        return checked
    try:
        answer = scoring().answer_http(event.body, checked)
    except Exception as exc:
        return _not_scored(exc)
    return _after_scoring(answer)


async def handle_async(event: HttpEvent, context: Any) -> Response:
    checked = _before_scoring(event)
    if not isinstance(checked, str):
        return checked
    # the answer made while the disk flushes the group (finish_http_async); an answer that cannot
    # be made is answered 503 like a failed group (its readings are kept: sent again, "duplicate")
    try:
        return await scoring().finish_http_async(event.body, checked, _after_scoring)
    except Exception as exc:
        return _not_scored(exc)


def _before_scoring(event: HttpEvent) -> Response | str:
    """The answer to a request that scores nothing (refused, GET, another method), or the id of
    a POST of readings to score."""
    refused = guard(event, tokens, settings.max_payload_bytes)
    if refused:
        return refused
    if event.method == "GET":
        batching = scoring()
        groups = {str(size): count for size, count in sorted(batching.group_sizes.items())}
        # groups: how many groups of each size (concurrent requests scored together) since the start
        return json_response(
            200, {"status": "ok", "model_version": batching.model_version(), "groups": groups}
        )
    if event.method != "POST":
        return json_response(
            405, {"message": "POST readings, or GET the model version"}, {"Allow": "GET, POST"}
        )
    # unique per request: concurrent requests are scored together and answered by record id
    return f"{event.headers.get('X-Call-Id') or 'http'}:{_request_ids.next()}"


def _not_scored(exc: Exception) -> Response:
    # the model failed (nothing of the group was stored; it counts toward its rollback), or
    # the buffer's fsync failed (the group may or may not be on disk: the buffer refuses
    # every write until the edge server restarts, so a request sent again is scored then)
    logger.error("readings not scored", exc_info=exc)
    return json_response(
        503, {"message": f"scoring failed; retry: {type(exc).__name__}"}, {"Retry-After": "5"}
    )


def _after_scoring(answer: HttpAnswer) -> Response:
    if answer.status >= 500:
        logger.warning(
            "readings not scored: %s", answer.report.retry_reasons if answer.report else answer.body
        )
    return json_response(answer.status, answer.body, answer.headers)
