"""Feature computation, online (numpy): sensors, derived features and per-device window features.

Works on a columnar :class:`SensorTable` (built from readings, or from a file chunk), so events and
files share one implementation. Window features need each device's recent history; it comes in as
a :class:`DeviceHistory` per device and goes out updated, so the caller (a Lambda, the edge box)
keeps it in its own store and the core stays stateless.

Definitions (the Spark implementation in ``zaindari.features_spark`` follows them and the tests
prove both equal): a window of size ``n`` holds the current reading and up to ``n - 1`` earlier
readings of the same device, ordered by timestamp; partial windows use what there is.
``mean``, ``min``, ``max`` as usual; ``std`` is the population standard deviation (0 for one
reading); ``slope`` is the least-squares slope of value against reading position (0 for one
reading); ``ewm`` is ``sum(w_k * x_k) / sum(w_k)`` with ``w_k = (1 - alpha) ** age_k`` and age 0 for
the current reading. ``readings_since_start`` counts the device's readings including the current
one. A reading older than the last one its device's history holds is *late*: it is scored against
the history as it stands, and does not advance it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from zaindari.codegen import IdentityCache, build
from zaindari.contract import Reading, Rejection
from zaindari.spec import ModelSpec

_T = TypeVar("_T")

__all__ = ["DeviceHistory", "FeatureBatch", "SensorTable", "compute_features", "window_statistics"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Up to this many rows, windows and row checks are computed in plain Python (bit for bit what the
#: numpy path gives, see :func:`window_statistics_rows`): an edge box scores groups of 1-4
#: readings, where numpy's per-call overhead (~100 us per batch for the windows) is most of the cost.
SMALL_BATCH = 8


@dataclass
class DeviceHistory:
    """What a device's window features need from the past: its last readings, count, last time."""

    count: int = 0
    last_timestamp: float | None = None
    values: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "last_timestamp": self.last_timestamp, "values": self.values}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DeviceHistory:
        if not data:
            return cls()
        return cls(
            count=int(data.get("count", 0)),
            last_timestamp=None if data.get("last_timestamp") is None else float(data["last_timestamp"]),
            values={k: [float(x) for x in v] for k, v in dict(data.get("values", {})).items()},
        )


@dataclass
class SensorTable:
    """Readings as columns: device ids, epoch-second timestamps, one float column per sensor.

    A sensor missing from a row is ``nan`` in its column.
    """

    device_id: npt.NDArray[np.object_]
    timestamp: FloatArray
    sensors: dict[str, FloatArray]
    mode: npt.NDArray[np.object_] | None = None

    def __len__(self) -> int:
        return len(self.timestamp)

    @classmethod
    def from_readings(cls, readings: Sequence[Reading], sensor_names: Sequence[str]) -> SensorTable:
        # one Python list per column, made by a comprehension (a numpy item assignment costs ~4x
        # a list's, and a loop over each reading's sensors ~1.2x these)
        nan = math.nan
        values = [r.sensors for r in readings]
        return cls(
            device_id=np.array([r.device_id for r in readings], dtype=object),
            timestamp=np.array([r.timestamp.timestamp() for r in readings], dtype=np.float64),
            sensors={
                name: np.array([v.get(name, nan) for v in values], dtype=np.float64) for name in sensor_names
            },
            mode=np.array([r.mode for r in readings], dtype=object),
        )

    def take(self, rows: npt.NDArray[np.intp]) -> SensorTable:
        return SensorTable(
            device_id=self.device_id[rows],
            timestamp=self.timestamp[rows],
            sensors={k: v[rows] for k, v in self.sensors.items()},
            mode=None if self.mode is None else self.mode[rows],
        )


@dataclass
class FeatureBatch:
    """Features of the rows that passed, aligned with ``rows`` (positions in the input table)."""

    rows: npt.NDArray[np.intp]
    columns: dict[str, FloatArray]
    late: BoolArray
    rejections: list[Rejection]
    histories: dict[str, DeviceHistory]

    def __len__(self) -> int:
        return len(self.rows)

    def matrix(self, names: Sequence[str]) -> npt.NDArray[np.float32]:
        """The model's input matrix (rows x features, float32, C-contiguous)."""
        if not len(self.rows):
            return np.zeros((0, len(names)), dtype=np.float32)
        if len(self.rows) <= SMALL_BATCH:  # one array of the columns, turned (column_stack costs ~3x)
            return np.array([self.columns[n] for n in names], dtype=np.float32).T.copy()
        return np.ascontiguousarray(np.column_stack([self.columns[n] for n in names]), dtype=np.float32)


def window_statistics(
    windows: FloatArray, stats: Sequence[str], alpha: float | None
) -> dict[str, FloatArray]:
    """Statistics of each row of ``windows`` (rows x size, oldest first, ``nan`` where empty).

    The last column is the current reading and is never empty.
    """
    valid = ~np.isnan(windows)
    count = valid.sum(axis=1).astype(np.float64)
    filled = np.where(valid, windows, 0.0)
    mean = filled.sum(axis=1) / count
    out: dict[str, FloatArray] = {}
    for stat in stats:
        if stat == "mean":
            out[stat] = mean
        elif stat == "std":
            dev = np.where(valid, windows - mean[:, None], 0.0)
            out[stat] = np.sqrt((dev * dev).sum(axis=1) / count)
        elif stat == "min":
            out[stat] = np.where(valid, windows, np.inf).min(axis=1)
        elif stat == "max":
            out[stat] = np.where(valid, windows, -np.inf).max(axis=1)
        elif stat == "slope":
            pos = np.broadcast_to(np.arange(windows.shape[1], dtype=np.float64), windows.shape)
            pos_mean = np.where(valid, pos, 0.0).sum(axis=1) / count
            dx = np.where(valid, pos - pos_mean[:, None], 0.0)
            dy = np.where(valid, windows - mean[:, None], 0.0)
            sxx = (dx * dx).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                slope = (dx * dy).sum(axis=1) / sxx
            out[stat] = np.where(sxx > 0, slope, 0.0)
        elif stat == "ewm":
            assert alpha is not None  # the spec enforces it
            size = windows.shape[1]
            weights = np.where(valid, (1.0 - alpha) ** np.arange(size - 1, -1, -1, dtype=np.float64), 0.0)
            out[stat] = (weights * filled).sum(axis=1) / weights.sum(axis=1)
        else:  # pragma: no cover - the spec's Literal type rules this out
            raise ValueError(f"unknown window statistic {stat!r}")
    return out


def _pairwise(items: Sequence[_T], lo: int, n: int, add: Callable[[_T, _T], _T], zero: _T) -> _T:
    """numpy's pairwise summation of ``items[lo:lo + n]`` (``DOUBLE_pairwise_sum``, numpy 1.x),
    each addition made by ``add``: a plain loop below 8 values, 8 running sums combined as a tree
    up to 128, halves above. With floats it is the sum (:func:`_pairwise_sum`); with terms of a
    Python expression, the expression that adds them in that order (:func:`_pairwise_text`)."""
    if n < 8:
        res = zero
        for i in range(lo, lo + n):
            res = add(res, items[i])
        return res
    if n <= 128:
        r = list(items[lo : lo + 8])
        body = n - n % 8
        for i in range(lo + 8, lo + body, 8):
            for j in range(8):
                r[j] = add(r[j], items[i + j])
        res = add(add(add(r[0], r[1]), add(r[2], r[3])), add(add(r[4], r[5]), add(r[6], r[7])))
        for i in range(lo + body, lo + n):
            res = add(res, items[i])
        return res
    half = n // 2
    half -= half % 8
    return add(_pairwise(items, lo, half, add, zero), _pairwise(items, lo + half, n - half, add, zero))


def _pairwise_sum(values: Sequence[float], lo: int, n: int) -> float:
    """numpy's pairwise summation of ``values[lo:lo + n]`` (:func:`_pairwise`)."""
    if 8 <= n < 16:  # the usual window (10), inline: the eight running sums are the first eight values
        r0, r1, r2, r3, r4, r5, r6, r7 = values[lo : lo + 8]
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        for i in range(lo + 8, lo + n):
            res += values[i]
        return res
    return _pairwise(values, lo, n, operator.add, 0.0)


def _pairwise_text(terms: Sequence[str], lo: int, n: int) -> str:
    """:func:`_pairwise_sum` of ``terms[lo:lo + n]`` written out as one Python expression: the
    same additions in the same order (what :func:`_full_window_stats` compiles)."""
    return _pairwise(terms, lo, n, _add_text, "0.0")


def _add_text(a: str, b: str) -> str:
    return f"({a} + {b})"


def _row_sum(values: Sequence[float]) -> float:
    """``ndarray.sum`` of one row of float64 (the reduction starts from 0.0: a sum of ``-0.0`` is ``0.0``)."""
    return 0.0 + _pairwise_sum(values, 0, len(values))


@cache
def _ewm_weights(alpha: float, size: int) -> tuple[float, ...]:
    # computed by numpy once, so the weights are the very numbers the numpy path multiplies by
    return tuple(((1.0 - alpha) ** np.arange(size - 1, -1, -1, dtype=np.float64)).tolist())


@lru_cache(maxsize=4096)  # (a window's empty places are a prefix: size + 1 patterns per size)
def _slope_terms(valid: tuple[bool, ...]) -> tuple[tuple[float, ...], float]:
    """A window's ``dx`` (position minus mean position, 0.0 where empty) and its sum of squares:
    they depend on which places hold a value only (worked out once per pattern, as numpy does
    them: the same sums in the same order)."""
    count = float(sum(valid))
    pos_mean = _row_sum([float(k) if ok else 0.0 for k, ok in enumerate(valid)]) / count
    dx = [(k - pos_mean) if ok else 0.0 for k, ok in enumerate(valid)]
    return tuple(dx), _row_sum([d * d for d in dx])


@lru_cache(maxsize=4096)
def _ewm_terms(alpha: float, valid: tuple[bool, ...]) -> tuple[tuple[float, ...], float]:
    """A window's ewm weights (0.0 where empty) and their sum, once per ``alpha`` and pattern."""
    weights = [w if ok else 0.0 for w, ok in zip(_ewm_weights(alpha, len(valid)), valid, strict=True)]
    return tuple(weights), _row_sum(weights)


def window_statistics_rows(
    windows: Sequence[Sequence[float]], stats: Sequence[str], alpha: float | None
) -> dict[str, list[float]]:
    """:func:`window_statistics` for a few windows as Python lists: the same numbers, bit for bit.

    Each sum is taken over the whole row, empty places as 0.0, in numpy's pairwise order;
    ``min`` and ``max`` are left to numpy (its SIMD reductions pick between ``0.0`` and ``-0.0``
    in their own way). What depends only on which places are empty (the slope's positions, the
    ewm's weights) is worked out once per pattern.
    """
    plain, extremes = _split_stats(tuple(stats))
    columns = None
    if windows:
        size = len(windows[0])
        if size <= COMPILED_WINDOW_MAX:
            # every place of every window holds a finite value (the usual group): the windows'
            # statistics by one compiled function, or None where one is not full or not finite
            columns = _full_window_stats(size, plain, alpha)[1](windows)
    out: dict[str, list[float]] = {stat: [] for stat in stats}
    if columns is not None:
        out.update(zip(plain, columns, strict=True))
    else:
        _window_rows_one_by_one(windows, stats, alpha, out)
    if extremes and windows:
        for stat, col in window_statistics(np.array(windows, dtype=np.float64), extremes, alpha).items():
            out[stat] = col.tolist()
    return out


@lru_cache(maxsize=256)
def _split_stats(stats: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``stats`` without ``min`` and ``max`` (summed in Python), and those two (left to numpy)."""
    return tuple(s for s in stats if s not in ("min", "max")), tuple(s for s in stats if s in ("min", "max"))


def _window_rows_one_by_one(
    windows: Sequence[Sequence[float]], stats: Sequence[str], alpha: float | None, out: dict[str, list[float]]
) -> None:
    """:func:`window_statistics_rows` window by window (some with empty places), ``min`` and
    ``max`` left out."""
    extremes = [s for s in stats if s in ("min", "max")]
    plain = tuple(s for s in stats if s not in extremes)
    plain_out = [out[s] for s in plain]
    for row in windows:
        total = sum(row)
        if total - total == 0.0 and len(row) <= COMPILED_WINDOW_MAX:  # the compiled statistics
            for column, value in zip(
                plain_out, _full_window_stats(len(row), plain, alpha)[0](row), strict=True
            ):
                column.append(value)
            continue
        valid = tuple([not math.isnan(x) for x in row])
        count = float(sum(valid))
        full = count == len(row)
        filled = list(row) if full else [x if ok else 0.0 for x, ok in zip(row, valid, strict=True)]
        mean = _row_sum(filled) / count
        for stat in stats:
            if stat == "mean":
                out[stat].append(mean)
            elif stat == "std":
                dev = (
                    [x - mean for x in row]
                    if full
                    else [(x - mean) if ok else 0.0 for x, ok in zip(row, valid, strict=True)]
                )
                out[stat].append(math.sqrt(_row_sum([d * d for d in dev]) / count))
            elif stat == "slope":
                dx, sxx = _slope_terms(valid)
                dy = (
                    [x - mean for x in row]
                    if full
                    else [(x - mean) if ok else 0.0 for x, ok in zip(row, valid, strict=True)]
                )
                out[stat].append(
                    _row_sum([a * b for a, b in zip(dx, dy, strict=True)]) / sxx if sxx > 0 else 0.0
                )
            elif stat == "ewm":
                assert alpha is not None  # the spec enforces it
                weights, weight_sum = _ewm_terms(alpha, valid)
                out[stat].append(_row_sum([w * x for w, x in zip(weights, filled, strict=True)]) / weight_sum)
            elif stat not in extremes:  # pragma: no cover - the spec's Literal type rules this out
                raise ValueError(f"unknown window statistic {stat!r}")


#: The largest window compiled by :func:`_full_window_stats`; larger windows are summed value by
#: value (:func:`_window_rows_one_by_one`): a compiled window of 1,000 holds ~0.8 MB and took ~40 ms.
COMPILED_WINDOW_MAX = 128


# bounded by entries: 64 compiled windows of at most 128 values (both functions: ~0.15 MB each
# with mean, std, slope and ewm), ~9 MB at most
@lru_cache(maxsize=64)
def _full_window_stats(size: int, stats: tuple[str, ...], alpha: float | None) -> Any:
    """``(row_stats, rows_stats)``: ``row_stats(v)``, the statistics ``stats`` (``min`` and
    ``max`` left out) of a window of ``size`` finite values, in that order, compiled once per
    window spec: each sum written out in numpy's pairwise order (:func:`_pairwise_text`), the
    slope's positions and the ewm's weights as constants (what :func:`window_statistics_rows`
    does value by value); ``rows_stats(windows)``, the same for several windows as one list per
    statistic, or ``None`` when a window is not of ``size`` values or its mean is not finite
    (then one of its values is not: the caller takes them one by one)."""
    full = (True,) * size
    count = repr(float(size))
    constants: dict[str, float] = {}

    def pairwise(term: str) -> str:
        return "(0.0 + " + _pairwise_text([term.format(k=k) for k in range(size)], 0, size) + ")"

    parts = []
    for stat in stats:
        if stat == "mean":
            parts.append("m")
        elif stat == "std":
            parts.append(f"sqrt({pairwise('(v[{k}] - m) * (v[{k}] - m)')} / {count})")
        elif stat == "slope":
            dx, sxx = _slope_terms(full)
            constants.update({f"d{k}": x for k, x in enumerate(dx)}, sxx=sxx)
            parts.append(f"({pairwise('d{k} * (v[{k}] - m)')} / sxx)" if sxx > 0 else "0.0")
        elif stat == "ewm":
            assert alpha is not None  # the spec enforces it
            weights, weight_sum = _ewm_terms(alpha, full)
            constants.update({f"w{k}": x for k, x in enumerate(weights)}, wsum=weight_sum)
            parts.append(f"({pairwise('w{k} * v[{k}]')} / wsum)")
        elif stat not in ("min", "max"):  # pragma: no cover - the spec's Literal type rules this out
            raise ValueError(f"unknown window statistic {stat!r}")
    mean = f"m = {pairwise('v[{k}]')} / {count}"
    outputs = [f"o{j}" for j in range(len(parts))]
    source = (
        f"def make({', '.join(['sqrt', *constants])}):\n"
        f"    def row_stats(v):\n"
        f"        {mean}\n"
        f"        return ({', '.join(parts)}{',' if parts else ''})\n"
        f"    def rows_stats(windows):\n"
        + "".join(f"        {o} = []\n" for o in outputs)
        + f"        for v in windows:\n"
        f"            if len(v) != {size}:\n"
        f"                return None\n"
        f"            {mean}\n"
        f"            if m - m != 0.0:\n"
        f"                return None\n"
        + "".join(f"            {o}.append({part})\n" for o, part in zip(outputs, parts, strict=True))
        + f"        return ({', '.join(outputs)}{',' if outputs else ''})\n"
        f"    return row_stats, rows_stats\n"
    )
    return build(source, math.sqrt, *constants.values())  # v, m, constants' names, operators


def _all_valid(spec: ModelSpec, table: SensorTable) -> bool:
    """Whether every sensor of every row is present, finite and in range (checked in Python)."""
    for sensor in spec.sensors:
        col = table.sensors.get(sensor.name)
        if col is None:
            return False
        values = col.tolist()
        total = sum(values)  # finite when every value is (else, or on overflow, checked one by one)
        if total - total != 0.0 and not all(map(math.isfinite, values)):
            return False
        if values and (
            (sensor.min is not None and min(values) < sensor.min)
            or (sensor.max is not None and max(values) > sensor.max)
        ):
            return False
    return True


@lru_cache(maxsize=64)
def _all_rows(n: int) -> npt.NDArray[np.intp]:
    """``0 .. n - 1``, the rows of a table whose every row passed (read-only: shared)."""
    rows = np.arange(n, dtype=np.intp)
    rows.flags.writeable = False
    return rows


def _row_rejections(
    spec: ModelSpec, table: SensorTable, base_row: int
) -> tuple[BoolArray | None, list[Rejection]]:
    """Rows missing a sensor or holding a value outside its valid range (``None``: every row
    passes, told for a few rows without numpy)."""
    n = len(table)
    if n <= SMALL_BATCH and _all_valid(spec, table):  # the usual case, without numpy's overhead
        return None, []
    ok = np.ones(n, dtype=bool)
    reasons: dict[int, list[dict[str, str]]] = {}
    for sensor in spec.sensors:
        col = table.sensors.get(sensor.name)
        if col is None:
            col = np.full(n, np.nan)
        # one pass for the common case (every value present and in range); the row by row
        # reasons only for a sensor that has a bad value
        bad = ~np.isfinite(col)
        if sensor.min is not None:
            bad |= col < sensor.min
        if sensor.max is not None:
            bad |= col > sensor.max
        if not bad.any():
            continue
        missing = np.isnan(col)
        infinite = np.isinf(col)
        bad_low = np.zeros(n, dtype=bool) if sensor.min is None else (col < sensor.min)
        bad_high = np.zeros(n, dtype=bool) if sensor.max is None else (col > sensor.max)
        for i in np.flatnonzero(missing):
            reasons.setdefault(int(i), []).append(
                {
                    "field": f"sensors.{sensor.name}",
                    "message": f"missing, required by model spec {spec.name!r}",
                }
            )
        for i in np.flatnonzero(infinite):
            reasons.setdefault(int(i), []).append(
                {"field": f"sensors.{sensor.name}", "message": f"value {col[i]} is not finite"}
            )
        bounds = f"[{'-inf' if sensor.min is None else f'{sensor.min:g}'}, {'inf' if sensor.max is None else f'{sensor.max:g}'}]"
        for i in np.flatnonzero((bad_low | bad_high) & ~infinite):
            reasons.setdefault(int(i), []).append(
                {
                    "field": f"sensors.{sensor.name}",
                    "message": f"value {col[i]:g} outside valid range {bounds}",
                }
            )
        ok &= ~bad
    rejections = [
        Rejection(
            base_row + i,
            "; ".join(f"{e['field']}: {e['message']}" for e in errs),
            tuple(errs),
            stage="features",
        )
        for i, errs in sorted(reasons.items())
    ]
    return ok, rejections


def compute_features(
    spec: ModelSpec,
    table: SensorTable,
    histories: Mapping[str, DeviceHistory] | None = None,
    *,
    base_row: int = 0,
) -> FeatureBatch:
    """Compute every column the spec names for each row of ``table``.

    Parameters
    ----------
    spec
        The model spec.
    table
        The rows, in any order; each device's rows are put in timestamp order for the windows.
    histories
        Each device's history before this batch (missing devices start empty).
    base_row
        Added to row positions in rejections (a file chunk's offset).

    Returns
    -------
    FeatureBatch
        Features of the valid rows, rejections (missing or out-of-range sensors, non-finite
        derived values) and the updated histories of every device seen.
    """
    histories = dict(histories or {})
    ok, rejections = _row_rejections(spec, table, base_row)

    n = len(table)
    columns: dict[str, FloatArray] = {}
    for name in spec.sensor_names:
        given = table.sensors.get(name)  # (a default argument would make a column of nan every time)
        columns[name] = np.full(n, np.nan) if given is None else np.asarray(given, dtype=np.float64)
    lists: dict[str, list[float]] = {}  # columns as Python lists, for a few rows

    def column(name: str) -> list[float]:
        values = lists.get(name)
        if values is None:
            values = lists[name] = columns[name].tolist()
        return values

    for derived in spec.derived:
        row_values = derived.tree.evaluate_rows(column, n) if n <= SMALL_BATCH else None
        if row_values is not None:  # a few rows: on Python floats (the same numbers)
            values = np.array(row_values, dtype=np.float64)
            lists[derived.name] = row_values
            total = sum(row_values)
            if total - total == 0.0:  # every value finite: nothing to reject
                columns[derived.name] = values
                continue
        else:
            values = derived.tree.evaluate(columns)
        if ok is None:
            ok = np.ones(n, dtype=bool)
        bad = ok & ~np.isfinite(values)
        for i in np.flatnonzero(bad) if bad.any() else ():
            rejections.append(
                Rejection(
                    base_row + int(i),
                    f"derived.{derived.name}: {derived.expr} is not finite (division by zero?)",
                    ({"field": f"derived.{derived.name}", "message": "not finite"},),
                    stage="features",
                )
            )
        ok &= ~bad
        columns[derived.name] = values

    rows = _all_rows(n) if ok is None else np.flatnonzero(ok).astype(np.intp)
    if len(rows) == n:  # every row passed (the usual case): the columns as they are, not copies
        devices, stamps = table.device_id, table.timestamp
    else:
        columns = {k: v[rows] for k, v in columns.items()}
        lists = {}  # (the rows that passed: made again from the columns when asked)
        devices = table.device_id[rows]
        stamps = table.timestamp[rows]
    if not (spec.windows or spec.readings_since_start or spec.rate_sources):
        late = np.zeros(len(rows), dtype=bool)
    elif len(rows) <= SMALL_BATCH:
        late = _small_window_features(spec, columns, lists, devices.tolist(), stamps.tolist(), histories)
    else:
        late = _window_features(spec, columns, devices, stamps, histories)
    rejections.sort(key=lambda r: r.index)
    return FeatureBatch(rows=rows, columns=columns, late=late, rejections=rejections, histories=histories)


def _window_features(
    spec: ModelSpec,
    columns: dict[str, FloatArray],
    devices: npt.NDArray[np.object_],
    stamps: FloatArray,
    histories: dict[str, DeviceHistory],
) -> BoolArray:
    """Add window, counter and rate columns in place; update ``histories``; return the late mask.

    Every row is placed in a *segment*: its device's history followed by the device's in-order
    rows of this batch (late rows get a segment of their own: history plus the row). All
    segments are concatenated per source column, so each window is one fancy-index gather.
    """
    m = len(stamps)
    sources = spec.window_sources
    keep = spec.history_size
    # the per-row walk on Python lists: numpy item access costs ~4x a list's
    device_of: list[Any] = devices.tolist()
    stamp_of: list[float] = stamps.tolist()
    # rows by (device, timestamp), stably
    order_l: list[int] = np.lexsort((stamps, devices.astype(str))).tolist() if m else []

    seg_values: dict[str, list[float]] = {s: [] for s in sources}
    cursor = 0

    empty: list[float] = []

    def usable_past(hist: DeviceHistory) -> dict[str, list[float]]:
        # the same number of past readings for every source (a history written under another
        # spec may lack a source: then the windows restart)
        known = hist.values
        past = [known.get(s, empty) for s in sources]
        length = min(min(map(len, past), default=0), keep)
        return {s: values[len(values) - length :] for s, values in zip(sources, past, strict=True)}

    def open_segment(past: dict[str, list[float]]) -> int:
        nonlocal cursor
        start = cursor
        for s in sources:
            seg_values[s].extend(past[s])
        cursor += len(past[sources[0]]) if sources else 0
        return start

    value_of = {s: columns[s].tolist() for s in sources}
    seg_start_l, position_l, prev_pos_l = [0] * m, [0] * m, [-1] * m
    prev_time_l, counter_l, late_l = [math.nan] * m, [0.0] * m, [False] * m
    i = 0
    while i < m:
        device_value = device_of[order_l[i]]
        j = i
        while j < m and device_of[order_l[j]] == device_value:
            j += 1
        idx = order_l[i:j]
        device = str(device_value)
        hist = histories.get(device) or DeviceHistory()
        last = hist.last_timestamp
        in_order = [r for r in idx if last is None or stamp_of[r] >= last]
        late_rows = [r for r in idx if not (last is None or stamp_of[r] >= last)]

        past = usable_past(hist)
        start = open_segment(past)
        hist_len = cursor - start
        prev_t = last
        for k, r in enumerate(in_order):
            for s in sources:
                seg_values[s].append(value_of[s][r])
            seg_start_l[r] = start
            position_l[r] = cursor
            prev_pos_l[r] = cursor - 1 if (hist_len + k) > 0 else -1
            prev_time_l[r] = math.nan if prev_t is None else prev_t
            counter_l[r] = hist.count + k + 1
            prev_t = stamp_of[r]
            cursor += 1
        for r in late_rows:
            start_late = open_segment(past)
            for s in sources:
                seg_values[s].append(value_of[s][r])
            seg_start_l[r] = start_late
            position_l[r] = cursor
            prev_pos_l[r] = cursor - 1 if cursor > start_late else -1
            prev_time_l[r] = math.nan if last is None else last
            counter_l[r] = hist.count + 1
            late_l[r] = True
            cursor += 1

        # the device's history after this batch: history plus in-order rows, trimmed
        new_hist = DeviceHistory(
            count=hist.count + len(in_order),
            last_timestamp=prev_t,
            values={
                s: (past[s] + [value_of[s][r] for r in in_order])[-keep:] if keep else [] for s in sources
            },
        )
        histories[device] = new_hist
        i = j
    late = np.array(late_l, dtype=bool)
    seg_start = np.array(seg_start_l, dtype=np.int64)
    position = np.array(position_l, dtype=np.int64)
    prev_pos = np.array(prev_pos_l, dtype=np.int64)
    prev_time = np.array(prev_time_l, dtype=np.float64)
    counter = np.array(counter_l, dtype=np.float64)
    flat = {s: np.asarray(v, dtype=np.float64) for s, v in seg_values.items()}
    for w in spec.windows:
        offsets = np.arange(-(w.size - 1), 1, dtype=np.int64)
        gather = position[:, None] + offsets[None, :]
        inside = gather >= seg_start[:, None]
        values = (
            np.where(inside, flat[w.source][np.clip(gather, 0, None)], np.nan) if m else np.zeros((0, w.size))
        )
        for stat, col in window_statistics(values, w.stats, w.alpha).items():
            columns[w.feature_name(stat)] = col
    if spec.readings_since_start:
        columns["readings_since_start"] = counter
    for s in spec.rate_sources:
        has_prev = prev_pos >= 0
        prev_value = np.where(has_prev, flat[s][np.clip(prev_pos, 0, None)], np.nan) if m else np.zeros(0)
        dt = stamps - prev_time
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = (columns[s] - prev_value) / dt
        columns[f"{s}__rate"] = np.where(has_prev & (dt > 0), rate, np.nan)
    return late


class _WindowPlan(NamedTuple):
    """What :func:`_small_window_features` needs of a spec, worked out once per spec."""

    sources: list[str]
    keep: int
    #: per window spec: source, size, statistics, alpha, their feature names, and the compiled
    #: statistics of full windows (:func:`_full_window_stats`; ``None`` with ``min``/``max`` or
    #: past :data:`COMPILED_WINDOW_MAX`)
    windows: list[tuple[str, int, tuple[str, ...], float | None, tuple[str, ...], Any]]


def _small_window_plan(spec: ModelSpec) -> _WindowPlan:
    windows: list[tuple[str, int, tuple[str, ...], float | None, tuple[str, ...], Any]] = []
    for w in spec.windows:
        stats: tuple[str, ...] = tuple(w.stats)
        plain, extremes = _split_stats(stats)
        compiled = (
            _full_window_stats(w.size, plain, w.alpha)[1]
            if not extremes and w.size <= COMPILED_WINDOW_MAX
            else None
        )
        windows.append((w.source, w.size, stats, w.alpha, tuple(w.feature_name(s) for s in stats), compiled))
    return _WindowPlan(spec.window_sources, spec.history_size, windows)


#: Per spec: its small windows' plan.
_SMALL_WINDOWS: IdentityCache[ModelSpec, _WindowPlan] = IdentityCache()


def _small_window_features(
    spec: ModelSpec,
    columns: dict[str, FloatArray],
    lists: dict[str, list[float]],
    device_of: list[Any],
    stamp_of: list[float],
    histories: dict[str, DeviceHistory],
) -> BoolArray:
    """:func:`_window_features` for a few rows, in plain Python: the same windows (each row's
    segment is its device's usable history followed by the device's in-order rows; a late row's,
    the history and the row), statistics (:func:`window_statistics_rows`), rates, counters and
    histories. ``lists``: columns already made Python lists (filled in here)."""
    m = len(stamp_of)
    plan = _SMALL_WINDOWS.get(spec, _small_window_plan)
    sources, keep = plan.sources, plan.keep
    nan = math.nan
    value_of = {}
    for s in sources:
        values = lists.get(s)
        if values is None:
            values = lists[s] = columns[s].tolist()
        value_of[s] = values
    # each row's segment (per source) and its place in it, previous reading's time, counter
    segment_of: list[dict[str, list[float]]] = [{}] * m
    position = [0] * m
    prev_time = [nan] * m
    counter = [0.0] * m
    late = [False] * m
    order = sorted(range(m), key=lambda r: (str(device_of[r]), stamp_of[r]))  # (lexsort's order)
    empty: list[float] = []
    i = 0
    while i < m:
        device_value = device_of[order[i]]
        j = i + 1
        while j < m and device_of[order[j]] == device_value:
            j += 1
        idx = order[i:j]
        i = j
        device = str(device_value)
        hist = histories.get(device) or DeviceHistory()
        last = hist.last_timestamp
        count = hist.count
        in_order = idx if last is None else [r for r in idx if stamp_of[r] >= last]
        # the same number of past readings for every source (a history written under another
        # spec may lack a source: then the windows restart)
        known = hist.values
        past_lists = [known.get(s, empty) for s in sources]
        length = min(min(map(len, past_lists), default=0), keep)
        segment: dict[str, list[float]] = {}
        kept: dict[str, list[float]] = {}
        for s, past_values in zip(sources, past_lists, strict=True):
            values = past_values[len(past_values) - length :]
            values.extend(map(value_of[s].__getitem__, in_order))
            segment[s] = values
            kept[s] = values[-keep:] if keep else []
        prev_t = last
        for k, r in enumerate(in_order):
            segment_of[r] = segment
            position[r] = length + k
            prev_time[r] = nan if prev_t is None else prev_t
            count += 1
            counter[r] = float(count)
            prev_t = stamp_of[r]
        if len(in_order) < len(idx):
            for r in idx:
                if last is not None and not stamp_of[r] >= last:  # late: history and the row
                    segment_of[r] = {
                        s: [*v[len(v) - length :], value_of[s][r]]
                        for s, v in zip(sources, past_lists, strict=True)
                    }
                    position[r] = length
                    prev_time[r] = last
                    counter[r] = float(hist.count + 1)
                    late[r] = True
        # the device's history after this batch: history plus in-order rows, trimmed
        histories[device] = DeviceHistory(count=count, last_timestamp=prev_t, values=kept)
    for source, size, stats, alpha, names, rows_stats in plan.windows:
        windows = []
        for segment, end in zip(segment_of, position, strict=True):
            flat = segment[source]
            first = end - size + 1  # a slice of the segment, nan before its start
            windows.append(flat[first : end + 1] if first >= 0 else [nan] * -first + flat[: end + 1])
        # full windows of finite values (the usual group) by the compiled statistics at once
        computed = rows_stats(windows) if rows_stats is not None and windows else None
        stat_columns = (
            computed if computed is not None else list(window_statistics_rows(windows, stats, alpha).values())
        )
        for name, col in zip(names, stat_columns, strict=True):
            columns[name] = np.array(col, dtype=np.float64)
    if spec.readings_since_start:
        columns["readings_since_start"] = np.array(counter, dtype=np.float64)
    for s in spec.rate_sources:
        current = value_of[s]
        rates = []
        for r in range(m):
            p = position[r] - 1  # its previous reading's place (-1: none)
            dt = stamp_of[r] - prev_time[r]  # nan without a previous reading
            rates.append((current[r] - segment_of[r][s][p]) / dt if p >= 0 and dt > 0 else nan)
        columns[f"{s}__rate"] = np.array(rates, dtype=np.float64)
    return np.array(late, dtype=bool)
