"""Helpers shared by the function, contract and e2e tests: real models, real event shapes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from zaindari.example_model import example_model_bundle
from zaindari.infra.lambda_events import eventbridge_event, http_event, sqs_event
from zaindari.infra.lambda_local import LocalLambdaContext, import_function
from zaindari.simulate import PlantConfig, simulate_plant
from zaindari.spec import ModelSpec, load_spec

__all__ = [
    "EXAMPLE_SPEC",
    "ROOT",
    "LambdaContext",
    "bodies_of",
    "eventbridge_event",
    "example_spec",
    "fit_example_bundle",
    "http_event",
    "kinesis_event",
    "load_function",
    "plant_readings",
    "sqs_event",
]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SPEC = ROOT / "src" / "zaindari" / "data" / "plant_anomaly.yaml"


def example_spec() -> ModelSpec:
    return load_spec(EXAMPLE_SPEC.read_text())


def plant_readings(seed: int = 0) -> list[dict[str, Any]]:
    """The small simulated plant's readings (JSON-ready, time order)."""
    return list(simulate_plant(PlantConfig.small(seed=seed)).readings())


def fit_example_bundle(out_dir: Path) -> Path:
    """The example model (PCA fitted on simulated healthy operation), cached under ``out_dir``."""
    return example_model_bundle(out_dir)


def load_function(name: str) -> ModuleType:
    """Import ``functions/<name>/app.py`` afresh, as a new Lambda container would."""
    return import_function(ROOT / "functions" / name / "app.py", name, fresh=True)


def LambdaContext(function_name: str = "score_event") -> LocalLambdaContext:
    return LocalLambdaContext(function_name)


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


def bodies_of(readings: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r) for r in readings]
