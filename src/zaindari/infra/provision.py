"""Provision the data resources ``template.yaml`` declares into a local AWS (moto, LocalStack).

``sam local invoke`` needs Docker and creates no tables, buckets or queues; this module reads the
SAM template itself, creates its data resources (buckets, tables, topics, queues, streams, event
buses, Glue catalog entries and jobs) in the embedded AWS, and resolves a function's environment
(``!Ref``/``!GetAtt``/``!Sub`` ...) against what it created. The template stays the only list of
resources: nothing here names a bucket or a table.

Physical names follow ``<stack>-<logicalid-lowercase>`` unless the template names the resource
itself (``BucketName``, ``TableName``, ...), as CloudFormation does. Provisioning is idempotent:
what already exists is looked up, not recreated. Types that hold no data (functions, roles,
policies, alarms ...) are listed in :attr:`Provisioned.skipped`, never an error.

Intrinsic functions are kept in their long form: the loader turns ``!GetAtt Queue.Arn`` into
``{"Fn::GetAtt": ["Queue", "Arn"]}``, so short and long forms (and JSON templates) go through
one resolver.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from zaindari.infra.aws import ClientFactory

__all__ = [
    "DATA_RESOURCE_TYPES",
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_STACK_NAME",
    "FunctionSettings",
    "ProvisionError",
    "Provisioned",
    "ProvisionedResource",
    "Template",
    "TemplateError",
    "UnresolvableError",
    "load_template",
    "provision",
    "seed_model_bundle",
]

DEFAULT_STACK_NAME = "zaindari"
DEFAULT_ACCOUNT_ID = "123456789012"  # moto's default account
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")

# The short tags CloudFormation understands, and the key of their long form.
_SHORT_TAGS = {
    "Ref": "Ref",
    "Condition": "Condition",
    **{
        name: f"Fn::{name}"
        for name in (
            "Sub",
            "GetAtt",
            "If",
            "Equals",
            "Join",
            "Select",
            "Split",
            "Not",
            "And",
            "Or",
            "FindInMap",
            "ImportValue",
            "Base64",
            "GetAZs",
            "Cidr",
            "Length",
            "ToJsonString",
        )
    },
}


class TemplateError(ValueError):
    """The template cannot be read or is not a CloudFormation/SAM template we can use."""


class UnresolvableError(TemplateError):
    """An intrinsic function refers to something that has no local value."""


class ProvisionError(RuntimeError):
    """A resource could not be created in the local AWS."""


# -- loading


class _TemplateLoader(yaml.SafeLoader):
    """SafeLoader plus CloudFormation short tags; dates stay strings (``Version: 2012-10-17``)."""


def _short_tag_constructor(long_form: str) -> Callable[[yaml.Loader, yaml.Node], Any]:
    def construct(loader: yaml.Loader, node: yaml.Node) -> Any:
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        if long_form == "Fn::GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        return {long_form: value}

    return construct


for _tag, _long in _SHORT_TAGS.items():
    _TemplateLoader.add_constructor(f"!{_tag}", _short_tag_constructor(_long))
_TemplateLoader.add_constructor(
    "tag:yaml.org,2002:timestamp",
    lambda loader, node: loader.construct_scalar(node),  # type: ignore[arg-type]
)


@dataclass(frozen=True)
class Template:
    """A parsed template: its sections, and where it was read from."""

    body: Mapping[str, Any]
    path: Path | None = None

    @property
    def resources(self) -> Mapping[str, Mapping[str, Any]]:
        resources = self.body.get("Resources") or {}
        return resources if isinstance(resources, Mapping) else {}

    @property
    def parameters(self) -> Mapping[str, Mapping[str, Any]]:
        return self.body.get("Parameters") or {}

    @property
    def conditions(self) -> Mapping[str, Any]:
        return self.body.get("Conditions") or {}

    @property
    def mappings(self) -> Mapping[str, Any]:
        return self.body.get("Mappings") or {}

    @property
    def function_globals(self) -> Mapping[str, Any]:
        return (self.body.get("Globals") or {}).get("Function") or {}

    def resource_type(self, logical_id: str) -> str:
        return str(self.resources[logical_id].get("Type", ""))

    def resources_of(self, types: Sequence[str] | frozenset[str]) -> list[str]:
        """Logical ids of the resources whose type is in ``types``, in template order."""
        return [rid for rid, res in self.resources.items() if res.get("Type") in types]

    def functions(self) -> list[str]:
        return self.resources_of(FUNCTION_TYPES)

    def find_function(self, name: str) -> str:
        """The logical id of the function ``name`` designates.

        ``name`` is a logical id (``ScoreEventFunction``), or the folder under ``functions/``
        (``score_event``): matched against ``CodeUri`` and then against the logical id with
        ``Function`` dropped (``ScoreEvent``).
        """
        functions = self.functions()
        if name in functions:
            return name
        wanted = re.sub(r"[^a-z0-9]", "", name.lower())
        by_code = [
            fid
            for fid in functions
            if isinstance(uri := self.resources[fid].get("Properties", {}).get("CodeUri"), str)
            and Path(uri.rstrip("/")).name == name
        ]
        if len(by_code) == 1:
            return by_code[0]
        by_id = [
            fid for fid in functions if re.sub(r"function$", "", fid.lower()) in (wanted, f"{wanted}function")
        ]
        if len(by_id) == 1:
            return by_id[0]
        raise TemplateError(
            f"no single function in the template matches {name!r} (functions: {', '.join(functions) or 'none'})"
        )


def load_template(source: str | Path | Mapping[str, Any]) -> Template:
    """Parse a SAM/CloudFormation template (YAML or JSON, short tags allowed).

    Parameters
    ----------
    source
        A path to the template, or an already parsed body.
    """
    if isinstance(source, Mapping):
        return Template(body=source)
    path = Path(source)
    try:
        body = yaml.load(path.read_text(encoding="utf-8"), Loader=_TemplateLoader)
    except OSError as exc:
        raise TemplateError(f"{path}: cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(body, Mapping) or not isinstance(body.get("Resources"), Mapping):
        raise TemplateError(f"{path}: not a CloudFormation template (no Resources section)")
    return Template(body=body, path=path)


# -- intrinsic functions

NO_VALUE: Any = type("NoValue", (), {"__repr__": lambda self: "AWS::NoValue"})()
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class _Resolver:
    """Evaluates intrinsic functions against parameters, pseudo parameters and known resources."""

    def __init__(
        self,
        template: Template,
        parameters: Mapping[str, Any],
        pseudo: Mapping[str, Any],
        ref: Callable[[str], Any],
        get_att: Callable[[str, str], Any],
    ) -> None:
        self.template = template
        self.parameters = parameters
        self.pseudo = pseudo
        self._ref = ref
        self._get_att = get_att
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            if name not in self.template.conditions:
                raise TemplateError(f"condition {name!r} is not declared in Conditions")
            self._conditions[name] = bool(self.resolve(self.template.conditions[name]))
        return self._conditions[name]

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.template.parameters:
            raise UnresolvableError(f"parameter {name!r} has no Default and no value was given")
        if name in self.template.resources:
            return self._ref(name)
        raise TemplateError(f"!Ref {name}: no such parameter, pseudo parameter or resource")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, Mapping):
            return value
        if len(value) == 1:
            (key, arg), *_ = value.items()
            # a one-key {"Condition": {...}} is an IAM policy block, not the intrinsic
            if (
                key in ("Ref", "Fn::GetAtt")
                or key.startswith("Fn::")
                or (key == "Condition" and isinstance(arg, str))
            ):
                return self._intrinsic(key, arg)
        out = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def _intrinsic(self, key: str, arg: Any) -> Any:
        if key == "Ref":
            return self.ref(str(self.resolve(arg)))
        if key == "Condition":
            return self.condition(str(arg))
        if key == "Fn::GetAtt":
            parts = arg.split(".", 1) if isinstance(arg, str) else self.resolve(arg)
            if len(parts) != 2:
                raise TemplateError(f"Fn::GetAtt needs [LogicalId, Attribute], got {arg!r}")
            return self._get_att(str(parts[0]), str(parts[1]))
        if key == "Fn::Sub":
            return self._sub(arg)
        if key == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(name) else when_false)
        if key == "Fn::Equals":
            left, right = (self.resolve(v) for v in arg)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self._truth(self.resolve(arg[0]))
        if key == "Fn::And":
            return all(self._truth(self.resolve(v)) for v in arg)
        if key == "Fn::Or":
            return any(self._truth(self.resolve(v)) for v in arg)
        if key == "Fn::Join":
            delimiter, items = arg
            return str(delimiter).join(str(v) for v in self.resolve(items))
        if key == "Fn::Select":
            index, items = self.resolve(arg)
            return items[int(index)]
        if key == "Fn::Split":
            delimiter, text = self.resolve(arg)
            return str(text).split(str(delimiter))
        if key == "Fn::FindInMap":
            map_name, top, second, *_default = self.resolve(arg)
            try:
                return self.template.mappings[map_name][top][second]
            except (KeyError, TypeError):
                if _default and isinstance(_default[0], Mapping) and "DefaultValue" in _default[0]:
                    return _default[0]["DefaultValue"]
                raise TemplateError(f"Fn::FindInMap: {map_name}.{top}.{second} is not in Mappings") from None
        if key == "Fn::Base64":
            return base64.b64encode(str(self.resolve(arg)).encode()).decode()
        if key == "Fn::GetAZs":
            region = self.resolve(arg) or self.pseudo["AWS::Region"]
            return [f"{region}{zone}" for zone in "abc"]
        if key == "Fn::Cidr":
            block, count, bits = self.resolve(arg)
            network = ipaddress.ip_network(str(block), strict=False)
            subnets = network.subnets(new_prefix=network.max_prefixlen - int(bits))
            return [str(s) for _, s in zip(range(int(count)), subnets, strict=False)]
        if key == "Fn::Length":
            return len(self.resolve(arg))
        if key == "Fn::ToJsonString":
            return json.dumps(self.resolve(arg), separators=(",", ":"))
        if key == "Fn::ImportValue":
            raise UnresolvableError(
                f"Fn::ImportValue {self.resolve(arg)!r}: other stacks' exports do not exist locally"
            )
        raise TemplateError(f"unsupported intrinsic function {key}")

    @staticmethod
    def _truth(value: Any) -> bool:
        return value if isinstance(value, bool) else str(value).lower() == "true"

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, str):
            text, variables = arg, {}
        else:
            text, raw_variables = arg
            variables = {k: self.resolve(v) for k, v in raw_variables.items()}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):  # ${!Literal} is the literal ${Literal}
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                logical_id, attribute = name.split(".", 1)
                return str(self._get_att(logical_id, attribute))
            return str(self.ref(name))

        return _SUB_VARIABLE.sub(substitute, str(text))


def _references(value: Any) -> Iterator[str]:
    """Every logical id (or parameter) ``value`` refers to through Ref, GetAtt or Sub."""
    if isinstance(value, list):
        for v in value:
            yield from _references(v)
    elif isinstance(value, Mapping):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                yield arg
            elif key == "Fn::GetAtt":
                target = arg.split(".", 1)[0] if isinstance(arg, str) else arg[0]
                if isinstance(target, str):
                    yield target
            elif key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                local = set() if isinstance(arg, str) else set(arg[1])
                for name in _SUB_VARIABLE.findall(str(text)):
                    target = name.split(".", 1)[0]
                    if not name.startswith("!") and target not in local:
                        yield target
                if not isinstance(arg, str):
                    yield from _references(arg[1])
            else:
                yield from _references(arg)


# -- what was provisioned


@dataclass(frozen=True)
class ProvisionedResource:
    """One resource as it exists in the local AWS.

    ``ref`` is what ``!Ref`` returns for it (a bucket's name, a topic's ARN, a queue's URL ...),
    ``attributes`` what ``!GetAtt`` can read. ``ignored_properties`` are template properties that
    were not applied locally (encryption, lifecycle, alarms ...).
    """

    logical_id: str
    type: str
    name: str
    arn: str
    ref: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    ignored_properties: tuple[str, ...] = ()


@dataclass(frozen=True)
class FunctionSettings:
    """What a local invoke needs to know about one function of the template (Globals merged)."""

    logical_id: str
    function_name: str
    memory_mb: int
    timeout_s: float
    handler: str | None
    code_uri: str | None
    environment: dict[str, str]


def _env_string(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise TemplateError(f"environment variable {name} resolves to {value!r}, not a string")


@dataclass
class Provisioned:
    """The data resources of one template in one local AWS, by logical id.

    Build it with :func:`provision`.
    """

    template: Template
    stack_name: str
    region: str
    account_id: str
    parameters: dict[str, Any]
    resources: dict[str, ProvisionedResource] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    inactive: list[str] = field(default_factory=list)

    def __getitem__(self, logical_id: str) -> ProvisionedResource:
        try:
            return self.resources[logical_id]
        except KeyError:
            raise KeyError(
                f"{logical_id!r} was not provisioned (provisioned: {sorted(self.resources)})"
            ) from None

    def name(self, logical_id: str) -> str:
        """The physical name of a provisioned resource."""
        return self[logical_id].name

    def arn(self, logical_id: str) -> str:
        """The ARN of a provisioned resource."""
        return self[logical_id].arn

    def url(self, logical_id: str) -> str:
        """The URL of a provisioned queue."""
        url = self[logical_id].url
        if url is None:
            raise KeyError(f"{logical_id} ({self[logical_id].type}) has no URL")
        return url

    @property
    def pseudo_parameters(self) -> dict[str, Any]:
        return {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::StackName": self.stack_name,
            "AWS::StackId": (
                f"arn:aws:cloudformation:{self.region}:{self.account_id}:stack/{self.stack_name}/"
                + _stable_uuid(self.stack_name)
            ),
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": NO_VALUE,
            "AWS::NotificationARNs": [],
        }

    def resolver(self) -> _Resolver:
        return _Resolver(self.template, self.parameters, self.pseudo_parameters, self._ref, self._get_att)

    def resolve(self, value: Any) -> Any:
        """Evaluate the intrinsic functions in ``value`` against this stack."""
        return self.resolver().resolve(value)

    def _ref(self, logical_id: str) -> Any:
        if logical_id in self.resources:
            return self.resources[logical_id].ref
        synthetic = self._synthetic(logical_id)
        if synthetic is not None:
            return synthetic.ref
        raise UnresolvableError(
            f"!Ref {logical_id}: a {self.template.resource_type(logical_id)} is not created locally"
        )

    def _get_att(self, logical_id: str, attribute: str) -> Any:
        resource = self.resources.get(logical_id) or self._synthetic(logical_id)
        if resource is None:
            if logical_id not in self.template.resources:
                raise TemplateError(f"!GetAtt {logical_id}.{attribute}: no such resource")
            raise UnresolvableError(
                f"!GetAtt {logical_id}.{attribute}: a {self.template.resource_type(logical_id)} "
                "is not created locally"
            )
        if attribute not in resource.attributes:
            raise UnresolvableError(
                f"!GetAtt {logical_id}.{attribute}: {resource.type} attributes known locally are "
                f"{', '.join(sorted(resource.attributes))}"
            )
        return resource.attributes[attribute]

    def _synthetic(self, logical_id: str) -> ProvisionedResource | None:
        """The names a non-data resource would get, so environments can refer to it."""
        kind = self.template.resources.get(logical_id, {}).get("Type")
        name = physical_name(self.stack_name, logical_id)
        region, account = self.region, self.account_id
        if kind in FUNCTION_TYPES:
            props = self.template.resources[logical_id].get("Properties") or {}
            name = str(self.resolve(props.get("FunctionName", name)))
            arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
            return ProvisionedResource(logical_id, kind, name, arn, name, {"Arn": arn})
        if kind == "AWS::IAM::Role":
            arn = f"arn:aws:iam::{account}:role/{name}"
            return ProvisionedResource(logical_id, kind, name, arn, name, {"Arn": arn, "RoleId": name})
        if kind in ("AWS::Serverless::StateMachine", "AWS::StepFunctions::StateMachine"):
            arn = f"arn:aws:states:{region}:{account}:stateMachine:{name}"
            return ProvisionedResource(logical_id, kind, name, arn, arn, {"Arn": arn, "Name": name})
        return None

    def function_settings(self, function: str) -> FunctionSettings:
        """A function's name, memory, timeout and resolved environment (Globals merged).

        ``function`` is a logical id or a ``functions/`` folder name (see :meth:`Template.find_function`).
        """
        logical_id = self.template.find_function(function)
        props = self.template.resources[logical_id].get("Properties") or {}
        glob = (
            self.template.function_globals
            if self.template.resource_type(logical_id).startswith("AWS::Serverless")
            else {}
        )
        merged = {**glob, **props}
        variables = {
            **((glob.get("Environment") or {}).get("Variables") or {}),
            **((props.get("Environment") or {}).get("Variables") or {}),
        }
        resolver = self.resolver()
        environment: dict[str, str] = {}
        for name, raw in variables.items():
            try:
                value = resolver.resolve(raw)
            except UnresolvableError as exc:
                raise UnresolvableError(f"{logical_id} environment variable {name}: {exc}") from exc
            if value is not NO_VALUE:
                environment[name] = _env_string(name, value)
        synthetic = self._synthetic(logical_id)
        return FunctionSettings(
            logical_id=logical_id,
            function_name=synthetic.name if synthetic else physical_name(self.stack_name, logical_id),
            memory_mb=int(resolver.resolve(merged.get("MemorySize", 128))),
            timeout_s=float(resolver.resolve(merged.get("Timeout", 3))),
            handler=resolver.resolve(merged.get("Handler")),
            code_uri=(code if isinstance(code := resolver.resolve(merged.get("CodeUri")), str) else None),
            environment=environment,
        )

    def function_environment(self, function: str) -> dict[str, str]:
        """``Environment.Variables`` of ``function`` (merged with Globals), every value resolved.

        Raises
        ------
        UnresolvableError
            When a variable refers to something with no local value (an import, a parameter with
            no default); the message names the variable.
        """
        return self.function_settings(function).environment

    def summary(self) -> str:
        """One line per resource: logical id, type, physical name."""
        lines = [f"{r.logical_id:<28} {r.type:<26} {r.name}" for r in self.resources.values()]
        if self.skipped:
            lines.append(f"skipped (not data resources): {', '.join(sorted(self.skipped))}")
        return "\n".join(lines)


def _stable_uuid(seed: str) -> str:
    h = hashlib.sha256(seed.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


# -- physical names


def _shorten(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-_.')}-{digest}"


def physical_name(stack_name: str, logical_id: str, resource_type: str = "") -> str:
    """The name CloudFormation-like provisioning gives ``logical_id``: ``<stack>-<logicalid-lowercase>``.

    Adjusted per type to the service's rules: S3 buckets (lowercase, 3-63 characters), Glue
    databases and tables (underscores, as Athena wants), SQS (80) and Kinesis (128) lengths.
    """
    base = f"{stack_name}-{logical_id}".lower()
    if resource_type == "AWS::S3::Bucket":
        name = re.sub(r"[^a-z0-9.-]", "-", base).strip("-.")
        return _shorten(name, 63)
    if resource_type.startswith("AWS::Glue::"):
        return re.sub(r"[^a-z0-9_]", "_", base)[:255]
    if resource_type == "AWS::SQS::Queue":
        return _shorten(re.sub(r"[^a-z0-9_-]", "-", base), 80)
    if resource_type == "AWS::Kinesis::Stream":
        return _shorten(base, 128)
    return _shorten(re.sub(r"[^a-z0-9_.-]", "-", base), 255)


# -- provisioners, one per data resource type


@dataclass
class _Context:
    factory: ClientFactory
    stack: Provisioned

    @property
    def region(self) -> str:
        return self.stack.region

    @property
    def account(self) -> str:
        return self.stack.account_id

    def resolve(self, value: Any) -> Any:
        return self.stack.resolve(value)

    def name(self, logical_id: str, props: Mapping[str, Any], key: str | None, resource_type: str) -> str:
        explicit = self.resolve(props[key]) if key and props.get(key) is not None else None
        return str(explicit) if explicit else physical_name(self.stack.stack_name, logical_id, resource_type)


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _client_error() -> type[Exception]:
    from botocore.exceptions import ClientError

    return ClientError


def _ignored(props: Mapping[str, Any], handled: set[str]) -> tuple[str, ...]:
    return tuple(sorted(k for k in props if k not in handled))


def _tags(props: Mapping[str, Any], ctx: _Context) -> list[dict[str, str]]:
    tags = ctx.resolve(props.get("Tags") or [])
    if isinstance(tags, Mapping):  # SAM resources use a map
        return [{"Key": str(k), "Value": str(v)} for k, v in tags.items()]
    return [{"Key": str(t["Key"]), "Value": str(t["Value"])} for t in tags]


def _s3_bucket(ctx: _Context, logical_id: str, props: Mapping[str, Any]) -> ProvisionedResource:
    s3 = ctx.factory.client("s3")
    name = ctx.name(logical_id, props, "BucketName", "AWS::S3::Bucket")
    request: dict[str, Any] = {"Bucket": name}
    if ctx.region != "us-east-1":
        request["CreateBucketConfiguration"] = {"LocationConstraint": ctx.region}
    try:
        s3.create_bucket(**request)
    except _client_error() as exc:
        if _error_code(exc) != "BucketAlreadyOwnedByYou":
            raise
    handled = {"BucketName", "Tags"}
    versioning = ctx.resolve(props.get("VersioningConfiguration") or {})
    if versioning.get("Status"):
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": versioning["Status"]})
        handled.add("VersioningConfiguration")
    notifications = ctx.resolve(props.get("NotificationConfiguration") or {})
    if set(notifications) == {"EventBridgeConfiguration"}:
        if notifications["EventBridgeConfiguration"].get("EventBridgeEnabled") in (True, "true"):
            s3.put_bucket_notification_configuration(
                Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}}
            )
        handled.add("NotificationConfiguration")
    if tags := _tags(props, ctx):
        s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tags})
    arn = f"arn:aws:s3:::{name}"
    return ProvisionedResource(
        logical_id,
        "AWS::S3::Bucket",
        name,
        arn,
        name,
        {
            "Arn": arn,
            "DomainName": f"{name}.s3.amazonaws.com",
            "RegionalDomainName": f"{name}.s3.{ctx.region}.amazonaws.com",
            "DualStackDomainName": f"{name}.s3.dualstack.{ctx.region}.amazonaws.com",
            "WebsiteURL": f"http://{name}.s3-website.{ctx.region}.amazonaws.com",
        },
        ignored_properties=_ignored(props, handled),
    )


_GSI_KEYS = ("IndexName", "KeySchema", "Projection", "ProvisionedThroughput", "OnDemandThroughput")


def _dynamodb_table(ctx: _Context, logical_id: str, props: Mapping[str, Any]) -> ProvisionedResource:
    dynamodb = ctx.factory.client("dynamodb")
    resolved = ctx.resolve(dict(props))
    name = ctx.name(logical_id, props, "TableName", "AWS::DynamoDB::Table")
    billing = resolved.get("BillingMode", "PROVISIONED")
    request: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": resolved["AttributeDefinitions"],
        "KeySchema": resolved["KeySchema"],
        "BillingMode": billing,
    }
    if billing == "PROVISIONED":
        throughput = resolved.get("ProvisionedThroughput") or {
            "ReadCapacityUnits": 5,
            "WriteCapacityUnits": 5,
        }
        request["ProvisionedThroughput"] = {k: int(v) for k, v in throughput.items()}
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if resolved.get(key):
            request[key] = [{k: v for k, v in index.items() if k in _GSI_KEYS} for index in resolved[key]]
    if stream := resolved.get("StreamSpecification"):
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    if resolved.get("TableClass"):
        request["TableClass"] = resolved["TableClass"]
    if tags := _tags(props, ctx):
        request["Tags"] = tags
    try:
        dynamodb.create_table(**request)
    except _client_error() as exc:
        if _error_code(exc) != "ResourceInUseException":
            raise
    ttl = resolved.get("TimeToLiveSpecification")
    if ttl and ttl.get("AttributeName"):
        current = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        enabled = ttl.get("Enabled") in (True, "true")
        if (current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")) != enabled:
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": enabled},
            )
    table = dynamodb.describe_table(TableName=name)["Table"]
    attributes = {"Arn": table["TableArn"]}
    if table.get("LatestStreamArn"):
        attributes["StreamArn"] = table["LatestStreamArn"]
    handled = {
        "TableName",
        "AttributeDefinitions",
        "KeySchema",
        "BillingMode",
        "ProvisionedThroughput",
        "GlobalSecondaryIndexes",
        "LocalSecondaryIndexes",
        "StreamSpecification",
        "TableClass",
        "Tags",
        "TimeToLiveSpecification",
    }
    return ProvisionedResource(
        logical_id,
        "AWS::DynamoDB::Table",
        name,
        table["TableArn"],
        name,
        attributes,
        ignored_properties=_ignored(props, handled),
    )


def _simple_table(ctx: _Context, logical_id: str, props: Mapping[str, Any]) -> ProvisionedResource:
    """``AWS::Serverless::SimpleTable``: the DynamoDB table SAM would generate."""
    key = ctx.resolve(props.get("PrimaryKey") or {"Name": "id", "Type": "String"})
    key_type = {"String": "S", "Number": "N", "Binary": "B"}[key.get("Type", "String")]
    table_props: dict[str, Any] = {
        "AttributeDefinitions": [{"AttributeName": key["Name"], "AttributeType": key_type}],
        "KeySchema": [{"AttributeName": key["Name"], "KeyType": "HASH"}],
        "BillingMode": "PROVISIONED" if props.get("ProvisionedThroughput") else "PAY_PER_REQUEST",
    }
    for name in ("TableName", "ProvisionedThroughput", "Tags"):
        if name in props:
            table_props[name] = props[name]
    made = _dynamodb_table(ctx, logical_id, table_props)
    return ProvisionedResource(
        logical_id, "AWS::Serverless::SimpleTable", made.name, made.arn, made.ref, made.attributes
    )


def _sns_topic(ctx: _Context, logical_id: str, props: Mapping[str, Any]) -> ProvisionedResource:
    sns = ctx.factory.client("sns")
    resolved = ctx.resolve(dict(props))
    fifo = resolved.get("FifoTopic") in (True, "true")
    name = ctx.name(logical_id, props, "TopicName", "AWS::SNS::Topic")
    if fifo and not name.endswith(".fifo"):
        name += ".fifo"
    attributes = {
        key: _env_string(key, resolved[key])
        for key in ("DisplayName", "FifoTopic", "ContentBasedDeduplication", "KmsMasterKeyId")
        if key in resolved
    }
    request: dict[str, Any] = {"Name": name, "Attributes": attributes}
    if tags := _tags(props, ctx):
        request["Tags"] = tags
    arn = sns.create_topic(**request)["TopicArn"]  # idempotent: returns the existing topic
    for subscription in resolved.get("Subscription") or []:
        _subscribe(sns, arn, subscription["Protocol"], subscription["Endpoint"])
    handled = {"TopicName", "FifoTopic", "ContentBasedDeduplication", "DisplayName", "KmsMasterKeyId"}
    handled |= {"Tags", "Subscription"}
    return ProvisionedResource(
        logical_id,
        "AWS::SNS::Topic",
        name,
        arn,
        arn,
        {"TopicArn": arn, "TopicName": name},
        ignored_properties=_ignored(props, handled),
    )


def _subscribe(sns: Any, topic_arn: str, protocol: str, endpoint: str, **attributes: str) -> str:
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
        for existing in page["Subscriptions"]:
            if existing["Protocol"] == protocol and existing["Endpoint"] == endpoint:
                return str(existing["SubscriptionArn"])
    made = sns.subscribe(
        TopicArn=topic_arn,
        Protocol=protocol,
        Endpoint=endpoint,
        Attributes=attributes,
        ReturnSubscriptionArn=True,
    )
    return str(made["SubscriptionArn"])


def _sns_subscription(ctx: _Context, logical_id: str, props: Mapping[str, Any]) -> ProvisionedResource:
    resolved = ctx.resolve(dict(props))
    attributes = {
        key: (json.dumps(value) if isinstance(value, Mapping) else _env_string(key, value))
        for key, value in resolved.items()
        if key in ("RawMessageDelivery", "FilterPolicy", "FilterPolicyScope", "RedrivePolicy")
    }
    arn = _subscribe(
        ctx.factory.client("sns"),
        resolved["TopicArn"],
        resolved["Protocol"],
        resolved["Endpoint"],
        **attributes,
    )
    handled = {"TopicArn", "Protocol", "Endpoint", *attributes}
    return ProvisionedResource(
        logical_id,
        "AWS::SNS::Subscription",
        arn,
        arn,
        arn,
        {"Arn": arn},
        ignored_properties=_ignored(props, handled),
    )


_SQS_ATTRIBUTES = (
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
)


def _sqs_queue(ctx: _Context, logical_id: str, props: Mapping[str, Any]) -> ProvisionedResource:
    sqs = ctx.factory.client("sqs")
    resolved = ctx.resolve(dict(props))
    fifo = resolved.get("FifoQueue") in (True, "true")
    name = ctx.name(logical_id, props, "QueueName", "AWS::SQS::Queue")
    if fifo and not name.endswith(".fifo"):
        name = name[:75] + ".fifo"
    attributes = {key: _env_string(key, resolved[key]) for key in _SQS_ATTRIBUTES if key in resolved}
    for key in ("RedrivePolicy", "RedriveAllowPolicy"):
        if key in resolved:
            value = resolved[key]
            attributes[key] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    create_attributes = dict(attributes)
    if not fifo:
        create_attributes.pop("FifoQueue", None)  # SQS refuses FifoQueue=false on create
    try:
        url = sqs.create_queue(QueueName=name, Attributes=create_attributes)["QueueUrl"]
    except _client_error() as exc:
        if _error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        changeable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
        if changeable:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=changeable)
    if tags := _tags(props, ctx):
        sqs.tag_queue(QueueUrl=url, Tags={t["Key"]: t["Value"] for t in tags})
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    handled = {"QueueName", "Tags", "RedrivePolicy", "RedriveAllowPolicy", *_SQS_ATTRIBUTES}
    return ProvisionedResource(
        logical_id,
        "AWS::SQS::Queue",
        name,
        arn,
        url,
        {"Arn": arn, "QueueName": name, "QueueUrl": url},
        url=url,
        ignored_properties=_ignored(props, handled),
    )


def _kinesis_stream(ctx: _Context, logical_id: str, props: Mapping[str, Any]) -> ProvisionedResource:
    kinesis = ctx.factory.client("kinesis")
    resolved = ctx.resolve(dict(props))
    name = ctx.name(logical_id, props, "Name", "AWS::Kinesis::Stream")
    mode = (resolved.get("StreamModeDetails") or {}).get("StreamMode", "PROVISIONED")
    request: dict[str, Any] = {"StreamName": name}
    if mode == "ON_DEMAND":
        request["StreamModeDetails"] = {"StreamMode": "ON_DEMAND"}
    else:
        request["ShardCount"] = int(resolved.get("ShardCount", 1))
    try:
        kinesis.create_stream(**request)
    except _client_error() as exc:
        if _error_code(exc) != "ResourceInUseException":
            raise
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    return ProvisionedResource(
        logical_id,
        "AWS::Kinesis::Stream",
        name,
        arn,
        name,
        {"Arn": arn},
        ignored_properties=_ignored(props, {"Name", "ShardCount", "StreamModeDetails"}),
    )


def _event_bus(ctx: _Context, logical_id: str, props: Mapping[str, Any]) -> ProvisionedResource:
    events = ctx.factory.client("events")
    name = ctx.name(logical_id, props, "Name", "AWS::Events::EventBus")
    try:
        events.create_event_bus(Name=name)
    except _client_error() as exc:
        if _error_code(exc) != "ResourceAlreadyExistsException":
            raise
    arn = events.describe_event_bus(Name=name)["Arn"]
    return ProvisionedResource(
        logical_id,
        "AWS::Events::EventBus",
        name,
        arn,
        name,
        {"Arn": arn, "Name": name},
        ignored_properties=_ignored(props, {"Name"}),
    )


def _glue_database(ctx: _Context, logical_id: str, props: Mapping[str, Any]) -> ProvisionedResource:
    glue = ctx.factory.client("glue")
    resolved = ctx.resolve(dict(props))
    database_input = dict(resolved.get("DatabaseInput") or {})
    name = str(
        database_input.get("Name")
        or resolved.get("DatabaseName")
        or physical_name(ctx.stack.stack_name, logical_id, "AWS::Glue::Database")
    )
    database_input["Name"] = name
    try:
        glue.create_database(DatabaseInput=database_input)
    except _client_error() as exc:
        if _error_code(exc) != "AlreadyExistsException":
            raise
    arn = f"arn:aws:glue:{ctx.region}:{ctx.account}:database/{name}"
    return ProvisionedResource(
        logical_id,
        "AWS::Glue::Database",
        name,
        arn,
        name,
        {},
        ignored_properties=_ignored(props, {"CatalogId", "DatabaseInput", "DatabaseName"}),
    )


def _glue_table(ctx: _Context, logical_id: str, props: Mapping[str, Any]) -> ProvisionedResource:
    glue = ctx.factory.client("glue")
    resolved = ctx.resolve(dict(props))
    database = str(resolved["DatabaseName"])
    table_input = dict(resolved.get("TableInput") or {})
    name = str(table_input.get("Name") or physical_name(ctx.stack.stack_name, logical_id, "AWS::Glue::Table"))
    table_input["Name"] = name
    try:
        glue.create_table(DatabaseName=database, TableInput=table_input)
    except _client_error() as exc:
        if _error_code(exc) != "AlreadyExistsException":
            raise
    arn = f"arn:aws:glue:{ctx.region}:{ctx.account}:table/{database}/{name}"
    return ProvisionedResource(
        logical_id,
        "AWS::Glue::Table",
        name,
        arn,
        name,
        {},
        ignored_properties=_ignored(
            props, {"CatalogId", "DatabaseName", "TableInput", "OpenTableFormatInput"}
        ),
    )


_GLUE_JOB_KEYS = (
    "Description",
    "LogUri",
    "ExecutionProperty",
    "DefaultArguments",
    "NonOverridableArguments",
    "Connections",
    "MaxRetries",
    "AllocatedCapacity",
    "Timeout",
    "MaxCapacity",
    "SecurityConfiguration",
    "NotificationProperty",
    "GlueVersion",
    "NumberOfWorkers",
    "WorkerType",
    "ExecutionClass",
)


def _glue_job(ctx: _Context, logical_id: str, props: Mapping[str, Any]) -> ProvisionedResource:
    """A Glue job (no script is run locally: moto records job runs, so start_retraining can start them)."""
    glue = ctx.factory.client("glue")
    resolved = ctx.resolve(dict(props))
    name = ctx.name(logical_id, props, "Name", "AWS::Glue::Job")
    try:
        glue.get_job(JobName=name)  # moto's create_job replaces an existing job and its runs
    except _client_error() as exc:
        if _error_code(exc) != "EntityNotFoundException":
            raise
        request: dict[str, Any] = {
            "Name": name,
            "Role": str(resolved["Role"]),
            "Command": resolved["Command"],
        }
        request.update({k: resolved[k] for k in _GLUE_JOB_KEYS if k in resolved})
        for key in ("MaxRetries", "AllocatedCapacity", "Timeout", "NumberOfWorkers"):
            if key in request:
                request[key] = int(request[key])
        if "ExecutionProperty" in request:
            request["ExecutionProperty"] = {k: int(v) for k, v in request["ExecutionProperty"].items()}
        if isinstance(resolved.get("Tags"), Mapping):
            request["Tags"] = {str(k): str(v) for k, v in resolved["Tags"].items()}
        glue.create_job(**request)
    arn = f"arn:aws:glue:{ctx.region}:{ctx.account}:job/{name}"
    return ProvisionedResource(
        logical_id,
        "AWS::Glue::Job",
        name,
        arn,
        name,
        {},
        ignored_properties=_ignored(props, {"Name", "Role", "Command", "Tags", *_GLUE_JOB_KEYS}),
    )


_Provisioner = Callable[[_Context, str, Mapping[str, Any]], ProvisionedResource]
_PROVISIONERS: dict[str, _Provisioner] = {
    "AWS::S3::Bucket": _s3_bucket,
    "AWS::DynamoDB::Table": _dynamodb_table,
    "AWS::Serverless::SimpleTable": _simple_table,
    "AWS::SNS::Topic": _sns_topic,
    "AWS::SNS::Subscription": _sns_subscription,
    "AWS::SQS::Queue": _sqs_queue,
    "AWS::Kinesis::Stream": _kinesis_stream,
    "AWS::Events::EventBus": _event_bus,
    "AWS::Glue::Database": _glue_database,
    "AWS::Glue::Table": _glue_table,
    "AWS::Glue::Job": _glue_job,
}

#: The resource types :func:`provision` creates; every other type is listed as skipped.
DATA_RESOURCE_TYPES: frozenset[str] = frozenset(_PROVISIONERS)


def _creation_order(template: Template, wanted: list[str]) -> list[str]:
    """``wanted`` sorted so each resource comes after the data resources it refers to."""
    wanted_set = set(wanted)
    depends: dict[str, set[str]] = {}
    for rid in wanted:
        resource = template.resources[rid]
        explicit = resource.get("DependsOn") or []
        explicit = [explicit] if isinstance(explicit, str) else list(explicit)
        refs = set(_references(resource.get("Properties") or {})) | set(explicit)
        depends[rid] = (refs & wanted_set) - {rid}
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(rid: str, path: tuple[str, ...]) -> None:
        if state.get(rid) == 2:
            return
        if state.get(rid) == 1:
            raise TemplateError(f"circular dependency: {' -> '.join((*path, rid))}")
        state[rid] = 1
        for dep in sorted(depends[rid]):
            visit(dep, (*path, rid))
        state[rid] = 2
        order.append(rid)

    for rid in wanted:
        visit(rid, ())
    return order


def provision(
    factory: ClientFactory,
    template: Template | str | Path = "template.yaml",
    *,
    stack_name: str = DEFAULT_STACK_NAME,
    parameters: Mapping[str, Any] | None = None,
    account_id: str = DEFAULT_ACCOUNT_ID,
    allow_real_aws: bool = False,
) -> Provisioned:
    """Create the data resources ``template`` declares; return where each one is.

    Parameters
    ----------
    factory
        Clients for the local AWS (``factory.config.endpoint_url`` must be set).
    template
        A parsed :class:`Template` or the path of ``template.yaml``.
    stack_name
        Prefix of generated names, and the value of ``AWS::StackName``.
    parameters
        Values for template parameters; the others take their ``Default``.
    account_id
        The value of ``AWS::AccountId`` (moto's default account).
    allow_real_aws
        Refuse (the default) to create anything when the factory points at real AWS: deploy
        with ``sam deploy`` there.

    Raises
    ------
    ProvisionError
        When a resource cannot be created; the message names it.
    TemplateError
        When the template is unusable (bad intrinsic, circular reference ...).
    """
    if factory.config.endpoint_url is None and not allow_real_aws:
        raise ProvisionError("refusing to provision into real AWS: set an endpoint (moto, LocalStack)")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,127}", stack_name):
        raise ProvisionError(f"{stack_name!r} is not a valid stack name")
    parsed = template if isinstance(template, Template) else load_template(template)
    values: dict[str, Any] = {}
    for name, declaration in parsed.parameters.items():
        raw = (parameters or {}).get(name, declaration.get("Default"))
        if raw is None:
            continue
        kind = str(declaration.get("Type", "String"))
        if isinstance(raw, str) and (kind == "CommaDelimitedList" or kind.startswith("List<")):
            values[name] = [item.strip() for item in raw.split(",")]
        else:
            values[name] = raw
    unknown = set(parameters or {}) - set(parsed.parameters)
    if unknown:
        raise TemplateError(f"unknown template parameters: {', '.join(sorted(unknown))}")
    stack = Provisioned(parsed, stack_name, factory.config.region, account_id, values)
    resolver = stack.resolver()

    wanted: list[str] = []
    for rid, resource in parsed.resources.items():
        condition = resource.get("Condition")
        if condition is not None and not resolver.condition(str(condition)):
            stack.inactive.append(rid)
        elif resource.get("Type") in _PROVISIONERS:
            wanted.append(rid)
        else:
            stack.skipped[rid] = str(resource.get("Type"))

    ctx = _Context(factory, stack)
    for rid in _creation_order(parsed, wanted):
        resource = parsed.resources[rid]
        kind = str(resource["Type"])
        try:
            stack.resources[rid] = _PROVISIONERS[kind](ctx, rid, resource.get("Properties") or {})
        except TemplateError:
            raise
        except Exception as exc:
            raise ProvisionError(f"{rid} ({kind}): {exc}") from exc
    return stack


# -- a model bundle for functions whose model lives in S3


def seed_model_bundle(factory: ClientFactory, uri: str, bundle: Path | Callable[[], Path]) -> bool:
    """Upload a bundle to ``s3://bucket/prefix/`` unless one (its ``MANIFEST.json``) is already there.

    Parameters
    ----------
    factory
        Clients for the local AWS.
    uri
        Where the function reads its model (``ZAINDARI_MODEL_PATH``).
    bundle
        The bundle folder to upload, or a function returning it (called only when needed, so a
        model is fitted only when S3 has none).

    ``MANIFEST.json`` goes last, so a reader never sees a half-uploaded bundle as complete.
    Returns True when it uploaded, False when a bundle was already there.
    """
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3://bucket/prefix/ URI")
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    s3 = factory.client("s3")
    try:
        s3.head_object(Bucket=bucket, Key=f"{prefix}MANIFEST.json")
        return False
    except _client_error() as exc:
        if _error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
            raise
    folder = bundle() if callable(bundle) else bundle
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    for path in sorted(files, key=lambda p: p.name == "MANIFEST.json"):
        s3.upload_file(str(path), bucket, prefix + path.name)
    return True
