"""`zaindari edge serve`: the edge functions' ``handler.py`` behind a production HTTP server
(uvicorn, or granian), with exactly the OpenFaaS ``python3-http`` contract and the gateway's
routes (``/function/<name>``).

For boxes without OpenFaaS. Each function folder's ``handler.py`` is imported once, as the
template does; a request to ``/function/score-event/anything`` reaches ``score-event``'s
``handle`` with ``path`` ``/anything`` (the watchdog strips the route too). A body above
``max_body_bytes`` (its ``Content-Length``) is refused with 413 before it is read; the handlers
apply their own, smaller, limits and authentication. ``GET /healthz`` answers without a token (a
liveness probe, like the watchdog's ``/_/health``; 503 once the process's edge buffer failed an
fsync and refuses every write, see :meth:`zaindari.edge.buffer.EdgeBuffer.sync`: restart it; with
``--workers N`` it reflects only the worker answering it, see docs/EDGE.md "Known limits").

Three interfaces over the same app (:class:`EdgeApp`), picked by ``--interface``:

* ``asgi`` (the default with one process): uvicorn with its httptools parser. One event loop
  reads the sockets, parses HTTP and runs the app; score-event's ``handle_async`` is awaited on
  it and its readings are scored on the loop, in groups (see
  :class:`zaindari.edge.wiring.BatchingEventScoring`): no thread hands a request to another.
  score-file and model-sync, which have no ``handle_async``, run their ``handle`` on
  ``--threads`` threads, off the loop. One process only.
* ``rsgi`` (the default with ``--workers N``): granian's native interface, the same app and loop
  per worker process; granian's Rust threads parse HTTP and hand each request to the loop (two
  crossings, each taking the GIL: the reason asgi is the default, docs/EDGE.md "Serving").
* ``wsgi``: the issue's "production WSGI server": granian's WSGI interface, each request on one of
  ``--threads`` threads calling ``handle`` (a thread hand-off per request: ~12 context switches).
  Kept selectable: same routes and answers, and the same ``handle`` that OpenFaaS calls.

One process by default (see :mod:`zaindari.infra.http_server`; ``--workers N`` runs N over
the one buffer: device states carry versions, see
:meth:`zaindari.edge.buffer.EdgeBuffer.transaction`): the three functions share the process's edge
box (:func:`zaindari.edge.wiring.edge_box`: its SQLite buffer, background shipper and model sync).
SIGTERM or SIGINT: the requests in flight are answered, then the box is closed
(:func:`zaindari.edge.wiring.stop_edge_box`), exit 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from zaindari.edge.http import AsgiHeaders, Context, Event, RsgiHeaders, WsgiHeaders

__all__ = ["EDGE_FUNCTIONS", "EdgeApp", "load_functions", "load_handlers"]

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
AsyncHandler = Callable[[Any, Any], Awaitable[Any]]
_Answer = tuple[int, list[tuple[str, str]], bytes]


def load_functions(
    functions_dir: str | Path, names: Mapping[str, str] | None = None
) -> dict[str, ModuleType]:
    """Import each function's ``handler.py`` (its import-time settings checks run now)."""
    from zaindari.infra.lambda_local import import_function

    root = Path(functions_dir)
    modules: dict[str, ModuleType] = {}
    for name, folder in (names or EDGE_FUNCTIONS).items():
        path = root / folder / "handler.py"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no handler.py for the edge function {name!r}")
        modules[name] = import_function(path, f"edge_{folder}")
    return modules


def load_handlers(functions_dir: str | Path, names: Mapping[str, str] | None = None) -> dict[str, Handler]:
    """Each function's ``handle`` (see :func:`load_functions`)."""
    return {name: module.handle for name, module in load_functions(functions_dir, names).items()}


def _json(status: int, body: Any) -> _Answer:
    return status, [("Content-Type", "application/json")], json.dumps(body).encode()


def _format(response: Any) -> _Answer:
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


class _Route(NamedTuple):
    """A request for a function: its name, the path after ``/function/<name>``, the body's length."""

    name: str
    path: str
    length: int


class EdgeApp:
    """Routes ``/function/<name>[/path]`` to that function's handler: an ASGI app (:meth:`asgi`,
    the default of ``zaindari edge serve``, behind uvicorn), an RSGI app (``__rsgi__``, granian's
    native interface) and a WSGI app (``__call__``) over the same routes, limits and answers.

    Under ASGI and RSGI a process runs one event loop: a function with an ``async def
    handle_async(event, context)`` (score-event) is awaited on it; the others' ``handle`` runs on a
    pool of ``threads`` threads, never blocking the loop.

    Parameters
    ----------
    handlers
        Function name -> ``handle``.
    max_body_bytes
        Largest body read at all (the largest any function accepts).
    async_handlers
        Function name -> ``handle_async``, for the functions that have one (ASGI and RSGI).
    threads
        Threads running the ``handle`` of a function without ``handle_async`` (ASGI and RSGI).
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        max_body_bytes: int,
        async_handlers: Mapping[str, AsyncHandler] | None = None,
        threads: int = 4,
    ) -> None:
        self.handlers = dict(handlers)
        self.async_handlers = dict(async_handlers or {})
        self.max_body_bytes = max_body_bytes
        self.threads = threads
        self.context = Context(hostname=socket.gethostname())
        self._executor: ThreadPoolExecutor | None = None  # made in the worker (after the fork)

    # -- WSGI --------------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status, headers, data = self._respond(environ)
        headers = [*headers, ("Content-Length", str(len(data)))]
        start_response(f"{status} {_REASONS.get(status, 'Status')}", headers)
        return [data]

    def _respond(self, environ: dict[str, Any]) -> _Answer:
        route = self._route(
            environ.get("PATH_INFO") or "/",
            environ.get("CONTENT_LENGTH"),
            environ.get("HTTP_TRANSFER_ENCODING"),
        )
        if not isinstance(route, _Route):
            return route
        body: bytes = environ["wsgi.input"].read(route.length) if route.length else b""
        event = Event(
            body=body,
            headers=WsgiHeaders(environ, route.length),
            method=environ.get("REQUEST_METHOD", "GET"),
            query=dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)),
            path=route.path,
        )
        try:
            return _format(self.handlers[route.name](event, self.context))
        except Exception:
            logger.exception("function %s failed", route.name)
            return _json(500, {"message": "internal error"})

    # -- RSGI --------------------------------------------------------------------------------------

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":  # no websockets here
            return
        answer = await self._respond_rsgi(scope, protocol)
        if answer is not None:
            protocol.response_bytes(*answer)

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """granian calls it in the worker, its loop made, before it serves."""
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="zaindari-edge-handler")

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        """granian calls it in the worker once it stopped serving (its requests answered)."""
        self.close()

    async def _respond_rsgi(self, scope: Any, protocol: Any) -> _Answer | None:
        headers = scope.headers
        route = self._route(scope.path, headers.get("content-length"), headers.get("transfer-encoding"))
        if not isinstance(route, _Route):
            return route
        try:
            body: bytes = await protocol() if route.length else b""
        except Exception as exc:  # granian's ProtocolClosed: the client left before its body came
            logger.info("%s %s: body not received (%s): nothing to answer", scope.method, scope.path, exc)
            return None
        query = scope.query_string
        event = Event(
            body=body,
            headers=RsgiHeaders(headers),
            method=scope.method,
            query=dict(parse_qsl(query, keep_blank_values=True)) if query else {},
            path=route.path,
        )
        return await self._call(route, event)

    # -- ASGI --------------------------------------------------------------------------------------

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI app (``zaindari edge serve``'s default, behind uvicorn): HTTP scopes only;
        the server's lifespan (the box started and stopped) is :func:`~zaindari.infra.http_server.serve_asgi`'s."""
        if scope["type"] != "http":  # no websockets here
            return
        answer = await self._respond_asgi(scope, receive)
        if answer is None:
            return
        status, headers, data = answer
        pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        pairs.append((b"content-length", b"%d" % len(data)))
        await send({"type": "http.response.start", "status": status, "headers": pairs})
        await send({"type": "http.response.body", "body": data})

    async def _respond_asgi(self, scope: dict[str, Any], receive: Any) -> _Answer | None:
        headers = AsgiHeaders(scope["headers"])
        length, encoding = headers.get("content-length"), headers.get("transfer-encoding")
        route = self._route(scope["path"], length, encoding)
        if not isinstance(route, _Route):
            if length not in (None, "0") or encoding is not None:
                # answered without reading a declared body: the connection closes after the answer
                # (uvicorn would read the body that never comes as the next request's bytes;
                # granian closes it too)
                status, pairs, data = route
                return status, [*pairs, ("Connection", "close")], data
            return route
        chunks: list[bytes] = []
        while route.length:
            message = await receive()
            if message["type"] == "http.disconnect":  # the client left before its body came
                logger.info("%s %s: body not received: nothing to answer", scope["method"], scope["path"])
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        query: bytes = scope["query_string"]
        event = Event(
            body=b"".join(chunks),
            headers=headers,
            method=scope["method"],
            query=dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) if query else {},
            path=route.path,
        )
        return await self._call(route, event)

    def close(self) -> None:
        """Stop the threads running ``handle`` (after the server stopped serving; ASGI)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- RSGI and ASGI -----------------------------------------------------------------------------

    async def _call(self, route: _Route, event: Event) -> _Answer:
        """The function's answer: ``handle_async`` awaited on the loop, or ``handle`` on a thread."""
        try:
            handle_async = self.async_handlers.get(route.name)
            if handle_async is not None:
                return _format(await handle_async(event, self.context))
            if self._executor is None:  # ASGI, or served without __rsgi_init__ (a test driving the app)
                self.__rsgi_init__(asyncio.get_running_loop())
            loop = asyncio.get_running_loop()
            return _format(
                await loop.run_in_executor(self._executor, self.handlers[route.name], event, self.context)
            )
        except Exception:
            logger.exception("function %s failed", route.name)
            return _json(500, {"message": "internal error"})

    # -- both --------------------------------------------------------------------------------------

    def _route(
        self, path: str, content_length: str | None, transfer_encoding: str | None
    ) -> _Route | _Answer:
        """The function a request is for, or the answer that needs no function (health, schema,
        404, 400/411/413 from its headers, before its body is read)."""
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
            length = int(content_length or 0)
        except ValueError:
            return _json(400, {"message": "Content-Length is not a number"})
        if length > self.max_body_bytes:
            return _json(
                413, {"message": f"body is {length} bytes, above the limit of {self.max_body_bytes}"}
            )
        if length == 0 and (transfer_encoding or "").lower() == "chunked":
            return _json(411, {"message": "send a Content-Length (chunked bodies are not accepted)"})
        return _Route(parts[2], "/" + (parts[3] if len(parts) > 3 else ""), length)
