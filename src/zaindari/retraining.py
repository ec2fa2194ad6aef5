"""Retraining runs: start the Spark jobs for a model, at most one run per model, never silently.

A *run* retrains one model on one data range. It has two stages, each a Spark job (Glue or EMR
Serverless, see :class:`JobRunner`): ``build_training_set`` (raw telemetry to a curated training
set) and then ``train_model`` (the training set to a model bundle). A run is asked for by a
*trigger*: the weekly schedule, a drift event, or a person (HTTP or ``zaindari retrain``).

Guarantees:

* **One run per model at a time.** :class:`RunLog` holds a lock per model. A trigger that arrives
  while a run is active is appended to that run's trigger log (once per request id, so a
  redelivered event is not recorded twice) and starts nothing.
* **A failed start is retried, then alerted.** Transient failures (throttling, network) are
  retried with exponential backoff, ``backoff_seconds * 2 ** (attempt - 1)`` between attempts, up
  to ``start_attempts`` in all; a permanent failure (the job does not exist, access denied) is not
  retried. Either way the run is closed as ``start_failed``, the lock released, and an alert says
  why the retraining could not start.
* **The lock is released when the run ends.** The job's state-change event (:meth:`Retraining.on_job_state`)
  moves a run from ``build_training_set`` to ``train_model`` on success, and closes it on the last
  stage's success or on any failure (which is alerted). A lock whose lease ran out (an event that
  never came) is taken over by the next trigger; before that, a trigger on a held lock asks the
  runner for the job's state, so a missed event does not block the model until the lease ends.

The use case reads no environment and imports no AWS SDK: its ports are :class:`JobRunner`,
:class:`RunLog` and :class:`RetrainingAlertSink` (AWS implementations in
``zaindari.infra.retraining_ports``).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zaindari.ports import PortError

__all__ = [
    "FINAL_STATES",
    "STAGES",
    "AcquireResult",
    "JobRequest",
    "JobRunner",
    "JobStartError",
    "JobStateChange",
    "Retraining",
    "RetrainingAlert",
    "RetrainingAlertSink",
    "RetrainingConfig",
    "RetrainingOutcome",
    "RetrainingRequest",
    "RunLog",
    "RunRecord",
    "TriggerRecord",
    "stage_arguments",
]

Stage = Literal["build_training_set", "train_model"]
STAGES: tuple[Stage, ...] = ("build_training_set", "train_model")
TriggerKind = Literal["schedule", "drift", "manual"]
RunStatus = Literal["starting", "running", "succeeded", "failed", "start_failed", "lease_expired"]
ACTIVE_STATUSES: frozenset[str] = frozenset({"starting", "running"})
#: Job states (normalised across Glue and EMR Serverless) after which a job runs no more.
FINAL_STATES: frozenset[str] = frozenset({"SUCCEEDED", "FAILED", "STOPPED", "TIMEOUT", "ERROR"})

_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,62}$"  # as ModelSpec.name


class JobStartError(PortError):
    """A job could not be started; ``transient`` says whether trying again may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


# ----------------------------------------------------------------------------- values


class RetrainingRequest(BaseModel):
    """A trigger asking for one model to be retrained.

    ``start`` and ``end`` (inclusive UTC dates) bound the raw telemetry to train on; when both are
    absent the run takes the last ``RetrainingConfig.lookback_days`` days up to the trigger's day.
    ``request_id`` identifies the trigger (an EventBridge event id, an HTTP request id) so a
    redelivery is recorded once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(pattern=_MODEL_NAME)
    trigger: TriggerKind
    request_id: str = Field(min_length=1, max_length=256)
    requested_at: datetime
    start: date | None = None
    end: date | None = None
    evidence: Any = None
    requested_by: str | None = Field(default=None, max_length=256)

    @field_validator("requested_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("requested_at must carry a timezone")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _range(self) -> RetrainingRequest:
        if (self.start is None) != (self.end is None):
            raise ValueError("give both start and end, or neither (the default lookback)")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


@dataclass(frozen=True)
class TriggerRecord:
    """One trigger as the run log keeps it."""

    request_id: str
    trigger: str
    at: str
    start: str | None = None
    end: str | None = None
    evidence: Any = None
    requested_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "request_id": self.request_id,
            "trigger": self.trigger,
            "at": self.at,
            "start": self.start,
            "end": self.end,
            "evidence": self.evidence,
            "requested_by": self.requested_by,
        }
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TriggerRecord:
        return cls(
            request_id=str(data["request_id"]),
            trigger=str(data["trigger"]),
            at=str(data["at"]),
            start=data.get("start"),
            end=data.get("end"),
            evidence=data.get("evidence"),
            requested_by=data.get("requested_by"),
        )


@dataclass
class RunRecord:
    """A retraining run as the run log keeps it: what it trains, where it is, what asked for it."""

    model: str
    run_id: str
    status: str
    runner: str
    start: str
    end: str
    spec_uri: str
    training_set_uri: str
    model_output_uri: str
    created_at: str
    lease_until: float
    stage: str | None = None
    job_name: str | None = None
    job_run_id: str | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[TriggerRecord] = field(default_factory=list)
    closed_at: str | None = None
    message: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass(frozen=True)
class AcquireResult:
    """What :meth:`RunLog.acquire` did.

    ``acquired``: the lock is ours and ``run`` is the new run. Otherwise ``run`` is the active run
    the trigger was appended to (``recorded``), or that already held this trigger (not recorded
    twice).
    """

    acquired: bool
    run: RunRecord
    recorded: bool = False


@dataclass(frozen=True)
class JobRequest:
    """One stage of a run, as the job runner starts it."""

    model: str
    run_id: str
    stage: Stage
    job_name: str
    arguments: dict[str, str]

    @property
    def idempotency_token(self) -> str:
        """The same stage of the same run always carries the same token (a retried start is one run)."""
        return hashlib.sha256(f"{self.run_id}|{self.stage}".encode()).hexdigest()[:64]


class JobStateChange(BaseModel):
    """A job run reached a new state (Glue "Glue Job State Change", EMR Serverless state change).

    ``state`` is normalised: ``SUCCEEDED``, ``FAILED``, ``STOPPED``, ``TIMEOUT``, ``ERROR`` are
    final; anything else means the job still runs.
    """

    model_config = ConfigDict(frozen=True)

    job_name: str | None = None
    job_run_id: str = Field(min_length=1)
    state: str
    message: str | None = None
    event_id: str | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class RetrainingAlert(BaseModel):
    """A retraining that could not start, or a run whose job failed: for people and machines."""

    model_config = ConfigDict(frozen=True)

    alert_id: str
    kind: Literal["start_failed", "run_failed"]
    severity: Literal["warning", "critical"] = "critical"
    model: str
    run_id: str
    stage: str | None = None
    job_name: str | None = None
    job_run_id: str | None = None
    reason: str
    attempts: int = 0
    triggers: list[dict[str, Any]] = Field(default_factory=list)
    data_range: dict[str, str] = Field(default_factory=dict)
    timestamp: str

    @property
    def subject(self) -> str:
        what = "could not start" if self.kind == "start_failed" else "failed"
        return f"[{self.severity}] retraining of {self.model} {what}"


class RetrainingOutcome(BaseModel):
    """What one trigger or job event did; adapters map it to their response."""

    model_config = ConfigDict(frozen=True)

    status: Literal["started", "advanced", "recorded", "duplicate", "start_failed", "closed", "ignored"]
    model: str | None = None
    run_id: str | None = None
    stage: str | None = None
    job_run_id: str | None = None
    run_status: str | None = None
    attempts: int = 0
    reason: str | None = None
    alerted: bool = False
    data_range: dict[str, str] = Field(default_factory=dict)


# ----------------------------------------------------------------------------- ports


class JobRunner(Protocol):
    """Starts Spark jobs and reports their state (Glue, EMR Serverless)."""

    name: str

    def start(self, request: JobRequest) -> str:
        """Start one stage; return the job run id.

        Raises
        ------
        JobStartError
            With ``transient`` telling whether another attempt may succeed.
        """
        ...

    def state(self, job_name: str, job_run_id: str) -> str:
        """The job run's normalised state (see :data:`FINAL_STATES`); raises PortError on failure."""
        ...


class RunLog(Protocol):
    """The per-model run lock and trigger log (DynamoDB on AWS)."""

    def acquire(self, run: RunRecord, trigger: TriggerRecord, now: float) -> AcquireResult:
        """Make ``run`` the model's active run, or append ``trigger`` to the active one.

        The lock is free when no run is active or the active run's ``lease_until`` is before
        ``now`` (epoch seconds); a run taken over that way is closed as ``lease_expired``.
        Raises PortError when the store fails.
        """
        ...

    def advance(
        self, run: RunRecord, stage: str, job_name: str, job_run_id: str, now: float, lease_until: float
    ) -> None:
        """Record that ``stage`` of ``run`` started as ``job_run_id``; the lease runs to ``lease_until``."""
        ...

    def find_by_job_run(self, job_run_id: str) -> RunRecord | None:
        """The run whose current stage is the job run ``job_run_id``, if any."""
        ...

    def close(self, run: RunRecord, status: str, message: str | None, now: float) -> None:
        """End ``run`` with ``status`` and release the model's lock if ``run`` holds it."""
        ...


class RetrainingAlertSink(Protocol):
    """Where retraining alerts go (SNS for people, EventBridge for machines)."""

    def publish(self, alert: RetrainingAlert) -> None:
        """Deliver to every channel; raise PortError when one refused it."""
        ...


# ----------------------------------------------------------------------------- configuration


class RetrainingConfig(BaseModel):
    """Where runs read and write, and how hard a start is tried.

    ``spec_uri`` may name ``{model}`` and ``{lake}``; the data layout is fixed:
    ``{lake}/training/sets/{model}/{run_id}/`` (the training set),
    ``{lake}/training/rejected/{model}/{run_id}/`` (rows set aside) and
    ``{lake}/models/{model}/candidates/{run_id}/`` (the trained bundle).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    lake_uri: str = Field(pattern=r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]|/.+)$")
    spec_uri: str = "{lake}/specs/{model}.yaml"
    job_names: dict[str, str] = Field(
        default_factory=lambda: {
            "build_training_set": "zaindari-build-training-set",
            "train_model": "zaindari-train-model",
        }
    )
    scheduled_models: tuple[str, ...] = ()
    lookback_days: int = Field(default=28, ge=1, le=3660)
    start_attempts: int = Field(default=3, ge=1, le=10)
    backoff_seconds: float = Field(default=1.0, ge=0)
    lease_hours: float = Field(default=12.0, gt=0)

    @model_validator(mode="after")
    def _every_stage_has_a_job(self) -> RetrainingConfig:
        missing = [s for s in STAGES if not self.job_names.get(s)]
        if missing:
            raise ValueError(f"no job name for stage(s) {missing}")
        return self

    def uris(self, model: str, run_id: str) -> dict[str, str]:
        lake = self.lake_uri.rstrip("/")
        return {
            "spec": self.spec_uri.format(model=model, lake=lake),
            "training_set": f"{lake}/training/sets/{model}/{run_id}/",
            "rejected": f"{lake}/training/rejected/{model}/{run_id}/",
            "model_output": f"{lake}/models/{model}/candidates/{run_id}/",
        }


def stage_arguments(run: RunRecord, stage: str, lake_uri: str, rejected_uri: str) -> dict[str, str]:
    """The job arguments of one stage (Glue ``--name value`` pairs; EMR passes the same list).

    ``build_training_set`` gets the lake, the data range, the spec and where to write;
    ``train_model`` gets the spec, the training set (``--input``) and where to write the bundle.
    """
    if stage == "build_training_set":
        return {
            "--lake": lake_uri.rstrip("/"),
            "--start": run.start,
            "--end": run.end,
            "--spec": run.spec_uri,
            "--output": run.training_set_uri,
            "--rejected": rejected_uri,
        }
    if stage == "train_model":
        return {"--spec": run.spec_uri, "--input": run.training_set_uri, "--output": run.model_output_uri}
    raise ValueError(f"unknown stage {stage!r}")


# ----------------------------------------------------------------------------- the use case


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Retraining:
    """The ``start_retraining`` use case: triggers in, job runs started, runs closed, alerts out.

    Parameters
    ----------
    runner, runs, alerts
        The ports.
    config
        Locations, job names and retry policy.
    sleep
        Waits between start attempts (tests pass a recorder).
    clock
        The current time, aware (tests pass a fixed one).
    new_run_id
        Makes run ids; the default sorts by creation time.
    """

    def __init__(
        self,
        runner: JobRunner,
        runs: RunLog,
        alerts: RetrainingAlertSink,
        config: RetrainingConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_run_id: Callable[[datetime], str] | None = None,
    ) -> None:
        self.runner = runner
        self.runs = runs
        self.alerts = alerts
        self.config = config
        self.sleep = sleep
        self.clock = clock
        self.new_run_id = new_run_id or (lambda now: f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}")

    # -- triggers

    def request(self, request: RetrainingRequest) -> RetrainingOutcome:
        """Start a run for ``request.model``, or record the trigger on the model's active run.

        Raises
        ------
        PortError
            When the run log fails (nothing was started), or when an alert could not be
            delivered (the run is closed; the caller should surface the failure).
        """
        now = self.clock()
        start, end = self._data_range(request)
        run_id = self.new_run_id(now)
        uris = self.config.uris(request.model, run_id)
        run = RunRecord(
            model=request.model,
            run_id=run_id,
            status="starting",
            runner=self.runner.name,
            start=start.isoformat(),
            end=end.isoformat(),
            spec_uri=uris["spec"],
            training_set_uri=uris["training_set"],
            model_output_uri=uris["model_output"],
            created_at=_iso(now),
            lease_until=now.timestamp() + self.config.lease_hours * 3600,
        )
        trigger = TriggerRecord(
            request_id=request.request_id,
            trigger=request.trigger,
            at=_iso(request.requested_at),
            start=None if request.start is None else request.start.isoformat(),
            end=None if request.end is None else request.end.isoformat(),
            evidence=request.evidence,
            requested_by=request.requested_by,
        )
        run.triggers.append(trigger)
        result = self.runs.acquire(run, trigger, now.timestamp())
        if not result.acquired and self._closed_unnoticed(result.run):
            # its job had ended but the state-change event never came: now closed, try again
            result = self.runs.acquire(run, trigger, self.clock().timestamp())
        if not result.acquired:
            held = result.run
            return RetrainingOutcome(
                status="recorded" if result.recorded else "duplicate",
                model=held.model,
                run_id=held.run_id,
                stage=held.stage,
                job_run_id=held.job_run_id,
                run_status=held.status,
                reason=f"run {held.run_id} of {held.model} is active; the trigger was "
                + ("recorded on it" if result.recorded else "already recorded"),
                data_range={"start": held.start, "end": held.end},
            )
        return self._start_stage(result.run, "build_training_set", status="started")

    def scheduled(self, request_id: str, requested_at: datetime) -> list[RetrainingOutcome]:
        """The schedule: one request per model in ``RetrainingConfig.scheduled_models``."""
        return [
            self.request(
                RetrainingRequest(
                    model=model,
                    trigger="schedule",
                    request_id=request_id,
                    requested_at=requested_at,
                )
            )
            for model in self.config.scheduled_models
        ]

    # -- job events

    def on_job_state(self, change: JobStateChange) -> RetrainingOutcome:
        """Move a run on when its job changed state: next stage, closed, or nothing to do.

        Events for job runs no run knows (started by hand, or already closed) are ignored.
        """
        if not change.final:
            return RetrainingOutcome(status="ignored", job_run_id=change.job_run_id, reason="job still runs")
        run = self.runs.find_by_job_run(change.job_run_id)
        if run is None or not run.active or run.job_run_id != change.job_run_id:
            return RetrainingOutcome(
                status="ignored",
                job_run_id=change.job_run_id,
                reason="no active retraining run has this job run as its current stage",
            )
        return self._stage_ended(run, change.state, change.message)

    # -- internals

    def _data_range(self, request: RetrainingRequest) -> tuple[date, date]:
        if request.start is not None and request.end is not None:
            return request.start, request.end
        end = request.requested_at.date()
        return end - timedelta(days=self.config.lookback_days - 1), end

    def _closed_unnoticed(self, run: RunRecord) -> bool:
        """Ask the runner whether the held run's current job already ended; act on it as the event
        would have. True when that closed the run (a succeeded first stage starts the next one
        instead, and the run stays active)."""
        if not run.active or not run.job_run_id or not run.job_name:
            return False
        try:
            state = self.runner.state(run.job_name, run.job_run_id)
        except PortError:
            return False  # cannot tell: the lock stands (its lease still bounds it)
        if state not in FINAL_STATES:
            return False
        outcome = self._stage_ended(
            run, state, "seen on a later trigger: the job's state-change event was missed"
        )
        return outcome.status in ("closed", "start_failed")

    def _stage_ended(self, run: RunRecord, state: str, message: str | None) -> RetrainingOutcome:
        stage = run.stage or STAGES[0]
        if state == "SUCCEEDED":
            following = STAGES.index(stage) + 1 if stage in STAGES else len(STAGES)
            if following < len(STAGES):
                return self._start_stage(run, STAGES[following], status="advanced")
            self.runs.close(run, "succeeded", message, self.clock().timestamp())
            return RetrainingOutcome(
                status="closed",
                model=run.model,
                run_id=run.run_id,
                stage=stage,
                job_run_id=run.job_run_id,
                run_status="succeeded",
                data_range={"start": run.start, "end": run.end},
            )
        reason = f"{stage} job {run.job_name} run {run.job_run_id} ended {state}" + (
            f": {message}" if message else ""
        )
        self.runs.close(run, "failed", reason, self.clock().timestamp())
        self._alert(run, "run_failed", stage, reason, 0)
        return RetrainingOutcome(
            status="closed",
            model=run.model,
            run_id=run.run_id,
            stage=stage,
            job_run_id=run.job_run_id,
            run_status="failed",
            reason=reason,
            alerted=True,
            data_range={"start": run.start, "end": run.end},
        )

    def _start_stage(
        self, run: RunRecord, stage: Stage, *, status: Literal["started", "advanced"]
    ) -> RetrainingOutcome:
        uris = self.config.uris(run.model, run.run_id)
        job = JobRequest(
            model=run.model,
            run_id=run.run_id,
            stage=stage,
            job_name=self.config.job_names[stage],
            arguments=stage_arguments(run, stage, self.config.lake_uri, uris["rejected"]),
        )
        attempts = 0
        failure: JobStartError | None = None
        while attempts < self.config.start_attempts:
            attempts += 1
            try:
                job_run_id = self.runner.start(job)
            except JobStartError as exc:
                failure = exc
                if not exc.transient or attempts >= self.config.start_attempts:
                    break
                self.sleep(self.config.backoff_seconds * 2 ** (attempts - 1))
                continue
            moment = self.clock().timestamp()
            self.runs.advance(
                run, stage, job.job_name, job_run_id, moment, moment + self.config.lease_hours * 3600
            )
            return RetrainingOutcome(
                status=status,
                model=run.model,
                run_id=run.run_id,
                stage=stage,
                job_run_id=job_run_id,
                run_status="running",
                attempts=attempts,
                data_range={"start": run.start, "end": run.end},
            )
        assert failure is not None
        kind = "transient" if failure.transient else "permanent"
        reason = (
            f"{stage} job {job.job_name} could not start after {attempts} attempt(s) "
            f"({kind} failure): {failure}"
        )
        run.stage, run.job_name = stage, job.job_name
        self.runs.close(run, "start_failed", reason, self.clock().timestamp())
        self._alert(run, "start_failed", stage, reason, attempts)
        return RetrainingOutcome(
            status="start_failed",
            model=run.model,
            run_id=run.run_id,
            stage=stage,
            run_status="start_failed",
            attempts=attempts,
            reason=reason,
            alerted=True,
            data_range={"start": run.start, "end": run.end},
        )

    def _alert(
        self,
        run: RunRecord,
        kind: Literal["start_failed", "run_failed"],
        stage: str,
        reason: str,
        attempts: int,
    ) -> None:
        alert = RetrainingAlert(
            alert_id=f"{run.run_id}:{stage}:{kind}",
            kind=kind,
            model=run.model,
            run_id=run.run_id,
            stage=stage,
            job_name=run.job_name,
            job_run_id=None if kind == "start_failed" else run.job_run_id,
            reason=reason,
            attempts=attempts,
            triggers=[t.to_dict() for t in run.triggers],
            data_range={"start": run.start, "end": run.end},
            timestamp=_iso(self.clock()),
        )
        self.alerts.publish(alert)


def parse_models(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a, b"`` or ``["a", "b"]`` as a tuple of model names, blanks dropped."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(i.strip() for i in items if i.strip())
