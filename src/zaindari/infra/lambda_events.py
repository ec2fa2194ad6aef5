"""Real AWS event shapes around our own payloads: what SQS, EventBridge, API Gateway (HTTP API,
payload 2.0) and S3 (through EventBridge) hand a Lambda function.

One implementation for the tests, the benchmarks and the demo; the shapes match the files in
``events/`` (``sam local generate-event`` output with our telemetry inside).
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

__all__ = ["eventbridge_event", "http_event", "s3_object_created_event", "sqs_event"]

_REGION = "eu-west-1"
_ACCOUNT = "123456789012"


def sqs_event(bodies: list[str], ids: list[str] | None = None) -> dict[str, Any]:
    """An SQS event source batch holding ``bodies`` (message ids ``msg-00000``... unless given)."""
    ids = ids or [f"msg-{i:05d}" for i in range(len(bodies))]
    return {
        "Records": [
            {
                "messageId": mid,
                "receiptHandle": f"handle-{mid}",
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1763700000000",
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "1763700000001",
                },
                "messageAttributes": {},
                "md5OfBody": "0" * 32,
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{_REGION}:{_ACCOUNT}:zaindari-telemetryqueue",
                "awsRegion": _REGION,
            }
            for mid, body in zip(ids, bodies, strict=True)
        ]
    }


def eventbridge_event(
    detail: Any, detail_type: str = "Zaindari Telemetry", source: str = "zaindari.plant"
) -> dict[str, Any]:
    """An EventBridge event carrying ``detail``."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": _ACCOUNT,
        "time": "2026-11-20T10:00:00Z",
        "region": _REGION,
        "resources": [],
        "detail": detail,
    }


def http_event(
    method: str, path: str, body: str | None = None, *, base64_body: bool = False
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) request."""
    payload = body
    if body is not None and base64_body:
        payload = base64.b64encode(body.encode()).decode()
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "abc.execute-api.eu-west-1.amazonaws.com"},
        "requestContext": {
            "accountId": _ACCOUNT,
            "apiId": "abc",
            "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "abc",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "10.0.0.1",
                "userAgent": "t",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "20/Nov/2026:10:00:00 +0000",
            "timeEpoch": 1763632800000,
        },
        "body": payload,
        "isBase64Encoded": base64_body,
    }


def s3_object_created_event(
    bucket: str, key: str, *, size: int, etag: str, version_id: str | None = None
) -> dict[str, Any]:
    """S3's ``Object Created`` event as EventBridge delivers it (the bucket's notifications on)."""
    obj: dict[str, Any] = {
        "key": key,
        "size": size,
        "etag": etag.strip('"'),
        "sequencer": "00673E0A14C2D5F6A7",
    }
    if version_id:
        obj["version-id"] = version_id
    event = eventbridge_event(
        {
            "version": "0",
            "bucket": {"name": bucket},
            "object": obj,
            "request-id": uuid.uuid4().hex[:16].upper(),
            "requester": _ACCOUNT,
            "source-ip-address": "10.20.0.15",
            "reason": "PutObject",
        },
        detail_type="Object Created",
        source="aws.s3",
    )
    event["resources"] = [f"arn:aws:s3:::{bucket}"]
    return event
