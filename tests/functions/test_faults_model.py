"""A corrupt model artifact in S3 is refused (hash-verified before load), never cached, and never
replaces the model a container already serves; the records it could not score go back whole."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.functions.conftest import EmbeddedAws
from tests.functions.test_score_event import env, lake_rows, readings
from tests.support import LambdaContext, bodies_of, load_function, sqs_event
from zaindari.bundle import BundleError
from zaindari.infra.model_store import ModelSource

__all__ = ["env", "readings"]  # fixtures, used by name

MODELS = "zaindari-test-models"
PREFIX = "plant-anomaly/1/"


def upload(aws: EmbeddedAws, folder: Path, prefix: str = PREFIX) -> str:
    s3 = aws.factory.client("s3")
    for path in sorted(folder.iterdir()):
        if path.is_file():
            s3.put_object(Bucket=MODELS, Key=prefix + path.name, Body=path.read_bytes())
    return f"s3://{MODELS}/{prefix}"


def corrupt(aws: EmbeddedAws, name: str = "model.onnx", prefix: str = PREFIX) -> None:
    """Flip one byte of a file of the bundle in S3 (bit rot, a bad copy, tampering)."""
    s3 = aws.factory.client("s3")
    data = bytearray(s3.get_object(Bucket=MODELS, Key=prefix + name)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.put_object(Bucket=MODELS, Key=prefix + name, Body=bytes(data))


@pytest.fixture
def model_uri(
    aws: EmbeddedAws, env: dict[str, str], bundle_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    aws.factory.client("s3").create_bucket(
        Bucket=MODELS, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    uri = upload(aws, bundle_dir)
    monkeypatch.setenv("ZAINDARI_MODEL_PATH", uri)
    monkeypatch.setenv("ZAINDARI_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    return uri


def test_a_corrupt_artifact_is_refused_and_the_container_already_serving_keeps_its_model(
    aws: EmbeddedAws,
    model_uri: str,
    readings: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Given a container serving the good model
    serving = load_function("score_event")
    assert serving.lambda_handler(sqs_event(bodies_of(readings[800:810])), LambdaContext()) == {
        "batchItemFailures": []
    }
    version = serving.scoring().model().model_version
    # When the artifact in S3 is corrupted
    corrupt(aws)
    # Then a new container (its own empty /tmp) refuses it: the invocation fails whole, so SQS
    # redelivers every record
    monkeypatch.setenv("ZAINDARI_MODEL_CACHE_DIR", str(tmp_path / "new-container"))
    fresh: ModuleType = load_function("score_event")
    event = sqs_event(bodies_of(readings[810:820]))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 .* does not match"):
        fresh.lambda_handler(event, LambdaContext())
    assert len(lake_rows(aws, "scores/")) == 10  # nothing was scored with the corrupt model
    # and the container already serving goes on with the model it verified
    assert serving.lambda_handler(event, LambdaContext()) == {"batchItemFailures": []}
    assert serving.scoring().model().model_version == version
    assert len(lake_rows(aws, "scores/")) == 20


def test_a_corrupt_download_is_not_cached_and_the_repaired_artifact_loads(
    aws: EmbeddedAws, model_uri: str, bundle_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "fresh-cache"
    corrupt(aws, "thresholds.json")
    with pytest.raises(BundleError, match=r"thresholds\.json: sha256 .* not cached"):
        ModelSource(model_uri, str(cache), aws.factory)()
    assert not any(cache.rglob("*.json"))  # no partial or corrupt copy left behind
    upload(aws, bundle_dir)  # the artifact is repaired
    bundle = ModelSource(model_uri, str(cache), aws.factory)()
    assert bundle.manifest.model_name == "plant-anomaly"


def test_a_manifest_listing_a_path_outside_the_bundle_is_refused(aws: EmbeddedAws, model_uri: str) -> None:
    import json

    s3 = aws.factory.client("s3")
    manifest = json.loads(s3.get_object(Bucket=MODELS, Key=PREFIX + "MANIFEST.json")["Body"].read())
    manifest["files"]["../escape.onnx"] = "0" * 64
    s3.put_object(Bucket=MODELS, Key=PREFIX + "MANIFEST.json", Body=json.dumps(manifest).encode())
    with pytest.raises(BundleError, match="unsafe path"):
        ModelSource(model_uri, "/tmp/zaindari-test-unsafe", aws.factory)()
