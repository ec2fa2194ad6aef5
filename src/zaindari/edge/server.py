"""`zaindari edge serve`: the edge functions' ``handler.py`` behind a production WSGI server, with
exactly the OpenFaaS ``python3-http`` contract and the gateway's routes (``/function/<name>``).

For boxes without OpenFaaS. Each function folder's ``handler.py`` is imported once, as the
template does; a request to ``/function/score-event/anything`` reaches ``score-event``'s
``handle`` with ``path`` ``/anything`` (the watchdog strips the route too). A body above
``max_body_bytes`` (its ``Content-Length``) is refused with 413 before it is read; the handlers
apply their own, smaller, limits and authentication. ``GET /healthz`` answers without a token (a
liveness probe, like the watchdog's ``/_/health``; 503 once the process's edge buffer failed an
fsync and refuses every write, see :meth:`zaindari.edge.buffer.EdgeBuffer.sync`: restart it; with
``--workers N`` it reflects only the worker answering it, see docs/EDGE.md "Known limits").

One worker process by default (granian, see :mod:`zaindari.infra.http_server`; ``--workers N``
runs N over the one buffer: device states carry versions, see
:meth:`zaindari.edge.buffer.EdgeBuffer.transaction`), several threads: the three
functions share the process's edge box (:func:`zaindari.edge.wiring.edge_box`: its SQLite buffer,
background shipper and model sync), and concurrent requests are scored together (see
:class:`zaindari.edge.wiring.BatchingEventScoring`). SIGTERM or SIGINT: the requests in flight are
answered, then the box is closed (:func:`zaindari.edge.wiring.stop_edge_box`), exit 0.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from zaindari.edge.http import Context, Event, WsgiHeaders

__all__ = ["EDGE_FUNCTIONS", "EdgeApp", "load_handlers"]

#: OpenFaaS function name -> folder under functions/ (one function, two runtimes).
EDGE_FUNCTIONS = {"score-event": "score_event", "score-file": "score_batch", "model-sync": "model_sync"}
_REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
    401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
    413: "Content Too Large", 422: "Unprocessable Content", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
}  # fmt: skip
logger = logging.getLogger("zaindari.edge.server")

Handler = Callable[[Any, Any], Any]


def load_handlers(functions_dir: str | Path, names: Mapping[str, str] | None = None) -> dict[str, Handler]:
    """Import each function's ``handler.py`` (its import-time settings checks run now)."""
    from zaindari.infra.lambda_local import import_function

    root = Path(functions_dir)
    handlers: dict[str, Handler] = {}
    for name, folder in (names or EDGE_FUNCTIONS).items():
        path = root / folder / "handler.py"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no handler.py for the edge function {name!r}")
        handlers[name] = import_function(path, f"edge_{folder}").handle
    return handlers


def _json(status: int, body: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json")], json.dumps(body).encode()


def _format(response: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """A handler's return value as the template formats it (a dict body as JSON, else text)."""
    if response is None:
        return 200, [], b""
    status = int(response.get("statusCode", 200))
    body = response.get("body", "")
    headers = response.get("headers") or {}
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if isinstance(body, dict):
        data = json.dumps(body).encode()
        if not any(k.lower() == "content-type" for k, _ in pairs):
            pairs.append(("Content-Type", "application/json"))
    elif isinstance(body, bytes):
        data = body
    else:
        data = str(body).encode()
    return status, pairs, data


class EdgeApp:
    """The WSGI app: routes ``/function/<name>[/path]`` to that function's ``handle(event, context)``.

    Parameters
    ----------
    handlers
        Function name -> ``handle``.
    max_body_bytes
        Largest body read at all (the largest any function accepts).
    """

    def __init__(self, handlers: Mapping[str, Handler], *, max_body_bytes: int) -> None:
        self.handlers = dict(handlers)
        self.max_body_bytes = max_body_bytes
        self.context = Context(hostname=socket.gethostname())

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status, headers, data = self._respond(environ)
        headers = [*headers, ("Content-Length", str(len(data)))]
        start_response(f"{status} {_REASONS.get(status, 'Status')}", headers)
        return [data]

    def _respond(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        path: str = environ.get("PATH_INFO") or "/"
        if path == "/healthz":
            from zaindari.edge.wiring import edge_box_failure

            failure = edge_box_failure()  # the buffer refuses writes until a restart
            if failure is not None:
                return _json(503, {"status": "failed", "message": f"{failure}; restart the edge server"})
            return _json(200, {"status": "ok", "functions": sorted(self.handlers)})
        if path == "/openapi.json":  # the routes' schema (zaindari.edge.openapi), no token
            from zaindari.edge.openapi import edge_openapi_json

            return 200, [("Content-Type", "application/json")], edge_openapi_json()
        parts = path.split("/", 3)  # "", "function", name, rest
        if len(parts) < 3 or parts[1] != "function" or parts[2] not in self.handlers:
            return _json(404, {"message": f"no function at {path}", "functions": sorted(self.handlers)})
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _json(400, {"message": "Content-Length is not a number"})
        if length > self.max_body_bytes:
            return _json(
                413, {"message": f"body is {length} bytes, above the limit of {self.max_body_bytes}"}
            )
        if length == 0 and environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            return _json(411, {"message": "send a Content-Length (chunked bodies are not accepted)"})
        body: bytes = environ["wsgi.input"].read(length) if length else b""
        event = Event(
            body=body,
            headers=WsgiHeaders(environ, length),
            method=environ.get("REQUEST_METHOD", "GET"),
            query=dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)),
            path="/" + (parts[3] if len(parts) > 3 else ""),
        )
        try:
            return _format(self.handlers[parts[2]](event, self.context))
        except Exception:
            logger.exception("function %s failed", parts[2])
            return _json(500, {"message": "internal error"})
