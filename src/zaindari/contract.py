"""The telemetry contract: what a reading is, and how raw payloads become readings or rejections.

A reading is one device's sensor values at one instant. Payloads arrive as bytes or decoded JSON
from every trigger (IoT rule, SQS, Kinesis, EventBridge, HTTP, files, the edge); they all pass
through :func:`parse_payload` or :func:`parse_reading`, so one set of rules decides what is valid.
Nothing here raises on bad *records*: each bad record becomes a :class:`Rejection` that names the
field and keeps the raw record so it can be replayed. Only a payload that is too large as a whole
raises :class:`PayloadTooLarge`, because nothing inside it may be read.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
)

from zaindari.jsonable import decode_json

__all__ = [
    "ContractLimits",
    "ParsedBatch",
    "ParsedPayload",
    "PayloadTooLarge",
    "Reading",
    "ReadingBatch",
    "Rejection",
    "TelemetryPayload",
    "parse_payload",
    "parse_payloads",
    "parse_reading",
    "parse_readings",
]

# Before this instant a timestamp is almost surely epoch *seconds* sent where milliseconds are due.
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


class ContractLimits(BaseModel):
    """Bounds every entry point enforces before any work is done.

    Parameters
    ----------
    max_payload_bytes
        Largest accepted payload (one message, one HTTP body).
    max_sensors
        Most sensor values in one reading.
    max_batch_readings
        Most readings in one payload.
    max_future_skew_seconds
        How far ahead of the receiver's clock a timestamp may be.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_payload_bytes: int = Field(default=256 * 1024, gt=0)
    max_sensors: int = Field(default=256, gt=0)
    max_batch_readings: int = Field(default=10_000, gt=0)
    max_future_skew_seconds: float = Field(default=300.0, ge=0)


DEFAULT_LIMITS = ContractLimits()


class PayloadTooLarge(ValueError):
    """The payload exceeds ``ContractLimits.max_payload_bytes`` (HTTP 413)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload is {size} bytes, above the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def _epoch_ms_to_utc(value: float) -> datetime:
    if not math.isfinite(value):
        raise ValueError("timestamp must be a finite number of epoch milliseconds")
    try:
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"timestamp {value!r} is out of range for epoch milliseconds") from exc


def _aware_utc(value: Any) -> datetime:
    """A timestamp as received (ISO 8601 with an offset, or epoch milliseconds) as UTC."""
    if type(value) is str:  # the common case first
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise ValueError(f"timestamp {value[:64]!r} is not ISO 8601") from exc
    elif isinstance(value, bool):
        raise ValueError("timestamp must be an ISO 8601 string or epoch milliseconds, not a boolean")
    elif isinstance(value, int | float):
        try:
            return _epoch_ms_to_utc(float(value))
        except OverflowError:
            raise ValueError("timestamp is too large for epoch milliseconds") from None
    elif isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        return _aware_utc(str(value))
    else:
        raise ValueError("timestamp must be an ISO 8601 string or epoch milliseconds")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("timestamp must carry a timezone (for example 'Z' or '+01:00')")
    return parsed.astimezone(UTC)


def _iso_z(timestamp: datetime) -> str:
    """``timestamp.isoformat()`` with ``Z`` for ``+00:00``; a UTC instant (every reading's) is
    formatted by hand, ~30% faster than ``isoformat``."""
    if timestamp.tzinfo is not UTC:
        return timestamp.isoformat().replace("+00:00", "Z")
    t = timestamp
    head = "%04d-%02d-%02dT%02d:%02d:%02d" % (t.year, t.month, t.day, t.hour, t.minute, t.second)
    return f"{head}.{t.microsecond:06d}Z" if t.microsecond else f"{head}Z"


def _aware_utc_since_2000(value: Any) -> datetime:
    parsed = _aware_utc(value)
    if parsed < _EARLIEST:
        raise ValueError(
            f"timestamp {parsed.isoformat()} is before 2000-01-01: epoch seconds sent as milliseconds?"
        )
    return parsed


def _reading_timestamp(value: Any) -> datetime:
    """:func:`_aware_utc_since_2000`, with the usual value (an ISO string with an offset, since
    2000) checked in this one call: run by pydantic-core once per reading, the two nested Python
    calls cost ~0.5 us. Anything else, or anything wrong, goes the long way, which words the error."""
    if type(value) is str:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return _aware_utc_since_2000(value)
        if parsed.utcoffset() is not None:
            parsed = parsed.astimezone(UTC)
            if parsed >= _EARLIEST:
                return parsed
    return _aware_utc_since_2000(value)


def _timestamp_in_window(value: Any, info: ValidationInfo) -> datetime:
    parsed = _aware_utc_since_2000(value)
    context = info.context or {}
    now: datetime | None = context.get("now")
    if now is not None:
        limits: ContractLimits = context.get("limits") or DEFAULT_LIMITS
        if parsed - now > timedelta(seconds=limits.max_future_skew_seconds):
            raise ValueError(
                f"timestamp {parsed.isoformat()} is more than {limits.max_future_skew_seconds:g} s "
                f"ahead of the receiver's clock ({now.isoformat()})"
            )
    return parsed


def _sensors_within_limits(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, Mapping):
        raise ValueError("sensors must be an object mapping sensor name to number")
    limits: ContractLimits = (info.context or {}).get("limits") or DEFAULT_LIMITS
    if len(value) == 0:
        raise ValueError("sensors must hold at least one value")
    if len(value) > limits.max_sensors:
        raise ValueError(f"{len(value)} sensors, above the limit of {limits.max_sensors}")
    return value


# Identifiers and sensor values are checked by pydantic-core (Rust): a Python validator per field
# cost ~3 us per reading, more than the rest of validation. Python's messages for the checks that
# moved there are restored by ``_field_errors`` (only bad readings pay for that).

#: ``str.isprintable``: no character of the Unicode categories Other (``C*``) or Separator (``Z*``)
#: but the space.
_PRINTABLE = r"^(?:[^\p{C}\p{Z}]| )*$"
_PRINTABLE_MESSAGE = "must contain printable characters only"

SensorName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-/]{1,128}$")]
#: A JSON number (an integer becomes a float), finite; never a string, boolean or null.
SensorValue = Annotated[float, Strict(), Field(allow_inf_nan=False)]
DeviceId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128, pattern=_PRINTABLE)
]
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, max_length=128, pattern=_PRINTABLE)]
Mode = Annotated[str, StringConstraints(strip_whitespace=True, max_length=64, pattern=_PRINTABLE)]
_IDENTIFIERS = frozenset({"device_id", "asset", "line", "site", "mode"})


class Reading(BaseModel):
    """One device's sensor values at one instant.

    Timestamps are ISO 8601 strings that carry an offset (``Z`` or ``+02:00``) or epoch
    milliseconds (UTC implied); both normalise to an aware UTC ``datetime``. Sensor values are JSON
    numbers, finite, never strings or booleans. Identifiers are stripped of surrounding whitespace
    (Unicode ``White_Space``) and hold printable characters only (``str.isprintable``): the ASCII
    separators U+001C-U+001F, which ``str.strip`` would also remove, are refused as the control
    characters they are.

    The model checks what a reading is on its own; what depends on the receiver (its clock's
    window for timestamps, the number of sensors its :class:`ContractLimits` allow, at least one)
    is checked by the parse functions, which every entry point uses.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: DeviceId
    asset: Identifier | None = None
    line: Identifier | None = None
    site: Identifier | None = None
    timestamp: Annotated[datetime, BeforeValidator(_reading_timestamp)]
    sensors: dict[SensorName, SensorValue]
    mode: Mode | None = None
    seq: int | None = Field(default=None, ge=0, le=2**63 - 1, strict=True)

    @property
    def timestamp_iso(self) -> str:
        """The timestamp as ISO 8601 UTC with ``Z`` (what the lake and the scores carry).

        Cached in the instance: ``datetime.isoformat`` costs ~1 us, and the scoring path needs
        this string three times per reading (idempotency key, score row, raw telemetry row).
        (``functools.cached_property`` takes a lock on every first access in Python 3.11.)
        """
        timestamp = self.timestamp
        cached: tuple[datetime, str] | None = self.__dict__.get("_timestamp_iso")
        if cached is None or cached[0] is not timestamp:  # (a model_copy with a new timestamp)
            cached = (timestamp, _iso_z(timestamp))
            self.__dict__["_timestamp_iso"] = cached
        return cached[1]

    def dedup_key(self) -> str:
        """Identity of a reading for idempotency: device, timestamp and sequence number.

        The timestamp is written ``+00:00`` (``datetime.isoformat``), as the keys devices'
        states already remember were.
        """
        iso = self.timestamp_iso
        when = f"{iso[:-1]}+00:00" if iso[-1] == "Z" else iso
        return f"{self.device_id}|{when}|{'' if self.seq is None else self.seq}"

    def to_record(self, *, copy_sensors: bool = True) -> dict[str, Any]:
        """The reading as JSON-ready data (timestamp as ISO 8601 UTC with ``Z``); round-trips.

        Built by hand: it runs once per reading on the lake path, where ``model_dump`` costs ~10x.
        The field values are read from the instance's ``__dict__`` (where pydantic keeps them),
        ~2x quicker than attribute access. ``copy_sensors=False`` puts the reading's own
        ``sensors`` dict in the record (~0.2 ms less per 1,000): only for a caller that never
        mutates the record, such as one that only serialises it.
        """
        values = self.__dict__
        record: dict[str, Any] = {"device_id": values["device_id"]}
        if (asset := values["asset"]) is not None:
            record["asset"] = asset
        if (line := values["line"]) is not None:
            record["line"] = line
        if (site := values["site"]) is not None:
            record["site"] = site
        record["timestamp"] = self.timestamp_iso
        record["sensors"] = dict(values["sensors"]) if copy_sensors else values["sensors"]
        if (mode := values["mode"]) is not None:
            record["mode"] = mode
        if (seq := values["seq"]) is not None:
            record["seq"] = seq
        return record


@functools.cache
def _reading_in_context() -> type[Reading]:
    """A Reading with the receiver's checks (its clock and limits, from the validation context) in
    its validators: what names the errors of a reading that ``Reading`` or ``_Checks`` refused, in
    one list, field by field, as the contract words them. Those checks cost a Python call with
    context per field (~1 us a reading), which only bad readings pay; the class is built on the
    first of them (~1 ms, not at import: a cold start needs none)."""

    class _ReadingInContext(Reading):
        timestamp: Annotated[datetime, BeforeValidator(_timestamp_in_window)]
        sensors: Annotated[dict[SensorName, SensorValue], BeforeValidator(_sensors_within_limits)]

    return _ReadingInContext


class ReadingBatch(BaseModel):
    """``{"readings": [...]}``: a batch of readings in an envelope."""

    model_config = ConfigDict(extra="forbid")

    readings: list[Reading]


class TelemetryPayload(RootModel[Reading | list[Reading] | ReadingBatch]):
    """What a payload may be: one reading, a list of readings, or a :class:`ReadingBatch`.

    Used for documentation (OpenAPI); validation with the receiver's clock and limits goes through
    :func:`parse_payload`.
    """


@dataclass(frozen=True)
class Rejection:
    """A record that was not scored, why, and the record itself so it can be replayed.

    ``index`` is the record's position in its payload (or file row number); ``errors`` name the
    failing fields as dotted paths (``sensors.temperature``).
    """

    index: int
    reason: str
    errors: tuple[dict[str, str], ...] = ()
    record: Any = None
    stage: str = "contract"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "stage": self.stage,
            "reason": self.reason,
            "errors": list(self.errors),
            "record": self.record,
        }


@dataclass
class ParsedPayload:
    """What a payload yielded: valid readings (with their payload positions) and rejections."""

    readings: list[Reading] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    def extend(self, other: ParsedPayload, offset: int = 0) -> None:
        self.readings.extend(other.readings)
        self.indices.extend(i + offset for i in other.indices)
        self.rejections.extend(
            Rejection(r.index + offset, r.reason, r.errors, r.record, r.stage) for r in other.rejections
        )


def _message(err: Any) -> str:
    """One pydantic error as the contract words it (see the Rust-side checks on ``Reading``)."""
    loc, kind = err["loc"], err["type"]
    if len(loc) == 2 and loc[0] == "sensors":  # a sensor value (the name's errors have 3 parts)
        raw = err.get("input")
        if kind == "finite_number":
            return f"value {raw!r} is not finite"
        if kind == "float_type":
            if isinstance(raw, int) and not isinstance(raw, bool):
                return f"value {str(raw)[:32]}... is too large for a float"
            return f"value {str(raw)[:32]!r} is not a number"
    if kind == "string_pattern_mismatch" and len(loc) == 1 and loc[0] in _IDENTIFIERS:
        return _PRINTABLE_MESSAGE
    message: str = err["msg"]
    return message.removeprefix("Value error, ")


def _field_errors(exc: ValidationError) -> tuple[dict[str, str], ...]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "reading"
        errors.append({"field": loc, "message": _message(err)})
    return tuple(errors)


def _reason(errors: Iterable[dict[str, str]]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


@functools.lru_cache(maxsize=16)
def _skew(seconds: float) -> timedelta:
    """``timedelta(seconds=seconds)``, made once per limit (~0.25 us per payload otherwise)."""
    return timedelta(seconds=seconds)


class _Checks(NamedTuple):
    """The receiver's checks, compared on a validated :class:`Reading` (one comparison each, where
    ``_reading_in_context()`` pays a Python call per field to make them while validating). A named
    tuple: made once per payload, where a frozen dataclass's ``__init__`` cost ~0.5 us."""

    latest: datetime | None  # the receiver's clock plus the allowed skew
    max_sensors: int

    @classmethod
    def of(cls, limits: ContractLimits, now: datetime | None) -> _Checks:
        latest = None if now is None else now + _skew(limits.max_future_skew_seconds)
        return cls(latest, limits.max_sensors)

    def passes(self, reading: Reading) -> bool:
        # ``parsed - now > skew`` of ``_timestamp_in_window`` is ``parsed > now + skew``: exact arithmetic
        return (self.latest is None or reading.timestamp <= self.latest) and 0 < len(
            reading.sensors
        ) <= self.max_sensors


def _valid_reading(document: Any, checks: _Checks) -> Reading | None:
    """``document`` as a Reading when it passes every check; ``None`` when it does not (or cannot
    be read): ``_named_errors`` then says why."""
    try:
        reading = Reading.model_validate(document)
    except (ValidationError, RecursionError, TypeError, ValueError, OverflowError):
        return None
    return reading if checks.passes(reading) else None


def _json_reading(payload: str | bytes, checks: _Checks) -> Reading | None:
    """A payload that is one valid reading, as ASCII JSON text within the size limit (the caller
    checks both), validated straight from its JSON by pydantic-core's parser (no dict in between,
    ~0.5 us less than decoding it first); ``None`` for anything else (a list, an envelope, a ``NaN``
    token, a bad field, bad JSON), which the caller passes to the whole contract for its reasons."""
    try:
        reading: Reading = _validate_json(payload)
    except (ValidationError, RecursionError, TypeError, ValueError, OverflowError):
        return None
    return reading if checks.passes(reading) else None


_validate_json = Reading.__pydantic_validator__.validate_json


def _named_errors(obj: Any, index: int, limits: ContractLimits, now: datetime | None) -> Reading | Rejection:
    """The Rejection of a record that ``_valid_reading`` refused: every check again, in one
    validation, so each failing field is named, in field order. (Should the two ever disagree,
    this validation's verdict stands.)"""
    if type(obj) is not dict and not isinstance(obj, Mapping):
        return Rejection(index, f"reading must be a JSON object, got {type(obj).__name__}", record=obj)
    try:
        return _reading_in_context().model_validate(obj, context={"limits": limits, "now": now})
    except ValidationError as exc:
        errors = _field_errors(exc)
        return Rejection(index, _reason(errors), errors, record=obj)
    except (RecursionError, TypeError, ValueError, OverflowError) as exc:
        return Rejection(index, f"reading could not be validated: {exc}", record=obj)


def parse_reading(
    obj: Any,
    *,
    index: int = 0,
    limits: ContractLimits | None = None,
    now: datetime | None = None,
) -> Reading | Rejection:
    """Validate one decoded record.

    Returns the :class:`Reading`, or a :class:`Rejection` naming each failing field. Never raises
    for bad input.
    """
    if isinstance(obj, Reading):
        return obj
    limits = limits or DEFAULT_LIMITS
    if isinstance(obj, Mapping):
        reading = _valid_reading(obj, _Checks.of(limits, now))
        if reading is not None:
            return reading
    return _named_errors(obj, index, limits, now)


def parse_readings(
    records: Iterable[Any],
    *,
    limits: ContractLimits | None = None,
    now: datetime | None = None,
    start_index: int = 0,
) -> ParsedPayload:
    """Validate many decoded records one by one; bad ones become rejections, good ones readings."""
    limits = limits or DEFAULT_LIMITS
    out = ParsedPayload()
    checks = _Checks.of(limits, now)
    for i, obj in enumerate(records, start=start_index):
        reading = (
            obj
            if isinstance(obj, Reading)
            else _valid_reading(obj, checks)
            if isinstance(obj, Mapping)
            else None
        )
        result = reading if reading is not None else _named_errors(obj, i, limits, now)
        if isinstance(result, Reading):
            out.readings.append(result)
            out.indices.append(i)
        else:
            out.rejections.append(result)
    return out


def _records_of(document: Any) -> list[Any] | None:
    """A payload is one reading, a list of readings, or ``{"readings": [...]}``."""
    if isinstance(document, list):
        return document
    if type(document) is dict or isinstance(document, Mapping):
        if "readings" in document and "device_id" not in document:
            inner = document["readings"]
            if set(document) != {"readings"} or not isinstance(inner, list):
                return None
            return inner
        return [document]
    return None


def parse_payload(
    payload: bytes | str | Any,
    *,
    limits: ContractLimits | None = None,
    now: datetime | None = None,
) -> ParsedPayload:
    """Turn one payload (raw bytes, a JSON string, or already-decoded JSON) into readings.

    Raises
    ------
    PayloadTooLarge
        When raw bytes or text exceed ``limits.max_payload_bytes``; nothing is parsed.
    """
    limits = limits or DEFAULT_LIMITS
    kind = type(payload)
    if (kind is bytes or kind is str) and len(payload) <= limits.max_payload_bytes and payload.isascii():
        # one valid reading as ASCII JSON text (an HTTP request's body): straight to the validator;
        # anything else, and every reading with an error, goes the whole way below, for its reasons
        reading = _json_reading(payload, _Checks.of(limits, now))
        if reading is not None:
            return ParsedPayload([reading], [0], [])
    document: Any = payload
    if isinstance(payload, bytes | bytearray | str):
        if isinstance(payload, str) and payload.isascii():
            text = payload  # the common case: its length is its size in bytes, no copy
            if len(text) > limits.max_payload_bytes:
                raise PayloadTooLarge(len(text), limits.max_payload_bytes)
        else:
            raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
            if len(raw) > limits.max_payload_bytes:
                raise PayloadTooLarge(len(raw), limits.max_payload_bytes)
            text = raw.decode("utf-8", "replace")
        try:
            # orjson first, the standard library for what it refuses: a ``NaN`` sensor value
            # stays a field error, not bad JSON
            document = decode_json(text)
        except (ValueError, RecursionError) as exc:
            return ParsedPayload(rejections=[Rejection(0, f"payload is not valid JSON: {exc}", record=text)])
    if type(document) is dict and "readings" not in document:  # one reading: the common case, direct
        reading = _valid_reading(document, _Checks.of(limits, now))
        if reading is not None:
            return ParsedPayload([reading], [0], [])
        # parse_readings below names its errors
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


@dataclass
class ParsedBatch:
    """What a batch of payloads (one per record of a trigger) yielded, flat.

    Reading ``i`` came from payload ``payloads[i]``, at position ``indices[i]`` in it; each
    rejection comes with its payload's position; ``too_large`` holds the payloads refused whole.
    """

    readings: list[Reading] = field(default_factory=list)
    payloads: list[int] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    rejections: list[tuple[int, Rejection]] = field(default_factory=list)
    too_large: list[tuple[int, PayloadTooLarge]] = field(default_factory=list)


def parse_payloads(
    payloads: Sequence[bytes | str | Any],
    *,
    limits: ContractLimits | None = None,
    now: datetime | None = None,
) -> ParsedBatch:
    """:func:`parse_payload` for each of ``payloads`` (the records of one SQS or Kinesis batch).

    The same readings and rejections as one call per payload; a payload holding one valid reading
    as ASCII JSON text, the usual record, takes a short path (~2 us less each).
    """
    limits = limits or DEFAULT_LIMITS
    checks = _Checks.of(limits, now)
    out = ParsedBatch()
    readings, owners, indices = out.readings, out.payloads, out.indices
    max_bytes, max_readings = limits.max_payload_bytes, limits.max_batch_readings
    for i, payload in enumerate(payloads):
        kind = type(payload)
        if (kind is str or kind is bytes) and len(payload) <= max_bytes and payload.isascii():
            reading = _json_reading(payload, checks)
            if reading is not None:
                readings.append(reading)
                owners.append(i)
                indices.append(0)
                continue
        elif (
            isinstance(payload, list)
            and 0 < len(payload) <= max_readings
            and all(isinstance(r, Reading) for r in payload)
        ):  # readings parsed already (an edge request's, by parse_http): each is kept as it is
            readings.extend(payload)
            owners.extend([i] * len(payload))
            indices.extend(range(len(payload)))
            continue
        try:  # anything else, and every reading with an error: the whole contract, for its reasons
            parsed = parse_payload(payload, limits=limits, now=now)
        except PayloadTooLarge as exc:
            out.too_large.append((i, exc))
            continue
        readings.extend(parsed.readings)
        owners.extend([i] * len(parsed.readings))
        indices.extend(parsed.indices)
        out.rejections.extend((i, rejection) for rejection in parsed.rejections)
    return out
