"""Query-protocol clients (SNS) form-encode a request body once, to the bytes botocore would send."""

from __future__ import annotations

from typing import Any

import botocore.awsrequest
import pytest

from tests.functions.conftest import EmbeddedAws
from zaindari.infra.aws import ClientFactory, form_encode_once

ENTRIES = [
    {
        "Id": str(i),
        "Subject": f"[critical] threshold: temp_high on press-0{i} é",
        "Message": '{"device_id": "press-01", "observed": {"temperature": 88.5}, "note": "a+b=c & ü"}',
        "MessageAttributes": {"severity": {"DataType": "String", "StringValue": "critical"}},
    }
    for i in range(10)
]


def _sent(client: Any, topic_arn: str) -> tuple[Any, dict[str, Any]]:
    sent: list[Any] = []
    client.meta.events.register("before-send", lambda request, **_: sent.append(request))
    response = client.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=ENTRIES)
    return sent[-1], response


def test_a_query_body_is_encoded_once_and_sent_as_botocore_encodes_it(
    aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an SNS client from the factory and one with botocore's own encoding (the hook removed)
    ours = ClientFactory(aws.factory.config).client("sns")
    theirs = ClientFactory(aws.factory.config).client("sns")
    theirs.meta.events.unregister("request-created.sns", form_encode_once)
    topic = ours.create_topic(Name="alerts")["TopicArn"]
    encoded: list[int] = []
    real_urlencode = botocore.awsrequest.urlencode

    def counting(*args: Any, **kwargs: Any) -> str:
        encoded.append(1)
        return real_urlencode(*args, **kwargs)

    monkeypatch.setattr(botocore.awsrequest, "urlencode", counting)

    # When each publishes the same batch
    request, response = _sent(ours, topic)
    botocore_encodings = len(encoded)
    reference, reference_response = _sent(theirs, topic)

    # Then botocore encoded ours not at all (the hook did, once) and theirs twice (to sign, to send)...
    assert botocore_encodings == 0
    assert len(encoded) == 2
    # ... and the bytes sent, their length and type are the same; SNS accepted both batches
    assert request.body == reference.body
    assert request.headers["Content-Type"] == reference.headers["Content-Type"]
    assert request.headers["Content-Length"] == reference.headers["Content-Length"]
    assert len(response["Successful"]) == len(reference_response["Successful"]) == 10
    # a presigned URL (which needs the parameters as a dict) still carries them in its query
    assert "Action=ListTopics" in ours.generate_presigned_url("list_topics")
