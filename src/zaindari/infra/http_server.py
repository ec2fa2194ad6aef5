"""Serving an app in production: a WSGI app behind gunicorn (the SageMaker server) or granian, an
ASGI app behind uvicorn (the edge server's default), or an RSGI app (granian's native asyncio
interface) behind granian.

gunicorn and granian build the app once in the parent before the worker process starts
(gunicorn's ``preload_app``; granian forks its worker from the parent): a bad model or setting
fails at start, with its message, not in a worker. uvicorn (:func:`serve_asgi`) serves in the
calling process itself. All stop on SIGTERM/SIGINT: the listening socket closes, requests in
flight finish, ``on_worker_exit`` runs in the process that served, and the server exits 0.

``granian`` (Rust, HTTP parsing and keep-alive outside the GIL) costs ~15 µs of CPU per request
where gunicorn's ``gthread`` worker costs ~140 µs (``bench/bench_edge_http.py`` measures both's
hello-world ceiling). Under RSGI (:func:`serve_rsgi`) a worker runs one asyncio event loop and the
app's coroutines on it, each request handed to it by granian's threads. Under ASGI (uvicorn,
httptools) the loop parses HTTP itself: more CPU per request on the loop's thread, and no
hand-off between threads, which costs more on a 2-core box (docs/EDGE.md "Serving").
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any, Literal

__all__ = ["WsgiApp", "free_port", "serve_asgi", "serve_rsgi", "serve_wsgi"]

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def serve_wsgi(
    app: WsgiApp,
    *,
    host: str,
    port: int,
    workers: int = 1,
    threads: int = 4,
    timeout: float = 60.0,
    max_request_line: int = 8190,
    access_log: bool = False,
    name: str = "zaindari",
    on_worker_start: Callable[[], None] | None = None,
    on_worker_exit: Callable[[], None] | None = None,
    server: Literal["gunicorn", "granian"] = "gunicorn",
) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM/SIGINT (blocks; the server owns the signals).

    Parameters
    ----------
    workers
        Processes. Stateful apps (the edge's device state) need 1.
    threads
        Threads per process running the app (gunicorn: ``gthread`` when > 1, else ``sync``;
        granian: its blocking threads).
    timeout
        gunicorn: a worker silent for this long is restarted; granian: a worker that has not
        stopped this long after SIGTERM is killed.
    on_worker_start
        Called in each worker process once it is forked (threads and database handles of the
        app belong there, not in the preloading parent); an exception fails the worker's boot.
    on_worker_exit
        Called in each worker process after it stopped serving (its requests answered), before
        it exits: flush and close what ``on_worker_start`` opened.
    server
        ``gunicorn`` or ``granian`` (see the module docstring).
    """
    if server == "granian":
        _serve_granian(
            app, "wsgi", host, port, workers, threads, timeout, access_log, on_worker_start, on_worker_exit
        )
        return
    from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "timeout": int(timeout),
        "graceful_timeout": 10,
        "keepalive": 5,
        "limit_request_line": max_request_line,
        "preload_app": True,
        "proc_name": name,
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "loglevel": "warning",
    }
    if on_worker_start is not None:
        options["post_worker_init"] = lambda _worker: on_worker_start()
    if on_worker_exit is not None:
        options["worker_exit"] = lambda _server, _worker: on_worker_exit()

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> WsgiApp:
            return app

    _Server().run()


def serve_rsgi(
    app: Any,
    *,
    host: str,
    port: int,
    workers: int = 1,
    timeout: float = 60.0,
    access_log: bool = False,
    on_worker_start: Callable[[], None] | None = None,
    on_worker_exit: Callable[[], None] | None = None,
) -> None:
    """Serve the RSGI ``app`` (an ``async __rsgi__(scope, protocol)``, with optional
    ``__rsgi_init__(loop)`` / ``__rsgi_del__(loop)``, called in each worker before it serves and
    after it stopped) with granian on ``host:port`` until SIGTERM/SIGINT (blocks).

    As :func:`serve_wsgi` (``server="granian"``): the app built in the parent, ``on_worker_start``
    run in each worker (on the thread of its event loop, the loop made and current), and on
    SIGTERM/SIGINT the requests in flight answered, ``__rsgi_del__`` then ``on_worker_exit`` run
    in the worker, the parent exits 0. Blocking work belongs in the app's own threads."""
    _serve_granian(app, "rsgi", host, port, workers, 1, timeout, access_log, on_worker_start, on_worker_exit)


#: the largest request head (request line and headers) :func:`serve_asgi` reads, in bytes
MAX_REQUEST_HEAD = 64 * 1024


def serve_asgi(
    app: Any,
    *,
    host: str,
    port: int,
    timeout: float = 60.0,
    access_log: bool = False,
    on_worker_start: Callable[[], None] | None = None,
    on_worker_exit: Callable[[], None] | None = None,
) -> None:
    """Serve the ASGI ``app`` (``async app(scope, receive, send)``, HTTP scopes only) with uvicorn
    on ``host:port`` until SIGTERM/SIGINT (blocks), in this process: one asyncio event loop that
    reads the sockets, parses HTTP (httptools, C) and runs the app's coroutines, with no server
    thread to hand each request to (under granian, RSGI, a request crosses from its Rust thread
    to the loop twice, each time taking the GIL: docs/EDGE.md "Serving").

    ``on_worker_start`` runs on the loop's thread before the first request (ASGI lifespan
    startup; an exception fails the start: logged, exit status 3), ``on_worker_exit`` after the
    requests in flight were answered (lifespan shutdown; after a second SIGINT, which makes uvicorn
    drop them, it still runs). On SIGTERM/SIGINT the call returns normally (exit 0), as under
    granian."""
    import logging
    import signal

    import uvicorn

    exited = False  # on_worker_exit ran (in the lifespan shutdown)

    def worker_exit() -> None:
        nonlocal exited
        if not exited and on_worker_exit is not None:
            exited = True
            on_worker_exit()

    async def lifespan_and_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)  # type: ignore[no-any-return]
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if on_worker_start is not None:
                        on_worker_start()
                except BaseException as exc:
                    logging.getLogger(__name__).exception("the server's start failed")
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                worker_exit()
                await send({"type": "lifespan.shutdown.complete"})
                return None

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHead(HttpToolsProtocol):
        """uvicorn's httptools protocol with a bound on a request's head (request line and
        headers): httptools has none (uvicorn's h11 protocol has one), and a 100 MiB header was
        read whole into memory. A request whose head is still not complete after more than
        ``MAX_REQUEST_HEAD`` bytes received past the read it began in (one read: at most 256 KiB)
        is answered 431 and its connection closed (granian cuts such a connection off too)."""

        _head: int | None = None  # bytes of the current request's head counted; None: not in one
        _begun = 0  # requests begun on the connection

        def data_received(self, data: bytes) -> None:
            head, begun = self._head, self._begun
            super().data_received(data)
            if head is None or self._head is None or self._begun != begun or self.transport.is_closing():
                return  # not inside one request's head across this read
            self._head += len(data)
            if self._head > MAX_REQUEST_HEAD:
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                    b"content-length: 0\r\nconnection: close\r\n\r\n"
                )
                self.transport.close()

        def on_message_begin(self) -> None:
            self._head, self._begun = 0, self._begun + 1
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head = None
            super().on_headers_complete()

    config = uvicorn.Config(
        lifespan_and_app,
        host=host,
        port=port,
        loop="asyncio",  # uvloop measured no gain on the edge server (docs/EDGE.md "Serving")
        http=BoundedHead,
        interface="asgi3",
        lifespan="on",
        access_log=access_log,
        log_level="warning",
        server_header=False,
        proxy_headers=False,  # (no proxy in front: X-Forwarded-* are not trusted, nor parsed)
        # an idle keep-alive connection stays open this long (uvicorn's default, 5 s, closed
        # connections a plant gateway's pool would reuse; granian keeps them open)
        timeout_keep_alive=75,
        timeout_graceful_shutdown=max(int(timeout), 1),
    )
    # uvicorn raises the signal again once it has shut down gracefully: a no-op then (exit 0, as
    # under granian), the previous handlers back afterwards
    previous = {
        stop: signal.signal(stop, lambda _sig, _frame: None) for stop in (signal.SIGTERM, signal.SIGINT)
    }
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        # a second SIGINT makes uvicorn skip its lifespan shutdown (requests in flight are
        # dropped then): the box is closed all the same
        if server.started:
            worker_exit()
        for stop, handler in previous.items():
            signal.signal(stop, handler)
    if not server.started:  # on_worker_start failed (logged above; a taken port exits 3 in uvicorn)
        raise SystemExit(3)  # (uvicorn.run's own exit status for a failed start)


def _serve_granian(
    app: Any,
    interface: Literal["wsgi", "rsgi"],
    host: str,
    port: int,
    workers: int,
    threads: int,
    timeout: float,
    access_log: bool,
    on_worker_start: Callable[[], None] | None,
    on_worker_exit: Callable[[], None] | None,
) -> None:
    import multiprocessing.util

    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    def load_in_worker(_target: str) -> Any:
        # runs in the worker process, after the fork and before it serves
        if on_worker_start is not None:
            on_worker_start()
        if on_worker_exit is not None:
            # granian's worker is a multiprocessing.Process: its finalizers run when the worker
            # returns from serving (after SIGTERM), not on a crash or kill -9
            multiprocessing.util.Finalize(None, on_worker_exit, exitpriority=100)
        return app

    server = Server(
        target="zaindari",  # only a label: the app comes from load_in_worker
        address=host,
        port=port,
        interface=Interfaces.WSGI if interface == "wsgi" else Interfaces.RSGI,
        workers=workers,
        blocking_threads=threads,
        # WSGI: as many requests at once as threads to run them; RSGI: granian's default (the
        # backlog over the workers), requests wait as coroutines on the loop
        backpressure=max(threads, 1) if interface == "wsgi" else None,
        log_level=LogLevels.warning,
        log_access=access_log,
        workers_kill_timeout=max(int(timeout), 1),
        # the standard library's loop, whatever else is installed ("auto" takes uvloop when it is
        # there): uvloop measured no gain on the edge server (docs/EDGE.md "Serving")
        loop=Loops.asyncio,
    )
    server.serve(target_loader=load_in_worker)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it; a server started right after takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
