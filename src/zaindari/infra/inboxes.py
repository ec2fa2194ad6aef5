"""Inboxes for what the functions publish: SQS queues subscribed to an SNS topic and targeted by an
EventBridge rule, read back by the tests and the demo (as the people and systems downstream would)."""

from __future__ import annotations

import json
from typing import Any

from zaindari.infra.aws import ClientFactory

__all__ = ["drain_queue", "subscribe_inboxes"]


def _queue_arn(factory: ClientFactory, url: str) -> str:
    attributes = factory.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def subscribe_inboxes(
    factory: ClientFactory, topic_arn: str, detail_type: str, name: str, event_bus: str = "default"
) -> dict[str, str]:
    """Two queues, ``<name>-from-sns`` (subscribed to ``topic_arn``, raw delivery) and
    ``<name>-from-eventbridge`` (target of rule ``name`` on ``detail_type``); their URLs by channel."""
    sqs = factory.client("sqs")
    inboxes = {
        "sns": sqs.create_queue(QueueName=f"{name}-from-sns")["QueueUrl"],
        "eventbridge": sqs.create_queue(QueueName=f"{name}-from-eventbridge")["QueueUrl"],
    }
    factory.client("sns").subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=_queue_arn(factory, inboxes["sns"]),
        Attributes={"RawMessageDelivery": "true"},
    )
    events = factory.client("events")
    events.put_rule(
        Name=name, EventBusName=event_bus, EventPattern=json.dumps({"detail-type": [detail_type]})
    )
    events.put_targets(
        Rule=name,
        EventBusName=event_bus,
        Targets=[{"Id": "q", "Arn": _queue_arn(factory, inboxes["eventbridge"])}],
    )
    return inboxes


def drain_queue(factory: ClientFactory, url: str) -> list[Any]:
    """Every message waiting in a queue, decoded from JSON, deleted as read."""
    sqs = factory.client("sqs")
    out: list[Any] = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        out.extend(json.loads(m["Body"]) for m in messages)
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return out
