"""What following a registry alias (``registry://<model>/production``) costs a scoring function.

Figures, each against a baseline measured in this run:

* a call within the TTL (the alias is not read): against a plain ``s3://`` model source;
* a call after the TTL with production unchanged (one DynamoDB query, moto on loopback): against
  the same query made directly;
* the first call after a promotion (download, verify, open the new bundle in onnxruntime):
  against loading that bundle from S3 with a plain source.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import info_line, result_row
from _setup import REGION, ROOT, start_local_aws  # noqa: F401 (ROOT puts the repo on sys.path)
from tests.registry_support import labelled_metrics, registry_bundle
from tests.support import fit_example_bundle

from zaindari.infra.model_store import ModelSource
from zaindari.infra.provision import seed_model_bundle
from zaindari.infra.registry_store import DynamoRegistryStore, build_model_registry, create_registry_table
from zaindari.registry import GatePolicy
from zaindari.settings import Settings

NAME = "model_alias"
CALLS = 20_000
QUERIES = 200


def _per_call(fn: Any, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


def main() -> list[dict[str, Any]]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = start_local_aws("127.0.0.1", 0, reuse_existing=False)
    try:
        return _measure(server)
    finally:
        server.stop()


def _measure(server: Any) -> list[dict[str, Any]]:
    factory = server.client_factory()
    work = Path(tempfile.mkdtemp(prefix="bench-alias-"))
    lake, table = "zaindari-bench-alias", "zaindari-bench-registry"
    factory.client("s3").create_bucket(Bucket=lake, CreateBucketConfiguration={"LocationConstraint": REGION})
    create_registry_table(factory, table)
    registry = build_model_registry(
        Settings(lake_bucket=lake, registry_table=table, model_cache_dir=str(work / "reg")), factory
    )
    example = fit_example_bundle(work / "cache")
    for run in ("run-1", "run-2"):
        folder = registry_bundle(example, work / run, metrics=labelled_metrics(0.9))
        uri = f"s3://{lake}/models/plant-anomaly/candidates/{run}/"
        seed_model_bundle(factory, uri, folder)
        registry.register_version(uri)
    no_shadow = GatePolicy(alert_rate_bound=None)
    registry.promote("plant-anomaly", 1, policy=no_shadow)

    plain = ModelSource(f"s3://{lake}/models/plant-anomaly/1/", str(work / "plain"), factory)
    plain()
    alias = ModelSource(
        "registry://plant-anomaly/production",
        str(work / "alias"),
        factory,
        registry_table=table,
        alias_ttl=3600,
    )
    alias()
    cached_plain = _per_call(plain, CALLS)
    cached_alias = _per_call(alias, CALLS)
    info_line(
        f"{NAME}: within the TTL {cached_alias * 1e9:.0f} ns/call, plain s3 source {cached_plain * 1e9:.0f} ns"
    )

    store = DynamoRegistryStore(factory, table)
    expired = ModelSource(
        "registry://plant-anomaly/production", str(work / "alias"), factory, registry_table=table, alias_ttl=0
    )
    expired()
    query = _per_call(lambda: store.aliases("plant-anomaly"), QUERIES)
    reread = _per_call(expired, QUERIES)

    registry.promote("plant-anomaly", 2, policy=no_shadow)
    started = time.perf_counter()
    assert expired().version == "2"
    switch = time.perf_counter() - started
    fresh = ModelSource(f"s3://{lake}/models/plant-anomaly/2/", str(work / "fresh"), factory)
    started = time.perf_counter()
    fresh()
    load = time.perf_counter() - started
    return [
        result_row(
            NAME,
            "call within TTL",
            cached_alias * 1e9,
            "ns",
            baseline=cached_plain * 1e9,
            ratio=cached_alias / cached_plain,
            target="<= 5x a plain source",
            passed=cached_alias <= 5 * cached_plain,
        ),
        result_row(
            NAME,
            "call after TTL, unchanged",
            reread * 1e3,
            "ms",
            baseline=query * 1e3,
            ratio=reread / query,
            target="<= 1.5x one alias query",
            passed=reread <= 1.5 * query,
        ),
        result_row(
            NAME, "first call after promote", switch * 1e3, "ms", baseline=load * 1e3, ratio=switch / load
        ),
    ]


if __name__ == "__main__":
    for r in main():
        print(r)
