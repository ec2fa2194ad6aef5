"""``zaindari demo``: run the steps, read the outputs back, write the report, stop the embedded AWS."""

from __future__ import annotations

import json
import shutil
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zaindari.demo.plant import DemoPlan
from zaindari.demo.report import Readback, analyse, draw_plots, print_summary, read_back, write_html
from zaindari.demo.steps import DemoRun, Progress, StepResult, run_steps, stderr_progress, stop_embedded_aws

__all__ = ["find_root", "run_demo"]


def find_root(start: Path | None = None) -> Path:
    """The checkout holding ``template.yaml``, ``functions/`` and ``glue_jobs/``: the working
    folder or a parent, else the one this package was installed from (editable install)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents, Path(__file__).resolve().parents[3]):
        if (folder / "template.yaml").is_file() and (folder / "functions").is_dir():
            return folder
    raise FileNotFoundError(f"no template.yaml with functions/ in {here} or its parents")


def run_demo(
    plan: DemoPlan, out_dir: Path, *, root: Path | None = None, progress: Progress = stderr_progress
) -> dict[str, Any]:
    """Run the whole loop for ``plan``; write ``summary.json``, plots and ``report.html`` under
    ``out_dir`` (emptied first); return the summary.

    A step that fails stops the steps after it, not the report: the report says what ran.
    """
    started = time.monotonic()
    started_at = datetime.now(UTC)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    with (out_dir / "functions.log").open("w", encoding="utf-8") as log:
        run = DemoRun(plan=plan, root=root or find_root(), out_dir=out_dir, progress=progress, log=log)
        try:
            results = run_steps(run)
            progress("report: reading the outputs back ...")
            report_started = time.monotonic()
            report = StepResult("report", "Read the outputs back; summary, plots, HTML", "ok")
            plots: list[str] = []
            try:
                back = read_back(run)
                summary = analyse(run, back, results)
                plots = draw_plots(run, back, summary)
            except Exception as exc:  # the summary still says which steps ran
                traceback.print_exc(file=log)
                summary = analyse(run, Readback(), results)
                report.status, report.reason = "failed", f"{type(exc).__name__}: {exc}"
                summary["failed_steps"].append(report.name)
            report.seconds = time.monotonic() - report_started
            summary["steps"].append(report.to_dict())
            summary["started_at"] = started_at.isoformat()
            summary["out_dir"] = str(out_dir)
            summary["wall_seconds"] = round(time.monotonic() - started, 1)
            write_html(summary, plots, out_dir / "report.html")
            (out_dir / "summary.json").write_text(
                json.dumps(summary, indent=2, default=str), encoding="utf-8"
            )
        finally:
            stop_embedded_aws(run)
    progress(f"done in {summary['wall_seconds']:.0f} s")
    print(print_summary(summary, out_dir))
    return summary
