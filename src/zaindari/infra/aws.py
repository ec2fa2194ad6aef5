"""AWS wiring: where to reach AWS (real, LocalStack or moto) and boto3 clients made once per container.

The core never imports this module; adapters build one :class:`ClientFactory` in their composition
root and pass the clients (or ports wrapping them) into the core. boto3 is imported lazily, so
importing this module stays cheap and boto3-free.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    import boto3.session
    from botocore.config import Config

DEFAULT_REGION = "eu-west-1"

__all__ = [
    "DEFAULT_REGION",
    "AwsConfig",
    "ClientFactory",
    "RequestCounter",
    "count_requests",
    "form_encode_once",
]


def _first_set(env: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` with a non-blank value in ``env``, stripped."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _region_from_process_env() -> str:
    return _first_set(os.environ, "AWS_REGION", "AWS_DEFAULT_REGION") or DEFAULT_REGION


class AwsConfig(BaseModel):
    """Where and how to reach AWS.

    Parameters
    ----------
    region
        AWS region. Defaults to ``AWS_REGION``, then ``AWS_DEFAULT_REGION``, then ``eu-west-1``.
    endpoint_url
        One endpoint for every service (LocalStack, moto server), e.g. ``http://127.0.0.1:4566``.
        ``None`` means real AWS: the factory then also ignores endpoints configured in the
        environment or ``~/.aws/config``, so this object alone decides where requests go.
    connect_timeout_s, read_timeout_s
        botocore socket timeouts, in seconds.
    max_attempts
        Requests per call at most, first try included (botocore ``standard`` retry mode; the
        meaning of ``AWS_MAX_ATTEMPTS``). Each attempt counts in :class:`RequestCounter`.
    validate_parameters
        botocore's client-side check of every call's parameters against the service model. On by
        default: a wrong name or type is a ``ParamValidationError`` (a ``BotoCoreError``, which
        the ports turn into ``PortError``). ``score_event`` turns it off for its fixed, tested calls
        (~0.1 ms of CPU per request on the scoring path): a wrong parameter there would then fail
        as a plain ``KeyError``/``TypeError`` in botocore, or as AWS's ``ValidationException``.
    fixed_user_agent
        Off by default. On, the ``User-Agent`` header is botocore's own string made once (SDK,
        OS, language, retry mode), passed as ``Config(user_agent=...)``, instead of being built
        twice per request (~35 us each, ~0.7 ms per batch of ``score_event``'s ~10 requests); it
        then lacks only the per-request feature ids (``m/...``) botocore reports to AWS.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str = Field(default_factory=_region_from_process_env, min_length=1)
    endpoint_url: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)
    validate_parameters: bool = True
    fixed_user_agent: bool = False

    @field_validator("endpoint_url", mode="before")
    @classmethod
    def _blank_endpoint_is_real_aws(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().rstrip("/")
            return value or None
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"endpoint_url must start with http:// or https://, got {value!r}")
        return value

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
    ) -> Self:
        """Build the configuration from an environment mapping (``os.environ`` or a Lambda's).

        Reads ``AWS_ENDPOINT_URL``, ``AWS_REGION`` and ``AWS_DEFAULT_REGION`` (in that order of
        preference for the region). An explicit argument beats the environment.

        Parameters
        ----------
        env
            The environment to read; never read implicitly.
        region, endpoint_url
            Explicit values that win over ``env`` when given.
        """
        return cls(
            region=region or _first_set(env, "AWS_REGION", "AWS_DEFAULT_REGION") or DEFAULT_REGION,
            endpoint_url=endpoint_url or _first_set(env, "AWS_ENDPOINT_URL"),
        )

    @property
    def is_local(self) -> bool:
        """True when requests go to an emulator endpoint rather than real AWS."""
        return self.endpoint_url is not None

    def botocore_config(self) -> Config:
        """The botocore ``Config`` (timeouts, standard retries, parameter validation) every client is built with."""
        from botocore.config import Config

        # Without this, AWS_ENDPOINT_URL in the environment would override endpoint_url=None.
        # (Passed as **kwargs: botocore-stubs do not know this botocore >= 1.31 option yet.)
        endpoint_options: dict[str, Any] = {"ignore_configured_endpoint_urls": self.endpoint_url is None}
        config = Config(
            parameter_validation=self.validate_parameters,
            region_name=self.region,
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            # total_max_attempts, not max_attempts: botocore reads "max_attempts" in this dict as
            # *retries*, so {"max_attempts": 3} would allow 4 requests per call.
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            **endpoint_options,
        )
        if self.fixed_user_agent:
            from botocore.useragent import UserAgentString

            agent = UserAgentString.from_environment().with_client_config(config).to_string()
            config = config.merge(Config(user_agent=agent))
        return config


class RequestCounter:
    """Thread-safe count of HTTP requests sent to AWS, per ``service.Operation``.

    Counted on botocore's ``before-send`` event, so each retry attempt counts as one request:
    the figure is what AWS bills and throttles, not the number of method calls.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def record(self, service: str, operation: str) -> None:
        """Count one request to ``service.operation``."""
        with self._lock:
            self._counts[f"{service}.{operation}"] += 1

    @property
    def total(self) -> int:
        """All requests counted since creation or the last :meth:`reset`."""
        with self._lock:
            return sum(self._counts.values())

    @property
    def by_operation(self) -> dict[str, int]:
        """A snapshot ``{"s3.PutObject": 2, ...}``."""
        with self._lock:
            return dict(self._counts)

    @property
    def by_service(self) -> dict[str, int]:
        """A snapshot ``{"s3": 3, "sqs": 1, ...}``."""
        totals: Counter[str] = Counter()
        for key, count in self.by_operation.items():
            totals[key.split(".", 1)[0]] += count
        return dict(totals)

    def reset(self) -> None:
        """Forget every count."""
        with self._lock:
            self._counts.clear()

    def _on_before_send(self, event_name: str = "", **_: Any) -> None:
        # event_name is "before-send.<service-id>.<OperationName>".
        rest = event_name.partition(".")[2]
        service, _dot, operation = rest.partition(".")
        self.record(service or "unknown", operation or "unknown")

    def __repr__(self) -> str:
        return f"RequestCounter(total={self.total}, by_operation={self.by_operation})"


def _utf8(value: Any) -> Any:
    return value.encode("utf-8") if isinstance(value, str) else value


def form_encode_once(request: Any, **_: Any) -> None:
    """A query-protocol request's body (SNS, SQS query...) form-encoded once, before it is signed.

    botocore keeps such a body as a dict of parameters and form-encodes it each time it is read:
    once to sign it, once to send it (``urllib.parse.quote`` at ~30 ns per character: ~0.4 ms
    for an SNS ``PublishBatch`` of ten alerts). This writes the text botocore itself makes
    (``AWSRequestPreparer._prepare_body``: UTF-8 keys and values, ``urlencode(doseq=True)``),
    so the request signed and sent is the same, byte for byte. Registered first on
    ``request-created``, the event botocore signs requests on; presigned URLs never pass there
    (their signer moves the body's parameters into the query string and needs the dict).
    """
    from urllib.parse import urlencode

    data = request.data
    if isinstance(data, dict):
        request.data = urlencode([(_utf8(k), _utf8(v)) for k, v in data.items()], doseq=True)


def count_requests(client: Any, counter: RequestCounter) -> Any:
    """Make ``counter`` count every request sent by ``client`` (a boto3 client); returns ``client``."""
    client.meta.events.register("before-send", counter._on_before_send)
    return client


class ClientFactory:
    """boto3 clients and resources made once per service and reused (one factory per container).

    Parameters
    ----------
    config
        Region, endpoint and timeouts.
    session
        The boto3 session to build from. Default: a new ``boto3.session.Session`` with the
        standard credential chain. Pass one to pin credentials (e.g. dummy ones for moto).

    Every client made here counts its requests in :attr:`request_counter`; a query-protocol
    client (SNS) form-encodes each request body once (:func:`form_encode_once`).
    """

    def __init__(
        self, config: AwsConfig, *, session: boto3.session.Session | None = None, botocore_only: bool = False
    ) -> None:
        self.config = config
        self.request_counter = RequestCounter()
        self._session = session
        # plain botocore clients: no boto3 import and no s3transfer (~250 ms of a Lambda cold
        # start); they lack boto3's upload_file/download_file helpers. Their session is
        # zaindari.infra.botocore_models's (same models, found and read faster).
        self._botocore_only = botocore_only and session is None
        self._botocore_session: Any = None
        self._clients: dict[str, Any] = {}
        self._resources: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _boto3_session(self) -> boto3.session.Session:
        # Called with self._lock held: boto3 sessions are not safe to create clients from
        # concurrently, the clients themselves are.
        if self._session is None:
            import boto3.session

            self._session = boto3.session.Session(region_name=self.config.region)
        return self._session

    def client(self, service_name: str) -> Any:
        """The cached low-level client for ``service_name`` (``"s3"``, ``"dynamodb"``, ...)."""
        cached = self._clients.get(service_name)
        if cached is not None:
            return cached
        with self._lock:
            if service_name not in self._clients:
                if self._botocore_only:
                    if self._botocore_session is None:
                        from zaindari.infra.botocore_models import botocore_session

                        self._botocore_session = botocore_session()
                    made = self._botocore_session.create_client(
                        service_name,
                        region_name=self.config.region,
                        endpoint_url=self.config.endpoint_url,
                        config=self.config.botocore_config(),
                    )
                else:
                    made = self._boto3_session().client(
                        service_name,  # type: ignore[call-overload]
                        region_name=self.config.region,
                        endpoint_url=self.config.endpoint_url,
                        config=self.config.botocore_config(),
                    )
                service = made.meta.service_model
                if service.protocol == "query":  # before the signer, which botocore registers here
                    made.meta.events.register_first(
                        f"request-created.{service.service_id.hyphenize()}", form_encode_once
                    )
                self._clients[service_name] = count_requests(made, self.request_counter)
            return self._clients[service_name]

    def resource(self, service_name: str) -> Any:
        """The cached boto3 resource for ``service_name`` (``"s3"``, ``"dynamodb"``, ...).

        Resources are not thread-safe; share one across threads at your own risk.
        """
        cached = self._resources.get(service_name)
        if cached is not None:
            return cached
        with self._lock:
            if service_name not in self._resources:
                made = self._boto3_session().resource(
                    service_name,  # type: ignore[call-overload]
                    region_name=self.config.region,
                    endpoint_url=self.config.endpoint_url,
                    config=self.config.botocore_config(),
                )
                count_requests(made.meta.client, self.request_counter)
                self._resources[service_name] = made
            return self._resources[service_name]

    def __repr__(self) -> str:
        return (
            f"ClientFactory(region={self.config.region!r}, endpoint_url={self.config.endpoint_url!r}, "
            f"clients={sorted(self._clients)}, resources={sorted(self._resources)})"
        )
