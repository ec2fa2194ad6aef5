"""The edge's group commit (BatchingEventScoring): concurrent requests scored in one call answer
exactly as the same requests scored one by one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
