"""The SageMaker serving server (`zaindari serve`) in its own process: /ping and /invocations in
JSON and CSV answer with the core's scores (zaindari.pipeline.score_readings)."""

from __future__ import annotations

import csv
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    http_call,
    plant_readings,
    start_server,
    stop_server,
    zaindari_cli,
)
from zaindari.bundle import load_bundle
from zaindari.contract import parse_payload
from zaindari.pipeline import score_readings


@pytest.fixture(scope="module")
def server(bundle_dir: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    argv = [*zaindari_cli(), "serve", "--model", str(bundle_dir), "--host", "127.0.0.1", "--port", str(port)]
    process = start_server([*argv, "--workers", "2"], {}, f"{url}/ping")
    yield url
    stop_server(process)


@pytest.fixture(scope="module")
def readings() -> list[dict[str, Any]]:
    return plant_readings()[300:340]  # 40 readings of several devices, in time order


def core_scores(bundle_dir: Path, readings: list[dict[str, Any]]) -> list[float]:
    """What the core scores for these readings in one call, in request order."""
    outcome = score_readings(load_bundle(bundle_dir), parse_payload(readings).readings)
    by_position = dict(zip(outcome.scored_positions, (r["score"] for r in outcome.scored), strict=True))
    return [by_position[i] for i in sorted(by_position)]


def as_csv(readings: list[dict[str, Any]]) -> bytes:
    sensors = list(readings[0]["sensors"])
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["device_id", "timestamp", "asset", "mode", "seq", *sensors])
    for r in readings:
        writer.writerow(
            [r["device_id"], r["timestamp"], r.get("asset"), r.get("mode"), r.get("seq")]
            + [r["sensors"][s] for s in sensors]
        )
    return out.getvalue().encode()


def invoke(url: str, body: bytes, content_type: str, accept: str = "application/json") -> tuple[int, Any]:
    status, headers, data = http_call(
        f"{url}/invocations",
        method="POST",
        body=body,
        headers={"Content-Type": content_type, "Accept": accept},
    )
    return status, json.loads(data) if headers.get("Content-Type") == "application/json" else data.decode()


def test_ping_names_the_model(server: str) -> None:
    status, _, data = http_call(f"{server}/ping")
    assert status == 200 and json.loads(data)["model_version"].startswith("plant-anomaly:")


def test_json_and_csv_invocations_give_the_core_scores(
    server: str, bundle_dir: Path, readings: list[dict[str, Any]]
) -> None:
    expected = core_scores(bundle_dir, readings)
    for body, content_type in (
        (json.dumps({"instances": readings}).encode(), "application/json"),
        (json.dumps(readings).encode(), "application/json"),
        (as_csv(readings), "text/csv"),
    ):
        status, answer = invoke(server, body, content_type)
        assert status == 200, answer
        assert [p["index"] for p in answer["predictions"]] == list(range(len(readings)))
        assert [p["score"] for p in answer["predictions"]] == pytest.approx(expected, rel=1e-6)
        assert answer["rejected"] == []
    # one reading alone scores as the core scores it alone; CSV out: one score per line
    status, answer = invoke(server, json.dumps(readings[0]).encode(), "application/json")
    assert status == 200 and answer["predictions"][0]["score"] == pytest.approx(
        core_scores(bundle_dir, readings[:1])[0]
    )
    status, text = invoke(server, as_csv(readings), "text/csv", accept="text/csv")
    assert status == 200 and [float(x) for x in text.split()] == pytest.approx(expected, rel=1e-6)


def test_bad_readings_are_named_and_the_rest_scored(server: str, readings: list[dict[str, Any]]) -> None:
    bad = {**readings[1], "sensors": {**readings[1]["sensors"], "temperature": "hot"}}
    status, answer = invoke(server, json.dumps([readings[0], bad]).encode(), "application/json")
    assert status == 200 and [p["index"] for p in answer["predictions"]] == [0]
    assert answer["rejected"][0]["index"] == 1 and "sensors.temperature" in answer["rejected"][0]["reason"]
    status, answer = invoke(server, json.dumps([bad]).encode(), "application/json")
    assert status == 400 and answer["rejected"]
    assert invoke(server, b"{not json", "application/json")[0] == 400
    assert invoke(server, b"x", "application/x-npy")[0] == 415
    assert http_call(f"{server}/invocations")[0] == 404  # GET
