"""The edge box's link to AWS: where its buffer is shipped and where model updates come from.

:class:`AwsUplink` implements :class:`zaindari.edge.buffer.Uplink` with the cloud's own adapters
(:class:`~zaindari.infra.aws_ports.S3LakeWriter` for lake rows, one ``PutObject`` for the
ready objects of ``score-file``,
:class:`~zaindari.infra.drift_ports.S3SummaryStore` for drift summaries,
:class:`~zaindari.infra.aws_ports.SnsEventBridgeAlertSink` for alerts), so an edge alert reaches
SNS and EventBridge exactly as a cloud alert does. :class:`S3BundleFetcher` downloads a model
update's bundle with :func:`~zaindari.infra.model_store.download_bundle` and tells a link that is
down (retry later) from an artifact that is missing (refuse the update).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zaindari.alerting import Alert
from zaindari.bundle import BundleError
from zaindari.infra.aws import ClientFactory
from zaindari.infra.aws_ports import EVENT_SOURCE, S3LakeWriter, SnsEventBridgeAlertSink, aws_errors
from zaindari.infra.drift_ports import S3SummaryStore
from zaindari.infra.model_store import download_bundle
from zaindari.jsonable import json_default
from zaindari.ports import PortError
from zaindari.settings import Settings

__all__ = ["AwsUplink", "S3BundleFetcher", "aws_link"]


class AwsUplink:
    """S3 (the lake bucket) and EventBridge (and SNS, when a topic is set) for the shipper."""

    def __init__(
        self,
        factory: ClientFactory,
        *,
        bucket: str,
        event_bus: str,
        topic_arn: str | None = None,
        fmt: str = "jsonl.gz",
    ) -> None:
        self.factory = factory
        self.bucket = bucket
        self.event_bus = event_bus
        self.lake = S3LakeWriter(factory, bucket, fmt)
        self.alerts = SnsEventBridgeAlertSink(factory, topic_arn, event_bus)
        self.summaries = S3SummaryStore(factory, bucket)

    def put_rows(self, prefix: str, day: str, name: str, rows: Sequence[Mapping[str, Any]]) -> str:
        return self.lake.put_rows(prefix, day, name, rows)

    def publish_alerts(self, alerts: Sequence[Alert]) -> set[str]:
        return self.alerts.publish(alerts)

    def put_summaries(self, summaries: Sequence[Mapping[str, Any]], *, source: str, name: str) -> list[str]:
        from zaindari.drift import WindowSummary

        return self.summaries.write([WindowSummary.from_dict(s) for s in summaries], source=source, name=name)

    def put_object(self, key: str, data: bytes, content_type: str) -> str:
        try:
            self.factory.client("s3").put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
            )
        except aws_errors() as exc:
            raise PortError(f"S3 {self.bucket}: cannot write {key}: {exc}") from exc
        return key

    def put_event(self, detail_type: str, detail: Mapping[str, Any]) -> None:
        entry = {
            "Source": EVENT_SOURCE,
            "DetailType": detail_type,
            "Detail": json.dumps(dict(detail), default=json_default),
            "EventBusName": self.event_bus,
        }
        try:
            response = self.factory.client("events").put_events(Entries=[entry])
        except aws_errors() as exc:
            raise PortError(f"EventBridge {self.event_bus}: {exc}") from exc
        failed = [e for e in response.get("Entries", []) if e.get("ErrorCode")]
        if failed or response.get("FailedEntryCount"):
            raise PortError(f"EventBridge {self.event_bus}: {detail_type} refused: {failed}")


class S3BundleFetcher:
    """Fetches ``s3://bucket/prefix/`` bundles into a local folder.

    Raises PortError when the link or S3 fails in a way a later try can fix (connection errors,
    throttling, 5xx), and BundleError when the artifact itself is wrong (missing, forbidden, not a
    bundle): the update is then refused.
    """

    _PERMANENT = frozenset({"NoSuchKey", "NoSuchBucket", "AccessDenied", "404", "403", "InvalidObjectState"})

    def __init__(self, factory: ClientFactory) -> None:
        self.factory = factory

    def fetch(self, uri: str, into: Path) -> Path:
        from botocore.exceptions import ClientError

        try:
            return download_bundle(self.factory, uri, into)
        except BundleError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError):
                code = str(cause.response.get("Error", {}).get("Code", ""))
                if code in self._PERMANENT:
                    raise
                raise PortError(f"{uri}: {cause}") from exc
            if cause is not None and isinstance(cause, aws_errors()):
                raise PortError(f"{uri}: {cause}") from exc
            raise


def aws_link(settings: Settings, factory: ClientFactory | None = None) -> tuple[AwsUplink, S3BundleFetcher]:
    """The box's uplink (lake bucket, event bus, alert topic of ``settings``) and S3 bundle fetcher,
    with clients from the standard AWS configuration (``AWS_ENDPOINT_URL`` selects moto)."""
    if factory is None:
        from zaindari.infra.wiring import client_factory

        factory = client_factory()
    uplink = AwsUplink(
        factory,
        bucket=settings.lake_bucket,
        event_bus=settings.event_bus_name,
        topic_arn=settings.alert_topic_arn,
        fmt=settings.scores_format,
    )
    return uplink, S3BundleFetcher(factory)
