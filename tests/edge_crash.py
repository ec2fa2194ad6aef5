"""kill -9 at many points: an edge box (buffer, scoring, shipper) killed over and over, then checked.

The box runs in a child process forked from a *zygote* (``python -m tests.edge_crash zygote``): the
zygote imports everything once (zaindari, onnxruntime, boto3: seconds on a loaded machine), then
forks one child per run, so a restart costs milliseconds and a test can afford many kills. The
zygote has no thread and no database handle when it forks. Each child is a whole box as
``zaindari edge serve``'s worker wires it (:class:`~zaindari.edge.box.EdgeBox` from settings, its
background forwarder shipping to the embedded AWS through :class:`~zaindari.demo.edge.Link`,
requests answered by :class:`~zaindari.edge.wiring.BatchingEventScoring`), fed by one device
gateway that sends the plant's feed a request at a time, writes the index of every request
answered 2xx to ``answered.log`` (``O_APPEND``), and when it restarts sends the first request not
answered together with the next one (its backlog, in one request: scored in a group unlike the
one that was killed) and, now and then, one already answered, whose answer it "lost".

Kills come two ways. *Timed*: the harness sends SIGKILL after a random delay. *At a point*: the
child is told to SIGKILL itself at the n-th time it passes a named point (inside a write
transaction, after compaction inside its transaction, after the shipper recorded its plan, after a
batch was sent and before it was deleted...; see :data:`POINTS`); this hits moments too short for a
timer. Each child records what its scoring and shipping threads are doing in a small shared file
(``phases``), so the harness reports where each kill landed. The link to the cloud is up or down at
random per run, and the buffer is bounded small, so the box compacts while offline.

After each kill: the SQLite file passes ``PRAGMA integrity_check`` and every answered reading's
key is in the log (its ``written`` table, its device's remembered keys, or its score row). At the end a last run, never killed, sends the rest of the
feed and empties the buffer; :func:`check_delivery` then checks the lake and the bus.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where a child can kill itself: the method it passes and whether it dies before or after it.
POINTS = {
    "write.mid": ("EdgeBuffer._insert", "after"),  # a log row inserted, its transaction not committed
    "ship.sent": ("Shipper._send", "after"),  # objects in S3 / events on the bus, rows not deleted
    "compact.mid": ("EdgeBuffer._compact_oldest", "after"),  # rows replaced by summaries, not committed
    "write.done": ("EdgeBuffer.append_scores", "after"),  # scores written, drift and state not
    "drift.done": ("BufferedSummaries.write", "after"),  # drift summaries written, device state not
    "ship.planned": ("EdgeBuffer.next_batch", "after"),  # the plan recorded, nothing sent
    "state.done": ("EdgeBuffer.save_states", "after"),  # state saved, the alerts not yet buffered
    "ship.marked": ("EdgeBuffer.mark_shipped", "after"),  # batch deleted, the next not planned
    "settle": ("EdgeBox.settle", "before"),  # groups committed without an fsync, not answered
    "alert.write": ("BufferedAlerts.publish", "before"),  # alerts in the state outbox only
}
#: Phase names a thread records while inside these methods (innermost wins).
PHASES = {
    "EdgeBox.score_records": "score",
    "EdgeBuffer.append_scores": "write",
    "EdgeBuffer.append": "write",
    "EdgeBuffer.save_states": "write-state",
    "EdgeBuffer._compact_oldest": "compact",
    "EdgeBuffer._merge_drift": "compact",
    "EdgeBuffer.next_batch": "ship-plan",
    "Shipper._send": "ship-send",
    "EdgeBuffer.mark_shipped": "ship-mark",
    "EdgeBox.forward_once": "forward",
    "EdgeBox.settle": "settle",
}
SLOT = 32  # bytes per thread slot in the phases file: 0 requests, 1 forwarder, 2 self-kill point


# ---------------------------------------------------------------------------------- the child


def _trace(box_module: Any, buffer_module: Any, phases: mmap.mmap, die_at: tuple[str, int] | None) -> None:
    """Wrap the box's methods to record phases and to die at ``die_at`` (point, n-th pass).

    Tracing only: every wrapped method runs unchanged."""
    import functools
    import threading

    owners = {
        "EdgeBox": box_module.EdgeBox,
        "EdgeBuffer": buffer_module.EdgeBuffer,
        "Shipper": buffer_module.Shipper,
        "BufferedAlerts": buffer_module.BufferedAlerts,
        "BufferedSummaries": buffer_module.BufferedSummaries,
    }
    stacks = threading.local()
    passes: Counter[str] = Counter()

    def slot() -> int:
        return 1 if threading.current_thread().name == "zaindari-edge-forward" else 0

    def show(name: str) -> None:
        s = slot()
        phases[s * SLOT : (s + 1) * SLOT] = name.encode()[:SLOT].ljust(SLOT)

    def die(point: str) -> None:
        phases[2 * SLOT : 3 * SLOT] = point.encode().ljust(SLOT)
        os.kill(os.getpid(), signal.SIGKILL)

    kill_before = {POINTS[p][0]: p for p in POINTS if POINTS[p][1] == "before"}
    kill_after = {POINTS[p][0]: p for p in POINTS if POINTS[p][1] == "after"}

    def wrap(qualified: str) -> None:
        owner_name, method_name = qualified.split(".")
        owner = owners[owner_name]
        original = getattr(owner, method_name)
        phase = PHASES.get(qualified)

        def check(point: str | None) -> None:
            if point is not None and die_at is not None and die_at[0] == point:
                passes[point] += 1
                if passes[point] == die_at[1]:
                    die(point)

        @functools.wraps(original)
        def traced(*args: Any, **kwargs: Any) -> Any:
            stack: list[str] = stacks.__dict__.setdefault("stack", [])
            check(kill_before.get(qualified))
            if phase:
                stack.append(phase)
                show(phase)
            try:
                result = original(*args, **kwargs)
                check(kill_after.get(qualified))
                return result
            finally:
                if phase:
                    stack.pop()
                    show(stack[-1] if stack else "idle")

        setattr(owner, method_name, traced)

    for qualified in sorted(set(PHASES) | {p[0] for p in POINTS.values()}):
        wrap(qualified)


def _child(config: dict[str, Any], run: dict[str, Any]) -> int:
    """One run of the box: send up to ``budget`` requests from the first not answered, then let the
    forwarder work until the harness kills it; the last run (``drain``) sends the rest of the feed
    and returns 0 once the buffer is empty (3 if it did not empty in time)."""
    from zaindari.edge import box as box_module
    from zaindari.edge import buffer as buffer_module
    from zaindari.edge.wiring import batching_scoring
    from zaindari.settings import Settings

    work = Path(config["work"])
    with (work / "phases").open("r+b") as f:
        phases = mmap.mmap(f.fileno(), 3 * SLOT)
    phases[:] = b"start".ljust(SLOT) + b"start".ljust(SLOT) + b"".ljust(SLOT)
    die_at = (run["die_at"], int(run["nth"])) if run.get("die_at") else None
    _trace(box_module, buffer_module, phases, die_at)

    from zaindari.infra.edge_uplink import aws_link

    settings = Settings.from_env(os.environ)
    uplink, fetcher = aws_link(settings)
    box = box_module.EdgeBox.from_settings(settings, uplink=uplink, fetcher=fetcher)
    box.buffer.max_bytes = int(config["max_bytes"])  # small, so a box offline compacts (settings: >= 1 MiB)
    box.start(idle_seconds=0.1)
    scoring = batching_scoring(box)  # the server's pipeline: groups committed relaxed, settled, answered
    requests: list[str] = json.loads((work / "requests.json").read_text())
    rng = random.Random(run["seed"])
    fd = os.open(work / "answered.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    answered = _answered(work)
    pause = float(config["pause_seconds"])
    if run.get("drain"):  # the last run paces itself to the link, so most of it ships raw
        pause = float(config["drain_pause_seconds"])
    position = next((i for i in range(len(requests)) if i not in answered), len(requests))
    if answered and rng.random() < 0.3:  # the device lost an answer: it sends that request again
        position = rng.choice(sorted(answered)[-3:])
    budget = int(run.get("budget") or len(requests))  # requests this run sends at most
    backlog = True
    while position < len(requests) and budget > 0:
        budget -= 1
        sent = [position]
        if backlog and position not in answered and position + 1 < len(requests):
            sent.append(position + 1)  # its backlog as one request: a group unlike the one killed
        backlog = position in answered
        body = _merged([requests[i] for i in sent])
        answer = scoring.answer_http(body, f"req-{position}-{run['run']}")
        if 200 <= answer.status < 300:
            os.write(fd, "".join(f"{i}\n" for i in sent).encode())
            answered.update(sent)
            position = next((i for i in range(position, len(requests)) if i not in answered), len(requests))
        else:  # 503: nothing stored; the device sends it again
            time.sleep(pause)
        time.sleep(pause)
    os.close(fd)
    phases[0:SLOT] = b"fed".ljust(SLOT)
    while not run.get("drain"):  # this run's share is sent: the forwarder works on until the kill
        time.sleep(0.05)
    deadline = time.monotonic() + float(config["drain_seconds"])
    while run.get("drain") and time.monotonic() < deadline:
        if not box.buffer.stats().rows:
            box.close()
            return 0
        time.sleep(0.05)
    box.close()
    return 3


def _merged(bodies: list[str]) -> str:
    """One request holding the readings of ``bodies`` (``{"readings": [...]}`` each)."""
    if len(bodies) == 1:
        return bodies[0]
    return json.dumps({"readings": [r for body in bodies for r in json.loads(body)["readings"]]})


def _answered(work: Path) -> set[int]:
    path = work / "answered.log"
    if not path.exists():
        return set()
    return {int(line) for line in path.read_text().split()}


def zygote() -> None:
    """Import once, then fork a child per ``{"run": ...}`` line on stdin; report its pid, and its
    exit status on ``{"reap": pid}``."""
    import onnxruntime  # noqa: F401  (imports only: no thread, no session before the fork)

    import zaindari.edge.box
    import zaindari.edge.wiring
    import zaindari.infra.edge_uplink
    import zaindari.infra.wiring  # noqa: F401

    config = json.loads(Path(sys.argv[2]).read_text())
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if "reap" in command:
            _, status = os.waitpid(int(command["reap"]), 0)
            code = os.waitstatus_to_exitcode(status)
            print(json.dumps({"exit": code}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(config, command)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)


# ---------------------------------------------------------------------------------- the harness


@dataclass
class Kill:
    """Where one kill landed."""

    run: int
    how: str  # "point" (the child killed itself there) or "timed" (the harness, after delay)
    aimed: str | None  # the point the child was told to die at (not reached: a timed kill)
    point: str | None
    phases: tuple[str, str]  # what the requests and the forwarder were doing
    online: bool
    answered_before: int
    answered_after: int


@dataclass
class CrashReport:
    kills: list[Kill] = field(default_factory=list)
    seconds: float = 0.0

    def where(self) -> Counter[str]:
        """Kills per point: the self-kill point, else ``timed:<requests phase>/<forwarder phase>``."""
        return Counter(
            k.point if k.how == "point" else f"timed:{k.phases[0]}/{k.phases[1]}" for k in self.kills
        )


class CrashHarness:
    """Runs the zygote and kills its children; see the module docstring.

    Parameters
    ----------
    work
        Folder of the box (buffer, models, secrets, answered.log, phases).
    env
        The box's settings (``ZAINDARI_*``, AWS endpoint through the relay).
    relay
        The link: started for online runs, stopped for offline ones.
    requests
        The bodies the device gateway sends, in order.
    max_bytes
        The buffer's bound (small: offline runs compact).
    pause_seconds
        Between two requests of the device gateway.
    dead_devices
        Devices whose readings are dead letters (not remembered as written).
    """

    def __init__(
        self,
        work: Path,
        env: dict[str, str],
        relay: Any,
        requests: list[str],
        *,
        max_bytes: int = 48 * 1024,
        pause_seconds: float = 0.002,
        dead_devices: frozenset[str] = frozenset(),
    ) -> None:
        self.work = work
        self.dead_devices = dead_devices
        self.relay = relay
        self.online = False
        (work / "requests.json").write_text(json.dumps(requests))
        (work / "phases").write_bytes(b"\0" * (3 * SLOT))
        config = {
            "work": str(work),
            "max_bytes": max_bytes,
            "pause_seconds": pause_seconds,
            "drain_pause_seconds": 0.01,
            "drain_seconds": 60,
        }
        (work / "config.json").write_text(json.dumps(config))
        self.log = (work / "children.log").open("ab")
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.edge_crash", "zygote", str(work / "config.json")],
            env={**os.environ, **env},
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self._read()  # ready
        self.requests = requests

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote died: see {self.work / 'children.log'}")
        message: dict[str, Any] = json.loads(line)
        return message

    def _send(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def _link(self, up: bool) -> None:
        if up and not self.online:
            self.relay.up()
        elif not up and self.online:
            self.relay.down()
        self.online = up

    def phases(self) -> tuple[str, str, str]:
        data = (self.work / "phases").read_bytes()
        return tuple(data[i * SLOT : (i + 1) * SLOT].rstrip(b" \0").decode() for i in range(3))  # type: ignore[return-value]

    def answered(self) -> set[int]:
        return _answered(self.work)

    def kill_many(self, kills: int, seed: int) -> CrashReport:
        """``kills`` runs, each killed -9 (at a point, or after a random delay), each followed by the
        checks of :func:`check_buffer`."""
        rng = random.Random(seed)
        report = CrashReport()
        # each run sends at most its share, so the feed outlasts the kills on any machine
        budget = max(4, len(self.requests) // (kills + 4))
        began = time.monotonic()
        points = list(POINTS)  # round robin first (the rarely reached alert.write last), then at random
        for run in range(kills):
            online = rng.random() < 0.6
            command: dict[str, Any] = {"run": run, "seed": rng.randrange(2**32), "budget": budget}
            if rng.random() < 0.6:
                point = points[run % len(points)] if run < 2 * len(points) else rng.choice(points)
                nth = 1 if point.startswith(("compact", "ship", "alert")) else rng.randint(1, 8)
                command.update(die_at=point, nth=nth)
                if point.startswith("compact"):  # sends until the buffer is full
                    command["budget"] = 4 * budget
                # shipping needs the link, compaction a buffer that fills
                online = point.startswith("ship") or (online and not point.startswith("compact"))
            self._link(online)
            before = len(self.answered())
            delay = rng.uniform(0.05, 1.2)
            pid = int(self._send(command)["pid"])
            deadline = time.monotonic() + (delay if "die_at" not in command else 3.0)
            code = None
            while time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    if _exited(pid):
                        break
                time.sleep(0.01)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            code = self._send({"reap": pid})["exit"]
            requests_phase, forwarder_phase, self_point = self.phases()
            if code != -signal.SIGKILL:
                raise AssertionError(
                    f"run {run} ended with {code}, not killed: see {self.work / 'children.log'}"
                )
            report.kills.append(
                Kill(
                    run=run,
                    how="point" if self_point else "timed",
                    aimed=command.get("die_at"),
                    point=self_point or None,
                    phases=(requests_phase, forwarder_phase),
                    online=online,
                    answered_before=before,
                    answered_after=len(self.answered()),
                )
            )
            (self.work / "phases").write_bytes(b"\0" * (3 * SLOT))
            check_buffer(self.work / "buffer.db", self.answered_keys())
        report.seconds = time.monotonic() - began
        return report

    def answered_keys(self) -> dict[str, tuple[str, float]]:
        """The record keys of the readings of every answered request (dead letters aside), with
        their devices and timestamps."""
        return record_keys([self.requests[i] for i in self.answered()], self.dead_devices)

    def finish(self) -> None:
        """A last run, online and never killed: the rest of the feed, then the buffer emptied."""
        self._link(True)
        pid = int(self._send({"run": "final", "seed": 0, "drain": True})["pid"])
        code = self._send({"reap": pid})["exit"]
        if code != 0:
            raise AssertionError(f"the last run ended with {code}: see {self.work / 'children.log'}")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._link(False)
        self.log.close()


def _exited(pid: int) -> bool:
    """Whether the zygote's child ``pid`` has ended (a zombie waiting to be reaped counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def record_keys(
    bodies: list[str], dead_devices: frozenset[str] = frozenset()
) -> dict[str, tuple[str, float]]:
    """The record keys (``reading_key_hash``) of the readings in request ``bodies``, but those of
    ``dead_devices``, each with its device and timestamp (epoch seconds)."""
    from zaindari.contract import parse_payload
    from zaindari.event_scoring import reading_key_hash

    return {
        reading_key_hash(reading): (reading.device_id, reading.timestamp.timestamp())
        for body in bodies
        for reading in parse_payload(body).readings
        if reading.device_id not in dead_devices
    }


def check_buffer(path: Path, answered: Mapping[str, tuple[str, float]]) -> None:
    """The checks after each kill: the database opens and is intact, and every answered reading is
    in the log: its record key is in the log's key memory (``written``), or remembered by its
    device's state, committed with its row (a group's reading keys are only there since session
    8: ``EdgeBuffer._flush``), or in a score row not shipped yet. A reading its device has
    forgotten (no newer than the state's ``evicted_until``) and whose row was shipped or compacted
    has left no key in the buffer: the lake check at the end (:func:`check_delivery`) covers it."""
    db = sqlite3.connect(path)
    try:
        (integrity,) = db.execute("PRAGMA integrity_check").fetchone()
        assert integrity == "ok", f"{path}: integrity_check says {integrity}"
        # (a reading's key is kept after its timestamp: '<timestamp>/<key>')
        found = {row[0].rpartition("/")[2] for row in db.execute("SELECT key FROM written")}
        # (only the keys a device's row points at: rows below its seen_from are forgotten ones,
        # deleted 64 at a time)
        found.update(
            key
            for (key,) in db.execute(
                "SELECT s.key FROM device_seen s JOIN device_state d ON d.device_id = s.device_id "
                "WHERE s.n >= d.seen_from AND s.n < d.seen_next"
            )
        )
        forgotten: dict[str, float] = {}
        for device, state in db.execute("SELECT device_id, state FROM device_state"):
            body = json.loads(state if bytes(state[:1]) == b"{" else zlib.decompress(state))
            found.update(key for key, _ in body.get("seen", []))
            evicted = body.get("evicted_until")
            forgotten[device] = float("-inf") if evicted is None else evicted
        for (body,) in db.execute("SELECT body FROM outbox WHERE kind = 'scores'"):
            rows = json.loads(body if bytes(body[:1]) == b"{" else zlib.decompress(body))["scores"]
            found.update(row.get("record_key") for row in rows)
    finally:
        db.close()
    missing = {
        key
        for key, (device, ts) in answered.items()
        if key not in found and ts > forgotten.get(device, float("-inf"))
    }
    assert not missing, f"{len(missing)} answered readings are not in the buffer: {sorted(missing)[:5]}"


if __name__ == "__main__" and sys.argv[1:2] == ["zygote"]:
    zygote()
