"""What every benchmark shares: its result rows (the table run_all.py prints) and info lines."""

from __future__ import annotations

import sys
from typing import Any, TextIO


def result_row(
    benchmark: str,
    metric: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    ratio: float | None = None,
    target: str | None = None,
    passed: bool | None = None,
) -> dict[str, Any]:
    """One row of the table: a figure, its same-run baseline and ratio, its target and verdict."""
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "pass": passed,
    }


def info_line(message: str, out: TextIO | None = None) -> None:
    """A progress or explanation line (not part of the table)."""
    print(message, file=out or sys.stdout, flush=True)
