"""Tracing is opt-in: the X-Ray SDK is loaded only when POWERTOOLS_TRACE_DISABLED is false."""

from __future__ import annotations

from typing import Any

import pytest

from zaindari.infra.lambda_local import LocalLambdaContext
from zaindari.infra.observability import traced


def handler(event: Any, context: Any) -> dict[str, Any]:
    return {"echo": event}


def test_tracing_disabled_returns_the_handler_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    assert traced("svc")(handler) is handler


def test_tracing_enabled_wraps_the_handler_and_keeps_its_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "false")
    wrapped = traced("svc")(handler)
    assert wrapped is not handler
    assert wrapped({"a": 1}, LocalLambdaContext("svc")) == {"echo": {"a": 1}}
