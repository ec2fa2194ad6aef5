"""``zaindari invoke FN EVENT`` (what ``make invoke`` runs), as a real subprocess fed the events/ files.

stdout must be exactly the handler's JSON response (so it pipes into jq); logs go to stderr.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.functions.conftest import EmbeddedAws
from zaindari.infra.provision import provision

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
# Python start, moto start, provisioning, a model fit on first use, the handler's cold start.
INVOKE_TIMEOUT_S = 180

pytestmark = pytest.mark.aws


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fitted example model for the module's invocations (kept out of the repo's .zaindari/)."""
    return tmp_path_factory.mktemp("models")


def _invoke(
    *args: str, model_cache: Path, endpoint: str | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "ZAINDARI_", "POWERTOOLS_")) and k != "LOCALSTACK_HOST"
    }
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    if endpoint is not None:
        env["AWS_ENDPOINT_URL"] = endpoint
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "zaindari.cli", "invoke", *args, "--cache-dir", str(model_cache)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=INVOKE_TIMEOUT_S,
        check=False,
    )


def _response(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # fails if anything but the response reached stdout


def test_sqs_batch_prints_only_the_response_with_no_failures(model_cache: Path) -> None:
    # Given no embedded AWS running: invoke starts moto for the call, provisions, fits a model
    done = _invoke("score_event", str(EVENTS / "sqs_batch.json"), model_cache=model_cache)

    assert _response(done) == {"batchItemFailures": []}
    # the function's logs went to stderr, and all five readings were scored
    scored = [json.loads(line) for line in done.stderr.splitlines() if '"batch scored"' in line]
    assert len(scored) == 1
    assert scored[0]["readings_scored"] == 5
    assert scored[0]["trigger"] == "sqs"
    assert any(p.name.startswith("plant-anomaly-") for p in model_cache.iterdir())


def test_poison_is_dead_lettered_in_the_running_embedded_aws(aws: EmbeddedAws, model_cache: Path) -> None:
    # Given the embedded AWS already running (as with `make aws-up`)
    done = _invoke(
        "score_event",
        str(EVENTS / "sqs_batch_with_poison.json"),
        model_cache=model_cache,
        endpoint=aws.endpoint_url,
    )

    # Then poison is not handed back to SQS (retrying cannot fix it) ...
    assert _response(done) == {"batchItemFailures": []}
    # ... the resources invoke created live on in that AWS: scores in the lake, poison in quarantine
    stack = provision(aws.factory, ROOT / "template.yaml")  # idempotent: just reads the names back
    env = stack.function_environment("score_event")
    s3 = aws.factory.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=env["ZAINDARI_LAKE_BUCKET"]).get("Contents", [])]
    assert any(k.startswith("scores/events/date=2026-11-20/") for k in keys), keys
    assert any(k.startswith(env["ZAINDARI_MODEL_PATH"].split("/", 3)[3]) for k in keys), keys
    quarantined = [k for k in keys if k.startswith("quarantine/events/")]
    assert len(quarantined) == 1
    body = s3.get_object(Bucket=env["ZAINDARI_LAKE_BUCKET"], Key=quarantined[0])["Body"].read()
    assert len(gzip.decompress(body).decode().splitlines()) == 2
    items = aws.factory.client("dynamodb").scan(TableName=env["ZAINDARI_STATE_TABLE"])["Items"]
    assert len(items) == 3  # the three devices whose readings were good


def test_http_invalid_is_a_400_response_and_exit_0(aws: EmbeddedAws, model_cache: Path) -> None:
    done = _invoke(
        "score_event", str(EVENTS / "http_invalid.json"), model_cache=model_cache, endpoint=aws.endpoint_url
    )

    response = _response(done)
    assert response["statusCode"] == 400
    assert {e["errors"][0]["field"] for e in json.loads(response["body"])["errors"]} == {
        "timestamp",
        "sensors.vibration_rms",
    }


def test_handler_that_raises_exits_1_with_the_error_on_stderr(
    aws: EmbeddedAws, model_cache: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-bundle"
    broken.mkdir()
    (broken / "MANIFEST.json").write_text('{"not": "a manifest"}')

    done = _invoke(
        "score_event",
        str(EVENTS / "iot_reading.json"),
        "--model",
        str(broken),
        model_cache=model_cache,
        endpoint=aws.endpoint_url,
    )

    assert done.returncode == 1
    assert done.stdout == ""
    assert "BundleError" in done.stderr


def test_missing_event_file_is_a_usage_error(model_cache: Path) -> None:
    done = _invoke("score_event", str(EVENTS / "no_such_event.json"), model_cache=model_cache)

    assert done.returncode == 2
    assert done.stdout == ""
    assert "no_such_event.json" in done.stderr
