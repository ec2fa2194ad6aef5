"""Helpers shared by the function, contract and e2e tests: real models, real event shapes."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

from zaindari.contract import parse_readings
from zaindari.features import SensorTable, compute_features
from zaindari.pca_model import fit_pca_bundle
from zaindari.simulate import PlantConfig, simulate_plant
from zaindari.spec import ModelSpec, load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SPEC = ROOT / "src" / "zaindari" / "data" / "plant_anomaly.yaml"


def example_spec() -> ModelSpec:
    return load_spec(EXAMPLE_SPEC.read_text())


def plant_readings(seed: int = 0) -> list[dict[str, Any]]:
    """The small simulated plant's readings (JSON-ready, time order)."""
    return list(simulate_plant(PlantConfig.small(seed=seed)).readings())


def fit_example_bundle(out_dir: Path, *, rows: int = 800, seed: int = 0) -> Path:
    """A real PCA anomaly bundle fitted on the first ``rows`` simulated readings."""
    spec = example_spec()
    parsed = parse_readings(plant_readings(seed)[:rows])
    features = compute_features(spec, SensorTable.from_readings(parsed.readings, spec.sensor_names))
    return fit_pca_bundle(spec, features.matrix(spec.model_features), out_dir)


def load_function(name: str) -> ModuleType:
    """Import ``functions/<name>/app.py`` as Lambda would (fresh module, registered for pydantic)."""
    module_name = f"zaindari_function_{name}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "functions" / name / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


class LambdaContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    def __init__(self, function_name: str = "score_event") -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 1024
        self.invoked_function_arn = f"arn:aws:lambda:eu-west-1:123456789012:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def sqs_event(bodies: list[str], ids: list[str] | None = None) -> dict[str, Any]:
    ids = ids or [f"msg-{i:05d}" for i in range(len(bodies))]
    return {
        "Records": [
            {
                "messageId": mid,
                "receiptHandle": f"handle-{mid}",
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1763700000000",
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "1763700000001",
                },
                "messageAttributes": {},
                "md5OfBody": "0" * 32,
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:zaindari-telemetryqueue",
                "awsRegion": "eu-west-1",
            }
            for mid, body in zip(ids, bodies, strict=True)
        ]
    }


def kinesis_event(payloads: list[bytes]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "plant-1",
                    "sequenceNumber": f"4959{i:040d}",
                    "data": base64.b64encode(p).decode(),
                    "approximateArrivalTimestamp": 1763700000.0,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"shardId-000000000000:4959{i:040d}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/kinesis-role",
                "awsRegion": "eu-west-1",
                "eventSourceARN": "arn:aws:kinesis:eu-west-1:123456789012:stream/zaindari-telemetry",
            }
            for i, p in enumerate(payloads)
        ]
    }


def eventbridge_event(detail: Any) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Zaindari Telemetry",
        "source": "zaindari.plant",
        "account": "123456789012",
        "time": "2026-11-20T10:00:00Z",
        "region": "eu-west-1",
        "resources": [],
        "detail": detail,
    }


def http_event(
    method: str, path: str, body: str | None = None, *, base64_body: bool = False
) -> dict[str, Any]:
    payload = body
    if body is not None and base64_body:
        payload = base64.b64encode(body.encode()).decode()
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "abc.execute-api.eu-west-1.amazonaws.com"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc",
            "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "abc",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "10.0.0.1",
                "userAgent": "t",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "20/Nov/2026:10:00:00 +0000",
            "timeEpoch": 1763632800000,
        },
        "body": payload,
        "isBase64Encoded": base64_body,
    }


def bodies_of(readings: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r) for r in readings]
