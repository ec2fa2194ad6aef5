"""The edge's group commit (BatchingEventScoring): concurrent requests scored in one call answer
exactly as the same requests scored one by one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support import plant_readings
from zaindari.bundle import ModelBundle
from zaindari.edge.wiring import BatchingEventScoring
from zaindari.event_scoring import EventScoring, HttpAnswer
from zaindari.memory_ports import MemoryAlertSink, MemoryLake, MemoryRejectSink, MemoryStateStore


def rounds() -> list[list[str]]:
    """Two rounds of one request per device (4 devices, 6 readings each); one device runs hot in
    both rounds (raises alerts), and one request of the first round is invalid (400)."""
    readings = plant_readings()[600:696]
    devices = sorted({r["device_id"] for r in readings})
    out = []
    for half in (readings[:48], readings[48:]):
        requests = []
        for d in devices:
            mine = [r for r in half if r["device_id"] == d][:6]
            if d == devices[0]:
                mine = [{**r, "sensors": {**r["sensors"], "temperature": 125.0}} for r in mine]
            requests.append(json.dumps({"readings": mine}))
        out.append(requests)
    out[0][1] = json.dumps({"readings": [{"device_id": "x", "sensors": {}}]})
    return out


def scoring(bundle: ModelBundle, states: Any, model: Callable[[], ModelBundle] | None = None) -> EventScoring:
    return EventScoring(
        model=model or (lambda: bundle),
        states=states,
        lake=MemoryLake(),
        alerts=MemoryAlertSink(),
        rejects=MemoryRejectSink(),
    )


def test_concurrent_requests_scored_together_answer_as_one_by_one(bundle: ModelBundle) -> None:
    # Given the answers of the requests scored one by one
    reference_states = MemoryStateStore()
    one_by_one = scoring(bundle, reference_states)
    expected = [
        [one_by_one.answer_http(body, f"r{k}-{i}") for i, body in enumerate(r)]
        for k, r in enumerate(rounds())
    ]

    # When each round's requests arrive at once, the first scoring call held back for a moment
    # (so that the others queue behind it and are scored as one group)
    first_call = threading.Event()

    def slow_first_model() -> ModelBundle:
        if not first_call.is_set():
            first_call.set()
            time.sleep(0.3)
        return bundle

    states = MemoryStateStore()
    batching = BatchingEventScoring(scoring(bundle, states, slow_first_model))
    answers: list[list[HttpAnswer]] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for k, requests in enumerate(rounds()):
            answers.append(
                list(
                    pool.map(
                        lambda ib, k=k: batching.answer_http(ib[1], f"r{k}-{ib[0]}"), enumerate(requests)
                    )
                )
            )

    # Then every request gets the answer it would have got alone: status, scores, alerts
    for got_round, want_round in zip(answers, expected, strict=True):
        for got, want in zip(got_round, want_round, strict=True):
            assert got.status == want.status
            assert got.body == want.body
    assert answers[0][1].status == 400
    assert any(a.body.get("alerts") for a in answers[0]), "the hot device raises alerts"
    # and the 7 valid requests were scored in fewer calls (each call reads states once)
    assert states.calls < reference_states.calls


def test_answers_wait_for_their_group_to_be_settled_on_disk(bundle: ModelBundle) -> None:
    # Given a group commit whose scoring does not wait for the disk, and whose flush (settle) is held
    flushed = threading.Event()
    flushing = threading.Event()
    settles: list[int] = []

    def settle() -> None:
        flushing.set()
        assert flushed.wait(10)
        settles.append(len(settles))

    batching = BatchingEventScoring(scoring(bundle, MemoryStateStore()), settle=settle)
    body = rounds()[1][0]
    with ThreadPoolExecutor(max_workers=1) as pool:
        answer = pool.submit(batching.answer_http, body, "r1")
        # When the group is scored and being flushed, not yet on disk
        assert flushing.wait(10)
        # Then its request is not answered
        assert not answer.done()
        # and once the flush returns, it is, with its scores
        flushed.set()
        assert answer.result(10).status == 200 and answer.result().body["scores"]
    assert settles == [0]

    # and when the flush fails, the requests of the groups it covered get the error (not a 200)
    def broken() -> None:
        raise OSError("disk gone")

    failing = BatchingEventScoring(scoring(bundle, MemoryStateStore()), settle=broken)
    with pytest.raises(OSError, match="disk gone"):
        failing.answer_http(rounds()[1][1], "r2")


def test_a_request_whose_body_fails_to_parse_does_not_hold_up_the_group_waiting_for_it(
    bundle: ModelBundle,
) -> None:
    # Given a group that waits long for requests being parsed (join window 30 s), and a request
    # whose parse is held, then raises
    use_case = scoring(bundle, MemoryStateStore())
    parsing, release = threading.Event(), threading.Event()
    parse = use_case.parse_http

    def held_parse(body: bytes | str) -> Any:
        if body == "held":
            parsing.set()
            assert release.wait(10)
            raise ValueError("broken body")
        return parse(body)

    use_case.parse_http = held_parse  # type: ignore[method-assign]
    batching = BatchingEventScoring(use_case)
    batching.join_seconds = 30.0
    with ThreadPoolExecutor(max_workers=2) as pool:
        broken = pool.submit(batching.answer_http, "held", "r1")
        assert parsing.wait(10)
        # When a valid request is queued while it is being parsed, and then its parse fails
        valid = pool.submit(batching.answer_http, rounds()[1][0], "r2")
        deadline = time.monotonic() + 10
        while not batching._pending:
            assert time.monotonic() < deadline, "the valid request was never queued"
            time.sleep(0.001)
        started = time.monotonic()
        release.set()
        # Then the group is scored at once, not after the join window
        assert valid.result(10).status == 200
        assert time.monotonic() - started < 5
        with pytest.raises(ValueError, match="broken body"):
            broken.result(10)


def test_request_ids_are_unique_across_threads_and_processes() -> None:
    import os

    from zaindari.edge.http import RequestIds, process_id

    # Given one source of request ids, drawn from by 8 threads at once
    ids = RequestIds()
    with ThreadPoolExecutor(max_workers=8) as pool:
        drawn = list(pool.map(lambda _: ids.next(), range(4000)))
    # Then none repeats
    assert len(set(drawn)) == len(drawn)
    # and a forked process (a server worker) draws from its own prefix
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and its process id as cached, and leave at once
        os.write(write, f"{ids.next()} {process_id()} {os.getpid()}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child, cached, real = os.read(read, 100).decode().split()
    assert child[:8] != drawn[0][:8] and child not in drawn
    # and the process id cached for it (no system call per request) is the child's own
    assert cached == real == str(pid) and process_id() == os.getpid() != pid


def test_wsgi_headers_are_read_from_the_environ_case_insensitively() -> None:
    from zaindari.edge.http import WsgiHeaders

    # Given a WSGI environ (its headers as HTTP_*, the body's type and length as CGI variables)
    environ = {"HTTP_AUTHORIZATION": "Bearer t", "HTTP_X_CALL_ID": "c1", "CONTENT_TYPE": "application/json"}
    headers = WsgiHeaders(environ, 12)
    # Then any spelling of a name finds it, a missing one is missing, and the length is the body's
    assert headers["authorization"] == headers["Authorization"] == "Bearer t"
    assert headers.get("X-Call-Id") == "c1" and headers.get("X-Missing") is None
    assert headers["Content-Length"] == "12" and headers["content-type"] == "application/json"
    assert dict(headers) == {
        "authorization": "Bearer t",
        "x-call-id": "c1",
        "content-type": "application/json",
        "content-length": "12",
    }


# -- the event loop's way in (answer_http_async: the edge server's RSGI interface) ----------------


def test_concurrent_coroutines_are_scored_as_one_group_on_the_loop_each_with_its_own_answer(
    bundle: ModelBundle,
) -> None:
    import asyncio

    # Given the answers of the requests scored one by one
    one_by_one = scoring(bundle, MemoryStateStore())
    expected = [
        [one_by_one.answer_http(body, f"r{k}-{i}") for i, body in enumerate(r)]
        for k, r in enumerate(rounds())
    ]
    # When each round's requests arrive on the loop at once (the group settled by a settler thread)
    states = MemoryStateStore()
    settled: list[threading.Thread] = []
    batching = BatchingEventScoring(
        scoring(bundle, states), settle=lambda: settled.append(threading.current_thread())
    )

    async def serve(k: int, requests: list[str]) -> list[HttpAnswer]:
        return await asyncio.gather(
            *(batching.answer_http_async(body, f"r{k}-{i}") for i, body in enumerate(requests))
        )

    answers = [asyncio.run(serve(k, requests)) for k, requests in enumerate(rounds())]

    # Then every request gets the answer it would have got alone: status, scores, alerts
    for got_round, want_round in zip(answers, expected, strict=True):
        for got, want in zip(got_round, want_round, strict=True):
            assert (got.status, got.body) == (want.status, want.body)
    assert answers[0][1].status == 400 and any(a.body.get("alerts") for a in answers[0])
    # scored as one group per round (the invalid request refused before it was queued), on the
    # loop's thread, settled on another
    assert batching.group_sizes == {3: 1, 4: 1}
    assert settled and all(t is not threading.main_thread() for t in settled)


def test_loop_answers_wait_for_their_settle_and_a_failed_settle_fails_every_group_it_covered(
    bundle: ModelBundle,
) -> None:
    import asyncio

    # Given a settle that holds the first flush until released and fails the next one
    entered, release = threading.Event(), threading.Event()
    flushes: list[int] = []

    def settle() -> None:
        flushes.append(len(flushes))
        if len(flushes) == 1:
            entered.set()
            assert release.wait(10)
            return
        raise OSError("disk gone")

    batching = BatchingEventScoring(scoring(bundle, MemoryStateStore()), settle=settle)
    batching.join_seconds = 0.0
    bodies = rounds()[1]

    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(batching.answer_http_async(bodies[0], "r0"))
        # When the first group is scored and being flushed
        assert await loop.run_in_executor(None, entered.wait, 10)
        # and two more groups are scored meanwhile (the loop is not held by the flush)
        later = []
        for i in (1, 2):
            later.append(asyncio.ensure_future(batching.answer_http_async(bodies[i], f"r{i}")))
            deadline = loop.time() + 10  # bounded: a regression fails here instead of hanging
            while sum(batching.group_sizes.values()) < i + 1:
                assert loop.time() < deadline, "the loop scored no group while a flush ran"
                await asyncio.sleep(0.001)
        # Then no request is answered before its group's flush returned
        await asyncio.sleep(0.05)
        assert not first.done() and not any(t.done() for t in later)
        release.set()
        return await asyncio.gather(first, *later, return_exceptions=True)

    answered, *failed = asyncio.run(scenario())
    assert isinstance(answered, HttpAnswer) and answered.status == 200 and answered.body["scores"]
    # and the failed flush covered both later groups: each of their requests gets the error
    assert flushes == [0, 1]
    assert [type(e) for e in failed] == [OSError, OSError]


def test_loop_answers_are_finished_while_their_group_is_flushed_and_a_failed_finish_fails_one(
    bundle: ModelBundle,
) -> None:
    import asyncio

    # Given a settle that records how many answers were finished when its flush started, and
    # returns only once the loop finished them all (or times out)
    finished: list[str] = []
    seen_at_flush: list[int] = []
    bodies = rounds()[1]

    def settle() -> None:
        seen_at_flush.append(len(finished))
        deadline = time.monotonic() + 10
        while len(finished) < len(bodies) and time.monotonic() < deadline:
            time.sleep(0.001)

    batching = BatchingEventScoring(scoring(bundle, MemoryStateStore()), settle=settle)
    batching.join_seconds = 0.0
    batching.handoff_seconds = 10.0  # (a machine slow to wake the settler waits for it here)

    def finish(answer: HttpAnswer) -> tuple[int, Any]:
        finished.append(answer.body["scores"][0]["device_id"])
        if len(finished) == 2:
            raise ValueError("this answer cannot be made")
        return answer.status, answer.body

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            *(batching.finish_http_async(b, f"r{i}", finish) for i, b in enumerate(bodies)),
            return_exceptions=True,
        )

    # When the requests are scored as one group on the loop
    answers = asyncio.run(scenario())

    # Then the flush started before the answers were made, and they were made during it
    assert seen_at_flush == [0] and len(finished) == len(bodies)
    assert batching.group_sizes == {len(bodies): 1}
    # and the answer that could not be made fails its own request only
    assert isinstance(answers[1], ValueError)
    assert all(a[0] == 200 and a[1]["scores"] for k, a in enumerate(answers) if k != 1)


def test_a_finish_raising_past_exception_fails_the_rest_of_its_group_instead_of_hanging_it(
    bundle: ModelBundle,
) -> None:
    import asyncio

    class Stop(BaseException):
        pass

    # Given a finish that raises a BaseException (not an Exception) for the second request
    batching = BatchingEventScoring(scoring(bundle, MemoryStateStore()), settle=lambda: None)
    batching.join_seconds = 0.0
    bodies = rounds()[1]
    made: list[int] = []

    def finish(answer: HttpAnswer) -> int:
        made.append(answer.status)
        if len(made) == 2:
            raise Stop
        return answer.status

    async def scenario() -> list[Any]:
        requests = (batching.finish_http_async(b, f"r{i}", finish) for i, b in enumerate(bodies))
        return await asyncio.wait_for(asyncio.gather(*requests, return_exceptions=True), 10)

    # When the group is scored and settled
    answers = asyncio.run(scenario())

    # Then the first request is answered and every other one fails (none is left waiting)
    assert answers[0] == 200
    assert all(isinstance(a, RuntimeError) and "answer not made" in str(a) for a in answers[1:])
    assert batching._loop_load.in_flight == 0


def test_a_model_error_fails_its_groups_requests_on_the_loop_and_the_next_group_scores(
    bundle: ModelBundle,
) -> None:
    import asyncio

    # Given a model that fails once
    use_case = scoring(bundle, MemoryStateStore())
    failures = [RuntimeError("model broke")]

    def score_records(records: Any) -> Any:
        if failures:
            raise failures.pop()
        return use_case.score_records(records)

    batching = BatchingEventScoring(use_case, score_records=score_records, settle=lambda: None)
    bodies = rounds()[1]

    async def scenario() -> tuple[list[Any], list[Any]]:
        # When two requests are scored as one group, then two more as the next
        first = await asyncio.gather(
            *(batching.answer_http_async(b, f"a{i}") for i, b in enumerate(bodies[:2])),
            return_exceptions=True,
        )
        second = await asyncio.gather(
            *(batching.answer_http_async(b, f"b{i}") for i, b in enumerate(bodies[2:]))
        )
        return first, second

    first, second = asyncio.run(scenario())
    # Then each request of the failed group gets the error, and the next group is scored
    assert [str(e) for e in first] == ["model broke", "model broke"]
    assert [a.status for a in second] == [200, 200] and all(a.body["scores"] for a in second)
    assert batching.group_sizes == {2: 2}


def test_a_group_that_cannot_go_off_the_loop_fails_and_a_closed_loops_group_blocks_no_other(
    bundle: ModelBundle,
) -> None:
    import asyncio

    # Given writers always busy, so each group is scored off the loop
    release = threading.Event()
    use_case = scoring(bundle, MemoryStateStore())

    def slow(records: Any) -> Any:
        release.wait(10)
        return use_case.score_records(records)

    batching = BatchingEventScoring(use_case, score_records=slow, settle=lambda: None, busy=lambda: True)
    bodies = rounds()[1]

    # When a loop closes while its group is scored off it
    async def abandoned() -> None:
        pending = asyncio.ensure_future(batching.answer_http_async(bodies[0], "a0"))
        await asyncio.sleep(0.05)
        pending.cancel()

    asyncio.run(abandoned())
    release.set()
    time.sleep(0.1)  # (its group finishes after the loop closed: nothing waits for it)

    # Then a new loop's groups are still scored
    async def next_loop() -> HttpAnswer:
        return await asyncio.wait_for(batching.answer_http_async(bodies[1], "b1"), 10)

    assert asyncio.run(next_loop()).status == 200

    # When no thread can be started for a group
    def no_thread() -> Any:
        raise RuntimeError("can't start new thread")

    batching._off_loop_executor = no_thread  # type: ignore[method-assign]

    async def refused() -> list[Any]:
        return await asyncio.wait_for(
            asyncio.gather(batching.answer_http_async(bodies[2], "c2"), return_exceptions=True), 10
        )

    # Then its requests fail (not hang), and the next group, writers free again, is scored
    assert [str(e) for e in asyncio.run(refused())] == ["can't start new thread"]
    batching.busy = lambda: False
    assert asyncio.run(next_loop()).status == 200


def test_rsgi_headers_are_read_case_insensitively() -> None:
    from zaindari.edge.http import RsgiHeaders

    class Scoped:  # granian's RSGIHeaders: get(), get_all() and keys(), names lower-cased, not
        # iterable; a value that is not UTF-8 text is None
        def __init__(self, items: dict[str, list[str | None]]) -> None:
            self.items = items

        def get(self, key: str, default: Any = None) -> Any:
            return self.items.get(key, [default])[0]

        def get_all(self, key: str) -> list[str | None]:
            return self.items.get(key, [])

        def keys(self) -> list[str]:
            return [k for k, values in self.items.items() for _ in values]

    headers = RsgiHeaders(Scoped({"authorization": ["Bearer t"], "x-call-id": ["c1"]}))
    assert headers["Authorization"] == headers["authorization"] == "Bearer t"
    assert headers.get("X-Call-Id") == "c1" and headers.get("X-Missing") is None
    assert headers.get("X-Missing", "none") == "none" and "x-missing" not in headers
    with pytest.raises(KeyError):
        headers["X-Missing"]
    assert dict(headers) == {"authorization": "Bearer t", "x-call-id": "c1"} and len(headers) == 2
    # as WSGI servers give them: a repeated header's values joined, one that is not text absent
    odd = RsgiHeaders(Scoped({"authorization": ["Bearer t", "Bearer u"], "x-bin": [None]}))
    assert odd["Authorization"] == "Bearer t, Bearer u" and odd.get("X-Bin") is None
    assert dict(odd) == {"authorization": "Bearer t, Bearer u"}


def test_asgi_headers_are_read_case_insensitively() -> None:
    from zaindari.edge.http import AsgiHeaders

    # Given an ASGI scope's headers (byte pairs, names lower case), one repeated, one not ASCII
    raw = [(b"authorization", b"Bearer t"), (b"x-call-id", b"c1"), (b"x-two", b"a"), (b"x-two", b"b")]
    headers = AsgiHeaders([*raw, (b"x-latin", "caf\u00e9".encode("latin-1"))])
    # Then any spelling of a name finds it, a missing one is missing (get's default, KeyError)
    assert headers["Authorization"] == headers["authorization"] == "Bearer t"
    assert headers.get("X-Call-Id") == "c1" and headers.get("X-Missing") is None
    assert headers.get("X-Missing", "none") == "none" and "x-missing" not in headers
    with pytest.raises(KeyError):
        headers["X-Missing"]
    # and, as WSGI servers give them, a repeated header's values are joined, values are Latin-1
    assert headers["X-Two"] == "a, b" and headers["x-latin"] == "caf\u00e9"
    assert list(headers) == ["authorization", "x-call-id", "x-two", "x-latin"] and len(headers) == 4


def test_a_loop_group_waits_off_the_loop_while_another_writer_holds_the_buffer(
    tmp_path: Any, bundle_dir: Any
) -> None:
    # Given the server's pipeline on a real box, and a writer holding the buffer's write lock
    # (score-file's manifest, the shipper, another worker) for 0.6 s
    import asyncio

    from zaindari.edge.box import EdgeBox
    from zaindari.edge.buffer import EdgeBuffer
    from zaindari.edge.model_sync import LocalBundleFetcher, LocalModelStore, ModelSync
    from zaindari.edge.wiring import batching_scoring

    sync = ModelSync(LocalModelStore(tmp_path / "models"), LocalBundleFetcher())
    sync.seed(bundle_dir, version="1")
    box = EdgeBox(buffer=EdgeBuffer(tmp_path / "edge.db"), sync=sync, box_id="b")
    batching = batching_scoring(box)
    readings = plant_readings()
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with box.buffer.transaction(immediate=True):
            held.set()
            release.wait(10)

    async def scenario() -> tuple[float, list[HttpAnswer]]:
        loop = asyncio.get_running_loop()
        assert (await batching.answer_http_async(json.dumps(readings[0]), "warm")).status == 200
        gaps: list[float] = []

        async def heartbeat() -> None:
            last = loop.time()
            while True:
                await asyncio.sleep(0.01)
                gaps.append(loop.time() - last)
                last = loop.time()

        beat = asyncio.ensure_future(heartbeat())
        threading.Thread(target=writer).start()
        assert await loop.run_in_executor(None, held.wait, 10)
        # When two groups of requests arrive while it writes
        first = [
            asyncio.ensure_future(batching.answer_http_async(json.dumps(readings[i]), f"a{i}"))
            for i in (1, 2)
        ]
        await asyncio.sleep(0.3)
        second = [asyncio.ensure_future(batching.answer_http_async(json.dumps(readings[3]), "b3"))]
        await asyncio.sleep(0.3)
        # Then the loop kept running (no stall on the lock), nothing was answered before the
        # writer let go, and every request is answered once it did, in order
        assert not any(t.done() for t in first + second)
        release.set()
        answers = await asyncio.gather(*first, *second)
        beat.cancel()
        return max(gaps), answers

    try:
        stall, answers = asyncio.run(scenario())
    finally:
        release.set()
    assert stall < 0.2
    assert [a.status for a in answers] == [200, 200, 200]
    assert batching.group_sizes == {1: 2, 2: 1}
    assert box.buffer.stats().items["scores"] == 4  # the warm-up's and the three held ones, once
    box.close()
