"""Drift monitoring's ports on AWS: window summaries in the lake (S3), the last drift trigger per model
(DynamoDB, conditional writes), the drift event (EventBridge) and the alert for people (SNS).

Summary keys: see :func:`zaindari.drift.summary_objects` (one object per batch and day; a batch of live
telemetry touches one window: one small PutObject).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from zaindari.drift import (
    DRIFT_DETAIL_TYPE,
    SUMMARIES_PREFIX,
    WindowSummary,
    summaries_json,
    summary_days,
    summary_key_span,
    summary_objects,
)
from zaindari.infra.aws import ClientFactory
from zaindari.infra.aws_ports import EVENT_SOURCE, aws_errors
from zaindari.jsonable import json_default
from zaindari.ports import PortError

__all__ = ["DynamoDriftTriggerLog", "S3SummaryStore", "SnsEventBridgeDriftNotifier"]


class S3SummaryStore:
    """Window summaries as small JSON objects in the lake bucket."""

    def __init__(self, factory: ClientFactory, bucket: str) -> None:
        self.factory = factory
        self.bucket = bucket

    def write(self, summaries: Sequence[WindowSummary], *, source: str, name: str) -> list[str]:
        client = self.factory.client("s3")
        written = []
        try:
            for key, group in summary_objects(summaries, source=source, name=name).items():
                client.put_object(
                    Bucket=self.bucket, Key=key, Body=summaries_json(group), ContentType="application/json"
                )
                written.append(key)
        except aws_errors() as exc:
            raise PortError(f"S3 {self.bucket}: {exc}") from exc
        return written

    def read(self, model: str, start: datetime, end: datetime) -> list[WindowSummary]:
        client = self.factory.client("s3")
        lo, hi = start.timestamp(), end.timestamp()
        out: list[WindowSummary] = []
        try:
            paginator = client.get_paginator("list_objects_v2")
            for day in summary_days(start, end):
                prefix = f"{SUMMARIES_PREFIX}/date={day}/model={model}/"
                for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                    for item in page.get("Contents", []):
                        span = summary_key_span(item["Key"])
                        if span is None or span[1] < lo or span[0] >= hi:
                            continue
                        body = client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                        out += [
                            s for s in map(WindowSummary.from_dict, json.loads(body)) if lo <= s.start < hi
                        ]
        except aws_errors() as exc:
            raise PortError(f"S3 {self.bucket}: {exc}") from exc
        return out


class DynamoDriftTriggerLog:
    """One item per model (``model``): when drift last asked for a retraining, and its evidence."""

    def __init__(self, factory: ClientFactory, table: str) -> None:
        self.factory = factory
        self.table = table

    def claim(self, model: str, at: datetime, min_interval: timedelta, evidence: Mapping[str, Any]) -> bool:
        client = self.factory.client("dynamodb")
        stamp = at.timestamp()
        try:
            client.put_item(
                TableName=self.table,
                Item={
                    "model": {"S": model},
                    "triggered_at": {"N": repr(stamp)},
                    "evidence": {"S": json.dumps(evidence, default=json_default)[:350_000]},
                    "updated_at": {"N": str(int(time.time()))},
                },
                ConditionExpression="attribute_not_exists(#m) OR triggered_at <= :cutoff",
                ExpressionAttributeNames={"#m": "model"},
                ExpressionAttributeValues={":cutoff": {"N": repr(stamp - min_interval.total_seconds())}},
            )
        except aws_errors() as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise PortError(f"DynamoDB {self.table}: {exc}") from exc
        return True

    def release(self, model: str, at: datetime) -> None:
        client = self.factory.client("dynamodb")
        try:
            client.delete_item(
                TableName=self.table,
                Key={"model": {"S": model}},
                ConditionExpression="triggered_at = :at",
                ExpressionAttributeValues={":at": {"N": repr(at.timestamp())}},
            )
        except aws_errors() as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return
            raise PortError(f"DynamoDB {self.table}: {exc}") from exc


class SnsEventBridgeDriftNotifier:
    """``Zaindari Drift Detected`` on EventBridge (its rule starts ``start_retraining``); SNS for people."""

    def __init__(self, factory: ClientFactory, topic_arn: str | None, event_bus: str) -> None:
        self.factory = factory
        self.topic_arn = topic_arn
        self.event_bus = event_bus

    def drift_detected(self, detail: Mapping[str, Any]) -> None:
        entry = {
            "Source": EVENT_SOURCE,
            "DetailType": DRIFT_DETAIL_TYPE,
            "Detail": json.dumps(detail, default=json_default),
            "EventBusName": self.event_bus,
        }
        try:
            response = self.factory.client("events").put_events(Entries=[entry])
        except aws_errors() as exc:
            raise PortError(f"EventBridge {self.event_bus}: {exc}") from exc
        if response.get("FailedEntryCount"):
            raise PortError(f"EventBridge {self.event_bus}: {response['Entries'][0].get('ErrorMessage')}")

    def tell_people(self, subject: str, message: Mapping[str, Any]) -> None:
        if not self.topic_arn:
            return
        try:
            self.factory.client("sns").publish(
                TopicArn=self.topic_arn,
                Subject=subject[:100],
                Message=json.dumps(message, indent=2, default=json_default),
                MessageAttributes={"kind": {"DataType": "String", "StringValue": "drift"}},
            )
        except aws_errors() as exc:
            raise PortError(f"SNS {self.topic_arn}: {exc}") from exc


def _conforms() -> None:
    from zaindari.drift import DriftNotifier, DriftTriggerLog, SummaryStore

    factory: Any = None
    _s: SummaryStore = S3SummaryStore(factory, "")
    _t: DriftTriggerLog = DynamoDriftTriggerLog(factory, "")
    _n: DriftNotifier = SnsEventBridgeDriftNotifier(factory, None, "")
