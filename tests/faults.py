"""Faults injected into real boto3/botocore clients, in front of moto: errors and throttling.

A :class:`FaultInjector` hooks botocore's ``before-send`` event of the clients a
:class:`~zaindari.infra.aws.ClientFactory` makes, and answers chosen requests with an AWS error
response in the service's own wire format (JSON, query XML, REST XML) instead of sending them. So
botocore parses the error, applies its retry policy (throttling and 5xx are retried in ``standard``
mode: every attempt counts), and the code under test sees exactly what AWS would make it see.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.awsrequest import AWSResponse

from zaindari.infra.aws import ClientFactory


@dataclass
class Fault:
    """Fail ``service.operation`` with ``code``/``status``, ``times`` times (None: until cleared)."""

    service: str
    operation: str
    code: str
    status: int
    times: int | None = None
    url_contains: str | None = None
    injected: int = 0

    def wants(self, service: str, operation: str, url: str) -> bool:
        if (service, operation) != (self.service, self.operation):
            return False
        if self.url_contains is not None and self.url_contains not in url:
            return False
        return self.times is None or self.injected < self.times


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def _error_body(protocol: str, code: str, message: str) -> tuple[bytes, dict[str, str]]:
    if protocol in ("json", "rest-json"):
        return json.dumps({"__type": code, "message": message}).encode(), {
            "Content-Type": "application/x-amz-json-1.1",
            "x-amzn-ErrorType": code,
        }
    if protocol == "query":
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>"
            "</Error><RequestId>fault</RequestId></ErrorResponse>"
        )
        return body.encode(), {"Content-Type": "text/xml"}
    body = f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault</RequestId></Error>"
    return body.encode(), {"Content-Type": "application/xml"}


class FaultInjector:
    """Errors for chosen operations of the clients ``factory`` makes (now or later)."""

    def __init__(self, factory: ClientFactory) -> None:
        self.factory = factory
        self.faults: list[Fault] = []
        self._hooked: set[int] = set()

    def fail(
        self,
        service: str,
        operation: str,
        *,
        code: str = "InternalError",
        status: int = 500,
        times: int | None = None,
        url_contains: str | None = None,
    ) -> Fault:
        """Answer ``operation`` of ``service`` (boto3 name: ``s3``, ``dynamodb``, ``sns``, ``events``,
        ``glue``) with an error; returns the fault, whose ``injected`` counts the answers given."""
        client = self.factory.client(service)
        if id(client) not in self._hooked:
            protocol = client.meta.service_model.protocol
            client.meta.events.register_first(
                "before-send", lambda request, **kw: self._on_send(service, protocol, request, **kw)
            )
            self._hooked.add(id(client))
        fault = Fault(service, operation, code, status, times, url_contains)
        self.faults.append(fault)
        return fault

    def throttle(self, service: str, operation: str, *, times: int | None = None) -> Fault:
        """The service's own throttling error (botocore retries it in ``standard`` mode)."""
        code, status = {
            "s3": ("SlowDown", 503),
            "dynamodb": ("ProvisionedThroughputExceededException", 400),
            "sns": ("Throttling", 400),
            "events": ("ThrottlingException", 400),
            "glue": ("ThrottlingException", 400),
        }[service]
        return self.fail(service, operation, code=code, status=status, times=times)

    def clear(self) -> None:
        self.faults.clear()

    def _on_send(self, service: str, protocol: str, request: Any, event_name: str = "", **_: Any) -> Any:
        operation = event_name.rsplit(".", 1)[-1]
        for fault in self.faults:
            if fault.wants(service, operation, str(request.url)):
                fault.injected += 1
                body, headers = _error_body(protocol, fault.code, f"injected fault {fault.code}")
                return AWSResponse(request.url, fault.status, headers, _Raw(body))
        return None
