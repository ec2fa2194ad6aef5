"""Helpers shared by the function, contract and e2e tests: real models, real event shapes."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
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


# -- drift: a fleet of 24 simulated machines (see tests/unit/test_drift.py)

FLEET_START = datetime(2024, 3, 1, tzinfo=UTC)
FLEET_LINES, FLEET_PER_LINE = 4, 6
FLEET_DEVICES = tuple(
    m.device_id for m in PlantConfig(lines=FLEET_LINES, machines_per_line=FLEET_PER_LINE).machines()
)
#: The two sensors a drifting stream shifts, on every machine: (sensor, kind, magnitude).
FLEET_SHIFT = (("temperature", "offset", 12.0), ("pressure", "gain", 0.5))


def fleet_readings(seed: int, start: datetime, *, drifted: bool = False) -> list[dict[str, Any]]:
    """One hour of the fleet (1,440 readings); ``drifted``: the FLEET_SHIFT sensors read off."""
    from zaindari.simulate import DriftEvent

    drifts = tuple(
        DriftEvent(sensor=s, start=start, kind=kind, magnitude=m, devices=FLEET_DEVICES)  # type: ignore[arg-type]
        for s, kind, m in (FLEET_SHIFT if drifted else ())
    )
    config = PlantConfig(
        seed=seed,
        lines=FLEET_LINES,
        machines_per_line=FLEET_PER_LINE,
        start=start,
        duration=timedelta(hours=1),
        drifts=drifts,
    )
    return list(simulate_plant(config).readings())


def fit_fleet_bundle(out_dir: Path, seeds: int = 20, extras: dict[str, Any] | None = None) -> Path:
    """A PCA bundle (with baseline.json and ``extras``) fitted on ``seeds`` one-hour fleets starting at FLEET_START."""
    import numpy as np

    from zaindari.contract import parse_readings
    from zaindari.features import SensorTable, compute_features
    from zaindari.pca_model import fit_pca_bundle

    spec = example_spec()
    matrices = []
    for seed in range(seeds):
        parsed = parse_readings(fleet_readings(seed, FLEET_START))
        table = SensorTable.from_readings(parsed.readings, spec.sensor_names)
        matrices.append(compute_features(spec, table).matrix(spec.model_features))
    return fit_pca_bundle(
        spec, np.concatenate(matrices), out_dir / "fleet-bundle", version="fleet-1", extras=extras
    )


# -- servers started as their own process (the edge server, the SageMaker server), over real HTTP


def http_call(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Mapping[str, str], bytes]:
    """One HTTP request with the standard library: (status, headers, body), errors included.

    Header names are looked up case-insensitively, as HTTP defines them (granian, behind the edge
    server, sends them in lower case; the OpenFaaS watchdog in canonical case)."""
    import urllib.error
    import urllib.request

    from zaindari.edge.http import Headers

    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, Headers(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, Headers(exc.headers.items()), exc.read()


def start_server(
    argv: list[str], env: dict[str, str], ready_url: str, *, timeout: float = 60.0, new_session: bool = False
) -> Any:
    """Start a server process and wait until ``ready_url`` answers (its log goes to a temp file).

    ``new_session``: the server leads its own process group (``os.killpg`` then reaches its workers too).
    """
    import os
    import subprocess
    import tempfile
    import time
    import urllib.error

    log = tempfile.NamedTemporaryFile(prefix="zaindari-server-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        argv,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=new_session,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{argv} exited with {process.returncode}: {Path(log.name).read_text()}")
        try:
            http_call(ready_url, timeout=2)
            return process
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{argv} did not answer {ready_url} in {timeout} s: {Path(log.name).read_text()}")


def stop_server(process: Any) -> None:
    """SIGTERM (gunicorn stops gracefully), then wait."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except Exception:
        process.kill()
        process.wait()


def zaindari_cli() -> list[str]:
    """The ``zaindari`` command of the interpreter running the tests."""
    import sys

    return [sys.executable, "-m", "zaindari.cli"]
