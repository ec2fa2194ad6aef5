"""The demo's steps, run in order against the embedded AWS: each a function of the shared
:class:`DemoRun`, returning the figures it wants in ``summary.json``.

Every function runs through its real adapter (``functions/<name>/app.py`` with the environment
``template.yaml`` gives it, the Spark job scripts under ``glue_jobs/``) and every resource comes
from ``template.yaml`` (:func:`zaindari.infra.provision.provision`). A step the project has not
built yet is listed with the reason it did not run, never imitated: when it lands, it becomes a
function in :data:`STEPS` and the report picks up its outputs.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TextIO

from zaindari.demo.plant import TRIGGERS, DemoPlan
from zaindari.infra.http_server import free_port
from zaindari.infra.inboxes import event_inbox, subscribe_inboxes
from zaindari.infra.lambda_events import eventbridge_event, http_event, s3_object_created_event, sqs_event

if TYPE_CHECKING:
    from zaindari.demo.edge import EdgeBoxProcess
    from zaindari.infra.aws import ClientFactory
    from zaindari.infra.local_aws import LocalAws
    from zaindari.infra.provision import Provisioned
    from zaindari.registry import ModelRegistry
    from zaindari.simulate import PlantData

__all__ = [
    "MODEL_NAME",
    "STEPS",
    "DemoRun",
    "Step",
    "StepResult",
    "run_steps",
]

MODEL_NAME = "plant-anomaly"
SPEC_FILE = Path(__file__).resolve().parents[1] / "data" / "plant_anomaly.yaml"
ALERT_DETAIL_TYPE = "Zaindari Alert"
INBOX_NAME = "zaindari-demo-alerts"
LIFECYCLE_INBOX = "zaindari-demo-lifecycle"
MODEL_UPDATE = "Zaindari Model Update"
LIFECYCLE_EVENTS = [
    "Zaindari Drift Detected",
    "Zaindari Model Promoted",
    "Zaindari Model Rolled Back",
    MODEL_UPDATE,
    "Zaindari Edge Ack",
]
EDGE_BOX_ID = "press-hall"
#: a serving image URI for SageMaker on the embedded AWS (moto creates the endpoint, runs no container)
DEMO_SERVING_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/zaindari-serving:demo"
FOLLOW_PRODUCTION = f"registry://{MODEL_NAME}/production"
FUNCTIONS = (
    "score_event",
    "score_batch",
    "monitor_drift",
    "start_retraining",
    "register_model",
    "deploy_model",
)

Progress = Callable[[str], None]
Status = Literal["ok", "failed", "not_run"]


class DemoError(RuntimeError):
    """A step could not do its work; the message says what and why."""


@dataclass
class StepResult:
    """What one step did: its status, how long it took, its figures or why it did not run."""

    name: str
    title: str
    status: Status
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass
class DemoRun:
    """What the steps share: the plan, where things go, and what earlier steps made."""

    plan: DemoPlan
    root: Path
    out_dir: Path
    progress: Progress
    log: TextIO
    aws: LocalAws | None = None
    factory: ClientFactory | None = None
    stack: Provisioned | None = None
    data: PlantData | None = None
    inboxes: dict[str, str] = field(default_factory=dict)
    lifecycle_inbox: str | None = None
    candidate_uri: str | None = None
    functions: dict[str, ModuleType] = field(default_factory=dict)
    aws_process: subprocess.Popen[bytes] | None = None
    function_env: dict[str, dict[str, str]] = field(default_factory=dict)
    pending_events: list[dict[str, Any]] = field(default_factory=list)
    edge: EdgeBoxProcess | None = None

    @property
    def edge_devices(self) -> set[str]:
        """The machines of the edge box's line."""
        return {m.device_id for m in self.require_data().machines if m.line == self.plan.edge_line}

    @property
    def work_dir(self) -> Path:
        return self.out_dir / "work"

    @property
    def lake(self) -> str:
        return self.require_stack().name("LakeBucket")

    def require_factory(self) -> ClientFactory:
        if self.factory is None:
            raise DemoError("the embedded AWS is not running")
        return self.factory

    def require_stack(self) -> Provisioned:
        if self.stack is None:
            raise DemoError("template.yaml has not been provisioned")
        return self.stack

    def require_data(self) -> PlantData:
        if self.data is None:
            raise DemoError("the plant has not been simulated")
        return self.data

    def registry(self) -> ModelRegistry:
        from zaindari.infra.registry_store import build_model_registry
        from zaindari.settings import Settings

        settings = Settings(
            registry_table=self.require_stack().name("RegistryTable"),
            lake_bucket=self.lake,
            model_cache_dir=str(self.work_dir / "registry-cache"),
        )
        return build_model_registry(settings, self.require_factory())


@dataclass(frozen=True)
class Step:
    """A named step: ``run`` does it, or ``not_built`` says why it cannot run yet."""

    name: str
    title: str
    run: Callable[[DemoRun], dict[str, Any]] | None = None
    not_built: str | None = None


# -- helpers


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored afterwards (the adapters read it, as on Lambda)."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _load_function(run: DemoRun, name: str) -> ModuleType:
    """``functions/<name>/app.py`` imported as a new Lambda container, in its template environment."""
    from zaindari.infra.lambda_local import import_function

    if name not in run.functions:
        with _environment(run.function_env[name]), contextlib.redirect_stdout(run.log):
            run.functions[name] = import_function(
                run.root / "functions" / name / "app.py", f"demo_{name}", fresh=True
            )
    return run.functions[name]


def _invoke(run: DemoRun, name: str, event: Any) -> Any:
    """Call the function's handler as Lambda would; its logs and metrics go to ``functions.log``."""
    from zaindari.infra.lambda_local import LocalLambdaContext

    module = _load_function(run, name)
    function = run.require_stack().function_settings(name)
    context = LocalLambdaContext(
        function.function_name, memory_mb=function.memory_mb, timeout_s=function.timeout_s
    )
    with _environment(run.function_env[name]), contextlib.redirect_stdout(run.log):
        return module.lambda_handler(event, context)


def _configure_functions(run: DemoRun, parameters: dict[str, str]) -> None:
    """Provision (idempotently) with ``parameters`` and take each function's environment from it,
    as a stack deployment with those parameter overrides would; loaded containers are dropped."""
    from zaindari.infra.provision import provision

    factory = run.require_factory()
    if run.aws is None:
        raise DemoError("the embedded AWS is not running")
    run.stack = provision(
        factory, run.root / "template.yaml", parameters={"LogLevel": "WARNING", **parameters}
    )
    cache = run.work_dir / "function-cache"
    for name in FUNCTIONS:
        env = dict(run.stack.function_settings(name).environment)
        env.update(
            {
                "ZAINDARI_MODEL_CACHE_DIR": str(cache / name),
                "ZAINDARI_FILE_SPOOL_DIR": str(cache / f"{name}-spool"),
                "POWERTOOLS_TRACE_DISABLED": "true",
                "AWS_LAMBDA_FUNCTION_NAME": run.stack.function_settings(name).function_name,
                **run.aws.environment(factory.config.region),
                **demo_settings(run.plan),
            }
        )
        run.function_env[name] = env
    run.functions.clear()


def demo_settings(plan: DemoPlan) -> dict[str, str]:
    """The settings the demo gives every function on top of the template's environment, for its
    plant size: drift is judged on the last ``drift_window`` of plant time with at least a few
    hundred readings, and a drift-triggered run retrains on the last ``retrain_days`` days. The
    promotion gate shadow-scores the readings of that same window (the default, 2,000 readings,
    is a few hours of the full plant: too few to hold a developing fault). A
    promotion reaches running containers at once (alias TTL 0: the demo's clock runs hours in
    seconds). The drift thresholds themselves (PSI, KS) are the defaults."""
    machines = plan.plant.lines * plan.plant.machines_per_line
    window_readings = int(plan.drift_window.total_seconds() // plan.plant.sample_period_seconds) * machines
    return {
        "ZAINDARI_DRIFT_WINDOW_HOURS": str(int(plan.drift_window.total_seconds() // 3600)),
        "ZAINDARI_SHADOW_READINGS": str(min(window_readings, 100_000)),
        "ZAINDARI_DRIFT_MIN_READINGS": "500",
        "ZAINDARI_RETRAIN_LOOKBACK_DAYS": str(plan.retrain_days),
        "ZAINDARI_MODEL_ALIAS_TTL_SECONDS": "0",
    }


def _lifecycle_events(run: DemoRun, detail_type: str) -> list[dict[str, Any]]:
    """The registry and drift events of ``detail_type`` the EventBridge rule delivered so far
    (other types stay in the inbox for later)."""
    from zaindari.infra.inboxes import drain_queue

    if run.lifecycle_inbox is None:
        raise DemoError("no lifecycle inbox")
    run.pending_events.extend(drain_queue(run.require_factory(), run.lifecycle_inbox))
    wanted = [e for e in run.pending_events if e.get("detail-type") == detail_type]
    run.pending_events = [e for e in run.pending_events if e.get("detail-type") != detail_type]
    return wanted


# -- the steps


def start_embedded_aws(run: DemoRun) -> dict[str, Any]:
    """moto in server mode on a free port; the resources template.yaml declares; the alert inboxes.

    The server runs in its own process (``zaindari aws up``), as the AWS services would: the
    functions and the server then use both cores instead of sharing one interpreter.
    """
    from zaindari.infra.local_aws import LocalAws, endpoint_for, wait_until_ready

    port = free_port()
    run.work_dir.mkdir(parents=True, exist_ok=True)
    with (run.work_dir / "aws.log").open("w", encoding="utf-8") as requests_log:
        run.aws_process = subprocess.Popen(
            [sys.executable, "-m", "zaindari.cli", "aws", "up", "--host", "127.0.0.1", "--port", str(port)],
            stdout=requests_log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(endpoint_for("127.0.0.1", port), timeout_s=60.0)
    except TimeoutError as exc:
        raise DemoError(f"the embedded AWS did not start: {exc} (see {run.work_dir / 'aws.log'})") from exc
    run.aws = LocalAws("127.0.0.1", port, server=None)
    run.factory = run.aws.client_factory()
    _configure_functions(run, {"ServingImageUri": DEMO_SERVING_IMAGE})
    stack = run.require_stack()
    event_bus = run.function_env["score_event"]["ZAINDARI_EVENT_BUS_NAME"]
    # queues standing for the people and systems downstream; the report reads alerts back from them
    run.inboxes = subscribe_inboxes(
        run.factory, stack["AlertTopic"].arn, ALERT_DETAIL_TYPE, INBOX_NAME, event_bus
    )
    run.lifecycle_inbox = event_inbox(run.factory, LIFECYCLE_INBOX, LIFECYCLE_EVENTS, event_bus)
    return {
        "endpoint": run.aws.endpoint_url,
        "resources": len(stack.resources),
        "resource_types": sorted({r.type for r in stack.resources.values()}),
        "skipped": len(stack.skipped),
        "alert_inboxes": run.inboxes,
    }


def simulate(run: DemoRun) -> dict[str, Any]:
    """The seeded plant, with its faults and drifts (the ground truth the report compares with)."""
    from zaindari.simulate import simulate_plant

    run.data = data = simulate_plant(run.plan.plant)
    early = [f.device_id for f in data.faults if f.onset < run.plan.live_start]
    if early:
        raise DemoError(
            f"faults start during commissioning on {early}: the first model would learn them as normal"
        )
    return {
        "readings": len(data.frame),
        "machines": len(data.machines),
        "lines": run.plan.plant.lines,
        "start": run.plan.plant.start.isoformat(),
        "end": (run.plan.plant.start + run.plan.plant.duration).isoformat(),
        "sample_period_seconds": run.plan.plant.sample_period_seconds,
        "faults": len(data.faults),
        "drifts": len(data.drifts),
    }


def _commissioning_rows(run: DemoRun) -> int:
    data = run.require_data()
    steps = int(run.plan.commissioning.total_seconds() // run.plan.plant.sample_period_seconds)
    return min(steps, run.plan.plant.n_steps) * len(data.machines)


def _run_spark_job(run: DemoRun, script: str, argv: list[str]) -> dict[str, Any]:
    """``glue_jobs/<script>.py`` on local Spark with ``argv`` (plus ``--master``), as Glue would
    run it; its JSON summary (the last line, or the last JSON block, of its output)."""
    from zaindari.infra.lambda_local import import_function

    factory = run.require_factory()
    job = import_function(run.root / "glue_jobs" / f"{script}.py", f"demo_{script}", fresh=True)
    captured = io.StringIO()
    aws_env = run.aws.environment(factory.config.region) if run.aws else {}
    # Spark's Python workers run this interpreter (its environment has the core)
    aws_env.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON", sys.executable))
    with _environment(aws_env), contextlib.redirect_stdout(captured):
        try:
            code = job.main([*argv, "--master", run.plan.spark_master])
        except SystemExit as exc:  # argparse: the arguments were wrong
            raise DemoError(f"{script} refused its arguments {argv}: exit {exc.code}") from exc
    output = captured.getvalue()
    run.log.write(output)
    if code != 0:
        raise DemoError(f"{script} exited {code} (its reason is on stderr above)")
    lines = output.strip().splitlines()
    first = max((i for i, line in enumerate(lines) if line.startswith("{")), default=None)
    if first is None:
        raise DemoError(f"{script} printed no JSON summary")
    summary: dict[str, Any] = json.loads("\n".join(lines[first:]))
    return summary


def train_first_model(run: DemoRun) -> dict[str, Any]:
    """The commissioning days (historian export) -> glue_jobs/train_model.py on local Spark -> a
    verified bundle under the lake's models/<model>/candidates/initial/."""
    data = run.require_data()
    factory = run.require_factory()
    history = data.historian_frame().iloc[: _commissioning_rows(run)]
    folder = run.work_dir / "commissioning"
    folder.mkdir(parents=True, exist_ok=True)
    history.to_parquet(folder / "part-0.parquet", index=False)
    # the spec where start_retraining looks for it ({lake}/specs/{model}.yaml)
    factory.client("s3").put_object(
        Bucket=run.lake, Key=f"specs/{MODEL_NAME}.yaml", Body=SPEC_FILE.read_bytes()
    )
    output = f"s3://{run.lake}/models/{MODEL_NAME}/candidates/initial/"
    argv = ["--spec", f"s3://{run.lake}/specs/{MODEL_NAME}.yaml"]
    argv += ["--input", str(folder), "--output", output, "--overwrite", "true"]
    summary = _run_spark_job(run, "train_model", argv)
    run.candidate_uri = output
    return {
        "training_rows": len(history),
        "bundle": output,
        "parameters": summary.get("parameters"),
        "thresholds": summary.get("thresholds"),
        "parity_max_abs_diff": summary.get("parity_max_abs_diff"),
    }


def _deploy_promotions(run: DemoRun) -> list[dict[str, Any]]:
    """Every ``Zaindari Model Promoted`` event the rule delivered, handed to deploy_model."""
    return [
        _invoke(run, "deploy_model", event) for event in _lifecycle_events(run, "Zaindari Model Promoted")
    ]


def _deployed_targets(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the last deployment put the model, by target (SageMaker endpoint, edge update ...)."""
    deployed = [o for o in outcomes if o.get("status") == "deployed"]
    if not deployed:
        raise DemoError(f"deploy_model deployed nothing: {outcomes}")
    failed = [t for t in deployed[-1]["targets"] if t["status"] == "failed"]
    if failed:
        raise DemoError(f"deploy_model failed on {failed}")
    return {t["target"]: t for t in deployed[-1]["targets"]}


def register_and_promote(run: DemoRun) -> dict[str, Any]:
    """The bundle goes to register_model as a ``Zaindari Model Trained`` event: verified, registered
    as version N (staging), then through the promotion gate (no production yet: it is promoted)."""
    if run.candidate_uri is None:
        raise DemoError("no trained bundle to register")
    event = eventbridge_event(
        {"bundle_uri": run.candidate_uri, "model": MODEL_NAME, "run_id": "initial"},
        detail_type="Zaindari Model Trained",
        source="zaindari",
    )
    outcome = _invoke(run, "register_model", event)
    if outcome.get("status") != "promoted":
        raise DemoError(f"register_model did not promote the first model: {outcome}")
    return {
        "version": outcome["version"],
        "status": outcome["status"],
        "gate": outcome.get("gate"),
        "reason": outcome.get("reason"),
        "how": "register_model (Zaindari Model Trained event)",
    }


def deploy_production(run: DemoRun) -> dict[str, Any]:
    """deploy_model takes the ``Zaindari Model Promoted`` event (from its EventBridge rule): the
    SageMaker endpoint and the edge's model update; score_event and score_batch follow
    ``registry://<model>/production`` (template parameter ``ScoringModelReference``)."""
    outcomes = _deploy_promotions(run)
    targets = _deployed_targets(outcomes)
    _configure_functions(
        run, {"ServingImageUri": DEMO_SERVING_IMAGE, "ScoringModelReference": FOLLOW_PRODUCTION}
    )
    served = {name: run.function_env[name]["ZAINDARI_MODEL_PATH"] for name in ("score_event", "score_batch")}
    if set(served.values()) != {FOLLOW_PRODUCTION}:
        raise DemoError(f"the functions do not follow the production alias: {served}")
    version = outcomes[-1]["version"]
    return {
        "version": version,
        "model_path": FOLLOW_PRODUCTION,
        "functions": sorted(served),
        "targets": targets,
        "how": "deploy_model (Zaindari Model Promoted event); functions follow the registry alias",
    }


def score_historian_drop(run: DemoRun) -> dict[str, Any]:
    """The commissioning days as the historian's CSV export, dropped under drops/ in the raw
    bucket and scored by score_batch from S3's Object Created event."""
    data = run.require_data()
    factory = run.require_factory()
    stack = run.require_stack()
    path = run.work_dir / "historian" / "plant-1_commissioning.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    data.historian_frame().iloc[: _commissioning_rows(run)].to_csv(path, index=False)
    bucket = stack.name("RawBucket")
    key = f"drops/{run.plan.plant.site}/{path.name}"
    s3 = factory.client("s3")
    put = s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    event = s3_object_created_event(
        bucket, key, size=path.stat().st_size, etag=put["ETag"], version_id=put.get("VersionId")
    )
    response = _invoke(run, "score_batch", event)
    return {"drop": f"s3://{bucket}/{key}", "bytes": path.stat().st_size, "response": response}


def _delivery_events(run: DemoRun, trigger: str, index: int, readings: list[dict[str, Any]]) -> list[Any]:
    """How one delivery window's readings reach score_event through ``trigger``."""
    if trigger == "sqs":
        size = run.plan.sqs_batch_size
        return [
            sqs_event(
                [json.dumps(r) for r in readings[i : i + size]],
                ids=[f"w{index:05d}-{i + j:05d}" for j in range(len(readings[i : i + size]))],
            )
            for i in range(0, len(readings), size)
        ]
    size = run.plan.payload_readings
    payloads = [{"readings": readings[i : i + size]} for i in range(0, len(readings), size)]
    if trigger == "iot":
        return payloads  # an IoT rule hands the device's JSON to the function as is
    return [http_event("POST", "/readings", json.dumps(p)) for p in payloads]


def _tally(trigger: str, response: Any, counts: dict[str, int], problems: list[str]) -> None:
    if trigger == "sqs":
        failures = response.get("batchItemFailures", [])
        counts["sqs_records_failed"] += len(failures)
        if failures:
            problems.append(f"sqs: {len(failures)} records returned for retry")
    elif trigger == "iot":
        counts["iot_scored"] += int(response.get("readings_scored", 0))
        counts["iot_rejected"] += int(response.get("readings_rejected", 0))
    else:
        status = int(response.get("statusCode", 0))
        if status != 200:
            problems.append(f"http: {status} {str(response.get('body'))[:200]}")
            counts["http_failed"] += 1
        else:
            body = json.loads(response["body"])
            counts["http_scored"] += len(body.get("scores", []))
            counts["http_rejected"] += len(body.get("rejected", []))


def _rows_before(run: DemoRun, moment: datetime) -> int:
    """Rows of the plant's frame (time-major: every machine at one instant) before ``moment``."""
    data = run.require_data()
    steps = int((moment - run.plan.plant.start).total_seconds() // run.plan.plant.sample_period_seconds)
    return min(max(steps, 0), run.plan.plant.n_steps) * len(data.machines)


def _stream(
    run: DemoRun, readings: Iterator[dict[str, Any]], total: int, machines: int, label: str
) -> dict[str, Any]:
    """``readings`` (``total`` of them, from ``machines`` machines) through score_event, window by
    window, the triggers taking turns: SQS batches (event source shape), IoT rule invocations,
    HTTP API POST /readings."""
    per_window = (
        max(1, int(run.plan.delivery_window.total_seconds() // run.plan.plant.sample_period_seconds))
        * machines
    )
    total = max(total, 1)
    counts: dict[str, int] = dict.fromkeys(
        (
            "sqs_records_failed",
            "iot_scored",
            "iot_rejected",
            "http_scored",
            "http_rejected",
            "http_failed",
        ),
        0,
    )
    sent = dict.fromkeys(TRIGGERS, 0)
    invocations = dict.fromkeys(TRIGGERS, 0)
    problems: list[str] = []
    started = time.monotonic()
    done, next_report, index = 0, 0.1, 0
    while window := [r for _, r in zip(range(per_window), readings, strict=False)]:
        trigger = TRIGGERS[index % len(TRIGGERS)]
        for event in _delivery_events(run, trigger, index, window):
            _tally(trigger, _invoke(run, "score_event", event), counts, problems)
            invocations[trigger] += 1
        sent[trigger] += len(window)
        done += len(window)
        index += 1
        if done / total >= next_report or done == total:
            elapsed = time.monotonic() - started
            run.progress(
                f"{label}: {100 * done / total:3.0f}% ({done:,}/{total:,} readings, "
                f"{elapsed:.0f} s, {done / max(elapsed, 1e-9):,.0f} readings/s)"
            )
            next_report += 0.1
    return {
        "readings_sent": sent,
        "invocations": invocations,
        "windows": index,
        "responses": counts,
        "problems": problems[:20],
        "seconds_streaming": round(time.monotonic() - started, 2),
    }


def stream_live(run: DemoRun) -> dict[str, Any]:
    """Everything after commissioning up to the drift check through score_event (the rest is
    held back until the retrained model is deployed), but the edge box's line (scored on the box)."""
    data = run.require_data()
    first = _commissioning_rows(run)
    last = _rows_before(run, run.plan.drift_check_at)
    edge = run.edge_devices
    machines = len(data.machines) - len(edge)
    readings = (
        r for r in itertools.islice(data.readings(limit=last), first, None) if r["device_id"] not in edge
    )
    total = (last - first) // len(data.machines) * machines
    return {
        "until": run.plan.drift_check_at.isoformat(),
        "machines": machines,
        "edge_line_left_to_the_box": run.plan.edge_line,
        **_stream(run, readings, total, machines, "stream_live"),
    }


def _plant_event(event: dict[str, Any], moment: datetime) -> dict[str, Any]:
    """``event`` as delivered, its time set to the plant's clock: the plant is simulated in the past,
    and the functions read the event time as "now" (monitor_drift's window, the retraining range)."""
    return {**event, "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ")}


def _glue_event(job_name: str, job_run_id: str, moment: datetime) -> dict[str, Any]:
    """Glue's "Job State Change" event for a run that succeeded (moto runs no script, emits none)."""
    event = eventbridge_event(
        {
            "jobName": job_name,
            "severity": "INFO",
            "state": "SUCCEEDED",
            "jobRunId": job_run_id,
            "message": "Job run succeeded (run by the demo on local Spark)",
        },
        detail_type="Glue Job State Change",
        source="aws.glue",
    )
    return _plant_event(event, moment)


def _run_started_job(run: DemoRun, outcome: dict[str, Any], script: str) -> dict[str, Any]:
    """The Glue job run start_retraining started (its arguments read back from Glue's GetJobRun),
    run on local Spark with those same arguments; what it was and what it printed."""
    env = run.function_env["start_retraining"]
    job_name = {
        "build_training_set": env.get("ZAINDARI_BUILD_TRAINING_SET_JOB"),
        "train_model": env.get("ZAINDARI_TRAIN_MODEL_JOB"),
    }.get(str(outcome.get("stage")))
    job_run_id = outcome.get("job_run_id")
    if not job_name or not job_run_id:
        raise DemoError(f"start_retraining started no job: {outcome}")
    job_run = run.require_factory().client("glue").get_job_run(JobName=job_name, RunId=job_run_id)["JobRun"]
    # Glue passes the job's default arguments too (--TempDir, --additional-python-modules ...);
    # the script reads the ones it declares, as getResolvedOptions does
    from zaindari.infra.lambda_local import import_function

    declared = {
        f"--{a.name}"
        for a in import_function(
            run.root / "glue_jobs" / f"{script}.py", f"demo_{script}", fresh=True
        ).ARGUMENTS
    }
    arguments: dict[str, str] = {k: v for k, v in (job_run.get("Arguments") or {}).items() if k in declared}
    argv = [part for name, value in arguments.items() for part in (name, value)]
    started = time.monotonic()
    summary = _run_spark_job(run, script, argv)
    return {
        "job_name": job_name,
        "job_run_id": job_run_id,
        "arguments": arguments,
        "seconds": round(time.monotonic() - started, 1),
        "summary": {k: v for k, v in summary.items() if isinstance(v, int | float | str | dict)},
    }


def _one_outcome(response: dict[str, Any], expected: str) -> dict[str, Any]:
    outcomes = response.get("outcomes") or []
    if len(outcomes) != 1 or outcomes[0].get("status") != expected:
        raise DemoError(f"start_retraining: expected one {expected!r} outcome, got {response}")
    outcome: dict[str, Any] = outcomes[0]
    return outcome


def _first_alerts(run: DemoRun, since: dict[str, datetime], until: datetime) -> dict[str, str]:
    """For each device of ``since``, the first timestamp from ``since[device]`` to ``until`` at which
    its scores in the lake (``scores/events/``, as score_event and the edge wrote them) met an
    alert condition; devices with none are left out."""
    import gzip
    from concurrent.futures import ThreadPoolExecutor

    import orjson

    s3 = run.require_factory().client("s3")
    keys: list[str] = []
    day = min(since.values()).date()
    while day <= until.date():
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=run.lake, Prefix=f"scores/events/date={day.isoformat()}/"
        )
        keys += [
            o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".jsonl.gz")
        ]
        day += timedelta(days=1)
    low = {device: _stamp(moment) for device, moment in since.items()}
    high = _stamp(until)

    def first_in(key: str) -> dict[str, str]:
        body = gzip.decompress(s3.get_object(Bucket=run.lake, Key=key)["Body"].read())
        found: dict[str, str] = {}
        for line in body.splitlines():
            row = orjson.loads(line)
            device, stamp = str(row.get("device_id")), str(row.get("timestamp"))
            if row.get("alert") and device in low and low[device] <= stamp < high:
                found[device] = min(found.get(device, stamp), stamp)
        return found

    first: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for found in pool.map(first_in, keys):
            for device, stamp in found.items():
                first[device] = min(first.get(device, stamp), stamp)
    return first


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_maintenance(run: DemoRun) -> dict[str, Any]:
    """The plant's maintenance log up to the drift check, written where the retraining and the gate
    read it (``labels/maintenance/``, :mod:`zaindari.maintenance`).

    The demo stands in for the maintenance team: a fault is in the log when the plant could know
    of it by then: the machine broke down (a breakdown work order), or the production model
    alerted on it (an inspection found the fault, dated from its onset). A fault nobody has seen
    yet is not in the log (its rows stay in the training set, as they would in a plant).
    """
    from zaindari.maintenance import MAINTENANCE_PREFIX, MaintenanceLog, MaintenanceWindow

    data = run.require_data()
    check_at = run.plan.drift_check_at
    started = [f for f in data.faults if f.onset < check_at]
    alerted = _first_alerts(run, {f.device_id: f.onset for f in started}, check_at) if started else {}
    windows, unknown = [], []
    for fault in started:
        if fault.failure <= check_at:
            note = f"breakdown at {_stamp(fault.failure)}; not repaired by {_stamp(check_at)}"
        elif fault.device_id in alerted:
            note = f"inspected after the model's alert at {alerted[fault.device_id]}: {fault.kind} found"
        else:
            unknown.append({"device_id": fault.device_id, "kind": fault.kind, "onset": _stamp(fault.onset)})
            continue
        windows.append(
            MaintenanceWindow(device_id=fault.device_id, start=fault.onset, kind=fault.kind, note=note)
        )
    log = MaintenanceLog(tuple(windows))
    key = f"{MAINTENANCE_PREFIX}/work-orders-{check_at.strftime('%Y%m%dT%H%M')}.jsonl"
    run.require_factory().client("s3").put_object(Bucket=run.lake, Key=key, Body=log.to_jsonl().encode())
    sample_start = check_at - run.plan.drift_window  # what the gate shadow-scores (demo_settings)
    return {
        "log": f"s3://{run.lake}/{key}",
        "windows": [w.model_dump(mode="json") for w in windows],
        "faults_not_known_yet": unknown,
        # known faults still developing (machine running) during the gate's shadow sample: on a
        # stopped machine the expert rules alert for any model, so only these test the learned score
        "developing_in_shadow_sample": sorted(
            f.device_id
            for f in started
            if f.device_id in {w.device_id for w in windows} and f.failure > sample_start
        ),
    }


def drift_retraining(run: DemoRun) -> dict[str, Any]:
    """monitor_drift on its schedule over the summaries score_event wrote -> its ``Zaindari Drift
    Detected`` event (from the EventBridge rule) -> start_retraining -> the two Glue jobs it started,
    run on local Spark with the arguments it gave them -> their job-state events -> register_model
    (verify, register, gate) -> deploy_model when the gate promoted."""
    check_at = run.plan.drift_check_at
    maintenance = record_maintenance(run)
    schedule = _plant_event(
        eventbridge_event({}, detail_type="Scheduled Event", source="aws.events"), check_at
    )
    check = _invoke(run, "monitor_drift", schedule)
    if check.get("status") != "triggered":
        raise DemoError(f"monitor_drift found no drift to act on: {check}")
    drift_events = _lifecycle_events(run, "Zaindari Drift Detected")
    if len(drift_events) != 1:
        raise DemoError(f"expected one Drift Detected event on EventBridge, got {len(drift_events)}")
    drift_event = _plant_event(drift_events[0], check_at)
    started = _one_outcome(_invoke(run, "start_retraining", drift_event), "started")
    run.progress("drift_retraining: drift detected; building the training set on Spark ...")
    build = _run_started_job(run, started, "build_training_set")
    advanced = _one_outcome(
        _invoke(run, "start_retraining", _glue_event(build["job_name"], build["job_run_id"], check_at)),
        "advanced",
    )
    run.progress("drift_retraining: training the challenger on Spark ...")
    train = _run_started_job(run, advanced, "train_model")
    trained = _glue_event(train["job_name"], train["job_run_id"], check_at)
    # the job-state event goes to both rules' targets: start_retraining closes the run,
    # register_model registers the bundle and runs the gate
    closed = _one_outcome(_invoke(run, "start_retraining", trained), "closed")
    registration = _invoke(run, "register_model", trained)
    if registration.get("status") == "refused":
        raise DemoError(f"register_model refused the retrained bundle: {registration.get('reason')}")
    deployments = _deploy_promotions(run)
    detail: dict[str, Any] = {
        "checked_at": check_at.isoformat(),
        "maintenance_log": maintenance,
        "check": check,
        "evidence": drift_events[0].get("detail"),
        "retraining_run": {
            "run_id": started.get("run_id"),
            "data_range": started.get("data_range"),
            "closed": closed.get("status"),
        },
        "jobs": {"build_training_set": build, "train_model": train},
        "challenger": registration.get("version"),
        "gate": registration.get("gate"),
        "registration": registration.get("status"),
        "promoted": registration.get("status") == "promoted",
    }
    if detail["promoted"]:
        detail["deployed"] = _deployed_targets(deployments)
    return detail


def score_after_retraining(run: DemoRun) -> dict[str, Any]:
    """The held-back end of the run, scored after the retraining: the presses stream through
    score_event, the spindles' readings arrive as a historian CSV for score_batch (the edge box's
    line is the box's, see :func:`edge_model_update`); both follow the production alias, so the
    lake's scores say which version each used."""
    data = run.require_data()
    first = _rows_before(run, run.plan.drift_check_at)
    frame = data.historian_frame().iloc[first:]
    cloud = [m for m in data.machines if m.device_id not in run.edge_devices]
    presses = {m.device_id for m in cloud if m.kind == "press"}
    streamed_ids = sorted(presses)
    to_stream = frame[frame["device_id"].isin(presses)]
    to_drop = frame[frame["device_id"].isin({m.device_id for m in cloud} - presses)]
    readings = (r for r in itertools.islice(data.readings(), first, None) if r["device_id"] in presses)
    streamed = _stream(run, readings, len(to_stream), len(presses), "score_after_retraining")
    path = run.work_dir / "historian" / "plant-1_after_retraining.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    to_drop.to_csv(path, index=False)
    bucket = run.require_stack().name("RawBucket")
    key = f"drops/{run.plan.plant.site}/{path.name}"
    put = run.require_factory().client("s3").put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    event = s3_object_created_event(
        bucket, key, size=path.stat().st_size, etag=put["ETag"], version_id=put.get("VersionId")
    )
    response = _invoke(run, "score_batch", event)
    return {
        "from": run.plan.drift_check_at.isoformat(),
        "streamed_machines": streamed_ids,
        "readings_streamed": len(to_stream),
        "stream": streamed,
        "drop": f"s3://{bucket}/{key}",
        "readings_dropped": len(to_drop),
        "score_batch": response,
    }


def _edge_readings(run: DemoRun, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The edge line's readings from ``start`` to ``end`` (plant time), in the order sent."""
    data = run.require_data()
    first, last = _rows_before(run, start), _rows_before(run, end)
    edge = run.edge_devices
    return [r for r in itertools.islice(data.readings(limit=last), first, None) if r["device_id"] in edge]


def _send_to_box(run: DemoRun, readings: list[dict[str, Any]], counts: dict[str, int]) -> None:
    """The line's device gateway: one request per delivery window, ``POST /function/score-event``."""
    box = _box(run)
    per_request = max(
        1, int(run.plan.delivery_window.total_seconds() // run.plan.plant.sample_period_seconds)
    ) * len(run.edge_devices)
    for i in range(0, len(readings), per_request):
        answer = box.score(readings[i : i + per_request])
        counts["requests"] += 1
        counts["sent"] += len(readings[i : i + per_request])
        counts["scored"] += len(answer.get("scores", []))
        counts["rejected"] += len(answer.get("rejected", []))
        counts["duplicates"] += int(answer.get("duplicates", 0))
        counts["alerts"] += len(answer.get("alerts", []))


def _box(run: DemoRun) -> EdgeBoxProcess:
    if run.edge is None:
        raise DemoError("the edge box is not running")
    return run.edge


def _edge_keys(run: DemoRun) -> list[str]:
    """The lake objects the box shipped (named ``edge-<box id>-...``)."""
    s3 = run.require_factory().client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=run.lake, Prefix="scores/events/")
    return [
        o["Key"] for page in pages for o in page.get("Contents", []) if f"/edge-{EDGE_BOX_ID}-" in o["Key"]
    ]


def edge_box(run: DemoRun) -> dict[str, Any]:
    """An edge box for the last line: installed with production's bundle (``python -m
    zaindari.edge.box seed``), served by ``zaindari edge serve``; its link to AWS is down for the
    first part of the live stream (it scores, alerts locally, buffers), then comes back and its
    shipper delivers the backlog; it scores the rest of its line online up to the drift check."""
    from zaindari.demo.edge import EdgeBoxProcess

    data = run.require_data()
    factory = run.require_factory()
    if run.aws is None:
        raise DemoError("the embedded AWS is not running")
    registry = run.registry()
    production = registry.alias_version(MODEL_NAME, "production")
    if production is None:
        raise DemoError("no production version to install on the box")
    bundle = registry.artifacts.fetch(registry.version(MODEL_NAME, production).artifact_uri)
    edge = run.edge_devices
    golden_rows = [
        r for r in itertools.islice(data.readings(), _commissioning_rows(run)) if r["device_id"] in edge
    ]
    golden = [r for device in sorted(edge) for r in [g for g in golden_rows if g["device_id"] == device][:20]]
    env = run.function_env["score_event"]
    aws_env = run.aws.environment(factory.config.region)
    settings = {
        "ZAINDARI_LAKE_BUCKET": run.lake,
        "ZAINDARI_EVENT_BUS_NAME": env["ZAINDARI_EVENT_BUS_NAME"],
        "ZAINDARI_ALERT_TOPIC_ARN": run.require_stack()["AlertTopic"].arn,
    }
    run.progress(f"edge_box: installing the box of {run.plan.edge_line} with version {production} ...")
    run.edge = box = EdgeBoxProcess.install(
        run.work_dir / "edge",
        box_id=EDGE_BOX_ID,
        aws_env=aws_env,
        aws_port=run.aws.port,
        settings=settings,
        bundle=bundle,
        version=str(production),
        golden=golden,
    )
    box.serve(run.work_dir / "edge.log", run.root / "functions")
    started_serving = box.report()
    live_start, check_at = run.plan.live_start, run.plan.drift_check_at
    back_online = live_start + (check_at - live_start) * run.plan.edge_offline
    offline = dict.fromkeys(("requests", "sent", "scored", "rejected", "duplicates", "alerts"), 0)
    started = time.monotonic()
    _send_to_box(run, _edge_readings(run, live_start, back_online), offline)
    offline_seconds = time.monotonic() - started
    held = box.report()
    if _edge_keys(run):
        raise DemoError("the box shipped while its link was down")
    run.progress(
        f"edge_box: {offline['sent']:,} readings scored offline, buffered {held.get('buffered')}; link up ..."
    )
    box.link.up()
    _, ship_seconds = box.wait_until_shipped()
    online = dict.fromkeys(offline, 0)
    _send_to_box(run, _edge_readings(run, back_online, check_at), online)
    final, _ = box.wait_until_shipped()
    return {
        "box_id": EDGE_BOX_ID,
        "line": run.plan.edge_line,
        "devices": sorted(edge),
        "served_by": "zaindari edge serve (granian), its own process group",
        "installed_version": started_serving.get("version"),
        "golden_inputs": len(golden),
        "offline": {"from": live_start.isoformat(), "until": back_online.isoformat(), **offline},
        "offline_seconds": round(offline_seconds, 2),
        "buffered_when_link_came_back": held.get("buffered"),
        "buffer_bytes_when_link_came_back": held.get("buffer_bytes"),
        "seconds_to_ship_backlog": round(ship_seconds, 2),
        "online": {"from": back_online.isoformat(), "until": check_at.isoformat(), **online},
        "version_after_online": final.get("version"),
        "objects_shipped": len(_edge_keys(run)),
    }


def edge_model_update(run: DemoRun) -> dict[str, Any]:
    """deploy_model's ``Zaindari Model Update`` (from its EventBridge rule) goes to the box's
    model-sync, which downloads the bundle by its presigned URLs, verifies it, smoke-tests it on
    the golden inputs and swaps it in; the box then scores the rest of its line and ships it."""
    box = _box(run)
    updates = _lifecycle_events(run, MODEL_UPDATE)
    before = box.report().get("version")
    outcomes = []
    for event in sorted(updates, key=lambda e: int(e.get("detail", {}).get("version", 0))):
        status, answer = box.update(event)
        outcomes.append({"version": event.get("detail", {}).get("version"), "http": status, **answer})
    after = box.report()
    counts = dict.fromkeys(("requests", "sent", "scored", "rejected", "duplicates", "alerts"), 0)
    end = run.plan.plant.start + run.plan.plant.duration
    _send_to_box(run, _edge_readings(run, run.plan.drift_check_at, end), counts)
    final, _ = box.wait_until_shipped()
    box.stop()
    acks = [e.get("detail", {}) for e in _lifecycle_events(run, "Zaindari Edge Ack")]
    applied = [o for o in outcomes if o.get("status") == "applied"]
    return {
        "version_before": before,
        "updates_received": [o["version"] for o in outcomes],
        "outcomes": [
            {k: o.get(k) for k in ("version", "http", "status", "reason") if k in o} for o in outcomes
        ],
        "applied": [o["version"] for o in applied],
        "version_after_update": after.get("version"),
        "scored_after_update": counts,
        "model_version": int(final["version"])
        if str(final.get("version", "")).isdigit()
        else final.get("version"),
        "buffered_at_end": final.get("buffered"),
        "acks_on_eventbridge": [
            {k: a.get(k) for k in ("event", "status", "version", "box_id", "reason") if a.get(k) is not None}
            for a in acks
        ],
        "objects_shipped": len(_edge_keys(run)),
    }


# The loop in order. A step not built yet would be a ``not_built`` entry (listed with its reason, never
# imitated); the report reads each step's figures from its detail: drift_retraining returns the drift
# evidence and the challenger's version and gate decision (the registry then shows it in production,
# or refused); edge_model_update returns ``model_version``, the registry version the box runs at the
# end (the e2e test checks both).
STEPS: tuple[Step, ...] = (
    Step(
        "embedded_aws", "Embedded AWS (moto server) with the resources of template.yaml", start_embedded_aws
    ),
    Step("simulate_plant", "Simulate the plant (seeded: faults and sensor drift at known times)", simulate),
    Step(
        "train_first_model",
        "Train the first model on local Spark (glue_jobs/train_model.py)",
        train_first_model,
    ),
    Step(
        "register_and_promote",
        "register_model registers it and passes the promotion gate",
        register_and_promote,
    ),
    Step(
        "deploy",
        "deploy_model deploys production (SageMaker endpoint, edge update); functions follow the registry",
        deploy_production,
    ),
    Step("historian_drop", "Historian CSV dropped into S3, scored by score_batch", score_historian_drop),
    Step(
        "edge_box",
        "An edge box (zaindari edge serve) scores its line offline, then its link comes back and it ships",
        edge_box,
    ),
    Step("stream_live", "Live telemetry through score_event (SQS, IoT rule, HTTP API)", stream_live),
    Step(
        "drift_retraining",
        "Drift monitoring starts a retraining; the gate promotes or refuses the challenger",
        drift_retraining,
    ),
    Step(
        "score_after_retraining",
        "The rest of the run scored by score_event (presses) and score_batch (spindles) with the production version",
        score_after_retraining,
    ),
    Step(
        "edge_model_update",
        "The new production version reaches the edge box (model-sync), which scores the rest of its line",
        edge_model_update,
    ),
)


def run_steps(run: DemoRun, steps: Sequence[Step] = STEPS) -> list[StepResult]:
    """Run ``steps`` in order; after a failure the remaining steps are reported as not run."""
    results: list[StepResult] = []
    failed: str | None = None
    for step in steps:
        if step.run is None:
            results.append(
                StepResult(step.name, step.title, "not_run", reason=f"not built: {step.not_built}")
            )
            run.progress(f"{step.name}: not run (not built yet)")
            continue
        if failed is not None:
            results.append(StepResult(step.name, step.title, "not_run", reason=f"step {failed} failed"))
            continue
        run.progress(f"{step.name}: {step.title} ...")
        started = time.monotonic()
        try:
            detail = step.run(run)
        except Exception as exc:
            seconds = time.monotonic() - started
            traceback.print_exc(file=run.log)
            results.append(
                StepResult(step.name, step.title, "failed", seconds, reason=f"{type(exc).__name__}: {exc}")
            )
            run.progress(f"{step.name}: FAILED after {seconds:.1f} s: {type(exc).__name__}: {exc}")
            failed = step.name
            continue
        seconds = time.monotonic() - started
        results.append(StepResult(step.name, step.title, "ok", seconds, detail))
        run.progress(f"{step.name}: done in {seconds:.1f} s")
    return results


def stop_embedded_aws(run: DemoRun) -> None:
    """Stop the edge box and the server process this run started (SIGTERM: they shut down cleanly)."""
    if run.edge is not None:
        run.edge.stop()
    if run.aws_process is not None and run.aws_process.poll() is None:
        run.aws_process.terminate()
        try:
            run.aws_process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            run.aws_process.kill()
            run.aws_process.wait()
    run.aws_process = None


def stderr_progress(message: str) -> None:
    """Progress lines on stderr, stamped with the wall time."""
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
