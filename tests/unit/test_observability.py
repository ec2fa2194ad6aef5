"""Tracing is opt-in: the X-Ray SDK is loaded only when POWERTOOLS_TRACE_DISABLED is false."""

from __future__ import annotations

import gc
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


def test_first_call_runs_without_gc_then_freezes_what_it_built() -> None:
    from zaindari.infra.observability import first_call_without_gc

    seen: list[bool] = []

    @first_call_without_gc
    def handler(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(gc.isenabled())
        if event.get("fail"):
            raise RuntimeError("downstream")
        return {"built": [[i] for i in range(100)]}

    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        with pytest.raises(RuntimeError):
            handler({"fail": True})  # the first call fails: the collector still resumes
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen
        assert handler({})["built"][99] == [99]  # later calls: untouched, collector on
        assert seen == [False, True]
    finally:
        gc.unfreeze()
