"""The edge's composition roots: settings from the environment, one :class:`EdgeBox` per process.

Each edge ``handler.py`` (score-event, score-file, model-sync) calls :func:`edge_box` (or the
builders below, which use it): the three functions of one server process share one box, so device
state, scores, dead letters, alerts and drift summaries all go through its SQLite buffer, local
alerts go out at once, and the model is the one model sync installed. :func:`edge_box` also starts
the box's background thread (local alert retries, the shipper when ``ZAINDARI_EDGE_UPLINK=aws``,
pending model updates). ``zaindari edge serve`` calls :func:`start_edge_box` when its worker
starts, so a box restarted with a full buffer ships it without waiting for a request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from zaindari.edge.box import EdgeBox
from zaindari.edge.http import process_id
from zaindari.event_scoring import EventScoring, HttpAnswer, InboundRecord, ScoringReport, http_answer
from zaindari.settings import Settings, SettingsError

if TYPE_CHECKING:
    from zaindari.edge.file_outbox import BufferedFileSink
    from zaindari.file_scoring import FileScoring

__all__ = [
    "BatchingEventScoring",
    "batching_scoring",
    "build_edge_event_scoring",
    "build_edge_file_scoring",
    "check_edge_settings",
    "edge_box",
    "edge_box_failure",
    "edge_settings",
    "start_edge_box",
    "stop_edge_box",
]

log = logging.getLogger(__name__)


def edge_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings of an edge function from its environment (``stack.yml``'s ``environment``)."""
    return Settings.from_env(env if env is not None else os.environ)


_box_lock = threading.Lock()
_boxes: dict[int, EdgeBox] = {}  # by process id: a forked worker builds its own


def edge_box(settings: Settings | None = None) -> EdgeBox:
    """The box of this process, built on first use (see the module docstring) and started.

    On a box whose model store is empty, a local ``ZAINDARI_MODEL_PATH`` bundle is installed as
    its first model (provisioning); afterwards only model-sync changes the model.

    Raises
    ------
    SettingsError
        When the box has no model and none to install.
    """
    with _box_lock:
        if process_id() in _boxes:
            return _boxes[process_id()]
        settings = settings or edge_settings()
        uplink = fetcher = None
        if settings.edge_uplink == "aws":
            from zaindari.infra.edge_uplink import aws_link

            uplink, fetcher = aws_link(settings)
        box = EdgeBox.from_settings(settings, uplink=uplink, fetcher=fetcher)
        try:
            _provision(box, settings)
        except BaseException:
            box.close()
            raise
        box.start()
        _boxes.clear()  # a parent's box (before a fork) is not this process's
        _boxes[process_id()] = box
        return box


def start_edge_box() -> None:
    """Build and start the process's box now (a server worker's start hook)."""
    edge_box()


def stop_edge_box() -> None:
    """Close the process's box, if it has one (a server worker's exit hook): its background
    thread stopped, the buffer checkpointed and closed; queued plant alerts stay in the buffer."""
    with _box_lock:
        box = _boxes.pop(process_id(), None)
    if box is not None:
        box.close()


def edge_box_failure() -> str | None:
    """Why this process's box refuses every write (a failed fsync of its buffer, see
    :meth:`~zaindari.edge.buffer.EdgeBuffer.sync`), or None (healthy, or no box yet): the edge
    server's ``/healthz`` answers 503 with it, so a liveness probe restarts the server."""
    with _box_lock:
        box = _boxes.get(process_id())
    return None if box is None else box.buffer.failed


def check_edge_settings(settings: Settings) -> None:
    """Fail before serving when the box would have no model (its store empty, nothing to install).

    Raises
    ------
    SettingsError
        Saying what to set.
    """
    from zaindari.edge.model_sync import LocalModelStore

    if LocalModelStore(settings.edge_model_dir).pointer().current is not None:
        return
    if not settings.model_path or settings.model_path.startswith("s3://"):
        raise SettingsError(
            f"the box's model store {settings.edge_model_dir} holds no model: set ZAINDARI_MODEL_PATH "
            "to a local bundle folder to install a first one (or run python -m zaindari.edge.box seed)"
        )


def _provision(box: EdgeBox, settings: Settings) -> None:
    if box.sync.store.pointer().current is not None:
        return
    # the server's worker processes start at once: one installs, the others find it installed
    with box.buffer.process_lock("provision"):
        if box.sync.store.pointer().current is not None:
            return
        check_edge_settings(settings)
        assert settings.model_path is not None  # checked above
        outcome = box.sync.seed(Path(settings.model_path))
    log.info("first model installed from %s: %s %s", settings.model_path, outcome.model, outcome.version)


class BatchingEventScoring:
    """The ``score_event`` use case for a server: concurrent requests score together.

    Device state is read, updated and written back per scoring call, so two calls must not run at
    once (each would start from the same state, and windows and alert state would lose one).
    Concurrent requests are scored as groups: one state read, one ONNX run, one buffer transaction
    for the whole group (a group commit), while the requests that arrive meanwhile form the next
    group; each request gets its own part of the report. Two ways in, one pipeline:

    * **threads** (:meth:`answer_http`: the WSGI interface, OpenFaaS's template, tests): each
      request's thread parses its body (the contract check, authentication and HTTP stay on it),
      queues its readings and waits for its own answer; one thread of the process (the scorer,
      started at the first request) scores everything queued as one group. Each waiting thread is
      woken once, when its group is done.
    * **an event loop** (:meth:`answer_http_async`: the edge server's RSGI interface): a request's
      coroutine parses its body on the loop and queues its readings with a future; the group is
      scored on the loop itself, scheduled after the requests ready in this loop iteration
      (``call_soon``), so a request costs no thread hand-off.

    A lock keeps the two ways' scoring calls one at a time (uncontended: one way serves a process).

    With ``settle``, ``score_records`` commits without waiting for the disk, and one more thread
    (the settler) calls ``settle`` (one fsync for every group committed since the last one) before
    it releases their answers: a waiting thread's at once, a loop's futures with one
    ``call_soon_threadsafe`` per settle. The scorer (or the loop) scores the next group while the
    disk flushes this one; an answer still never leaves before its group is on disk.

    Parameters
    ----------
    scoring
        The use case (parses requests, names the model).
    score_records
        Scores a group (default ``scoring.score_records``; the box's, which watches the model).
    settle
        Makes the groups scored so far durable (the box's :meth:`~zaindari.edge.box.EdgeBox.settle`);
        None: ``score_records`` is durable itself.
    max_batch
        Most requests scored in one call.
    busy
        Whether another writer holds the buffer's write lock now (the box's
        :meth:`~zaindari.edge.buffer.EdgeBuffer.writers_busy`): the loop's group is then scored on
        a thread of its own, so the loop keeps answering (health checks, settled groups) while it
        waits, instead of stalling on the lock; None: always on the loop.
    """

    def __init__(
        self,
        scoring: EventScoring,
        *,
        score_records: Callable[[Sequence[InboundRecord]], ScoringReport] | None = None,
        settle: Callable[[], None] | None = None,
        max_batch: int = 256,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.scoring = scoring
        self.score_records = score_records or scoring.score_records
        self.settle = settle
        self.max_batch = max_batch
        self.busy = busy
        self._off_loop: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None  # (pid, one thread)
        self._loop_scoring = False  # a loop group is being scored off the loop (busy writers)
        self._score_lock = threading.Lock()  # one scoring call at a time, from either way in
        self._pending: list[tuple[InboundRecord, _Answer]] = []
        self._queued = threading.Condition(threading.Lock())
        self._unsettled: list[tuple[_Group, ScoringReport | None, BaseException | None]] = []
        self._unsettled_on_loops: list[_LoopScored] = []
        self._scored = threading.Condition(threading.Lock())
        self._flushing = False  # the settler is flushing (or answering) groups: under _scored
        self._scorer_pid = self._settler_pid = 0
        self._arriving = 0  # requests in answer_http being parsed, not yet queued
        self._threads_load = _Load()  # requests queued by threads, not yet answered (under _queued)
        # the event loop's way in (touched on the loop thread only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_pending: _LoopGroup = []
        self._loop_call: asyncio.Handle | None = None  # the next group, scheduled
        self._loop_company = 0  # > 0: the group waits for this many requests; -1: it waited
        self._loop_load = _Load()
        #: longest a group waits for company (requests being parsed, or a busy process's usual group)
        self.join_seconds = 0.001
        #: longest the loop waits for an idle settler to start flushing its group (a thread wake-up)
        self.handoff_seconds = 0.0005
        #: groups scored since the start, by their number of requests (score-event's GET shows it)
        self.group_sizes: Counter[int] = Counter()

    def answer_http(self, body: bytes | str, request_id: str, source: str = "http") -> HttpAnswer:
        """As :meth:`EventScoring.answer_http`; ``request_id`` must be unique among concurrent calls."""
        with self._queued:
            self._arriving += 1
        try:
            readings = self.scoring.parse_http(body)
        except BaseException:
            self._arrived()
            raise
        if isinstance(readings, HttpAnswer):
            self._arrived()
            return readings
        report = self.score(InboundRecord(request_id, readings, source), arriving=True)
        return http_answer(report.for_record(request_id))

    async def answer_http_async(self, body: bytes | str, request_id: str, source: str = "http") -> HttpAnswer:
        """As :meth:`answer_http`, awaited on an event loop: the body is parsed on the loop and
        its group scored on the loop (see the class docstring). ``request_id`` must be unique
        among concurrent calls."""
        return await self.finish_http_async(body, request_id, _same, source)

    async def finish_http_async(
        self, body: bytes | str, request_id: str, finish: Callable[[HttpAnswer], _T], source: str = "http"
    ) -> _T:
        """:meth:`answer_http_async`, its answer passed through ``finish`` (the function's
        response, made from the answer) on the loop while the disk flushes the group: what a
        request does after its group is scored overlaps the group's fsync instead of following it.
        ``finish`` raising fails that request only (its exception raised here)."""
        readings = self.scoring.parse_http(body)
        if isinstance(readings, HttpAnswer):
            return finish(readings)
        result: _T = await self._queue_on_loop(InboundRecord(request_id, readings, source), finish)
        return result

    def _arrived(self) -> None:
        """A request parsed that will not be queued: a group waiting for it stops waiting."""
        with self._queued:
            self._arriving -= 1
            self._queued.notify()

    def score(self, record: InboundRecord, *, arriving: bool = False) -> ScoringReport:
        """Score ``record`` with whatever else is waiting; returns the report of its group.
        ``arriving``: counted in ``_arriving`` (by :meth:`answer_http`, while it parsed)."""
        future = _Answer()
        with self._queued:
            if arriving:
                self._arriving -= 1
            self._start_threads(scorer=True)
            self._pending.append((record, future))
            self._threads_load.enter()
            self._queued.notify()
        try:
            return future.result()
        finally:
            with self._queued:
                self._threads_load.leave()

    def _queue_on_loop(
        self, record: InboundRecord, finish: Callable[[HttpAnswer], Any]
    ) -> asyncio.Future[Any]:
        """Queue ``record`` on the running loop, scored with the other records queued on it; the
        future is its answer through ``finish``, resolved once its group is settled."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or another loop (a test's): a schedule of its own
            # records left queued by a loop that closed are dropped: nothing awaits their answers
            # (never scored, never answered: their clients send them again)
            self._loop, self._loop_call, self._loop_company, self._loop_pending = loop, None, 0, []
            self._loop_scoring = False  # (a group the old loop had off it is not this loop's)
        if self.settle is not None and self._settler_pid != process_id():
            with self._queued:  # before queueing: a thread that cannot start fails this request
                self._start_threads(scorer=False)
        future: asyncio.Future[Any] = loop.create_future()
        self._loop_pending.append((record, future, finish))
        self._loop_load.enter()
        future.add_done_callback(self._left_loop)  # (in flight until answered, failed or cancelled)
        try:
            if self._loop_call is None:
                # after the requests ready in this iteration of the loop: they join this group
                self._loop_call = loop.call_soon(self._score_loop_group)
            elif self._loop_company > 0 and len(self._loop_pending) >= self._loop_company:
                # the group waiting for company has it: scored now, not at its deadline
                self._loop_call.cancel()
                self._loop_company = -1
                self._loop_call = loop.call_soon(self._score_loop_group)
        except BaseException:
            future.cancel()
            raise
        return future

    def _left_loop(self, _future: asyncio.Future[Any]) -> None:
        self._loop_load.leave()

    def _start_threads(self, *, scorer: bool) -> None:
        """Start this process's scorer (when ``scorer``) and settler threads unless they run
        (none yet, or a forked copy's, which do not run here). Under ``_queued``."""
        pid = process_id()
        if scorer and self._scorer_pid != pid:
            self._start(self._score_groups, "zaindari-scorer")
            self._scorer_pid = pid  # (once it runs: a failed start is tried again)
        if self.settle is not None and self._settler_pid != pid:
            self._start(self._settle_groups, "zaindari-settler")
            self._settler_pid = pid

    @staticmethod
    def _start(target: Callable[[], None], name: str) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    def _score_groups(self) -> None:
        """The scorer thread: score what is queued, one group at a time, for the process's life."""
        while True:
            with self._queued:
                while not self._pending:
                    self._queued.wait()
                # A group waits (woken by each arrival, at most join_seconds) for the requests
                # being parsed now, each queued within tens of µs, and, while this process has
                # had several requests in flight lately, until it holds as many (see _Load).
                now = time.monotonic()
                company = self._threads_load.company(now, self.max_batch)
                deadline = now + self.join_seconds
                while (self._arriving or len(self._pending) < company) and len(
                    self._pending
                ) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._queued.wait(left)
                group, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            report, error = self._score_group([r for r, _ in group])
            if self.settle is None:
                _answer(group, report, error)
            else:
                with self._scored:
                    self._unsettled.append((group, report, error))
                    self._scored.notify()

    def _score_loop_group(self) -> None:
        """On the loop: score the records queued on it as one group (after waiting, once, for the
        company a busy process usually has, as the scorer thread does), then hand it to the settler."""
        loop = self._loop
        assert loop is not None
        self._loop_call = None
        if not self._loop_pending or self._loop_scoring:  # (an off-loop group reschedules when done)
            return
        if self._loop_company == 0:  # not waited yet: while busy lately, wait for company (_Load)
            company = self._loop_load.company(time.monotonic(), self.max_batch)
            if len(self._loop_pending) < company:
                self._loop_company = company
                self._loop_call = loop.call_later(self.join_seconds, self._score_loop_group)
                return
        self._loop_company = 0
        group, self._loop_pending = self._loop_pending[: self.max_batch], self._loop_pending[self.max_batch :]
        records = [r for r, _, _ in group]
        if self.busy is not None and self.busy():
            # another writer (score-file's manifest, the shipper, another worker) holds the write
            # lock: wait for it on a thread, the loop answering meanwhile; the next group after it
            try:
                done = self._off_loop_executor().submit(self._score_group, records)
            except BaseException as exc:  # no thread (or shutting down): this group fails, not hangs
                self._hand_to_settler(loop, group, None, exc)
                if self._loop_pending:
                    self._loop_call = loop.call_soon(self._score_loop_group)
                return
            self._loop_scoring = True
            done.add_done_callback(functools.partial(self._off_loop_done, loop, group))
            return
        if self._loop_pending:
            self._loop_call = loop.call_soon(self._score_loop_group)
        self._hand_to_settler(loop, group, *self._score_group(records))

    def _off_loop_done(
        self,
        loop: asyncio.AbstractEventLoop,
        group: _LoopGroup,
        done: concurrent.futures.Future[tuple[ScoringReport | None, BaseException | None]],
    ) -> None:
        """On the off-loop thread: hand the scored group back to its loop."""
        try:
            loop.call_soon_threadsafe(self._scored_off_loop, loop, group, done.result())
        except RuntimeError:  # the loop closed meanwhile: nothing waits for these answers any more
            log.warning("a group scored off the loop finished after its event loop closed")

    def _scored_off_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        group: _LoopGroup,
        scored: tuple[ScoringReport | None, BaseException | None],
    ) -> None:
        """On the loop: a group scored off it is done; the next one is scheduled."""
        if loop is self._loop:  # (not a loop replaced meanwhile: its schedule is the new loop's)
            self._loop_scoring = False
            if self._loop_pending and self._loop_call is None:
                self._loop_call = loop.call_soon(self._score_loop_group)
        self._hand_to_settler(loop, group, *scored)

    def _hand_to_settler(
        self,
        loop: asyncio.AbstractEventLoop,
        group: _LoopGroup,
        report: ScoringReport | None,
        error: BaseException | None,
    ) -> None:
        answers: list[Any] = []  # each request's finished answer: made below, while the disk flushes
        if self.settle is None:
            _finish(group, report, error, answers)
            _resolve(group, report, error, answers)
            return
        with self._scored:  # (the settler runs: _queue_on_loop started it before queueing)
            self._unsettled_on_loops.append(_LoopScored(loop, group, report, error, answers))
            self._scored.notify()
            if not self._flushing and error is None and report is not None:
                # let the idle settler take the GIL and start the fsync before the loop makes
                # the answers (else it waits for the GIL until the loop goes idle: no overlap)
                self._scored.wait_for(lambda: self._flushing, self.handoff_seconds)
        # the settler resolves the group with call_soon_threadsafe: on this loop, after this
        _finish(group, report, error, answers)

    def _off_loop_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """This process's thread for groups scored off the loop (a forked copy's does not run here)."""
        if self._off_loop is None or self._off_loop[0] != process_id():
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zaindari-off-loop")
            self._off_loop = (process_id(), pool)
        return self._off_loop[1]

    def _score_group(self, records: list[InboundRecord]) -> tuple[ScoringReport | None, BaseException | None]:
        with self._score_lock:
            self.group_sizes[len(records)] += 1
            try:
                return self.score_records(records), None
            except BaseException as exc:  # a bug, not bad input: every request of the group sees it
                return None, exc

    def _settle_groups(self) -> None:
        """The settler thread: make the groups scored so far durable, then answer them."""
        assert self.settle is not None
        while True:
            with self._scored:
                self._flushing = False
                while not self._unsettled and not self._unsettled_on_loops:
                    self._scored.wait()
                done, self._unsettled = self._unsettled, []
                on_loops, self._unsettled_on_loops = self._unsettled_on_loops, []
                self._flushing = True
                if on_loops:
                    self._scored.notify_all()  # the loop that handed its group waits for this
            failure: BaseException | None = None
            try:
                self.settle()
            except BaseException as exc:  # maybe not on disk: answered as failed, and the buffer
                failure = exc  # refuses every write until a restart (EdgeBuffer.sync): a request sent
                # again is not answered "duplicate" from a group the disk may not hold
            for group, report, error in done:
                _answer(group, report, error or failure)
            by_loop: dict[asyncio.AbstractEventLoop, list[_LoopScored]] = {}
            for scored in on_loops:
                by_loop.setdefault(scored.loop, []).append(scored._replace(error=scored.error or failure))
            for loop, groups in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_resolve_all, groups)  # one wake-up of the loop
                except RuntimeError:  # the loop is closed: nothing waits for these answers any more
                    log.warning("%d groups settled after their event loop closed", len(groups))

    def model_version(self) -> str:
        return self.scoring.model().model_version


class _Load:
    """Requests in flight on one way in (queued, not yet answered: a request refused before it is
    queued never counts), and the most at once lately (the last 0.1-0.2 s): the
    company a group waits for, at most ``join_seconds`` (the group-commit delay of a database's
    ``commit_delay``/``commit_siblings``). A lone client (peak 1) never waits.

    All of the peak, not half of it: at 8 connections the requests of the group being answered
    come back together within a few hundred µs, and a group of all 8 pays the group's fixed cost
    (~0.9 ms: state read, ONNX call, the buffer's statements and commit) once for 8 instead of
    twice for 4 and 4 (the two groups in flight when the next group starts while the last one is
    being flushed). Measured (``bench/bench_edge_http.py``'s server, 8 connections, same sitting,
    load ~3): groups of 7.8 instead of 5.0-5.3, 367-405 instead of 460-507 µs of CPU per request
    (RSGI), 440-491 instead of 519-610 (WSGI), requests/s and p99 no worse. The flush overlapping
    the next group mattered less than its fixed cost here (an fsync of the log takes ~0.2 ms on
    this disk); on a slow disk a group stops waiting after ``join_seconds`` and scores what came,
    so the next group is scored while the disk flushes this one, as before."""

    __slots__ = ("in_flight", "peak", "recent_peak", "since")

    def __init__(self) -> None:
        self.in_flight = self.peak = self.recent_peak = 0
        self.since = 0.0

    def enter(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def company(self, now: float, most: int) -> int:
        if now - self.since > 0.1:
            self.recent_peak, self.peak, self.since = self.peak, self.in_flight, now
        return min(max(self.recent_peak, self.peak), most)


class _Answer:
    """One request's report, waited for by its thread: a lock held until the report is set (one
    futex wait and one wake; a ``concurrent.futures.Future`` made a condition and a lock per wait)."""

    __slots__ = ("_done", "error", "report")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self.report: ScoringReport | None = None
        self.error: BaseException | None = None

    def set(self, report: ScoringReport | None, error: BaseException | None) -> None:
        self.report, self.error = report, error
        self._done.release()

    def result(self) -> ScoringReport:
        self._done.acquire()
        if self.error is not None or self.report is None:
            raise self.error or RuntimeError("no report")
        return self.report


_Group = list[tuple[InboundRecord, _Answer]]
_LoopGroup = list[tuple[InboundRecord, "asyncio.Future[Any]", Callable[[HttpAnswer], Any]]]
_T = TypeVar("_T")


def _same(answer: HttpAnswer) -> HttpAnswer:
    return answer


class _Failed(NamedTuple):
    """A request's ``finish`` that raised: its future gets the exception."""

    error: BaseException


class _LoopScored(NamedTuple):
    """A group scored on ``loop``, waiting to be settled."""

    loop: asyncio.AbstractEventLoop
    group: _LoopGroup
    report: ScoringReport | None
    error: BaseException | None
    answers: list[Any]  # each request's finished answer (filled on the loop after it is queued)


def _answer(group: _Group, report: ScoringReport | None, error: BaseException | None) -> None:
    for _, waiting in group:
        waiting.set(report, error)


def _finish(
    group: _LoopGroup, report: ScoringReport | None, error: BaseException | None, answers: list[Any]
) -> None:
    """On the group's loop: each request's answer (its part of the report through its ``finish``)."""
    if error is not None or report is None:
        return  # every request fails with the error
    for record, future, finish in group:
        try:
            answers.append(
                None if future.done() else finish(http_answer(report.for_record(record.record_id)))
            )
        except Exception as exc:  # (a bug) this request fails, not its group
            answers.append(_Failed(exc))
        except BaseException as exc:  # (KeyboardInterrupt, ...) this and the rest fail, then it goes on
            failed = _Failed(RuntimeError(f"answer not made: {exc!r}"))
            answers.extend(failed for _ in range(len(group) - len(answers)))
            raise


def _resolve(
    group: _LoopGroup, report: ScoringReport | None, error: BaseException | None, answers: list[Any]
) -> None:
    """On the group's loop: each request's future gets its answer, or the error."""
    for k, (_, future, _) in enumerate(group):
        if future.done():  # cancelled: its request went away
            continue
        answer = answers[k] if k < len(answers) else _Failed(RuntimeError("answer not made"))
        if error is not None or report is None:
            future.set_exception(error or RuntimeError("no report"))
        elif isinstance(answer, _Failed):
            future.set_exception(answer.error)
        else:
            future.set_result(answer)


def _resolve_all(groups: list[_LoopScored]) -> None:
    for scored in groups:
        try:
            _resolve(scored.group, scored.report, scored.error, scored.answers)
        except Exception:  # (a bug) the next groups are still answered
            log.exception("a settled group could not be answered")


def build_edge_event_scoring(settings: Settings | None = None) -> BatchingEventScoring:
    """The edge's ``score-event``: the Lambda use case on the box's ports, requests batched."""
    return batching_scoring(edge_box(settings))


def batching_scoring(box: EdgeBox) -> BatchingEventScoring:
    """``score-event``'s pipeline on ``box``: each group committed without waiting for the disk,
    answered after the box's :meth:`~zaindari.edge.box.EdgeBox.settle` (the kill -9 harness,
    ``tests/edge_crash.py``, runs this same wiring)."""
    return BatchingEventScoring(
        box.scoring,
        score_records=functools.partial(box.score_records, durable=False),
        settle=box.settle,
        busy=box.buffer.writers_busy,
    )


def build_edge_file_scoring(settings: Settings) -> tuple[FileScoring, BufferedFileSink]:
    """The edge's ``score-file``: the file use case with the box's model; its outputs, manifests,
    drift summaries and alerts go through the box's buffer (staged under ``edge_data_dir``'s
    ``spool/`` until a file is published), its alerts to the plant's channels at once."""
    from zaindari.edge.buffer import BufferedSummaries
    from zaindari.edge.file_outbox import BufferedFileSink
    from zaindari.file_scoring import FileScoring, FileScoringOptions

    box = edge_box(settings)
    local = box.local
    sink = BufferedFileSink(
        box.buffer,
        Path(settings.edge_data_dir) / "spool",
        local_channels=local.names if local is not None else (),
        on_published=box.deliver_local if local is not None else None,
    )
    scoring = FileScoring(
        model=box.sync.current,
        sink=sink,
        options=FileScoringOptions.from_settings(settings),
        summaries=BufferedSummaries(box.buffer),
    )
    return scoring, sink
