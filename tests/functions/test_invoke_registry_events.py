"""``make invoke`` for register_model and deploy_model, fed the events/ files, in one running embedded AWS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.functions.conftest import EmbeddedAws
from tests.functions.test_invoke_cli import EVENTS, _invoke, _response

pytestmark = pytest.mark.aws


def test_trained_refused_and_promoted_events_through_make_invoke(aws: EmbeddedAws, tmp_path: Path) -> None:
    def invoke(function: str, event: str) -> dict[str, object]:
        done = _invoke(function, str(EVENTS / event), model_cache=tmp_path, endpoint=aws.endpoint_url)
        response: dict[str, object] = _response(done)
        return response

    registered = invoke("register_model", "eventbridge_model_trained.json")
    refused = invoke("register_model", "eventbridge_model_trained_refused.json")
    deployed = invoke("deploy_model", "eventbridge_model_promoted.json")

    assert (registered["status"], registered["version"]) == ("promoted", 1)
    assert refused["status"] == "refused" and "thresholds.json: sha256" in str(refused["reason"])
    assert deployed["status"] == "deployed" and deployed["version"] == 1
    targets = {t["target"]: t["status"] for t in deployed["targets"]}  # type: ignore[attr-defined]
    assert targets == {
        "sagemaker_endpoint": "skipped",  # the template's ServingImageUri is empty by default
        "edge": "deployed",
        "sagemaker_model_registry": "deployed",
        "lambda": "deployed",
    }
