"""Embedded AWS: moto in server mode on the LocalStack port, for tests, demos and ``zaindari aws up``.

Clients reach it exactly as they would reach LocalStack: ``AWS_ENDPOINT_URL`` (boto3 >= 1.28,
:meth:`zaindari.infra.aws.AwsConfig.from_env`) or ``LOCALSTACK_HOST`` (localstack-client). moto is
imported only when a server is started here, never at import time.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Self, TextIO

from zaindari.infra.aws import DEFAULT_REGION, AwsConfig, ClientFactory

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4566  # LocalStack's edge port, so LocalStack-style tooling works unchanged.

# moto accepts any credentials; these are the values moto's own docs use.
LOCAL_CREDENTIALS: Mapping[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
}

_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
# Local traffic must never go through an HTTP(S)_PROXY from the environment.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "LOCAL_CREDENTIALS",
    "LocalAws",
    "LocalAwsError",
    "PortInUseError",
    "endpoint_for",
    "is_moto_server",
    "local_client_factory",
    "local_environment",
    "reset",
    "serve_forever",
    "start_local_aws",
    "wait_until_ready",
]


class LocalAwsError(RuntimeError):
    """The embedded AWS could not be started or reached."""


class PortInUseError(LocalAwsError):
    """Something that is not a moto server already listens on the requested port."""


def endpoint_for(host: str, port: int) -> str:
    """The URL clients use to reach a server bound to ``host:port`` (wildcards map to loopback)."""
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _http(method: str, url: str, timeout_s: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with _NO_PROXY_OPENER.open(request, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def is_moto_server(endpoint_url: str, timeout_s: float = 1.0) -> bool:
    """True when ``endpoint_url`` answers moto's dashboard (``GET /moto-api/``)."""
    try:
        status, body = _http("GET", f"{endpoint_url.rstrip('/')}/moto-api/", timeout_s)
    except (OSError, ValueError):
        return False
    return status == 200 and b"moto" in body.lower()


def wait_until_ready(endpoint_url: str, timeout_s: float = 10.0, interval_s: float = 0.05) -> float:
    """Poll until a moto server answers at ``endpoint_url``; return the seconds waited.

    Raises
    ------
    TimeoutError
        When nothing moto-like answered within ``timeout_s``.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        if is_moto_server(endpoint_url, timeout_s=min(1.0, timeout_s)):
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no moto server answered at {endpoint_url} within {timeout_s:g} s")
        time.sleep(interval_s)


def reset(endpoint_url: str, timeout_s: float = 5.0) -> None:
    """Wipe every resource in the moto server at ``endpoint_url`` (``POST /moto-api/reset``)."""
    try:
        status, body = _http("POST", f"{endpoint_url.rstrip('/')}/moto-api/reset", timeout_s)
    except OSError as error:
        raise LocalAwsError(f"could not reset the moto server at {endpoint_url}: {error}") from error
    if status != 200:
        raise LocalAwsError(f"moto reset at {endpoint_url} answered {status}: {body[:200]!r}")


def local_environment(endpoint_url: str, region: str = DEFAULT_REGION) -> dict[str, str]:
    """The environment that points standard AWS tooling at ``endpoint_url`` with dummy credentials.

    The caller applies it (``monkeypatch.setenv``, ``subprocess`` ``env=``, ``os.environ.update``);
    nothing here touches the process environment.
    """
    return {
        **LOCAL_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
    }


def local_client_factory(endpoint_url: str, region: str = DEFAULT_REGION) -> ClientFactory:
    """A :class:`ClientFactory` for ``endpoint_url`` with the dummy credentials pinned.

    Pinning the credentials in the session (rather than reading the environment) keeps a
    long-lived factory working whatever the environment of the moment holds.
    """
    import boto3.session

    session = boto3.session.Session(
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=LOCAL_CREDENTIALS["AWS_SESSION_TOKEN"],
        region_name=region,
    )
    return ClientFactory(AwsConfig(region=region, endpoint_url=endpoint_url), session=session)


def _something_listens(host: str, port: int, timeout_s: float = 0.5) -> bool:
    connect_host = "127.0.0.1" if host in _WILDCARD_HOSTS else host
    try:
        with socket.create_connection((connect_host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _answer_update_endpoint() -> None:
    """Give moto's SageMaker the ``UpdateEndpoint`` action moto 5 lacks (``deploy_model`` calls it to
    switch an endpoint to a new version's config): the endpoint then names the new config and its
    variants, as on AWS once the update is done. moto runs no container either way."""
    from moto.sagemaker.responses import SageMakerResponse

    if hasattr(SageMakerResponse, "update_endpoint"):
        return  # a moto that has it

    def update_endpoint(self: Any) -> Any:
        from moto.core.responses import ActionResult
        from moto.sagemaker.exceptions import ValidationError
        from moto.sagemaker.models import FakeEndpoint

        name, config_name = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
        backend = self.sagemaker_backend
        endpoint = backend.endpoints.get(name)
        if endpoint is None:
            arn = FakeEndpoint.arn_formatter(name, backend.account_id, backend.region_name)
            raise ValidationError(message=f"Could not find endpoint '{arn}'.")
        config = backend.describe_endpoint_config(config_name)  # raises for an unknown config
        endpoint.endpoint_config_name = config_name
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        return ActionResult({"EndpointArn": endpoint.arn})

    SageMakerResponse.update_endpoint = update_endpoint  # type: ignore[attr-defined]


def _guarded_moto_server(host: str, port: int) -> Any:
    """A ThreadedMotoServer whose ``start()`` returns, rather than hangs, when it cannot bind.

    moto 5.2's ``ThreadedMotoServer.start()`` waits without a timeout for an event its server
    thread sets only after binding; werkzeug's ``make_server`` calls ``sys.exit(1)`` in that
    thread when the port is taken, so ``start()`` would block forever.
    """
    from moto.server import ThreadedMotoServer

    class GuardedMotoServer(ThreadedMotoServer):
        startup_error: BaseException | None = None

        def _server_entry(self) -> None:
            try:
                super()._server_entry()
            except BaseException as error:  # SystemExit from werkzeug on a busy port
                self.startup_error = error
                self._server_ready_event.set()

    return GuardedMotoServer(ip_address=host, port=port, verbose=False)


class LocalAws:
    """A moto server reachable at :attr:`endpoint_url`: started here (``owned``) or found running.

    Use :func:`start_local_aws` to get one. ``stop()`` only stops a server this object started.
    """

    def __init__(self, host: str, port: int, *, server: Any | None) -> None:
        self.host = host
        self.port = port
        self.endpoint_url = endpoint_for(host, port)
        self._server = server

    @property
    def owned(self) -> bool:
        """True when this process started the server (and ``stop()`` will stop it)."""
        return self._server is not None

    def environment(self, region: str = DEFAULT_REGION) -> dict[str, str]:
        """See :func:`local_environment`."""
        return local_environment(self.endpoint_url, region)

    def client_factory(self, region: str = DEFAULT_REGION) -> ClientFactory:
        """See :func:`local_client_factory`."""
        return local_client_factory(self.endpoint_url, region)

    def reset(self) -> None:
        """Wipe every resource in the server."""
        reset(self.endpoint_url)

    def stop(self) -> None:
        """Stop the server if this object started it; a reused server is left running."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalAws(endpoint_url={self.endpoint_url!r}, owned={self.owned})"


def start_local_aws(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    reuse_existing: bool = True,
    timeout_s: float = 10.0,
) -> LocalAws:
    """Start moto in server mode on ``host:port`` in a daemon thread, or reuse a moto already there.

    Parameters
    ----------
    host, port
        Where to listen. ``port=0`` lets the OS pick a free port (no race); read it back from
        :attr:`LocalAws.port`.
    reuse_existing
        When a moto server already answers on ``host:port``, return a handle to it instead of
        failing (its state is shared: call ``reset()`` if you need a clean slate).
    timeout_s
        How long to wait for the server to answer.

    Raises
    ------
    PortInUseError
        The port is taken by something else (or by moto, with ``reuse_existing=False``).
    LocalAwsError
        The server could not start.
    """
    if port != 0 and _something_listens(host, port):
        moto_there = is_moto_server(endpoint_for(host, port))
        if moto_there and reuse_existing:
            return LocalAws(host, port, server=None)
        what = "another moto server" if moto_there else "something that is not a moto server"
        raise PortInUseError(f"{host}:{port} is already taken by {what}; choose another --port")

    _answer_update_endpoint()
    server = _guarded_moto_server(host, port)
    server.start()
    if server.startup_error is not None:
        server.stop()
        error = server.startup_error
        if isinstance(error, SystemExit):  # werkzeug's reaction to a busy port
            raise PortInUseError(f"{host}:{port} is already in use; choose another --port") from None
        raise LocalAwsError(f"moto server failed to start on {host}:{port}: {error!r}") from error

    bound_host, bound_port = server.get_host_and_port()
    handle = LocalAws(host if host in _WILDCARD_HOSTS else bound_host, bound_port, server=server)
    try:
        wait_until_ready(handle.endpoint_url, timeout_s=timeout_s)
    except TimeoutError as error:
        handle.stop()
        raise LocalAwsError(str(error)) from error
    return handle


def serve_forever(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, out: TextIO | None = None) -> int:
    """Run the embedded AWS in the foreground until Ctrl-C or SIGTERM; return an exit code.

    When a moto server already answers on ``host:port`` it is left alone and this returns at once.
    """
    out = out or sys.stdout
    started = time.monotonic()
    local = start_local_aws(host, port)
    env = local.environment()
    exports = " ".join(f"{name}={value}" for name, value in env.items() if name != "AWS_SECURITY_TOKEN")
    if not local.owned:
        print(f"A moto server is already running at {local.endpoint_url}; leaving it running.", file=out)
        print(f"  export {exports}", file=out, flush=True)
        return 0

    print(
        f"Embedded AWS (moto server) listening on {local.endpoint_url} "
        f"(ready in {time.monotonic() - started:.2f} s)",
        file=out,
    )
    print(f"  export {exports}", file=out)
    print("Press Ctrl-C to stop.", file=out, flush=True)

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            previous[stop_signal] = signal.signal(stop_signal, request_stop)
    try:
        while not stop_requested.wait(0.5):
            pass
    except KeyboardInterrupt:  # a Ctrl-C arriving before our handler was installed
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        local.stop()
    print("Embedded AWS stopped.", file=out, flush=True)
    return 0
