"""score_event on Lambda, warm and cold, against moto started in this process.

Warm: the handler after a warm-up, fed SQS batches of 1, 10, 100 and 1,000 records (one reading
each, never seen before); wall time is split into time waiting on AWS (botocore events on the
function's own clients: from ``before-send`` to ``before-parse``, i.e. the HTTP round trip) and
the handler's own work (wall minus that wait; it includes botocore's serialising, signing and
parsing, which a real function pays too). Baseline, measured in the same run: the core alone,
record by record (one ``parse_payload`` and one ``score_readings`` per record). Also: AWS requests
per batch of 1,000 and one HTTP reading's latency.

Cold: a new ``python`` process imports the handler module from the function's code asset as
``make build`` ships it, loads the model (a local bundle folder) and scores its first IoT event;
measured from the parent's spawn to the response.
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _report import info_line, result_row
from _setup import (
    FUNCTION_DIR,
    ROOT,
    BenchAws,
    FreshReadings,
    apply_env,
    child_env,
    start_aws,
)
from tests.support import (
    LambdaContext,
    fit_example_bundle,
    http_event,
    load_function,
    sqs_event,
)

from zaindari.bundle import load_bundle
from zaindari.contract import ContractLimits, parse_payload
from zaindari.infra.allocator import retain_freed_heap
from zaindari.pipeline import DeviceState, score_readings

BENCHMARK = "score_event"
OUT = sys.stdout  # the function's logs and EMF metrics go to /dev/null; our lines come here

BATCHES = ((1, 120), (10, 40), (100, 15), (1000, 8))  # (records per batch, measured repetitions)
WARMUP_CALLS = 2
HTTP_CALLS = 300
COLD_RUNS = 7
COLD_VARIANT_RUNS = 3

TARGET_OWN_RECORDS_PER_S = 30_000
TARGET_OWN_VS_BASELINE = 2.0
TARGET_REQUESTS_PER_1000 = 20
TARGET_COLD_MS = 350.0
SERVICES = ("dynamodb", "s3", "sns", "events")
DRIVER = Path(__file__).resolve().parent / "_cold_start_driver.py"


def info(message: str) -> None:
    info_line(message, OUT)


def row(metric: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return result_row(BENCHMARK, metric, value, unit, **extra)


class AwsWaitClock:
    """Time spent inside AWS calls, from botocore's events on the function's clients.

    ``wait``: HTTP round trips (``before-send`` to ``before-parse``, or to ``response-received``
    when the request failed), which is what the function waits for. ``calls``: whole API calls
    (``before-call`` to ``after-call``), so ``calls - wait`` is botocore's own overhead.
    ``wait_cpu``: the calling thread's CPU time inside those round trips (socket calls, and
    urllib3 reading the response), left out of the handler's own CPU like the wait itself.
    ``calls_cpu``: the thread's CPU time inside whole API calls, so ``calls_cpu - wait_cpu`` is
    the CPU the SDK spends outside the round trips (serialising, signing, parsing, retries),
    which stays in the handler's own CPU: a real function pays it too.
    """

    def __init__(self) -> None:
        self.wait = 0.0
        self.calls = 0.0
        self.wait_cpu = 0.0
        self.calls_cpu = 0.0
        self._send_started: float | None = None
        self._send_cpu: float = 0.0
        self._call_started: float | None = None
        self._call_cpu: float = 0.0

    def attach(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-call", self._before_call)
        events.register("after-call", self._after_call)
        events.register("after-call-error", self._after_call)
        events.register("before-send", self._before_send)
        events.register("before-parse", self._end_send)
        events.register("response-received", self._end_send)

    def reset(self) -> None:
        self.wait = self.calls = self.wait_cpu = self.calls_cpu = 0.0

    def _before_call(self, **_: Any) -> None:
        self._call_cpu = time.thread_time()
        self._call_started = time.perf_counter()

    def _after_call(self, **_: Any) -> None:
        if self._call_started is not None:
            self.calls += time.perf_counter() - self._call_started
            self.calls_cpu += time.thread_time() - self._call_cpu
            self._call_started = None

    def _before_send(self, **_: Any) -> None:
        self._send_cpu = time.thread_time()
        self._send_started = time.perf_counter()

    def _end_send(self, **_: Any) -> None:
        if self._send_started is not None:
            self.wait += time.perf_counter() - self._send_started
            self.wait_cpu += time.thread_time() - self._send_cpu
            self._send_started = None


@dataclass
class Sample:
    wall: float
    aws_wait: float
    aws_calls: float
    requests: dict[str, int]
    report_work: float  # ScoringReport.work_seconds: the use case's own accounting
    report_io: float  # ScoringReport.io_seconds: time inside the ports (AWS wait + their CPU)
    cpu: float = 0.0  # the handler thread's CPU time (time.thread_time) over the whole call
    aws_wait_cpu: float = 0.0  # ... of which inside the HTTP round trips
    faults: int = 0  # minor page faults of the handler thread during the call
    aws_calls_cpu: float = 0.0  # ... of which inside AWS SDK calls (round trips included)

    @property
    def sdk_cpu(self) -> float:
        """Of the handler's own CPU, what the AWS SDK spent outside the round trips."""
        return self.aws_calls_cpu - self.aws_wait_cpu

    @property
    def own(self) -> float:
        return self.wall - self.aws_wait

    @property
    def own_cpu(self) -> float:
        """The handler's own work as CPU time on its one core: unlike ``own`` (wall minus AWS
        wait), it does not grow when other processes, or moto's threads in this process, take
        the core from the handler (the benchmark machine is shared)."""
        return self.cpu - self.aws_wait_cpu


@dataclass
class WarmFunction:
    """The function module, loaded once per run and instrumented (main() warms it up)."""

    app: Any
    clock: AwsWaitClock = field(default_factory=AwsWaitClock)
    reports: list[Any] = field(default_factory=list)
    devnull: Any = None

    def invoke(self, event: dict[str, Any]) -> tuple[Any, Sample]:
        counter = self.counter
        self.clock.reset()
        counter.reset()
        self.reports.clear()
        context = LambdaContext()
        with contextlib.redirect_stdout(self.devnull):
            faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            cpu = time.thread_time()
            started = time.perf_counter()
            response = self.app.lambda_handler(event, context)
            wall = time.perf_counter() - started
            cpu = time.thread_time() - cpu
            faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults
        report = self.reports[-1] if self.reports else None
        return response, Sample(
            wall,
            self.clock.wait,
            self.clock.calls,
            counter.by_operation,
            report.work_seconds if report else float("nan"),
            report.io_seconds if report else float("nan"),
            cpu,
            self.clock.wait_cpu,
            faults,
            self.clock.calls_cpu,
        )

    @property
    def counter(self) -> Any:
        return self.factory.request_counter

    @property
    def factory(self) -> Any:
        return self.app.scoring().states.factory


def load_warm_function(devnull: Any) -> WarmFunction:
    # The Powertools Logger binds its stream when the module is imported: bind it to /dev/null
    # (formatting still costs what it costs in Lambda, where CloudWatch takes the lines).
    with contextlib.redirect_stdout(devnull):
        app = load_function("score_event")
    function = WarmFunction(app=app, devnull=devnull)
    scoring = app.scoring()
    score_records = scoring.score_records

    def capture(records: Any) -> Any:
        report = score_records(records)
        function.reports.append(report)
        return report

    scoring.score_records = capture  # an instance attribute: only to read the ScoringReport
    for service in SERVICES:
        function.clock.attach(function.factory.client(service))
    return function


# ------------------------------------------------------------------------------------- measures


def sqs_batch(readings: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    bodies = [json.dumps(r) for r in readings]
    return sqs_event(bodies, [f"{tag}-{i:05d}" for i in range(len(bodies))])


def run_batch(function: WarmFunction, source: FreshReadings, size: int, tag: str) -> Sample:
    response, sample = function.invoke(sqs_batch(source.take(size), tag))
    report = function.reports[-1]
    scored = report.counts()["readings_scored"]
    if response != {"batchItemFailures": []} or scored != size:
        raise RuntimeError(f"batch of {size} not fully scored: {response}, {report.counts()}")
    return sample


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def core_baseline(bundle_dir: Path, source: FreshReadings) -> tuple[float, float]:
    """records/s of the core alone, in CPU time of this thread (moto idles meanwhile): record by
    record, and batched (the handler's way)."""
    bundle = load_bundle(bundle_dir)
    limits = ContractLimits()
    bodies = [json.dumps(r) for r in source.take(1000)]

    def record_by_record(chunk: list[str]) -> float:
        now = datetime.now(UTC)
        states: dict[str, DeviceState] = {}
        started = time.thread_time()
        for body in chunk:
            parsed = parse_payload(body, limits=limits, now=now)
            outcome = score_readings(bundle, parsed.readings, states, threads=1)
            states.update(outcome.states)
        return time.thread_time() - started

    def batched(chunk: list[str]) -> float:
        now = datetime.now(UTC)
        started = time.thread_time()
        readings = []
        for body in chunk:
            readings.extend(parse_payload(body, limits=limits, now=now).readings)
        outcome = score_readings(bundle, readings, {}, threads=1)
        elapsed = time.thread_time() - started
        assert len(outcome.scored) == len(chunk), "baseline readings were rejected"
        return elapsed

    record_by_record(bodies[:50])
    batched(bodies)
    one_by_one = median([record_by_record(bodies) for _ in range(3)])
    together = median([batched(bodies) for _ in range(7)])
    return len(bodies) / one_by_one, len(bodies) / together


def breakdown_batch(function: WarmFunction, source: FreshReadings, batches: int = 9) -> None:
    """Batch 1,000 without a profiler: the handler thread's CPU in each port and core call.

    CPU time (``time.thread_time``), not wall: on a shared machine wall time counts what other
    processes (and moto's threads here) took. A port's CPU is shown outside its HTTP round trips
    (what the target row counts: encoding, gzip, botocore). The wrappers are instance (and
    module) attributes set here and removed afterwards; the measured runs above never have them.
    """
    import zaindari.event_scoring as use_case_module

    scoring = function.app.scoring()
    clock = function.clock
    spent: dict[str, list[float]] = defaultdict(list)  # label -> per batch: CPU outside round trips
    current: dict[str, float] = {}

    def timed(label: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wait_cpu0, cpu0 = clock.wait_cpu, time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu = time.thread_time() - cpu0 - (clock.wait_cpu - wait_cpu0)
                current[label] = current.get(label, 0.0) + cpu

        return wrapper

    ports = (
        ("state store load (BatchGetItem, state JSON)", scoring.states, "load"),
        ("state store save (BatchWriteItem x1-2, state JSON)", scoring.states, "save"),
        ("lake write (raw rows, JSON Lines, gzip, 2 PutObject)", scoring.lake, "write"),
        ("alerts publish (SNS, EventBridge)", scoring.alert_sink, "publish"),
        ("dead letters", scoring.rejects, "reject"),
    )
    if scoring.summaries is not None:
        ports += (("drift summaries (PutObject)", scoring.summaries, "write"),)
    core = (
        ("parse_payloads (contract, 1,000 records)", "parse_payloads"),
        ("reading_key_hashes (idempotency keys)", "reading_key_hashes"),
        ("score_readings (features, ONNX, rules, score rows)", "score_readings"),
    )
    originals = {name: getattr(use_case_module, name) for _label, name in core}
    try:
        for label, port, method in ports:
            setattr(port, method, timed(label, getattr(port, method)))
        for label, name in core:
            setattr(use_case_module, name, timed(label, originals[name]))
        samples = []
        for i in range(batches):
            current.clear()
            samples.append(run_batch(function, source, 1000, f"breakdown{i}"))
            for label, cpu in current.items():
                spent[label].append(cpu)
    finally:
        for _label, port, method in ports:
            port.__dict__.pop(method, None)
        for _label, name in core:
            setattr(use_case_module, name, originals[name])
    own = median([s.own_cpu for s in samples])
    steps = [(label, median(spent[label])) for label, *_ in (*core, *ports) if label in spent]
    info(f"batch 1,000 broken down: handler thread CPU outside the HTTP round trips (medians of {batches}):")
    info(f"  {own * 1000:7.2f} ms  own work (the target row's measure)")
    for label, cpu in steps:
        info(f"  {cpu * 1000:7.2f} ms    {label}")
    rest = own - sum(cpu for _label, cpu in steps)
    info(f"  {rest * 1000:7.2f} ms    the rest: the use case's own code, the adapter, logs and metrics")


# (label, file suffix, function) whose cumulative time the profile summary reports
PROFILE_STEPS = (
    ("handler (lambda_handler, all decorators)", "score_event/app.py", "lambda_handler"),
    ("  Powertools partial batch response (retries only)", "batch/decorators.py", "process_partial_response"),
    ("  metrics and log line (_observe)", "score_event/app.py", "_observe"),
    ("  use case: EventScoring.score_records", "zaindari/event_scoring.py", "score_records"),
    ("    parse_payloads (contract, 1,000 records)", "zaindari/contract.py", "parse_payloads"),
    ("    reading_key_hashes (idempotency keys)", "zaindari/event_scoring.py", "reading_key_hashes"),
    ("    score_readings (features, ONNX, rules)", "zaindari/pipeline.py", "score_readings"),
    ("      compute_features", "zaindari/features.py", "compute_features"),
    ("      ONNX run (Scorer.score)", "zaindari/scoring.py", "score"),
    ("      evaluate_alerts", "zaindari/alerting.py", "evaluate_alerts"),
    ("    DeviceState.remember (x1,000)", "zaindari/pipeline.py", "remember"),
    ("    state store load (BatchGetItem + JSON)", "infra/aws_ports.py", "load"),
    ("    state store save (BatchWriteItem + JSON)", "infra/aws_ports.py", "save"),
    ("    lake write (jsonl.gz encode + 2-4 PutObject)", "infra/aws_ports.py", "write"),
    ("      _jsonl_gz (JSON lines + gzip)", "infra/aws_ports.py", "_jsonl_gz"),
    ("    alerts publish (SNS + EventBridge)", "infra/aws_ports.py", "publish"),
    ("  botocore API calls (all)", "botocore/client.py", "_make_api_call"),
)


def profile_batch(function: WarmFunction, source: FreshReadings) -> None:
    """Where the handler's time goes at batch 1,000: the main steps, then self time by area."""
    event = sqs_batch(source.take(1000), "profile")
    profiler = cProfile.Profile()
    with contextlib.redirect_stdout(function.devnull):
        started = time.perf_counter()
        profiler.enable()
        function.app.lambda_handler(event, LambdaContext())
        profiler.disable()
        wall = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    info(
        f"profile, one SQS batch of 1,000 under cProfile ({wall * 1000:.0f} ms; cProfile slows "
        "Python-heavy code more than C, so read shares, not absolute times): cumulative time of the main steps"
    )
    handler_total = _cumulative(stats, "score_event/app.py", "lambda_handler") or wall
    for label, suffix, name in PROFILE_STEPS:
        seconds = _cumulative(stats, suffix, name)
        if seconds is not None:
            info(f"  {seconds * 1000:8.1f} ms  {100 * seconds / handler_total:5.1f}%  {label}")
    by_area: dict[str, float] = defaultdict(float)
    for (filename, _line, name), (_cc, _nc, tottime, _ct, callers) in stats.items():
        if filename == "~" and not _is_socket(name) and callers:
            # a builtin (isinstance, zlib, json C code...) is charged to the code that called it
            for (caller_file, _l, caller_name), caller_stats in callers.items():
                by_area[_area(caller_file, caller_name)] += caller_stats[2]
        else:
            by_area[_area(filename, name)] += tottime
    total = sum(by_area.values())
    info("  self time by area (builtins charged to their callers):")
    for area, seconds in sorted(by_area.items(), key=lambda kv: -kv[1])[:12]:
        info(f"  {seconds * 1000:8.1f} ms  {100 * seconds / total:5.1f}%  {area}")


def _cumulative(stats: dict[Any, Any], suffix: str, name: str) -> float | None:
    found = [v[3] for (f, _l, n), v in stats.items() if n == name and suffix in f]
    return max(found) if found else None


def _is_socket(name: str) -> bool:
    return any(word in name for word in ("recv", "sendall", "select", "poll", "connect"))


def _area(filename: str, name: str) -> str:
    if filename == "~":
        return "socket I/O (waiting on moto)" if _is_socket(name) else f"builtin {name[:60]}"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/src/zaindari/" in filename:
        return "zaindari." + filename.split("/src/zaindari/", 1)[1].removesuffix(".py").replace("/", ".")
    if "functions/score_event" in filename:
        return "functions/score_event/app.py"
    return "stdlib " + Path(filename).stem


# ----------------------------------------------------------------------------------- cold start


@dataclass
class ColdRun:
    total: float
    startup: float
    init: float
    first_invoke: float
    cpu: float  # the child's CPU time up to its response (moto's work is in this process, not there)
    other_threads_cpu: float  # of cpu, spent outside the main thread (none expected: nothing runs there)
    aws_wait: float  # of first_invoke, waiting for moto's answers

    @property
    def without_aws_wait(self) -> float:
        return self.total - self.aws_wait


def build_code_asset(tmp: Path) -> Path:
    """score_event's code asset as `make build` and `sam build` make it (the core and app.py with
    their hash-based bytecode): cold starts run from it, as Lambda runs from /var/task (the
    third-party packages come from this venv, as from the layer)."""
    out = tmp / "score_event_asset"
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            "build-ScoreEventFunction",
            f"ARTIFACTS_DIR={out}",
            f"PYTHON={sys.executable}",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def cold_start(
    aws: BenchAws, source: FreshReadings, env: dict[str, str], tmp: Path, code: Path = FUNCTION_DIR
) -> ColdRun:
    event = source.take(1)[0]  # an IoT rule sends the device's JSON as is
    out = tmp / "cold.json"
    out.unlink(missing_ok=True)
    spawned = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(code), json.dumps(event), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"cold start failed ({done.returncode}):\n{done.stderr[-3000:]}")
    t = json.loads(out.read_text())
    if t["result"].get("status") != "scored":
        raise RuntimeError(f"cold start did not score its event: {t['result']}")
    return ColdRun(
        total=t["response"] - spawned,
        startup=t["top"] - spawned,
        init=t["imported"] - t["top"],
        first_invoke=t["response"] - t["imported"],
        cpu=t["cpu"],
        other_threads_cpu=max(t["cpu"] - t["main_cpu"], 0.0),
        aws_wait=t["aws_wait"],
    )


# What any container of this function must import before it can score: the cold start's floor.
FLOOR_IMPORTS = "numpy, pydantic, onnxruntime, boto3"


def import_floor(env: dict[str, str]) -> float:
    """Seconds from spawning a new python to having imported FLOOR_IMPORTS (nothing else)."""
    code = f"import time; import {FLOOR_IMPORTS}; print(time.perf_counter())"
    spawned = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return float(done.stdout.strip()) - spawned


def import_costs(source: FreshReadings, env: dict[str, str], tmp: Path, code: Path = FUNCTION_DIR) -> None:
    """``python -X importtime`` once: the 10 most expensive imports, init vs first invocation."""
    event = source.take(1)[0]
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            str(DRIVER),
            str(code),
            json.dumps(event),
            str(tmp / "i"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )
    phase = "startup"
    entries: list[tuple[int, str, str, int]] = []  # cumulative us, phase, name, depth
    for line in done.stderr.splitlines():
        if line.startswith("--- cold start: "):
            phase = "init" if "init" in line else "1st invoke"
            continue
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cumulative, name = line[len("import time:") :].split("|", 2)
        depth = (len(name) - len(name.lstrip())) // 2
        entries.append((int(cumulative), phase, name.strip(), depth))
    by_phase = Counter[str]()
    for cumulative, where, _name, depth in entries:
        if depth == 0:
            by_phase[where] += cumulative
    split = ", ".join(f"{p} {us / 1000:.0f} ms" for p, us in by_phase.items())
    info(f"python -X importtime (one run; top-level imports: {split}); top 10 by cumulative time:")
    roots = [e for e in entries if e[3] <= 1]
    for cumulative, where, name, depth in sorted(roots, key=lambda e: -e[0])[:10]:
        info(f"  {cumulative / 1000:8.1f} ms  [{where:10}] {'  ' * depth}{name}")
    # the largest single import of each top-level package: what it costs to bring that package in
    # (with whatever it imports that was not loaded yet), wherever it was first needed
    by_package: dict[str, tuple[int, str, str]] = {}
    for cumulative, where, name, _depth in entries:
        package = name.split(".", 1)[0]
        if package not in ("app", "encodings") and cumulative > by_package.get(package, (0, "", ""))[0]:
            by_package[package] = (cumulative, where, name)
    info("  by package (largest single import of each, dependencies not yet loaded included):")
    for package, (cumulative, where, name) in sorted(by_package.items(), key=lambda kv: -kv[1][0])[:10]:
        info(f"  {cumulative / 1000:8.1f} ms  [{where:10}] {package:22} (via {name})")


def seed_bundle_in_s3(aws: BenchAws, bundle_dir: Path) -> str:
    s3 = aws.factory.client("s3")
    prefix = "models/plant-anomaly/bench/"
    for path in sorted(bundle_dir.iterdir()):
        if path.is_file():
            s3.put_object(Bucket=aws.lake, Key=prefix + path.name, Body=path.read_bytes())
    return f"s3://{aws.lake}/{prefix}"


COLD_PROFILE_STEPS = (
    ("lambda_handler (first call)", "/app.py", "lambda_handler"),
    ("  imports during the call (onnxruntime, boto3...)", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("  build_event_scoring (composition root)", "infra/wiring.py", "build_event_scoring"),
    ("  ClientFactory.client (botocore session, DynamoDB and S3 clients)", "infra/aws.py", "client"),
    ("  load_bundle (manifest, hashes)", "zaindari/bundle.py", "load_bundle"),
    ("  get_scorer (ONNX session)", "zaindari/scoring.py", "get_scorer"),
    ("  parse_payload", "zaindari/contract.py", "parse_payload"),
    ("  score_readings", "zaindari/pipeline.py", "score_readings"),
    ("  botocore API calls (all)", "botocore/client.py", "_make_api_call"),
    ("  socket reads (waiting on moto)", "~", "<method 'recv_into' of '_socket.socket' objects>"),
)


def cold_start_rows(
    aws: BenchAws, source: FreshReadings, bundle_dir: Path, tmp: Path
) -> list[dict[str, Any]]:
    """Cold starts in new processes (moto keeps serving from this one), variants interleaved so
    that a busy moment on the machine hits every variant alike."""
    env = child_env(aws.env)
    s3_model = seed_bundle_in_s3(aws, bundle_dir)
    code = build_code_asset(tmp)
    cold_start(aws, source, env, tmp, code)  # unmeasured: fills the OS page cache, like a warm host
    local: list[ColdRun] = []
    from_s3: list[ColdRun] = []
    no_pyc: list[ColdRun] = []
    floor: list[float] = []
    for i in range(COLD_RUNS):
        local.append(cold_start(aws, source, env, tmp, code))
        floor.append(import_floor(env))
        if i < COLD_VARIANT_RUNS:
            cache = tmp / f"model-cache-{i}"  # empty: a new container downloads the bundle
            s3_env = {**env, "ZAINDARI_MODEL_PATH": s3_model, "ZAINDARI_MODEL_CACHE_DIR": str(cache)}
            from_s3.append(cold_start(aws, source, s3_env, tmp, code))
            # a package shipped without bytecode: each cold start compiles every module it imports
            prefix = tmp / f"pycache-{i}"
            prefix.mkdir()
            no_pyc_env = {**env, "PYTHONPYCACHEPREFIX": str(prefix), "PYTHONDONTWRITEBYTECODE": "1"}
            no_pyc.append(cold_start(aws, source, no_pyc_env, tmp, code))
    cold = median([r.total for r in local]) * 1000
    startup, init, first = (
        median([getattr(r, k) for r in local]) * 1000 for k in ("startup", "init", "first_invoke")
    )
    info(
        f"cold start, local bundle folder, median of {COLD_RUNS}: {cold:.0f} ms = interpreter start "
        f"{startup:.0f} + import handler module {init:.0f} + first IoT event {first:.0f} ms; "
        f"runs: {', '.join(f'{r.total * 1000:.0f}' for r in local)} ms; child CPU "
        f"{', '.join(f'{r.cpu * 1000:.0f}' for r in local)} ms (wall above CPU: the machine's load, "
        "and the wait on moto)"
    )
    floor_ms = median(floor) * 1000
    rows = [
        row(f"floor: new python + import {FLOOR_IMPORTS} (median of {COLD_RUNS})", floor_ms, "ms"),
        row(
            f"cold start to 1st IoT response, local bundle (median of {COLD_RUNS})",
            cold,
            "ms",
            baseline=floor_ms,
            ratio=cold / floor_ms,
            target=f"<= {TARGET_COLD_MS:g}",
            passed=cold <= TARGET_COLD_MS,
        ),
        row(
            f"cold start CPU, child process to its response (median of {COLD_RUNS})",
            median([r.cpu for r in local]) * 1000,
            "ms",
        ),
        row(
            "  cold: CPU outside the main thread (e.g. an OpenBLAS pool spinning)",
            median([r.other_threads_cpu for r in local]) * 1000,
            "ms",
        ),
        row("  cold: interpreter start", startup, "ms"),
        row("  cold: import handler module (init)", init, "ms"),
        row("  cold: first invocation (model, clients, AWS)", first, "ms"),
        row(
            "  cold: first invocation, of which waiting on AWS (moto)",
            median([r.aws_wait for r in local]) * 1000,
            "ms",
        ),
        row(
            f"cold start less the AWS wait (median of {COLD_RUNS})",
            median([r.without_aws_wait for r in local]) * 1000,
            "ms",
        ),
        row(
            f"cold start, model from s3:// (median of {COLD_VARIANT_RUNS})",
            median([r.total for r in from_s3]) * 1000,
            "ms",
        ),
        row(
            f"cold start, no .pyc at all (median of {COLD_VARIANT_RUNS})",
            median([r.total for r in no_pyc]) * 1000,
            "ms",
        ),
    ]
    profile_file = tmp / "first-invocation.prof"
    cold_start(aws, source, {**env, "BENCH_COLD_PROFILE": str(profile_file)}, tmp, code)
    stats = pstats.Stats(str(profile_file)).stats  # type: ignore[attr-defined]
    info("first invocation of a cold process under cProfile (cumulative):")
    for label, suffix, name in COLD_PROFILE_STEPS:
        seconds = _cumulative(stats, suffix, name)
        if seconds is not None:
            info(f"  {seconds * 1000:8.1f} ms  {label}")
    import_costs(source, env, tmp, code)
    return rows


def drift_summary_cost(bundle_dir: Path, source: FreshReadings) -> dict[str, Any]:
    """What the drift window summaries (zaindari.drift.summarize_table, inside score_table) cost on
    a batch of 1,000 readings, against the whole batched core (parse + score_readings, summaries
    included) on the same batch; medians of 30 runs each."""
    from zaindari.drift import baseline_of, summarize_table
    from zaindari.features import SensorTable

    bundle = load_bundle(bundle_dir)
    baseline = baseline_of(bundle)
    if baseline is None:
        raise RuntimeError("the example bundle has no baseline.json")
    limits = ContractLimits()
    bodies = [json.dumps(r) for r in source.take(1000)]
    now = datetime.now(UTC)
    readings = [x for body in bodies for x in parse_payload(body, limits=limits, now=now).readings]
    table = SensorTable.from_readings(readings, bundle.spec.sensor_names)
    matrix = np.random.default_rng(0).normal(size=(len(readings), len(baseline.features))).astype(np.float32)
    rows = np.arange(len(readings))
    score = np.abs(matrix[:, 0]).astype(np.float64)
    alerts = score > 2.0

    def summaries() -> float:
        started = time.perf_counter()
        summarize_table(
            baseline,
            model_version=bundle.model_version,
            devices=table.device_id,
            timestamps=table.timestamp,
            sensors=table.sensors,
            rows=rows,
            matrix=matrix,
            score=score,
            alerts=alerts,
        )
        return time.perf_counter() - started

    def core() -> float:
        started = time.perf_counter()
        parsed = [x for body in bodies for x in parse_payload(body, limits=limits, now=now).readings]
        score_readings(bundle, parsed, {}, threads=1)
        return time.perf_counter() - started

    for _ in range(3):
        summaries(), core()
    summary_s = median([summaries() for _ in range(30)])
    core_s = median([core() for _ in range(30)])
    share = summary_s / core_s
    info(
        f"drift summaries of 1,000 readings: {summary_s * 1000:.2f} ms; batched core (parse + "
        f"score_readings, summaries included) {core_s * 1000:.2f} ms: {share:.1%}"
    )
    return row(
        "drift summaries / batched core, 1,000 readings",
        share * 100,
        "%",
        baseline=core_s * 1000,
        ratio=share,
        target="<= 5",
        passed=share <= 0.05,
    )


# ----------------------------------------------------------------------------------------- main


def main() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zaindari-bench-") as tmp_name, open(os.devnull, "w") as devnull:
        tmp = Path(tmp_name)
        bundle_dir = fit_example_bundle(tmp / "bundle")
        aws = start_aws(bundle_dir)
        try:
            apply_env(aws.env)
            source = FreshReadings()
            info(
                f"moto at {aws.server.endpoint_url} ({'in this process' if aws.server.owned else 'another process'}); model: local bundle {bundle_dir}; "
                f"readings: simulated plant, {source.devices} devices, replayed forward in time; onnx threads 1; "
                f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
            )

            # the function's module sets this when imported (below); the baseline runs under it too
            retain_freed_heap()

            # b. baseline: the core alone, no AWS
            per_record, core_batched = core_baseline(bundle_dir, source)
            rows.append(row("core record by record (parse + score_readings each), CPU", per_record, "rec/s"))
            rows.append(
                row(
                    "core batched, 1,000 (parse each + one score_readings), CPU",
                    core_batched,
                    "rec/s",
                    baseline=per_record,
                    ratio=core_batched / per_record,
                )
            )

            rows.append(drift_summary_cost(bundle_dir, source))

            # a. warm handler, SQS batches
            function = load_warm_function(devnull)
            for i in range(3):
                run_batch(function, source, 100, f"warm{i}")
            samples: dict[int, list[Sample]] = {}
            for size, reps in BATCHES:
                for i in range(WARMUP_CALLS):
                    run_batch(function, source, size, f"w{size}-{i}")
                samples[size] = [run_batch(function, source, size, f"b{size}-{i}") for i in range(reps)]
            for size, _reps in BATCHES:
                got = samples[size]
                wall = median([s.wall for s in got])
                wait = median([s.aws_wait for s in got])
                own = median([s.own for s in got])
                botocore = median([s.aws_calls - s.aws_wait for s in got])
                use_case = median([s.report_work for s in got])
                ports_cpu = median([s.report_io - s.aws_wait for s in got])
                adapter = median([s.wall - s.report_work - s.report_io for s in got])
                own_cpu = median([s.own_cpu for s in got])
                faults = median([s.faults for s in got])
                info(
                    f"SQS batch {size:>4} (medians of {len(got)}): wall {wall * 1000:7.2f} ms = AWS wait "
                    f"{wait * 1000:6.2f} + own work {own * 1000:6.2f} ms; own work = use case "
                    f"{use_case * 1000:.2f} (ScoringReport.work_seconds) + ports' CPU {ports_cpu * 1000:.2f} "
                    f"(encoding, gzip, botocore {botocore * 1000:.2f}) + adapter {adapter * 1000:.2f} "
                    "(Powertools parsing, batch response, logs, metrics)"
                )
                info(
                    f"SQS batch {size:>4}: handler thread CPU {median([s.cpu for s in got]) * 1000:.2f} ms, of "
                    f"which in HTTP round trips {median([s.aws_wait_cpu for s in got]) * 1000:.2f}: own work "
                    f"{own_cpu * 1000:.2f} ms CPU (min {min(s.own_cpu for s in got) * 1000:.2f}), of which "
                    f"in AWS SDK calls outside the round trips {median([s.sdk_cpu for s in got]) * 1000:.2f}; "
                    f"minor page faults {faults:g}"
                )
                rows.append(row(f"SQS batch {size}: wall", size / wall, "rec/s"))
                rows.append(row(f"SQS batch {size}: AWS wait", wait * 1000, "ms/batch"))
                if size != 1000:
                    rows.append(row(f"SQS batch {size}: own work (wall - AWS wait)", size / own, "rec/s"))
                    rows.append(row(f"SQS batch {size}: own work, CPU", size / own_cpu, "rec/s"))
                    continue
                # On a shared machine the wall figure counts time other processes (and moto's
                # threads here) held the core; the target is judged on CPU time, on one core.
                rows.append(
                    row(
                        f"SQS batch {size}: own work (wall - AWS wait)",
                        size / own,
                        "rec/s",
                        baseline=per_record,
                        ratio=size / own / per_record,
                    )
                )
                own_rate = size / own_cpu
                rows.append(
                    row(
                        f"SQS batch {size}: own work, CPU",
                        own_rate,
                        "rec/s",
                        baseline=per_record,
                        ratio=own_rate / per_record,
                        target=f">= {TARGET_OWN_RECORDS_PER_S:,}",
                        passed=own_rate >= TARGET_OWN_RECORDS_PER_S,
                    )
                )
                # where the target row's CPU goes: the SDK's share (serialising, signing, parsing
                # the ~10 requests) is part of it, as in a real function; shown, not subtracted
                sdk_cpu = median([s.sdk_cpu for s in got])
                rows.append(
                    row(
                        f"SQS batch {size}: own work CPU, of which in AWS SDK calls",
                        sdk_cpu * 1000,
                        "ms/batch",
                    )
                )
                rows.append(
                    row(
                        f"SQS batch {size}: own work CPU less the AWS SDK's (not the target)",
                        size / max(own_cpu - sdk_cpu, 1e-9),
                        "rec/s",
                    )
                )
                rows.append(
                    row(
                        "SQS batch 1000 own work CPU / core record by record",
                        own_rate / per_record,
                        "x",
                        baseline=per_record,
                        ratio=own_rate / per_record,
                        target=f">= {TARGET_OWN_VS_BASELINE:g}",
                        passed=own_rate / per_record >= TARGET_OWN_VS_BASELINE,
                    )
                )

            # c. AWS requests per batch of 1,000 (the worst of the measured batches)
            worst = max(samples[1000], key=lambda s: sum(s.requests.values()))
            total_requests = sum(worst.requests.values())
            typical = median([sum(s.requests.values()) for s in samples[1000]])
            breakdown = ", ".join(f"{op} {n}" for op, n in sorted(worst.requests.items()))
            info(f"AWS requests, worst batch of 1,000: {total_requests} = {breakdown} (median {typical:g})")
            rows.append(
                row(
                    "AWS requests per batch of 1,000 (worst)",
                    total_requests,
                    "requests",
                    target=f"<= {TARGET_REQUESTS_PER_1000}",
                    passed=total_requests <= TARGET_REQUESTS_PER_1000,
                )
            )

            # d. one HTTP reading through the handler
            http: list[Sample] = []
            for i in range(10 + HTTP_CALLS):
                response, sample = function.invoke(
                    http_event("POST", "/readings", json.dumps(source.take(1)[0]))
                )
                if response.get("statusCode") != 200:
                    raise RuntimeError(f"HTTP reading not scored: {response}")
                if i >= 10:
                    http.append(sample)
            http_requests = median([sum(s.requests.values()) for s in http])
            for name, values in (("total", [s.wall for s in http]), ("own work", [s.own for s in http])):
                for q in (0.5, 0.99):
                    rows.append(
                        row(f"HTTP 1 reading p{round(q * 100)} {name}", percentile(values, q) * 1000, "ms")
                    )
            info(
                f"HTTP POST /readings, one reading, N={len(http)}: AWS wait median "
                f"{median([s.aws_wait for s in http]) * 1000:.2f} ms, {http_requests:g} requests per call"
            )

            breakdown_batch(function, source)
            profile_batch(function, source)

            rows += cold_start_rows(aws, source, bundle_dir, tmp)
        finally:
            aws.server.stop()
    info(
        f"bench_score_event took {time.perf_counter() - began:.0f} s; load average now "
        f"{os.getloadavg()[0]:.2f} (other work on the machine shows up as noise in every figure)"
    )
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(main())
