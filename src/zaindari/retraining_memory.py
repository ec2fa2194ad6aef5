"""In-memory implementations of the retraining ports, for unit tests and local experiments.

They implement :class:`~zaindari.retraining.JobRunner`, :class:`~zaindari.retraining.RunLog` and
:class:`~zaindari.retraining.RetrainingAlertSink` (mypy checks it in :func:`_conforms`) with the
same semantics as the DynamoDB, Glue and SNS/EventBridge implementations, and can be told to fail.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field

from zaindari.ports import PortError
from zaindari.retraining import (
    AcquireResult,
    JobRequest,
    JobRunner,
    JobStartError,
    RetrainingAlert,
    RetrainingAlertSink,
    RunLog,
    RunRecord,
    TriggerRecord,
)

__all__ = ["MemoryJobRunner", "MemoryRetrainingAlerts", "MemoryRunLog"]


@dataclass
class MemoryJobRunner:
    """Starts nothing: records each request and hands out ``run-1``, ``run-2`` ...

    ``failures`` are raised by the next starts, in order (then starts succeed again);
    ``jobs`` (when not None) lists the job names that exist; ``states`` answers :meth:`state`.
    """

    name: str = "memory"
    started: list[JobRequest] = field(default_factory=list)
    failures: deque[JobStartError] = field(default_factory=deque)
    jobs: set[str] | None = None
    states: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    fail_state: bool = False

    def start(self, request: JobRequest) -> str:
        self.attempts += 1
        if self.failures:
            raise self.failures.popleft()
        if self.jobs is not None and request.job_name not in self.jobs:
            raise JobStartError(f"job {request.job_name} does not exist", transient=False)
        self.started.append(request)
        job_run_id = f"run-{len(self.started)}"
        self.states[job_run_id] = "RUNNING"
        return job_run_id

    def state(self, job_name: str, job_run_id: str) -> str:
        if self.fail_state:
            raise PortError("job service unavailable")
        return self.states.get(job_run_id, "RUNNING")


@dataclass
class MemoryRunLog:
    """Runs by ``(model, run_id)`` and one lock per model, copied in and out like a real store."""

    runs: dict[tuple[str, str], RunRecord] = field(default_factory=dict)
    locks: dict[str, str] = field(default_factory=dict)
    fail: bool = False

    def _check(self) -> None:
        if self.fail:
            raise PortError("run log unavailable")

    def acquire(self, run: RunRecord, trigger: TriggerRecord, now: float) -> AcquireResult:
        self._check()
        active_id = self.locks.get(run.model)
        active = self.runs.get((run.model, active_id)) if active_id else None
        if active is not None and active.active and active.lease_until >= now:
            if any(t.request_id == trigger.request_id for t in active.triggers):
                return AcquireResult(acquired=False, run=copy.deepcopy(active), recorded=False)
            active.triggers.append(trigger)
            return AcquireResult(acquired=False, run=copy.deepcopy(active), recorded=True)
        if active is not None and active.active:
            active.status = "lease_expired"
            active.message = "the lock's lease ran out; a later trigger took the model over"
        self.locks[run.model] = run.run_id
        self.runs[(run.model, run.run_id)] = copy.deepcopy(run)
        return AcquireResult(acquired=True, run=copy.deepcopy(run))

    def advance(
        self, run: RunRecord, stage: str, job_name: str, job_run_id: str, now: float, lease_until: float
    ) -> None:
        self._check()
        stored = self.runs[(run.model, run.run_id)]
        for record in (stored, run):
            record.status, record.stage, record.lease_until = "running", stage, lease_until
            record.job_name, record.job_run_id = job_name, job_run_id
        stored.stages.append({"stage": stage, "job_name": job_name, "job_run_id": job_run_id, "at": now})

    def find_by_job_run(self, job_run_id: str) -> RunRecord | None:
        self._check()
        for stored in self.runs.values():
            if stored.job_run_id == job_run_id:
                return copy.deepcopy(stored)
        return None

    def close(self, run: RunRecord, status: str, message: str | None, now: float) -> None:
        self._check()
        stored = self.runs[(run.model, run.run_id)]
        stored.status, stored.message, stored.closed_at = status, message, str(now)
        stored.stage, stored.job_name = run.stage, run.job_name
        if self.locks.get(run.model) == run.run_id:
            del self.locks[run.model]

    def run(self, model: str, run_id: str) -> RunRecord:
        """The stored run (a copy)."""
        return copy.deepcopy(self.runs[(model, run_id)])


@dataclass
class MemoryRetrainingAlerts:
    delivered: list[RetrainingAlert] = field(default_factory=list)
    fail: bool = False

    def publish(self, alert: RetrainingAlert) -> None:
        if self.fail:
            raise PortError("alert channels unavailable")
        self.delivered.append(alert)


def _conforms() -> None:
    """Static check (mypy) that each in-memory class satisfies its port."""
    _j: JobRunner = MemoryJobRunner()
    _r: RunLog = MemoryRunLog()
    _a: RetrainingAlertSink = MemoryRetrainingAlerts()
