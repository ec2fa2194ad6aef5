"""Shared set-up for the benchmarks: embedded AWS, the score_event resources, fresh readings.

Resources are created the way ``tests/functions/test_score_event.py`` creates them; the helpers
of ``tests/support.py`` (bundle fitting, event shapes, the Lambda context) are reused as they are.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import plant_readings  # noqa: E402

from zaindari.infra.aws import ClientFactory  # noqa: E402
from zaindari.infra.local_aws import LocalAws, start_local_aws  # noqa: E402

REGION = "eu-west-1"
FUNCTION_DIR = ROOT / "functions" / "score_event"

# Settings from a developer's shell or ~/.aws that would change where requests go.
_AWS_ENV_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "LOCALSTACK_HOST",
    "USE_SSL",
)


@dataclass(frozen=True)
class BenchAws:
    """A moto server started in this process, and the environment score_event runs with."""

    server: LocalAws
    factory: ClientFactory
    lake: str
    env: dict[str, str]  # AWS endpoint and credentials plus the function's ZAINDARI_* settings


def start_aws(bundle_dir: Path) -> BenchAws:
    """moto on a free loopback port, with the bucket, table and topic score_event needs.

    ``BENCH_AWS_PORT=N`` uses a moto server already running on that port instead (e.g. one in
    another process, started with ``zaindari aws up --port N``), to see what sharing this
    process's GIL with moto costs. Resource names are unique per run, so a reused server's
    other contents are never touched.
    """
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    port = int(os.environ.get("BENCH_AWS_PORT") or 0)
    server = start_local_aws("127.0.0.1", port, reuse_existing=port != 0)
    factory = server.client_factory()
    run = uuid.uuid4().hex[:8]
    lake, table = f"zaindari-bench-lake-{run}", f"zaindari-bench-state-{run}"
    factory.client("s3").create_bucket(Bucket=lake, CreateBucketConfiguration={"LocationConstraint": REGION})
    factory.client("dynamodb").create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    topic = factory.client("sns").create_topic(Name=f"zaindari-bench-alerts-{run}")["TopicArn"]
    env = {
        **server.environment(REGION),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "ZAINDARI_MODEL_PATH": str(bundle_dir),
        "ZAINDARI_LAKE_BUCKET": lake,
        "ZAINDARI_STATE_TABLE": table,
        "ZAINDARI_ALERT_TOPIC_ARN": topic,
        "ZAINDARI_EVENT_BUS_NAME": "default",
        "ZAINDARI_ONNX_THREADS": "1",  # the default, pinned: benchmarks compare like with like
        "POWERTOOLS_METRICS_NAMESPACE": "ZaindariBench",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "PYDANTIC_DISABLE_PLUGINS": "__all__",  # as template.yaml's Globals set it
    }
    return BenchAws(server=server, factory=factory, lake=lake, env=env)


def apply_env(env: dict[str, str]) -> None:
    """Point this process at the embedded AWS (before the function module is imported)."""
    for name in _AWS_ENV_TO_CLEAR:
        os.environ.pop(name, None)
    os.environ.update(env)


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a child process running the function (cold start)."""
    out = {k: v for k, v in os.environ.items() if k not in _AWS_ENV_TO_CLEAR}
    # A Lambda package holds bytecode (`make build` compiles it): the child may write .pyc files,
    # so the benchmark's unmeasured first run leaves them for the measured ones, whatever the
    # calling shell says (PYTHONDONTWRITEBYTECODE=1 would make every cold start compile its code).
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    out.update(env)
    return out


class FreshReadings:
    """The simulated plant's readings, replayed forward in time so that none repeats.

    Each pass over the 6-hour run is shifted by 6 hours (timestamps and sequence numbers), so
    every reading taken is new to the function's idempotency memory and newer than anything the
    devices have sent, which is what a live plant looks like.
    """

    def __init__(self, seed: int = 0) -> None:
        self._base = plant_readings(seed)
        self._times = [
            datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).astimezone(UTC) for r in self._base
        ]
        self._span = (max(self._times) - min(self._times)) + timedelta(seconds=60)
        devices = {r["device_id"] for r in self._base}
        self._seq_step = len(self._base) // len(devices)
        self._cursor = 0

    @property
    def devices(self) -> int:
        return len({r["device_id"] for r in self._base})

    def take(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` readings, JSON-ready."""
        return [self._next() for _ in range(n)]

    def _next(self) -> dict[str, Any]:
        epoch, i = divmod(self._cursor, len(self._base))
        self._cursor += 1
        base = self._base[i]
        when = self._times[i] + epoch * self._span
        seq = base.get("seq")
        return {
            **base,
            "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seq": None if seq is None else seq + epoch * self._seq_step,
        }
