"""The OpenFaaS ``python3-http`` contract, shared by every edge ``handler.py`` and by the edge server.

A handler is ``handle(event, context)``: ``event`` has ``body`` (bytes), ``headers``, ``method``,
``query`` and ``path``; ``context`` has ``hostname``. It returns a dict with ``statusCode``,
``body`` (a dict is sent as JSON, anything else as text) and ``headers`` (see
openfaas/python-flask-template, ``template/python3-http-debian/index.py``).

Authentication: OpenFaaS does not authenticate function invocations, so each handler checks an
``Authorization: Bearer <token>`` header against the token(s) in a secret file
(``<edge_secrets_dir>/<edge_token_secret>``, one token per line: a second line lets a new token
roll out before the old one is removed). A missing or empty secret fails the cold start.
"""

from __future__ import annotations

import hmac
import itertools
import os
import uuid
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from zaindari.jsonable import json_text
from zaindari.settings import Settings, SettingsError

__all__ = [
    "AsgiHeaders",
    "Context",
    "Event",
    "Headers",
    "HttpEvent",
    "RequestIds",
    "Response",
    "WsgiHeaders",
    "guard",
    "json_response",
    "process_id",
    "read_tokens",
    "watchdog_unhealthy",
]

Response = dict[str, Any]


class HttpEvent(Protocol):
    """What the ``python3-http`` template hands a handler (Flask's request, or the edge server's)."""

    body: bytes
    headers: Mapping[str, str]
    method: str
    query: Mapping[str, str]
    path: str


class Headers(Mapping[str, str]):
    """HTTP headers, looked up case-insensitively (as Flask's ``request.headers`` are)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = {k.lower(): v for k, v in items}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class WsgiHeaders(Mapping[str, str]):
    """A WSGI request's headers, looked up case-insensitively (as :class:`Headers`) in its environ
    when asked: a handler reads two or three of them, so none is copied up front.
    ``Content-Length`` is ``length`` (the body read), ``Content-Type`` empty when not sent."""

    __slots__ = ("_environ", "_length")

    def __init__(self, environ: Mapping[str, Any], length: int) -> None:
        self._environ = environ
        self._length = length

    def __getitem__(self, key: str) -> str:
        name = key.upper().replace("-", "_")
        if name == "CONTENT_LENGTH":
            return str(self._length)
        if name == "CONTENT_TYPE":
            return str(self._environ.get("CONTENT_TYPE", ""))
        return str(self._environ["HTTP_" + name])

    def __iter__(self) -> Iterator[str]:
        for name in self._environ:
            if name.startswith("HTTP_") and name not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                yield name[5:].replace("_", "-").lower()
        yield "content-type"
        yield "content-length"

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(frozen=True)
class Event:
    """A request as the ``python3-http`` template describes it (built by the edge server and tests)."""

    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=Headers)
    method: str = "GET"
    query: Mapping[str, str] = field(default_factory=dict)
    path: str = "/"


@dataclass(frozen=True)
class Context:
    """The template's context: the host (container) answering."""

    hostname: str = "localhost"


_pid = [os.getpid()]  # (a list: set again in a forked child)
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def process_id() -> int:
    """``os.getpid()`` without its system call: a server worker asked it twice per request to
    tell a forked copy (its own request ids, its own settler thread), and on a virtual machine
    that call cost ~3 % of the event loop's time. Read once at import, again in each child of a
    fork (``os.register_at_fork``: ``os.fork`` and ``multiprocessing``'s fork both run it)."""
    return _pid[0]


class RequestIds:
    """Request ids unique within a process and across its forks and restarts: a random prefix
    drawn per process, then a counter (``<8 hex><n in hex>``); a ``uuid4`` per request cost a
    system call and an object."""

    def __init__(self) -> None:
        self._pid = 0
        self._prefix = ""
        self._count = itertools.count()

    def next(self) -> str:
        pid = process_id()
        if self._pid != pid:  # first use, or a forked worker: its own prefix
            self._prefix, self._pid = uuid.uuid4().hex[:8], pid
        return f"{self._prefix}{next(self._count):x}"


def watchdog_unhealthy(why: str) -> bool:
    """Under OpenFaaS's watchdog (``fprocess`` is set in a function's container), remove the lock
    file its health check needs (``<tmp>/.lock``, written by the watchdog when it starts the
    function): ``/_/health`` then answers 503 and the orchestrator's liveness probe restarts the
    container. For what the process cannot mend itself (a failed edge buffer). Elsewhere (e.g.
    ``zaindari edge serve``, whose own ``/healthz`` says it) nothing is done.

    Returns whether the lock file was removed.
    """
    if not os.environ.get("fprocess"):  # noqa: SIM112 (the watchdog's own name, lower case)
        return False
    import logging
    import tempfile

    lock = Path(tempfile.gettempdir()) / ".lock"
    try:
        lock.unlink()
    except OSError as exc:
        logging.getLogger(__name__).warning("could not fail the watchdog's health check (%s): %s", lock, exc)
        return False
    logging.getLogger(__name__).error("%s; removed %s: the watchdog's /_/health answers 503", why, lock)
    return True


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A response whose body is JSON text (:func:`zaindari.jsonable.json_text`)."""
    return {
        "statusCode": status,
        "body": json_text(body),
        "headers": {"Content-Type": "application/json", **(headers or {})},
    }


def read_tokens(settings: Settings) -> frozenset[str]:
    """The bearer tokens the edge accepts, from the secret file (read once per container).

    Raises
    ------
    SettingsError
        When the secret file is missing or holds no token: the function refuses to start rather
        than serve without authentication.
    """
    path = Path(settings.edge_secrets_dir) / settings.edge_token_secret
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SettingsError(
            f"edge token secret {path} cannot be read ({exc.strerror}); create it "
            "(faas-cli secret create ...) or set ZAINDARI_EDGE_SECRETS_DIR / ZAINDARI_EDGE_TOKEN_SECRET"
        ) from exc
    tokens = frozenset(t.strip() for t in lines if t.strip())
    if not tokens:
        raise SettingsError(f"edge token secret {path} is empty")
    return tokens


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization") or headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def guard(event: HttpEvent, tokens: frozenset[str], max_bytes: int) -> Response | None:
    """The checks every edge request passes first: 401 without a valid token, 413 above ``max_bytes``.

    Returns the refusal, or ``None`` when the request may proceed.
    """
    token = _bearer(event.headers)
    # compare with every token in constant time: the answer must not tell how much of one matched
    if token is None or not any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens):
        return json_response(
            401,
            {"message": "missing or invalid bearer token"},
            {"WWW-Authenticate": 'Bearer realm="zaindari-edge"'},
        )
    size = len(event.body or b"")
    if size > max_bytes:
        return json_response(413, {"message": f"body is {size} bytes, above the limit of {max_bytes}"})
    return None


class _ServerHeaders(Mapping[str, str]):
    """A server's request headers, looked up when asked (:meth:`_value`: one name's value, its
    repeats joined by ``", "``, or None), none copied up front."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Any) -> None:
        self._headers = headers

    @abstractmethod
    def _value(self, key: str) -> str | None:
        """One name's value (looked up case-insensitively), its repeats joined, or None."""

    def __getitem__(self, key: str) -> str:
        value = self._value(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        # (Mapping.get raises and catches a KeyError for a missing header: every request asks for
        # one, X-Call-Id)
        value = self._value(key)
        return default if value is None else value

    def __len__(self) -> int:
        return sum(1 for _ in self)


class RsgiHeaders(_ServerHeaders):
    """An RSGI request's headers (granian's ``scope.headers``), looked up case-insensitively (as
    :class:`Headers`) when asked, none copied up front; names are listed in lower case (HTTP/1.1
    names arrive lower-cased from granian's parser). As under WSGI: a repeated header gives its
    values joined by ``", "`` (two ``Authorization`` headers are one invalid token on either
    interface), and a header whose value is not text (granian gives none) is absent."""

    __slots__ = ()

    def _value(self, key: str) -> str | None:
        values = [v for v in self._headers.get_all(key.lower()) if v is not None]
        if not values:
            return None
        return str(values[0]) if len(values) == 1 else ", ".join(map(str, values))

    def __iter__(self) -> Iterator[str]:
        # granian's headers are not iterable themselves: .keys() is a list
        names = dict.fromkeys(k.lower() for k in self._headers.keys())  # noqa: SIM118
        return (name for name in names if self._headers.get(name) is not None)


class AsgiHeaders(_ServerHeaders):
    """An ASGI request's headers (``scope["headers"]``: ``(name, value)`` byte pairs, names lower
    case), looked up case-insensitively when asked, none copied up front. As under WSGI and RSGI:
    a repeated header gives its values joined by ``", "``; values are decoded as Latin-1, as WSGI
    servers decode them (PEP 3333)."""

    __slots__ = ()

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        super().__init__(headers)

    def _value(self, key: str) -> str | None:
        name = key.lower().encode("latin-1", "replace")
        values = [v for k, v in self._headers if k == name]
        if not values:
            return None
        return values[0].decode("latin-1") if len(values) == 1 else b", ".join(values).decode("latin-1")

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k.decode("latin-1").lower() for k, _ in self._headers))
