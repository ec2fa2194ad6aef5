"""The retraining use case on in-memory ports: lock, trigger log, retries, alerts, closing runs."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from pydantic import ValidationError

from zaindari.retraining import (
    JobStartError,
    JobStateChange,
    Retraining,
    RetrainingConfig,
    RetrainingRequest,
)
from zaindari.retraining_memory import MemoryJobRunner, MemoryRetrainingAlerts, MemoryRunLog

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class World:
    """The use case and its fakes."""

    def __init__(self, **config: object) -> None:
        self.runner = MemoryJobRunner()
        self.runs = MemoryRunLog()
        self.alerts = MemoryRetrainingAlerts()
        self.sleeps: list[float] = []
        self.clock = Clock()
        self.ids = iter(f"r{i}" for i in range(1, 100))
        settings = {"lake_uri": "s3://lake", "scheduled_models": ("plant-anomaly", "press-rul"), **config}
        self.retraining = Retraining(
            self.runner,
            self.runs,
            self.alerts,
            RetrainingConfig.model_validate(settings),
            sleep=self.sleeps.append,
            clock=self.clock,
            new_run_id=lambda _now: next(self.ids),
        )


def manual(model: str = "plant-anomaly", request_id: str = "req-1", **kw: object) -> RetrainingRequest:
    values: dict[str, object] = {
        "model": model,
        "trigger": "manual",
        "request_id": request_id,
        "requested_at": NOW,
        "start": date(2026, 11, 1),
        "end": date(2026, 11, 21),
        **kw,
    }
    return RetrainingRequest.model_validate(values)


def drift(request_id: str = "evt-drift", model: str = "plant-anomaly") -> RetrainingRequest:
    return RetrainingRequest(
        model=model,
        trigger="drift",
        request_id=request_id,
        requested_at=NOW,
        evidence={"psi": {"temperature": 0.31}},
    )


def test_a_manual_trigger_starts_the_first_stage_with_the_spec_and_range() -> None:
    w = World()
    outcome = w.retraining.request(manual())
    assert (
        outcome.status == "started"
        and outcome.job_run_id == "run-1"
        and outcome.stage == "build_training_set"
    )
    (job,) = w.runner.started
    assert job.job_name == "zaindari-build-training-set"
    assert job.arguments == {
        "--lake": "s3://lake",
        "--start": "2026-11-01",
        "--end": "2026-11-21",
        "--spec": "s3://lake/specs/plant-anomaly.yaml",
        "--output": "s3://lake/training/sets/plant-anomaly/r1/",
        "--rejected": "s3://lake/training/rejected/plant-anomaly/r1/",
    }
    run = w.runs.run("plant-anomaly", "r1")
    assert run.status == "running" and run.job_run_id == "run-1"
    assert [t.request_id for t in run.triggers] == ["req-1"]
    assert w.runs.locks == {"plant-anomaly": "r1"}


def test_schedule_and_drift_take_the_lookback_window_up_to_the_trigger_day() -> None:
    w = World(lookback_days=7)
    outcomes = w.retraining.scheduled("evt-schedule", NOW)
    assert [o.status for o in outcomes] == ["started", "started"]
    assert [o.model for o in outcomes] == ["plant-anomaly", "press-rul"]
    assert outcomes[0].data_range == {"start": "2026-11-17", "end": "2026-11-23"}


def test_a_trigger_during_a_run_is_recorded_on_it_not_started_again() -> None:
    # Given a running run
    w = World()
    first = w.retraining.request(manual())
    # When a drift event and a second manual request arrive
    second = w.retraining.request(drift())
    third = w.retraining.request(manual(request_id="req-2", model="plant-anomaly"))
    # Then nothing else starts, and both are in the run's trigger log
    assert (second.status, third.status) == ("recorded", "recorded")
    assert second.run_id == third.run_id == first.run_id
    assert len(w.runner.started) == 1
    run = w.runs.run("plant-anomaly", "r1")
    assert [(t.trigger, t.request_id) for t in run.triggers] == [
        ("manual", "req-1"),
        ("drift", "evt-drift"),
        ("manual", "req-2"),
    ]
    assert run.triggers[1].evidence == {"psi": {"temperature": 0.31}}


def test_a_redelivered_trigger_is_recorded_once() -> None:
    w = World()
    w.retraining.request(manual())
    assert w.retraining.request(drift("evt-7")).status == "recorded"
    assert w.retraining.request(drift("evt-7")).status == "duplicate"
    assert len(w.runs.run("plant-anomaly", "r1").triggers) == 2


def test_the_lock_is_per_model() -> None:
    w = World()
    assert w.retraining.request(manual()).status == "started"
    assert w.retraining.request(manual(model="press-rul", request_id="req-9")).status == "started"
    assert len(w.runner.started) == 2


def test_a_transient_start_failure_is_retried_with_exponential_backoff() -> None:
    w = World(backoff_seconds=0.5, start_attempts=3)
    w.runner.failures.extend([JobStartError("throttled", transient=True)] * 2)
    outcome = w.retraining.request(manual())
    assert outcome.status == "started" and outcome.attempts == 3
    assert w.sleeps == [0.5, 1.0]
    assert not w.alerts.delivered


def test_a_start_that_keeps_failing_is_alerted_and_releases_the_lock() -> None:
    w = World(backoff_seconds=1.0, start_attempts=3)
    w.runner.failures.extend([JobStartError("Rate exceeded", transient=True)] * 3)
    outcome = w.retraining.request(manual())
    assert outcome.status == "start_failed" and outcome.attempts == 3 and outcome.alerted
    assert w.sleeps == [1.0, 2.0]  # no sleep after the last attempt
    (alert,) = w.alerts.delivered
    assert alert.kind == "start_failed" and alert.model == "plant-anomaly" and alert.attempts == 3
    assert "could not start after 3 attempt(s)" in alert.reason and "Rate exceeded" in alert.reason
    assert alert.subject == "[critical] retraining of plant-anomaly could not start"
    assert alert.triggers[0]["request_id"] == "req-1"
    assert w.runs.run("plant-anomaly", "r1").status == "start_failed"
    assert w.runs.locks == {}
    # the model is free again: the next trigger starts a run
    assert w.retraining.request(manual(request_id="req-2")).status == "started"


def test_a_permanent_start_failure_is_not_retried() -> None:
    w = World()
    w.runner.jobs = {"zaindari-train-model"}  # the first stage's job does not exist
    outcome = w.retraining.request(manual())
    assert outcome.status == "start_failed" and outcome.attempts == 1
    assert w.sleeps == []
    assert "permanent failure" in (outcome.reason or "")
    assert "zaindari-build-training-set does not exist" in w.alerts.delivered[0].reason


def test_the_first_stage_succeeding_starts_the_second_with_the_training_set() -> None:
    w = World()
    w.retraining.request(manual())
    outcome = w.retraining.on_job_state(
        JobStateChange(job_name="zaindari-build-training-set", job_run_id="run-1", state="SUCCEEDED")
    )
    assert outcome.status == "advanced" and outcome.stage == "train_model" and outcome.job_run_id == "run-2"
    job = w.runner.started[1]
    assert job.job_name == "zaindari-train-model"
    assert job.arguments == {
        "--spec": "s3://lake/specs/plant-anomaly.yaml",
        "--input": "s3://lake/training/sets/plant-anomaly/r1/",
        "--output": "s3://lake/models/plant-anomaly/candidates/r1/",
    }
    assert w.runs.locks == {"plant-anomaly": "r1"}  # still one run, still locked


def test_the_last_stage_succeeding_closes_the_run_and_frees_the_model() -> None:
    w = World()
    w.retraining.request(manual())
    w.retraining.on_job_state(JobStateChange(job_run_id="run-1", state="SUCCEEDED"))
    outcome = w.retraining.on_job_state(JobStateChange(job_run_id="run-2", state="SUCCEEDED"))
    assert outcome.status == "closed" and outcome.run_status == "succeeded"
    assert w.runs.run("plant-anomaly", "r1").status == "succeeded"
    assert w.runs.locks == {}
    assert not w.alerts.delivered
    assert w.retraining.request(drift()).status == "started"


def test_a_failed_job_closes_the_run_and_alerts() -> None:
    w = World()
    w.retraining.request(manual())
    outcome = w.retraining.on_job_state(
        JobStateChange(job_run_id="run-1", state="FAILED", message="AnalysisException: no such column")
    )
    assert outcome.status == "closed" and outcome.run_status == "failed" and outcome.alerted
    (alert,) = w.alerts.delivered
    assert alert.kind == "run_failed" and alert.job_run_id == "run-1"
    assert "ended FAILED: AnalysisException" in alert.reason
    assert w.runs.locks == {}


def test_events_of_unknown_or_unfinished_job_runs_change_nothing() -> None:
    w = World()
    w.retraining.request(manual())
    running = w.retraining.on_job_state(JobStateChange(job_run_id="run-1", state="RUNNING"))
    stranger = w.retraining.on_job_state(JobStateChange(job_run_id="jr_by_hand", state="SUCCEEDED"))
    assert running.status == stranger.status == "ignored"
    assert w.runs.locks == {"plant-anomaly": "r1"}
    # a redelivered final event after the run moved on is ignored too
    w.retraining.on_job_state(JobStateChange(job_run_id="run-1", state="SUCCEEDED"))
    again = w.retraining.on_job_state(JobStateChange(job_run_id="run-1", state="SUCCEEDED"))
    assert again.status == "ignored" and len(w.runner.started) == 2


def test_a_missed_end_event_is_noticed_by_the_next_trigger() -> None:
    w = World()
    w.retraining.request(manual())
    w.retraining.on_job_state(JobStateChange(job_run_id="run-1", state="SUCCEEDED"))
    w.runner.states["run-2"] = "SUCCEEDED"  # train_model ended; its event was lost
    outcome = w.retraining.request(drift())
    assert outcome.status == "started" and outcome.run_id == "r2"
    assert w.runs.run("plant-anomaly", "r1").status == "succeeded"


def test_a_lock_whose_lease_ran_out_is_taken_over() -> None:
    w = World(lease_hours=2)
    w.runner.fail_state = True  # the runner cannot tell: only the lease frees the model
    w.retraining.request(manual())
    assert w.retraining.request(drift("evt-1")).status == "recorded"
    w.clock.now = NOW + timedelta(hours=3)
    outcome = w.retraining.request(drift("evt-2"))
    assert outcome.status == "started" and outcome.run_id == "r3"
    assert w.runs.run("plant-anomaly", "r1").status == "lease_expired"


def test_a_run_log_outage_starts_nothing() -> None:
    w = World()
    w.runs.fail = True
    with pytest.raises(Exception, match="run log unavailable"):
        w.retraining.request(manual())
    assert w.runner.started == []


def test_requests_are_validated() -> None:
    with pytest.raises(ValidationError, match="after end"):
        manual(start=date(2026, 11, 22))
    with pytest.raises(ValidationError, match="both start and end"):
        manual(end=None)
    with pytest.raises(ValidationError):
        manual(model="../etc")
