"""A Lambda HTTP handler served over real HTTP on this machine: what API Gateway (HTTP API, payload
format 2.0) or a function URL does in front of it, as a small WSGI application.

Each request becomes an API Gateway v2 event (headers, query string, cookies, body, base64 for
binary bodies, a request context with a fresh request id and, when given, the IAM caller an
authorizer would have vouched for); the handler's result becomes the HTTP response. Used to run
schemathesis against the OpenAPI schema of the Lambda HTTP handlers, and by ``serve_lambda_http``
for a quick local server. Standard library only (wsgiref): nothing here ships in a Lambda.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from zaindari.infra.lambda_local import LocalLambdaContext

__all__ = ["LambdaHttpGateway", "serve_lambda_http"]

LambdaHandler = Callable[[dict[str, Any], Any], Any]
StartResponse = Callable[..., Any]
_TEXT_TYPES = ("application/json", "application/xml", "application/x-www-form-urlencoded", "text/")


class LambdaHttpGateway:
    """WSGI application turning each request into an API Gateway v2 event for ``handler``.

    Parameters
    ----------
    handler
        ``lambda_handler(event, context)`` of a function (``functions/<name>/app.py``).
    function_name
        Names the Lambda context and the event's ``apiId``.
    function_url
        Shape events as a function URL sends them (``routeKey`` ``$default``) rather than an HTTP API.
    caller_arn
        The IAM principal an ``AWS_IAM`` authorizer would have authenticated (``requestContext.authorizer.iam``).
    max_body_bytes
        Larger bodies are answered 413 without calling the handler (API Gateway's limit is 10 MB).
    """

    def __init__(
        self,
        handler: LambdaHandler,
        *,
        function_name: str = "local",
        function_url: bool = False,
        caller_arn: str | None = None,
        max_body_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.handler = handler
        self.function_name = function_name
        self.function_url = function_url
        self.caller_arn = caller_arn
        self.max_body_bytes = max_body_bytes

    def event(self, environ: Mapping[str, Any], body: bytes) -> dict[str, Any]:
        """The API Gateway v2 event of one WSGI request."""
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        path = str(environ.get("PATH_INFO") or "/")
        headers: dict[str, str] = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").lower()] = str(value)
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = str(environ[key])
        cookies = [c.strip() for c in headers.pop("cookie", "").split(";") if c.strip()]
        content_type = headers.get("content-type", "")
        is_text = not body or content_type.startswith(_TEXT_TYPES)
        text: str | None = None
        if is_text:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                is_text = False
        now = time.time()
        host = headers.get("host", "localhost")
        route_key = "$default" if self.function_url else f"{method} {path}"
        context: dict[str, Any] = {
            "accountId": "123456789012",
            "apiId": self.function_name,
            "domainName": host,
            "domainPrefix": host.split(".", 1)[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": str(environ.get("SERVER_PROTOCOL", "HTTP/1.1")),
                "sourceIp": str(environ.get("REMOTE_ADDR", "127.0.0.1")),
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        }
        if self.caller_arn:
            context["authorizer"] = {"iam": {"userArn": self.caller_arn, "accountId": "123456789012"}}
        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": path,
            "rawQueryString": str(environ.get("QUERY_STRING", "")),
            "headers": headers,
            "requestContext": context,
            "isBase64Encoded": not is_text,
        }
        if cookies:
            event["cookies"] = cookies
        if body:
            event["body"] = text if is_text else base64.b64encode(body).decode()
        return event

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > self.max_body_bytes:
            return _respond(
                start_response,
                413,
                {"content-type": "application/json"},
                b'{"message":"Request Entity Too Large"}',
            )
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        result = self.handler(self.event(environ, body), LocalLambdaContext(self.function_name))
        if not isinstance(result, Mapping) or "statusCode" not in result:
            # payload format 2.0: a bare value is a 200 with that value as JSON
            import json

            return _respond(
                start_response, 200, {"content-type": "application/json"}, json.dumps(result).encode()
            )
        raw = result.get("body") or ""
        payload = (
            base64.b64decode(raw)
            if result.get("isBase64Encoded")
            else str(raw).encode("utf-8", "surrogatepass")
        )
        headers = {str(k).lower(): str(v) for k, v in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[str(name).lower()] = ", ".join(str(v) for v in values)
        return _respond(
            start_response, int(result["statusCode"]), headers, payload, result.get("cookies") or []
        )


def _respond(
    start_response: StartResponse,
    status: int,
    headers: Mapping[str, str],
    payload: bytes,
    cookies: Iterable[str] = (),
) -> list[bytes]:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    pairs = [
        (k, v) for k, v in headers.items() if k not in ("content-length", "connection", "transfer-encoding")
    ]
    pairs += [("set-cookie", c) for c in cookies]
    pairs.append(("content-length", str(len(payload))))
    start_response(f"{status} {phrase}", pairs)
    return [payload]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per request would drown test output
        pass


@contextmanager
def serve_lambda_http(
    handler: LambdaHandler, *, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> Iterator[str]:
    """Serve ``handler`` over HTTP on ``host:port`` (0: a free port) in a thread; yields the base URL.

    ``options`` go to :class:`LambdaHttpGateway`. The server stops when the block exits.
    """
    server: WSGIServer = make_server(
        host, port, LambdaHttpGateway(handler, **options), handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="lambda-http-gateway", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
