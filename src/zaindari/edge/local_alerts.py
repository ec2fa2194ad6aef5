"""Local alerts: the plant's own channels (a webhook, an MQTT topic on the local broker), at once.

The box does not wait for the cloud to tell people on the shop floor. Each alert is queued in the
edge buffer per channel (``zaindari.edge.buffer``, in the same transaction that buffers it for the
cloud) and :class:`LocalAlerts` delivers the queues straight after, in order. A channel that is
down keeps its queue, which is delivered on the next alert or by the box's background loop; the
other channels are not held back, and a channel that took an alert does not get it again.

The payload is the cloud alert, byte for byte: ``Alert.model_dump_json()``, the ``detail`` of the
``Zaindari Alert`` event on EventBridge, with the same explanation (rule or learned threshold,
observed values, top contributing sensors, model and rule-set versions). Delivery is at least
once: a crash after a channel took an alert and before the queue row was deleted sends it again
with the same ``alert_id`` and ``kind``, which consumers de-duplicate on.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from zaindari.alerting import Alert

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from zaindari.edge.buffer import EdgeBuffer

__all__ = ["AlertChannel", "ChannelError", "DeliveryReport", "LocalAlerts", "MqttChannel", "WebhookChannel"]

_TOPIC_FIELDS = ("device_id", "asset", "line", "site", "severity", "kind", "rule_id")


class ChannelError(RuntimeError):
    """A channel could not take an alert (unreachable, refused, timed out)."""


class AlertChannel(Protocol):
    """One of the plant's alert channels."""

    name: str

    def send(self, alert: Alert) -> None:
        """Deliver one alert or raise :class:`ChannelError`."""
        ...

    def close(self) -> None: ...


class WebhookChannel:
    """POSTs each alert as JSON to a URL (any 2xx is success).

    Parameters
    ----------
    url
        The webhook.
    token
        Sent as ``Authorization: Bearer <token>`` when given (from the box's secret files).
    timeout_seconds
        Connect and read timeout of one POST.
    """

    name = "webhook"

    def __init__(self, url: str, *, token: str | None = None, timeout_seconds: float = 5.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.token = token
        self.timeout_seconds = timeout_seconds

    def send(self, alert: Alert) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "zaindari-edge"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url, data=alert.model_dump_json().encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            raise ChannelError(f"webhook {self.url}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ChannelError(f"webhook {self.url}: {exc}") from exc
        if not 200 <= status < 300:
            raise ChannelError(f"webhook {self.url}: HTTP {status}")

    def close(self) -> None:
        return None


class MqttChannel:
    """Publishes each alert on the local broker (QoS 1: the broker acknowledges each one).

    Parameters
    ----------
    host, port
        The broker.
    topic
        Topic template; ``{device_id}``, ``{asset}``, ``{line}``, ``{site}``, ``{severity}``,
        ``{kind}`` and ``{rule_id}`` are filled from the alert (``zaindari/alerts/{device_id}``).
    username, password
        Broker credentials (from the box's secret files), if the broker wants them.
    timeout_seconds
        How long a connection or an acknowledgement may take.
    """

    name = "mqtt"

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        topic: str = "zaindari/alerts/{device_id}",
        client_id: str = "zaindari-edge",
        username: str | None = None,
        password: str | None = None,
        timeout_seconds: float = 5.0,
    ) -> None:
        try:
            topic.format(**dict.fromkeys(_TOPIC_FIELDS, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"MQTT topic {topic!r}: unknown placeholder {exc}; use {_TOPIC_FIELDS}") from exc
        self.host = host
        self.port = port
        self.topic = topic
        self.client_id = client_id
        self.username = username
        self.password = password
        self.timeout_seconds = timeout_seconds
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._lock = threading.Lock()

    def topic_for(self, alert: Alert) -> str:
        values = {name: str(getattr(alert, name) or "-") for name in _TOPIC_FIELDS}
        return self.topic.format(**values)

    def _connect(self) -> mqtt.Client:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        if self._client is not None and self._client.is_connected():
            return self._client
        self._drop()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        if self.username:
            client.username_pw_set(self.username, self.password)
        connected = self._connected
        connected.clear()
        refused: list[str] = []

        def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any = None) -> None:
            if reason.is_failure:
                refused.append(str(reason))
            connected.set()

        client.on_connect = on_connect
        client.connect_timeout = self.timeout_seconds
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise ChannelError(f"MQTT broker {self.host}:{self.port}: {exc}") from exc
        client.loop_start()
        self._client = client
        if not connected.wait(self.timeout_seconds) or refused:
            self._drop()
            why = refused[0] if refused else "no CONNACK"
            raise ChannelError(f"MQTT broker {self.host}:{self.port}: connection refused ({why})")
        return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def send(self, alert: Alert) -> None:
        with self._lock:
            client = self._connect()
            info = client.publish(self.topic_for(alert), alert.model_dump_json(), qos=1)
            try:
                info.wait_for_publish(self.timeout_seconds)
            except (RuntimeError, ValueError) as exc:
                self._drop()
                raise ChannelError(f"MQTT broker {self.host}:{self.port}: {exc}") from exc
            if not info.is_published():
                # a fresh client next time: paho must not deliver this copy behind our back
                self._drop()
                raise ChannelError(
                    f"MQTT broker {self.host}:{self.port}: no PUBACK in {self.timeout_seconds}s"
                )

    def close(self) -> None:
        with self._lock:
            self._drop()


@dataclass
class DeliveryReport:
    """What one :meth:`LocalAlerts.deliver` did, per channel."""

    delivered: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: channels skipped: they failed lately and their retry time has not come
    waiting: list[str] = field(default_factory=list)


class LocalAlerts:
    """Delivers the buffer's local-alert queues to their channels, each queue in order.

    A channel that failed is left alone for a while (``retry_seconds``, doubled on each further
    failure up to ``retry_max_seconds``): a broker that is down, or a webhook that times out, must
    not add its timeout to every scoring request. The box's background loop keeps trying.
    """

    def __init__(
        self,
        buffer: EdgeBuffer,
        channels: Sequence[AlertChannel],
        *,
        retry_seconds: float = 1.0,
        retry_max_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [c.name for c in channels]
        if len(set(names)) != len(names):
            raise ValueError(f"two alert channels share a name: {names}")
        self.buffer = buffer
        self.channels: Mapping[str, AlertChannel] = {c.name: c for c in channels}
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = retry_max_seconds
        self.clock = clock
        self._failures: dict[str, int] = {}
        self._resume_at: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.channels)

    def deliver(self, limit: int = 100) -> DeliveryReport:
        """Send what each channel has queued, oldest first; a channel stops at its first failure
        and is skipped until its retry time. The queued alerts are on disk before any is sent
        (one :meth:`EdgeBuffer.sync` after reading them); raises
        :class:`~zaindari.ports.PortError` when that or the queue's bookkeeping fails."""
        from zaindari.edge.buffer import buffered_alert

        report = DeliveryReport()
        # one delivery at a time keeps each queue in order and sends each alert once: across the
        # threads of this process, and across the box's server worker processes
        with self._lock, self.buffer.process_lock("alerts"):
            queues: dict[str, list[tuple[int, Any]]] = {}
            for name in self.channels:
                if self.clock() < self._resume_at.get(name, 0.0):
                    report.waiting.append(name)
                else:
                    queues[name] = self.buffer.pending_local_alerts(name, limit)
            if any(queues.values()):
                # a group committed without waiting for the disk (the edge server's) may have
                # queued some: every row read above was committed before the read, so this one
                # fsync puts them all on disk before any leaves the box (PortError: it failed)
                self.buffer.sync()
            for name, pending in queues.items():
                channel = self.channels[name]
                delivered: list[int] = []
                failed: dict[int, str] = {}
                for seq, body in pending:
                    try:
                        channel.send(buffered_alert(body))
                    except ChannelError as exc:
                        failed[seq] = str(exc)
                        report.errors[name] = str(exc)
                        break
                    delivered.append(seq)
                if delivered or failed:
                    self.buffer.local_alerts_done(delivered, failed)
                if failed:
                    self._failures[name] = self._failures.get(name, 0) + 1
                    wait = min(self.retry_seconds * 2 ** (self._failures[name] - 1), self.retry_max_seconds)
                    self._resume_at[name] = self.clock() + wait
                else:
                    self._failures.pop(name, None)
                    self._resume_at.pop(name, None)
                report.delivered[name] = len(delivered)
        return report

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
