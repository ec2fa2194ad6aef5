"""schemathesis against the OpenAPI schema of score_event's HTTP handler, served over real HTTP by
zaindari.infra.http_gateway (a request becomes an API Gateway v2 event, as in the cloud).

The handler runs over the in-memory ports: the property is about the HTTP contract (no 5xx, status
codes and bodies as the schema documents them), not AWS."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import schemathesis
from hypothesis import given
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support import load_function
from zaindari.bundle import ModelBundle
from zaindari.event_scoring import EventScoring
from zaindari.infra.http_gateway import serve_lambda_http
from zaindari.memory_ports import MemoryAlertSink, MemoryLake, MemoryRejectSink, MemoryStateStore


@pytest.fixture(scope="module")
def score_event_app(bundle_dir: Path, bundle: ModelBundle) -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZAINDARI_MODEL_PATH", str(bundle_dir))
        mp.setenv("POWERTOOLS_TRACE_DISABLED", "true")
        mp.setenv("POWERTOOLS_METRICS_NAMESPACE", "ZaindariSchema")
        app = load_function("score_event")
        scoring = EventScoring(
            model=lambda: bundle,
            states=MemoryStateStore(),
            lake=MemoryLake(),
            alerts=MemoryAlertSink(),
            rejects=MemoryRejectSink(),
        )
        mp.setattr(app, "scoring", lambda: scoring)
        yield app


@pytest.fixture(scope="module")
def score_event_url(score_event_app: ModuleType) -> Iterator[str]:
    with serve_lambda_http(score_event_app.lambda_handler, function_name="score_event") as url:
        yield url


@pytest.fixture(scope="module")
def score_event_schema(score_event_app: ModuleType) -> Any:
    return schemathesis.openapi.from_dict(json.loads(score_event_app.http_app().get_openapi_json_schema()))


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def test_score_event_http_api_honours_its_openapi_schema(
    score_event_schema: Any, score_event_url: str
) -> None:
    """For every operation: no 5xx; every status code, content type and body is one the schema
    documents. Not checked: that schema-valid data is accepted; the contract has rules JSON Schema
    cannot state (printable identifiers, finite numbers, a timestamp window around the receiver's
    clock), so such a request is a documented 400 with its reasons. (Driven through hypothesis directly: schemathesis' pytest plugin does not run on
    pytest 9 yet.)"""
    operations = _operations(score_event_schema)
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {"POST /readings", "GET /health"}
    for operation in operations:

        @given(case=operation.as_strategy())
        def conforms(case: Any) -> None:
            case.call_and_validate(base_url=score_event_url, excluded_checks=[positive_data_acceptance])

        conforms()


def test_the_gateway_turns_requests_into_v2_events_and_back(score_event_url: str) -> None:
    request = urllib.request.Request(
        f"{score_event_url}/readings?x=1",
        data=b'{"device_id": "d1"}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 400
        answer = json.loads(exc.read())
        assert answer["message"] == "invalid telemetry: nothing was scored"
        assert {e["field"] for r in answer["errors"] for e in r["errors"]} >= {"timestamp", "sensors"}
    else:
        raise AssertionError("an invalid reading was accepted")
    with urllib.request.urlopen(f"{score_event_url}/health", timeout=10) as response:
        assert response.status == 200 and response.headers["content-type"] == "application/json"
        assert json.loads(response.read())["status"] == "ok"


# ------------------------------------------------------------------ start_retraining: POST /retrain


@pytest.fixture(scope="module")
def retraining_app() -> Iterator[ModuleType]:
    from zaindari.retraining import Retraining, RetrainingConfig
    from zaindari.retraining_memory import MemoryJobRunner, MemoryRetrainingAlerts, MemoryRunLog

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POWERTOOLS_TRACE_DISABLED", "true")
        mp.setenv("POWERTOOLS_METRICS_NAMESPACE", "ZaindariSchema")
        app = load_function("start_retraining")
        retraining = Retraining(
            MemoryJobRunner(),
            MemoryRunLog(),
            MemoryRetrainingAlerts(),
            RetrainingConfig(lake_uri="s3://zaindari-lake", scheduled_models=("plant-anomaly",)),
            sleep=lambda _: None,
        )
        mp.setattr(app, "retraining", lambda: retraining)
        yield app


def test_start_retraining_http_api_honours_its_openapi_schema(retraining_app: ModuleType) -> None:
    schema = schemathesis.openapi.from_dict(json.loads(retraining_app.app.get_openapi_json_schema()))
    operations = _operations(schema)
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {"POST /retrain"}
    caller = "arn:aws:iam::123456789012:user/ops"
    with serve_lambda_http(
        retraining_app.lambda_handler, function_name="start_retraining", caller_arn=caller
    ) as url:
        for operation in operations:

            @given(case=operation.as_strategy())
            def conforms(case: Any) -> None:
                case.call_and_validate(base_url=url, excluded_checks=[positive_data_acceptance])

            conforms()
