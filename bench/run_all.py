"""Run every ``bench/bench_*.py`` in its own process and print one table of results.

Each benchmark module has ``main() -> list[dict]`` returning rows ``{"benchmark", "metric",
"value", "unit", "baseline", "ratio", "target", "pass"}``; figures are compared with a baseline
measured in the same run, never with a number from another machine. A benchmark runs in a child
process (``run_all.py --child NAME --rows FILE``) so its memory and imports cannot affect the
next one; the child writes its rows as JSON to FILE. The exit code is 1 when any row with a
target fails, or when a benchmark crashed.

Usage: ``python bench/run_all.py [--only NAME]`` (NAME: ``score_event`` or ``bench_score_event``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
COLUMNS = ("benchmark", "metric", "value", "unit", "baseline", "ratio", "target", "pass")


def discover(only: str | None = None) -> list[Path]:
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if only:
        wanted = only.removesuffix(".py").removeprefix("bench_")
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") == wanted]
    return scripts


def run_child(name: str, rows_file: str) -> int:
    """In the child: import one benchmark, call its ``main()``, write its rows to ``rows_file``."""
    script = BENCH_DIR / f"bench_{name.removeprefix('bench_').removesuffix('.py')}.py"
    sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(script.stem, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[script.stem] = module
    spec.loader.exec_module(module)
    rows = module.main()
    Path(rows_file).write_text(json.dumps(rows))
    return 0


def run_benchmark(script: Path) -> tuple[list[dict[str, Any]], str | None, float, float]:
    """Run one benchmark in a child process: (rows, error, seconds, peak RSS in MiB)."""
    with tempfile.NamedTemporaryFile(prefix=f"{script.stem}-", suffix=".json", delete=False) as f:
        rows_file = f.name
    started = time.perf_counter()
    try:
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", script.stem, "--rows", rows_file]
        )
        _pid, status, usage = os.wait4(child.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        child.returncode = code
        seconds = time.perf_counter() - started
        peak_mib = usage.ru_maxrss / 1024  # KiB on Linux
        text = Path(rows_file).read_text()
        rows: list[dict[str, Any]] = json.loads(text) if text.strip() else []
    finally:
        Path(rows_file).unlink(missing_ok=True)
    error = None if code == 0 and rows else f"exited with {code} and {len(rows)} rows"
    return rows, error, seconds, peak_mib


def _number(value: Any, unit: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if unit == "x":
        return f"{value:.2f}"
    magnitude = abs(value)
    if magnitude >= 1000 or (isinstance(value, int) and not isinstance(value, bool)):
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        verdict = {True: "PASS", False: "FAIL"}.get(r.get("pass"), "")  # type: ignore[arg-type]
        ratio = r.get("ratio")
        out.append(
            [
                str(r.get("benchmark", "")),
                str(r.get("metric", "")),
                _number(r.get("value"), str(r.get("unit", ""))),
                str(r.get("unit", "")),
                _number(r.get("baseline")),
                "" if ratio is None else f"{ratio:.2f}x",
                str(r.get("target") or ""),
                verdict,
            ]
        )
    return out


def print_table(rows: list[dict[str, Any]], file: Any = None) -> None:
    """One plain-text table (Markdown-compatible), numbers right-aligned."""
    file = file or sys.stdout
    body = format_rows(rows)
    widths = [max(len(c), *(len(line[i]) for line in body)) for i, c in enumerate(COLUMNS)]
    right = {2, 4, 5}

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(cells)
            )
            + " |"
        )

    print(line(list(COLUMNS)), file=file)
    print(
        "|"
        + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths))
        + "|",
        file=file,
    )
    for cells in body:
        print(line(cells), file=file)
    file.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run one benchmark (e.g. score_event)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child, args.rows)

    scripts = discover(args.only)
    if not scripts:
        print(f"no benchmark matches {args.only!r} in {BENCH_DIR}", file=sys.stderr)
        return 2
    all_rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        print(f"== {name}", flush=True)
        rows, error, seconds, peak_mib = run_benchmark(script)
        all_rows.extend(rows)
        all_rows.append(
            {
                "benchmark": name,
                "metric": f"process peak RSS (whole benchmark, {seconds:.0f} s)",
                "value": peak_mib,
                "unit": "MiB",
                "baseline": None,
                "ratio": None,
                "target": None,
                "pass": None,
            }
        )
        if error:
            errors.append(f"{name}: {error}")
    print()
    print_table(all_rows)
    failed = [r for r in all_rows if r.get("target") and r.get("pass") is not True]
    for r in failed:
        print(
            f"FAIL {r['benchmark']}: {r['metric']} = {_number(r['value'], r['unit'])} {r['unit']} "
            f"(target {r['target']})"
        )
    for error in errors:
        print(f"ERROR {error}")
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
