"""One way to serve a WSGI app in production: gunicorn, for the edge server and the SageMaker one.

``gthread`` workers (a thread pool per process, keep-alive connections) when ``threads > 1``,
plain ``sync`` workers otherwise. The app is built once in the master before forking
(``preload_app``): a bad model or setting fails at start, with its message, not in a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["WsgiApp", "serve_wsgi"]

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
) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM/SIGINT (blocks; gunicorn owns the signals).

    Parameters
    ----------
    workers
        Processes. Stateful apps (the edge's device state) need 1.
    threads
        Threads per process (``gthread``); 1 selects ``sync`` workers.
    timeout
        A worker silent for this long is restarted.
    on_worker_start
        Called in each worker process once it is forked (threads and database handles of the
        app belong there, not in the preloading master); an exception fails the worker's boot.
    """
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

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> WsgiApp:
            return app

    _Server().run()
