"""kill -9 the real edge server many times under concurrent requests: `zaindari edge serve`'s
process group (the server, and its workers under rsgi) SIGKILLed after random delays while one HTTP client per
device sends its readings, restarted each time, its link to moto up or down per run.

Where ``bench_edge_kill9.py`` kills a box driver at named points (compaction included), this one
kills the server as deployed: concurrent requests scored together (one buffer transaction for a
group), the worker's start hook, the forwarder thread. Each client sends its device's readings in
order (BENCH_KILL9_SERVER_PASSES six-hour passes of the small plant, default 6: 8,640
readings), four a request, with 50 ms between requests, and sends a request again until it gets a 2xx (a connection refused or
reset while the server is down, a 503). After each kill: ``PRAGMA integrity_check`` and every
answered reading's key in the buffer. At the end (the server up, the link up, the buffer emptied):
the checks of ``tests/functions/test_edge_kill9.py::check_delivery`` (every reading in the lake
once, each device's in order, drift counts, the dead letter, every alert on the bus; alerts in
order per device, the devices not being in step). The buffer is not bounded small here (settings
allow 1 MiB at least), so nothing is compacted. BENCH_KILL9_SERVER_RUNS (default 20).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import info_line, result_row
from _setup import FreshReadings
from tests.edge_crash import check_buffer, record_keys
from tests.edge_support import free_port
from tests.functions.conftest import EmbeddedAws, subscribe_alert_inboxes
from tests.functions.test_edge_box import box_env, create_bucket, provision_box
from tests.functions.test_edge_kill9 import BROKEN_DEVICE, check_delivery
from tests.support import fit_example_bundle, http_call, start_server, zaindari_cli

from zaindari.demo.edge import Link
from zaindari.infra.local_aws import start_local_aws

NAME = "edge_kill9_server"
RUNS = int(os.environ.get("BENCH_KILL9_SERVER_RUNS", "20"))
SEED = int(os.environ.get("BENCH_KILL9_SEED", "2026"))
TOKEN = "kill9-server-token"
PASSES = int(os.environ.get("BENCH_KILL9_SERVER_PASSES", "6"))  # 6-hour passes of the plant fed


class DeviceClient(threading.Thread):
    """Sends one device's requests in order, each until it is answered 2xx."""

    def __init__(self, url: str, bodies: list[str], pause: float) -> None:
        super().__init__(daemon=True)
        self.url, self.bodies, self.pause = url, bodies, pause
        self.answered: list[int] = []
        self.in_flight = False
        self.refused = 0  # attempts that got no answer (server down) or a 503

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        for index, body in enumerate(self.bodies):
            while True:
                self.in_flight = True
                try:
                    status, _, data = http_call(
                        self.url, method="POST", body=body.encode(), headers=headers, timeout=30
                    )
                except (OSError, urllib.error.URLError, http.client.HTTPException):
                    status = 0  # refused, reset, or the answer cut short: the server was killed
                finally:
                    self.in_flight = False
                if 200 <= status < 300:
                    self.answered.append(index)
                    break
                if status not in (0, 503):
                    raise AssertionError(f"request {index} answered {status}: {data[:300]!r}")
                self.refused += 1
                time.sleep(0.1)
            time.sleep(self.pause)


def serve(env: dict[str, str], port: int) -> Any:
    return start_server(
        [*zaindari_cli(), "edge", "serve", "--port", str(port), "--threads", "4"],
        env,
        f"http://127.0.0.1:{port}/healthz",
        new_session=True,
    )


def main() -> list[dict[str, Any]]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    rng = random.Random(SEED)
    server = start_local_aws("127.0.0.1", 0, reuse_existing=False)
    relay: Link | None = None
    try:
        aws = EmbeddedAws(server, server.endpoint_url, server.environment(), server.client_factory())
        with tempfile.TemporaryDirectory(prefix="zaindari-bench-kill9-server-") as tmp_name:
            root = Path(tmp_name) / "box"
            root.mkdir()
            bundle_dir = fit_example_bundle(Path(tmp_name) / "bundle")
            readings = FreshReadings().take(PASSES * 1440)  # the plant's 6 hours, then the next 6...
            provision_box(root, bundle_dir, readings)
            (root / "secrets").mkdir()
            (root / "secrets" / "zaindari-edge-token").write_text(TOKEN + "\n")
            create_bucket(aws)
            topic = aws.factory.client("sns").create_topic(Name="zaindari-alerts")["TopicArn"]
            inbox = subscribe_alert_inboxes(aws, topic, "Zaindari Alert", "kill9-server")["eventbridge"]
            relay = Link(aws.port)
            env = box_env(
                root,
                aws,
                AWS_ENDPOINT_URL=f"http://127.0.0.1:{relay.port}",
                ZAINDARI_EDGE_UPLINK="aws",
                ZAINDARI_EDGE_SHIP_BACKOFF_SECONDS="0.05",
                ZAINDARI_EDGE_SHIP_BACKOFF_MAX_SECONDS="0.5",
            )
            # one client per device, four readings a request; the broken reading in the first's
            per_device: dict[str, list[dict[str, Any]]] = {}
            for r in readings:
                per_device.setdefault(r["device_id"], []).append(r)
            first = sorted(per_device)[0]
            per_device[first].insert(25, {**per_device[first][25], "device_id": BROKEN_DEVICE,
                                          "sensors": {"humidity": 1.0}})  # fmt: skip
            streams = {
                d: [json.dumps({"readings": rs[i : i + 4]}) for i in range(0, len(rs), 4)]
                for d, rs in per_device.items()
            }
            pause = 0.05  # the clients keep the server busy through the kills: most find requests in flight
            port = free_port()
            url = f"http://127.0.0.1:{port}/function/score-event"
            clients = [DeviceClient(url, bodies, pause) for bodies in streams.values()]
            for client in clients:
                client.start()
            online = False
            in_flight_at_kill: list[int] = []
            began = time.monotonic()
            for _ in range(RUNS):
                up = rng.random() < 0.6
                if up != online:
                    relay.up() if up else relay.down()
                    online = up
                process = serve(env, port)
                time.sleep(rng.uniform(0.2, 2.2))
                in_flight_at_kill.append(sum(c.in_flight for c in clients))
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
                answered = [streams[d][i] for d, c in zip(streams, clients, strict=True) for i in c.answered]
                check_buffer(root / "buffer.db", record_keys(answered, frozenset({BROKEN_DEVICE})))
            kill_seconds = time.monotonic() - began
            done_during_kills = sum(len(c.answered) for c in clients)
            if not online:
                relay.up()
            process = serve(env, port)
            try:
                for client in clients:
                    client.join(timeout=600)
                headers = {"Authorization": f"Bearer {TOKEN}"}
                model_sync = f"http://127.0.0.1:{port}/function/model-sync"
                deadline = time.monotonic() + 120
                while json.loads(http_call(model_sync, headers=headers)[2])["buffered"]:
                    if time.monotonic() > deadline:
                        raise AssertionError("the buffer did not empty in 120 s")
                    time.sleep(0.2)
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
            figures = check_delivery(aws, root, readings, inbox, devices_in_step=False)
    finally:
        if relay is not None:
            relay.down()
        server.stop()
    total = sum(len(b) for b in streams.values())
    refused = sum(c.refused for c in clients)
    info_line(
        f"{RUNS} kills of the server's process group in {kill_seconds:.0f} s (restart included); "
        f"{done_during_kills} of {total} requests answered before the last kill; requests in flight at "
        f"each kill: {in_flight_at_kill}; {refused} attempts refused or unanswered, sent again"
    )
    info_line(f"delivery: {json.dumps(figures)}")
    off = figures["readings"] - figures["raw_rows"] - figures["compacted_readings"]
    return [
        result_row(NAME, "server kills -9 (its process group), each restarted and checked", RUNS, "kills"),
        result_row(NAME, "kills with requests in flight", sum(1 for n in in_flight_at_kill if n), "kills"),
        result_row(NAME, "requests sent again (no answer, or 503)", refused, "requests"),
        result_row(NAME, "readings lost or doubled (expected - shipped)", off, "readings",
                   target="0", passed=off == 0),
        result_row(NAME, "alert events on the bus (expected alerts as baseline)", figures["alert_events"],
                   "events", baseline=figures["alerts"], ratio=figures["alert_events"] / figures["alerts"]),
        result_row(NAME, "seconds per kill (restart included)", kill_seconds / RUNS, "s"),
    ]  # fmt: skip


if __name__ == "__main__":
    for r in main():
        info_line(json.dumps(r))
