"""The demo's edge box: ``zaindari edge serve`` next to the plant's last line, as a box runs it.

The box is installed the way an installer does it (``python -m zaindari.edge.box seed``: the
production bundle and golden inputs of its own machines), then served as its own process group.
Its AWS endpoint is a :class:`Link`, a TCP relay to the embedded AWS that the demo cuts and
restores: while it is down the box scores and alerts locally and buffers; when it comes back the
box's shipper empties the buffer into the lake, EventBridge and SNS by itself. Its devices reach it
over HTTP (``POST /function/score-event``), model updates by ``POST /function/model-sync``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zaindari.infra.http_server import free_port

__all__ = ["EdgeBoxProcess", "Link"]

TOKEN_SECRET = "zaindari-edge-token"


class Link:
    """The box's uplink: a loopback TCP relay from :attr:`port` to the embedded AWS, down until
    :meth:`up` (nothing listens on its port: the box's requests fail as with a cut cable)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        if self._listener is not None:
            with suppress(OSError):  # wakes the thread blocked in accept() (close alone does not)
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None


class EdgeError(RuntimeError):
    """The box did not do what the demo asked; the message says what it answered."""


@dataclass
class EdgeBoxProcess:
    """One box: its folders, environment, link and server process."""

    root: Path
    box_id: str
    env: dict[str, str]
    link: Link
    port: int = field(default_factory=free_port)
    token: str = "demo-edge-token"
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def install(
        cls,
        root: Path,
        *,
        box_id: str,
        aws_env: dict[str, str],
        aws_port: int,
        settings: dict[str, str],
        bundle: Path,
        version: str,
        golden: list[dict[str, Any]],
    ) -> EdgeBoxProcess:
        """Folders, token secret, first model and golden inputs (``python -m zaindari.edge.box seed``)."""
        root.mkdir(parents=True, exist_ok=True)
        (root / "secrets").mkdir(exist_ok=True)
        link = Link(aws_port)
        box = cls(root=root, box_id=box_id, env={}, link=link)
        (root / "secrets" / TOKEN_SECRET).write_text(box.token + "\n", encoding="utf-8")
        box.env = {
            **aws_env,
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{link.port}",  # through the link
            "ZAINDARI_EDGE_BOX_ID": box_id,
            "ZAINDARI_EDGE_BUFFER_PATH": str(root / "buffer.db"),
            "ZAINDARI_EDGE_MODEL_DIR": str(root / "models"),
            "ZAINDARI_EDGE_SECRETS_DIR": str(root / "secrets"),
            "ZAINDARI_EDGE_DATA_DIR": str(root / "data"),
            "ZAINDARI_EDGE_UPLINK": "aws",
            "ZAINDARI_EDGE_SHIP_BACKOFF_SECONDS": "0.2",
            "ZAINDARI_EDGE_SHIP_BACKOFF_MAX_SECONDS": "1",
            "ZAINDARI_LOG_LEVEL": "WARNING",
            **settings,
        }
        golden_file = root / "golden.jsonl"
        golden_file.write_text("".join(json.dumps(r) + "\n" for r in golden), encoding="utf-8")
        seeded = box._run_box_command(
            ["seed", str(bundle), "--version", version, "--golden", str(golden_file)]
        )
        if json.loads(seeded.strip().splitlines()[-1]).get("status") != "applied":
            raise EdgeError(f"the box refused its first model: {seeded}")
        return box

    def _run_box_command(self, argv: list[str]) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "zaindari.edge.box", *argv],
            env={**os.environ, **self.env},
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise EdgeError(
                f"python -m zaindari.edge.box {argv[0]}: exit {done.returncode}: {done.stderr.decode()}"
            )
        return done.stdout.decode()

    def serve(self, log: Path, functions: Path, timeout_s: float = 60.0) -> None:
        """``zaindari edge serve`` in its own process group; returns when ``/healthz`` answers."""
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "zaindari.cli", "edge", "serve", "--port", str(self.port)),
                    *("--threads", "2", "--functions", str(functions)),
                ],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EdgeError(f"zaindari edge serve exited with {self.process.returncode} (see {log})")
            with suppress(OSError):
                if self._call("GET", "/healthz", auth=False)[0] == 200:
                    return
            time.sleep(0.1)
        raise EdgeError(f"zaindari edge serve did not answer within {timeout_s:.0f} s (see {log})")

    def _call(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text.decode("utf-8", "replace")

    def score(self, readings: list[dict[str, Any]]) -> dict[str, Any]:
        """One device gateway request: ``POST /function/score-event``; the box's answer."""
        status, answer = self._call("POST", "/function/score-event", {"readings": readings})
        if status != 200 or not isinstance(answer, dict):
            raise EdgeError(f"score-event answered {status}: {str(answer)[:300]}")
        return answer

    def report(self) -> dict[str, Any]:
        """``GET /function/model-sync``: the model running and what the buffer still holds."""
        status, answer = self._call("GET", "/function/model-sync")
        if status != 200 or not isinstance(answer, dict):
            raise EdgeError(f"model-sync answered {status}: {str(answer)[:300]}")
        return answer

    def update(self, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST /function/model-sync`` with a model-update event (EventBridge envelope or detail)."""
        status, answer = self._call("POST", "/function/model-sync", event)
        return status, answer if isinstance(answer, dict) else {"body": answer}

    def wait_until_shipped(self, timeout_s: float = 180.0) -> tuple[dict[str, Any], float]:
        """Poll the box until its buffer is empty (its shipper sent everything); the last report
        and the seconds it took."""
        started = time.monotonic()
        while True:
            report = self.report()
            if not report.get("buffered"):
                return report, time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise EdgeError(
                    f"the box still holds {report.get('buffered')} after {timeout_s:.0f} s online"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to the server's process group (the server and any worker), then the link."""
        if self.process is not None and self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        self.link.down()
