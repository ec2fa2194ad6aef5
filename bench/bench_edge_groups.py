"""CPU per one-reading request of the edge's ``score-event``, in one process, by group size.

What ``zaindari edge serve`` does for a group of ``g`` concurrent one-reading requests, without
HTTP: each body through ``parse_http`` (the contract), the group through the box's
``score_records`` as the server's scorer calls it (one buffer transaction committed without
waiting for the disk, ``durable=False``), then the settler's ``settle`` (one fsync of the log),
and each request's JSON answer as the handler builds it (``http_answer`` of its part of the
report, then ``json_response``). CPU is this process's (``time.process_time``), divided by the requests;
rounds of every group size alternate, so a change of the machine's load falls on all of them.
Also per group: SQLite statements run, pages written to the write-ahead log (frames, from its
``-shm`` index), and the bytes of device state written; and the group
scoring's CPU on this thread alone (``time.thread_time``): the server's event loop, without the
box's background threads (the buffer's checkpoints run on one of them since session 7).

The model for the server: CPU per request c(g) ~= a + F / g (a per request, F per group); the
figures for g = 1 and g = 8 give both. Environment: BENCH_EDGE_GROUP_REQUESTS (requests per
group size and round, default 480), BENCH_EDGE_GROUP_ROUNDS (3), BENCH_EDGE_GROUP_SIZES
("1,2,4,8"), BENCH_EDGE_GROUP_DURABLE=1 (each group committed with SQLite's own fsync,
``synchronous=FULL``, instead of ``durable=False`` and ``settle``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import info_line, result_row
from _setup import FreshReadings
from tests.edge_support import edge_serve_env
from tests.support import fit_example_bundle

from zaindari.edge.http import json_response
from zaindari.event_scoring import HttpAnswer, InboundRecord, http_answer

NAME = "edge_groups"
REQUESTS = int(os.environ.get("BENCH_EDGE_GROUP_REQUESTS", "480"))
ROUNDS = int(os.environ.get("BENCH_EDGE_GROUP_ROUNDS", "3"))
SIZES = tuple(int(x) for x in os.environ.get("BENCH_EDGE_GROUP_SIZES", "1,2,4,8").split(","))
DURABLE = os.environ.get("BENCH_EDGE_GROUP_DURABLE", "") == "1"
WARMUP = 2400  # past 512 keys per device of the 4: the states at their steady size


def wal_frames(box: Any) -> int:
    """Frames in the buffer's write-ahead log now (``mxFrame`` of the wal-index header in
    ``<buffer>-shm``, native byte order; 0 before the first write)."""
    try:
        with open(f"{box.buffer.path}-shm", "rb") as shm:
            return int.from_bytes(shm.read(20)[16:20], sys.byteorder)
    except FileNotFoundError:
        return 0


def serve_groups(box: Any, bodies: list[bytes], g: int, stats: dict[str, float]) -> None:
    """Answer ``bodies`` as the server would, ``g`` concurrent requests per group."""
    scoring = box.scoring
    for begin in range(0, len(bodies), g):
        before = wal_frames(box)  # (outside the timed parts)
        t0 = time.process_time()
        records = []
        for k, body in enumerate(bodies[begin : begin + g]):
            readings = scoring.parse_http(body)
            assert not isinstance(readings, HttpAnswer), readings.body
            records.append(InboundRecord(f"r{begin + k}", readings, "http"))
        t1 = time.process_time()
        u1 = time.thread_time()
        if DURABLE:
            report = box.score_records(records)
        else:  # the server's scorer and settler threads, one after the other
            report = box.score_records(records, durable=False)
            box.settle()
        t2 = time.process_time()
        stats["score_thread"] += time.thread_time() - u1
        for record in records:
            answer = http_answer(report.for_record(record.record_id))
            assert answer.status == 200 and len(answer.body["scores"]) == 1, answer.body
            json_response(answer.status, answer.body, answer.headers)["body"].encode()
        t3 = time.process_time()
        after = wal_frames(box)  # a log started over since holds this group's frames only
        stats["frames"] = stats.get("frames", 0.0) + (after - before if after >= before else after)
        stats["parse"] += t1 - t0
        stats["score"] += t2 - t1
        stats["answer"] += t3 - t2


def main() -> list[dict[str, Any]]:
    from zaindari.edge.wiring import edge_box, stop_edge_box
    from zaindari.settings import Settings

    with tempfile.TemporaryDirectory(prefix="zaindari-bench-groups-") as tmp_name:
        tmp = Path(tmp_name)
        bundle_dir = fit_example_bundle(tmp / "bundle")
        env = edge_serve_env(tmp, bundle_dir, "bench-token")
        box = edge_box(Settings.from_env(env))
        try:
            total = WARMUP + REQUESTS * ROUNDS * len(SIZES)
            bodies = [json.dumps(r).encode() for r in FreshReadings().take(total)]
            statements = [0]
            box.buffer._db().set_trace_callback(lambda _sql: statements.__setitem__(0, statements[0] + 1))
            serve_groups(
                box, bodies[:WARMUP], 1, {"parse": 0.0, "score": 0.0, "answer": 0.0, "score_thread": 0.0}
            )
            cursor = WARMUP
            stats = {
                g: {
                    "parse": 0.0,
                    "score": 0.0,
                    "answer": 0.0,
                    "score_thread": 0.0,
                    "requests": 0,
                    "sql": 0,
                    "frames": 0.0,
                }
                for g in SIZES
            }
            for _ in range(ROUNDS):
                for g in SIZES:
                    chunk = bodies[cursor : cursor + REQUESTS]
                    cursor += REQUESTS
                    before = statements[0]
                    serve_groups(box, chunk, g, stats[g])
                    stats[g]["sql"] += statements[0] - before
                    stats[g]["requests"] += len(chunk)
            box.buffer._db().set_trace_callback(None)
            state_bytes = (
                box.buffer._db().execute("SELECT avg(length(state)) FROM device_state").fetchone()[0]
            )
        finally:
            stop_edge_box()
    info_line(
        f"{ROUNDS} rounds x {REQUESTS} requests per group size, alternated; load average "
        f"{os.getloadavg()[0]:.2f}; device state row {state_bytes or 0:.0f} bytes"
    )
    rows: list[dict[str, Any]] = []
    per_request: dict[int, float] = {}
    for g in SIZES:
        s = stats[g]
        n = s["requests"]
        us = {k: s[k] / n * 1e6 for k in ("parse", "score", "answer", "score_thread")}
        per_request[g] = us["parse"] + us["score"] + us["answer"]
        groups = n / g
        info_line(
            f"g={g}: {per_request[g]:.0f} us/request (contract {us['parse']:.0f}, group scoring "
            f"{us['score']:.0f} of which {us['score_thread']:.0f} on this thread, answer {us['answer']:.0f}); "
            f"{s['sql'] / groups:.1f} SQL statements and {s['frames'] / groups:.1f} WAL frames per group"
        )
        rows.append(
            result_row(NAME, f"CPU per request, groups of {g}", per_request[g], "µs",
                       baseline=per_request[SIZES[0]], ratio=per_request[g] / per_request[SIZES[0]])
        )  # fmt: skip
        rows.append(result_row(NAME, f"SQL statements per group of {g}", s["sql"] / groups, "statements"))
        rows.append(result_row(NAME, f"WAL frames per group of {g}", s["frames"] / groups, "frames"))
    if len(SIZES) > 1:
        lo, hi = SIZES[0], SIZES[-1]
        fixed = (per_request[lo] - per_request[hi]) / (1 / lo - 1 / hi)
        rows.append(result_row(NAME, "fixed CPU per group F (from the smallest and largest g)", fixed, "µs"))
        rows.append(result_row(NAME, "CPU per request a (beyond F / g)", per_request[hi] - fixed / hi, "µs"))
    return rows


if __name__ == "__main__":
    for r in main():
        info_line(json.dumps(r, ensure_ascii=False))
