"""`zaindari edge serve` stops cleanly on SIGTERM and SIGINT: the request in flight is answered and
stored, the box is closed (its write-ahead log checkpointed), the server exits 0, and a restarted
server finds every answered reading in its buffer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.edge_support import edge_serve_env
from tests.support import http_call, plant_readings, start_server, zaindari_cli
from zaindari.edge.buffer import EdgeBuffer
from zaindari.infra.http_server import free_port

TOKEN = "edge-stop-token"


def _serve(root: Path, bundle: Path, *options: str) -> tuple[subprocess.Popen[bytes], str]:
    env = edge_serve_env(root, bundle, TOKEN)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(
        [*zaindari_cli(), "edge", "serve", "--port", str(port), "--threads", "2", *options],
        env,
        f"{url}/healthz",
        new_session=True,
    )
    return process, url


def _answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize(
    ("stop", "interface"),
    [
        (signal.SIGTERM, "rsgi"),
        (signal.SIGINT, "rsgi"),
        (signal.SIGTERM, "asgi"),
        (signal.SIGINT, "asgi"),
        (signal.SIGTERM, "wsgi"),
    ],
    ids=["SIGTERM", "SIGINT", "SIGTERM-asgi", "SIGINT-asgi", "SIGTERM-wsgi"],
)
def test_a_stopped_server_answers_its_request_in_flight_and_keeps_it(
    tmp_path: Path,
    bundle_dir: Path,
    stop: signal.Signals,
    interface: str,
) -> None:
    # Given a server, and a request whose body is half sent (so it is in flight for sure)
    process, url = _serve(tmp_path, bundle_dir, "--interface", interface)
    readings = plant_readings()[300:340]
    body = json.dumps({"readings": readings}).encode()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    try:
        sock.sendall(
            b"POST /function/score-event HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        time.sleep(0.3)

        # When the server is told to stop, and the rest of the body arrives after that
        process.send_signal(stop)
        time.sleep(0.3)
        sock.sendall(body[len(body) // 2 :])

        # Then the request is answered in full
        status, answer = _answer(sock)
    finally:
        sock.close()
    assert status == 200, answer
    assert len(answer["scores"]) == len(readings)  # type: ignore[arg-type]

    # and the server exits 0 with its box closed: the write-ahead log checkpointed into the file
    assert process.wait(timeout=30) == 0
    wal = tmp_path / "data" / "buffer.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0

    # and a restarted server holds every reading answered, and scores the next ones
    buffer = EdgeBuffer(tmp_path / "data" / "buffer.db")
    try:
        assert buffer.stats().items["scores"] == len(readings)
    finally:
        buffer.close()
    process, url = _serve(tmp_path, bundle_dir, "--interface", interface)
    try:
        more = json.dumps({"readings": plant_readings()[340:350]}).encode()
        status, _, data = http_call(
            f"{url}/function/score-event",
            method="POST",
            body=more,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert status == 200 and len(json.loads(data)["scores"]) == 10
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_asgi_stopped_twice_exits_0_and_keeps_what_it_answered(tmp_path: Path, bundle_dir: Path) -> None:
    # Given the ASGI server, which has scored a request, and a request in flight (half its body)
    process, url = _serve(tmp_path, bundle_dir, "--interface", "asgi")
    status, _, _ = http_call(
        f"{url}/function/score-event",
        method="POST",
        body=json.dumps({"readings": plant_readings()[:5]}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 200
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /function/score-event HTTP/1.1\r\nHost: edge\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{".encode()
        )
        time.sleep(0.3)
        # When it gets SIGINT twice (uvicorn's "force exit": the request in flight is dropped,
        # uvicorn's lifespan shutdown skipped)
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        # Then it still exits 0, the log checkpointed, every answered reading kept (serve_asgi runs
        # the box's stop after uvicorn's force exit too: not told apart here, SQLite's last
        # connection checkpoints the log at exit either way)
        assert process.wait(timeout=30) == 0
    wal = tmp_path / "data" / "buffer.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    buffer = EdgeBuffer(tmp_path / "data" / "buffer.db")
    try:
        assert buffer.stats().items["scores"] == 5
    finally:
        buffer.close()
