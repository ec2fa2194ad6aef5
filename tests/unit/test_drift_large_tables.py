"""Drift summaries of large tables (a file's chunks) equal the counts written plainly.

``summarize_table`` bins float32 features in float32 (on edges rounded up to float32), counts by
comparing with each edge from ``_COMPARE_ROWS`` rows, and takes devices as codes from file
scoring: each must give the counts of binning every value as float64 with a binary search and
naming every row's device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from zaindari import drift
from zaindari.drift import Baseline, DeviceCodes, WindowSummary, summarize_table

T0 = 1_700_000_000.0
NAMES = ["b", "a", "c", "a", "d"]  # codes 1 and 3 name one device (two ids equal once trimmed)


def plain_summaries(
    baseline: Baseline,
    devices: list[str],
    timestamps: np.ndarray,
    sensors: dict[str, np.ndarray],
    rows: np.ndarray,
    matrix: np.ndarray,
    score: np.ndarray,
    alerts: np.ndarray,
) -> list[dict[str, Any]]:
    """The summaries counted one window at a time, every value as float64, no shortcuts."""
    window = np.floor_divide(timestamps, drift.SUMMARY_WINDOW_SECONDS).astype(np.int64)
    values = np.column_stack([np.asarray(matrix, dtype=np.float64), score])
    edges = [*baseline.edges, baseline.score_edges]
    names = [*baseline.features, "score"]
    out = []
    for w in sorted(set(window.tolist())):
        here = window == w
        scored = here[rows]
        counts, missing = {}, {}
        for j, name in enumerate(names):
            column = values[scored, j]
            finite = column[np.isfinite(column)]
            bins = np.searchsorted(np.asarray(edges[j], dtype=np.float64), finite, side="right")
            counts[name] = tuple(np.bincount(bins, minlength=len(edges[j]) + 1).tolist())
            missing[name] = int(len(column) - len(finite))
        seen: dict[str, float] = {}
        for device, t in zip(np.asarray(devices)[here].tolist(), timestamps[here].tolist(), strict=True):
            seen[device] = max(t, seen.get(device, t))
        sensor_missing, sensor_out = {}, {}
        for name, (low, high) in baseline.sensors.items():
            column = sensors.get(name)
            if column is None:
                sensor_missing[name], sensor_out[name] = int(here.sum()), 0
                continue
            column = column[here]
            sensor_missing[name] = int(np.isnan(column).sum())
            sensor_out[name] = int(
                sum(
                    1
                    for v in column.tolist()
                    if (low is not None and v < low) or (high is not None and v > high)
                )
            )
        start = w * drift.SUMMARY_WINDOW_SECONDS
        out.append(
            WindowSummary(
                model_version="m:1",
                baseline_id=baseline.baseline_id,
                start=start,
                end=start + drift.SUMMARY_WINDOW_SECONDS,
                readings=int(here.sum()),
                scored=int(scored.sum()),
                alerts=int(alerts[scored].sum()),
                features={f: counts[f] for f in baseline.features},
                feature_missing={f: missing[f] for f in baseline.features},
                score=counts["score"],
                sensor_missing=sensor_missing,
                sensor_out_of_range=sensor_out,
                devices=dict(sorted(seen.items())),
            ).to_dict()
        )
    return out


def random_baseline(rng: np.random.Generator, features: int) -> Baseline:
    edges = [np.unique(rng.normal(size=int(rng.integers(0, 10)))).tolist() for _ in range(features)]
    # beyond float32's range both ways, a negative zero, edges float32 cannot hold exactly
    edges[0] = [-1e39, -3.5e38, -0.0, 1 / 3, 3.4e38, 1e39]
    return Baseline(
        model_name="m",
        features=[f"f{j}" for j in range(features)],
        edges=edges,
        counts=[[1] * (len(e) + 1) for e in edges],
        score_edges=[0.1, 0.2, 1 / 3],
        score_counts=[1, 1, 1, 1],
        rows=4,
        sensors={"temperature": (0.0, 100.0), "pressure": (None, 5.0), "absent": (0.0, None)},
        feature_sensors={f"f{j}": [] for j in range(features)},
    )


@pytest.mark.parametrize("rows_in_table", [9, 600, drift._COMPARE_ROWS - 1, drift._COMPARE_ROWS, 5000])
def test_large_table_summaries_equal_the_plain_counts(rows_in_table: int) -> None:
    rng = np.random.default_rng(rows_in_table)
    for trial in range(12):
        # Given a random baseline and table: values at, just beside and between the edges (float32
        # rounds many of them onto or across an edge), nan and infinities, one or several windows
        baseline = random_baseline(rng, int(rng.integers(1, 6)))
        n = rows_in_table
        one_window = trial % 3 == 0
        stamps = np.full(n, T0 + 5.0) if one_window else T0 + rng.uniform(0, 3 * 3600, n)
        if trial % 3 == 1:
            stamps = np.sort(stamps)  # in time order, as a file's rows: windows are runs of rows
        rows = np.flatnonzero(rng.random(n) < 0.9).astype(np.intp)
        m, width = len(rows), len(baseline.features)
        matrix = rng.normal(size=(m, width))
        on_edges = np.concatenate([np.asarray(e) for e in baseline.edges if e])
        near = rng.random((m, width)) < 0.4
        matrix[near] = rng.choice(on_edges, near.sum()) * (1 + rng.choice([-1e-8, 0.0, 1e-8], near.sum()))
        dtype = np.float32 if trial % 4 else np.float64
        with np.errstate(over="ignore"):
            matrix = matrix.astype(dtype)
        for special in (np.nan, np.inf, -np.inf, -0.0):
            matrix[rng.random(matrix.shape) < 0.02] = special
        if trial % 2:
            matrix = np.asfortranarray(matrix)  # any layout: a column-major view of the features
        score = rng.uniform(0, 0.4, m)
        score[rng.random(m) < 0.05] = np.nan
        codes = rng.integers(0, len(NAMES), n)
        devices = [NAMES[c] for c in codes.tolist()]
        temperature = rng.uniform(-20, 120, n)
        temperature[rng.random(n) < 0.2] = np.nan
        sensors = {"temperature": temperature, "pressure": rng.uniform(0, 8, n)}
        alerts = rng.random(m) < 0.3
        common: dict[str, Any] = dict(
            model_version="m:1",
            timestamps=stamps,
            sensors=sensors,
            rows=rows,
            matrix=matrix,
            score=score,
            alerts=alerts,
        )

        # When the table is summarised with devices named and with devices coded
        named = summarize_table(baseline, devices=np.asarray(devices, dtype=object), **common)
        coded = summarize_table(baseline, devices=DeviceCodes(codes, NAMES), **common)

        # Then both are the plain counts, window by window
        expected = plain_summaries(baseline, devices, stamps, sensors, rows, matrix, score, alerts)
        assert [s.to_dict() for s in named] == expected, trial
        assert [s.to_dict() for s in coded] == expected, trial


def test_float32_ceiling_edges_split_float32_values_as_float64_edges_do() -> None:
    # Given edges float32 cannot hold, and every float32 value next to each of them
    edges = np.array([[1 / 3, 0.1, 1e39], [-1e39, -0.0, 2.0**-149 / 3]])
    ceiling = drift._ceiling_edges(edges, np.dtype(np.float32))
    assert ceiling.dtype == np.float32
    for edge, up in zip(edges.ravel().tolist(), ceiling.ravel().tolist(), strict=True):
        with np.errstate(over="ignore"):
            nearest = np.float32(edge)
        around = [
            np.nextafter(nearest, np.float32(-np.inf)),
            nearest,
            np.nextafter(nearest, np.float32(np.inf)),
        ]
        for value in around:
            # Then a value is at or above the ceiling exactly when it is at or above the edge
            assert (value >= np.float32(up)) == (float(value) >= edge), (edge, value)
