"""Embedded AWS for function tests: one moto server per run, state wiped before each test.

The server listens on a free loopback port chosen by the OS (never 4566), so a developer's
``make aws-up`` keeps running undisturbed alongside the tests.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from zaindari.infra.aws import ClientFactory
from zaindari.infra.local_aws import LocalAws, start_local_aws

# Settings from a developer's shell or ~/.aws that would leak into code under test.
_AWS_ENV_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "LOCALSTACK_HOST",
    "USE_SSL",
)


@dataclass(frozen=True)
class EmbeddedAws:
    """What a test gets: where the server is, the env that points at it, a ready factory."""

    server: LocalAws
    endpoint_url: str
    env: dict[str, str]
    factory: ClientFactory

    @property
    def port(self) -> int:
        return self.server.port

    def reset(self) -> None:
        """Wipe every AWS resource and zero the factory's request counter."""
        self.server.reset()
        self.factory.request_counter.reset()


@pytest.fixture(scope="session")
def local_aws() -> Iterator[EmbeddedAws]:
    """A moto server on a free loopback port for the whole run (port 0: the OS picks, no race)."""
    # One request log line per AWS call would drown the captured output of failing tests.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = start_local_aws("127.0.0.1", 0, reuse_existing=False)
    try:
        yield EmbeddedAws(
            server=server,
            endpoint_url=server.endpoint_url,
            env=server.environment(),
            factory=server.client_factory(),
        )
    finally:
        server.stop()


@pytest.fixture
def aws(local_aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch) -> EmbeddedAws:
    """A clean embedded AWS, with the standard AWS env vars pointing at it for this test."""
    local_aws.reset()
    for name in _AWS_ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    # An empty config/credentials file: a developer's ~/.aws cannot change where requests go.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name, value in local_aws.env.items():
        monkeypatch.setenv(name, value)
    return local_aws


@pytest.fixture
def free_tcp_port() -> int:
    """A loopback port free at the time of the call (for servers started in another process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def subscribe_alert_inboxes(aws: EmbeddedAws, topic_arn: str, detail_type: str, name: str) -> dict[str, str]:
    """SQS queues that receive what a function publishes: one subscribed to the SNS topic (raw
    delivery), one the target of an EventBridge rule on ``detail_type``."""
    from zaindari.infra.inboxes import subscribe_inboxes

    return subscribe_inboxes(aws.factory, topic_arn, detail_type, name)


def drain(aws: EmbeddedAws, url: str) -> list[Any]:
    """Every message waiting in a queue, decoded from JSON, deleted as read."""
    from zaindari.infra.inboxes import drain_queue

    return drain_queue(aws.factory, url)
