"""model-sync on OpenFaaS (python3-http) and `zaindari edge serve`, on the box's ModelSync
(zaindari.edge.model_sync): POST a model-update event (the cloud's `Zaindari Model Update`
detail, or its EventBridge envelope) -> download when online, verify, smoke test, swap, or keep
it pending; GET -> the version running, the pending update, refused and rolled-back versions."""

import functools
import json
import logging
from typing import Any

from pydantic import ValidationError

from zaindari.edge.box import EdgeBox
from zaindari.edge.http import HttpEvent, guard, json_response, read_tokens
from zaindari.edge.wiring import edge_box, edge_settings
from zaindari.ports import PortError
from zaindari.registry_events import ModelUpdate

settings = edge_settings()  # bad configuration (or a missing token secret) fails the cold start
tokens = read_tokens(settings)
logger = logging.getLogger("zaindari.edge.model_sync")
MAX_EVENT_BYTES = 64 * 1024  # a model-update event names a bundle; it never carries one
#: HTTP status of each outcome: applied or already serving, waiting for the link, refused
STATUS = {"applied": 200, "unchanged": 200, "pending": 202, "refused": 422, "rolled_back": 200}


@functools.cache
def box() -> EdgeBox:
    return edge_box(settings)


def handle(event: HttpEvent, context: Any) -> dict[str, Any]:
    refused = guard(event, tokens, MAX_EVENT_BYTES)
    if refused:
        return refused
    if event.method == "GET":
        return json_response(200, box().model_report())
    if event.method != "POST":
        return json_response(
            405, {"message": "POST a model-update event, or GET the model running"}, {"Allow": "GET, POST"}
        )
    try:
        payload = json.loads(event.body or b"null")
    except ValueError as exc:
        return json_response(400, {"message": f"the body is not JSON: {exc}"})
    if isinstance(payload, dict) and isinstance(payload.get("detail"), dict) and "detail-type" in payload:
        payload = payload["detail"]  # an EventBridge event: its detail is the update
    try:
        update = ModelUpdate.model_validate(payload)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in exc.errors(include_input=False, include_url=False)
        ]
        return json_response(400, {"message": "not a model-update event", "errors": errors})
    try:
        outcome = box().apply_update(update)
    except PortError as exc:  # the box's buffer cannot record it (e.g. failed, until a restart)
        logger.error("model update not taken: %s", exc)
        return json_response(503, {"message": f"model update not taken; retry: {exc}"}, {"Retry-After": "5"})
    return json_response(STATUS[outcome.status], {**vars(outcome), "running": box().sync.status()})
