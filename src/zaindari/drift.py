"""Drift: a model version's baseline, mergeable window summaries of what was scored, drift statistics,
and the monitor use case that turns drift into one retraining request and one alert for people.

* :class:`Baseline` (``baseline.json`` in the bundle) is computed at training time: per model feature,
  interior bin edges at the training deciles (``bins`` quantiles) and the training histogram on them;
  the same for the model's score; the training alert rate (share of rows at or past the lowest
  learned threshold). Bundles without it still load; they are simply not monitored.
* :class:`WindowSummary` is what every scoring path keeps instead of raw copies: per fixed time window
  (``window_seconds``, aligned to the epoch) and model version, histograms of the scored features and
  score on the baseline's bins, counts of readings, of missing and out-of-range values per sensor,
  alert rows, and each device's last-seen time. :meth:`WindowSummary.merge` adds counts and takes the
  latest last-seen, so merging is associative and commutative, with :meth:`WindowSummary.empty` as the
  identity: summaries written by an edge box and by the cloud, merged in any grouping, equal one
  summary over all the data.
* Statistics (:func:`assess_drift`): PSI per feature and on the score, a two-sample KS test from the
  binned sketches, data-quality signals (missing sensors, out-of-range rate, devices silent since the
  previous window) and the change of the alert rate.
* :class:`DriftMonitor` is the ``monitor_drift`` use case over ports (:class:`SummaryStore`,
  :class:`DriftTriggerLog`, :class:`DriftNotifier`).

**KS from bins (the approximation).** Both samples are histograms on the same edges, so the two
empirical CDFs are known exactly *at the edges*; ``D`` is their largest difference there. The true
two-sample statistic can only be larger, by at most the largest bin's share, so the binned ``D`` is a
lower bound. The p-value uses the asymptotic Kolmogorov distribution with ``n_eff = n m / (n + m)``;
telemetry is autocorrelated, so that p-value is optimistic (too small) and the trigger uses ``D`` and
PSI magnitudes, never the p-value alone.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import operator
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from zaindari.validation import CachedModel

if TYPE_CHECKING:
    from zaindari.bundle import LearnedThresholds, ModelBundle
    from zaindari.spec import ModelSpec

__all__ = [
    "BASELINE_FILE",
    "DRIFT_DETAIL_TYPE",
    "SUMMARY_WINDOW_SECONDS",
    "Baseline",
    "DeviceCodes",
    "DriftCheck",
    "DriftMonitor",
    "DriftNotifier",
    "DriftReport",
    "DriftThresholds",
    "DriftTriggerLog",
    "FeatureDrift",
    "SummaryStore",
    "WindowSummary",
    "assess_drift",
    "baseline_of",
    "compute_baseline",
    "ks_from_histograms",
    "merge_summaries",
    "psi",
    "summarize_table",
    "summary_days",
    "summary_key_span",
    "summary_objects",
]

BASELINE_FILE = "baseline.json"
DRIFT_DETAIL_TYPE = "Zaindari Drift Detected"
#: Summaries are kept per hour: fine enough for any monitoring window of whole hours.
SUMMARY_WINDOW_SECONDS = 3600
#: Added to every bin count before PSI, so an empty bin gives a large but finite term.
PSI_SMOOTHING = 0.5

FloatArray = npt.NDArray[np.float64]


# ----------------------------------------------------------------------------- baseline


class Baseline(CachedModel):
    """A model version's reference distributions, from its training data (``baseline.json``).

    ``edges[f]`` are the interior bin edges of feature ``features[f]`` (strictly increasing; bin ``i``
    holds ``edges[i-1] <= x < edges[i]``, the first and last bins are open), ``counts[f]`` the training
    histogram on them. ``sensors`` holds each raw sensor's valid range (for out-of-range rates) and
    ``feature_sensors`` the raw sensors each feature is computed from (to name drifting sensors).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = 1
    model_name: str
    features: list[str] = Field(min_length=1)
    edges: list[list[float]]
    counts: list[list[int]]
    score_edges: list[float]
    score_counts: list[int]
    rows: int = Field(ge=1)
    alert_rate: float | None = None
    sensors: dict[str, tuple[float | None, float | None]]
    feature_sensors: dict[str, list[str]]
    source: str = ""

    @functools.cached_property
    def baseline_id(self) -> str:
        """A short hash of the bins: summaries are only merged with summaries on the same bins
        (computed once per baseline: the model is frozen)."""
        text = json.dumps([self.features, self.edges, self.score_edges], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def bins(self, feature_index: int) -> int:
        return len(self.edges[feature_index]) + 1

    @functools.cached_property
    def _edge_matrix(self) -> npt.NDArray[np.float64]:
        """Every feature's edges, then the score's, one row each, padded with ``inf`` to the
        longest (made once per baseline): a finite value's bin is the number of its row's edges
        at or below it (``searchsorted(..., side="right")``), counted for all columns at once."""
        rows = [*self.edges, self.score_edges]
        out = np.full((len(rows), max((len(e) for e in rows), default=0)), np.inf)
        for j, edges in enumerate(rows):
            out[j, : len(edges)] = edges
        return out

    @functools.cached_property
    def _edge_matrix32(self) -> npt.NDArray[np.float32]:
        """:attr:`_edge_matrix` for float32 values (each edge the smallest float32 at or above it;
        see :func:`_ceiling_edges`), made once per baseline."""
        return _ceiling_edges(self._edge_matrix, np.dtype(np.float32))

    @functools.cached_property
    def _layout(self) -> tuple[list[list[float]], list[int], list[tuple[int, int]]]:
        """The bins of every feature, then the score's, laid end to end (for counting a few rows
        in one list): their edges, each one's offset, and each one's ``(start, end)``."""
        edges = [*self.edges, self.score_edges]
        widths = [len(e) + 1 for e in edges]
        offsets = [sum(widths[:j]) for j in range(len(widths))]
        return edges, offsets, [(o, o + w) for o, w in zip(offsets, widths, strict=True)]

    @functools.cached_property
    def _small_plan(self) -> _SmallPlan:
        """What :func:`_summarize_small` needs of the bins and sensors, made once per baseline."""
        edges, offsets, bounds = self._layout
        return _SmallPlan(
            list(zip(edges, offsets, strict=True)),
            bounds[-1][1],
            [(f, lo, hi) for f, (lo, hi) in zip(self.features, bounds, strict=False)],
            bounds[-1][0],
            [(name, low, high) for name, (low, high) in self.sensors.items()],
            dict.fromkeys(self.features, 0),
            dict.fromkeys(self.sensors, 0),
            np.array(offsets, dtype=np.intp),
        )


def _edges(values: FloatArray, bins: int) -> list[float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return []
    qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return [float(e) for e in np.unique(np.quantile(finite, qs))]


def _histogram(values: FloatArray, edges: Sequence[float]) -> list[int]:
    finite = values[np.isfinite(values)]
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), finite, side="right")
    return [int(c) for c in np.bincount(idx, minlength=len(edges) + 1)]


def compute_baseline(
    spec: ModelSpec,
    features: Sequence[str],
    matrix: npt.ArrayLike,
    score: npt.ArrayLike,
    thresholds: LearnedThresholds | None = None,
    *,
    bins: int = 10,
    source: str = "",
) -> Baseline:
    """The baseline of a model version from its training matrix (rows x ``features``) and scores.

    Parameters
    ----------
    spec
        The model spec (sensor ranges, which sensors each feature reads).
    features
        The signature's feature order.
    matrix, score
        Training features and the model's score on them.
    thresholds
        The learned thresholds; their lowest level gives the baseline alert rate.
    bins
        Bins per feature (edges at the training quantiles ``1/bins .. (bins-1)/bins``).
    source
        What the baseline was computed on, for people (e.g. ``training set 2026-10-05..2026-11-01``).
    """
    x = np.asarray(matrix, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != len(features) or x.shape[0] != len(s) or not len(s):
        raise ValueError(
            f"baseline needs a non-empty matrix of {len(features)} features and one score per row"
        )
    if bins < 2:
        raise ValueError("a baseline needs at least 2 bins")
    edges = [_edges(x[:, j], bins) for j in range(x.shape[1])]
    score_edges = _edges(s, bins)
    alert_rate = None
    if thresholds is not None:
        level = thresholds.ordered()[0][1]
        flagged = s >= level if thresholds.direction == "above" else s <= level
        alert_rate = float(np.mean(flagged))
    return Baseline(
        model_name=spec.name,
        features=list(features),
        edges=edges,
        counts=[_histogram(x[:, j], e) for j, e in enumerate(edges)],
        score_edges=score_edges,
        score_counts=_histogram(s, score_edges),
        rows=len(s),
        alert_rate=alert_rate,
        sensors={sensor.name: (sensor.min, sensor.max) for sensor in spec.sensors},
        feature_sensors={f: spec.feature_sensors(f) for f in features},
        source=source,
    )


_baselines: dict[str, Baseline | None] = {}


def baseline_of(bundle: ModelBundle) -> Baseline | None:
    """The bundle's baseline (parsed once per bundle content), or ``None`` for an older bundle."""
    key = bundle.content_hash
    if key not in _baselines:
        data = bundle.extras.get(BASELINE_FILE)
        baseline = Baseline.model_validate(data) if data is not None else None
        if baseline is not None and baseline.features != list(bundle.signature.features):
            raise ValueError(f"{BASELINE_FILE} features do not match the signature's")
        if len(_baselines) > 16:
            _baselines.clear()
        _baselines[key] = baseline
    return _baselines[key]


# ----------------------------------------------------------------------------- window summaries


@dataclass(frozen=True)
class WindowSummary:
    """Counts of what one model version scored in one time window; see the module docstring.

    ``start``/``end`` bound the windows merged (epoch seconds). ``features`` and ``score`` hold bin
    counts on the baseline's bins; ``feature_missing`` counts scored rows whose feature was not finite.
    ``readings`` counts every row that reached the feature stage, ``scored`` the rows scored.
    """

    model_version: str
    baseline_id: str
    start: int
    end: int
    readings: int
    scored: int
    alerts: int
    features: dict[str, tuple[int, ...]]
    feature_missing: dict[str, int]
    score: tuple[int, ...]
    sensor_missing: dict[str, int]
    sensor_out_of_range: dict[str, int]
    devices: dict[str, float] = field(default_factory=dict)

    @classmethod
    def empty(cls, baseline: Baseline, model_version: str) -> WindowSummary:
        """The identity of :meth:`merge` (no window: ``start`` after ``end``)."""
        return cls(
            model_version=model_version,
            baseline_id=baseline.baseline_id,
            start=2**62,
            end=-(2**62),
            readings=0,
            scored=0,
            alerts=0,
            features={f: (0,) * baseline.bins(j) for j, f in enumerate(baseline.features)},
            feature_missing={f: 0 for f in baseline.features},
            score=(0,) * (len(baseline.score_edges) + 1),
            sensor_missing={s: 0 for s in baseline.sensors},
            sensor_out_of_range={s: 0 for s in baseline.sensors},
        )

    def merge(self, other: WindowSummary) -> WindowSummary:
        """Both summaries as one (associative, commutative; raises on different versions or bins)."""
        if (self.model_version, self.baseline_id) != (other.model_version, other.baseline_id):
            raise ValueError(
                f"cannot merge summaries of {self.model_version} ({self.baseline_id}) and "
                f"{other.model_version} ({other.baseline_id})"
            )
        devices = dict(self.devices)
        for device, seen in other.devices.items():
            devices[device] = max(seen, devices.get(device, seen))
        return WindowSummary(
            model_version=self.model_version,
            baseline_id=self.baseline_id,
            start=min(self.start, other.start),
            end=max(self.end, other.end),
            readings=self.readings + other.readings,
            scored=self.scored + other.scored,
            alerts=self.alerts + other.alerts,
            features=_add_bins(self.features, other.features),
            feature_missing=_add_counts(self.feature_missing, other.feature_missing),
            score=_add(self.score, other.score),
            sensor_missing=_add_counts(self.sensor_missing, other.sensor_missing),
            sensor_out_of_range=_add_counts(self.sensor_out_of_range, other.sensor_out_of_range),
            devices=dict(sorted(devices.items())),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "model_version": self.model_version,
            "baseline_id": self.baseline_id,
            "start": self.start,
            "end": self.end,
            "readings": self.readings,
            "scored": self.scored,
            "alerts": self.alerts,
            "features": {k: list(v) for k, v in self.features.items()},
            "feature_missing": self.feature_missing,
            "score": list(self.score),
            "sensor_missing": self.sensor_missing,
            "sensor_out_of_range": self.sensor_out_of_range,
            "devices": self.devices,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowSummary:
        return cls(
            model_version=str(data["model_version"]),
            baseline_id=str(data["baseline_id"]),
            start=int(data["start"]),
            end=int(data["end"]),
            readings=int(data["readings"]),
            scored=int(data["scored"]),
            alerts=int(data["alerts"]),
            features={str(k): tuple(int(c) for c in v) for k, v in data["features"].items()},
            feature_missing={str(k): int(v) for k, v in data["feature_missing"].items()},
            score=tuple(int(c) for c in data["score"]),
            sensor_missing={str(k): int(v) for k, v in data["sensor_missing"].items()},
            sensor_out_of_range={str(k): int(v) for k, v in data["sensor_out_of_range"].items()},
            devices={str(k): float(v) for k, v in data.get("devices", {}).items()},
        )


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """Bin counts added bin by bin (``map``: an edge box merges a summary per request)."""
    if len(a) != len(b):
        raise ValueError(f"cannot add {len(b)} bins to {len(a)}")
    return tuple(map(operator.add, a, b))


def _add_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    if a.keys() == b.keys():
        return {k: a[k] + b[k] for k in sorted(a)}
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted(set(a) | set(b))}


def _add_bins(
    a: Mapping[str, tuple[int, ...]], b: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _add(out[k], v) if k in out else v
    return out


def merge_summaries(summaries: Sequence[WindowSummary], empty: WindowSummary) -> WindowSummary:
    """All ``summaries`` as one (``empty`` when there are none)."""
    return reduce(WindowSummary.merge, summaries, empty)


def merge_windows(summaries: Iterable[WindowSummary]) -> list[WindowSummary]:
    """Summaries of the same model version and window merged into one, ordered by version and start.

    What a run that scored its rows in pieces (chunks, Spark partitions) writes: one summary per
    window, equal to the summary of all its rows at once (:meth:`WindowSummary.merge` is associative).
    """
    merged: dict[tuple[str, int], WindowSummary] = {}
    for summary in summaries:
        key = (summary.model_version, summary.start)
        known = merged.get(key)
        merged[key] = summary if known is None else known.merge(summary)
    return [merged[k] for k in sorted(merged)]


def summaries_json(summaries: Sequence[WindowSummary]) -> bytes:
    """The body of one summaries object in the lake: its summaries as a compact JSON list."""
    return json.dumps([s.to_dict() for s in summaries], separators=(",", ":")).encode()


#: Up to this many rows, :func:`summarize_table` counts in plain Python (the same counts: an edge
#: box summarises groups of 1-4 readings, where a few bincounts cost ~100 us of numpy overhead).
SMALL_SUMMARY = 8


class _SmallPlan(NamedTuple):
    """What :func:`_summarize_small` needs of a baseline, worked out once per baseline."""

    bins: list[tuple[list[float], int]]  # every feature's edges, then the score's, with its offset
    width: int  # bins of all of them, end to end
    features: list[tuple[str, int, int]]  # each feature's name and its bins' (start, end)
    score_start: int
    sensors: list[tuple[str, float | None, float | None]]
    zero_features: dict[str, int]  # every feature at 0 (copied for a window with none missing)
    zero_sensors: dict[str, int]
    offsets: npt.NDArray[np.intp]  # each one's offset (features, then the score), for numpy


def _summarize_small(
    baseline: Baseline,
    model_version: str,
    devices: npt.NDArray[Any],
    timestamps: FloatArray,
    sensors: Mapping[str, FloatArray],
    rows: npt.NDArray[np.intp],
    matrix: npt.NDArray[Any],
    score: FloatArray,
    alerts: npt.NDArray[np.bool_],
    window_seconds: int,
) -> list[WindowSummary]:
    """:func:`summarize_table` for a few rows, counted one by one (``bisect`` for the bins:
    ``searchsorted(side="right")`` on finite values; a window is ``floor(t / window_seconds)``,
    Python's float floor division being numpy's ``floor_divide``)."""
    plan = baseline._small_plan
    stamps: list[float] = np.asarray(timestamps, dtype=np.float64).tolist()
    window = [int(t // window_seconds) for t in stamps]
    first = window[0]
    if window.count(first) == len(window):  # the usual group: one window
        starts, at = [first], {first: 0}
    else:
        starts = sorted(set(window))
        at = {w: k for k, w in enumerate(starts)}
    k = len(starts)
    readings = [0] * k
    for w in window:
        readings[at[w]] += 1
    sensor_missing: dict[str, list[int]] = {}  # (sensors with a value missing or out of range only)
    sensor_out: dict[str, list[int]] = {}
    all_in_range = True
    for name, low, high in plan.sensors:
        column = sensors.get(name)
        if column is None:
            sensor_missing[name] = list(readings)
            sensor_out[name] = [0] * k
            all_in_range = False
            continue
        column_values: list[float] = column.tolist()
        total = sum(column_values)
        if (
            total - total == 0.0  # every value finite (the usual group): none missing
            and (low is None or min(column_values) >= low)
            and (high is None or max(column_values) <= high)
        ):
            continue
        all_in_range = False
        missing, out = [0] * k, [0] * k
        for w, value in zip(window, column_values, strict=True):
            if math.isnan(value):
                missing[at[w]] += 1
            elif (low is not None and value < low) or (high is not None and value > high):
                out[at[w]] += 1
        sensor_missing[name], sensor_out[name] = missing, out

    width = plan.width
    nonfinite: list[list[int]] | None = None
    row_list: list[int] = np.asarray(rows).tolist()
    flags: list[bool] = np.asarray(alerts, dtype=bool).tolist()
    values = np.asarray(matrix, dtype=np.float64)
    scores = np.asarray(score, dtype=np.float64)
    counted = None
    if k == 1 and row_list:  # the usual group: one window; every value finite, counted at once
        table = np.empty((len(row_list), values.shape[1] + 1))
        table[:, :-1] = values
        table[:, -1] = scores
        total = float(table.sum())
        if total - total == 0.0:  # (each bin: the edges at or below the value, inf never)
            cells = (baseline._edge_matrix[None, :, :] <= table[:, :, None]).sum(axis=2) + plan.offsets
            counted = np.bincount(cells.ravel(), minlength=width).tolist()
    if counted is not None:
        bins = [counted]
        scored, alert_rows = [len(row_list)], [sum(flags)]
    else:
        bins = [[0] * width for _ in range(k)]
        scored, alert_rows = [0] * k, [0] * k
        layout = plan.bins
        for i, row_values, row_score, flag in zip(
            row_list, values.tolist(), scores.tolist(), flags, strict=True
        ):
            w = at[window[i]]
            scored[w] += 1
            alert_rows[w] += flag
            row_values.append(row_score)
            counts = bins[w]
            total = sum(row_values)
            if total - total == 0.0:  # every value finite (the usual row)
                for (row_edges, offset), value in zip(layout, row_values, strict=True):
                    counts[offset + bisect_right(row_edges, value)] += 1
                continue
            if nonfinite is None:
                nonfinite = [[0] * len(layout) for _ in range(k)]
            for j, ((row_edges, offset), value) in enumerate(zip(layout, row_values, strict=True)):
                if math.isfinite(value):
                    counts[offset + bisect_right(row_edges, value)] += 1
                else:
                    nonfinite[w][j] += 1

    last: list[dict[str, float]] = [{} for _ in range(k)]
    for device, w, t in zip(np.asarray(devices, dtype=object).tolist(), window, stamps, strict=True):
        held = last[at[w]]
        key = str(device)
        if key not in held or t > held[key]:
            held[key] = t
    out_summaries: list[WindowSummary] = []
    baseline_id, score_start = baseline.baseline_id, plan.score_start
    for w in range(k):
        start = starts[w] * window_seconds
        row = bins[w]
        missing_w = nonfinite[w] if nonfinite is not None else None
        out_summaries.append(
            WindowSummary(
                model_version=model_version,
                baseline_id=baseline_id,
                start=start,
                end=start + window_seconds,
                readings=readings[w],
                scored=scored[w],
                alerts=alert_rows[w],
                features={f: tuple(row[lo:hi]) for f, lo, hi in plan.features},
                feature_missing=dict(plan.zero_features)
                if missing_w is None
                else {f: missing_w[j] for j, (f, _, _) in enumerate(plan.features)},
                score=tuple(row[score_start:]),
                sensor_missing=dict(plan.zero_sensors)
                if all_in_range
                else {s: sensor_missing[s][w] if s in sensor_missing else 0 for s, _, _ in plan.sensors},
                sensor_out_of_range=dict(plan.zero_sensors)
                if all_in_range
                else {s: sensor_out[s][w] if s in sensor_out else 0 for s, _, _ in plan.sensors},
                devices=dict(sorted(last[w].items())),
            )
        )
    return out_summaries


#: from this many scored rows, summarize_table bins by comparing with each edge, not by searching
_COMPARE_ROWS = 4096


class DeviceCodes(NamedTuple):
    """The rows' devices as codes into ``names`` (a caller that has them coded already, as a file
    chunk's dictionary-encoded column, saves :func:`summarize_table` naming every row). Two codes
    may share a name (ids equal once trimmed): they are one device."""

    codes: npt.NDArray[np.integer[Any]]
    names: Sequence[str]


def _ceiling_edges(edges: FloatArray, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``edges`` as the smallest values of ``dtype`` at or above them: for ``x`` of that dtype,
    ``x >= edge`` exactly when ``x >= ceiling``, so values are binned in their own type (half the
    memory of a float64 copy for float32 features) with the counts of binning them as float64."""
    if dtype == np.float64:
        return edges
    with np.errstate(over="ignore"):  # (an edge past the type's largest value becomes inf)
        ceiling = edges.astype(dtype)
        below = ceiling.astype(np.float64) < edges
        ceiling[below] = np.nextafter(ceiling[below], np.array(np.inf, dtype=dtype))
    return ceiling


def _count_bins(
    values: npt.NDArray[Any],
    edges: npt.NDArray[Any],
    cells: npt.NDArray[np.intp],
    offsets: npt.NDArray[np.intp],
    bins: npt.NDArray[np.int64],
    nonfinite: npt.NDArray[np.int64],
    missing_cells: npt.NDArray[np.intp],
) -> None:
    """Add the bin counts of ``values`` (rows x columns) to ``bins`` and the values that are not
    finite to ``nonfinite``.

    ``edges`` holds each column's edges in the values' type (one row each, padded with ``inf``;
    see :func:`_ceiling_edges`); ``cells[r] +
    offsets[c]`` is where row ``r``'s column ``c`` counts (its window's block, its column's bins),
    ``missing_cells[r] + c`` where it counts when it is not finite. A finite value's bin is the
    number of its column's edges at or below it (``searchsorted(..., side="right")``).
    """
    finite = np.isfinite(values)
    if len(values) >= _COMPARE_ROWS:
        # a few edges per column: one comparison per edge across the table beats a binary search
        # per value; the running count in the smallest integer that holds it (less to write)
        index = np.zeros_like(values, dtype=np.int8 if edges.shape[1] < 127 else np.intp)
        for edge in edges.T:
            np.add(index, values >= edge, out=index, casting="unsafe")
    else:  # a small table: one binary search per column costs less than a pass per edge
        index = np.empty(values.shape, dtype=np.intp)
        for j, column_edges in enumerate(edges):
            index[:, j] = np.searchsorted(column_edges, values[:, j], side="right")
    flat = np.empty_like(index, dtype=np.intp)  # in the values' layout (no strided pass)
    np.add(index, cells[:, None], out=flat)
    flat += offsets
    if finite.all():  # the usual table: no copy through a mask
        bins += np.bincount(flat.ravel(order="K"), minlength=len(bins))
        return
    bins += np.bincount(flat[finite], minlength=len(bins))
    where = missing_cells[:, None] + np.arange(values.shape[1])
    nonfinite += np.bincount(where[~finite], minlength=len(nonfinite))


def _last_seen(
    devices: npt.NDArray[Any] | DeviceCodes,
    timestamps: FloatArray,
    inv: npt.NDArray[np.intp],
    k: int,
) -> list[dict[str, float]]:
    """Per window, each device's latest timestamp, by device name (sorted)."""
    if isinstance(devices, DeviceCodes):
        # the few distinct names sorted once; codes of one name (trimmed alike) become one
        names, number = np.unique(np.asarray(list(devices.names), dtype=object), return_inverse=True)
        device_index = np.asarray(number, dtype=np.intp)[np.asarray(devices.codes, dtype=np.intp)]
    else:
        # devices numbered in sorted order without sorting every row's name: few distinct names
        distinct = sorted(set(devices.tolist() if isinstance(devices, np.ndarray) else devices))
        numbers = {name: i for i, name in enumerate(distinct)}
        names = np.asarray(distinct, dtype=object)
        device_index = np.fromiter((numbers[d] for d in devices), dtype=np.intp, count=len(timestamps))
    key = inv * len(names) + device_index
    order = np.lexsort((timestamps, key))
    ordered = key[order]
    last = order[np.r_[ordered[1:] != ordered[:-1], True]]
    seen: list[dict[str, float]] = [{} for _ in range(k)]
    for w, d, t in zip(
        inv[last].tolist(), device_index[last].tolist(), timestamps[last].tolist(), strict=True
    ):
        seen[w][str(names[d])] = float(t)
    return [dict(sorted(s.items())) for s in seen]


def _sensor_counts(
    baseline: Baseline,
    sensors: Mapping[str, FloatArray],
    inv: npt.NDArray[np.intp],
    k: int,
    readings: list[int],
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per sensor, per window: the rows missing it (``nan``) and the rows outside its valid range
    (every sensor's rows stacked once, compared with their bounds at once, counted per window)."""
    present = [name for name in baseline.sensors if sensors.get(name) is not None]
    missing: dict[str, list[int]] = {name: list(readings) for name in baseline.sensors}
    out: dict[str, list[int]] = {name: [0] * k for name in baseline.sensors}
    if not present:
        return missing, out
    values = np.array([np.asarray(sensors[name], dtype=np.float64) for name in present])
    bounds = [baseline.sensors[name] for name in present]
    low = np.array([-np.inf if lo is None else lo for lo, _ in bounds])[:, None]
    high = np.array([np.inf if hi is None else hi for _, hi in bounds])[:, None]
    flags = np.empty((2, *values.shape), dtype=bool)  # missing, out of range
    np.isnan(values, out=flags[0])
    with np.errstate(invalid="ignore"):  # nan is neither below nor above a bound
        np.logical_or(values < low, values > high, out=flags[1])
    if k == 1:
        counts = flags.sum(axis=2)[..., None]
    elif bool(np.all(inv[1:] >= inv[:-1])):  # rows in time order (a file's): windows are runs
        cuts = np.searchsorted(inv, np.arange(k + 1)).tolist()
        counts = np.stack([flags[:, :, a:b].sum(axis=2) for a, b in itertools.pairwise(cuts)], axis=2)
    else:
        counts = np.stack([flags[:, :, inv == w].sum(axis=2) for w in range(k)], axis=2)
    for name, missing_w, out_w in zip(present, counts[0].tolist(), counts[1].tolist(), strict=True):
        missing[name], out[name] = missing_w, out_w
    return missing, out


def summarize_table(
    baseline: Baseline,
    *,
    model_version: str,
    devices: npt.NDArray[Any] | DeviceCodes,
    timestamps: FloatArray,
    sensors: Mapping[str, FloatArray],
    rows: npt.NDArray[np.intp],
    matrix: npt.NDArray[Any],
    score: FloatArray,
    alerts: npt.NDArray[np.bool_],
    window_seconds: int = SUMMARY_WINDOW_SECONDS,
) -> list[WindowSummary]:
    """One summary per time window touched by a scored table (vectorised: a few bincounts).

    This is the function every scoring path (``score_event``, ``score_batch``, the edge) calls,
    through :func:`zaindari.pipeline.score_table` (file scoring calls it beside, on each chunk).

    Parameters
    ----------
    devices, timestamps, sensors
        Every row that reached the feature stage (names, or :class:`DeviceCodes`; epoch seconds;
        raw sensor columns, ``nan`` when missing).
    rows
        Positions of the scored rows in those arrays.
    matrix, score, alerts
        The scored rows' features (signature order; any memory layout, binned in their own float
        type: float32 features count as their float64 values would), score, and whether any alert
        rule was active.
    """
    n = len(timestamps)
    if n == 0:
        return []
    if n <= SMALL_SUMMARY:
        if isinstance(devices, DeviceCodes):
            devices = np.asarray(list(devices.names), dtype=object)[np.asarray(devices.codes, dtype=np.intp)]
        return _summarize_small(
            baseline, model_version, devices, timestamps, sensors, rows, matrix, score, alerts, window_seconds
        )
    window = np.floor_divide(timestamps, window_seconds).astype(np.int64)
    if window[0] == window.min() == window.max():  # the usual batch: one window (no sort)
        starts, inv = window[:1], np.zeros(n, dtype=np.intp)
    else:
        starts, inv = np.unique(window, return_inverse=True)
        inv = inv.astype(np.intp, copy=False)
    k = len(starts)
    readings = np.bincount(inv, minlength=k)

    sensor_missing, sensor_out = _sensor_counts(baseline, sensors, inv, k, readings.tolist())

    winv = inv[rows]
    scored = np.bincount(winv, minlength=k)
    alert_rows = np.bincount(winv[np.asarray(alerts, dtype=bool)], minlength=k)

    # every feature's bins, then the score's, side by side: one count over (window, column, bin)
    features = len(baseline.features)
    widths = [baseline.bins(j) for j in range(features)] + [len(baseline.score_edges) + 1]
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.intp)
    total = int(sum(widths))
    bins = np.zeros(k * total, dtype=np.int64)
    nonfinite = np.zeros(k * len(widths), dtype=np.int64)
    cells = winv * total
    missing_cells = winv * len(widths)
    if len(winv):
        feature_values: npt.NDArray[Any] = np.asarray(matrix)
        edges: npt.NDArray[Any]
        if feature_values.dtype == np.float32:  # the model's input: binned as float32 on ceiling edges
            edges = baseline._edge_matrix32[:features]
        else:
            feature_values = np.asarray(feature_values, dtype=np.float64)
            edges = baseline._edge_matrix[:features]
        _count_bins(feature_values, edges, cells, offsets[:features], bins, nonfinite, missing_cells)
        _count_bins(
            np.asarray(score, dtype=np.float64)[:, None],
            baseline._edge_matrix[features:],
            cells,
            offsets[features:],
            bins,
            nonfinite,
            missing_cells + features,
        )
    by_window = bins.reshape(k, total)
    nonfinite_by_window = nonfinite.reshape(k, len(widths))
    seen = _last_seen(devices, timestamps, inv, k)

    out_summaries: list[WindowSummary] = []
    bounds = [(int(o), int(o) + int(wd)) for o, wd in zip(offsets, widths, strict=True)]
    for w in range(k):
        start = int(starts[w]) * window_seconds
        row = by_window[w].tolist()  # Python ints, sliced per feature (not one int() per bin)
        missing_w = nonfinite_by_window[w].tolist()
        out_summaries.append(
            WindowSummary(
                model_version=model_version,
                baseline_id=baseline.baseline_id,
                start=start,
                end=start + window_seconds,
                readings=int(readings[w]),
                scored=int(scored[w]),
                alerts=int(alert_rows[w]),
                features={
                    f: tuple(row[lo:hi]) for f, (lo, hi) in zip(baseline.features, bounds, strict=False)
                },
                feature_missing={f: missing_w[j] for j, f in enumerate(baseline.features)},
                score=tuple(row[bounds[-1][0] :]),
                sensor_missing={s: v[w] for s, v in sensor_missing.items()},
                sensor_out_of_range={s: v[w] for s, v in sensor_out.items()},
                devices=seen[w],
            )
        )
    return out_summaries


#: Where summaries live in the lake (and in an edge box's local lake folder).
SUMMARIES_PREFIX = "summaries"
_SUMMARY_KEY = re.compile(
    r"date=(\d{4}-\d{2}-\d{2})/model=[^/]+/version=[^/]+/(\d{2})(\d{2})-(\d{2})(\d{2})-[^/]+\.json$"
)


def summary_objects(
    summaries: Sequence[WindowSummary], *, source: str, name: str
) -> dict[str, list[WindowSummary]]:
    """The lake objects of one batch's (or file run's) summaries: one per model version and day.

    Key: ``summaries/date=YYYY-MM-DD/model=<name>/version=<version>/<HHMM>-<HHMM>-<source>-<name>.json``
    (first and last window start, UTC), so a monitoring window lists only the objects it needs.
    Each object holds its summaries as a JSON list (:meth:`WindowSummary.to_dict`).
    """
    groups: dict[tuple[str, str], list[WindowSummary]] = {}
    for summary in summaries:
        day = datetime.fromtimestamp(summary.start, tz=UTC).date().isoformat()
        groups.setdefault((summary.model_version, day), []).append(summary)
    out: dict[str, list[WindowSummary]] = {}
    for (model_version, day), group in groups.items():
        first = datetime.fromtimestamp(min(s.start for s in group), tz=UTC)
        last = datetime.fromtimestamp(max(s.start for s in group), tz=UTC)
        model, _, version = model_version.partition(":")
        key = (
            f"{SUMMARIES_PREFIX}/date={day}/model={model}/version={version or 'unversioned'}/"
            f"{first:%H%M}-{last:%H%M}-{source}-{name}.json"
        )
        out[key] = group
    return out


def summary_key_span(key: str) -> tuple[float, float] | None:
    """First and last window start (epoch seconds) of a summaries object, from its key alone."""
    match = _SUMMARY_KEY.search(key)
    if not match:
        return None
    midnight = datetime.fromisoformat(match[1]).replace(tzinfo=UTC).timestamp()
    return (
        midnight + int(match[2]) * 3600 + int(match[3]) * 60,
        midnight + int(match[4]) * 3600 + int(match[5]) * 60,
    )


def summary_days(start: datetime, end: datetime) -> list[str]:
    """The ``date=`` partitions a window ``[start, end)`` touches."""
    day, last = start.astimezone(UTC).date(), (end - timedelta(seconds=1)).astimezone(UTC).date()
    out = []
    while day <= last:
        out.append(day.isoformat())
        day += timedelta(days=1)
    return out


# ----------------------------------------------------------------------------- statistics


def psi(expected: Sequence[int], actual: Sequence[int], smoothing: float = PSI_SMOOTHING) -> float:
    """Population stability index of ``actual`` against ``expected`` counts on the same bins.

    ``sum((a - e) * ln(a / e))`` over bin shares, each count plus ``smoothing`` so an empty bin
    gives a finite term. Rule of thumb: below 0.1 stable, 0.1-0.25 moderate, above 0.25 large.
    """
    e = np.asarray(expected, dtype=np.float64) + smoothing
    a = np.asarray(actual, dtype=np.float64) + smoothing
    e /= e.sum()
    a /= a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def _kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the two-sample KS test's asymptotic law)."""
    if x < 0.2:  # the series converges slowly there; the true value is 1 to 6 digits
        return 1.0
    total = sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * x * x) for j in range(1, 101))
    return float(min(max(2.0 * total, 0.0), 1.0))


def ks_from_histograms(expected: Sequence[int], actual: Sequence[int]) -> tuple[float, float]:
    """Two-sample KS statistic ``D`` and asymptotic p-value from histograms on the same bins.

    See the module docstring for the approximation (``D`` at the bin edges is a lower bound).
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    n, m = e.sum(), a.sum()
    if n == 0 or m == 0:
        return 0.0, 1.0
    d = float(np.max(np.abs(np.cumsum(e) / n - np.cumsum(a) / m)))
    n_eff = n * m / (n + m)
    return d, _kolmogorov_sf((math.sqrt(n_eff) + 0.12 + 0.11 / math.sqrt(n_eff)) * d)


class DriftThresholds(BaseModel):
    """When a window counts as drifted, and when its data quality needs a person."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    psi: float = Field(default=0.5, gt=0, description="A feature drifts at or above this PSI ...")
    ks: float = Field(default=0.2, gt=0, le=1, description="... and this binned KS statistic D.")
    score_psi: float = Field(default=0.5, gt=0, description="The score drifts at or above this PSI.")
    min_readings: int = Field(default=1000, ge=1, description="Fewer scored rows: no verdict.")
    missing_rate: float = Field(default=0.05, ge=0, le=1, description="Data-quality alert above this.")
    out_of_range_rate: float = Field(default=0.01, ge=0, le=1, description="Data-quality alert above this.")
    alert_rate_change: float = Field(
        default=0.05, ge=0, le=1, description="Data-quality alert when the alert rate moves more than this."
    )


class FeatureDrift(BaseModel):
    """One feature's (or the score's) drift statistics in a window."""

    model_config = ConfigDict(frozen=True)

    feature: str
    sensors: list[str]
    psi: float
    ks: float
    ks_p: float
    n: int
    drifted: bool


class DriftReport(BaseModel):
    """Every statistic of one window against the baseline; ``verdict`` says what it means."""

    model_config = ConfigDict(frozen=True)

    model: str
    model_version: str
    window_start: str
    window_end: str
    readings: int
    scored: int
    baseline_rows: int
    baseline: str
    verdict: Literal["drift", "no_drift", "insufficient_data"]
    features: list[FeatureDrift]
    score: FeatureDrift | None
    drifted_features: list[str]
    drifted_sensors: list[str]
    missing_rate: dict[str, float]
    out_of_range_rate: dict[str, float]
    silent_devices: list[str]
    alert_rate: float | None
    previous_alert_rate: float | None
    baseline_alert_rate: float | None
    quality_issues: list[str]
    thresholds: DriftThresholds = Field(default_factory=DriftThresholds)

    def evidence(self) -> dict[str, Any]:
        """The drift event's ``evidence``: which features, how much, on how many readings."""
        return {
            "window": {"start": self.window_start, "end": self.window_end, "readings": self.scored},
            "baseline": self.baseline,
            "baseline_rows": self.baseline_rows,
            "features": [
                {
                    "feature": f.feature,
                    "sensors": f.sensors,
                    "psi": round(f.psi, 4),
                    "ks": round(f.ks, 4),
                    "ks_p": f.ks_p,
                    "n": f.n,
                    "threshold": self.thresholds.psi,
                    "ks_threshold": self.thresholds.ks,
                }
                for f in self.features
                if f.drifted
            ],
            "sensors": self.drifted_sensors,
            "score": self.score.model_dump() if self.score else None,
            "alert_rate": {
                "window": self.alert_rate,
                "previous": self.previous_alert_rate,
                "baseline": self.baseline_alert_rate,
            },
            "quality_issues": self.quality_issues,
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def assess_drift(
    baseline: Baseline,
    current: WindowSummary,
    previous: WindowSummary | None = None,
    thresholds: DriftThresholds | None = None,
) -> DriftReport:
    """Drift of ``current`` against the baseline, and its data quality against ``previous``.

    A feature drifts when both its PSI and its binned KS ``D`` reach the thresholds (both: PSI alone
    over-reacts to a shift inside one narrow bin, ``D`` alone to a large sample's tiny shifts). The
    verdict is ``drift`` when a feature or the score drifts, ``insufficient_data`` below
    ``min_readings`` scored rows. Data-quality signals never make a drift verdict (retraining on a
    broken sensor would learn the fault); they are listed in ``quality_issues`` for people.
    """
    t = thresholds or DriftThresholds()
    features: list[FeatureDrift] = []
    for j, name in enumerate(baseline.features):
        counts = current.features.get(name, (0,) * baseline.bins(j))
        value = psi(baseline.counts[j], counts)
        d, p = ks_from_histograms(baseline.counts[j], counts)
        features.append(
            FeatureDrift(
                feature=name,
                sensors=baseline.feature_sensors.get(name, []),
                psi=value,
                ks=d,
                ks_p=p,
                n=int(sum(counts)),
                drifted=value >= t.psi and d >= t.ks,
            )
        )
    score_psi = psi(baseline.score_counts, current.score)
    score_d, score_p = ks_from_histograms(baseline.score_counts, current.score)
    score = FeatureDrift(
        feature="score",
        sensors=[],
        psi=score_psi,
        ks=score_d,
        ks_p=score_p,
        n=int(sum(current.score)),
        drifted=score_psi >= t.score_psi and score_d >= t.ks,
    )
    readings = max(current.readings, 1)
    missing = {s: c / readings for s, c in current.sensor_missing.items()}
    out_of_range = {s: c / readings for s, c in current.sensor_out_of_range.items()}
    silent = sorted(set(previous.devices) - set(current.devices)) if previous else []
    alert_rate = current.alerts / current.scored if current.scored else None
    previous_rate = previous.alerts / previous.scored if previous and previous.scored else None
    issues = [f"{s}: {r:.1%} of readings miss it" for s, r in missing.items() if r > t.missing_rate]
    issues += [
        f"{s}: {r:.1%} of readings out of range" for s, r in out_of_range.items() if r > t.out_of_range_rate
    ]
    if silent:
        issues.append(f"{len(silent)} device(s) silent since the previous window: {', '.join(silent[:20])}")
    if (
        alert_rate is not None
        and previous_rate is not None
        and abs(alert_rate - previous_rate) > t.alert_rate_change
    ):
        issues.append(f"alert rate moved from {previous_rate:.1%} to {alert_rate:.1%}")
    drifted = [f for f in features if f.drifted]
    if current.scored < t.min_readings:
        verdict: Literal["drift", "no_drift", "insufficient_data"] = "insufficient_data"
    elif drifted or score.drifted:
        verdict = "drift"
    else:
        verdict = "no_drift"
    return DriftReport(
        model=baseline.model_name,
        model_version=current.model_version,
        window_start=_iso(current.start) if current.readings else "",
        window_end=_iso(current.end) if current.readings else "",
        readings=current.readings,
        scored=current.scored,
        baseline_rows=baseline.rows,
        baseline=baseline.source or f"baseline {baseline.baseline_id}",
        verdict=verdict,
        features=features,
        score=score,
        drifted_features=[f.feature for f in drifted],
        drifted_sensors=sorted({s for f in drifted for s in f.sensors}),
        missing_rate=missing,
        out_of_range_rate=out_of_range,
        silent_devices=silent,
        alert_rate=alert_rate,
        previous_alert_rate=previous_rate,
        baseline_alert_rate=baseline.alert_rate,
        quality_issues=issues,
        thresholds=t,
    )


# ----------------------------------------------------------------------------- the monitor


class SummaryStore(Protocol):
    """Where window summaries live (the lake's ``summaries/`` on AWS)."""

    def write(self, summaries: Sequence[WindowSummary], *, source: str, name: str) -> list[str]:
        """Store summaries under a deterministic ``name`` (a replay overwrites); returns locations."""
        ...

    def read(self, model: str, start: datetime, end: datetime) -> list[WindowSummary]:
        """Every summary of ``model`` (any version) whose window starts in ``[start, end)``."""
        ...


class DriftTriggerLog(Protocol):
    """Per model, when drift last asked for a retraining (DynamoDB on AWS)."""

    def claim(self, model: str, at: datetime, min_interval: timedelta, evidence: Mapping[str, Any]) -> bool:
        """Record a trigger at ``at`` unless one was recorded less than ``min_interval`` before;
        True when recorded. Atomic: two monitors racing record one trigger."""
        ...

    def release(self, model: str, at: datetime) -> None:
        """Forget the trigger recorded at ``at`` (its event could not be sent; the next run retries)."""
        ...


class DriftNotifier(Protocol):
    """Machines (the drift event that starts retraining) and people (an alert)."""

    def drift_detected(self, detail: Mapping[str, Any]) -> None:
        """Emit ``Zaindari Drift Detected`` with ``detail`` (raises PortError on failure)."""
        ...

    def tell_people(self, subject: str, message: Mapping[str, Any]) -> None:
        """Alert people (raises PortError on failure)."""
        ...


@dataclass(frozen=True)
class DriftCheck:
    """What one monitor run found and did.

    ``status``: ``triggered`` (drift event emitted), ``suppressed`` (drift, but a trigger was
    recorded less than the minimum interval ago), ``no_drift``, ``insufficient_data``, or
    ``no_baseline`` (the production bundle has no ``baseline.json``).
    """

    status: Literal["triggered", "suppressed", "no_drift", "insufficient_data", "no_baseline"]
    report: DriftReport | None
    ignored_summaries: int = 0
    detail: dict[str, Any] | None = None


class DriftMonitor:
    """The ``monitor_drift`` use case: merge a window's summaries, assess, trigger quietly.

    Parameters
    ----------
    summaries, triggers, notifier
        The ports.
    thresholds
        See :class:`DriftThresholds`.
    window
        The monitoring window ending at the check's time (whole hours).
    min_interval
        At most one drift trigger per model within this time.
    """

    def __init__(
        self,
        *,
        summaries: SummaryStore,
        triggers: DriftTriggerLog,
        notifier: DriftNotifier,
        thresholds: DriftThresholds | None = None,
        window: timedelta = timedelta(hours=24),
        min_interval: timedelta = timedelta(days=7),
    ) -> None:
        if window.total_seconds() % SUMMARY_WINDOW_SECONDS or window.total_seconds() <= 0:
            raise ValueError("the drift window must be a whole number of hours")
        self.summaries = summaries
        self.triggers = triggers
        self.notifier = notifier
        self.thresholds = thresholds or DriftThresholds()
        self.window = window
        self.min_interval = min_interval

    def window_bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """The last complete window before ``now`` (hour-aligned)."""
        stamp = int(now.timestamp()) // SUMMARY_WINDOW_SECONDS * SUMMARY_WINDOW_SECONDS
        end = datetime.fromtimestamp(stamp, tz=UTC)
        return end - self.window, end

    def check(self, baseline: Baseline | None, model_version: str, now: datetime) -> DriftCheck:
        """Assess the window ending at ``now`` for ``model_version`` (the production version)."""
        if baseline is None:
            return DriftCheck("no_baseline", None)
        start, end = self.window_bounds(now)
        found = self.summaries.read(baseline.model_name, start - self.window, end)
        mine = [
            s for s in found if s.model_version == model_version and s.baseline_id == baseline.baseline_id
        ]
        empty = WindowSummary.empty(baseline, model_version)
        split = int(start.timestamp())
        current = merge_summaries([s for s in mine if s.start >= split], empty)
        previous = merge_summaries([s for s in mine if s.start < split], empty)
        report = assess_drift(baseline, current, previous if previous.readings else None, self.thresholds)
        report = report.model_copy(update={"window_start": _iso(split), "window_end": _iso(end.timestamp())})
        ignored = len(found) - len(mine)
        # on a small sample the rates are noise; devices gone silent matter however few readings came
        if report.quality_issues and (report.verdict != "insufficient_data" or report.silent_devices):
            self.notifier.tell_people(
                f"Zaindari data quality: {baseline.model_name}",
                {
                    "model_version": model_version,
                    "window": [report.window_start, report.window_end],
                    "issues": report.quality_issues,
                },
            )
        if report.verdict != "drift":
            return DriftCheck(report.verdict, report, ignored)
        evidence = report.evidence()
        detail = {"model": baseline.model_name, "model_version": model_version, "evidence": evidence}
        if not self.triggers.claim(baseline.model_name, now, self.min_interval, evidence):
            return DriftCheck("suppressed", report, ignored, detail)
        try:
            self.notifier.drift_detected(detail)
        except Exception:
            self.triggers.release(baseline.model_name, now)
            raise
        self.notifier.tell_people(f"Zaindari drift: {baseline.model_name} retraining requested", detail)
        return DriftCheck("triggered", report, ignored, detail)
