"""The edge buffer's drift window summaries: rows, S3 PUTs and scoring CPU per 1,000 one-reading
requests, one row per window (the buffer now) against one row per request (before, rebuilt here
as the baseline: the same use case writing each request's summaries as their own row).

Each request is scored as the box scores a group (``EdgeBuffer.transaction`` around
``EventScoring.score_records``); CPU is this process's CPU time (``time.process_time``) over the
scoring only. Offline: 1,000 requests, then one shipment. Online: a shipment after every
``ONLINE_SHIP_EVERY`` requests (the shipper thread wakes after each group and empties the log; at
~1,000 requests/s it finds as many groups as arrived during its last S3 round trips). PUTs are counted by an uplink that
keeps what it is sent (no network: S3's time is not what is compared).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import info_line, result_row
from _setup import FreshReadings
from tests.support import fit_example_bundle

from zaindari.alerting import Alert
from zaindari.bundle import ModelBundle, load_bundle
from zaindari.drift import WindowSummary
from zaindari.edge.box import buffered_scoring
from zaindari.edge.buffer import (
    BufferedSummaries,
    EdgeBuffer,
    Shipper,
)
from zaindari.event_scoring import InboundRecord

BENCHMARK = "edge_drift_rows"
REQUESTS = 1000
#: requests between two shipments online: 5 (a shipper as fast as the requests) and 50 (one S3
#: round trip of ~50 ms at ~1,000 requests/s)
ONLINE_SHIP_EVERY = (5, 50)
ROUNDS = 3


class OneRowPerRequest(BufferedSummaries):
    """The baseline: each request's summaries appended as their own drift row (the code before)."""

    def write(self, summaries: Sequence[WindowSummary], *, source: str, name: str) -> list[str]:
        if not summaries:
            return []
        body = {"source": source, "name": name, "summaries": [s.to_dict() for s in summaries]}
        day = datetime.fromtimestamp(min(s.start for s in summaries), tz=UTC).date().isoformat()
        seq = self.buffer.append(
            "drift", body, day=day, items=len(summaries), keys=[f"drift:{source}:{name}"], durable=False
        )
        return [] if seq is None else [f"buffer:{seq}"]


class CountingUplink:
    """Counts S3 PUTs by prefix; events are counted apart (EventBridge, not S3)."""

    def __init__(self) -> None:
        self.puts: dict[str, int] = {}
        self.events = 0

    def _put(self, prefix: str) -> None:
        self.puts[prefix] = self.puts.get(prefix, 0) + 1

    def put_rows(self, prefix: str, day: str, name: str, rows: Sequence[Mapping[str, Any]]) -> str:
        self._put(prefix.split("/", maxsplit=1)[0])
        return f"{prefix}/date={day}/{name}"

    def publish_alerts(self, alerts: Sequence[Alert]) -> set[str]:
        self.events += len(alerts)
        return set()

    def put_event(self, detail_type: str, detail: Mapping[str, Any]) -> None:
        self.events += 1

    def put_summaries(self, summaries: Sequence[Mapping[str, Any]], *, source: str, name: str) -> list[str]:
        days = {datetime.fromtimestamp(int(s["start"]), tz=UTC).date() for s in summaries}
        for _ in days:  # one object per model version and day (zaindari.drift.summary_objects)
            self._put("drift summaries")
        return [name]

    def put_object(self, key: str, data: bytes, content_type: str) -> str:
        self._put(key.split("/", maxsplit=1)[0])
        return key


def run(
    bundle: ModelBundle, path: Path, store: type[BufferedSummaries], ship_every: int | None
) -> dict[str, Any]:
    buffer = EdgeBuffer(path)
    summaries = store(buffer)
    write_cpu = [0.0]
    write = summaries.write

    def timed_write(batch: Sequence[WindowSummary], *, source: str, name: str) -> list[str]:
        began = time.process_time()
        try:
            return write(batch, source=source, name=name)
        finally:
            write_cpu[0] += time.process_time() - began

    summaries.write = timed_write  # type: ignore[method-assign,assignment]
    scoring = buffered_scoring(buffer, bundle, source="edge-bench", summaries=summaries)
    uplink = CountingUplink()
    shipper = Shipper(buffer, uplink, box_id="bench", status=dict)
    feed = FreshReadings(seed=5)
    with buffer.transaction():
        scoring.score_records([InboundRecord("warm", feed.take(1), "bench")])
    shipper.ship_once()
    uplink.puts.clear()
    write_cpu[0] = 0.0
    score_cpu = ship_cpu = 0.0
    most_drift_rows = 0
    for i in range(REQUESTS):
        payload = feed.take(1)
        began = time.process_time()
        with buffer.transaction():
            report = scoring.score_records([InboundRecord(f"r{i}", payload, "bench")])
        score_cpu += time.process_time() - began
        assert not report.retry_ids, report.retry_reasons
        most_drift_rows = max(most_drift_rows, buffer.stats().rows.get("drift", 0))
        if ship_every and (i + 1) % ship_every == 0:
            began = time.process_time()
            assert shipper.ship_once().error is None
            ship_cpu += time.process_time() - began
    drift_rows = buffer.stats().rows.get("drift", 0)
    began = time.process_time()
    final = shipper.ship_once()
    ship_cpu += time.process_time() - began
    assert final.error is None and final.remaining == 0, final
    buffer.close()
    return {
        "drift_rows": drift_rows,
        "most_drift_rows": most_drift_rows,
        "puts": dict(uplink.puts),
        "all_puts": sum(uplink.puts.values()),
        "score_cpu_us": score_cpu / REQUESTS * 1e6,
        "drift_write_cpu_us": write_cpu[0] / REQUESTS * 1e6,
        "ship_cpu_us": ship_cpu / REQUESTS * 1e6,
    }


def main() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zaindari-bench-drift-", dir=Path.cwd()) as tmp_name:
        tmp = Path(tmp_name)
        bundle = load_bundle(fit_example_bundle(tmp / "bundle"))
        results: dict[tuple[str, str], dict[str, Any]] = {}
        # interleaved, ROUNDS times, so that the machine's load falls on both alike
        for round_ in range(ROUNDS):
            modes = [("offline", None)] + [(f"online, shipped every {n}", n) for n in ONLINE_SHIP_EVERY]
            for mode, every in modes:
                for label, store in (("before", OneRowPerRequest), ("after", BufferedSummaries)):
                    r = run(bundle, tmp / f"{label}-{mode}-{round_}.db", store, every)
                    info_line(f"round {round_} {mode} {label}: {r}")
                    known = results.get((mode, label))
                    if known is not None:  # keep the puts (identical) and the lowest CPU
                        r["score_cpu_us"] = min(r["score_cpu_us"], known["score_cpu_us"])
                        r["ship_cpu_us"] = min(r["ship_cpu_us"], known["ship_cpu_us"])
                        r["drift_write_cpu_us"] = min(r["drift_write_cpu_us"], known["drift_write_cpu_us"])
                    results[(mode, label)] = r
        for mode in dict.fromkeys(m for m, _ in results):
            before, after = results[(mode, "before")], results[(mode, "after")]
            rows.append(
                row(
                    f"{mode}: drift rows per 1,000 requests (most held)",
                    after["most_drift_rows"],
                    "rows",
                    before["most_drift_rows"],
                )
            )
            rows.append(
                row(
                    f"{mode}: S3 PUTs per 1,000 requests, all kinds",
                    after["all_puts"],
                    "PUTs",
                    before["all_puts"],
                )
            )
            rows.append(
                row(
                    f"{mode}: S3 PUTs of drift summaries per 1,000 requests",
                    after["puts"].get("drift summaries", 0),
                    "PUTs",
                    before["puts"].get("drift summaries", 0),
                )
            )
            rows.append(
                row(
                    f"{mode}: scoring CPU per request (group of 1)",
                    after["score_cpu_us"],
                    "us",
                    before["score_cpu_us"],
                )
            )
            rows.append(
                row(
                    f"{mode}: of which the drift summary write",
                    after["drift_write_cpu_us"],
                    "us",
                    before["drift_write_cpu_us"],
                )
            )
            rows.append(
                row(f"{mode}: shipping CPU per request", after["ship_cpu_us"], "us", before["ship_cpu_us"])
            )
    return rows


def row(metric: str, value: float, unit: str, baseline: float) -> dict[str, Any]:
    return result_row(
        BENCHMARK, metric, value, unit, baseline=baseline, ratio=value / baseline if baseline else None
    )


if __name__ == "__main__":
    for r in main():
        info_line(f"{r['metric']}: {r['value']:,.1f} {r['unit']} (before {r['baseline']:,.1f})")
