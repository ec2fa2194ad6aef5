"""kill -9 the edge box many times (the suite's test, ``tests/functions/test_edge_kill9.py``, with
more kills): where the kills landed, and what arrived in the embedded AWS afterwards.

The box (buffer, scoring, shipper to moto through a relay that is up or down per run) is killed
BENCH_KILL9_RUNS times (default 200), at named points (inside a write transaction, inside
compaction, after the shipper's plan, after a send and before the deletion...) or after random
delays, restarted each time; after each kill the SQLite file must pass ``PRAGMA integrity_check``
and hold every answered reading; at the end every reading must be in the lake once (or in its
hour's compacted summary), in order, and every alert on the bus. The gateway sends one reading per
request (1,441 requests), so the feed outlasts the kills. The rows: kills, kills per point, the
readings shipped raw and compacted, alert events (duplicates: EventBridge is at least once), and
the wall time per kill. Any broken invariant fails the benchmark (an AssertionError).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import info_line, result_row
from _setup import ROOT  # noqa: F401  (puts the repository root on sys.path: the tests package)
from tests.functions.conftest import EmbeddedAws
from tests.functions.test_edge_kill9 import run_kills
from tests.support import fit_example_bundle

from zaindari.infra.local_aws import start_local_aws

NAME = "edge_kill9"
RUNS = int(os.environ.get("BENCH_KILL9_RUNS", "200"))
SEED = int(os.environ.get("BENCH_KILL9_SEED", "2026"))


def main() -> list[dict[str, Any]]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's one line per request
    server = start_local_aws("127.0.0.1", 0, reuse_existing=False)
    try:
        aws = EmbeddedAws(
            server=server,
            endpoint_url=server.endpoint_url,
            env=server.environment(),
            factory=server.client_factory(),
        )
        with tempfile.TemporaryDirectory(prefix="zaindari-bench-kill9-") as tmp_name:
            tmp = Path(tmp_name)
            bundle_dir = fit_example_bundle(tmp / "bundle")
            box = tmp / "box"
            box.mkdir()
            # one reading per request makes small rows: a smaller bound, so offline runs compact
            report, figures = run_kills(aws, box, bundle_dir, RUNS, SEED, per_request=1, max_bytes=12 * 1024)
    finally:
        server.stop()
    where = report.where()
    # check_delivery asserted it already; the row shows the figure
    off = figures["readings"] - figures["raw_rows"] - figures["compacted_readings"]
    points = sum(1 for k in report.kills if k.how == "point")
    info_line(
        f"{len(report.kills)} kills (seed {SEED}) in {report.seconds:.0f} s; where: {json.dumps(dict(sorted(where.items())))}"
    )
    info_line(f"delivery: {json.dumps(figures)}")
    rows = [
        result_row(NAME, "kills -9, each restarted and checked", len(report.kills), "kills"),
        result_row(NAME, "kills at a named point (the rest: random delays)", points, "kills"),
        result_row(NAME, "readings shipped raw, exactly once", figures["raw_rows"], "readings",
                   baseline=figures["readings"], ratio=figures["raw_rows"] / figures["readings"]),
        result_row(NAME, "readings compacted (buffer full while offline), counted once",
                   figures["compacted_readings"], "readings"),
        result_row(NAME, "readings lost or doubled (expected - raw - compacted)", off, "readings",
                   target="0", passed=off == 0),
        result_row(NAME, "alert events on the bus (expected alerts as baseline)", figures["alert_events"],
                   "events", baseline=figures["alerts"], ratio=figures["alert_events"] / figures["alerts"]),
        result_row(NAME, "seconds per kill (restart, run, checks)", report.seconds / len(report.kills), "s"),
    ]  # fmt: skip
    rows += [result_row(NAME, f"kills at {point}", count, "kills") for point, count in sorted(where.items())]
    return rows


if __name__ == "__main__":
    for r in main():
        info_line(json.dumps(r))
