"""build_training_set as a local job against S3 (moto): the lake score_event writes, staged through boto3.

A local Spark cannot read s3:// offline (no hadoop-aws jars), so the job downloads the inputs,
builds locally and uploads the results (see zaindari.training_set). This test runs the job script
the way a developer does, with ``--master`` and ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.functions.conftest import EmbeddedAws
from tests.support import example_spec, plant_readings
from zaindari.contract import parse_readings
from zaindari.infra.aws_ports import S3LakeWriter

pytestmark = [pytest.mark.aws, pytest.mark.spark]

BUCKET = "zaindari-test-lake"
REGION = "eu-west-1"


def keys(aws: EmbeddedAws, prefix: str) -> dict[str, dict[str, Any]]:
    pages = aws.factory.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


def test_the_job_reads_the_lake_score_event_writes_and_publishes_to_s3(aws: EmbeddedAws, spark: Any) -> None:
    from glue_jobs.build_training_set import main

    # Given the lake as score_event leaves it: raw readings in jsonl.gz and Parquet objects
    s3 = aws.factory.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    records = []
    for i, r in enumerate(plant_readings()[:480]):  # 4 devices, 120 readings each, 36 minutes apart
        moment = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=9 * i)
        records.append({**r, "timestamp": moment.isoformat().replace("+00:00", "Z")})
    readings = parse_readings(records).readings
    scores = [{"record_key": f"k{i}"} for i in range(len(readings))]
    S3LakeWriter(aws.factory, BUCKET, "jsonl.gz").write(readings[:300], scores[:300])
    S3LakeWriter(aws.factory, BUCKET, "parquet").write(readings[300:], scores[300:])
    s3.put_object(Bucket=BUCKET, Key="specs/plant-anomaly.yaml", Body=example_spec().to_yaml().encode())
    raw = keys(aws, "raw/telemetry/")
    assert {k.rsplit(".", 1)[-1] for k in raw} == {"gz", "parquet"}

    # When the job runs locally against it
    argv = ["--lake", f"s3://{BUCKET}", "--start", "2026-11-01", "--end", "2026-11-03"]
    argv += ["--spec", f"s3://{BUCKET}/specs/plant-anomaly.yaml", "--master", "local[2]"]
    assert main(argv) == 0

    # Then the training set, the rows set aside and the data version are in S3
    out = "training/sets/plant-anomaly/2026-11-01_2026-11-03/"
    written = keys(aws, out)
    assert f"{out}_data_version.json" in written
    assert {k.split("/")[4] for k in written if k.endswith(".parquet")} == {
        "date=2026-11-01",
        "date=2026-11-02",
        "date=2026-11-03",
    }
    assert not any(k.rsplit("/", 1)[-1].startswith(".") for k in written)  # no local .crc files
    assert keys(aws, "training/rejected/plant-anomaly/2026-11-01_2026-11-03/")
    version = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{out}_data_version.json")["Body"].read())
    assert version["rows"] == {"in": 480, "valid": 480, "rejected": 0, "rejected_by_stage": {}}
    files = version["inputs"]["files"]
    assert sorted(f["uri"] for f in files) == sorted(f"s3://{BUCKET}/{k}" for k in raw)
    for f in files:
        obj = raw[f["uri"].removeprefix(f"s3://{BUCKET}/")]
        assert (f["size"], f["etag"]) == (obj["Size"], obj["ETag"].strip('"'))

    # and a rebuild replaces the set with the same content
    before = set(written)
    assert main(argv) == 0
    again = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{out}_data_version.json")["Body"].read())
    assert again["content_hash"] == version["content_hash"]
    assert len(keys(aws, out)) == len(before)


def test_an_empty_range_in_s3_writes_nothing(aws: EmbeddedAws, capsys: pytest.CaptureFixture[str]) -> None:
    from glue_jobs.build_training_set import main

    s3 = aws.factory.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key="specs/plant-anomaly.yaml", Body=example_spec().to_yaml().encode())
    argv = ["--lake", f"s3://{BUCKET}", "--start", "2026-01-01", "--end", "2026-01-07"]
    argv += ["--spec", f"s3://{BUCKET}/specs/plant-anomaly.yaml", "--master", "local[2]"]
    assert main(argv) == 2
    assert "no raw telemetry under s3://zaindari-test-lake/raw/telemetry/ for 2026-01-01..2026-01-07" in (
        capsys.readouterr().err
    )
    assert set(keys(aws, "")) == {"specs/plant-anomaly.yaml"}
