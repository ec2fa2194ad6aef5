"""Tracing is opt-in: the X-Ray SDK is loaded only when POWERTOOLS_TRACE_DISABLED is false."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
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


# gc.freeze and gc.unfreeze act on the whole interpreter: the first-call test runs in a fresh one
# (as a new Lambda container is), so the test process's collector (its frozen objects, enabled
# state, thresholds) is never touched; the test's last line checks that.
_FIRST_CALL = """
import gc, json
from zaindari.infra.observability import first_call_without_gc

seen = []

@first_call_without_gc
def handler(event):
    seen.append(gc.isenabled())
    if event.get("fail"):
        raise RuntimeError("downstream")
    return {"built": [[i] for i in range(100)]}

report = {"enabled_before": gc.isenabled(), "frozen_before": gc.get_freeze_count()}
try:
    handler({"fail": True})  # the first call fails: the collector still resumes
except RuntimeError as exc:
    report["raised"] = str(exc)
report["enabled_after"] = gc.isenabled()
report["frozen_after"] = gc.get_freeze_count()
report["later_call"] = handler({})["built"][99]  # later calls: untouched, collector on
report["frozen_later"] = gc.get_freeze_count()
report["seen"] = seen
print(json.dumps(report))
"""


def test_first_call_runs_without_gc_then_freezes_what_it_built() -> None:
    collector = (gc.isenabled(), gc.get_freeze_count(), gc.get_threshold())

    done = subprocess.run([sys.executable, "-c", _FIRST_CALL], capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["enabled_before"] and report["raised"] == "downstream"
    assert report["enabled_after"] and report["frozen_after"] > report["frozen_before"]
    assert report["later_call"] == [99] and report["frozen_later"] == report["frozen_after"]
    assert report["seen"] == [False, True]
    assert (gc.isenabled(), gc.get_freeze_count(), gc.get_threshold()) == collector
