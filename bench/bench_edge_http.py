"""The edge server against `mlflow models serve`: one-reading HTTP requests on loopback.

Both servers serve the same ONNX model (the example bundle's ``model.onnx``; mlflow gets it saved
with ``mlflow.onnx.save_model`` and serves it with ``--env-manager local`` from ``.tools/mlflow``,
made by ``make tool-mlflow``). mlflow runs its default, one uvicorn worker process; the edge
on BENCH_EDGE_INTERFACE (``asgi``, the default of ``zaindari edge serve``: uvicorn, one process
and one event loop; or ``rsgi``: granian, BENCH_EDGE_WORKERS worker processes, default 1,
``zaindari edge serve --workers N`` sharing the box's buffer; or ``wsgi``; see
zaindari.edge.server); both are up at once and
measured in turn at each level, with the same client, ``wrk`` (C, from Debian: ``make bench-tools``; a Python client tops out near
the servers' own rate on 2 cores): WRK_THREADS threads holding 8, then 32 keep-alive connections, one
request in flight on each, for SECONDS after a warm-up; every request a different reading. What each request does:

* edge ``POST /function/score-event``: a raw reading (bearer token checked, contract, device
  state and windows, one ONNX call, alert policy; device state, scores, raw telemetry, alerts and
  drift summaries written to the box's SQLite buffer, ``synchronous=FULL``: on disk before the
  answer; no uplink, so nothing ships during the run);
* mlflow ``POST /invocations``: ``{"inputs": {"features": [[14 floats]]}}``, the reading's feature
  vector already computed (mlflow does inference only).

Targets (issue 8): edge requests/s >= 3x mlflow's, edge p99 below mlflow's, peak RSS of the edge
scoring process (the worker, VmHWM) <= 200 MB. Environment: BENCH_EDGE_SECONDS (8),
BENCH_EDGE_CLIENTS (connection counts, default "8,32,64"; the targets apply to the first).
The edge's group sizes at each level (how many concurrent requests were scored together, from
score-event's ``GET``) are printed with its figures.

Two more figures make the requests/s readable on a shared machine: the CPU each server spends per
request (user + system time of all its processes over the run, from ``/proc``, divided by the
requests answered: steady under load, where requests/s is not), and the ceiling of the HTTP
servers themselves, a hello-world WSGI app behind the edge's granian and behind gunicorn
``gthread`` (the edge's server before), with the same client and connections.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import info_line, result_row
from _setup import ROOT, FreshReadings
from tests.edge_support import edge_serve_env
from tests.support import fit_example_bundle, http_call, start_server, stop_server, zaindari_cli

from zaindari.bundle import load_bundle
from zaindari.contract import parse_payload
from zaindari.features import SensorTable, compute_features
from zaindari.infra.http_server import free_port

NAME = "edge_http"
SECONDS = float(os.environ.get("BENCH_EDGE_SECONDS", "8"))
WARMUP_SECONDS = 2.0
#: keep-alive connections (concurrent requests): the targets apply to the first level
LEVELS = tuple(int(x) for x in os.environ.get("BENCH_EDGE_CLIENTS", "8,32,64").split(","))
WRK_THREADS = 2
#: readings each level may send (none twice): more than the edge answers in SECONDS
PER_LEVEL = int(12_000 * SECONDS)
#: granian worker processes of the edge server (``zaindari edge serve --workers``), sharing its buffer
WORKERS = int(os.environ.get("BENCH_EDGE_WORKERS", "1"))
#: interface of the edge server (``zaindari edge serve --interface``; its default: asgi, uvicorn)
INTERFACE = os.environ.get("BENCH_EDGE_INTERFACE", "asgi" if WORKERS == 1 else "rsgi")
WRK_SCRIPT = Path(__file__).resolve().parent / "edge_http.lua"
MLFLOW_BIN = ROOT / ".tools" / "mlflow" / "bin"
TOKEN = "bench-token"


def load(
    port: int, path: str, bodies: list[bytes], headers: dict[str, str], seconds: float, connections: int
) -> dict[str, float]:
    """wrk (WRK_THREADS threads, ``connections`` keep-alive connections) posting ``bodies`` for ``seconds``:
    requests/s, p50 and p99 latency (ms), errors (non-2xx answers and socket errors)."""
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
        f.write(b"\n".join(bodies) + b"\n")
        bodies_file = f.name
    try:
        env = {
            **os.environ,
            "BODIES_FILE": bodies_file,
            "WRK_THREADS": str(WRK_THREADS),
            "HEADERS": "|".join(f"{k}: {v}" for k, v in headers.items()),
        }
        result = subprocess.run(
            ["wrk", "-t", str(WRK_THREADS), "-c", str(connections), "-d", f"{seconds:.0f}s", "--timeout", "10s",
             "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}{path}"],
            env=env, capture_output=True, text=True, check=True, timeout=seconds + 60,
        )  # fmt: skip
    finally:
        os.unlink(bodies_file)
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (threads included), in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def measured(
    pids: list[int], port: int, path: str, bodies: list[bytes], headers: dict[str, str], connections: int
) -> dict[str, Any]:
    """:func:`load` for SECONDS, plus the servers' CPU time per request (µs)."""
    before = cpu_seconds(pids)
    figures = load(port, path, bodies, headers, SECONDS, connections)
    figures["cpu_us"] = (cpu_seconds(pids) - before) / max(figures["requests"], 1) * 1e6
    return figures


def group_sizes(port: int, headers: dict[str, str]) -> dict[int, int]:
    """The edge's groups scored so far, by size (score-event's ``GET``)."""
    status, _, body = http_call(f"http://127.0.0.1:{port}/function/score-event", headers=headers)
    assert status == 200, body
    return {int(k): int(v) for k, v in json.loads(body)["groups"].items()}


def histogram(before: dict[int, int], after: dict[int, int]) -> dict[str, Any]:
    """Groups scored between two :func:`group_sizes`: their count by size, and the mean size
    weighted by request (the group an average request was in)."""
    groups = {g: after.get(g, 0) - before.get(g, 0) for g in sorted(after)}
    groups = {g: n for g, n in groups.items() if n}
    requests = sum(g * n for g, n in groups.items())
    return {
        "groups": groups,
        "request_weighted_mean": sum(g * g * n for g, n in groups.items()) / max(requests, 1),
    }


HELLO_APP = """
def app(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")])
    return [b'{"ok":true}']
"""


HELLO_RSGI_APP = """
async def app(scope, protocol):
    await protocol()
    protocol.response_bytes(200, [("Content-Type", "application/json")], b'{"ok":true}')
"""

HELLO_ASGI_APP = """
async def app(scope, receive, send):
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})
"""

#: the hello-world ceilings measured: uvicorn ASGI (the edge's default), granian RSGI, granian
#: WSGI, gunicorn gthread
CEILINGS = ("uvicorn-asgi", "granian-rsgi", "granian-wsgi", "gunicorn")


def run_ceiling(tmp: Path, bodies: list[bytes], server: str) -> dict[str, float]:
    """A hello-world app (reads the body, answers 11 bytes) behind ``serve_asgi``
    (``uvicorn-asgi``), ``serve_rsgi`` (``granian-rsgi``) or ``serve_wsgi(server=...)`` with the
    edge's threads: what the HTTP server alone allows on this machine now."""
    (tmp / "bench_hello.py").write_text(
        HELLO_APP
        + HELLO_RSGI_APP.replace("def app", "def rsgi_app")
        + HELLO_ASGI_APP.replace("def app", "def asgi_app")
    )
    port = free_port()
    if server == "uvicorn-asgi":
        serve = f"serve_asgi(bench_hello.asgi_app, host='127.0.0.1', port={port})"
    elif server == "granian-rsgi":
        serve = f"serve_rsgi(bench_hello.rsgi_app, host='127.0.0.1', port={port})"
    else:
        serve = (
            f"serve_wsgi(bench_hello.app, host='127.0.0.1', port={port}, threads={max(LEVELS)}, "
            f"server={server.removeprefix('granian-')!r})"
        )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench_hello; "
        f"from zaindari.infra.http_server import serve_asgi, serve_rsgi, serve_wsgi; {serve}"
    )
    process = start_server([sys.executable, "-c", code, str(tmp)], {}, f"http://127.0.0.1:{port}/")
    try:
        headers = {"Content-Type": "application/json"}
        load(port, "/", bodies[:200], headers, WARMUP_SECONDS, LEVELS[0])
        return measured([process.pid, *children(process.pid)], port, "/", bodies[200:], headers, LEVELS[0])
    finally:
        stop_server(process)


@contextlib.contextmanager
def edge_server(tmp: Path, bundle_dir: Path) -> Iterator[Any]:
    """``zaindari edge serve`` on a free port, warmed up; yields (process, port)."""
    env = edge_serve_env(tmp, bundle_dir, TOKEN, data="edge-data")  # first model from MODEL_PATH
    port = free_port()
    process = start_server(
        [
            *zaindari_cli(),
            "edge",
            "serve",
            "--port",
            str(port),
            "--threads",
            str(max(LEVELS)),
            "--interface",
            INTERFACE,
            *(["--workers", str(WORKERS)] if WORKERS != 1 else []),
        ],
        env,
        f"http://127.0.0.1:{port}/healthz",
    )
    try:
        yield process, port
    finally:
        stop_server(process)


@contextlib.contextmanager
def mlflow_server(tmp: Path, bundle_dir: Path) -> Iterator[Any]:
    """``mlflow models serve`` of the bundle's ONNX model on a free port; yields (process, port)."""
    model_dir = tmp / "mlflow-model"
    python = MLFLOW_BIN / "python"
    subprocess.run(
        [str(python), "-c", "import sys, onnx, mlflow.onnx; mlflow.onnx.save_model(onnx.load(sys.argv[1]), sys.argv[2])",
         str(bundle_dir / "model.onnx"), str(model_dir)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    port = free_port()
    # console scripts (mlflow, and the uvicorn it starts by name) carry the absolute shebang of the
    # venv they were installed in, which a moved or shared .tools may not have: run them as modules
    shims = tmp / "mlflow-shims"
    shims.mkdir()
    (shims / "uvicorn").write_text(f'#!/bin/sh\nexec "{python}" -m uvicorn "$@"\n')
    (shims / "uvicorn").chmod(0o755)
    path = f"{shims}:{MLFLOW_BIN}:{os.environ.get('PATH', '')}"
    env = {"PATH": path, "MLFLOW_TRACKING_URI": str(tmp / "mlruns")}
    process = start_server(
        [str(python), "-m", "mlflow", "models", "serve", "-m", str(model_dir), "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env,
        f"http://127.0.0.1:{port}/ping",
        timeout=180,
    )  # fmt: skip
    try:
        yield process, port
    finally:
        stop_server(process)


def run_both(
    tmp: Path, bundle_dir: Path, bodies: list[bytes], vectors: list[bytes]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[float], float, float]:
    """Both servers up at once, measured in turn at each level (edge, then mlflow), so that a
    change of the machine's load during the run falls on both: (edge figures, mlflow figures,
    each edge worker's peak RSS, edge parent peak RSS, mlflow peak RSS)."""
    edge_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    mlflow_headers = {"Content-Type": "application/json"}
    path = "/function/score-event"
    with edge_server(tmp, bundle_dir) as (edge, edge_port), mlflow_server(tmp, bundle_dir) as (ml, ml_port):
        load(edge_port, path, bodies[:200], edge_headers, WARMUP_SECONDS, LEVELS[0])
        load(ml_port, "/invocations", vectors[:200], mlflow_headers, WARMUP_SECONDS, LEVELS[0])
        edge_pids, ml_pids = [edge.pid, *children(edge.pid)], [ml.pid, *children(ml.pid)]
        share = PER_LEVEL  # every level sends readings never sent before
        at_edge, at_mlflow = [], []
        for k, c in enumerate(LEVELS):
            fresh = bodies[200 + k * share : 200 + (k + 1) * share]
            before = group_sizes(edge_port, edge_headers)
            at_edge.append(measured(edge_pids, edge_port, path, fresh, edge_headers, c))
            at_edge[-1]["groups"] = histogram(before, group_sizes(edge_port, edge_headers))
            at_mlflow.append(measured(ml_pids, ml_port, "/invocations", vectors[200:], mlflow_headers, c))
        # (asgi: one process, the server's own, scores: no worker processes)
        worker_peaks = [peak_rss_mib(p) for p in children(edge.pid)] or [peak_rss_mib(edge.pid)]
        parent_peak = peak_rss_mib(edge.pid)
        mlflow_peak = max(peak_rss_mib(p) for p in ml_pids)
    return at_edge, at_mlflow, worker_peaks, parent_peak, mlflow_peak


def where_scored(k: int, workers: int) -> str:
    """Which process a peak RSS is of: asgi's server process scores itself, granian's workers."""
    return "the server process" if INTERFACE == "asgi" else f"worker {k + 1} of {workers}"


def buffered_outcomes(tmp: Path) -> tuple[int, int]:
    """(readings scored, readings dead-lettered) in the edge's buffer after its run: a request the
    edge refuses (a reading too late to deduplicate, say) is cheaper than one it scores, so the
    requests/s mean something only if nearly all were scored."""
    from zaindari.edge.buffer import EdgeBuffer

    buffer = EdgeBuffer(tmp / "edge-data" / "buffer.db")
    try:
        scored = sum(len(body["scores"]) for body in buffer.bodies("scores"))
        rejected = sum(len(body) for body in buffer.bodies("reject"))
    finally:
        buffer.close()
    return scored, rejected


def main() -> list[dict[str, Any]]:
    if not (MLFLOW_BIN / "python").exists():
        raise SystemExit(f"{MLFLOW_BIN}/python is missing: run `make tool-mlflow` first")
    with tempfile.TemporaryDirectory(prefix="zaindari-bench-edge-") as tmp_name:
        tmp = Path(tmp_name)
        bundle_dir = fit_example_bundle(tmp / "bundle")
        bundle = load_bundle(bundle_dir)
        # every level its own readings, more than it can send (a wrk thread past the end sends its
        # first ones again, dead-lettered as too late to deduplicate: not what is measured)
        # (PER_LEVEL: ~12,000 requests/s for SECONDS; drawn in chunks, kept as bytes, not dicts)
        fresh = FreshReadings()
        readings = fresh.take(2000)
        bodies = [json.dumps(r).encode() for r in readings]
        while len(bodies) < 200 + PER_LEVEL * len(LEVELS):
            bodies += [json.dumps(r).encode() for r in fresh.take(20_000)]
        parsed = parse_payload(readings).readings
        features = compute_features(bundle.spec, SensorTable.from_readings(parsed, bundle.spec.sensor_names))
        matrix = features.matrix(bundle.signature.features)
        name = bundle.signature.input.name
        vectors = [json.dumps({"inputs": {name: [row.tolist()]}}).encode() for row in matrix]
        info_line(
            f"edge server: {'one process' if INTERFACE == 'asgi' else f'{WORKERS} worker process(es)'}, {INTERFACE}; wrk on {WRK_THREADS} threads, {' and '.join(map(str, LEVELS))} keep-alive connections, {SECONDS:.0f} s each after {WARMUP_SECONDS:.0f} s warm-up; "
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
        )
        edge, mlflow, worker_peaks, master_peak, mlflow_peak = run_both(tmp, bundle_dir, bodies, vectors)
        scored, rejected = buffered_outcomes(tmp)
        info_line(f"edge buffer after the run: {scored} readings scored, {rejected} dead-lettered")
        ceilings = {server: run_ceiling(tmp, bodies, server) for server in CEILINGS}
        info_line(f"hello-world ceilings, {LEVELS[0]} connections: {ceilings}")
    rows: list[dict[str, Any]] = []
    for level, (at_edge, at_mlflow) in enumerate(zip(edge, mlflow, strict=True)):
        info_line(f"{LEVELS[level]} connections: edge {at_edge}; mlflow {at_mlflow}")
        if at_edge["errors"] or at_mlflow["errors"]:
            raise SystemExit(
                f"non-200 answers: edge {at_edge['errors']:.0f}, mlflow {at_mlflow['errors']:.0f}"
            )
        checked = level == 0
        ratio = at_edge["rps"] / at_mlflow["rps"]
        where = f"{LEVELS[level]} connections"
        rows += [
            result_row(NAME, f"edge score-event, 1 reading/request, {where}", at_edge["rps"], "req/s",
                       baseline=at_mlflow["rps"], ratio=ratio, target=">= 3x mlflow" if checked else None,
                       passed=ratio >= 3 if checked else None),
            result_row(NAME, f"edge p50 latency, {where}", at_edge["p50"], "ms", baseline=at_mlflow["p50"],
                       ratio=at_edge["p50"] / at_mlflow["p50"]),
            result_row(NAME, f"edge p99 latency, {where}", at_edge["p99"], "ms", baseline=at_mlflow["p99"],
                       ratio=at_edge["p99"] / at_mlflow["p99"], target="< mlflow p99" if checked else None,
                       passed=at_edge["p99"] < at_mlflow["p99"] if checked else None),
            result_row(NAME, f"edge server CPU per request, {where}", at_edge["cpu_us"], "µs",
                       baseline=at_mlflow["cpu_us"], ratio=at_edge["cpu_us"] / at_mlflow["cpu_us"]),
            result_row(NAME, f"edge requests per scoring group (request-weighted mean), {where}",
                       at_edge["groups"]["request_weighted_mean"], "requests"),
        ]  # fmt: skip
    for server, ceiling in ceilings.items():
        rows += [
            result_row(NAME, f"{server} hello-world ceiling, {LEVELS[0]} connections", ceiling["rps"], "req/s",
                       baseline=mlflow[0]["rps"], ratio=ceiling["rps"] / mlflow[0]["rps"]),
            result_row(NAME, f"{server} hello-world CPU per request", ceiling["cpu_us"], "µs"),
        ]  # fmt: skip
    return [
        *rows,
        *[result_row(NAME, f"edge scoring process peak RSS ({where_scored(k, len(worker_peaks))}, VmHWM)",
                     peak, "MiB", target="<= 200 MB", passed=peak * 1.048576 <= 200)
          for k, peak in enumerate(worker_peaks)],
        result_row(NAME, "edge scoring processes peak RSS, sum over the workers", sum(worker_peaks), "MiB"),
        result_row(NAME, "edge readings dead-lettered instead of scored (all levels)", rejected, "readings",
                   baseline=scored + rejected, ratio=rejected / max(scored + rejected, 1)),
        result_row(NAME, "edge server parent process peak RSS (VmHWM; asgi: the scoring process)", master_peak,
                   "MiB"),
        result_row(NAME, "mlflow models serve peak RSS (VmHWM, largest process)", mlflow_peak, "MiB"),
    ]  # fmt: skip


if __name__ == "__main__":
    from _report import info_line as _info

    for r in main():
        _info(json.dumps(r))
