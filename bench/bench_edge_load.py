"""The edge server under sustained load: 0 errors and flat memory (issue 10, "Load").

``zaindari edge serve`` (its default, as ``bench_edge_http.py`` runs it: one process, uvicorn) takes
one-reading ``POST /function/score-event`` requests from ``wrk`` (a second process, loopback,
CONNECTIONS keep-alive connections) for SECONDS, every request a reading never sent before (the
box's device state, SQLite buffer and key memory all grow as in service; no uplink). The RSS of
the server's processes (the one that scores, "worker", and the server's own, from
``/proc/<pid>/status``; one and the same under asgi) is sampled every second. Reported:
requests/s, errors (non-2xx answers and socket errors, from wrk), the worker's
RSS at the end of the warm-up, at the end, its maximum, and the slope of a least-squares line
through the samples after the warm-up.

Targets: 0 errors; flat memory: slope below SLOPE_BOUND MiB/min (2 MiB/min: a leak of one
reading's worth of Python objects per request, ~1 KiB at ~100 req/s, would show as ~6 MiB/min)
and end RSS within 10 % of the post-warm-up RSS. Environment: BENCH_EDGE_LOAD_SECONDS (60),
BENCH_EDGE_LOAD_CONNECTIONS (16).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import info_line, result_row
from _setup import FreshReadings
from bench_edge_http import TOKEN, children, load
from tests.edge_support import edge_serve_env
from tests.support import fit_example_bundle, start_server, stop_server, zaindari_cli

from zaindari.infra.http_server import free_port

NAME = "edge_load"
SECONDS = float(os.environ.get("BENCH_EDGE_LOAD_SECONDS", "60"))
CONNECTIONS = int(os.environ.get("BENCH_EDGE_LOAD_CONNECTIONS", "16"))
WARMUP_SECONDS = 10.0
SLOPE_BOUND = 2.0  # MiB per minute


def rss_mib(pid: int) -> float:
    """VmRSS (resident set now) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return 60 * cov / var if var else 0.0


def main() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="zaindari-bench-edge-load-") as tmp_name:
        tmp = Path(tmp_name)
        bundle_dir = fit_example_bundle(tmp / "bundle")
        # enough fresh readings for the whole run at ~1,000 req/s (wrk cycles them after that)
        bodies = [json.dumps(r).encode() for r in FreshReadings(seed=7).take(int(SECONDS * 1000) + 20_000)]
        port = free_port()
        env = edge_serve_env(tmp, bundle_dir, TOKEN, data="edge-data")
        process = start_server(
            [*zaindari_cli(), "edge", "serve", "--port", str(port), "--threads", str(CONNECTIONS)],
            env,
            f"http://127.0.0.1:{port}/healthz",
        )
        try:
            # the process that scores: the server itself under asgi (the default), granian's worker under rsgi
            worker = next(iter(children(process.pid)), process.pid)
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
            figures: dict[str, float] = {}

            def drive() -> None:
                figures.update(load(port, "/function/score-event", bodies, headers, SECONDS, CONNECTIONS))

            driver = threading.Thread(target=drive)
            began = time.monotonic()
            cpu_began = _cpu_seconds(worker)
            driver.start()
            samples: list[tuple[float, float, float]] = []  # seconds, worker MiB, parent MiB
            while driver.is_alive():
                samples.append((time.monotonic() - began, rss_mib(worker), rss_mib(process.pid)))
                driver.join(timeout=1.0)
            cpu = _cpu_seconds(worker) - cpu_began
            buffer_mib = (tmp / "edge-data" / "buffer.db").stat().st_size / 2**20
        finally:
            stop_server(process)
    steady = [(t, w) for t, w, _ in samples if t >= WARMUP_SECONDS]
    after_warmup, end = steady[0][1], steady[-1][1]
    peak = max(w for _, w, _ in samples)
    slope = slope_per_minute(steady)
    parent = [m for _, _, m in samples]
    info_line(
        f"wrk, {CONNECTIONS} keep-alive connections, {SECONDS:.0f} s; {len(samples)} RSS samples (1/s), "
        f"slope after {WARMUP_SECONDS:.0f} s; worker CPU {cpu:.1f} s; buffer file {buffer_mib:.1f} MiB at the end; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    info_line(f"worker RSS (MiB) every 5 s: {[round(w, 1) for _, w, _ in samples[::5]]}")
    return [
        result_row(NAME, f"requests/s, 1 reading/request, {CONNECTIONS} connections", figures["rps"], "req/s"),
        result_row(NAME, "requests answered", figures["requests"], "requests"),
        result_row(NAME, "errors (non-2xx and socket errors)", figures["errors"], "errors",
                   target="0", passed=figures["errors"] == 0),
        result_row(NAME, "p99 latency", figures["p99"], "ms"),
        result_row(NAME, "worker RSS at the start of the load", samples[0][1], "MiB"),
        result_row(NAME, "worker RSS after warm-up", after_warmup, "MiB"),
        result_row(NAME, "worker RSS at the end", end, "MiB", baseline=after_warmup, ratio=end / after_warmup,
                   target="<= 1.10x after warm-up", passed=end <= 1.10 * after_warmup),
        result_row(NAME, "worker RSS max", peak, "MiB"),
        result_row(NAME, "worker RSS slope after warm-up", slope, "MiB/min",
                   target=f"< {SLOPE_BOUND} MiB/min", passed=slope < SLOPE_BOUND),
        result_row(NAME, "server process RSS start / end (asgi: the scoring process itself)", parent[-1], "MiB",
                   baseline=parent[0],
                   ratio=parent[-1] / parent[0]),
    ]  # fmt: skip


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (``/proc/<pid>/stat``), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    for r in main():
        info_line(json.dumps(r))
