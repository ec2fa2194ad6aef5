"""Least privilege and safe defaults: template.yaml passes zaindari.infra.template_policy, each rule
catches what it is for, and no code path can load a pickled model."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zaindari.infra.provision import load_template
from zaindari.infra.template_policy import check_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"


@pytest.fixture(scope="module")
def body() -> dict[str, Any]:
    return dict(load_template(TEMPLATE).body)


def test_the_template_has_no_least_privilege_or_safe_default_violation() -> None:
    assert check_template(TEMPLATE) == []


def _statements(body: dict[str, Any], role: str) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = body["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"][
        "Statement"
    ]
    return statements


def _wildcard_action(b: dict[str, Any]) -> None:
    _statements(b, "ScoreEventRole").append(
        {"Effect": "Allow", "Action": "s3:*", "Resource": {"Fn::GetAtt": ["LakeBucket", "Arn"]}}
    )


def _wildcard_resource(b: dict[str, Any]) -> None:
    _statements(b, "ScoreEventRole").append(
        {"Effect": "Allow", "Action": "dynamodb:PutItem", "Resource": "*"}
    )


def _not_action(b: dict[str, Any]) -> None:
    _statements(b, "ScoreEventRole").append({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})


def _unencrypted(b: dict[str, Any]) -> None:
    del b["Resources"]["LakeBucket"]["Properties"]["BucketEncryption"]


def _public(b: dict[str, Any]) -> None:
    b["Resources"]["RawBucket"]["Properties"]["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] = (
        False
    )


def _plain_http(b: dict[str, Any]) -> None:
    del b["Resources"]["LakeBucketPolicy"]


def _open_api(b: dict[str, Any]) -> None:
    del b["Resources"]["HttpApi"]["Properties"]["Auth"]


def _open_url(b: dict[str, Any]) -> None:
    b["Resources"]["ScoreEventFunction"]["Properties"]["FunctionUrlConfig"]["AuthType"] = "NONE"


def _open_route(b: dict[str, Any]) -> None:
    events = b["Resources"]["StartRetrainingFunction"]["Properties"]["Events"]
    route = next(e for e in events.values() if e["Type"] == "HttpApi")
    route["Properties"]["Auth"] = {"Authorizer": "NONE"}


def _silent_skip(b: dict[str, Any]) -> None:
    b["Resources"]["TelemetryQueue"]["Metadata"]["checkov"]["skip"].append({"id": "CKV_AWS_999"})


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (_wildcard_action, r"ScoreEventRole.*wildcard action 's3:\*'"),
        (_wildcard_resource, r"ScoreEventRole.*Resource '\*' for dynamodb:PutItem"),
        (_not_action, r"NotAction"),
        (_unencrypted, r"LakeBucket: no default encryption"),
        (_public, r"RawBucket: public access not blocked \(RestrictPublicBuckets\)"),
        (_plain_http, r"LakeBucket: no bucket policy denying requests without TLS"),
        (_open_api, r"HttpApi: HTTP API without an IAM or JWT default authorizer"),
        (_open_url, r"ScoreEventFunction: function URL with AuthType 'NONE'"),
        (_open_route, r"StartRetrainingFunction/.*opts out of authentication"),
        (_silent_skip, r"TelemetryQueue: checkov skip .*CKV_AWS_999.* without a reason"),
    ],
)
def test_each_rule_flags_the_template_broken_its_way(
    body: dict[str, Any], break_it: Callable[[dict[str, Any]], None], expected: str
) -> None:
    broken = copy.deepcopy(body)
    break_it(broken)
    violations = check_template(broken)
    assert len(violations) == 1 and re.search(expected, violations[0]), violations


def test_a_jwt_authorizer_counts_as_authentication(body: dict[str, Any]) -> None:
    jwt = copy.deepcopy(body)
    jwt["Resources"]["HttpApi"]["Properties"]["Auth"] = {
        "DefaultAuthorizer": "Devices",
        "Authorizers": {"Devices": {"JwtConfiguration": {"issuer": "https://idp", "audience": ["z"]}}},
    }
    assert check_template(jwt) == []


# Calls that turn bytes into arbitrary Python objects (and run code while doing so).
_UNPICKLING = re.compile(
    r"\bimport (c?pickle|dill|cloudpickle|joblib|shelve)\b|\bfrom (c?pickle|dill|cloudpickle|joblib|shelve) import"
    r"|\btorch\.load\(|allow_pickle\s*=\s*True|\bmarshal\.loads?\("
)


def test_no_runtime_code_can_unpickle_a_model() -> None:
    """Models are ONNX only: nothing the functions, jobs or core run imports a pickle loader."""
    sources = [
        p
        for folder in ("src", "functions", "glue_jobs")
        for p in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    ]
    assert len(sources) > 40
    offenders = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in sources
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if _UNPICKLING.search(line)
    ]
    assert offenders == []


def test_onnxruntime_sessions_are_only_made_from_a_verified_bundle() -> None:
    """Sessions are built in scoring.py, from a ModelBundle that load_bundle verified, and in
    training.py, from the model it has just trained in memory (its parity check)."""
    makers = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "src").rglob("*.py")
        if "InferenceSession(" in p.read_text(encoding="utf-8")
    ]
    assert sorted(makers) == ["src/zaindari/scoring.py", "src/zaindari/training.py"]
