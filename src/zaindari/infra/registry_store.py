"""The model registry on AWS: metadata in one DynamoDB table, bundle files in the lake's ``models/``.

Table layout (partition key ``model``, sort key ``sk``, both strings):

=====================  =========================================================
``M#``                 the model: ``latest`` version number handed out (atomic ADD)
``V#000012``           version 12: the :class:`~zaindari.registry.ModelVersion` as JSON
``A#production``       an alias: the version it points at
``H#<iso time>#<seq>`` one audit history entry as JSON (append-only)
=====================  =========================================================

Writes are conditional: a version item is only created if absent, and an alias moves together
with its history entry in one transaction that fails if the alias no longer points where the
writer saw it. botocore failures other than those conditions become :class:`PortError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from zaindari.bundle import MANIFEST_FILE, BundleError, Manifest
from zaindari.infra.aws import ClientFactory
from zaindari.infra.aws_ports import aws_errors
from zaindari.infra.model_store import download_bundle
from zaindari.ports import PortError
from zaindari.registry import AliasConflict, HistoryEntry, ModelVersion, VersionConflict

if TYPE_CHECKING:
    from zaindari.registry import ModelRegistry
    from zaindari.settings import Settings

__all__ = ["DynamoRegistryStore", "S3ArtifactStore", "build_model_registry", "create_registry_table"]

MODEL_SK = "M#"


def _version_sk(version: int) -> str:
    return f"V#{version:06d}"


def _history_sk(entry: HistoryEntry) -> str:
    return f"H#{entry.at}#{entry.seq}"


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def create_registry_table(factory: ClientFactory, table: str) -> None:
    """Create the registry table (on-demand) when missing: for local AWS; on AWS, template.yaml does it."""
    client = factory.client("dynamodb")
    try:
        client.create_table(
            TableName=table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "model", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "model", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
        )
    except aws_errors() as exc:
        if _error_code(exc) != "ResourceInUseException":
            raise PortError(f"registry table {table}: cannot be created: {exc}") from exc


class DynamoRegistryStore:
    """:class:`~zaindari.registry.RegistryStore` on one DynamoDB table (layout in the module docstring)."""

    def __init__(self, factory: ClientFactory, table: str) -> None:
        self.factory = factory
        self.table = table

    @property
    def _client(self) -> Any:
        return self.factory.client("dynamodb")

    def _query(self, model: str, prefix: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#m = :m AND begins_with(sk, :p)",
            "ExpressionAttributeNames": {"#m": "model"},
            "ExpressionAttributeValues": {":m": {"S": model}, ":p": {"S": prefix}},
            "ConsistentRead": True,
        }
        try:
            while True:
                page = self._client.query(**kwargs)
                items += page.get("Items", [])
                if "LastEvaluatedKey" not in page:
                    return items
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except aws_errors() as exc:
            raise PortError(f"registry table {self.table}: query failed: {exc}") from exc

    def reserve_version(self, model: str) -> int:
        try:
            answer = self._client.update_item(
                TableName=self.table,
                Key={"model": {"S": model}, "sk": {"S": MODEL_SK}},
                UpdateExpression="ADD latest :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
                ReturnValues="UPDATED_NEW",
            )
        except aws_errors() as exc:
            raise PortError(
                f"registry table {self.table}: cannot reserve a version of {model}: {exc}"
            ) from exc
        return int(answer["Attributes"]["latest"]["N"])

    def put_version(self, version: ModelVersion) -> None:
        try:
            self._client.put_item(
                TableName=self.table,
                Item={
                    "model": {"S": version.model},
                    "sk": {"S": _version_sk(version.version)},
                    "version": {"N": str(version.version)},
                    "content_hash": {"S": version.content_hash},
                    "artifact_uri": {"S": version.artifact_uri},
                    "registered_at": {"S": version.registered_at},
                    "doc": {"S": version.model_dump_json()},
                },
                ConditionExpression="attribute_not_exists(sk)",
            )
        except aws_errors() as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise VersionConflict(f"{version.model} version {version.version} exists") from exc
            raise PortError(f"registry table {self.table}: cannot store a version: {exc}") from exc

    def get_version(self, model: str, version: int) -> ModelVersion | None:
        try:
            item = self._client.get_item(
                TableName=self.table,
                Key={"model": {"S": model}, "sk": {"S": _version_sk(version)}},
                ConsistentRead=True,
            ).get("Item")
        except aws_errors() as exc:
            raise PortError(f"registry table {self.table}: get failed: {exc}") from exc
        return None if item is None else ModelVersion.model_validate_json(item["doc"]["S"])

    def list_versions(self, model: str) -> list[ModelVersion]:
        return [ModelVersion.model_validate_json(i["doc"]["S"]) for i in self._query(model, "V#")]

    def list_models(self) -> list[str]:
        models: set[str] = set()
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "sk = :m",
            "ExpressionAttributeValues": {":m": {"S": MODEL_SK}},
            "ProjectionExpression": "#m",
            "ExpressionAttributeNames": {"#m": "model"},
        }
        try:
            while True:
                page = self._client.scan(**kwargs)
                models.update(i["model"]["S"] for i in page.get("Items", []))
                if "LastEvaluatedKey" not in page:
                    return sorted(models)
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except aws_errors() as exc:
            raise PortError(f"registry table {self.table}: scan failed: {exc}") from exc

    def aliases(self, model: str) -> dict[str, int]:
        return {i["sk"]["S"][2:]: int(i["version"]["N"]) for i in self._query(model, "A#")}

    def move_alias(self, entry: HistoryEntry, *, expected: int | None) -> None:
        key = {"model": {"S": entry.model}, "sk": {"S": f"A#{entry.alias}"}}
        if expected is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(sk)"}
        else:
            condition = {
                "ConditionExpression": "#v = :expected",
                "ExpressionAttributeNames": {"#v": "version"},
                "ExpressionAttributeValues": {":expected": {"N": str(expected)}},
            }
        alias_write: dict[str, Any]
        if entry.to_version is None:
            alias_write = {"Delete": {"TableName": self.table, "Key": key, **condition}}
        else:
            item = {
                **key,
                "version": {"N": str(entry.to_version)},
                "updated_at": {"S": entry.at},
                "reason": {"S": entry.reason},
            }
            alias_write = {"Put": {"TableName": self.table, "Item": item, **condition}}
        try:
            self._client.transact_write_items(TransactItems=[alias_write, {"Put": self._history_put(entry)}])
        except aws_errors() as exc:
            reasons = [
                r.get("Code") for r in (getattr(exc, "response", None) or {}).get("CancellationReasons", [])
            ]
            if _error_code(exc) == "TransactionCanceledException" and (
                "ConditionalCheckFailed" in reasons or "ConditionalCheckFailed" in str(exc)
            ):
                raise AliasConflict(
                    f"{entry.model} alias {entry.alias} no longer points at {expected}: re-read and decide again"
                ) from exc
            raise PortError(f"registry table {self.table}: alias change failed: {exc}") from exc

    def _history_put(self, entry: HistoryEntry) -> dict[str, Any]:
        return {
            "TableName": self.table,
            "Item": {
                "model": {"S": entry.model},
                "sk": {"S": _history_sk(entry)},
                "doc": {"S": entry.model_dump_json()},
            },
            "ConditionExpression": "attribute_not_exists(sk)",
        }

    def append_history(self, entry: HistoryEntry) -> None:
        try:
            self._client.put_item(**self._history_put(entry))
        except aws_errors() as exc:
            raise PortError(f"registry table {self.table}: cannot append history: {exc}") from exc

    def history(self, model: str) -> list[HistoryEntry]:
        return [HistoryEntry.model_validate_json(i["doc"]["S"]) for i in self._query(model, "H#")]


class S3ArtifactStore:
    """:class:`~zaindari.registry.ArtifactStore` on S3: bundles copied to ``s3://<lake>/models/<name>/<version>/``.

    ``fetch`` accepts a local folder or an ``s3://`` prefix (downloaded to ``cache_dir``).
    """

    def __init__(self, factory: ClientFactory, bucket: str, cache_dir: str | Path) -> None:
        self.factory = factory
        self.bucket = bucket
        self.cache_dir = Path(cache_dir)

    def fetch(self, location: str) -> Path:
        if location.startswith("s3://"):
            return download_bundle(self.factory, location, self.cache_dir)
        return Path(location)

    def publish(self, model: str, version: int, bundle: Path) -> str:
        prefix = f"models/{model}/{version}/"
        manifest_bytes = (bundle / MANIFEST_FILE).read_bytes()
        try:
            files = Manifest.model_validate_json(manifest_bytes).files
        except ValueError as exc:
            raise BundleError(f"{MANIFEST_FILE}: invalid: {exc}") from exc
        s3 = self.factory.client("s3")
        try:
            for name in sorted(files):
                with (bundle / name).open("rb") as body:
                    s3.put_object(Bucket=self.bucket, Key=prefix + name, Body=body)
            # last: a prefix holding a manifest is a complete bundle
            s3.put_object(Bucket=self.bucket, Key=prefix + MANIFEST_FILE, Body=manifest_bytes)
        except aws_errors() as exc:
            raise PortError(f"s3://{self.bucket}/{prefix}: cannot store the bundle: {exc}") from exc
        return f"s3://{self.bucket}/{prefix}"


def _conforms() -> None:
    """Static check (mypy) that both classes satisfy the registry's ports."""
    from zaindari.registry import ArtifactStore, RegistryStore

    _s: RegistryStore = DynamoRegistryStore(ClientFactory.__new__(ClientFactory), "t")
    _a: ArtifactStore = S3ArtifactStore(ClientFactory.__new__(ClientFactory), "b", ".")


def build_model_registry(settings: Settings, factory: ClientFactory) -> ModelRegistry:
    """The registry's use cases wired to DynamoDB (``registry_table``) and the lake bucket."""
    from zaindari.registry import ModelRegistry

    return ModelRegistry(
        DynamoRegistryStore(factory, settings.registry_table),
        S3ArtifactStore(factory, settings.lake_bucket, settings.model_cache_dir),
    )
