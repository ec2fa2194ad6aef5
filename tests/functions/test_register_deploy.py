"""register_model and deploy_model on moto: register -> gate -> promote -> deploy -> roll back, refusals,
the SageMaker Model Registry mirror, the edge's model-update event, and Lambda alias resolution.

moto 5 has no ``UpdateEndpoint``: the flow test answers that one call locally after checking the
request against botocore's API shape (``emulate_update_endpoint``); the rest runs on moto.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.functions.conftest import EmbeddedAws, drain
from tests.registry_support import labelled_metrics, recent_readings, registry_bundle
from tests.support import LambdaContext, load_function, plant_readings, sqs_event
from zaindari.bundle import MODEL_FILE
from zaindari.infra.deploy_ports import build_model_lifecycle
from zaindari.infra.provision import seed_model_bundle
from zaindari.infra.registry_store import create_registry_table
from zaindari.registry_events import ModelUpdate
from zaindari.settings import Settings

pytestmark = pytest.mark.aws

ROOT = Path(__file__).resolve().parents[2]
MODEL = "plant-anomaly"
LAKE = "zaindari-test-lake"
REGISTRY = "zaindari-test-registry"
TRAIN_JOB = "zaindari-train-model"
REGION = "eu-west-1"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/zaindari-serving:1"
ROLE = "arn:aws:iam::123456789012:role/zaindari-sagemaker"
EVENT_TYPES = (
    "Zaindari Model Registered",
    "Zaindari Model Promoted",
    "Zaindari Model Rolled Back",
    "Zaindari Model Refused",
    "Zaindari Model Update",
)


@pytest.fixture
def env(aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The resources the template declares for register_model and deploy_model."""
    aws.factory.client("s3").create_bucket(
        Bucket=LAKE, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    create_registry_table(aws.factory, REGISTRY)
    topic = aws.factory.client("sns").create_topic(Name="zaindari-alerts")["TopicArn"]
    values = {
        "ZAINDARI_LAKE_BUCKET": LAKE,
        "ZAINDARI_REGISTRY_TABLE": REGISTRY,
        "ZAINDARI_ALERT_TOPIC_ARN": topic,
        "ZAINDARI_EVENT_BUS_NAME": "default",
        "ZAINDARI_TRAIN_MODEL_JOB": TRAIN_JOB,
        "ZAINDARI_MODEL_CACHE_DIR": str(tmp_path / "models"),
        "ZAINDARI_SAGEMAKER_IMAGE_URI": IMAGE,
        "ZAINDARI_SAGEMAKER_EXECUTION_ROLE_ARN": ROLE,
        "POWERTOOLS_METRICS_NAMESPACE": "ZaindariTest",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture
def inboxes(aws: EmbeddedAws, env: dict[str, str]) -> dict[str, str]:
    """One SQS queue per registry event type (EventBridge rule targets), and one on the alert topic."""
    from zaindari.infra.inboxes import subscribe_inboxes

    queues: dict[str, str] = {}
    for i, detail_type in enumerate(EVENT_TYPES):
        made = subscribe_inboxes(aws.factory, env["ZAINDARI_ALERT_TOPIC_ARN"], detail_type, f"registry-{i}")
        queues[detail_type] = made["eventbridge"]
        queues["sns"] = made["sns"]  # every sns queue gets every alert: keep one
    return queues


@pytest.fixture
def recent_traffic(aws: EmbeddedAws, env: dict[str, str]) -> None:
    """Recent raw telemetry in the lake, as score_event writes it (JSON Lines, gzipped)."""
    rows = [r.to_record() for r in recent_readings()[:600]]
    body = gzip.compress("\n".join(json.dumps(r) for r in rows).encode())
    aws.factory.client("s3").put_object(
        Bucket=LAKE, Key="raw/telemetry/date=2026-11-20/events-test.jsonl.gz", Body=body
    )


def emulate_update_endpoint(aws: EmbeddedAws) -> list[dict[str, Any]]:
    """Answer ``UpdateEndpoint`` (which moto lacks) on the factory's SageMaker client.

    The request is first checked against the operation's input shape by botocore's own
    validator (as ``Stubber`` does); the endpoint then points at the new config in moto's backend.
    """
    from botocore.validate import validate_parameters
    from moto.sagemaker.models import sagemaker_backends

    client = aws.factory.client("sagemaker")
    calls: list[dict[str, Any]] = []
    shape = client.meta.service_model.operation_model("UpdateEndpoint").input_shape

    def answer(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        body = json.loads(params["body"])
        validate_parameters(body, shape)
        calls.append(body)
        backend = sagemaker_backends["123456789012"][REGION]
        endpoint = backend.endpoints[body["EndpointName"]]
        endpoint.endpoint_config_name = body["EndpointConfigName"]
        return (
            type("Http", (), {"status_code": 200, "headers": {}})(),
            {"EndpointArn": endpoint.arn, "ResponseMetadata": {"HTTPStatusCode": 200}},
        )

    client.meta.events.register("before-call.sagemaker.UpdateEndpoint", answer)
    return calls


def glue_training_run(aws: EmbeddedAws, output: str) -> dict[str, Any]:
    """A finished train_model Glue run writing to ``output``, and its state-change event."""
    glue = aws.factory.client("glue")
    with contextlib.suppress(glue.exceptions.AlreadyExistsException):
        glue.create_job(
            Name=TRAIN_JOB, Role=ROLE, Command={"Name": "glueetl", "ScriptLocation": "s3://x/t.py"}
        )
    run_id = glue.start_job_run(JobName=TRAIN_JOB, Arguments={"--output": output})["JobRunId"]
    event = json.loads((ROOT / "events" / "eventbridge_glue_job_succeeded.json").read_text())
    event["detail"].update(jobName=TRAIN_JOB, jobRunId=run_id)
    return event


def trained_event(bundle_uri: str) -> dict[str, Any]:
    event = json.loads((ROOT / "events" / "eventbridge_model_trained.json").read_text())
    event["detail"]["bundle_uri"] = bundle_uri
    return event


def candidate(aws: EmbeddedAws, bundle_dir: Path, tmp_path: Path, run: str, **kw: Any) -> str:
    """A training run's bundle at ``s3://<lake>/models/<model>/candidates/<run>/``."""
    folder = registry_bundle(bundle_dir, tmp_path / run, **kw)
    uri = f"s3://{LAKE}/models/{MODEL}/candidates/{run}/"
    seed_model_bundle(aws.factory, uri, folder)
    return uri


def packages(aws: EmbeddedAws) -> dict[str, str]:
    """Registry version -> approval status of the mirrored SageMaker model packages."""
    sm = aws.factory.client("sagemaker")
    out = {}
    for summary in sm.list_model_packages(ModelPackageGroupName=MODEL)["ModelPackageSummaryList"]:
        described = sm.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
        out[described["CustomerMetadataProperties"]["zaindari_version"]] = described["ModelApprovalStatus"]
    return out


@pytest.fixture
def functions(
    aws: EmbeddedAws, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ModuleType, ModuleType]]:
    """Both functions, as new containers, on the test's client factory (where UpdateEndpoint is answered)."""
    register, deploy = load_function("register_model"), load_function("deploy_model")
    for module in (register, deploy):
        monkeypatch.setattr(module, "client_factory", lambda: aws.factory)
    yield register, deploy


def test_register_gate_promote_deploy_and_roll_back_leave_an_audit_trail(
    aws: EmbeddedAws,
    bundle_dir: Path,
    tmp_path: Path,
    inboxes: dict[str, str],
    recent_traffic: None,
    functions: tuple[ModuleType, ModuleType],
) -> None:
    from moto.iotdata.models import iotdata_backends

    register, deploy = functions
    updates = emulate_update_endpoint(aws)
    sm = aws.factory.client("sagemaker")

    # Given a first training run: registered and promoted (no champion yet) from the Glue event
    uri1 = candidate(aws, bundle_dir, tmp_path, "run-1", metrics=labelled_metrics(0.90))
    first = register.lambda_handler(glue_training_run(aws, uri1), LambdaContext("register_model"))
    assert (first["status"], first["version"]) == ("promoted", 1)
    [registered] = drain(aws, inboxes["Zaindari Model Registered"])
    assert registered["detail"]["version"] == 1 and registered["detail"]["alias"] == "staging"
    [promoted] = drain(aws, inboxes["Zaindari Model Promoted"])
    assert promoted["detail"]["version"] == 1 and promoted["detail"]["previous"] is None
    assert packages(aws) == {"1": "Approved"}

    # When deploy_model gets the Promoted event: endpoint created, edge told, with working URLs
    done = deploy.lambda_handler(promoted, LambdaContext("deploy_model"))
    targets = {t["target"]: t for t in done["targets"]}
    assert done["status"] == "deployed" and targets["sagemaker_endpoint"]["action"] == "created"
    endpoint = sm.describe_endpoint(EndpointName=f"zaindari-{MODEL}")
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {
        "MemorySizeInMB": 2048,
        "MaxConcurrency": 5,
    }
    container = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])["PrimaryContainer"]
    assert container["Image"] == IMAGE
    # the bundle's prefix, uncompressed: SageMaker copies it to /opt/ml/model for `zaindari serve`
    assert container["ModelDataSource"]["S3DataSource"] == {
        "S3Uri": f"s3://{LAKE}/models/{MODEL}/1/",
        "S3DataType": "S3Prefix",
        "CompressionType": "None",
    }
    [bridge_update] = drain(aws, inboxes["Zaindari Model Update"])
    backend = iotdata_backends["123456789012"][REGION]
    topic, payload = backend.published_payloads[-1]
    assert topic == f"zaindari/models/{MODEL}/update"
    update = ModelUpdate.model_validate_json(payload)
    assert update == ModelUpdate.model_validate(bridge_update["detail"])
    assert update.version == 1 and set(update.sha256) >= {MODEL_FILE, "spec.yaml", "thresholds.json"}
    for name, digest in (*update.sha256.items(), ("MANIFEST.json", update.manifest_sha256)):
        with urllib.request.urlopen(update.urls[name]) as response:
            assert hashlib.sha256(response.read()).hexdigest() == digest, name
    # (the edge's model-sync parses this same class, with its checks on names, hashes and urls)
    assert update.model == MODEL and update.artifact_uri.startswith("s3://")

    # A second run as good as the first (same thresholds: same shadow alert rate) is promoted too
    uri2 = candidate(aws, bundle_dir, tmp_path, "run-2", metrics=labelled_metrics(0.91))
    second = register.lambda_handler(trained_event(uri2), LambdaContext("register_model"))
    assert (second["status"], second["version"]) == ("promoted", 2)
    assert second["gate"]["numbers"]["shadow"]["readings"] == 600
    [promoted2] = drain(aws, inboxes["Zaindari Model Promoted"])
    assert deploy.lambda_handler(promoted2, LambdaContext("deploy_model"))["status"] == "deployed"
    assert [u["EndpointName"] for u in updates] == [f"zaindari-{MODEL}"]
    assert sm.describe_endpoint(EndpointName=f"zaindari-{MODEL}")["EndpointConfigName"].startswith(
        f"{MODEL}-v2-"
    )
    assert packages(aws) == {"1": "Rejected", "2": "Approved"}  # v1 is archived now

    # A worse challenger stays in staging, with the reason recorded
    uri3 = candidate(aws, bundle_dir, tmp_path, "run-3", metrics=labelled_metrics(0.70))
    third = register.lambda_handler(trained_event(uri3), LambdaContext("register_model"))
    assert (third["status"], third["version"]) == ("kept_in_staging", 3)
    assert "auc: challenger 0.7 is lower than the champion's 0.91" in third["reason"]
    assert drain(aws, inboxes["Zaindari Model Promoted"]) == []
    assert packages(aws) == {"1": "Rejected", "2": "Approved", "3": "PendingManualApproval"}

    # Then one call rolls production back to version 1 and deploys it everywhere
    lifecycle = build_model_lifecycle(Settings.from_env(register.os.environ), aws.factory)
    rolled = lifecycle.rollback(MODEL, reason="false alarms on line 3", actor="test")
    assert rolled.status == "deployed" and rolled.version == 1
    assert updates[-1]["EndpointConfigName"].startswith(f"{MODEL}-v1-")  # the v1 config is reused
    assert packages(aws) == {"1": "Approved", "2": "Rejected", "3": "PendingManualApproval"}
    [rolled_back] = drain(aws, inboxes["Zaindari Model Rolled Back"])
    assert rolled_back["detail"] | {"at": None} == rolled_back["detail"] | {
        "at": None,
        "version": 1,
        "previous": 2,
        "deployed": True,
        "reason": "false alarms on line 3",
    }
    assert ModelUpdate.model_validate(drain(aws, inboxes["Zaindari Model Update"])[-1]["detail"]).version == 1
    # deploy_model, receiving the Rolled Back event, sees the work is done
    again = deploy.lambda_handler(rolled_back, LambdaContext("deploy_model"))
    assert again["status"] == "skipped" and "already deployed" in again["reason"]
    # and a stale Promoted event (v2) deploys nothing
    stale = deploy.lambda_handler(promoted2, LambdaContext("deploy_model"))
    assert stale["status"] == "skipped" and "production is now version 1" in stale["reason"]

    history = [
        (e.alias, e.action, e.from_version, e.to_version, e.candidate)
        for e in lifecycle.registry.store.history(MODEL)
    ]
    assert history == [
        ("staging", "register", None, 1, None),
        ("production", "promote", None, 1, 1),
        ("staging", "register", 1, 2, None),
        ("production", "promote", 1, 2, 2),
        ("archived", "set", None, 1, None),
        ("staging", "register", 2, 3, None),
        ("production", "refused", None, None, 3),
        ("production", "rollback", 2, 1, None),
    ]
    assert drain(aws, inboxes["sns"]) == [] and drain(aws, inboxes["Zaindari Model Refused"]) == []


def _tamper_hash(folder: Path) -> None:
    (folder / "thresholds.json").write_text((folder / "thresholds.json").read_text().replace("{", "{ ", 1))


def _break_onnx(folder: Path) -> None:
    """Garbage in model.onnx, with a manifest that vouches for it (hashes match, the graph does not load)."""
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    (folder / MODEL_FILE).write_bytes(b"not an onnx graph")
    manifest["files"][MODEL_FILE] = hashlib.sha256(b"not an onnx graph").hexdigest()
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [(_tamper_hash, "thresholds.json: sha256"), (_break_onnx, "model.onnx")],
    ids=["wrong-hash", "broken-onnx"],
)
def test_a_damaged_bundle_is_refused_with_an_alert_and_nothing_registered(
    aws: EmbeddedAws,
    bundle_dir: Path,
    tmp_path: Path,
    inboxes: dict[str, str],
    functions: tuple[ModuleType, ModuleType],
    damage: Any,
    expected: str,
) -> None:
    register, _ = functions
    folder = registry_bundle(bundle_dir, tmp_path / "bad", metrics=labelled_metrics(0.9))
    damage(folder)
    uri = f"s3://{LAKE}/models/{MODEL}/candidates/bad/"
    seed_model_bundle(aws.factory, uri, folder)

    outcome = register.lambda_handler(glue_training_run(aws, uri), LambdaContext("register_model"))

    assert outcome["status"] == "refused" and expected in outcome["reason"]
    [alert] = drain(aws, inboxes["sns"])
    assert alert["source"] == uri and expected in alert["reason"]
    [event] = drain(aws, inboxes["Zaindari Model Refused"])
    assert event["detail"]["reason"] == outcome["reason"]
    assert drain(aws, inboxes["Zaindari Model Registered"]) == []
    lifecycle = build_model_lifecycle(Settings.from_env(register.os.environ), aws.factory)
    assert lifecycle.registry.store.list_versions(MODEL) == []


def test_events_of_other_jobs_or_failed_runs_are_ignored(functions: tuple[ModuleType, ModuleType]) -> None:
    register, deploy = functions
    event = json.loads((ROOT / "events" / "eventbridge_glue_job_succeeded.json").read_text())
    assert "not the training job" in register.lambda_handler(event, LambdaContext("register_model"))["reason"]
    event["detail"].update(jobName=TRAIN_JOB, state="FAILED")
    assert "ended FAILED" in register.lambda_handler(event, LambdaContext("register_model"))["reason"]
    assert deploy.lambda_handler(event, LambdaContext("deploy_model"))["status"] == "ignored"


def test_score_event_follows_production_without_a_restart(
    aws: EmbeddedAws, bundle_dir: Path, tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given score_event reading its model through the registry alias, re-read on every call
    aws.factory.client("dynamodb").create_table(
        TableName="zaindari-test-state",
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    monkeypatch.setenv("ZAINDARI_STATE_TABLE", "zaindari-test-state")
    monkeypatch.setenv("ZAINDARI_MODEL_PATH", f"registry://{MODEL}/production")
    monkeypatch.setenv("ZAINDARI_MODEL_ALIAS_TTL_SECONDS", "0")
    lifecycle = build_model_lifecycle(Settings.from_env(dict(env)), aws.factory)
    # v2 alerts more (lower thresholds) yet passes: the shadow check is off in this test
    for run, scale in (("run-a", 1.0), ("run-b", 0.5)):
        uri = candidate(aws, bundle_dir, tmp_path, run, metrics=labelled_metrics(0.9), threshold_scale=scale)
        lifecycle.registry.register_version(uri)
    lifecycle.registry.promote(
        MODEL, 1, policy=lifecycle.policy.model_copy(update={"alert_rate_bound": None})
    )
    score_event = load_function("score_event")
    rows = plant_readings()
    body = [json.dumps(rows[i]) for i in range(0, 10)]

    first = score_event.lambda_handler(sqs_event(body[:5]), LambdaContext())
    assert first == {"batchItemFailures": []}
    assert score_event.scoring().model().model_version == f"{MODEL}:1"

    # When version 2 is promoted, the same container scores with it on its next batch
    lifecycle.registry.promote(
        MODEL, 2, policy=lifecycle.policy.model_copy(update={"alert_rate_bound": None})
    )
    assert score_event.lambda_handler(sqs_event(body[5:], [f"m{i}" for i in range(5)]), LambdaContext()) == {
        "batchItemFailures": []
    }
    assert score_event.scoring().model().model_version == f"{MODEL}:2"
    scored = [
        json.loads(line)
        for obj in aws.factory.client("s3").list_objects_v2(Bucket=LAKE, Prefix="scores/events/")["Contents"]
        for line in gzip.decompress(
            aws.factory.client("s3").get_object(Bucket=LAKE, Key=obj["Key"])["Body"].read()
        ).splitlines()
    ]
    assert {row["model_version"] for row in scored} == {f"{MODEL}:1", f"{MODEL}:2"}
    shutil.rmtree(tmp_path / "models", ignore_errors=True)


def test_an_emr_serverless_training_run_is_registered_from_its_output_argument(
    aws: EmbeddedAws, bundle_dir: Path, tmp_path: Path, functions: tuple[ModuleType, ModuleType]
) -> None:
    register, _ = functions
    emr = aws.factory.client("emr-serverless")
    app = emr.create_application(name="zaindari", releaseLabel="emr-7.5.0", type="SPARK")["applicationId"]
    uri = candidate(aws, bundle_dir, tmp_path, "run-emr", metrics=labelled_metrics(0.9))

    def run(name: str) -> dict[str, Any]:
        run_id = emr.start_job_run(
            applicationId=app,
            executionRoleArn=ROLE,
            name=name,
            jobDriver={
                "sparkSubmit": {
                    "entryPoint": "s3://x/train_model.py",
                    "entryPointArguments": ["--spec", "s3://x/spec.yaml", "--output", uri],
                }
            },
        )["jobRunId"]
        detail = {"applicationId": app, "jobRunId": run_id, "state": "SUCCESS", "arn": "x"}
        return {
            "version": "0",
            "id": f"emr-{run_id}",
            "detail-type": "EMR Serverless Job Run State Change",
            "source": "aws.emr-serverless",
            "account": "123456789012",
            "time": "2026-11-16T06:14:38Z",
            "region": REGION,
            "resources": [],
            "detail": detail,
        }

    build = register.lambda_handler(run("zaindari-build-training-set-r1"), LambdaContext("register_model"))
    train = register.lambda_handler(run(f"{TRAIN_JOB}-r1"), LambdaContext("register_model"))

    assert build["status"] == "ignored" and "is not a zaindari-train-model run" in build["reason"]
    assert (train["status"], train["version"], train["source"]) == ("promoted", 1, uri)


def test_the_gates_maintenance_log_is_every_file_under_the_lakes_labels_folder(aws: EmbeddedAws) -> None:
    from zaindari.infra.deploy_ports import S3MaintenanceLog
    from zaindari.ports import PortError

    s3 = aws.factory.client("s3")
    s3.create_bucket(
        Bucket="lake", CreateBucketConfiguration={"LocationConstraint": aws.factory.config.region}
    )
    labels = S3MaintenanceLog(aws.factory, "lake")
    assert not labels.maintenance_log()  # no log in the lake: an empty one
    window = '{{"device_id": "{}", "start": "2024-01-02T06:00:00Z"}}\n'
    s3.put_object(Bucket="lake", Key="labels/maintenance/", Body=b"")  # a folder marker is no file
    s3.put_object(Bucket="lake", Key="labels/maintenance/2024-02.jsonl", Body=window.format("b").encode())
    s3.put_object(Bucket="lake", Key="labels/maintenance/2024-01.jsonl", Body=window.format("a").encode())
    assert [w.device_id for w in labels.maintenance_log().windows] == ["a", "b"]
    s3.put_object(Bucket="lake", Key="labels/maintenance/2024-03.jsonl", Body=b"{not json\n")
    with pytest.raises(PortError, match=r"s3://lake/labels/maintenance/2024-03\.jsonl line 1: not JSON"):
        labels.maintenance_log()
