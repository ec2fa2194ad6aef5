"""A one-reading HTTP request's own work (the contract's short path, each request's part of its
group's report, its answer and the answer's JSON text) decides and answers exactly as the code it
replaced did.

Each test compares the code with an oracle: the code as it was before the short paths (kept here,
verbatim but for names), on generated input, hostile input included. Every status, body and
rejection text must be the same; a JSON text written by orjson must be the same JSON value.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile import ODD_TEXT, hostile_bodies
from zaindari.alerting import Alert
from zaindari.contract import (
    DEFAULT_LIMITS,
    ContractLimits,
    ParsedPayload,
    PayloadTooLarge,
    Reading,
    Rejection,
    _Checks,
    _records_of,
    _valid_reading,
    parse_payload,
    parse_payloads,
    parse_readings,
)
from zaindari.edge.http import json_response
from zaindari.event_scoring import (
    HTTP_SCORE_FIELDS,
    EventScoring,
    HttpAnswer,
    ScoringReport,
    http_answer,
)
from zaindari.jsonable import PlainJson, decode_json, json_default, json_text
from zaindari.memory_ports import MemoryAlertSink, MemoryLake, MemoryRejectSink, MemoryStateStore
from zaindari.ports import RejectedRecord

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
_LIMITS = st.sampled_from(
    [
        ContractLimits(),
        ContractLimits(max_sensors=3, max_future_skew_seconds=30.0, max_batch_readings=2),
        ContractLimits(max_payload_bytes=200),
    ]
)


def _record(**overrides: Any) -> dict[str, Any]:
    return {
        "device_id": "press-7",
        "asset": "p7",
        "timestamp": "2024-05-01T11:59:00Z",
        "sensors": {"temperature": 61.5, "pressure": 4.25},
        "seq": 3,
        **overrides,
    }


_BASES = [
    _record(),
    _record(timestamp="2024-05-01T12:00:20Z", seq=None, mode="run"),  # 20 s ahead: within one skew
    _record(timestamp=1_714_564_790_000, sensors={"a": 1, "b": 2.5, "c": -0.0, "d": 1e-7}),
    _record(device_id=" pump\u00e9 ", line="l\u00e91"),  # non-ASCII: the long way
]


# -- the oracles: the code before the short paths


def _parse_payload_before(
    payload: bytes | str | Any, *, limits: ContractLimits | None = None, now: datetime | None = None
) -> ParsedPayload:
    """``parse_payload`` before its JSON short path: decode the text, then validate the document."""
    limits = limits or DEFAULT_LIMITS
    document: Any = payload
    if isinstance(payload, bytes | bytearray | str):
        if isinstance(payload, str) and payload.isascii():
            text = payload
            if len(text) > limits.max_payload_bytes:
                raise PayloadTooLarge(len(text), limits.max_payload_bytes)
        else:
            raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
            if len(raw) > limits.max_payload_bytes:
                raise PayloadTooLarge(len(raw), limits.max_payload_bytes)
            text = raw.decode("utf-8", "replace")
        try:
            document = decode_json(text)
        except (ValueError, RecursionError) as exc:
            return ParsedPayload(rejections=[Rejection(0, f"payload is not valid JSON: {exc}", record=text)])
    if type(document) is dict and "readings" not in document:
        reading = _valid_reading(document, _Checks.of(limits, now))
        if reading is not None:
            return ParsedPayload([reading], [0], [])
    records = _records_of(document)
    if records is None:
        return ParsedPayload(
            rejections=[
                Rejection(
                    0,
                    "payload must be a reading object, a list of readings, or {'readings': [...]} "
                    "with no other key",
                    record=document,
                )
            ]
        )
    if len(records) > limits.max_batch_readings:
        return ParsedPayload(
            rejections=[
                Rejection(
                    0,
                    f"{len(records)} readings in one payload, above the limit of {limits.max_batch_readings}",
                    record=document,
                )
            ]
        )
    return parse_readings(records, limits=limits, now=now)


def _parse_http_before(
    body: bytes | str, limits: ContractLimits, now: datetime
) -> list[Reading] | HttpAnswer:
    try:
        parsed = _parse_payload_before(body, limits=limits, now=now)
    except PayloadTooLarge as exc:
        return HttpAnswer(413, {"message": str(exc)})
    if parsed.rejections:
        return HttpAnswer(
            400,
            {
                "message": "invalid telemetry: nothing was scored",
                "errors": [r.to_dict() for r in parsed.rejections],
            },
        )
    return parsed.readings


def _for_record_before(report: ScoringReport, record_id: str) -> ScoringReport:
    """``ScoringReport.for_record`` before its index: a scan of the whole report per record."""
    owner_of = {
        (r["device_id"], r["timestamp"]): o for r, o in zip(report.scored, report.scored_owners, strict=True)
    }
    first_of_device: dict[str, str] = {}
    for row, owner in zip(report.scored, report.scored_owners, strict=True):
        first_of_device.setdefault(row["device_id"], owner)
    alerts = [
        a
        for a in report.alerts
        if owner_of.get((a.device_id, a.timestamp), first_of_device.get(a.device_id)) == record_id
    ]
    return ScoringReport(
        status={record_id: report.status[record_id]} if record_id in report.status else {},
        retry_reasons={k: v for k, v in report.retry_reasons.items() if k == record_id},
        scored=[r for r, o in zip(report.scored, report.scored_owners, strict=True) if o == record_id],
        rejected=[r for r in report.rejected if r.record_id == record_id],
        alerts=alerts,
        duplicates=report.duplicate_owners.count(record_id),
        model_version=report.model_version,
        lake_objects=report.lake_objects,
        work_seconds=report.work_seconds,
        io_seconds=report.io_seconds,
        scored_owners=[record_id] * sum(o == record_id for o in report.scored_owners),
        duplicate_owners=[o for o in report.duplicate_owners if o == record_id],
    )


def _http_answer_before(report: ScoringReport) -> HttpAnswer:
    if report.retry_ids:
        return HttpAnswer(
            503, {"message": "a downstream service failed; retry"}, {"Retry-After": "5"}, report
        )
    return HttpAnswer(
        200,
        {
            "model_version": report.model_version,
            "scores": [{k: row[k] for k in HTTP_SCORE_FIELDS} for row in report.scored],
            "alerts": [a.model_dump(mode="json") for a in report.alerts],
            "rejected": [r.to_dict() for r in report.rejected],
            "duplicates": report.duplicates,
        },
        report=report,
    )


def _json_response_before(status: int, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "body": json.dumps(body, default=json_default),
        "headers": {"Content-Type": "application/json", **(headers or {})},
    }


def _same_response(new: dict[str, Any], old: dict[str, Any], body: Any) -> None:
    """The same status and headers; the same text, or (an orjson text) the same JSON value."""
    assert (new["statusCode"], new["headers"]) == (old["statusCode"], old["headers"])
    if type(body) is PlainJson:
        assert json.loads(new["body"]) == json.loads(old["body"])
    else:
        assert new["body"] == old["body"]


# -- the contract's short path


def _scoring(limits: ContractLimits) -> EventScoring:
    def no_model() -> Any:
        raise AssertionError("parse_http scores nothing")

    return EventScoring(
        model=no_model,
        states=MemoryStateStore(),
        lake=MemoryLake(),
        alerts=MemoryAlertSink(),
        rejects=MemoryRejectSink(),
        limits=limits,
        clock=lambda: NOW,
    )


def _assert_same_parse(new: list[Reading] | HttpAnswer, old: list[Reading] | HttpAnswer) -> None:
    if isinstance(old, HttpAnswer):
        assert isinstance(new, HttpAnswer), new
        assert (new.status, new.body, new.headers) == (old.status, old.body, old.headers)
        _same_response(
            json_response(new.status, new.body), _json_response_before(old.status, old.body), new.body
        )
    else:
        assert isinstance(new, list), new
        assert [(r.model_dump(), r.timestamp_iso, r.dedup_key()) for r in new] == [
            (r.model_dump(), r.timestamp_iso, r.dedup_key()) for r in old
        ]


@settings(max_examples=150)
@given(bodies=hostile_bodies(_BASES, max_size=4), limits=_LIMITS)
def test_an_http_body_is_accepted_or_refused_as_before_with_the_same_answer(
    bodies: list[str], limits: ContractLimits
) -> None:
    # Given hostile and valid bodies, as text and as the bytes a server reads
    scoring = _scoring(limits)
    for text in bodies:
        for body in (text, text.encode("utf-8", "surrogatepass")):
            # When the edge parses one, Then it decides and words it as the code before did
            _assert_same_parse(scoring.parse_http(body), _parse_http_before(body, limits, NOW))


@settings(max_examples=100)
@given(
    document=st.sampled_from(_BASES),
    edit=st.sampled_from(
        [
            ("seq", 1.0),
            ("seq", 2**63),
            ("seq", True),
            ("seq", -1),
            ("timestamp", "2024-05-01T12:01:00Z"),  # beyond the skew of the small limits
            ("timestamp", "2024-05-01T12:00:00"),
            ("timestamp", 1_714_564_800_000.5),
            ("sensors", {}),
            ("sensors", {"a": 1, "b": 2, "c": 3, "d": 4}),
            ("sensors", {"a": "1"}),
            ("sensors", {"a": 1e308 * 10}),
            ("device_id", " "),
            ("device_id", "\ud800"),
            ("device_id", "a\u2028b"),
            ("asset", None),
            ("extra", 1),
        ]
    ),
    limits=_LIMITS,
)
def test_a_reading_near_the_contracts_edges_is_decided_as_before(
    document: dict[str, Any], edit: tuple[str, Any], limits: ContractLimits
) -> None:
    body = json.dumps({**document, edit[0]: edit[1]}, allow_nan=True)
    scoring = _scoring(limits)

    _assert_same_parse(scoring.parse_http(body), _parse_http_before(body, limits, NOW))
    _assert_same_parse(scoring.parse_http(body.encode()), _parse_http_before(body.encode(), limits, NOW))


def test_json_edge_cases_are_read_as_the_decoded_document_is() -> None:
    head = '{"device_id":"a","timestamp":"2024-05-01T12:00:00Z",'
    for rest in [
        '"sensors":{"a":1.0},"device_id":"b"}',  # a duplicate key: the last one holds
        '"sensors":{"a":1.0,"a":2.0}}',
        '"sensors":{"a":1e-400}}',
        '"sensors":{"a":100000000000000000000}}',
        '"sensors":{"a":01}}',
        '"sensors":{"a":NaN}}',
        '"sensors":{"a":Infinity}}',
        '"sensors":{"a":1},"seq":1E2}',
        '"sensors":{"a":1},"asset":"\\ud800"}',
        '"sensors":{"a":1},"asset":"\\ud83d\\ude00"}',
        '"sensors":{"a":1},"asset":"a\\u0000"}',
        '"sensors":{"a":1}} ',
        '"sensors":{"a":1}}x',
        '"sensors":{"a":1},}',
    ]:
        body = head + rest
        _assert_same_parse(
            _scoring(DEFAULT_LIMITS).parse_http(body), _parse_http_before(body, DEFAULT_LIMITS, NOW)
        )
        for payload in (body, body.encode()):
            assert (
                parse_payloads([payload], now=NOW).readings
                == _parse_payload_before(payload, now=NOW).readings
            )


def test_readings_parsed_already_are_kept_as_they_are_in_a_batch() -> None:
    # Given payloads that are lists of readings parsed already (the edge's records), one too long
    readings = [r for r in (parse_payload(json.dumps(b), now=NOW).readings for b in _BASES) for r in r]
    limits = ContractLimits(max_batch_readings=2)
    payloads = [readings[:1], readings[1:3], readings, []]

    batch = parse_payloads(payloads, limits=limits, now=NOW)

    # Then each is what parse_payload made of it alone: the same objects, in order, and the
    # list above the limit refused whole
    for i, payload in enumerate(payloads):
        alone = _parse_payload_before(payload, limits=limits, now=NOW)
        assert [r for r, p in zip(batch.readings, batch.payloads, strict=True) if p == i] == alone.readings
        assert all(
            a is b
            for a, b in zip(
                [r for r, p in zip(batch.readings, batch.payloads, strict=True) if p == i],
                alone.readings,
                strict=True,
            )
        )
        assert [x for x, p in zip(batch.indices, batch.payloads, strict=True) if p == i] == alone.indices
        assert [r for p, r in batch.rejections if p == i] == alone.rejections
    assert [r.reason for _, r in batch.rejections] == ["4 readings in one payload, above the limit of 2"]


# -- each request's part of its group's report, and its answer


def _alert(device: str, timestamp: str, n: int) -> Alert:
    return Alert(
        alert_id=f"a{n}",
        kind="raised",
        device_id=device,
        rule_id="overheat",
        source="expert",
        severity="high",
        message="hot",
        timestamp=timestamp,
        started_at=timestamp,
        observed={"temperature": 90.5},
        thresholds={"temperature": 80.0},
        model_version="m:1",
        rule_set_version="r1",
    )


_SCORE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 5),
    st.floats(-10, 10).map(np.float64),
)


@st.composite
def _report(draw: st.DrawFn) -> ScoringReport:
    """A group's report: rows of a few devices and instants (so keys collide), alerts on them or on
    no row of theirs (an outbox's), dead letters, duplicates and retries of any of the records."""
    ids = [f"r{i}" for i in range(draw(st.integers(1, 6)))]
    devices = [*draw(st.lists(ODD_TEXT, min_size=1, max_size=3)), "press-7"]
    instants = ["2024-05-01T12:00:00Z", "2024-05-01T12:00:01Z"]
    scored, owners = [], []
    for _ in range(draw(st.integers(0, 10))):
        scored.append(
            {
                "device_id": draw(st.sampled_from(devices)),
                "timestamp": draw(st.sampled_from(instants)),
                "seq": draw(st.one_of(st.none(), st.integers(0, 2**64))),
                "score": draw(_SCORE),
                "severity": draw(st.one_of(st.none(), st.sampled_from(["high", "\u00e9lev\u00e9"]))),
                "rules": draw(st.lists(st.one_of(ODD_TEXT, st.integers()), max_size=2)),
                "alert": draw(st.one_of(st.booleans(), st.sampled_from([np.bool_(True), 0]))),
                "late": False,
                "model_version": "m:1",
                "record_key": "k",
            }
        )
        owners.append(draw(st.sampled_from(ids)))
    alerts = [
        _alert(draw(st.sampled_from(devices)), draw(st.sampled_from(instants)), n)
        for n in range(draw(st.integers(0, 3)))
    ]
    rejected = [
        RejectedRecord("http", draw(st.sampled_from([*ids, "elsewhere"])), "bad", record={"x": 1})
        for _ in range(draw(st.integers(0, 2)))
    ]
    status = {rid: draw(st.sampled_from(["scored", "rejected", "duplicate", "retry"])) for rid in ids}
    return ScoringReport(
        status=status,
        retry_reasons={rid: f"lake: down {rid}" for rid, s in status.items() if s == "retry"},
        scored=scored,
        scored_owners=owners,
        rejected=rejected,
        alerts=alerts,
        duplicates=0,
        duplicate_owners=draw(st.lists(st.sampled_from(ids), max_size=4)),
        model_version=draw(st.sampled_from(["m:1", None])),
        lake_objects=["scores/x.parquet"],
    )


@settings(max_examples=200)
@given(report=_report())
def test_each_requests_part_of_a_report_and_its_answer_are_what_they_were(report: ScoringReport) -> None:
    for record_id in [*report.status, "unknown"]:
        # When each request of the group takes its part (twice: the split is kept on the report)
        part, again = report.for_record(record_id), report.for_record(record_id)
        expected = _for_record_before(report, record_id)

        # Then it is the part the scan found, a copy of its own each time
        assert part == again == expected
        assert part.scored is not again.scored and part.alerts is not again.alerts

        # And its answer is the same answer, and the same JSON
        new, old = http_answer(part), _http_answer_before(expected)
        assert (new.status, new.headers, new.report) == (old.status, old.headers, old.report)
        assert new.body == old.body or _nan_in(old.body)
        _same_response(
            json_response(new.status, new.body, new.headers),
            _json_response_before(old.status, old.body, old.headers),
            new.body,
        )


def _nan_in(body: dict[str, Any]) -> bool:
    return any(isinstance(s["score"], float) and math.isnan(s["score"]) for s in body.get("scores", []))


def test_a_report_changed_after_a_split_is_split_again() -> None:
    row = {k: None for k in HTTP_SCORE_FIELDS} | {"device_id": "d", "timestamp": "t", "rules": []}
    report = ScoringReport(status={"r1": "scored"}, scored=[row], scored_owners=["r1"])
    assert len(report.for_record("r1").scored) == 1

    report.scored.append(dict(row, timestamp="u"))
    report.scored_owners.append("r1")
    assert len(report.for_record("r1").scored) == 2
    report.scored = [row]  # (replaced, same length as before)
    report.scored_owners = ["r2"]
    assert report.for_record("r1").scored == [] and report.for_record("r2").scored == [row]
    report.alerts.append(_alert("d", "t", 1))
    assert [a.alert_id for a in report.for_record("r2").alerts] == ["a1"]


def test_only_an_answer_of_plain_values_is_written_by_orjson() -> None:
    row = {
        "device_id": "press-7",
        "timestamp": "2024-05-01T12:00:00Z",
        "seq": 3,
        "score": 0.25,
        "severity": None,
        "rules": ["overheat"],
        "alert": True,
        "late": False,
    }
    report = ScoringReport(status={"r": "scored"}, scored=[row], scored_owners=["r"], model_version="m:1")
    assert type(http_answer(report).body) is PlainJson

    for odd in [
        {"score": math.nan},
        {"score": math.inf},
        {"score": np.float64(0.25)},
        {"score": 1},
        {"seq": True},
        {"alert": np.bool_(True)},
        {"rules": [1]},
        {"rules": ("overheat",)},
    ]:
        body = http_answer(
            ScoringReport(status={"r": "scored"}, scored=[{**row, **odd}], scored_owners=["r"])
        ).body
        assert type(body) is dict, odd
        assert json_response(200, body)["body"] == json.dumps(body, default=json_default)
    with_alert = ScoringReport(
        status={"r": "scored"}, scored=[row], scored_owners=["r"], alerts=[_alert("d", "t", 1)]
    )
    assert type(http_answer(with_alert).body) is dict


_PLAIN = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),  # beyond 64 bits: the standard library's
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),  # lone surrogates included: the standard library's
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(body=st.dictionaries(st.text(), _PLAIN, max_size=6))
def test_plain_json_is_the_same_json_value_and_any_other_body_the_same_text(body: dict[str, Any]) -> None:
    before = json.dumps(body, default=json_default)

    assert json.loads(json_text(PlainJson(body))) == json.loads(before)
    assert json_text(body) == before
    assert json_text({"when": NOW, "late": timedelta(0), "raw": b"\xff"}) == json.dumps(
        {"when": NOW, "late": timedelta(0), "raw": b"\xff"}, default=json_default
    )
