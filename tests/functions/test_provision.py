"""template.yaml's data resources are created in the embedded AWS, and functions' environments resolve.

The expectations are read from the template itself (its resource list, its key schemas, its
environment variables), so a resource added to the template is checked without touching this file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.functions.conftest import EmbeddedAws
from zaindari.infra.aws import AwsConfig, ClientFactory
from zaindari.infra.provision import (
    DATA_RESOURCE_TYPES,
    Provisioned,
    ProvisionError,
    Template,
    TemplateError,
    UnresolvableError,
    load_template,
    physical_name,
    provision,
)
from zaindari.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

pytestmark = pytest.mark.aws


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template(TEMPLATE)


def _active_data_resources(template: Template, stack: Provisioned) -> list[str]:
    return [rid for rid in template.resources_of(DATA_RESOURCE_TYPES) if rid not in stack.inactive]


def _exists(factory: ClientFactory, stack: Provisioned, rid: str) -> dict[str, Any]:
    """Describe the resource through its own service's API (not through what provision returned)."""
    resource = stack[rid]
    kind = resource.type
    if kind == "AWS::S3::Bucket":
        return dict(factory.client("s3").head_bucket(Bucket=resource.name))
    if kind in ("AWS::DynamoDB::Table", "AWS::Serverless::SimpleTable"):
        return dict(factory.client("dynamodb").describe_table(TableName=resource.name)["Table"])
    if kind == "AWS::SNS::Topic":
        return dict(factory.client("sns").get_topic_attributes(TopicArn=resource.arn)["Attributes"])
    if kind == "AWS::SNS::Subscription":
        return dict(factory.client("sns").get_subscription_attributes(SubscriptionArn=resource.arn))
    if kind == "AWS::SQS::Queue":
        sqs = factory.client("sqs")
        url = sqs.get_queue_url(QueueName=resource.name)["QueueUrl"]
        return dict(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"])
    if kind == "AWS::Kinesis::Stream":
        return dict(
            factory.client("kinesis").describe_stream_summary(StreamName=resource.name)[
                "StreamDescriptionSummary"
            ]
        )
    if kind == "AWS::Events::EventBus":
        return dict(factory.client("events").describe_event_bus(Name=resource.name))
    if kind == "AWS::Glue::Database":
        return dict(factory.client("glue").get_database(Name=resource.name)["Database"])
    if kind == "AWS::Glue::Table":
        props = stack.resolve(stack.template.resources[rid]["Properties"])
        return dict(
            factory.client("glue").get_table(DatabaseName=props["DatabaseName"], Name=resource.name)["Table"]
        )
    if kind == "AWS::Glue::Job":
        return dict(factory.client("glue").get_job(JobName=resource.name)["Job"])
    raise AssertionError(f"no existence check for {kind}: add one here")


def test_every_data_resource_the_template_declares_exists(aws: EmbeddedAws, template: Template) -> None:
    # Given the project's template; When it is provisioned
    stack = provision(aws.factory, template)

    # Then each resource is created, skipped (not data) or inactive (condition false): nothing is lost
    declared = set(template.resources)
    assert set(stack.resources) | set(stack.skipped) | set(stack.inactive) == declared
    assert not set(stack.resources) & set(stack.skipped)
    expected = _active_data_resources(template, stack)
    assert sorted(stack.resources) == sorted(expected)
    # the template is not vacuous: the function's stores are there
    kinds = {stack[rid].type for rid in expected}
    assert {"AWS::S3::Bucket", "AWS::DynamoDB::Table", "AWS::SNS::Topic", "AWS::SQS::Queue"} <= kinds
    # and each one answers its own service's describe call
    for rid in expected:
        assert _exists(aws.factory, stack, rid), rid


def test_generated_names_follow_stack_dash_logical_id(aws: EmbeddedAws, template: Template) -> None:
    stack = provision(aws.factory, template, stack_name="plant7")

    name_keys = {
        "AWS::S3::Bucket": "BucketName",
        "AWS::DynamoDB::Table": "TableName",
        "AWS::SNS::Topic": "TopicName",
        "AWS::SQS::Queue": "QueueName",
        "AWS::Kinesis::Stream": "Name",
    }
    for rid, resource in stack.resources.items():
        key = name_keys.get(resource.type)
        if key is None or key in (template.resources[rid].get("Properties") or {}):
            continue  # named by the template itself, as CloudFormation would keep it
        assert resource.name == physical_name("plant7", rid, resource.type)
        assert resource.name.startswith(f"plant7-{rid.lower()}"[:40])


def test_tables_get_the_key_schema_and_ttl_of_the_template(aws: EmbeddedAws, template: Template) -> None:
    stack = provision(aws.factory, template)
    dynamodb = aws.factory.client("dynamodb")

    tables = [rid for rid in stack.resources if stack[rid].type == "AWS::DynamoDB::Table"]
    assert tables
    for rid in tables:
        props = template.resources[rid]["Properties"]
        described = dynamodb.describe_table(TableName=stack.name(rid))["Table"]
        assert described["KeySchema"] == props["KeySchema"]
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            described_ttl = dynamodb.describe_time_to_live(TableName=stack.name(rid))["TimeToLiveDescription"]
            assert described_ttl["AttributeName"] == ttl["AttributeName"]
            assert described_ttl["TimeToLiveStatus"] == ("ENABLED" if ttl["Enabled"] else "DISABLED")


def test_queue_redrive_policies_point_at_the_provisioned_dead_letter_queue(
    aws: EmbeddedAws, template: Template
) -> None:
    stack = provision(aws.factory, template)
    sqs = aws.factory.client("sqs")

    with_redrive = [
        rid
        for rid in stack.resources
        if stack[rid].type == "AWS::SQS::Queue" and "RedrivePolicy" in template.resources[rid]["Properties"]
    ]
    assert with_redrive, "the template's telemetry queue declares a dead-letter queue"
    for rid in with_redrive:
        declared = template.resources[rid]["Properties"]["RedrivePolicy"]
        target = declared["deadLetterTargetArn"]["Fn::GetAtt"][0]
        attributes = sqs.get_queue_attributes(QueueUrl=stack.url(rid), AttributeNames=["RedrivePolicy"])
        policy = json.loads(attributes["Attributes"]["RedrivePolicy"])
        assert policy["deadLetterTargetArn"] == stack.arn(target)
        assert int(policy["maxReceiveCount"]) == int(declared["maxReceiveCount"])


def test_function_environment_resolves_to_resources_that_exist(aws: EmbeddedAws, template: Template) -> None:
    stack = provision(aws.factory, template)

    for function in template.functions():
        env = stack.function_environment(function)
        declared = {
            **((template.function_globals.get("Environment") or {}).get("Variables") or {}),
            **((template.resources[function]["Properties"].get("Environment") or {}).get("Variables") or {}),
        }
        # every variable resolved to a plain string (or dropped by AWS::NoValue)
        assert set(env) <= set(declared)
        assert all(isinstance(v, str) and "${" not in v for v in env.values()), env
        # a !Ref to a provisioned resource gives what CloudFormation gives (name, ARN or URL)
        for name, raw in declared.items():
            if isinstance(raw, dict) and set(raw) == {"Ref"} and raw["Ref"] in stack.resources:
                assert env[name] == stack[raw["Ref"]].ref

    # score_event's settings validate, and every AWS name in them points at something real
    settings = Settings.from_env(stack.function_environment("score_event"))
    aws.factory.client("s3").head_bucket(Bucket=settings.lake_bucket)
    aws.factory.client("dynamodb").describe_table(TableName=settings.state_table)
    assert settings.alert_topic_arn is not None
    aws.factory.client("sns").get_topic_attributes(TopicArn=settings.alert_topic_arn)
    assert settings.model_path is not None
    assert settings.model_path.startswith(f"s3://{settings.lake_bucket}/models/")
    assert settings.alert_topic_arn.startswith(f"arn:aws:sns:{aws.factory.config.region}:123456789012:")


def test_function_settings_merge_globals(aws: EmbeddedAws, template: Template) -> None:
    stack = provision(aws.factory, template)
    fn = stack.function_settings("score_event")

    props = template.resources[fn.logical_id]["Properties"]
    assert fn.logical_id == "ScoreEventFunction"
    assert fn.memory_mb == int(props.get("MemorySize", template.function_globals.get("MemorySize", 128)))
    assert fn.timeout_s == float(props.get("Timeout", template.function_globals.get("Timeout", 3)))
    for name in (template.function_globals.get("Environment") or {}).get("Variables") or {}:
        assert name in fn.environment


def test_reprovisioning_is_idempotent_and_keeps_data(aws: EmbeddedAws, template: Template) -> None:
    first = provision(aws.factory, template)
    bucket = next(r.name for r in first.resources.values() if r.type == "AWS::S3::Bucket")
    aws.factory.client("s3").put_object(Bucket=bucket, Key="raw/keep.json", Body=b"{}")
    queues_before = aws.factory.client("sqs").list_queues().get("QueueUrls", [])

    second = provision(aws.factory, template)

    assert second.resources == first.resources
    assert aws.factory.client("sqs").list_queues().get("QueueUrls", []) == queues_before
    assert aws.factory.client("s3").get_object(Bucket=bucket, Key="raw/keep.json")["Body"].read() == b"{}"
    assert second.function_environment("score_event") == first.function_environment("score_event")


# -- the loader and the intrinsic functions, on small inline templates


_INTRINSICS_YAML = """
Parameters:
  Stage: {Type: String, Default: dev}
  Zones: {Type: CommaDelimitedList, Default: "a,b,c"}
  NoDefault: {Type: String}
Mappings:
  Sizes:
    dev: {memory: 512}
    prod: {memory: 2048}
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
  NotProd: !Not [!Condition IsProd]
  Both: !And [!Condition NotProd, !Or [!Equals [a, a], !Condition IsProd]]
Globals:
  Function:
    MemorySize: !FindInMap [Sizes, !Ref Stage, memory]
    Environment:
      Variables:
        FROM_GLOBALS: global
        OVERRIDDEN: global
Resources:
  Data:
    Type: AWS::S3::Bucket
  Dlq:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "${AWS::StackName}-dead-letters"
  Inbox:
    Type: AWS::SQS::Queue
    DependsOn: Data
    Properties:
      RedrivePolicy: {deadLetterTargetArn: !GetAtt Dlq.Arn, maxReceiveCount: 3}
  Topic:
    Type: AWS::SNS::Topic
  ProdOnly:
    Type: AWS::SQS::Queue
    Condition: IsProd
  Alarm:
    Type: AWS::CloudWatch::Alarm
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Timeout: 9
      Environment:
        Variables:
          OVERRIDDEN: local
          BUCKET: !Ref Data
          BUCKET_ARN: !GetAtt Data.Arn
          TOPIC: !Ref Topic
          QUEUE: !Ref Inbox
          DLQ_NAME: !GetAtt Dlq.QueueName
          SUB: !Sub "s3://${Data}/models/${Stage}/${!Literal}/${AWS::Region}/${AWS::AccountId}"
          SUB_VARS: !Sub ["${Name}-${Data.Arn}", {Name: !Select [1, !Ref Zones]}]
          JOINED: !Join [",", !Split ["|", "x|y"]]
          IF_PROD: !If [IsProd, prod, !Ref AWS::NoValue]
          IF_BOTH: !If [Both, "yes", "no"]
          AZ: !Select [0, !GetAZs ""]
          CIDR: !Select [1, !Cidr ["10.0.0.0/16", 4, 8]]
          B64: !Base64 hi
          SELF: !Ref Fn
          SELF_ARN: !GetAtt Fn.Arn
          NUMBER: 3
          FLAG: true
"""


@pytest.fixture
def inline(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "template.yaml"
        path.write_text(text)
        return path

    return write


def test_short_tags_load_as_long_form_intrinsics(inline: Callable[[str], Path]) -> None:
    template = load_template(inline(_INTRINSICS_YAML))
    env = template.resources["Fn"]["Properties"]["Environment"]["Variables"]

    assert env["BUCKET"] == {"Ref": "Data"}
    assert env["BUCKET_ARN"] == {"Fn::GetAtt": ["Data", "Arn"]}
    assert env["IF_PROD"] == {"Fn::If": ["IsProd", "prod", {"Ref": "AWS::NoValue"}]}
    assert template.conditions["NotProd"] == {"Fn::Not": [{"Condition": "IsProd"}]}
    assert env["AZ"] == {"Fn::Select": [0, {"Fn::GetAZs": ""}]}


def test_intrinsics_resolve_against_what_was_provisioned(
    aws: EmbeddedAws, inline: Callable[[str], Path]
) -> None:
    stack = provision(aws.factory, inline(_INTRINSICS_YAML), stack_name="unit", parameters={"NoDefault": "x"})
    region = aws.factory.config.region

    env = stack.function_environment("Fn")

    assert env["FROM_GLOBALS"] == "global"
    assert env["OVERRIDDEN"] == "local"
    assert env["BUCKET"] == "unit-data"
    assert env["BUCKET_ARN"] == "arn:aws:s3:::unit-data"
    assert env["TOPIC"] == f"arn:aws:sns:{region}:123456789012:unit-topic"
    assert env["QUEUE"] == stack.url("Inbox")
    assert env["QUEUE"].endswith("/123456789012/unit-inbox")
    assert env["DLQ_NAME"] == "unit-dead-letters"
    assert env["SUB"] == f"s3://unit-data/models/dev/${{Literal}}/{region}/123456789012"
    assert env["SUB_VARS"] == "b-arn:aws:s3:::unit-data"
    assert env["JOINED"] == "x,y"
    assert "IF_PROD" not in env  # AWS::NoValue removes the variable
    assert env["IF_BOTH"] == "yes"
    assert env["AZ"] == f"{region}a"
    assert env["CIDR"] == "10.0.1.0/24"
    assert env["B64"] == "aGk="
    assert env["SELF"] == "unit-fn"
    assert env["SELF_ARN"] == f"arn:aws:lambda:{region}:123456789012:function:unit-fn"
    assert env["NUMBER"] == "3"
    assert env["FLAG"] == "true"
    assert stack.function_settings("Fn").memory_mb == 512
    assert stack.function_settings("Fn").timeout_s == 9
    # conditions and unknown types
    assert stack.inactive == ["ProdOnly"]
    assert stack.skipped == {"Alarm": "AWS::CloudWatch::Alarm", "Fn": "AWS::Serverless::Function"}


def test_parameters_override_defaults_and_switch_conditions(
    aws: EmbeddedAws, inline: Callable[[str], Path]
) -> None:
    stack = provision(aws.factory, inline(_INTRINSICS_YAML), parameters={"Stage": "prod", "NoDefault": "x"})

    assert "ProdOnly" in stack.resources
    env = stack.function_environment("Fn")
    assert env["IF_PROD"] == "prod"
    assert env["IF_BOTH"] == "no"


def test_unresolvable_references_name_the_variable(aws: EmbeddedAws, inline: Callable[[str], Path]) -> None:
    text = """
Parameters:
  Missing: {Type: String}
Resources:
  Fn:
    Type: AWS::Lambda::Function
    Properties:
      Environment:
        Variables:
          IMPORTED: !ImportValue shared-vpc-id
"""
    stack = provision(aws.factory, inline(text))

    with pytest.raises(UnresolvableError, match=r"IMPORTED.*ImportValue"):
        stack.function_environment("Fn")
    with pytest.raises(UnresolvableError, match="Missing"):
        stack.resolve({"Ref": "Missing"})
    with pytest.raises(TemplateError, match="no such"):
        stack.resolve({"Ref": "Nowhere"})


def test_refuses_to_provision_into_real_aws(template: Template) -> None:
    with pytest.raises(ProvisionError, match="real AWS"):
        provision(ClientFactory(AwsConfig(region="eu-west-1", endpoint_url=None)), template)


def test_types_later_issues_add_are_provisioned_too(aws: EmbeddedAws, inline: Callable[[str], Path]) -> None:
    text = """
Resources:
  Bus: {Type: AWS::Events::EventBus, Properties: {Name: !Sub "${AWS::StackName}-bus"}}
  Lake: {Type: AWS::Glue::Database, Properties: {CatalogId: !Ref AWS::AccountId, DatabaseInput: {}}}
  Scores:
    Type: AWS::Glue::Table
    Properties:
      CatalogId: !Ref AWS::AccountId
      DatabaseName: !Ref Lake
      TableInput:
        Name: scores
        PartitionKeys: [{Name: date, Type: string}]
        StorageDescriptor: {Location: s3://somewhere/scores/, Columns: [{Name: score, Type: double}]}
  Stream: {Type: AWS::Kinesis::Stream, Properties: {StreamModeDetails: {StreamMode: ON_DEMAND}}}
  Simple: {Type: AWS::Serverless::SimpleTable, Properties: {PrimaryKey: {Name: pk, Type: String}}}
  Ordered: {Type: AWS::SQS::Queue, Properties: {FifoQueue: true, ContentBasedDeduplication: true}}
  Inbox: {Type: AWS::SQS::Queue}
  Alerts: {Type: AWS::SNS::Topic}
  AlertsToQueue:
    Type: AWS::SNS::Subscription
    Properties: {TopicArn: !Ref Alerts, Protocol: sqs, Endpoint: !GetAtt Inbox.Arn, RawMessageDelivery: true}
"""
    template = load_template(inline(text))

    first = provision(aws.factory, template)
    second = provision(aws.factory, template)

    assert second.resources == first.resources
    assert sorted(first.resources) == sorted(template.resources)
    for rid in first.resources:
        assert _exists(aws.factory, first, rid), rid
    assert first.name("Bus") == "zaindari-bus"
    assert first.name("Lake") == "zaindari_lake"  # Glue names use underscores (Athena)
    assert first.name("Ordered").endswith(".fifo")
    subscriptions = aws.factory.client("sns").list_subscriptions_by_topic(TopicArn=first.arn("Alerts"))
    assert len(subscriptions["Subscriptions"]) == 1  # the second run found it, did not add one
