"""The whole path: a bundle trained by the Spark job is published to S3 and scores events on Lambda."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from typing import Any

import pytest

from tests.functions.conftest import EmbeddedAws
from tests.support import ROOT, LambdaContext, load_function, sqs_event
from zaindari.infra.lambda_local import import_function
from zaindari.simulate import PlantConfig, simulate_plant
from zaindari.spec import load_spec

pytestmark = pytest.mark.spark

LAKE = "zaindari-trained-lake"
TABLE = "zaindari-trained-state"


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    config = PlantConfig(
        seed=11,
        lines=2,
        machines_per_line=3,
        duration=timedelta(days=3),
        sample_period_seconds=600.0,
        auto_faults=3,
        fault_lead_hours=(24.0, 48.0),
    )
    data = simulate_plant(config)
    folder = tmp_path_factory.mktemp("trained")
    raw = folder / "raw"
    raw.mkdir()
    data.historian_frame().to_parquet(raw / "part-0.parquet", index=False)
    return {"data": data, "raw": raw, "folder": folder}


def test_bundle_trained_on_spark_and_published_to_s3_is_what_score_event_serves(
    spark: Any, aws: EmbeddedAws, plant: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the training job run as on EMR/locally, publishing its bundle to the lake in S3
    s3 = aws.factory.client("s3")
    s3.create_bucket(Bucket=LAKE, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    spec = load_spec((ROOT / "src" / "zaindari" / "data" / "plant_anomaly.yaml").read_text())
    spec_path = plant["folder"] / "spec.yaml"
    spec_path.write_text(spec.to_yaml())
    job = import_function(ROOT / "glue_jobs" / "train_model.py", "train_model_job", fresh=True)
    prefix = f"s3://{LAKE}/models/plant-anomaly/candidates/run-1/"
    code = job.main(
        ["--master", "local[2]", "--spec", str(spec_path), "--input", str(plant["raw"]), "--output", prefix]
    )
    assert code == 0
    manifest = json.loads(
        s3.get_object(Bucket=LAKE, Key="models/plant-anomaly/candidates/run-1/MANIFEST.json")["Body"].read()
    )
    assert {"model.onnx", "signature.json", "thresholds.json", "parity.json", "lineage.json"} <= set(
        manifest["files"]
    )

    # When score_event runs with that S3 prefix as its model
    aws.factory.client("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for key, value in {
        "ZAINDARI_MODEL_PATH": prefix,
        "ZAINDARI_MODEL_CACHE_DIR": str(plant["folder"] / "model-cache"),
        "ZAINDARI_LAKE_BUCKET": LAKE,
        "ZAINDARI_STATE_TABLE": TABLE,
        "ZAINDARI_EVENT_BUS_NAME": "default",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    app = load_function("score_event")
    readings = list(plant["data"].readings())[:50]
    response = app.lambda_handler(sqs_event([json.dumps(r) for r in readings]), LambdaContext())

    # Then every reading is scored by the trained model, named by its content hash
    assert response == {"batchItemFailures": []}
    served = app.scoring().model()
    assert served.content_hash == served.manifest.content_hash
    assert served.extras["parity.json"]["max_abs_diff"] <= 1e-4
    rows: list[dict[str, Any]] = []
    for obj in s3.list_objects_v2(Bucket=LAKE, Prefix="scores/")["Contents"]:
        body = gzip.decompress(s3.get_object(Bucket=LAKE, Key=obj["Key"])["Body"].read())
        rows.extend(json.loads(line) for line in body.splitlines())
    assert len(rows) == 50
    assert {r["model_version"] for r in rows} == {served.model_version}
    # and the scores are the trained graph's: recompute one through the bundle's own scorer
    from zaindari.contract import parse_readings
    from zaindari.pipeline import score_readings

    again = score_readings(served, parse_readings(readings).readings)
    by_key = {(r["device_id"], r["timestamp"]): r["score"] for r in rows}
    for row in again.scored:
        assert by_key[(row["device_id"], row["timestamp"])] == pytest.approx(row["score"], rel=1e-9)
