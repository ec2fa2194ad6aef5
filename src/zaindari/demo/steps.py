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
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TextIO

from zaindari.demo.plant import TRIGGERS, DemoPlan
from zaindari.infra.inboxes import subscribe_inboxes
from zaindari.infra.lambda_events import http_event, s3_object_created_event, sqs_event

if TYPE_CHECKING:
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
    candidate_uri: str | None = None
    functions: dict[str, ModuleType] = field(default_factory=dict)
    aws_process: subprocess.Popen[bytes] | None = None
    function_env: dict[str, dict[str, str]] = field(default_factory=dict)

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
    for name in ("score_event", "score_batch"):
        env = dict(run.stack.function_settings(name).environment)
        env.update(
            {
                "ZAINDARI_MODEL_CACHE_DIR": str(cache / name),
                "ZAINDARI_FILE_SPOOL_DIR": str(cache / f"{name}-spool"),
                "POWERTOOLS_TRACE_DISABLED": "true",
                "AWS_LAMBDA_FUNCTION_NAME": run.stack.function_settings(name).function_name,
                **run.aws.environment(factory.config.region),
            }
        )
        run.function_env[name] = env
    run.functions.clear()


# -- the steps


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_embedded_aws(run: DemoRun) -> dict[str, Any]:
    """moto in server mode on a free port; the resources template.yaml declares; the alert inboxes.

    The server runs in its own process (``zaindari aws up``), as the AWS services would: the
    functions and the server then use both cores instead of sharing one interpreter.
    """
    from zaindari.infra.local_aws import LocalAws, endpoint_for, wait_until_ready

    port = _free_port()
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
    _configure_functions(run, {})
    stack = run.require_stack()
    event_bus = run.function_env["score_event"]["ZAINDARI_EVENT_BUS_NAME"]
    # queues standing for the people and systems downstream; the report reads alerts back from them
    run.inboxes = subscribe_inboxes(
        run.factory, stack["AlertTopic"].arn, ALERT_DETAIL_TYPE, INBOX_NAME, event_bus
    )
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


def train_first_model(run: DemoRun) -> dict[str, Any]:
    """The commissioning days (historian export) -> glue_jobs/train_model.py on local Spark -> a
    verified bundle under the lake's models/<model>/candidates/initial/."""
    from zaindari.infra.lambda_local import import_function

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
    job = import_function(run.root / "glue_jobs" / "train_model.py", "demo_train_model", fresh=True)
    argv = ["--master", run.plan.spark_master, "--spec", f"s3://{run.lake}/specs/{MODEL_NAME}.yaml"]
    argv += ["--input", str(folder), "--output", output, "--overwrite", "true"]
    captured = io.StringIO()
    aws_env = run.aws.environment(factory.config.region) if run.aws else {}
    # Spark's Python workers run this interpreter (its environment has the core)
    aws_env.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON", sys.executable))
    with _environment(aws_env), contextlib.redirect_stdout(captured):
        code = job.main(argv)
    run.log.write(captured.getvalue())
    if code != 0:
        raise DemoError(f"train_model exited {code} (its reason is on stderr above)")
    summary = json.loads(captured.getvalue().strip().splitlines()[-1])
    run.candidate_uri = output
    return {
        "training_rows": len(history),
        "bundle": output,
        "parameters": summary.get("parameters"),
        "thresholds": summary.get("thresholds"),
        "parity_max_abs_diff": summary.get("parity_max_abs_diff"),
    }


def register_and_promote(run: DemoRun) -> dict[str, Any]:
    """The bundle becomes version N (staging), then goes through the promotion gate."""
    if run.candidate_uri is None:
        raise DemoError("no trained bundle to register")
    registry = run.registry()
    version = registry.register_version(run.candidate_uri, model=MODEL_NAME, actor="demo")
    decision = registry.promote(MODEL_NAME, version.version, actor="demo", reason="first model")
    if not decision.promoted:
        raise DemoError(f"the gate refused version {version.version}: {'; '.join(decision.reasons)}")
    return {
        "version": version.version,
        "artifact_uri": version.artifact_uri,
        "content_hash": version.content_hash,
        "gate": decision.outcome,
        "metrics": {k: v for k, v in version.metrics.items() if isinstance(v, int | float | str)},
    }


def deploy_production(run: DemoRun) -> dict[str, Any]:
    """Point the functions at the production version: a stack update with ``ModelPath`` set to it.

    deploy_model (Lambda alias resolution, SageMaker endpoint, edge update event) is not on main
    yet; this is what ``sam deploy --parameter-overrides ModelPath=...`` does.
    """
    registry = run.registry()
    number = registry.alias_version(MODEL_NAME, "production")
    if number is None:
        raise DemoError(f"{MODEL_NAME} has no production version")
    uri = registry.version(MODEL_NAME, number).artifact_uri
    _configure_functions(run, {"ModelPath": uri})
    served = {name: env["ZAINDARI_MODEL_PATH"] for name, env in run.function_env.items()}
    if set(served.values()) != {uri}:
        raise DemoError(f"the functions did not get the production model: {served}")
    return {
        "version": number,
        "model_path": uri,
        "functions": sorted(served),
        "how": "stack parameter ModelPath (deploy_model is not built yet)",
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


def stream_live(run: DemoRun) -> dict[str, Any]:
    """Everything after commissioning through score_event, window by window, the triggers taking
    turns: SQS batches (event source shape), IoT rule invocations, HTTP API POST /readings."""
    data = run.require_data()
    skip = _commissioning_rows(run)
    per_window = max(
        1, int(run.plan.delivery_window.total_seconds() // run.plan.plant.sample_period_seconds)
    ) * len(data.machines)
    total = len(data.frame) - skip
    readings = data.readings()
    for _ in range(skip):
        next(readings)
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
                f"stream_live: {100 * done / total:3.0f}% ({done:,}/{total:,} readings, "
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


# The loop in order. A step that lands replaces its ``not_built`` entry with a function; the report
# reads its figures from its detail: drift_retraining returns the drift evidence and the challenger's
# version and gate decision (the registry then shows it in production, or refused); edge_box returns
# ``model_version``, the registry version the box runs at the end (the e2e test checks both).
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
    Step("register_and_promote", "Register it and pass the promotion gate", register_and_promote),
    Step("deploy", "Deploy the production version to the functions", deploy_production),
    Step("historian_drop", "Historian CSV dropped into S3, scored by score_batch", score_historian_drop),
    Step("stream_live", "Live telemetry through score_event (SQS, IoT rule, HTTP API)", stream_live),
    Step(
        "drift_retraining",
        "Drift monitoring starts a retraining; the gate promotes or refuses the challenger",
        not_built="monitor_drift and register_model/deploy_model are not on main yet (branches drift and "
        "registry-deploy): no drift evidence, no retrained version",
    ),
    Step(
        "edge_box",
        "An edge box scores locally, goes offline and comes back, and takes the new version",
        not_built="the edge runtime is not on main yet (branches edge-http and edge-offline)",
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
    """Stop the server process this run started (SIGTERM: it shuts down cleanly)."""
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
