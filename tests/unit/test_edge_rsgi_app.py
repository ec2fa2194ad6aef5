"""The edge server's RSGI entry (``EdgeApp.__rsgi__``) driven without a server: routes and refusals
from the headers before the body is read, ``handle_async`` awaited on the loop, ``handle`` on a
thread, a handler's error a 500."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from zaindari.edge.server import EdgeApp


class Scope:
    """What granian hands ``__rsgi__``: the request line and its headers (lower-cased names)."""

    proto = "http"

    def __init__(self, method: str, path: str, headers: dict[str, str], query: str = "") -> None:
        self.method, self.path, self.query_string = method, path, query
        self.headers = _Headers(headers)


class _Headers:
    def __init__(self, items: dict[str, str]) -> None:
        self._items = items

    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key, default)

    def get_all(self, key: str) -> list[str]:
        return [self._items[key]] if key in self._items else []

    def keys(self) -> list[str]:
        return list(self._items)


class Protocol:
    """Granian's protocol: ``await protocol()`` is the body; the answer is kept."""

    def __init__(self, body: bytes = b"") -> None:
        self.body, self.read = body, False
        self.answer: tuple[int, list[tuple[str, str]], bytes] | None = None

    async def __call__(self) -> bytes:
        self.read = True
        return self.body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.answer = (status, headers, body)


def call(app: EdgeApp, scope: Scope, body: bytes = b"") -> tuple[Protocol, int, Any]:
    protocol = Protocol(body)
    asyncio.run(app.__rsgi__(scope, protocol))
    assert protocol.answer is not None
    status, headers, data = protocol.answer
    json_body = ("Content-Type", "application/json") in headers
    return protocol, status, json.loads(data) if json_body else data


def test_the_rsgi_entry_awaits_handle_async_runs_handle_on_a_thread_and_answers_errors() -> None:
    seen: dict[str, Any] = {}

    async def score_event(event: Any, context: Any) -> dict[str, Any]:
        seen["async"] = (
            threading.current_thread(),
            event.headers["Authorization"],
            event.path,
            dict(event.query),
        )
        return {"statusCode": 201, "body": {"got": event.body.decode()}, "headers": {"X-Seen": "1"}}

    def model_sync(event: Any, context: Any) -> dict[str, Any]:
        seen["sync"] = threading.current_thread()
        return {"statusCode": 200, "body": "text"}

    def broken(event: Any, context: Any) -> dict[str, Any]:
        raise RuntimeError("bug")

    app = EdgeApp(
        {"score-event": lambda e, c: None, "model-sync": model_sync, "broken": broken},
        max_body_bytes=100,
        async_handlers={"score-event": score_event},
    )
    headers = {"authorization": "Bearer t", "content-length": "2"}
    # the async handler, awaited on the loop's thread, with the contract's event
    protocol, status, body = call(app, Scope("POST", "/function/score-event/x", headers, "a=1&b="), b"hi")
    assert (status, body) == (201, {"got": "hi"})
    assert ("X-Seen", "1") in protocol.answer[1]  # type: ignore[index]
    assert seen["async"][0] is threading.main_thread() and seen["async"][1:] == (
        "Bearer t",
        "/x",
        {"a": "1", "b": ""},
    )
    # a function without handle_async: its handle on a worker thread, never on the loop
    assert call(app, Scope("GET", "/function/model-sync", {}))[1:] == (200, b"text")
    assert seen["sync"] is not threading.main_thread()
    # a handler's error: 500, the server goes on
    assert call(app, Scope("GET", "/function/broken", {}))[1:] == (500, {"message": "internal error"})
    # refusals from the headers, the body never read
    protocol, status, _ = call(
        app, Scope("POST", "/function/score-event", {"content-length": "101"}), b"x" * 101
    )
    assert status == 413 and not protocol.read
    protocol, status, _ = call(app, Scope("POST", "/function/score-event", {"transfer-encoding": "chunked"}))
    assert status == 411 and not protocol.read
    assert call(app, Scope("GET", "/function/nope", {}))[1] == 404
    assert call(app, Scope("GET", "/healthz", {}))[1] == 200
    loop = asyncio.new_event_loop()
    app.__rsgi_del__(loop)  # the handlers' threads stopped, as at a worker's exit
    loop.close()
    assert app._executor is None
