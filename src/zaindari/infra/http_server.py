"""Serving an app in production: a WSGI app behind gunicorn (the SageMaker server) or granian, or
an RSGI app (granian's native asyncio interface) behind granian (the edge server's default).

Both build the app once in the parent before the worker process starts (gunicorn's
``preload_app``; granian forks its worker from the parent): a bad model or setting fails at start,
with its message, not in a worker. Both stop on SIGTERM/SIGINT: the listening socket closes,
requests in flight finish, ``on_worker_exit`` runs in the worker, and the parent exits 0.

``granian`` (Rust, HTTP parsing and keep-alive outside the GIL) costs ~15 µs of CPU per request
where gunicorn's ``gthread`` worker costs ~140 µs (``bench/bench_edge_http.py`` measures both's
hello-world ceiling): on a 2-core edge box that is the difference between the server and the
scoring being the limit. Under RSGI (:func:`serve_rsgi`) a worker runs one asyncio event loop
and the app's coroutines on it: no Python thread per request at all.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any, Literal

__all__ = ["WsgiApp", "free_port", "serve_rsgi", "serve_wsgi"]

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
