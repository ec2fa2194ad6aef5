"""The retraining ports on AWS: Glue or EMR Serverless job runs, a DynamoDB run log, SNS + EventBridge alerts.

The run log is one DynamoDB table keyed by ``model`` (hash) and ``run_id`` (range). Each run is an
item; the item ``run_id = "LOCK"`` of a model names its active run (``active_run``). Taking the
lock is one transaction (a conditional put of the lock plus the new run item), so two triggers
racing for a free model start one run. A global secondary index on ``job_run_id`` (the current
stage's job run, keys only) finds the run a job state-change event belongs to. Triggers and stages are kept
as lists of JSON strings, so evidence with floats needs no Decimal conversion.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from zaindari.infra.aws import ClientFactory
from zaindari.infra.aws_ports import EVENT_SOURCE, aws_errors
from zaindari.ports import PortError
from zaindari.retraining import (
    ACTIVE_STATUSES,
    AcquireResult,
    JobRequest,
    JobStartError,
    RetrainingAlert,
    RunRecord,
    TriggerRecord,
)

__all__ = [
    "LOCK_ID",
    "RETRAINING_ALERT_DETAIL_TYPE",
    "DynamoRunLog",
    "EmrServerlessJobRunner",
    "GlueJobRunner",
    "SnsEventBridgeRetrainingAlerts",
    "normalise_job_state",
]

LOCK_ID = "LOCK"
JOB_RUN_INDEX = "by_job_run"
RETRAINING_ALERT_DETAIL_TYPE = "Zaindari Retraining Failed"
MAX_EVIDENCE_CHARS = 4000  # a DynamoDB item holds 400 KB; a run may collect many triggers

# Glue and EMR Serverless job states, onto the core's vocabulary (zaindari.retraining.FINAL_STATES).
_STATES = {
    # Glue
    "STARTING": "RUNNING",
    "RUNNING": "RUNNING",
    "STOPPING": "RUNNING",
    "WAITING": "RUNNING",
    "SUCCEEDED": "SUCCEEDED",
    "FAILED": "FAILED",
    "STOPPED": "STOPPED",
    "TIMEOUT": "TIMEOUT",
    "ERROR": "ERROR",
    "EXPIRED": "TIMEOUT",
    # EMR Serverless
    "SUBMITTED": "RUNNING",
    "PENDING": "RUNNING",
    "SCHEDULED": "RUNNING",
    "QUEUED": "RUNNING",
    "CANCELLING": "RUNNING",
    "SUCCESS": "SUCCEEDED",
    "CANCELLED": "STOPPED",
}

# Error codes after which another attempt may succeed; any 5xx counts too.
_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalServiceException",
        "InternalServerException",
        "ServiceUnavailableException",
        "OperationTimeoutException",
        "ResourceNumberLimitExceededException",
        "RequestTimeout",
    }
)


def normalise_job_state(state: str) -> str:
    """A Glue or EMR Serverless job state in the core's vocabulary (unknown states: ``RUNNING``)."""
    return _STATES.get(state.upper(), "RUNNING")


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _start_error(service: str, job: str, exc: Exception) -> JobStartError:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = _error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        return JobStartError(
            f"{service} {code} for job {job}: {message}", transient=code in _TRANSIENT_CODES or status >= 500
        )
    return JobStartError(f"{service} unreachable for job {job}: {exc}", transient=True)


class GlueJobRunner:
    """Starts each stage as a run of the Glue job named by ``JobRequest.job_name``.

    Glue's ``StartJobRun`` has no idempotency token: a start retried after a lost response may run
    a stage twice (the later run is the one the run log follows).
    """

    name = "glue"

    def __init__(self, factory: ClientFactory) -> None:
        self.factory = factory

    def start(self, request: JobRequest) -> str:
        try:
            response = self.factory.client("glue").start_job_run(
                JobName=request.job_name, Arguments=request.arguments
            )
        except aws_errors() as exc:
            raise _start_error("Glue", request.job_name, exc) from exc
        return str(response["JobRunId"])

    def state(self, job_name: str, job_run_id: str) -> str:
        try:
            run = self.factory.client("glue").get_job_run(JobName=job_name, RunId=job_run_id)["JobRun"]
        except aws_errors() as exc:
            raise PortError(f"Glue GetJobRun {job_name}/{job_run_id}: {exc}") from exc
        return normalise_job_state(str(run["JobRunState"]))


class EmrServerlessJobRunner:
    """Starts each stage as an EMR Serverless job run of ``<scripts_uri>/<stage>.py``.

    The job arguments become the script's ``entryPointArguments`` (``--name value`` pairs, as the
    scripts parse them with argparse); the run is named ``<job name>-<run id>`` and tagged with
    the model and run, and its client token makes a retried start one job run.
    """

    name = "emr-serverless"

    def __init__(
        self,
        factory: ClientFactory,
        application_id: str,
        execution_role_arn: str,
        scripts_uri: str,
        spark_submit_parameters: str = "",
    ) -> None:
        self.factory = factory
        self.application_id = application_id
        self.execution_role_arn = execution_role_arn
        self.scripts_uri = scripts_uri.rstrip("/")
        self.spark_submit_parameters = spark_submit_parameters

    def start(self, request: JobRequest) -> str:
        driver: dict[str, Any] = {
            "entryPoint": f"{self.scripts_uri}/{request.stage}.py",
            "entryPointArguments": [item for pair in request.arguments.items() for item in pair],
        }
        if self.spark_submit_parameters:
            driver["sparkSubmitParameters"] = self.spark_submit_parameters
        try:
            response = self.factory.client("emr-serverless").start_job_run(
                applicationId=self.application_id,
                clientToken=request.idempotency_token,
                executionRoleArn=self.execution_role_arn,
                name=f"{request.job_name}-{request.run_id}"[:256],
                jobDriver={"sparkSubmit": driver},
                tags={"zaindari:model": request.model, "zaindari:run": request.run_id},
            )
        except aws_errors() as exc:
            raise _start_error("EMR Serverless", request.job_name, exc) from exc
        return str(response["jobRunId"])

    def state(self, job_name: str, job_run_id: str) -> str:
        try:
            run = self.factory.client("emr-serverless").get_job_run(
                applicationId=self.application_id, jobRunId=job_run_id
            )["jobRun"]
        except aws_errors() as exc:
            raise PortError(f"EMR Serverless GetJobRun {job_run_id}: {exc}") from exc
        return normalise_job_state(str(run["state"]))


# ----------------------------------------------------------------------------- the run log


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: float) -> dict[str, str]:
    return {"N": repr(float(value))}


def _trigger_json(trigger: TriggerRecord) -> str:
    data = trigger.to_dict()
    if "evidence" in data:
        text = json.dumps(data["evidence"], default=str, separators=(",", ":"))
        if len(text) > MAX_EVIDENCE_CHARS:
            data["evidence"] = {"truncated": True, "preview": text[:MAX_EVIDENCE_CHARS]}
    return json.dumps(data, default=str, separators=(",", ":"))


def _run_item(run: RunRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "model": _s(run.model),
        "run_id": _s(run.run_id),
        "status": _s(run.status),
        "runner": _s(run.runner),
        "start": _s(run.start),
        "end": _s(run.end),
        "spec_uri": _s(run.spec_uri),
        "training_set_uri": _s(run.training_set_uri),
        "model_output_uri": _s(run.model_output_uri),
        "created_at": _s(run.created_at),
        "lease_until": _n(run.lease_until),
        "stages": {"L": [_s(json.dumps(s, default=str)) for s in run.stages]},
        "triggers": {"L": [_s(_trigger_json(t)) for t in run.triggers]},
    }
    if run.triggers:
        item["trigger_ids"] = {"SS": sorted({t.request_id for t in run.triggers})}
    for key in ("stage", "job_name", "job_run_id", "closed_at", "message"):
        value = getattr(run, key)
        if value is not None:
            item[key] = _s(str(value))
    return item


def _run_of(item: Mapping[str, Any]) -> RunRecord:
    def text(key: str) -> str | None:
        value = item.get(key)
        return None if value is None else str(value["S"])

    return RunRecord(
        model=str(text("model")),
        run_id=str(text("run_id")),
        status=str(text("status")),
        runner=str(text("runner")),
        start=str(text("start")),
        end=str(text("end")),
        spec_uri=str(text("spec_uri")),
        training_set_uri=str(text("training_set_uri")),
        model_output_uri=str(text("model_output_uri")),
        created_at=str(text("created_at")),
        lease_until=float(item["lease_until"]["N"]),
        stage=text("stage"),
        job_name=text("job_name"),
        job_run_id=text("job_run_id"),
        stages=[json.loads(s["S"]) for s in item.get("stages", {}).get("L", [])],
        triggers=[TriggerRecord.from_dict(json.loads(t["S"])) for t in item.get("triggers", {}).get("L", [])],
        closed_at=text("closed_at"),
        message=text("message"),
    )


def _utc(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class DynamoRunLog:
    """The per-model lock and run items in one DynamoDB table (see the module docstring)."""

    def __init__(self, factory: ClientFactory, table: str, max_races: int = 4) -> None:
        self.factory = factory
        self.table = table
        self.max_races = max_races

    def _client(self) -> Any:
        return self.factory.client("dynamodb")

    def _key(self, model: str, run_id: str) -> dict[str, Any]:
        return {"model": _s(model), "run_id": _s(run_id)}

    def _get(self, model: str, run_id: str) -> dict[str, Any] | None:
        item = self._client().get_item(
            TableName=self.table, Key=self._key(model, run_id), ConsistentRead=True
        )
        found: dict[str, Any] | None = item.get("Item")
        return found

    def acquire(self, run: RunRecord, trigger: TriggerRecord, now: float) -> AcquireResult:
        try:
            for _ in range(self.max_races):
                result = self._try_acquire(run, trigger, now)
                if result is not None:
                    return result
        except aws_errors() as exc:
            raise PortError(f"DynamoDB {self.table}: {exc}") from exc
        raise PortError(
            f"DynamoDB {self.table}: lock of {run.model} still contended after {self.max_races} tries"
        )

    def _try_acquire(self, run: RunRecord, trigger: TriggerRecord, now: float) -> AcquireResult | None:
        """One round: record on the active run, or take the lock; None when another writer won a race."""
        from botocore.exceptions import ClientError

        client = self._client()
        lock = self._get(run.model, LOCK_ID) or {}
        active_id = lock.get("active_run", {}).get("S")
        active_item = self._get(run.model, active_id) if active_id else None
        active = _run_of(active_item) if active_item else None
        if active is not None and active.status in ACTIVE_STATUSES and active.lease_until >= now:
            try:
                updated = client.update_item(
                    TableName=self.table,
                    Key=self._key(run.model, active.run_id),
                    UpdateExpression="SET #triggers = list_append(#triggers, :trigger) ADD #ids :ids",
                    ConditionExpression="#status IN (:starting, :running) AND NOT contains(#ids, :id)",
                    ExpressionAttributeNames={
                        "#triggers": "triggers",
                        "#ids": "trigger_ids",
                        "#status": "status",
                    },
                    ExpressionAttributeValues={
                        ":trigger": {"L": [_s(_trigger_json(trigger))]},
                        ":ids": {"SS": [trigger.request_id]},
                        ":id": _s(trigger.request_id),
                        ":starting": _s("starting"),
                        ":running": _s("running"),
                    },
                    ReturnValues="ALL_NEW",
                )
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                again = self._get(run.model, active.run_id)
                current = _run_of(again) if again else None
                if current is not None and current.active:
                    return AcquireResult(acquired=False, run=current, recorded=False)  # a redelivery
                return None  # the run ended meanwhile: go round again
            return AcquireResult(acquired=False, run=_run_of(updated["Attributes"]), recorded=True)

        condition: dict[str, Any]
        if active_id:
            condition = {
                "ConditionExpression": "active_run = :seen",
                "ExpressionAttributeValues": {":seen": _s(active_id)},
            }
        else:
            condition = {"ConditionExpression": "attribute_not_exists(active_run)"}
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": {
                        **self._key(run.model, LOCK_ID),
                        "active_run": _s(run.run_id),
                        "lease_until": _n(run.lease_until),
                        "taken_at": _n(now),
                    },
                    **condition,
                }
            },
            {
                "Put": {
                    "TableName": self.table,
                    "Item": _run_item(run),
                    "ConditionExpression": "attribute_not_exists(run_id)",
                }
            },
        ]
        if active is not None and active.status in ACTIVE_STATUSES:
            items.append(
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": self._key(run.model, active.run_id),
                        "UpdateExpression": "SET #status = :expired, #message = :why, closed_at = :at",
                        "ExpressionAttributeNames": {"#status": "status", "#message": "message"},
                        "ExpressionAttributeValues": {
                            ":expired": _s("lease_expired"),
                            ":why": _s(f"the lock's lease ran out; run {run.run_id} took the model over"),
                            ":at": _s(_utc(now)),
                        },
                    }
                }
            )
        try:
            client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if _error_code(exc) in ("TransactionCanceledException", "ConditionalCheckFailedException"):
                return None
            raise
        return AcquireResult(acquired=True, run=run)

    def advance(
        self, run: RunRecord, stage: str, job_name: str, job_run_id: str, now: float, lease_until: float
    ) -> None:
        from botocore.exceptions import ClientError

        entry = {"stage": stage, "job_name": job_name, "job_run_id": job_run_id, "at": _utc(now)}
        client = self._client()
        try:
            client.update_item(
                TableName=self.table,
                Key=self._key(run.model, run.run_id),
                UpdateExpression=(
                    "SET #status = :running, stage = :stage, job_name = :job, job_run_id = :jr, "
                    "lease_until = :lease, stages = list_append(stages, :entry)"
                ),
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":running": _s("running"),
                    ":stage": _s(stage),
                    ":job": _s(job_name),
                    ":jr": _s(job_run_id),
                    ":lease": _n(lease_until),
                    ":entry": {"L": [_s(json.dumps(entry))]},
                },
            )
            try:
                client.update_item(
                    TableName=self.table,
                    Key=self._key(run.model, LOCK_ID),
                    UpdateExpression="SET lease_until = :lease",
                    ConditionExpression="active_run = :run",
                    ExpressionAttributeValues={":lease": _n(lease_until), ":run": _s(run.run_id)},
                )
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
        except aws_errors() as exc:
            raise PortError(f"DynamoDB {self.table}: {exc}") from exc
        run.status, run.stage, run.job_name, run.job_run_id = "running", stage, job_name, job_run_id
        run.lease_until = lease_until
        run.stages.append(entry)

    def find_by_job_run(self, job_run_id: str) -> RunRecord | None:
        try:
            response = self._client().query(
                TableName=self.table,
                IndexName=JOB_RUN_INDEX,
                KeyConditionExpression="job_run_id = :jr",
                ExpressionAttributeValues={":jr": _s(job_run_id)},
            )
        except aws_errors() as exc:
            raise PortError(f"DynamoDB {self.table}: {exc}") from exc
        items = response.get("Items") or []
        if not items:
            return None
        # the index projects keys only (and is eventually consistent): read the run itself
        try:
            item = self._get(items[0]["model"]["S"], items[0]["run_id"]["S"])
        except aws_errors() as exc:
            raise PortError(f"DynamoDB {self.table}: {exc}") from exc
        return _run_of(item) if item else None

    def close(self, run: RunRecord, status: str, message: str | None, now: float) -> None:
        from botocore.exceptions import ClientError

        names = {"#status": "status"}
        values: dict[str, Any] = {":status": _s(status), ":at": _s(_utc(now))}
        sets = ["#status = :status", "closed_at = :at"]
        for key, value in (("message", message), ("stage", run.stage), ("job_name", run.job_name)):
            if value is not None:
                names[f"#{key}"] = key
                values[f":{key}"] = _s(value)
                sets.append(f"#{key} = :{key}")
        client = self._client()
        try:
            client.update_item(
                TableName=self.table,
                Key=self._key(run.model, run.run_id),
                UpdateExpression="SET " + ", ".join(sets),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
            try:
                client.update_item(
                    TableName=self.table,
                    Key=self._key(run.model, LOCK_ID),
                    UpdateExpression="REMOVE active_run SET last_run = :run",
                    ConditionExpression="active_run = :run",
                    ExpressionAttributeValues={":run": _s(run.run_id)},
                )
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
        except aws_errors() as exc:
            raise PortError(f"DynamoDB {self.table}: {exc}") from exc
        run.status, run.message, run.closed_at = status, message, _utc(now)


# ----------------------------------------------------------------------------- alerts


class SnsEventBridgeRetrainingAlerts:
    """Retraining alerts to SNS (people: subject, filterable ``kind``/``model``) and EventBridge.

    EventBridge gets ``detail-type: "Zaindari Retraining Failed"``, source ``zaindari``, the
    alert as detail. Delivered when every configured channel accepted it.
    """

    def __init__(self, factory: ClientFactory, topic_arn: str | None, event_bus: str | None) -> None:
        self.factory = factory
        self.topic_arn = topic_arn
        self.event_bus = event_bus

    def publish(self, alert: RetrainingAlert) -> None:
        failures: list[str] = []
        body = alert.model_dump_json()
        if self.topic_arn:
            try:
                self.factory.client("sns").publish(
                    TopicArn=self.topic_arn,
                    Subject=alert.subject[:100],
                    Message=body,
                    MessageAttributes={
                        "kind": {"DataType": "String", "StringValue": f"retraining_{alert.kind}"},
                        "model": {"DataType": "String", "StringValue": alert.model},
                        "severity": {"DataType": "String", "StringValue": alert.severity},
                    },
                )
            except aws_errors() as exc:
                failures.append(f"SNS {self.topic_arn}: {exc}")
        if self.event_bus:
            try:
                response = self.factory.client("events").put_events(
                    Entries=[
                        {
                            "Source": EVENT_SOURCE,
                            "DetailType": RETRAINING_ALERT_DETAIL_TYPE,
                            "Detail": body,
                            "EventBusName": self.event_bus,
                            "Resources": [],
                        }
                    ]
                )
                if response.get("FailedEntryCount"):
                    failures.append(f"EventBridge {self.event_bus}: {response['Entries']}")
            except aws_errors() as exc:
                failures.append(f"EventBridge {self.event_bus}: {exc}")
        if failures:
            raise PortError("retraining alert not delivered: " + "; ".join(failures))
