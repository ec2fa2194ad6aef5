"""Observability shared by the Lambda adapters (Powertools), kept light for cold starts, and
the adapters' one cold-start hook on the garbage collector."""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["first_call_without_gc", "traced", "tracing_enabled"]

P = ParamSpec("P")
R = TypeVar("R")


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


def first_call_without_gc(handler: Callable[P, R]) -> Callable[P, R]:
    """Run ``handler``'s first call with the cyclic garbage collector paused, then freeze what it built.

    A container's first event builds what lives as long as the container: AWS clients and their
    service models, the model bundle and its ONNX session (~10^5 objects). Collections while they
    are built scan them over and over (~8 ms CPU of a cold start, gen 0 and 1). After the first
    call, whatever is alive is moved out of every later collection's scan (``gc.freeze``) and the
    collector resumes as it was; later calls run untouched. The price: reference cycles that became
    garbage during that first call are frozen too and never freed (a one-off, small: the first
    event's temporaries); ``gc.collect`` before the freeze would free them but costs the scan this
    saves.
    """
    pending = [True]

    @functools.wraps(handler)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if not pending:
            return handler(*args, **kwargs)
        pending.clear()
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return handler(*args, **kwargs)
        finally:
            gc.freeze()
            if was_enabled:
                gc.enable()

    return wrapper
