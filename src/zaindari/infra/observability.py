"""Observability shared by the Lambda adapters (Powertools), kept light for cold starts."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["traced", "tracing_enabled"]


def tracing_enabled() -> bool:
    """X-Ray subsegments are on unless ``POWERTOOLS_TRACE_DISABLED`` says otherwise."""
    return os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").lower() not in ("true", "1")


def traced(service: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a handler with the Powertools tracer when tracing is enabled.

    The X-Ray SDK costs ~300 ms of cold start, so it is imported only when tracing is on (Lambda's
    Active tracing records every invocation either way).
    """

    def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
        if not tracing_enabled():
            return handler
        from aws_lambda_powertools import Tracer

        wrapped: Callable[..., Any] = Tracer(service=service).capture_lambda_handler(capture_response=False)(
            handler
        )
        return wrapped

    return decorate
