"""What the Lambda HTTP routes (Powertools ``APIGatewayHttpResolver``) share: the JSON response
and the error body their OpenAPI schemas document (``{"message": ..., "errors": [...]}``)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ERROR_CONTENT", "json_response"]

#: OpenAPI ``content`` of every error answer (400, 413, 502, 503...).
ERROR_CONTENT: dict[str, Any] = {
    "application/json": {
        "schema": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["message"],
        }
    }
}


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """A Powertools ``Response`` with a JSON body (Powertools is imported on the first HTTP event)."""
    from aws_lambda_powertools.event_handler import Response, content_types

    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, default=str),
        headers=headers or {},
    )
