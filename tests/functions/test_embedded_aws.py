"""The embedded AWS (moto server on a loopback port) behaves like AWS for the services we use."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import boto3.session
import pytest
from botocore.exceptions import EndpointConnectionError
from pydantic import ValidationError

from tests.functions.conftest import EmbeddedAws
from zaindari.cli import main as cli_main
from zaindari.infra.aws import AwsConfig, ClientFactory
from zaindari.infra.local_aws import (
    LOCAL_CREDENTIALS,
    PortInUseError,
    is_moto_server,
    start_local_aws,
    wait_until_ready,
)

REGION = "eu-west-1"


def _create_bucket(factory: ClientFactory, name: str) -> None:
    factory.client("s3").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": factory.config.region}
    )


def _create_queue(factory: ClientFactory, name: str) -> tuple[str, str]:
    sqs = factory.client("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def _receive_bodies(factory: ClientFactory, queue_url: str) -> list[str]:
    messages = factory.client("sqs").receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
    )
    return [message["Body"] for message in messages.get("Messages", [])]


@pytest.mark.aws
class TestServices:
    def test_s3_object_round_trips(self, aws: EmbeddedAws) -> None:
        s3 = aws.factory.client("s3")
        _create_bucket(aws.factory, "zaindari-models")

        s3.put_object(Bucket="zaindari-models", Key="pump/v1/model.onnx", Body=b"\x08\x01onnx")
        body = s3.get_object(Bucket="zaindari-models", Key="pump/v1/model.onnx")["Body"].read()

        assert body == b"\x08\x01onnx"

    def test_dynamodb_item_round_trips_through_a_resource(self, aws: EmbeddedAws) -> None:
        aws.factory.client("dynamodb").create_table(
            TableName="registry",
            KeySchema=[{"AttributeName": "model", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "model", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        table = aws.factory.resource("dynamodb").Table("registry")

        table.put_item(Item={"model": "pump", "version": 3, "threshold": "0.82"})
        item = table.get_item(Key={"model": "pump"})["Item"]

        assert item == {"model": "pump", "version": 3, "threshold": "0.82"}

    def test_sns_publish_reaches_a_subscribed_queue(self, aws: EmbeddedAws) -> None:
        queue_url, queue_arn = _create_queue(aws.factory, "alerts")
        sns = aws.factory.client("sns")
        topic_arn = sns.create_topic(Name="anomalies")["TopicArn"]
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true"},
        )

        sns.publish(TopicArn=topic_arn, Message='{"asset": "pump-7", "score": 0.97}')

        assert _receive_bodies(aws.factory, queue_url) == ['{"asset": "pump-7", "score": 0.97}']

    def test_eventbridge_rule_delivers_matching_events_to_a_queue(self, aws: EmbeddedAws) -> None:
        queue_url, queue_arn = _create_queue(aws.factory, "drift")
        events = aws.factory.client("events")
        events.put_rule(
            Name="drift-detected",
            EventPattern=json.dumps({"source": ["zaindari.drift"]}),
            State="ENABLED",
        )
        events.put_targets(Rule="drift-detected", Targets=[{"Id": "drift-queue", "Arn": queue_arn}])

        result = events.put_events(
            Entries=[
                {
                    "Source": "zaindari.drift",
                    "DetailType": "DriftDetected",
                    "Detail": json.dumps({"model": "pump", "psi": 0.31}),
                },
                {"Source": "somebody.else", "DetailType": "Noise", "Detail": "{}"},
            ]
        )

        assert result["FailedEntryCount"] == 0
        delivered = [json.loads(body) for body in _receive_bodies(aws.factory, queue_url)]
        assert [(event["detail-type"], event["detail"]) for event in delivered] == [
            ("DriftDetected", {"model": "pump", "psi": 0.31})
        ]


@pytest.mark.aws
class TestRequestCounter:
    def test_counts_exactly_the_requests_sent(self, aws: EmbeddedAws) -> None:
        s3 = aws.factory.client("s3")
        _create_bucket(aws.factory, "counted")
        s3.put_object(Bucket="counted", Key="a", Body=b"1")
        s3.put_object(Bucket="counted", Key="b", Body=b"2")
        aws.factory.client("sqs").list_queues()

        counter = aws.factory.request_counter
        assert counter.total == 4
        assert counter.by_operation == {"s3.CreateBucket": 1, "s3.PutObject": 2, "sqs.ListQueues": 1}
        assert counter.by_service == {"s3": 3, "sqs": 1}

    def test_counts_requests_made_through_resources_and_failed_calls(self, aws: EmbeddedAws) -> None:
        s3 = aws.factory.client("s3")
        with pytest.raises(s3.exceptions.NoSuchBucket):
            s3.list_objects_v2(Bucket="missing")
        list(aws.factory.resource("s3").buckets.all())

        assert aws.factory.request_counter.by_operation == {"s3.ListObjectsV2": 1, "s3.ListBuckets": 1}

    def test_each_retry_attempt_counts_and_a_call_makes_at_most_max_attempts(
        self, free_tcp_port: int
    ) -> None:
        # Nothing listens on free_tcp_port: every attempt fails to connect and is retried.
        config = AwsConfig(region=REGION, endpoint_url=f"http://127.0.0.1:{free_tcp_port}", max_attempts=3)
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
        factory = ClientFactory(config, session=session)

        with pytest.raises(EndpointConnectionError):
            factory.client("sqs").list_queues()

        assert factory.request_counter.by_operation == {"sqs.ListQueues": 3}

    def test_reset_starts_from_zero(self, aws: EmbeddedAws) -> None:
        aws.factory.client("s3").list_buckets()
        aws.factory.request_counter.reset()

        assert aws.factory.request_counter.total == 0
        assert aws.factory.request_counter.by_operation == {}

    def test_clients_and_resources_are_made_once_per_service(self, aws: EmbeddedAws) -> None:
        assert aws.factory.client("s3") is aws.factory.client("s3")
        assert aws.factory.resource("dynamodb") is aws.factory.resource("dynamodb")
        assert aws.factory.client("s3") is not aws.factory.client("sqs")


@pytest.mark.aws
class TestServerLifecycle:
    def test_reset_wipes_every_resource(self, aws: EmbeddedAws) -> None:
        _create_bucket(aws.factory, "before-reset")
        aws.factory.client("sqs").create_queue(QueueName="before-reset")

        aws.reset()

        assert aws.factory.client("s3").list_buckets()["Buckets"] == []
        assert aws.factory.client("sqs").list_queues().get("QueueUrls", []) == []

    def test_a_moto_server_already_listening_is_reused_not_stopped(self, aws: EmbeddedAws) -> None:
        _create_bucket(aws.factory, "shared")

        reused = start_local_aws("127.0.0.1", aws.port)
        reused.stop()

        assert not reused.owned
        assert reused.endpoint_url == aws.endpoint_url
        assert [b["Name"] for b in aws.factory.client("s3").list_buckets()["Buckets"]] == ["shared"]

    def test_a_moto_server_is_not_reused_when_reuse_is_refused(self, aws: EmbeddedAws) -> None:
        with pytest.raises(PortInUseError, match="another moto server"):
            start_local_aws("127.0.0.1", aws.port, reuse_existing=False)

    def test_a_port_taken_by_something_else_fails_fast(self) -> None:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            started = time.monotonic()
            with pytest.raises(PortInUseError, match="not a moto server"):
                start_local_aws("127.0.0.1", squatter.getsockname()[1])
        assert time.monotonic() - started < 5

    def test_nothing_listening_is_not_a_moto_server(self, free_tcp_port: int) -> None:
        endpoint = f"http://127.0.0.1:{free_tcp_port}"
        assert not is_moto_server(endpoint)
        with pytest.raises(TimeoutError):
            wait_until_ready(endpoint, timeout_s=0.2)


@pytest.mark.aws
class TestStandardClientsFindTheServer:
    def test_plain_boto3_reads_the_standard_environment(self, aws: EmbeddedAws) -> None:
        _create_bucket(aws.factory, "from-env")

        names = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]

        assert names == ["from-env"]

    def test_a_factory_built_from_the_environment_reaches_the_server(self, aws: EmbeddedAws) -> None:
        _create_bucket(aws.factory, "from-config")

        factory = ClientFactory(AwsConfig.from_env(os.environ))

        assert factory.config == AwsConfig(region=REGION, endpoint_url=aws.endpoint_url)
        assert [b["Name"] for b in factory.client("s3").list_buckets()["Buckets"]] == ["from-config"]

    def test_no_endpoint_means_real_aws_even_when_the_environment_names_one(self, aws: EmbeddedAws) -> None:
        # Only the endpoint is resolved; no request is sent.
        s3 = ClientFactory(AwsConfig(region=REGION, endpoint_url=None)).client("s3")

        assert s3.meta.endpoint_url == f"https://s3.{REGION}.amazonaws.com"

    @pytest.mark.parametrize("pointed_by", ["AWS_ENDPOINT_URL", "LOCALSTACK_HOST"])
    def test_localstack_client_sessions_work_unchanged(
        self, aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch, pointed_by: str
    ) -> None:
        from localstack_client.session import Session

        _create_bucket(aws.factory, "localstack-style")
        if pointed_by == "LOCALSTACK_HOST":
            monkeypatch.delenv("AWS_ENDPOINT_URL")
            monkeypatch.setenv("LOCALSTACK_HOST", f"127.0.0.1:{aws.port}")

        names = [b["Name"] for b in Session().client("s3").list_buckets()["Buckets"]]

        assert names == ["localstack-style"]


class TestAwsConfigFromEnv:
    def test_defaults_to_real_aws_in_eu_west_1(self) -> None:
        assert AwsConfig.from_env({}) == AwsConfig(region="eu-west-1", endpoint_url=None)

    def test_aws_region_beats_aws_default_region(self) -> None:
        env = {"AWS_REGION": "us-east-2", "AWS_DEFAULT_REGION": "ap-south-1"}
        assert AwsConfig.from_env(env).region == "us-east-2"
        assert AwsConfig.from_env({"AWS_DEFAULT_REGION": "ap-south-1"}).region == "ap-south-1"

    def test_explicit_arguments_beat_the_environment(self) -> None:
        env = {"AWS_REGION": "us-east-2", "AWS_ENDPOINT_URL": "http://localhost:4566"}

        config = AwsConfig.from_env(env, region="eu-central-1", endpoint_url="http://moto:5000")

        assert (config.region, config.endpoint_url) == ("eu-central-1", "http://moto:5000")

    def test_endpoint_comes_from_aws_endpoint_url(self) -> None:
        config = AwsConfig.from_env({"AWS_ENDPOINT_URL": "http://localhost:4566/"})
        assert config.endpoint_url == "http://localhost:4566"
        assert config.is_local

    def test_blank_values_count_as_unset(self) -> None:
        config = AwsConfig.from_env({"AWS_REGION": " ", "AWS_ENDPOINT_URL": ""})
        assert config == AwsConfig(region="eu-west-1", endpoint_url=None)

    def test_a_malformed_endpoint_fails_at_construction(self) -> None:
        with pytest.raises(ValidationError, match="http"):
            AwsConfig.from_env({"AWS_ENDPOINT_URL": "localhost:4566"})

    def test_config_is_frozen(self) -> None:
        config = AwsConfig.from_env({})
        with pytest.raises(ValidationError):
            config.region = "us-east-1"  # type: ignore[misc]

    def test_botocore_config_uses_standard_retries_and_timeouts(self) -> None:
        botocore_config = AwsConfig.from_env({}).botocore_config()
        assert botocore_config.retries == {"mode": "standard", "total_max_attempts": 3}
        assert (botocore_config.connect_timeout, botocore_config.read_timeout) == (5.0, 30.0)
        # botocore checks parameters unless a hot path opts out (score_event does)
        assert botocore_config.parameter_validation is True
        assert AwsConfig(validate_parameters=False).botocore_config().parameter_validation is False

    def test_score_event_clients_skip_parameter_validation_and_others_keep_it(self) -> None:
        from zaindari.infra.wiring import client_factory

        assert client_factory({}).config.validate_parameters is True
        assert client_factory({}, validate_parameters=False).config.validate_parameters is False

    def test_a_fixed_user_agent_is_botocores_own_string_made_once(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from zaindari.infra.aws import ClientFactory

        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
            monkeypatch.setenv(name, value)

        sent: list[str] = []

        class Stop(Exception):
            pass

        def capture(request: Any, **_: Any) -> None:
            sent.append(request.headers["User-Agent"].decode())
            raise Stop

        headers: dict[bool, str] = {}
        for fixed in (False, True):
            config = AwsConfig(region="eu-west-1", endpoint_url="http://127.0.0.1:9", fixed_user_agent=fixed)
            client = ClientFactory(config, botocore_only=True).client("s3")
            client.meta.events.register("before-send", capture)
            with pytest.raises(Stop):
                client.list_buckets()
            headers[fixed] = sent[-1]
        assert AwsConfig().botocore_config().user_agent is None  # off by default
        # the same SDK, OS, language and retry-mode parts; only the per-request feature ids are gone
        assert headers[True].startswith("Botocore/") and "cfg/retry-mode#standard" in headers[True]
        assert " m/" in headers[False] and " m/" not in headers[True]
        assert set(headers[True].split()) <= set(headers[False].split())


class TestCli:
    def test_help_lists_the_aws_command(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["--help"])
        assert exit_info.value.code == 0
        assert "aws" in capsys.readouterr().out

    @pytest.mark.aws
    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
    def test_aws_up_serves_until_stopped(self, free_tcp_port: int, stop_signal: signal.Signals) -> None:
        script = Path(sys.executable).with_name("zaindari")
        assert script.exists(), "run: .venv/bin/uv pip install --python .venv/bin/python -e ."
        endpoint = f"http://127.0.0.1:{free_tcp_port}"
        env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        process = subprocess.Popen(
            [str(script), "aws", "up", "--port", str(free_tcp_port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            wait_until_ready(endpoint, timeout_s=30)
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name=REGION,
                aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            )
            s3.create_bucket(Bucket="from-cli", CreateBucketConfiguration={"LocationConstraint": REGION})
            assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["from-cli"]

            process.send_signal(stop_signal)
            out, err = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()

        assert process.returncode == 0, err
        assert f"listening on {endpoint}" in out
        assert "stopped" in out


def test_the_embedded_sagemaker_answers_update_endpoint_which_moto_lacks(aws: EmbeddedAws) -> None:
    # Given an endpoint on one config and a second config (what deploy_model makes for a new version)
    sm = aws.factory.client("sagemaker")
    role, image = "arn:aws:iam::123456789012:role/serving", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/s:1"
    sm.create_model(ModelName="m", ExecutionRoleArn=role, PrimaryContainer={"Image": image})
    for name, memory in (("config-1", 1024), ("config-2", 2048)):
        variant = {
            "VariantName": "AllTraffic",
            "ModelName": "m",
            "ServerlessConfig": {"MemorySizeInMB": memory, "MaxConcurrency": 1},
        }
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])
    sm.create_endpoint(EndpointName="e", EndpointConfigName="config-1")
    # When it is updated to the second
    arn = sm.update_endpoint(EndpointName="e", EndpointConfigName="config-2")["EndpointArn"]
    # Then the endpoint names it, and an unknown endpoint is refused as AWS refuses it
    assert arn.endswith(":endpoint/e")
    assert sm.describe_endpoint(EndpointName="e")["EndpointConfigName"] == "config-2"
    with pytest.raises(sm.exceptions.ClientError, match="Could not find endpoint"):
        sm.update_endpoint(EndpointName="missing", EndpointConfigName="config-2")
