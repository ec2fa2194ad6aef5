"""EventScoring.score_records over the in-memory ports: every record accounted for, idempotency,
the order of effects under each port's failure, and the time split reported to metrics."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import plant_readings
from zaindari.bundle import ModelBundle
from zaindari.contract import ContractLimits, Reading, parse_reading
from zaindari.event_scoring import EventScoring, InboundRecord, ScoringReport, reading_key_hash
from zaindari.memory_ports import MemoryAlertSink, MemoryLake, MemoryRejectSink, MemoryStateStore
from zaindari.pipeline import DeviceState

# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def readings() -> list[dict[str, Any]]:
    """The simulated plant; the bundle was fitted on the first 800, tests score the rest."""
    return plant_readings()


@dataclass
class Rig:
    scoring: EventScoring
    states: MemoryStateStore
    lake: MemoryLake
    alerts: MemoryAlertSink
    rejects: MemoryRejectSink


@pytest.fixture
def make_rig(bundle: ModelBundle) -> Callable[..., Rig]:
    def make(dedup_memory: int = 512, limits: ContractLimits | None = None) -> Rig:
        states, lake, alerts, rejects = (
            MemoryStateStore(),
            MemoryLake(),
            MemoryAlertSink(),
            MemoryRejectSink(),
        )
        scoring = EventScoring(
            model=lambda: bundle,
            states=states,
            lake=lake,
            alerts=alerts,
            rejects=rejects,
            limits=limits,
            dedup_memory=dedup_memory,
        )
        return Rig(scoring, states, lake, alerts, rejects)

    return make


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


# ------------------------------------------------------------------------------------- helpers


def rec(record_id: str, payload: Any, source: str = "sqs") -> InboundRecord:
    return InboundRecord(record_id=record_id, payload=payload, source=source)


def as_records(rows: list[dict[str, Any]], prefix: str = "m") -> list[InboundRecord]:
    """One JSON body per reading, as SQS delivers them."""
    return [rec(f"{prefix}{i:03d}", json.dumps(r)) for i, r in enumerate(rows)]


def of_device(readings: list[dict[str, Any]], device: str, start: int = 800) -> list[dict[str, Any]]:
    return [r for r in readings[start:] if r["device_id"] == device]


def hot(reading: dict[str, Any], temperature: float = 120.0) -> dict[str, Any]:
    return {**reading, "sensors": {**reading["sensors"], "temperature": temperature}}


def missing_sensors(reading: dict[str, Any]) -> dict[str, Any]:
    """Valid for the contract, but lacks sensors the model needs (rejected at the features stage)."""
    return {**reading, "sensors": {"temperature": reading["sensors"]["temperature"]}}


def naive_time(reading: dict[str, Any]) -> dict[str, Any]:
    """Rejected by the contract: a timestamp without a timezone."""
    return {**reading, "timestamp": reading["timestamp"].rstrip("Z")}


def reading_of(raw: dict[str, Any]) -> Reading:
    parsed = parse_reading(raw)
    assert isinstance(parsed, Reading)
    return parsed


def stored_state(store: MemoryStateStore, device: str) -> DeviceState:
    return DeviceState.from_dict(json.loads(store.items[device]))


def assert_accounted(report: ScoringReport, records: list[InboundRecord]) -> None:
    """Every record has exactly one status and counts() agrees with the statuses."""
    assert set(report.status) == {r.record_id for r in records}
    statuses = Counter(report.status.values())
    assert set(statuses) <= {"scored", "rejected", "duplicate", "retry"}
    counts = report.counts()
    assert counts["records"] == len(records)
    assert counts["scored_records"] + counts["rejected_records"] + counts["duplicate_records"] + counts[
        "retry_records"
    ] == len(records)
    assert counts["scored_records"] == statuses["scored"]
    assert counts["rejected_records"] == statuses["rejected"]
    assert counts["duplicate_records"] == statuses["duplicate"]
    assert counts["retry_records"] == statuses["retry"]
    assert sorted(report.retry_ids) == sorted(rid for rid, s in report.status.items() if s == "retry")
    assert set(report.retry_reasons) == set(report.retry_ids)


# --------------------------------------------------------------------------- every record accounted


def test_every_record_ends_in_exactly_one_status_and_counts_agree(
    rig: Rig, readings: list[dict[str, Any]]
) -> None:
    # Given readings already processed once (so the batch holds true duplicates)
    first = as_records(readings[800:810], "old")
    assert_accounted(rig.scoring.score_records(first), first)
    rows_before = len(rig.lake.scores)

    # When a batch mixes fresh readings, poison, a record with one bad reading, and redeliveries
    good = as_records(readings[810:830], "new")
    mixed = rec("mixed", [readings[830], naive_time(readings[831]), readings[832]])
    poison = [rec("not-json", "{not json"), rec("list-of-ints", json.dumps([1, 2, 3]))]
    redelivered = first[:4]
    records = [*good, mixed, *poison, *redelivered]
    report = rig.scoring.score_records(records)

    # Then every record is accounted for
    assert_accounted(report, records)
    assert Counter(report.status.values()) == {"scored": 21, "rejected": 2, "duplicate": 4}
    assert report.status["mixed"] == "scored"
    assert {report.status[r.record_id] for r in good} == {"scored"}
    assert report.status["not-json"] == report.status["list-of-ints"] == "rejected"
    assert {report.status[r.record_id] for r in redelivered} == {"duplicate"}
    counts = report.counts()
    assert counts["readings_scored"] == 22 == len(report.scored) == len(rig.lake.scores) - rows_before
    # one bad reading of "mixed", the undecodable body, and each of the three ints of the list
    assert counts["readings_rejected"] == 5 == len(report.rejected)
    assert counts["readings_duplicate"] == 4
    assert len(rig.rejects.rejected) == 5  # what the report says was rejected is in the dead-letter store
    assert [d.reading_index for d in rig.rejects.rejected if d.record_id == "list-of-ints"] == [0, 1, 2]
    # the bad reading of the mixed record is dead-lettered with its record id and its position
    (bad,) = [d for d in rig.rejects.rejected if d.record_id == "mixed"]
    assert bad.reading_index == 1
    assert bad.stage == "contract"
    assert bad.source == "sqs"
    assert any(e["field"] == "timestamp" for e in bad.errors)
    assert bad.record == naive_time(readings[831])
    # its good readings were scored
    assert {(r["device_id"], r["seq"]) for r in report.scored} >= {
        (readings[830]["device_id"], readings[830]["seq"]),
        (readings[832]["device_id"], readings[832]["seq"]),
    }
    assert {d.record_id for d in rig.rejects.rejected} == {"mixed", "not-json", "list-of-ints"}


def test_a_bad_reading_dropped_by_the_features_stage_is_dead_lettered_with_its_index(
    rig: Rig, readings: list[dict[str, Any]]
) -> None:
    # Given a record holding three readings, the middle one lacking sensors the model needs
    batch = [readings[840], missing_sensors(readings[841]), readings[842]]
    records = [rec("batch", batch), *as_records(readings[843:846])]

    report = rig.scoring.score_records(records)

    assert_accounted(report, records)
    assert report.status["batch"] == "scored"
    assert len(rig.lake.scores) == 5
    (bad,) = rig.rejects.rejected
    assert bad.record_id == "batch"
    assert bad.stage == "features"
    assert bad.record == missing_sensors(readings[841])
    assert bad.reading_index == 1  # its position in the record's payload, as for contract rejections


def test_a_record_whose_only_reading_fails_the_features_stage_is_rejected_not_scored(
    rig: Rig, readings: list[dict[str, Any]]
) -> None:
    records = [rec("unscoreable", json.dumps(missing_sensors(readings[850]))), *as_records(readings[851:854])]

    report = rig.scoring.score_records(records)

    assert_accounted(report, records)
    assert len(rig.lake.scores) == 3
    assert [d.record_id for d in rig.rejects.rejected] == ["unscoreable"]
    # nothing in it was scoreable and it went to the dead-letter store: "rejected", not "scored"
    assert report.status["unscoreable"] == "rejected"
    assert Counter(report.status.values()) == {"scored": 3, "rejected": 1}


def test_a_reading_dead_lettered_for_missing_sensors_is_scored_when_replayed_fixed(
    rig: Rig, readings: list[dict[str, Any]]
) -> None:
    # Given a reading dead-lettered at the features stage
    original = readings[860]
    first = rig.scoring.score_records([rec("broken", json.dumps(missing_sensors(original)))])
    assert [d.stage for d in rig.rejects.rejected] == ["features"]
    assert first.scored == []

    # When the operator replays it with its sensors fixed (same device, timestamp and seq)
    replay = rig.scoring.score_records([rec("replayed", json.dumps(original))])

    # Then it is scored: the rejected reading was never processed, so it is no duplicate
    assert replay.status == {"replayed": "scored"}
    assert len(rig.lake.scores) == 1
    assert replay.duplicates == 0


def test_payload_too_large_is_rejected_with_its_size_and_the_others_are_scored(
    make_rig: Callable[..., Rig], readings: list[dict[str, Any]]
) -> None:
    rig = make_rig(limits=ContractLimits(max_payload_bytes=4096))
    big = json.dumps(readings[900:930])
    size = len(big.encode())
    assert size > 4096
    records = [*as_records(readings[870:875]), rec("big", big), *as_records(readings[875:880], "tail")]

    report = rig.scoring.score_records(records)

    assert_accounted(report, records)
    assert report.status["big"] == "rejected"
    assert Counter(report.status.values()) == {"scored": 10, "rejected": 1}
    assert len(rig.lake.scores) == 10
    (dead,) = rig.rejects.rejected
    assert dead.record_id == "big"
    assert dead.stage == "contract"
    assert str(size) in dead.reason and "4096" in dead.reason
    assert isinstance(dead.record, str) and big.startswith(dead.record)  # a preview of the payload
    # nothing of the large payload was read: none of its readings reached the lake
    big_ids = {(r["device_id"], r["seq"]) for r in readings[900:930]}
    assert not big_ids & {(r["device_id"], r["seq"]) for r in rig.lake.scores}
    assert report.counts()["readings_rejected"] == 1


# ---------------------------------------------------------------------------------- idempotency


def test_the_same_records_twice_are_all_duplicates_with_no_new_rows_or_alerts(
    rig: Rig, readings: list[dict[str, Any]]
) -> None:
    device = readings[800]["device_id"]
    batch = [hot(r) for r in of_device(readings, device)[:5]] + readings[900:905]
    records = as_records(batch)

    first = rig.scoring.score_records(records)
    assert Counter(first.status.values()) == {"scored": 10}
    rows, delivered = len(rig.lake.scores), len(rig.alerts.delivered)
    assert rows == 10
    assert delivered >= 1 and [a.kind for a in rig.alerts.delivered if a.rule_id == "overheating"] == [
        "raised"
    ]

    second = rig.scoring.score_records(records)

    assert_accounted(second, records)
    assert set(second.status.values()) == {"duplicate"}
    assert second.duplicates == 10
    assert second.scored == [] and second.alerts == []
    assert len(rig.lake.scores) == rows
    assert len(rig.lake.readings) == rows
    assert len(rig.alerts.delivered) == delivered
    assert rig.rejects.rejected == []


def test_a_duplicate_inside_one_batch_is_scored_once(rig: Rig, readings: list[dict[str, Any]]) -> None:
    records = [
        rec("a", json.dumps(readings[910])),
        rec("b", json.dumps(readings[911])),
        rec("a-again", json.dumps(readings[910])),  # e.g. a producer retry within the same batch
        rec("c", [readings[912], readings[911]]),  # one new reading, one repeated from record b
    ]

    report = rig.scoring.score_records(records)

    assert_accounted(report, records)
    assert report.status == {"a": "scored", "b": "scored", "a-again": "duplicate", "c": "scored"}
    assert report.duplicates == 2
    assert len(rig.lake.scores) == 3
    keys = [row["record_key"] for row in rig.lake.scores]
    assert len(set(keys)) == 3


def test_a_reading_older_than_the_forgotten_horizon_is_dead_lettered_and_a_newer_one_is_scored(
    make_rig: Callable[..., Rig], readings: list[dict[str, Any]]
) -> None:
    rig = make_rig(dedup_memory=5)
    device = readings[800]["device_id"]
    dev = of_device(readings, device)
    # Given an old reading, then more than dedup_memory (5) newer readings of the same device
    rig.scoring.score_records([rec("old", json.dumps(dev[0]))])
    rig.scoring.score_records(as_records(dev[1:8], "newer"))  # 7 newer: dev[0..2] are forgotten
    state = stored_state(rig.states, device)
    assert len(state.seen) == 5
    horizon = reading_of(dev[2]).timestamp.timestamp()
    assert state.evicted_until == horizon
    rows = len(rig.lake.scores)

    # When the old reading, the one exactly at the horizon, a remembered one and a new one arrive
    between = {**dev[2], "timestamp": dev[2]["timestamp"].replace(":00Z", ":30Z"), "seq": 10_000}
    records = [
        rec("old-again", json.dumps(dev[0])),
        rec("at-horizon", json.dumps(dev[2])),
        rec("remembered", json.dumps(dev[5])),
        rec("between", json.dumps(between)),  # after the horizon, never seen: scored
        rec("new", json.dumps(dev[8])),
    ]
    report = rig.scoring.score_records(records)

    # Then the two it cannot tell from duplicates are refused at the idempotency stage
    assert_accounted(report, records)
    assert report.status == {
        "old-again": "rejected",
        "at-horizon": "rejected",
        "remembered": "duplicate",
        "between": "scored",
        "new": "scored",
    }
    dead = {d.record_id: d for d in rig.rejects.rejected}
    assert set(dead) == {"old-again", "at-horizon"}
    for rid, raw in (("old-again", dev[0]), ("at-horizon", dev[2])):
        assert dead[rid].stage == "idempotency"
        assert dead[rid].record == reading_of(raw).to_record()  # the reading, ready for replay
        assert dead[rid].source == "sqs"
        assert dead[rid].reason
        assert any(e["field"] == "timestamp" for e in dead[rid].errors)
    assert len(rig.lake.scores) == rows + 2
    assert {(r["seq"]) for r in rig.lake.scores[rows:]} == {10_000, dev[8]["seq"]}


# -------------------------------------------------------------------------------- failure paths


def test_state_store_load_failure_returns_every_record_for_retry_and_writes_nothing(
    rig: Rig, readings: list[dict[str, Any]]
) -> None:
    rig.states.fail = True
    records = [*as_records(readings[800:808]), rec("poison", "{not json")]

    report = rig.scoring.score_records(records)

    assert_accounted(report, records)
    assert set(report.status.values()) == {"retry"}
    assert all("state store" in reason for reason in report.retry_reasons.values())
    assert rig.lake.scores == [] and rig.lake.readings == []
    assert rig.rejects.rejected == [] and report.rejected == []
    assert rig.alerts.delivered == []

    # the store comes back: the retry scores everything once
    rig.states.fail = False
    retry = rig.scoring.score_records(records)
    assert Counter(retry.status.values()) == {"scored": 8, "rejected": 1}
    assert len(rig.lake.scores) == 8


def test_lake_failure_retries_records_with_readings_saves_no_state_and_the_retry_scores_once(
    rig: Rig, readings: list[dict[str, Any]]
) -> None:
    rig.lake.fail = True
    good = as_records(readings[800:812])
    records = [*good, rec("poison", "{not json")]

    report = rig.scoring.score_records(records)

    assert_accounted(report, records)
    assert {report.status[r.record_id] for r in good} == {"retry"}
    assert report.status["poison"] == "rejected"
    assert all(report.retry_reasons[r.record_id].startswith("lake") for r in good)
    assert rig.states.items == {}  # no state saved, so the retry is not taken for a duplicate
    assert rig.lake.scores == []
    assert rig.alerts.delivered == []

    # the lake comes back; the source redelivers the records it was told to retry
    rig.lake.fail = False
    retried = [r for r in records if r.record_id in report.retry_ids]
    again = rig.scoring.score_records(retried)
    assert set(again.status.values()) == {"scored"}
    assert len(rig.lake.scores) == 12
    # and one more redelivery changes nothing
    third = rig.scoring.score_records(retried)
    assert set(third.status.values()) == {"duplicate"}
    assert len(rig.lake.scores) == 12
    assert sorted(row["record_key"] for row in rig.lake.scores) == sorted(
        reading_key_hash(reading_of(r)) for r in readings[800:812]
    )


def test_dead_letter_failure_retries_the_records_owning_rejects_and_scores_the_others(
    rig: Rig, readings: list[dict[str, Any]]
) -> None:
    rig.rejects.fail = True
    good = as_records(readings[800:806])
    mixed = rec("mixed", [readings[806], naive_time(readings[807])])
    records = [*good, mixed, rec("poison", "{not json")]

    report = rig.scoring.score_records(records)

    assert_accounted(report, records)
    assert report.status["mixed"] == report.status["poison"] == "retry"
    assert {report.status[r.record_id] for r in good} == {"scored"}
    assert "dead-letter" in report.retry_reasons["poison"]
    assert rig.rejects.rejected == []
    assert len(rig.lake.scores) == 7  # the good reading of the mixed record was scored too

    # the dead-letter store comes back; the redelivery stores the rejects and scores nothing twice
    rig.rejects.fail = False
    retry = rig.scoring.score_records([mixed, rec("poison", "{not json")])
    assert "retry" not in retry.status.values()
    assert {d.record_id for d in rig.rejects.rejected} == {"mixed", "poison"}
    assert len(rig.rejects.rejected) == 2
    assert len(rig.lake.scores) == 7


def test_state_save_failure_for_one_device_retries_only_that_devices_records(
    rig: Rig, readings: list[dict[str, Any]]
) -> None:
    batch = readings[800:816]  # four devices, four readings each
    devices = sorted({r["device_id"] for r in batch})
    assert len(devices) == 4
    failing = devices[1]
    rig.states.fail_devices = {failing}
    records = as_records(batch)

    report = rig.scoring.score_records(records)

    assert_accounted(report, records)
    for record, raw in zip(records, batch, strict=True):
        expected = "retry" if raw["device_id"] == failing else "scored"
        assert report.status[record.record_id] == expected, record.record_id
    assert len(report.retry_ids) == sum(r["device_id"] == failing for r in batch) == 4
    assert all("state store" in reason for reason in report.retry_reasons.values())
    assert set(rig.states.items) == set(devices) - {failing}
    assert all(len(stored_state(rig.states, d).seen) == 4 for d in set(devices) - {failing})


def test_alert_delivery_failure_keeps_the_alert_in_the_outbox_and_a_later_batch_delivers_it_once(
    rig: Rig, readings: list[dict[str, Any]], bundle: ModelBundle
) -> None:
    device = readings[800]["device_id"]
    hot_batch = [hot(r) for r in of_device(readings, device)[:5]]
    others = [r for r in readings[800:830] if r["device_id"] != device][:6]
    hot_records = as_records(hot_batch, "hot")
    other_records = as_records(others, "ok")
    records = hot_records + other_records

    # Given the alert sink is down when the hot readings are scored
    rig.alerts.fail = True
    report = rig.scoring.score_records(records)

    # Then the hot device's records go back for retry and the others are scored
    assert_accounted(report, records)
    assert sorted(report.retry_ids) == sorted(r.record_id for r in hot_records)
    assert {report.status[r.record_id] for r in other_records} == {"scored"}
    assert "outbox" in report.retry_reasons[hot_records[0].record_id]
    assert report.alerts == []
    assert rig.alerts.delivered == []
    assert len(rig.lake.scores) == 11  # the scores were kept
    # and the alerts wait in the device's outbox, in the store
    outbox = stored_state(rig.states, device).outbox
    assert outbox
    assert "overheating" in {a["rule_id"] for a in outbox}
    assert {a["device_id"] for a in outbox} == {device}
    assert {a["model_version"] for a in outbox} == {bundle.model_version}
    assert all(not stored_state(rig.states, d).outbox for d in {r["device_id"] for r in others})

    # When the sink is back and the source redelivers the retried records (all duplicates now)
    rig.alerts.fail = False
    retry = rig.scoring.score_records(hot_records)

    # Then the outbox is delivered exactly once and cleared; nothing is scored twice
    assert_accounted(retry, hot_records)
    assert set(retry.status.values()) == {"duplicate"}
    assert sorted(a.dedup_key for a in rig.alerts.delivered) == sorted(
        f"{a['alert_id']}:{a['kind']}" for a in outbox
    )
    assert sorted(a.dedup_key for a in retry.alerts) == sorted(a.dedup_key for a in rig.alerts.delivered)
    assert stored_state(rig.states, device).outbox == []
    assert len(rig.lake.scores) == 11

    # and yet another batch for the device delivers nothing more
    delivered = len(rig.alerts.delivered)
    again = rig.scoring.score_records(hot_records)
    assert set(again.status.values()) == {"duplicate"}
    assert again.alerts == []
    assert len(rig.alerts.delivered) == delivered


def test_outbox_is_flushed_by_a_later_batch_of_new_readings_for_the_device(
    rig: Rig, readings: list[dict[str, Any]]
) -> None:
    device = readings[800]["device_id"]
    dev = of_device(readings, device)
    rig.alerts.fail = True
    rig.scoring.score_records(as_records([hot(r) for r in dev[:5]], "hot"))
    pending = stored_state(rig.states, device).outbox
    assert pending

    rig.alerts.fail = False
    report = rig.scoring.score_records(as_records([hot(r) for r in dev[5:7]], "later"))

    assert set(report.status.values()) == {"scored"}
    delivered_keys = [a.dedup_key for a in rig.alerts.delivered]
    assert len(delivered_keys) == len(set(delivered_keys))  # each alert once
    assert {f"{a['alert_id']}:{a['kind']}" for a in pending} <= set(delivered_keys)
    assert stored_state(rig.states, device).outbox == []


# ---------------------------------------------------------------------------- what is produced


def test_alerts_and_scored_rows_carry_the_bundle_model_version_and_the_record_key(
    rig: Rig, readings: list[dict[str, Any]], bundle: ModelBundle
) -> None:
    device = readings[800]["device_id"]
    batch = [hot(r, 130.0) for r in of_device(readings, device)[:3]] + readings[900:904]

    report = rig.scoring.score_records(as_records(batch))

    assert report.model_version == bundle.model_version
    assert rig.alerts.delivered
    assert {a.model_version for a in rig.alerts.delivered} == {bundle.model_version}
    assert {a.model_version for a in report.alerts} == {bundle.model_version}
    overheating = [a for a in report.alerts if a.rule_id == "overheating"]
    assert [a.kind for a in overheating] == ["raised"]
    assert overheating[0].device_id == device
    assert overheating[0].observed["temperature"] == 130.0
    source = of_device(readings, device)[0]  # the alert names where the device is
    assert (overheating[0].asset, overheating[0].line, overheating[0].site) == (
        source["asset"],
        source["line"],
        source["site"],
    )
    assert len(rig.lake.scores) == len(batch)
    expected_keys = {reading_key_hash(reading_of(r)) for r in batch}
    assert {row["record_key"] for row in rig.lake.scores} == expected_keys
    assert {row["model_version"] for row in rig.lake.scores} == {bundle.model_version}
    assert [row["record_key"] for row in report.scored] == [row["record_key"] for row in rig.lake.scores]


def test_work_and_io_seconds_split_the_wall_time_of_the_call(
    rig: Rig, readings: list[dict[str, Any]]
) -> None:
    records = [*as_records(readings[800:900]), rec("poison", "{not json")]

    t0 = time.perf_counter()
    report = rig.scoring.score_records(records)
    wall = time.perf_counter() - t0

    assert report.work_seconds > 0
    assert report.io_seconds > 0
    assert abs((report.work_seconds + report.io_seconds) - wall) <= 0.2 * wall + 0.005


def test_io_seconds_count_the_time_spent_waiting_on_ports(
    bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    class SlowLake(MemoryLake):
        def write(self, readings: Any, scores: Any) -> list[str]:
            time.sleep(0.05)
            return super().write(readings, scores)

    scoring = EventScoring(
        model=lambda: bundle,
        states=MemoryStateStore(),
        lake=SlowLake(),
        alerts=MemoryAlertSink(),
        rejects=MemoryRejectSink(),
    )
    t0 = time.perf_counter()
    report = scoring.score_records(as_records(readings[800:820]))
    wall = time.perf_counter() - t0

    assert report.io_seconds >= 0.05
    assert report.work_seconds > 0
    assert report.work_seconds < wall - 0.05 + 0.005
    assert abs((report.work_seconds + report.io_seconds) - wall) <= 0.2 * wall + 0.005


def test_device_state_key_set_follows_remember_and_copies() -> None:
    """The cached key set always equals the keys of ``seen`` (after evictions and in successors)."""
    state = DeviceState()
    assert state.seen_keys() == set()
    for i in range(10):
        state.remember(f"k{i}", float(i), memory=4)
        assert state.seen_keys() == {k for k, _ in state.seen}
    assert state.seen_keys() == {"k6", "k7", "k8", "k9"}
    assert state.evicted_until == 5.0
    nxt = state.successor(state.history, state.alerts)
    nxt.remember("k10", 10.0, memory=4)
    assert nxt.seen_keys() == {"k7", "k8", "k9", "k10"}
    assert state.seen_keys() == {"k6", "k7", "k8", "k9"}  # the predecessor is untouched
    # the key set is shared until either side remembers: the predecessor changing, or a second
    # successor of the same state, leaves the others as they were
    other = state.successor(state.history, state.alerts)
    state.remember("k11", 11.0, memory=4)
    assert state.seen_keys() == {"k7", "k8", "k9", "k11"}
    assert other.seen_keys() == {"k6", "k7", "k8", "k9"}
    assert nxt.seen_keys() == {"k7", "k8", "k9", "k10"}
    restored = DeviceState.from_dict(nxt.to_dict())
    assert restored == nxt and restored.seen_keys() == nxt.seen_keys()


def test_device_state_json_text_round_trips_with_a_nan_observation_in_the_outbox() -> None:
    # Given a state whose undelivered alert observed a rate with no previous reading (nan)
    state = DeviceState()
    state.remember_all([("k1", 1.5), ("k2", 2.5)], memory=8)
    state.outbox.append({"alert_id": "a1", "kind": "raised", "observed": {"t.rate_per_second": float("nan")}})

    # When written as the store's JSON text and read back
    restored = DeviceState.from_json(state.to_json())

    # Then nothing changed (the nan stays a number, not a null the alert could not be read from)
    assert restored.seen == state.seen and restored.seen_keys() == {"k1", "k2"}
    assert json.loads(state.to_json())["seen"] == [["k1", 1.5], ["k2", 2.5]]
    observed = restored.outbox[0]["observed"]["t.rate_per_second"]
    assert isinstance(observed, float) and math.isnan(observed)
    assert restored.to_dict().keys() == state.to_dict().keys()


def test_remember_all_keeps_and_forgets_what_remember_one_by_one_does() -> None:
    items = [(f"k{i}", float(i % 7) + i / 100) for i in range(40)]
    one_by_one, at_once = DeviceState(), DeviceState()
    one_by_one.seen_keys(), at_once.seen_keys()  # with the cached key sets live
    for key, ts in items:
        one_by_one.remember(key, ts, memory=16)
    at_once.remember_all(items[:5], memory=16)
    at_once.remember_all(items[5:], memory=16)
    assert at_once == one_by_one
    assert at_once.seen_keys() == one_by_one.seen_keys() == {k for k, _ in items[-16:]}
    assert at_once.evicted_until == max(ts for _, ts in items[:-16])
