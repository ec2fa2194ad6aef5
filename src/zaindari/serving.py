"""The SageMaker serving contract over the core: ``GET /ping`` and ``POST /invocations``.

The container (``infra/serving/Dockerfile``) runs ``zaindari serve``, which loads the bundle from
``/opt/ml/model`` (or ``--model``) and serves this WSGI app on port 8080; it runs the same way
without Docker. Scoring is :func:`zaindari.pipeline.score_readings`, as every other runtime:

* ``application/json``: one reading, a list of readings, ``{"readings": [...]}`` or
  ``{"instances": [...]}`` (SageMaker's convention), each reading as the telemetry contract
  defines it (``device_id``, ``timestamp``, ``sensors``, ...);
* ``text/csv``: **readings, not feature columns**: a header row, then one reading per row, with
  ``device_id``, ``timestamp``, one column per sensor of the model's spec, and optionally
  ``asset``, ``line``, ``site``, ``mode``, ``seq``. The model's derived and window features are
  computed here, from the rows of the request.

Each request is scored on its own (the endpoint keeps no device state): window features span the
rows of one request, per device, in time order. The answer is JSON ``{"model_version",
"predictions": [...], "rejected": [...]}``, one prediction per scored reading in request order
(``index``: its position in the request);
with ``Accept: text/csv`` it is one score per line. A reading that fails the contract is listed in
``rejected`` with its reason; a request where none is valid gets 400.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from typing import Any

from zaindari.bundle import ModelBundle
from zaindari.contract import ContractLimits, PayloadTooLarge, parse_payload
from zaindari.pipeline import score_readings
from zaindari.scoring import get_scorer

__all__ = ["PREDICTION_FIELDS", "ServingApp", "readings_from_csv"]

PREDICTION_FIELDS = ("device_id", "timestamp", "seq", "score", "severity", "rules", "alert")
_IDENTITY = ("device_id", "timestamp", "asset", "line", "site", "mode", "seq")


def readings_from_csv(text: str, sensor_names: Iterable[str]) -> list[dict[str, Any]]:
    """CSV rows (with a header) as contract readings: sensor columns become ``sensors``.

    Values are converted to numbers where they are numbers; anything else is passed on as text,
    for the contract to reject with the field named. Empty sensor cells are left out.
    """
    sensors = set(sensor_names)
    out: list[dict[str, Any]] = []
    for row in csv.DictReader(io.StringIO(text)):
        reading: dict[str, Any] = {"sensors": {}}
        for raw_column, raw_value in row.items():
            if raw_column is None or raw_value is None:
                continue
            column, value = raw_column.strip(), raw_value.strip()
            if column in sensors:
                if value != "":
                    reading["sensors"][column] = _number(value)
            elif column == "seq" and value:
                reading["seq"] = int(value) if value.lstrip("+-").isdigit() else value
            elif column in _IDENTITY and value != "":
                reading[column] = value
        out.append(reading)
    return out


def _number(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


class ServingApp:
    """WSGI app serving one bundle (loaded and its ONNX session created before the first request)."""

    def __init__(
        self, bundle: ModelBundle, *, limits: ContractLimits | None = None, threads: int = 1
    ) -> None:
        self.bundle = bundle
        self.threads = threads
        self.limits = limits or ContractLimits(max_payload_bytes=6 * 1024 * 1024)  # SageMaker's 6 MB
        get_scorer(bundle, threads)  # the session now: /ping is true only when it can score

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status, content_type, data = self._respond(environ)
        start_response(
            f"{status} {'OK' if status == 200 else 'Error'}",
            [("Content-Type", content_type), ("Content-Length", str(len(data)))],
        )
        return [data]

    def _respond(self, environ: dict[str, Any]) -> tuple[int, str, bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/ping" and method == "GET":
            return _json(200, {"status": "ok", "model_version": self.bundle.model_version})
        if path != "/invocations" or method != "POST":
            return _json(404, {"message": "GET /ping or POST /invocations"})
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _json(400, {"message": "Content-Length is not a number"})
        if length > self.limits.max_payload_bytes:
            return _json(413, {"message": f"body is {length} bytes, above {self.limits.max_payload_bytes}"})
        body = environ["wsgi.input"].read(length) if length else b""
        content_type = (environ.get("CONTENT_TYPE") or "application/json").split(";")[0].strip().lower()
        return self.invoke(body, content_type, environ.get("HTTP_ACCEPT", "application/json"))

    def invoke(
        self, body: bytes, content_type: str, accept: str = "application/json"
    ) -> tuple[int, str, bytes]:
        """Score a request body; returns (status, content type, response body)."""
        payload: Any
        if content_type == "text/csv":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                return _json(400, {"message": f"CSV is not UTF-8: {exc}"})
            payload = readings_from_csv(text, self.bundle.spec.sensor_names)
        elif content_type == "application/json":
            try:
                payload = json.loads(body or b"null")
            except ValueError as exc:
                return _json(400, {"message": f"body is not valid JSON: {exc}"})
            if isinstance(payload, dict) and set(payload) == {"instances"}:
                payload = payload["instances"]
        else:
            return _json(415, {"message": f"{content_type!r}: send application/json or text/csv"})
        try:
            parsed = parse_payload(payload, limits=self.limits)
        except PayloadTooLarge as exc:
            return _json(413, {"message": str(exc)})
        rejected = [r.to_dict() for r in parsed.rejections]
        outcome = (
            score_readings(self.bundle, parsed.readings, threads=self.threads) if parsed.readings else None
        )
        if outcome is not None:
            rejected += [{**r.to_dict(), "index": parsed.indices[r.index]} for r in outcome.rejections]
        if outcome is None or not outcome.scored:
            return _json(400, {"message": "no valid reading: nothing was scored", "rejected": rejected})
        predictions = sorted(
            (
                {"index": parsed.indices[pos], **{k: row[k] for k in PREDICTION_FIELDS}}
                for row, pos in zip(outcome.scored, outcome.scored_positions, strict=True)
            ),
            key=lambda p: int(p["index"]),
        )
        if "text/csv" in accept:
            return 200, "text/csv", "".join(f"{p['score']!r}\n" for p in predictions).encode()
        return _json(
            200, {"model_version": outcome.model_version, "predictions": predictions, "rejected": rejected}
        )


def _json(status: int, body: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()
