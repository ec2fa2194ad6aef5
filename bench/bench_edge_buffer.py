"""The edge box's store-and-forward buffer: what durability costs, what compaction saves, how fast
a backlog ships.

Scoring: the ``score_event`` use case (``EventScoring``) on the box's SQLite ports, one reading per
request and 100 per request, with ``synchronous=FULL`` (the default: each answered request is on
disk) and ``NORMAL``; baseline, in the same run: the same use case on the in-memory ports (no
storage at all). Compaction: buffer bytes per reading as raw scores and after compaction into
hourly summaries. Shipping: a backlog of buffered readings sent to moto (started in this process)
by the shipper; readings per second and S3 requests per 1,000 readings.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import info_line, result_row
from _setup import FreshReadings, start_aws
from tests.support import fit_example_bundle

from zaindari.bundle import ModelBundle, load_bundle
from zaindari.edge.buffer import (
    BufferedAlerts,
    BufferedLake,
    BufferedRejects,
    EdgeBuffer,
    Shipper,
    SqliteStateStore,
)
from zaindari.event_scoring import EventScoring, InboundRecord
from zaindari.infra.edge_uplink import AwsUplink
from zaindari.memory_ports import MemoryAlertSink, MemoryLake, MemoryRejectSink, MemoryStateStore

BENCHMARK = "edge_buffer"
SINGLE_REQUESTS = 300
BATCH_REQUESTS = 30
BACKLOG_READINGS = 20_000
TARGET_FULL_P50_MS = 25.0  # one-reading request, fsync included, on a 2-core box
# moto shares this process's GIL, so this is a floor, not S3's speed: 2,000 readings/s ships three
# days of a 20-device plant sampled each second (5.2 M readings) in under an hour
TARGET_SHIP_READINGS_PER_S = 2_000.0
# The simulated plant samples once a minute: a device-hour is 60 readings (~80 B each) against one
# summary (~250 B), so ~19x is the ceiling here (faster sampling compacts proportionally more)
TARGET_COMPACTION = 10.0


def info(message: str) -> None:
    info_line(message)


def row(metric: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return result_row(BENCHMARK, metric, value, unit, **extra)


def scoring(bundle: ModelBundle, buffer: EdgeBuffer | None) -> EventScoring:
    if buffer is None:
        return EventScoring(
            model=lambda: bundle,
            states=MemoryStateStore(),
            lake=MemoryLake(),
            alerts=MemoryAlertSink(),
            rejects=MemoryRejectSink(),
        )
    return EventScoring(
        model=lambda: bundle,
        states=SqliteStateStore(buffer),
        lake=BufferedLake(buffer),
        alerts=BufferedAlerts(buffer),
        rejects=BufferedRejects(buffer),
    )


def requests(use_case: EventScoring, feed: FreshReadings, count: int, size: int) -> list[float]:
    """Seconds per request, ``count`` requests of ``size`` readings."""
    use_case.score_records([InboundRecord("warm", feed.take(size), "bench")])
    times = []
    for i in range(count):
        payload = feed.take(size)
        began = time.perf_counter()
        report = use_case.score_records([InboundRecord(f"r{i}", payload, "bench")])
        times.append(time.perf_counter() - began)
        assert not report.retry_ids, report.retry_reasons
    return times


def main() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zaindari-bench-edge-", dir=Path.cwd()) as tmp_name:
        tmp = Path(tmp_name)  # under the working tree: the disk a box's buffer would be on
        bundle = load_bundle(fit_example_bundle(tmp / "bundle"))

        results: dict[str, dict[str, float]] = {}
        for label, sync in (("memory ports", None), ("SQLite NORMAL", "NORMAL"), ("SQLite FULL", "FULL")):
            buffer = None if sync is None else EdgeBuffer(tmp / f"{label}.db", synchronous=sync)  # type: ignore[arg-type]
            use_case = scoring(bundle, buffer)
            single = requests(use_case, FreshReadings(seed=1), SINGLE_REQUESTS, 1)
            batch = requests(use_case, FreshReadings(seed=2), BATCH_REQUESTS, 100)
            results[label] = {
                "p50_ms": statistics.median(single) * 1000,
                "p99_ms": sorted(single)[int(len(single) * 0.99) - 1] * 1000,
                "single_rps": len(single) / sum(single),
                "batch_readings_s": 100 * len(batch) / sum(batch),
            }
            info(f"{label}: " + ", ".join(f"{k} {v:,.1f}" for k, v in results[label].items()))
        base = results["memory ports"]
        for label in ("SQLite NORMAL", "SQLite FULL"):
            r = results[label]
            full = label == "SQLite FULL"
            rows.append(
                row(
                    f"1-reading request p50, {label}",
                    r["p50_ms"],
                    "ms",
                    baseline=base["p50_ms"],
                    ratio=r["p50_ms"] / base["p50_ms"],
                    target=f"<= {TARGET_FULL_P50_MS:g} ms" if full else None,
                    passed=r["p50_ms"] <= TARGET_FULL_P50_MS if full else None,
                )
            )
            rows.append(row(f"1-reading request p99, {label}", r["p99_ms"], "ms", baseline=base["p99_ms"]))
            rows.append(
                row(
                    f"100-reading requests, {label}",
                    r["batch_readings_s"],
                    "readings/s",
                    baseline=base["batch_readings_s"],
                    ratio=r["batch_readings_s"] / base["batch_readings_s"],
                )
            )

        # compaction: the same 2,000 readings, raw and compacted
        raw = EdgeBuffer(tmp / "raw.db")
        requests(scoring(bundle, raw), FreshReadings(seed=3), 20, 100)
        raw_bytes = raw.stats().kind_bytes["scores"] / raw.stats().items["scores"]
        small = EdgeBuffer(tmp / "small.db", max_bytes=16_384)
        requests(scoring(bundle, small), FreshReadings(seed=3), 20, 100)
        stats = small.stats()
        compacted_bytes = stats.kind_bytes.get("summary", 0) / max(stats.compacted_readings, 1)
        ratio = raw_bytes / compacted_bytes if compacted_bytes else float("nan")
        info(
            f"compaction: {stats.compacted_readings} of 2,100 readings compacted; rows {stats.rows}, "
            f"bytes {stats.kind_bytes} (bound {stats.max_bytes:,})"
        )
        rows.append(row("buffer bytes per reading, raw scores + telemetry", raw_bytes, "B"))
        rows.append(
            row(
                "buffer bytes per reading, compacted (hourly summaries)",
                compacted_bytes,
                "B",
                baseline=raw_bytes,
                ratio=ratio,
                target=f">= {TARGET_COMPACTION:g}x smaller",
                passed=ratio >= TARGET_COMPACTION,
            )
        )

        # shipping a backlog to moto
        backlog = EdgeBuffer(tmp / "backlog.db", synchronous="NORMAL")
        use_case = scoring(bundle, backlog)
        feed = FreshReadings(seed=4)
        for i in range(BACKLOG_READINGS // 500):
            use_case.score_records([InboundRecord(f"b{i}", feed.take(500), "bench")])
        aws = start_aws(tmp / "bundle")
        try:
            uplink = AwsUplink(aws.factory, bucket=aws.lake, event_bus="default")
            shipper = Shipper(backlog, uplink, box_id="bench", status=dict)
            aws.factory.request_counter.reset()
            began = time.perf_counter()
            report = shipper.ship_once()
            seconds = time.perf_counter() - began
            assert report.error is None and report.remaining == 0, report
            shipped = report.shipped.get("scores", 0)
            s3_requests = aws.factory.request_counter.by_service.get("s3", 0)
        finally:
            aws.server.stop()
        rate = shipped / seconds
        info(f"shipped {shipped:,} readings in {seconds:.2f} s, {len(report.objects)} objects")
        rows.append(
            row(
                "backlog shipped to S3 (moto, same process)",
                rate,
                "readings/s",
                target=f">= {TARGET_SHIP_READINGS_PER_S:,.0f}",
                passed=rate >= TARGET_SHIP_READINGS_PER_S,
            )
        )
        rows.append(row("S3 requests per 1,000 readings shipped", 1000 * s3_requests / shipped, "requests"))
    return rows


if __name__ == "__main__":
    for r in main():
        info(str(r))
