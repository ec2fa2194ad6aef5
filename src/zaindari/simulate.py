"""A seeded plant simulator: presses and spindles on production lines, with wear, faults and drift.

The physics, per machine and sample (vectorised over time x machines, so a million readings take
about a second):

* Each line holds machines of kind ``press`` (flywheel motor, hydraulic pressure) and ``spindle``
  (machine-tool spindle, through-spindle coolant pressure), alternating along the line.
* The operating mode (``idle`` / ``run`` / ``heavy``) is a continuous-time Markov chain read at
  each sample: exponential dwell times (means 20 / 60 / 30 min) and fixed jump probabilities, so
  the behaviour does not depend on the sample period.
* Speed (rpm) and torque (Nm) are set by kind and mode, with a slow load variation and noise;
  motor current follows torque (``I = I0 + k * torque``); mechanical power is
  ``torque * speed / 9549`` (kW).
* Temperature follows a first-order thermal lag (15 min spindles, 40 min presses) towards
  ``ambient + k * power``; the ambient follows a daily cycle (warmest at 15:00 UTC).
* Vibration RMS (mm/s, ISO 10816 magnitudes) rises with speed, load and wear; pressure (bar) is
  set by mode.
* Wear: a health index starts just below 1 and falls with operating hours (3x faster in heavy
  mode than in run, almost not at all when idle). Worn machines vibrate more and need more torque.
* Faults, each with an onset and a failure time: ``bearing`` (vibration climbs exponentially,
  with some heat and friction torque), ``cooling`` (temperature rises relative to power),
  ``seal_leak`` (pressure falls, current rises a little). **At failure the machine stops but keeps
  reporting**: mode ``idle``, speed, torque and pressure 0, standby current, and the temperature
  cooling towards ambient, until the end of the run.
* Sensor drift from a known instant: an ``offset`` added to, or a ``gain`` change of, one
  sensor's *measured* value on chosen devices, optionally ramped in over a duration. Drift and
  faults draw no random numbers, so the same seed with and without them gives the same noise.

Every device reports the same six sensors at every sample instant (one common time grid). The
ground truth (kind, health, fault kind, in fault, failed, remaining useful life) is in the frame
but never in :meth:`PlantData.readings` or the historian exports, unless asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs: frames are Any to mypy
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = [
    "FAULT_KINDS",
    "MODES",
    "SENSORS",
    "DriftEvent",
    "FaultEvent",
    "Machine",
    "PlantConfig",
    "PlantData",
    "simulate_plant",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

SensorName = Literal["temperature", "vibration_rms", "motor_current", "pressure", "speed", "torque"]
MachineKind = Literal["press", "spindle"]
FaultKind = Literal["bearing", "cooling", "seal_leak"]
DriftKind = Literal["offset", "gain"]

SENSORS: tuple[str, ...] = get_args(SensorName)
"""The six sensors every device reports, in column order."""
MODES: tuple[str, ...] = ("idle", "run", "heavy")
"""Operating modes; the frame's ``mode`` column holds these names."""
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
MACHINE_KINDS: tuple[str, ...] = get_args(MachineKind)

_FAULT_SENSORS: dict[str, tuple[str, ...]] = {
    "bearing": ("vibration_rms", "temperature", "torque", "motor_current"),
    "cooling": ("temperature",),
    "seal_leak": ("pressure", "motor_current"),
}
# Decimals each sensor reports with (what a PLC tag typically carries).
_DECIMALS: dict[str, int] = {
    "temperature": 2,
    "vibration_rms": 3,
    "motor_current": 2,
    "pressure": 2,
    "speed": 1,
    "torque": 2,
}

# Operating-mode chain: mean dwell per mode (s), where a mode goes when it ends, where it starts.
_MODE_DWELL_S = np.array([20 * 60.0, 60 * 60.0, 30 * 60.0])
_MODE_JUMP = np.array(
    [
        [0.0, 0.8, 0.2],  # idle -> run / heavy
        [0.35, 0.0, 0.65],  # run -> idle / heavy
        [0.25, 0.75, 0.0],  # heavy -> idle / run
    ]
)
_MODE_START = np.array([0.25, 0.5, 0.25])
# Health lost per operating hour, by mode (before the machine's own wear factor).
_WEAR_PER_HOUR = np.array([0.0001, 0.0006, 0.002])
_LOAD_TAU_S = 600.0  # slow load variation within a mode (part to part, tool wear)


@dataclass(frozen=True)
class _KindPhysics:
    """Nominal behaviour of one machine kind; triples are indexed by mode (idle, run, heavy)."""

    speed_rpm: tuple[float, float, float]
    torque_nm: tuple[float, float, float]
    pressure_bar: tuple[float, float, float]
    rated_speed_rpm: float
    thermal_gain_c_per_kw: float
    thermal_tau_s: float
    current_idle_a: float
    current_per_nm: float
    vibration_floor_mm_s: float
    vibration_at_rated_mm_s: float


_PHYSICS: dict[str, _KindPhysics] = {
    # 55 kW flywheel drive, hydraulic cushion/clamp pressure.
    "press": _KindPhysics(
        speed_rpm=(600.0, 1200.0, 1450.0),
        torque_nm=(15.0, 170.0, 300.0),
        pressure_bar=(35.0, 160.0, 220.0),
        rated_speed_rpm=1500.0,
        thermal_gain_c_per_kw=0.75,
        thermal_tau_s=40 * 60.0,
        current_idle_a=12.0,
        current_per_nm=0.32,
        vibration_floor_mm_s=0.4,
        vibration_at_rated_mm_s=1.6,
    ),
    # 50 kW motor spindle, through-spindle coolant pressure.
    "spindle": _KindPhysics(
        speed_rpm=(800.0, 9000.0, 14000.0),
        torque_nm=(1.5, 22.0, 34.0),
        pressure_bar=(5.0, 40.0, 60.0),
        rated_speed_rpm=15000.0,
        thermal_gain_c_per_kw=0.7,
        thermal_tau_s=15 * 60.0,
        current_idle_a=4.0,
        current_per_nm=1.9,
        vibration_floor_mm_s=0.25,
        vibration_at_rated_mm_s=1.4,
    ),
}


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must carry a timezone (for example 'Z' or '+01:00')")
    return value.astimezone(UTC)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FaultEvent(_Frozen):
    """A fault injected into one machine: it develops from ``onset`` and fails it at ``failure``.

    Parameters
    ----------
    device_id
        The machine's device.
    kind
        ``bearing`` (vibration climbs exponentially, some heat and friction torque), ``cooling``
        (temperature rises relative to power) or ``seal_leak`` (pressure falls).
    onset
        When the fault starts to show (aware datetime, normalised to UTC).
    failure
        When the machine fails and stops; after ``onset``. It may lie beyond the simulated
        window, in which case the machine is still in fault at the end.
    sensors
        The sensors the fault moves; they follow from ``kind`` (leave empty).
    """

    device_id: str = Field(min_length=1, max_length=128)
    kind: FaultKind
    onset: datetime
    failure: datetime
    sensors: tuple[SensorName, ...] = Field(default=(), validate_default=True)

    @field_validator("onset", "failure")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return _as_utc(value)

    @field_validator("sensors")
    @classmethod
    def _sensors_of_kind(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        kind = info.data.get("kind")
        if kind is None:
            return value
        expected = _FAULT_SENSORS[kind]
        if value and set(value) != set(expected):
            raise ValueError(f"a {kind} fault affects {list(expected)}; leave sensors empty")
        return expected

    @model_validator(mode="after")
    def _fails_after_onset(self) -> FaultEvent:
        if self.failure <= self.onset:
            raise ValueError(f"fault on {self.device_id}: failure must come after onset")
        return self

    @property
    def lead_time(self) -> timedelta:
        """Time from onset to failure: the warning a perfect detector would get."""
        return self.failure - self.onset


class DriftEvent(_Frozen):
    """A measurement drift: from ``start``, one sensor of some devices reads off.

    Parameters
    ----------
    sensor
        The drifting sensor.
    start
        When the drift begins (aware datetime, normalised to UTC).
    kind
        ``offset``: ``magnitude`` (sensor units) is added to the reading; ``gain``: the reading is
        multiplied by ``1 + magnitude``.
    magnitude
        Full size of the drift, reached ``ramp`` after ``start``.
    devices
        The devices whose sensor drifts.
    ramp
        How long the drift takes to grow linearly to full size; zero is a step.
    """

    sensor: SensorName
    start: datetime
    kind: DriftKind = "offset"
    magnitude: float
    devices: tuple[str, ...] = Field(min_length=1)
    ramp: timedelta = timedelta(0)

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return _as_utc(value)

    @model_validator(mode="after")
    def _sane(self) -> DriftEvent:
        if not math.isfinite(self.magnitude):
            raise ValueError("drift magnitude must be finite")
        if self.kind == "gain" and self.magnitude <= -1:
            raise ValueError("a gain drift's magnitude must be above -1 (the reading keeps its sign)")
        if self.ramp < timedelta(0):
            raise ValueError("drift ramp must not be negative")
        return self


@dataclass(frozen=True)
class Machine:
    """One simulated machine and the identifiers its readings carry."""

    device_id: str
    asset: str
    line: str
    site: str
    kind: MachineKind


def _plant_machines(
    site: str, lines: int, machines_per_line: int, kinds: tuple[MachineKind, ...]
) -> list[Machine]:
    machines = []
    for line_no in range(1, lines + 1):
        for machine_no in range(1, machines_per_line + 1):
            kind = kinds[(machine_no - 1) % len(kinds)]
            asset = f"{kind}-{line_no}{machine_no:02d}"
            machines.append(Machine(f"{site}-{asset}", asset, f"line-{line_no}", site, kind))
    return machines


class PlantConfig(_Frozen):
    """What to simulate. Everything that follows is determined by this and ``seed``.

    Parameters
    ----------
    seed
        Seeds every random draw (modes, noise, machine variation, automatic faults).
    site
        Site name; also prefixes device ids.
    lines, machines_per_line
        Plant size. Machine ``m`` of line ``l`` is asset ``<kind>-<l><mm>`` (``press-101``) with
        device id ``<site>-<asset>``.
    kinds
        Machine kinds along each line, repeated (``press, spindle, press, ...``).
    start
        First sample instant (aware datetime, normalised to UTC).
    duration
        Simulated time; samples are at ``start + k * sample_period_seconds`` within it.
    sample_period_seconds
        Time between a device's readings (whole milliseconds).
    faults
        Faults placed by hand; at most one per device.
    auto_faults
        How many further faults to place at random (seeded) on machines without one, with the
        failure between 45 % and 95 % of the run and a lead time drawn from ``fault_lead_hours``.
    fault_lead_hours
        Range of onset-to-failure times of automatic faults, in hours.
    drifts
        Sensor drifts.
    """

    seed: int = 0
    site: str = Field(default="plant-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
    lines: int = Field(default=2, ge=1, le=99)
    machines_per_line: int = Field(default=2, ge=1, le=99)
    kinds: tuple[MachineKind, ...] = Field(default=("press", "spindle"), min_length=1)
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    duration: timedelta = timedelta(hours=6)
    sample_period_seconds: float = Field(default=60.0, ge=0.001)
    faults: tuple[FaultEvent, ...] = ()
    auto_faults: int = Field(default=0, ge=0)
    fault_lead_hours: tuple[float, float] = (2.0, 12.0)
    drifts: tuple[DriftEvent, ...] = ()

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return _as_utc(value)

    @model_validator(mode="after")
    def _consistent(self) -> PlantConfig:
        period_ms = self.sample_period_seconds * 1000.0
        if abs(period_ms - round(period_ms)) > 1e-6:
            raise ValueError("sample_period_seconds must be a whole number of milliseconds")
        if self.n_steps < 1:
            raise ValueError("duration must hold at least one sample period")
        low, high = self.fault_lead_hours
        if not 0 < low <= high:
            raise ValueError("fault_lead_hours must be (low, high) with 0 < low <= high")
        devices = {m.device_id for m in self.machines()}
        seen: set[str] = set()
        for fault in self.faults:
            if fault.device_id not in devices:
                raise ValueError(f"fault on unknown device {fault.device_id!r}")
            if fault.device_id in seen:
                raise ValueError(f"more than one fault on device {fault.device_id!r}")
            seen.add(fault.device_id)
        if self.auto_faults > len(devices) - len(seen):
            raise ValueError(
                f"auto_faults={self.auto_faults} but only {len(devices) - len(seen)} machines have no fault"
            )
        for drift in self.drifts:
            unknown = sorted(set(drift.devices) - devices)
            if unknown:
                raise ValueError(f"drift of {drift.sensor} on unknown devices {unknown}")
        return self

    @property
    def period_ns(self) -> int:
        """The sample period in integer nanoseconds (timestamps are built from it exactly)."""
        return round(self.sample_period_seconds * 1000) * 1_000_000

    @property
    def n_steps(self) -> int:
        """Samples per device."""
        return int(self.duration // timedelta(microseconds=self.period_ns // 1000))

    @property
    def n_readings(self) -> int:
        """Readings in the whole run (samples per device times devices)."""
        return self.n_steps * self.lines * self.machines_per_line

    def machines(self) -> list[Machine]:
        """The plant's machines, line by line."""
        return _plant_machines(self.site, self.lines, self.machines_per_line, self.kinds)

    @classmethod
    def small(cls, seed: int = 0) -> PlantConfig:
        """Test plant: 2 lines x (press, spindle), 6 hours at 60 s (1,440 readings).

        ``press-101`` is healthy but its temperature sensor gains a +3 degC offset from 3 h
        (ramped over 30 min); ``spindle-102`` gets a bearing fault (onset 1.5 h, failure 5 h);
        ``press-201`` a seal leak (1 h, 5.5 h); ``spindle-202`` a cooling fault (2 h) that fails
        it only after the run (8 h).
        """
        start = datetime(2024, 1, 1, tzinfo=UTC)
        ids = {m.asset: m.device_id for m in _plant_machines("plant-1", 2, 2, ("press", "spindle"))}
        hours = timedelta(hours=1)
        return cls(
            seed=seed,
            lines=2,
            machines_per_line=2,
            start=start,
            duration=6 * hours,
            sample_period_seconds=60.0,
            faults=(
                FaultEvent(
                    device_id=ids["spindle-102"],
                    kind="bearing",
                    onset=start + 1.5 * hours,
                    failure=start + 5 * hours,
                ),
                FaultEvent(
                    device_id=ids["press-201"],
                    kind="seal_leak",
                    onset=start + hours,
                    failure=start + 5.5 * hours,
                ),
                FaultEvent(
                    device_id=ids["spindle-202"],
                    kind="cooling",
                    onset=start + 2 * hours,
                    failure=start + 8 * hours,
                ),
            ),
            drifts=(
                DriftEvent(
                    sensor="temperature",
                    start=start + 3 * hours,
                    kind="offset",
                    magnitude=3.0,
                    devices=(ids["press-101"],),
                    ramp=timedelta(minutes=30),
                ),
            ),
        )

    @classmethod
    def demo(cls, seed: int = 0) -> PlantConfig:
        """Demo plant: 3 lines x 4 machines, 14 days at 60 s (241,920 readings), 6 random faults.

        Faults develop over 12 to 72 hours. Drift: line 3's temperature sensors read +4 degC from
        day 10 (ramped over 12 h), and ``press-103``'s vibration sensor gains 40 % from day 8.
        """
        start = datetime(2024, 1, 1, tzinfo=UTC)
        machines = _plant_machines("plant-1", 3, 4, ("press", "spindle"))
        return cls(
            seed=seed,
            lines=3,
            machines_per_line=4,
            start=start,
            duration=timedelta(days=14),
            sample_period_seconds=60.0,
            auto_faults=6,
            fault_lead_hours=(12.0, 72.0),
            drifts=(
                DriftEvent(
                    sensor="temperature",
                    start=start + timedelta(days=10),
                    kind="offset",
                    magnitude=4.0,
                    devices=tuple(m.device_id for m in machines if m.line == "line-3"),
                    ramp=timedelta(hours=12),
                ),
                DriftEvent(
                    sensor="vibration_rms",
                    start=start + timedelta(days=8),
                    kind="gain",
                    magnitude=0.4,
                    devices=tuple(m.device_id for m in machines if m.asset == "press-103"),
                ),
            ),
        )


_IDENTIFIERS = ("device_id", "asset", "line", "site", "timestamp", "mode", "seq")
_GROUND_TRUTH = ("kind", "health", "fault_kind", "in_fault", "failed", "rul_hours")


def _iso_timestamps(timestamps: Any, whole_seconds: bool) -> npt.NDArray[np.str_]:
    """ISO 8601 UTC strings with ``Z`` for a tz-aware pandas datetime column."""
    nanos = np.asarray(timestamps.astype("int64"), dtype=np.int64)
    text = np.datetime_as_string(nanos.view("datetime64[ns]"), unit="s" if whole_seconds else "ms")
    return np.char.add(text, "Z")


@dataclass(frozen=True)
class PlantData:
    """A simulated run: one row per reading plus the ground truth, and the events behind it.

    ``frame`` is ordered by timestamp, then device (the order devices would publish in). Its
    columns: ``device_id, asset, line, site, timestamp`` (tz-aware UTC), ``mode, seq`` (per
    device, from 0), the six :data:`SENSORS`, and the ground truth: ``kind`` (press or spindle),
    ``health`` (1 new, falling with wear), ``fault_kind`` (the device's fault from its onset on,
    else None), ``in_fault`` (onset <= t < failure), ``failed`` (t >= failure; the machine is
    stopped and reports mode idle), ``rul_hours`` (hours to the device's failure, 0 once failed,
    NaN for devices that never fail; known even when the failure lies beyond the run).
    """

    config: PlantConfig
    machines: tuple[Machine, ...]
    frame: pd.DataFrame
    faults: list[FaultEvent]
    drifts: list[DriftEvent]

    def _whole_seconds(self) -> bool:
        return self.config.start.microsecond == 0 and self.config.period_ns % 1_000_000_000 == 0

    def readings(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Yield JSON-ready readings in frame order, as devices would send them.

        Each is a dict that :func:`zaindari.contract.parse_reading` accepts: identifiers,
        ``timestamp`` as ISO 8601 with ``Z``, ``mode``, ``seq`` and a ``sensors`` mapping. No
        ground truth is included.

        Parameters
        ----------
        limit
            Stop after this many readings (all when None).
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        frame = self.frame if limit is None else self.frame.iloc[:limit]
        whole_seconds = self._whole_seconds()
        chunk = 50_000
        for begin in range(0, len(frame), chunk):
            part = frame.iloc[begin : begin + chunk]
            stamps = _iso_timestamps(part["timestamp"], whole_seconds).tolist()
            columns = [part[name].tolist() for name in ("device_id", "asset", "line", "site", "mode", "seq")]
            values = zip(*(part[name].tolist() for name in SENSORS), strict=True)
            for device_id, asset, line, site, mode, seq, stamp, row in zip(
                *columns, stamps, values, strict=True
            ):
                yield {
                    "device_id": device_id,
                    "asset": asset,
                    "line": line,
                    "site": site,
                    "timestamp": stamp,
                    "mode": mode,
                    "seq": seq,
                    "sensors": dict(zip(SENSORS, row, strict=True)),
                }

    def historian_frame(self, *, ground_truth: bool = False) -> pd.DataFrame:
        """The readings as a historian table: one row per reading, sensors as columns.

        ``timestamp`` is an ISO 8601 string with ``Z``. With ``ground_truth`` the label columns
        (``kind``, ``health``, ``fault_kind``, ``in_fault``, ``failed``, ``rul_hours``) follow.
        """
        columns = [*_IDENTIFIERS, *SENSORS, *(_GROUND_TRUTH if ground_truth else ())]
        table = self.frame.loc[:, columns].copy()
        table["timestamp"] = _iso_timestamps(self.frame["timestamp"], self._whole_seconds())
        return table

    def to_csv(self, path: str | Path, *, ground_truth: bool = False) -> Path:
        """Write :meth:`historian_frame` as CSV (no index); returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.historian_frame(ground_truth=ground_truth).to_csv(target, index=False)
        return target

    def to_parquet(self, path: str | Path, *, ground_truth: bool = False) -> Path:
        """Write :meth:`historian_frame` as Parquet (pyarrow, no index); returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.historian_frame(ground_truth=ground_truth).to_parquet(target, index=False, engine="pyarrow")
        return target


def _first_order_lag(target: FloatArray, tau_s: FloatArray, dt: float, initial: FloatArray) -> FloatArray:
    """Exact discrete first-order lag along axis 0: ``y[n] = a y[n-1] + (1 - a) x[n]``, ``a = exp(-dt/tau)``.

    Solved block by block in closed form (``y_k = a^k (y_0 + (1 - a) sum_j a^-j x_j)``) instead of
    a Python loop per sample; blocks are short enough that ``a^-k`` stays below ``e^30``.
    """
    n_steps = target.shape[0]
    out = np.empty_like(target)
    one_minus_a = -np.expm1(-dt / tau_s)
    block = int(30.0 * float(tau_s.min()) / dt)
    previous = initial.astype(np.float64, copy=True)
    if block < 2:  # the lag is shorter than a sample or so: step through
        a = 1.0 - one_minus_a
        for n in range(n_steps):
            previous = a * previous + one_minus_a * target[n]
            out[n] = previous
        return out
    block = min(block, n_steps)
    growth = np.exp(np.arange(1, block + 1, dtype=np.float64)[:, None] * (dt / tau_s)[None, :])
    for begin in range(0, n_steps, block):
        chunk = target[begin : begin + block]
        w = growth[: chunk.shape[0]]
        lagged = (previous + one_minus_a * np.cumsum(w * chunk, axis=0)) / w
        out[begin : begin + chunk.shape[0]] = lagged
        previous = lagged[-1]
    return out


def _operating_modes(
    rng: np.random.Generator, n_steps: int, n_devices: int, dt: float
) -> npt.NDArray[np.int8]:
    """Mode codes (time x device) from the Markov chain, drawn as run lengths, not step by step."""
    p_leave = -np.expm1(-dt / _MODE_DWELL_S)
    cumulative_jump = np.cumsum(_MODE_JUMP, axis=1)
    state = rng.choice(len(MODES), size=n_devices, p=_MODE_START)
    states: list[npt.NDArray[np.int64]] = []
    lengths: list[npt.NDArray[np.int64]] = []
    covered = np.zeros(n_devices, dtype=np.int64)
    while covered.min() < n_steps:
        length = rng.geometric(p_leave[state])
        states.append(state)
        lengths.append(length)
        covered += length
        u = rng.random(n_devices)
        state = np.minimum((u[:, None] >= cumulative_jump[state]).sum(axis=1), len(MODES) - 1)
    state_runs = np.stack(states)
    run_lengths = np.stack(lengths)
    modes = np.empty((n_steps, n_devices), dtype=np.int8)
    for device in range(n_devices):
        modes[:, device] = np.repeat(state_runs[:, device], run_lengths[:, device])[:n_steps]
    return modes


def _automatic_faults(
    config: PlantConfig, machines: list[Machine], rng: np.random.Generator
) -> list[FaultEvent]:
    if config.auto_faults == 0:
        return []
    taken = {fault.device_id for fault in config.faults}
    free = [m for m in machines if m.device_id not in taken]
    chosen = np.sort(rng.choice(len(free), size=config.auto_faults, replace=False))
    duration_s = config.duration.total_seconds()
    low, high = (hours * 3600.0 for hours in config.fault_lead_hours)
    faults = []
    for index in chosen:
        kind = FAULT_KINDS[int(rng.integers(len(FAULT_KINDS)))]
        failure_s = float(rng.uniform(0.45, 0.95)) * duration_s
        lead_s = min(float(rng.uniform(low, high)), failure_s - 0.05 * duration_s)
        onset_whole = round(failure_s - lead_s)
        failure_whole = max(round(failure_s), onset_whole + 1)
        faults.append(
            FaultEvent(
                device_id=free[int(index)].device_id,
                kind=kind,
                onset=config.start + timedelta(seconds=onset_whole),
                failure=config.start + timedelta(seconds=failure_whole),
            )
        )
    return faults


def _seconds_since(start: datetime, instant: datetime) -> float:
    return (instant - start) / timedelta(seconds=1)


def simulate_plant(config: PlantConfig) -> PlantData:
    """Simulate the plant described by ``config``; the same config always gives the same data.

    Parameters
    ----------
    config
        Plant size, time window, faults and drifts (see :class:`PlantConfig`).

    Returns
    -------
    PlantData
        The readings with ground truth, and the faults (given and automatic) and drifts applied.
    """
    machines = config.machines()
    n_devices = len(machines)
    n_steps = config.n_steps
    dt = config.period_ns / 1e9
    schedule_rng, machine_rng, mode_rng, noise_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(config.seed).spawn(4)
    )
    faults = [*config.faults, *_automatic_faults(config, machines, schedule_rng)]
    device_index = {m.device_id: i for i, m in enumerate(machines)}

    # Machine-to-machine variation: no two machines of a kind are quite alike.
    kind_codes = np.array([MACHINE_KINDS.index(m.kind) for m in machines])
    physics = [_PHYSICS[kind] for kind in MACHINE_KINDS]

    def per_device(values: list[float]) -> FloatArray:
        table: FloatArray = np.asarray(values, dtype=np.float64)
        selected: FloatArray = table[kind_codes]
        return selected

    thermal_gain = per_device([p.thermal_gain_c_per_kw for p in physics]) * machine_rng.uniform(
        0.9, 1.1, n_devices
    )
    thermal_tau = per_device([p.thermal_tau_s for p in physics]) * machine_rng.uniform(0.85, 1.15, n_devices)
    vibration_factor = machine_rng.uniform(0.85, 1.15, n_devices)
    wear_factor = machine_rng.uniform(0.6, 1.4, n_devices)
    initial_health = 1.0 - machine_rng.uniform(0.0, 0.1, n_devices)
    line_codes = np.array([int(m.line.removeprefix("line-")) - 1 for m in machines])
    line_ambient = 21.0 + machine_rng.uniform(-1.5, 1.5, config.lines)[line_codes]

    modes = _operating_modes(mode_rng, n_steps, n_devices, dt)
    shape = (n_steps, n_devices)
    load_noise, speed_noise, torque_noise, current_noise = (
        noise_rng.standard_normal(shape) for _ in range(4)
    )
    pressure_noise, temperature_noise, vibration_noise, floor_noise = (
        noise_rng.standard_normal(shape) for _ in range(4)
    )

    # Faults: where each device is in its fault (progress 0 -> 1) and whether it has failed.
    elapsed = (np.arange(n_steps, dtype=np.float64) * dt)[:, None]
    onset_s = np.full(n_devices, np.inf)
    failure_s = np.full(n_devices, np.inf)
    lead_s = np.ones(n_devices)
    fault_code = np.full(n_devices, -1)
    for fault in faults:
        device = device_index[fault.device_id]
        onset_s[device] = _seconds_since(config.start, fault.onset)
        failure_s[device] = _seconds_since(config.start, fault.failure)
        lead_s[device] = failure_s[device] - onset_s[device]
        fault_code[device] = FAULT_KINDS.index(fault.kind)
    in_fault = (elapsed >= onset_s) & (elapsed < failure_s)
    failed = elapsed >= failure_s
    progress = np.where(in_fault, (elapsed - np.where(in_fault, onset_s, 0.0)) / lead_s, 0.0)
    bearing = progress * (fault_code == FAULT_KINDS.index("bearing"))
    bearing = np.expm1(4.0 * bearing) / np.expm1(4.0)  # slow start, fast end
    cooling = progress * (fault_code == FAULT_KINDS.index("cooling"))
    leak = progress * (fault_code == FAULT_KINDS.index("seal_leak"))
    modes[failed] = 0

    # Wear: health lost per sample by mode, none once stopped.
    wear = _WEAR_PER_HOUR[modes] * (dt / 3600.0) * wear_factor
    wear[failed] = 0.0
    health = np.clip(initial_health - np.cumsum(wear, axis=0), 0.0, 1.0)

    # Drive: speed and torque by kind and mode; current follows torque; power from both.
    def by_mode(values: list[tuple[float, float, float]]) -> FloatArray:
        table: FloatArray = np.asarray(values, dtype=np.float64)
        selected: FloatArray = table[kind_codes[None, :], modes]
        return selected

    load = _first_order_lag(load_noise, np.full(n_devices, _LOAD_TAU_S), dt, np.zeros(n_devices))
    load /= math.sqrt(-math.expm1(-dt / _LOAD_TAU_S) / (2.0 + math.expm1(-dt / _LOAD_TAU_S)))
    speed = by_mode([p.speed_rpm for p in physics]) * (1.0 + 0.004 * speed_noise)
    torque = by_mode([p.torque_nm for p in physics]) * (1.0 + 0.06 * load + 0.02 * torque_noise)
    torque *= (1.0 + 0.08 * bearing) * (1.0 + 0.05 * (1.0 - health))
    speed[failed] = 0.0
    torque[failed] = 0.0
    power_kw = torque * speed / 9549.0
    current_idle = per_device([p.current_idle_a for p in physics])
    current_slope = per_device([p.current_per_nm for p in physics])
    motor_current = (
        (current_idle + current_slope * torque) * (1.0 + 0.012 * current_noise) * (1.0 + 0.06 * leak)
    )
    motor_current = np.where(failed, 0.4 + 0.05 * np.abs(current_noise), motor_current)
    pressure = by_mode([p.pressure_bar for p in physics]) * (1.0 - 0.55 * leak)
    pressure *= 1.0 + 0.01 * (1.0 + 2.0 * leak) * pressure_noise
    pressure[failed] = 0.0

    # Heat: first-order lag towards ambient (daily cycle) plus power times the thermal gain.
    seconds_of_day = (config.start.timestamp() + elapsed) % 86_400.0
    ambient = line_ambient + 4.0 * np.sin(2.0 * np.pi * (seconds_of_day / 3600.0 - 9.0) / 24.0)
    heat_target = ambient + thermal_gain * power_kw * (1.0 + 1.2 * cooling) + 6.0 * cooling + 8.0 * bearing
    heat_target = np.where(failed, ambient, heat_target)
    temperature = _first_order_lag(heat_target, thermal_tau, dt, heat_target[0]) + 0.15 * temperature_noise

    # Vibration: speed, load, wear and bearing damage; multiplicative sensor noise.
    speed_ratio = speed / per_device([p.rated_speed_rpm for p in physics])
    torque_ratio = torque / per_device([p.torque_nm[2] for p in physics])
    exposure = 0.3 + 0.7 * speed_ratio
    vibration = vibration_factor * (
        per_device([p.vibration_floor_mm_s for p in physics])
        + per_device([p.vibration_at_rated_mm_s for p in physics]) * speed_ratio**1.5
        + 0.3 * torque_ratio
    )
    vibration += 2.5 * (1.0 - health) * exposure + 12.0 * bearing * exposure
    vibration = vibration * np.exp(0.07 * vibration_noise) + 0.02 * np.abs(floor_noise)
    vibration = np.where(failed, 0.03 + 0.02 * np.abs(floor_noise), vibration)

    measured: dict[str, FloatArray] = {
        "temperature": temperature,
        "vibration_rms": vibration,
        "motor_current": motor_current,
        "pressure": np.maximum(pressure, 0.0),
        "speed": np.maximum(speed, 0.0),
        "torque": torque,
    }
    for drift in config.drifts:
        columns = [device_index[d] for d in drift.devices]
        since = elapsed[:, 0] - _seconds_since(config.start, drift.start)
        ramp_s = drift.ramp.total_seconds()
        share = np.clip(since / ramp_s, 0.0, 1.0) if ramp_s > 0 else (since >= 0).astype(np.float64)
        values = measured[drift.sensor]
        if drift.kind == "offset":
            values[:, columns] += drift.magnitude * share[:, None]
        else:
            values[:, columns] *= 1.0 + drift.magnitude * share[:, None]

    frame = _assemble_frame(config, machines, modes, measured, health, faults, in_fault, failed, elapsed)
    return PlantData(config, tuple(machines), frame, faults, list(config.drifts))


def _assemble_frame(
    config: PlantConfig,
    machines: list[Machine],
    modes: npt.NDArray[np.int8],
    measured: dict[str, FloatArray],
    health: FloatArray,
    faults: list[FaultEvent],
    in_fault: BoolArray,
    failed: BoolArray,
    elapsed: FloatArray,
) -> pd.DataFrame:
    """One row per reading, time-major (all devices at t0, then t1, ...)."""
    n_steps, n_devices = modes.shape
    device_of_row = np.tile(np.arange(n_devices), n_steps)

    def identifier(values: list[str]) -> npt.NDArray[np.object_]:
        return np.asarray(values, dtype=object)[device_of_row]

    start_ns = round(config.start.timestamp() * 1e6) * 1000
    instants = start_ns + np.arange(n_steps, dtype=np.int64) * config.period_ns
    timestamps = pd.DatetimeIndex(np.repeat(instants, n_devices).view("datetime64[ns]")).tz_localize("UTC")

    fault_kind_per_device = np.full(n_devices, None, dtype=object)
    onset_s = np.full(n_devices, np.inf)
    failure_s = np.full(n_devices, np.nan)
    for fault in faults:
        device = next(i for i, m in enumerate(machines) if m.device_id == fault.device_id)
        fault_kind_per_device[device] = fault.kind
        onset_s[device] = _seconds_since(config.start, fault.onset)
        failure_s[device] = _seconds_since(config.start, fault.failure)
    fault_kind = np.broadcast_to(fault_kind_per_device, (n_steps, n_devices)).copy()
    fault_kind[elapsed < onset_s] = None
    rul_hours = np.maximum(failure_s - elapsed, 0.0) / 3600.0

    columns: dict[str, Any] = {
        "device_id": identifier([m.device_id for m in machines]),
        "asset": identifier([m.asset for m in machines]),
        "line": identifier([m.line for m in machines]),
        "site": identifier([m.site for m in machines]),
        "timestamp": timestamps,
        "mode": np.asarray(MODES, dtype=object)[modes.ravel()],
        "seq": np.repeat(np.arange(n_steps, dtype=np.int64), n_devices),
    }
    for name in SENSORS:
        columns[name] = np.round(measured[name], _DECIMALS[name]).ravel()
    columns.update(
        kind=identifier([m.kind for m in machines]),
        health=np.round(health, 5).ravel(),
        fault_kind=fault_kind.ravel(),
        in_fault=in_fault.ravel(),
        failed=failed.ravel(),
        rul_hours=rul_hours.ravel(),
    )
    # copy=False keeps one block per column: consolidating a million rows costs more than the physics.
    return pd.DataFrame(columns, copy=False)
