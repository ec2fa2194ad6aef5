"""The OpenAPI 3 document of the edge server (``zaindari edge serve``): its routes, bearer
authentication, and the bodies it answers, served at ``GET /openapi.json``.

The request schemas come from the pydantic models the handlers parse with
(:class:`zaindari.contract.TelemetryPayload` for ``score-event``, the same model the Lambda HTTP
route documents; :class:`zaindari.registry_events.ModelUpdate` for ``model-sync``), and the error
body is the one the Lambda HTTP routes document (:data:`zaindari.infra.http_api.ERROR_CONTENT`):
one schema per concept. What JSON Schema cannot say (the timestamp window around the box's clock,
finite numbers, the payload limits) is checked by the handlers and answered 400 or 413 with
reasons.
"""

from __future__ import annotations

import functools
import json
from typing import Any

__all__ = ["edge_openapi", "edge_openapi_json"]

_TITLE = "Zaindari edge box"


def _error(description: str, **headers: str) -> dict[str, Any]:
    from zaindari.infra.http_api import ERROR_CONTENT

    response: dict[str, Any] = {"description": description, "content": ERROR_CONTENT}
    if headers:
        response["headers"] = {
            name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()
        }
    return response


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


_COMMON = {
    "401": _error("Missing or invalid bearer token", **{"WWW-Authenticate": 'Bearer realm="zaindari-edge"'}),
    "405": _error("Method not allowed for this function", Allow="The methods it takes"),
    "411": _error("A chunked body without Content-Length"),
}


def _operation(summary: str, tag: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "tags": [tag], "responses": {**responses, **_COMMON}, **extra}


@functools.cache
def edge_openapi() -> dict[str, Any]:
    """The document (built once per process)."""
    from pydantic.json_schema import models_json_schema

    from zaindari.contract import TelemetryPayload
    from zaindari.registry_events import ModelUpdate

    refs, defs = models_json_schema(
        [(TelemetryPayload, "validation"), (ModelUpdate, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    telemetry = refs[(TelemetryPayload, "validation")]
    update = refs[(ModelUpdate, "validation")]
    too_large = _error("Body above the function's limit (or the server's, checked on Content-Length)")
    retry = _error(
        "The model, the local folder or the box's buffer failed; retry (a request whose group's fsync"
        " failed is refused until the server restarts, then scored or answered as a duplicate)",
        **{"Retry-After": "Seconds"},
    )
    score_event = {
        "get": _operation(
            "The model version the box scores with",
            "telemetry",
            {
                "200": _json(
                    "Liveness, the model version, and how many groups of each size (requests scored together) since the start",
                    {"type": "object", "required": ["status", "model_version"]},
                )
            },
        ),
        "post": _operation(
            "Score one reading or a batch",
            "telemetry",
            {
                "200": _json("Scored: scores, alerts, the readings rejected with their reasons, duplicates"),
                "400": _error("Invalid telemetry: nothing was scored; the errors name each field"),
                "413": too_large,
                "503": retry,
            },
            requestBody={"required": True, "content": {"application/json": {"schema": telemetry}}},
        ),
    }
    score_file = {
        "post": _operation(
            "Score a historian file (CSV, gzip CSV, Parquet, JSON Lines) with the box's model",
            "files",
            {
                "200": _json("Scored, or a duplicate of a file already scored: its manifest"),
                "400": _error("No ?name, a name with a path, or an empty body"),
                "413": too_large,
                "422": _json("The file failed whole (quarantined): the manifest says why"),
                "503": retry,
            },
            parameters=[
                {
                    "name": "name",
                    "in": "query",
                    "required": True,
                    "description": "The file's name; its extension tells the format",
                    "schema": {"type": "string"},
                }
            ],
            requestBody={
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
        )
    }
    model_sync = {
        "get": _operation(
            "The model running, the update waiting for the link, versions rolled back, outcomes",
            "models",
            {"200": _json("What the box runs and holds")},
        ),
        "post": _operation(
            "Apply a model-update event (its detail, or its EventBridge envelope)",
            "models",
            {
                "200": _json("Applied, or already running"),
                "202": _json("Waiting for the link: applied when it comes back"),
                "400": _error("Not JSON, or not a model-update event: the errors name each field"),
                "413": too_large,
                "422": _json("Refused (hashes, signature or smoke test): the old model keeps serving"),
                "503": retry,
            },
            requestBody={"required": True, "content": {"application/json": {"schema": update}}},
        ),
    }
    public: dict[str, Any] = {"security": []}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": _TITLE,
            "version": "1",
            "description": "The edge functions behind `zaindari edge serve` (OpenFaaS gateway routes).",
        },
        "paths": {
            "/function/score-event": score_event,
            "/function/score-file": score_file,
            "/function/model-sync": model_sync,
            "/healthz": {
                "get": {
                    "summary": "Liveness (no token)",
                    "tags": ["ops"],
                    **public,
                    "responses": {
                        "200": _json(
                            "The server is up", {"type": "object", "required": ["status", "functions"]}
                        ),
                        "503": _json(
                            "The box's buffer failed an fsync and refuses every write: restart the server",
                            {"type": "object", "required": ["status", "message"]},
                        ),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document (no token)",
                    "tags": ["ops"],
                    **public,
                    "responses": {"200": _json("The OpenAPI document")},
                }
            },
        },
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


@functools.cache
def edge_openapi_json() -> bytes:
    """The document as the server sends it."""
    return json.dumps(edge_openapi()).encode()
