"""score_batch when S3 or DynamoDB fail mid-drop (faults injected in botocore, in front of moto): the
invocation fails so Lambda retries it, the drop's claim is released, and the retry scores every row
exactly once; throttling within botocore's retries is absorbed."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.faults import FaultInjector
from tests.functions.conftest import EmbeddedAws
from tests.functions.test_score_batch import (  # the same stack and helpers as the function tests
    app,
    assert_accounted,
    drop,
    invoke,
    only_outcome,
    plant_csv,
    scores,
    stack,
)
from zaindari.infra.provision import Provisioned
from zaindari.infra.wiring import client_factory

__all__ = ["app", "plant_csv", "stack"]  # fixtures, used by name

ROWS = 1440


@pytest.fixture
def faults(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> FaultInjector:
    factory = client_factory()
    from zaindari.infra import wiring

    monkeypatch.setattr(wiring, "client_factory", lambda env=None: factory)  # score_batch imports it lazily
    return FaultInjector(factory)


@pytest.mark.parametrize(
    ("service", "operation", "url_contains"),
    [
        ("s3", "PutObject", "scores/"),  # publishing the scores
        ("s3", "PutObject", "manifests/"),  # the manifest, written last
        ("dynamodb", "UpdateItem", None),  # the ledger's commit
    ],
)
def test_a_failure_mid_drop_raises_for_retry_and_the_retry_scores_every_row_once(
    app: ModuleType,
    aws: EmbeddedAws,
    stack: Provisioned,
    faults: FaultInjector,
    plant_csv: bytes,
    service: str,
    operation: str,
    url_contains: str | None,
) -> None:
    payload = drop(aws, stack, "plant.csv", plant_csv)
    fault = faults.fail(service, operation, code="InternalError", status=500, url_contains=url_contains)
    with pytest.raises(app.RetryableFailure):
        invoke(app, payload)
    assert fault.injected >= 1
    faults.clear()
    outcome = only_outcome(invoke(app, payload))  # Lambda's retry of the asynchronous invocation
    assert outcome["status"] == "scored", outcome
    assert_accounted(aws, stack, outcome, rows=ROWS)
    assert len(scores(aws, stack)) == ROWS  # no row twice, whatever the first attempt had written
    assert only_outcome(invoke(app, payload))["status"] == "duplicate"


def test_throttled_reads_of_the_drop_are_absorbed_by_botocore_retries(
    app: ModuleType, aws: EmbeddedAws, stack: Provisioned, faults: FaultInjector, plant_csv: bytes
) -> None:
    payload = drop(aws, stack, "plant.csv", plant_csv)
    slowdown = faults.throttle("s3", "GetObject", times=2)
    outcome = only_outcome(invoke(app, payload))
    assert outcome["status"] == "scored" and slowdown.injected == 2
    assert_accounted(aws, stack, outcome, rows=ROWS)
