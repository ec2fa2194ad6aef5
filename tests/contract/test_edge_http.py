"""The edge server over real HTTP against the Lambda path: the same requests, the same answers.

``zaindari edge serve`` runs ``functions/score_event/handler.py`` in its own process (uvicorn,
ASGI, the default; the contract test once more on granian's RSGI and WSGI interfaces);
the Lambda path is ``functions/score_event/app.py`` on the embedded AWS (moto in server mode).
Both get the ``events/`` HTTP bodies and a stream of simulated plant readings that raises and
resolves alerts; scores, rejections and alerts must match, and so must the alerts delivered
(SNS on AWS, the edge box's SQLite buffer, from which its shipper sends them to EventBridge).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.functions.conftest import EmbeddedAws, aws, drain, free_tcp_port, local_aws  # noqa: F401 (fixtures)
from tests.functions.test_score_event import alert_inboxes, app, env, hot  # noqa: F401 (fixtures)
from tests.support import (
    ROOT,
    LambdaContext,
    http_call,
    http_event,
    plant_readings,
    start_server,
    stop_server,
    zaindari_cli,
)
from zaindari.edge.buffer import EdgeBuffer

EVENTS = ROOT / "events"

TOKEN = "edge-contract-token"
PAYLOAD_LIMIT = 65_536


@dataclass(frozen=True)
class EdgeServer:
    url: str
    data_dir: Path

    def buffered(self, kind: str) -> list[Any]:
        """The bodies of the box buffer's rows of ``kind`` (scores, reject, alert...), oldest first."""
        buffer = EdgeBuffer(self.data_dir / "buffer.db")
        try:
            return buffer.bodies(kind)
        finally:
            buffer.close()

    def call(self, function: str, body: bytes | None = None, *, token: str | None = TOKEN, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        method = kw.pop("method", "POST" if body is not None else "GET")
        return http_call(
            f"{self.url}/function/{function}{kw.pop('suffix', '')}", method=method, body=body, headers=headers
        )


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[EdgeServer]:
    """``zaindari edge serve`` on its default interface (ASGI, uvicorn)."""
    yield from _edge_server(tmp_path_factory, bundle_dir)


@pytest.fixture(scope="module")
def edge_rsgi(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[EdgeServer]:
    """``zaindari edge serve --interface rsgi`` (granian), a box of its own."""
    yield from _edge_server(tmp_path_factory, bundle_dir, "--interface", "rsgi")


@pytest.fixture(scope="module")
def edge_wsgi(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[EdgeServer]:
    """``zaindari edge serve --interface wsgi``, a box of its own."""
    yield from _edge_server(tmp_path_factory, bundle_dir, "--interface", "wsgi")


def _edge_server(
    tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path, *options: str
) -> Iterator[EdgeServer]:
    root = tmp_path_factory.mktemp("edge")
    secrets = root / "secrets"
    secrets.mkdir()
    # two tokens: a new one rolls out before the old one is removed
    (secrets / "zaindari-edge-token").write_text(f"previous-token\n{TOKEN}\n")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env_vars = {
        "ZAINDARI_MODEL_PATH": str(bundle_dir),
        "ZAINDARI_EDGE_SECRETS_DIR": str(secrets),
        "ZAINDARI_EDGE_DATA_DIR": str(root / "data"),
        "ZAINDARI_EDGE_BUFFER_PATH": str(root / "data" / "buffer.db"),
        "ZAINDARI_EDGE_MODEL_DIR": str(root / "data" / "models"),  # empty: first model from MODEL_PATH
        "ZAINDARI_MAX_PAYLOAD_BYTES": str(PAYLOAD_LIMIT),
        "ZAINDARI_EDGE_MAX_FILE_BYTES": str(4 * PAYLOAD_LIMIT),
    }
    url = f"http://127.0.0.1:{port}"
    process = start_server(
        [*zaindari_cli(), "edge", "serve", "--port", str(port), "--threads", "2", *options],
        env_vars,
        f"{url}/healthz",
    )
    yield EdgeServer(url, root / "data")
    stop_server(process)


def _requests() -> list[str]:
    """A stream of readings (batches of 20) with a hot spell, then the events/ HTTP bodies (later
    dates: the stream's readings would be late after them)."""
    readings = plant_readings()[700:900]
    stream = [hot(r) if 60 <= i < 110 else r for i, r in enumerate(readings)]
    bodies = [json.dumps({"readings": stream[i : i + 20]}) for i in range(0, len(stream), 20)]
    return bodies + [
        json.loads((EVENTS / f"{n}.json").read_text())["body"]
        for n in ("http_reading", "http_batch", "http_invalid")
    ]


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    """The answer without what names the request (ids, receive times)."""
    out = dict(body)
    for key in ("rejected",):
        out[key] = [
            {k: v for k, v in r.items() if k not in ("record_id", "received_at", "source")}
            for r in body.get(key, [])
        ]
    return out


@pytest.mark.parametrize("server", ["edge", "edge_rsgi", "edge_wsgi"], ids=["asgi", "rsgi", "wsgi"])
def test_edge_server_answers_as_the_lambda_http_route(
    server: str,
    request: pytest.FixtureRequest,
    app: ModuleType,  # noqa: F811
    aws: EmbeddedAws,  # noqa: F811
    alert_inboxes: dict[str, str],  # noqa: F811
) -> None:
    edge: EdgeServer = request.getfixturevalue(server)
    # Given the same requests, sent to the Lambda handler and over HTTP to the edge server
    lambda_answers, edge_answers = [], []
    for body in _requests():
        response = app.lambda_handler(http_event("POST", "/readings", body), LambdaContext())
        lambda_answers.append((response["statusCode"], json.loads(response["body"])))
        status, _, data = edge.call(
            "score-event", body.encode(), headers={"Content-Type": "application/json"}
        )
        edge_answers.append((status, json.loads(data)))

    # Then every answer matches: status, scores, rejections (400 for the invalid file) and alerts
    assert [s for s, _ in edge_answers] == [s for s, _ in lambda_answers]
    assert [s for s, _ in edge_answers][-3:] == [200, 200, 400]
    for (_, at_edge), (_, on_lambda) in zip(edge_answers, lambda_answers, strict=True):
        assert _comparable(at_edge) == _comparable(on_lambda)
    raised = [a for _, b in edge_answers for a in b.get("alerts", [])]
    assert {a["kind"] for a in raised} >= {"raised", "resolved"}, "the stream must exercise alerts"
    assert sum(len(b.get("scores", [])) for _, b in edge_answers) == 1 + 4 + 200

    # And the alerts delivered are the same: SNS on AWS, the box's buffer at the edge
    on_aws = drain(aws, alert_inboxes["sns"])
    assert edge.buffered("alert") == on_aws == raised


def test_requests_without_a_valid_token_are_refused_and_score_nothing(edge: EdgeServer) -> None:
    body = json.dumps({**plant_readings()[950], "device_id": "unauthorised-device"}).encode()
    for function in ("score-event", "score-file", "model-sync"):
        status, headers, _ = edge.call(function, body, token=None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert edge.call(function, body, token="wrong")[0] == 401
    assert edge.call("score-event", body, headers={"Authorization": f"Basic {TOKEN}"}, token=None)[0] == 401
    assert edge.call("model-sync", token="previous-token")[0] == 200  # both tokens of the secret work
    assert "unauthorised-device" not in json.dumps(edge.buffered("scores") + edge.buffered("reject"))


@pytest.mark.parametrize("server", ["edge", "edge_rsgi", "edge_wsgi"], ids=["asgi", "rsgi", "wsgi"])
def test_a_repeated_token_header_is_one_invalid_token_on_either_interface(
    server: str, request: pytest.FixtureRequest
) -> None:
    import http.client
    from urllib.parse import urlsplit

    edge: EdgeServer = request.getfixturevalue(server)
    url = urlsplit(edge.url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        connection.putrequest("GET", "/function/score-event")
        connection.putheader("Authorization", f"Bearer {TOKEN}")  # valid: but two values are one
        connection.putheader("Authorization", "Bearer wrong")  # header "Bearer <t>, Bearer wrong"
        connection.endheaders()
        assert connection.getresponse().status == 401
    finally:
        connection.close()


@pytest.mark.parametrize("server", ["edge", "edge_rsgi", "edge_wsgi"], ids=["asgi", "rsgi", "wsgi"])
def test_oversize_bodies_get_413(server: str, request: pytest.FixtureRequest) -> None:
    edge: EdgeServer = request.getfixturevalue(server)
    # above the function's limit (the handler), and above the server's (refused before reading)
    status, _, data = edge.call("score-event", b"[" + b" " * PAYLOAD_LIMIT + b"]")
    assert status == 413 and str(PAYLOAD_LIMIT) in json.loads(data)["message"]
    status, _, data = edge.call("score-file", b"x" * (4 * PAYLOAD_LIMIT + 1), suffix="?name=big.csv")
    assert status == 413


@pytest.mark.parametrize("server", ["edge", "edge_rsgi", "edge_wsgi"], ids=["asgi", "rsgi", "wsgi"])
def test_a_body_refused_before_it_is_read_closes_its_connection(
    server: str, request: pytest.FixtureRequest
) -> None:
    import socket
    from urllib.parse import urlsplit

    edge: EdgeServer = request.getfixturevalue(server)
    url = urlsplit(edge.url)
    # Given a keep-alive connection whose request declares a body far above the limit, not sent
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10) as sock:
        sock.sendall(
            b"POST /function/score-event HTTP/1.1\r\nHost: edge\r\nContent-Length: 99999999\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        # Then it is refused (413) and the connection is closed after the answer: the server does
        # not wait for the body, nor read the next request's bytes as that body
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 413"), data[:200]


def test_a_request_head_above_its_bound_is_refused_431_and_closed(edge: EdgeServer) -> None:
    import socket
    from urllib.parse import urlsplit

    from zaindari.infra.http_server import MAX_REQUEST_HEAD

    url = urlsplit(edge.url)
    # Given a request whose one header is far above the bound on a request head (sent in pieces)
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-A: ")
        answer = b""
        try:
            for _ in range(16 * MAX_REQUEST_HEAD // 16384):  # (past the first read, at most 256 KiB)
                sock.sendall(b"a" * 16384)
        except OSError:  # (the server closed the connection while it was still being sent)
            pass
        # Then the connection is closed at once, the head not read on (without a bound the server
        # would wait for its end: this recv would time out), answered 431 unless the close's
        # reset (the bytes sent past the bound are left unread) overtook the answer
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert http_call(f"{edge.url}/healthz")[0] == 200  # and the server serves on


@pytest.mark.parametrize("server", ["edge", "edge_rsgi", "edge_wsgi"], ids=["asgi", "rsgi", "wsgi"])
def test_unknown_routes_are_404_and_health_needs_no_token(
    server: str, request: pytest.FixtureRequest
) -> None:
    edge: EdgeServer = request.getfixturevalue(server)
    assert http_call(f"{edge.url}/function/nope")[0] == 404
    assert http_call(f"{edge.url}/readings")[0] == 404
    status, _, data = http_call(f"{edge.url}/healthz")
    assert status == 200 and json.loads(data)["functions"] == ["model-sync", "score-event", "score-file"]


@pytest.mark.parametrize("server", ["edge", "edge_rsgi"], ids=["asgi", "rsgi"])
def test_score_file_scores_a_local_file_once(server: str, request: pytest.FixtureRequest) -> None:
    # (score-file has no handle_async: its handle runs on the server's threads under ASGI and RSGI)
    edge: EdgeServer = request.getfixturevalue(server)
    csv = (EVENTS / "data" / "plant-1_2026-11-20_1200.csv").read_bytes()
    status, _, data = edge.call("score-file", csv, suffix="?name=plant-1.csv")
    answer = json.loads(data)
    assert status == 200 and answer["status"] == "scored"
    manifest = answer["manifest"]
    assert manifest["rows_in"] == manifest["rows_scored"] == 360
    assert [o for o in manifest["outputs"] if o.startswith("scores/date=2026-11-20/")]
    # its outputs and manifest wait in the box's buffer for the link, under the cloud's keys
    waiting = [body["key"] for body in edge.buffered("object")]
    assert waiting[-1] == f"manifests/{manifest['source_id']}.json"
    assert set(manifest["outputs"]) <= set(waiting)
    # the same bytes again: a duplicate, nothing scored twice
    status, _, data = edge.call("score-file", csv, suffix="?name=plant-1.csv")
    assert status == 200 and json.loads(data)["status"] == "duplicate"
    # a file without the required columns is refused whole, with its reason
    status, _, data = edge.call("score-file", b"a,b\n1,2\n", suffix="?name=bad.csv")
    assert status == 422 and json.loads(data)["manifest"]["error"]
    # set aside with its reason and a copy of the file, waiting for the link
    sid = json.loads(data)["manifest"]["source_id"]
    waiting = {body["key"] for body in edge.buffered("object")}
    assert {f"quarantine/files/{sid}.json", f"quarantine/files/{sid}/bad.csv"} <= waiting
    assert edge.call("score-file", csv)[0] == 400  # no ?name=


def test_model_sync_reports_the_model_in_use_and_refuses_what_is_not_an_update(edge: EdgeServer) -> None:
    status, _, data = edge.call("model-sync")
    report = json.loads(data)
    assert status == 200 and report["model"] == "plant-anomaly" and report["pending"] is None
    status, _, data = edge.call("model-sync", b"{}")
    assert status == 400 and {e["field"] for e in json.loads(data)["errors"]} >= {"model", "sha256"}
    assert edge.call("model-sync", b"not json")[0] == 400


def test_edge_serve_refuses_to_start_without_its_token_secret(tmp_path: Path, bundle_dir: Path) -> None:
    import os
    import subprocess

    result = subprocess.run(
        [*zaindari_cli(), "edge", "serve", "--port", "1"],
        env={
            **os.environ,
            "ZAINDARI_MODEL_PATH": str(bundle_dir),
            "ZAINDARI_EDGE_SECRETS_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2
    assert "zaindari-edge-token" in result.stderr and "cannot be read" in result.stderr


def test_edge_serve_refuses_to_start_without_a_model(tmp_path: Path) -> None:
    import os
    import subprocess

    (tmp_path / "zaindari-edge-token").write_text(TOKEN + "\n")
    result = subprocess.run(
        [*zaindari_cli(), "edge", "serve", "--port", "1"],
        env={
            **os.environ,
            "ZAINDARI_EDGE_SECRETS_DIR": str(tmp_path),
            "ZAINDARI_EDGE_MODEL_DIR": str(tmp_path / "models"),  # empty, and no ZAINDARI_MODEL_PATH
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2
    assert "holds no model" in result.stderr and "ZAINDARI_MODEL_PATH" in result.stderr
