"""Least privilege and safe defaults of ``template.yaml``, checked without AWS.

What checkov cannot say for this project (it knows no "data resource"), stated as code:

* no IAM ``Allow`` statement grants a wildcard action (``*``, ``s3:*``, ``dynamodb:Put*``) or a
  ``*`` resource, except for actions AWS offers no resource-level permission for (X-Ray, the
  CloudWatch metrics API, SageMaker's list calls, the ECR login), named in
  :data:`RESOURCE_WILDCARD_ONLY`;
* every bucket is encrypted, blocks public access (all four settings) and has a bucket policy
  denying requests without TLS;
* every HTTP endpoint requires authentication: an HTTP API's default authorizer is ``AWS_IAM`` or a
  JWT authorizer, a function URL's ``AuthType`` is ``AWS_IAM``, and no route opts out with
  ``Authorizer: NONE``;
* every checkov check skipped on a resource (``Metadata.checkov.skip``) carries its reason.

``python -m zaindari.infra.template_policy template.yaml`` prints each violation and exits 1 if any.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from zaindari.infra.provision import Template, load_template

__all__ = ["RESOURCE_WILDCARD_ONLY", "check_template", "main"]

# Actions that only accept Resource "*" (no resource-level permissions exist for them).
RESOURCE_WILDCARD_ONLY = frozenset(
    {
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:GetSamplingRules",
        "xray:GetSamplingTargets",
        "cloudwatch:PutMetricData",
        # deploy_model and register_model: listing a group's packages, and the ECR login of the
        # SageMaker serving role (repository pulls are scoped)
        "sagemaker:ListModelPackages",
        "ecr:GetAuthorizationToken",
    }
)
_PUBLIC_ACCESS_BLOCK = ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _policy_documents(template: Template) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every identity policy document: IAM roles' and policies' inline ones, SAM ``Policies``."""
    for rid, res in template.resources.items():
        props = res.get("Properties") or {}
        kind = res.get("Type")
        if kind == "AWS::IAM::Role":
            for policy in props.get("Policies") or []:
                yield f"{rid}/{policy.get('PolicyName', '?')}", policy.get("PolicyDocument") or {}
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield rid, props.get("PolicyDocument") or {}
        elif kind == "AWS::Serverless::Function":
            for i, policy in enumerate(_as_list(props.get("Policies") or [])):
                if isinstance(policy, Mapping) and "Statement" in policy:
                    yield f"{rid}/Policies[{i}]", policy


def _iam_violations(template: Template) -> Iterator[str]:
    for where, document in _policy_documents(template):
        for i, statement in enumerate(_as_list(document.get("Statement") or [])):
            if statement.get("Effect") != "Allow":
                continue  # a Deny with a wildcard (TLS-only policies) narrows, never widens
            name = f"{where} statement {statement.get('Sid', i)}"
            if "NotAction" in statement or "NotResource" in statement:
                yield f"{name}: NotAction/NotResource in an Allow grants everything else"
            actions = [str(a) for a in _as_list(statement.get("Action") or [])]
            for action in actions:
                if "*" in action:
                    yield f"{name}: wildcard action {action!r}"
            resources = _as_list(statement.get("Resource") or [])
            if "*" in resources:
                broad = sorted(set(actions) - RESOURCE_WILDCARD_ONLY)
                if broad:
                    yield f"{name}: Resource '*' for {', '.join(broad)} (they accept resource ARNs)"


def _referenced_bucket(value: Any) -> str | None:
    if isinstance(value, Mapping) and "Ref" in value:
        return str(value["Ref"])
    return None


def _denies_insecure_transport(document: Mapping[str, Any]) -> bool:
    for statement in _as_list(document.get("Statement") or []):
        condition = statement.get("Condition") or {}
        secure = (condition.get("Bool") or {}).get("aws:SecureTransport")
        if statement.get("Effect") == "Deny" and str(secure).lower() == "false":
            return True
    return False


def _bucket_violations(template: Template) -> Iterator[str]:
    tls_only = {
        _referenced_bucket((res.get("Properties") or {}).get("Bucket"))
        for res in template.resources.values()
        if res.get("Type") == "AWS::S3::BucketPolicy"
        and _denies_insecure_transport((res.get("Properties") or {}).get("PolicyDocument") or {})
    }
    for rid in template.resources_of(frozenset({"AWS::S3::Bucket"})):
        props = template.resources[rid].get("Properties") or {}
        rules = (props.get("BucketEncryption") or {}).get("ServerSideEncryptionConfiguration") or []
        if not any((r.get("ServerSideEncryptionByDefault") or {}).get("SSEAlgorithm") for r in rules):
            yield f"{rid}: no default encryption (BucketEncryption)"
        block = props.get("PublicAccessBlockConfiguration") or {}
        missing = [k for k in _PUBLIC_ACCESS_BLOCK if block.get(k) is not True]
        if missing:
            yield f"{rid}: public access not blocked ({', '.join(missing)})"
        if rid not in tls_only:
            yield f"{rid}: no bucket policy denying requests without TLS (aws:SecureTransport false)"


def _authorizer_is_authenticating(auth: Mapping[str, Any]) -> bool:
    default = auth.get("DefaultAuthorizer")
    if default == "AWS_IAM":
        return bool(auth.get("EnableIamAuthorizer"))
    authorizers = auth.get("Authorizers") or {}
    chosen = authorizers.get(default) if isinstance(default, str) else None
    return isinstance(chosen, Mapping) and "JwtConfiguration" in chosen


def _http_violations(template: Template) -> Iterator[str]:
    globals_auth = ((template.body.get("Globals") or {}).get("HttpApi") or {}).get("Auth") or {}
    apis = template.resources_of(frozenset({"AWS::Serverless::HttpApi"}))
    for rid in apis:
        auth = (template.resources[rid].get("Properties") or {}).get("Auth") or globals_auth
        if not _authorizer_is_authenticating(auth):
            yield f"{rid}: HTTP API without an IAM or JWT default authorizer"
    for rid in template.resources_of(frozenset({"AWS::ApiGatewayV2::Api", "AWS::ApiGateway::RestApi"})):
        yield f"{rid}: raw API Gateway resource (declare AWS::Serverless::HttpApi with an authorizer)"
    for rid in template.functions():
        props = template.resources[rid].get("Properties") or {}
        url = props.get("FunctionUrlConfig")
        if url is not None and url.get("AuthType") != "AWS_IAM":
            yield f"{rid}: function URL with AuthType {url.get('AuthType')!r} (must be AWS_IAM)"
        for name, event in (props.get("Events") or {}).items():
            if event.get("Type") not in ("HttpApi", "Api"):
                continue
            event_props = event.get("Properties") or {}
            if (event_props.get("Auth") or {}).get("Authorizer") == "NONE":
                yield f"{rid}/{name}: route opts out of authentication (Authorizer: NONE)"
            if event.get("Type") == "HttpApi" and not event_props.get("ApiId") and not apis:
                yield f"{rid}/{name}: route on SAM's implicit HTTP API, which has no authorizer"
    for rid, res in template.resources.items():
        if (
            res.get("Type") == "AWS::Lambda::Url"
            and (res.get("Properties") or {}).get("AuthType") != "AWS_IAM"
        ):
            yield f"{rid}: function URL without AWS_IAM auth"


def _skip_violations(template: Template) -> Iterator[str]:
    for rid, res in template.resources.items():
        skips = ((res.get("Metadata") or {}).get("checkov") or {}).get("skip") or []
        for skip in skips:
            if not isinstance(skip, Mapping) or not str(skip.get("comment") or "").strip():
                yield f"{rid}: checkov skip {skip!r} without a reason (comment)"


def check_template(source: str | Path | Mapping[str, Any]) -> list[str]:
    """Every least-privilege or safe-default violation of a template (empty: none).

    Parameters
    ----------
    source
        A template path or a parsed body (as :func:`zaindari.infra.provision.load_template` takes).
    """
    template = load_template(source)
    return [
        *_iam_violations(template),
        *_bucket_violations(template),
        *_http_violations(template),
        *_skip_violations(template),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the violations of each template named (default ``template.yaml``); 1 if any."""
    paths = (argv if argv is not None else sys.argv[1:]) or ["template.yaml"]
    found = 0
    for path in paths:
        for violation in check_template(Path(path)):
            print(f"{path}: {violation}")
            found += 1
    if not found:
        print(f"template policy: {', '.join(paths)}: no violation")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
