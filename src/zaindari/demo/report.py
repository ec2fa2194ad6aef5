"""The demo's report: read the run's outputs back from the embedded AWS, set them against the
simulator's ground truth, write ``summary.json``, PNG plots and ``report.html``.

Every figure comes from what the run left behind: scores from the lake (``scores/``), alerts from
the queues subscribed to the SNS topic and the EventBridge rule, versions and decisions from the
registry, file results from the drop's manifest. From the simulator only the ground truth is used
(fault onsets and failures, drift starts), to judge the alerts.
"""

from __future__ import annotations

import gzip
import html
import io
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zaindari.demo.steps import MODEL_NAME, DemoRun, StepResult
from zaindari.infra.inboxes import drain_queue

if TYPE_CHECKING:
    from zaindari.simulate import PlantData

__all__ = ["Readback", "analyse", "draw_plots", "print_summary", "read_back", "write_html"]

_ALERTING = ("raised", "escalated")


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


@dataclass
class Readback:
    """What the run left in the embedded AWS."""

    alerts_eventbridge: list[dict[str, Any]] = field(default_factory=list)
    alerts_sns: list[dict[str, Any]] = field(default_factory=list)
    event_scores: list[dict[str, Any]] = field(default_factory=list)
    file_scores: list[dict[str, Any]] = field(default_factory=list)
    manifests: list[dict[str, Any]] = field(default_factory=list)
    quarantined_objects: int = 0
    versions: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)


def _keys(run: DemoRun, prefix: str) -> list[str]:
    s3 = run.require_factory().client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=run.lake, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def read_back(run: DemoRun) -> Readback:
    """Alerts from the inboxes, scores and manifests from the lake, the registry's versions and history."""
    import orjson
    import pyarrow.parquet as pq

    back = Readback()
    if run.factory is None or run.stack is None:
        return back
    factory = run.factory
    s3 = factory.client("s3")
    if run.inboxes:
        back.alerts_eventbridge = [m["detail"] for m in drain_queue(factory, run.inboxes["eventbridge"])]
        back.alerts_sns = drain_queue(factory, run.inboxes["sns"])
    wanted = ("device_id", "timestamp", "score", "severity", "alert", "model_version")

    def fetch(key: str) -> tuple[str, bytes]:
        return key, s3.get_object(Bucket=run.lake, Key=key)["Body"].read()

    # one object per batch and date: thousands on the full plant, fetched side by side
    with ThreadPoolExecutor(max_workers=8) as pool:
        for key, body in pool.map(fetch, _keys(run, "scores/")):
            if key.endswith(".jsonl.gz"):
                for line in gzip.decompress(body).splitlines():
                    row = orjson.loads(line)
                    back.event_scores.append({k: row.get(k) for k in wanted})
            elif key.endswith(".parquet"):
                table = pq.read_table(io.BytesIO(body))
                columns = [c for c in wanted if c in table.column_names]
                back.file_scores.extend(table.select(columns).to_pylist())
    for key in _keys(run, "manifests/"):
        if key.endswith(".json"):
            back.manifests.append(json.loads(s3.get_object(Bucket=run.lake, Key=key)["Body"].read()))
    back.quarantined_objects = len(_keys(run, "quarantine/"))
    registry = run.registry()
    back.versions = [v.model_dump(mode="json") for v in registry.store.list_versions(MODEL_NAME)]
    back.history = [h.model_dump(mode="json") for h in registry.store.history(MODEL_NAME)]
    back.aliases = registry.store.aliases(MODEL_NAME)
    return back


# -- judging the alerts against the ground truth


def _fault_windows(data: PlantData) -> dict[str, tuple[datetime, datetime]]:
    return {f.device_id: (f.onset, f.failure) for f in data.faults}


def _classify(alert: dict[str, Any], data: PlantData) -> str:
    """``in_fault``, ``after_failure``, ``drift`` (a healthy machine whose sensor drifts) or ``false``."""
    moment = _when(alert["timestamp"])
    window = _fault_windows(data).get(alert["device_id"])
    if window is not None:
        if window[0] <= moment < window[1]:
            return "in_fault"
        if moment >= window[1]:
            return "after_failure"
    for drift in data.drifts:
        if alert["device_id"] in drift.devices and moment >= drift.start:
            return "drift"
    return "false"


def _faults(back: Readback, data: PlantData, end: datetime) -> list[dict[str, Any]]:
    live = [a for a in back.alerts_eventbridge if a.get("scope") != "file" and a["kind"] in _ALERTING]
    scores_by_device: dict[str, list[tuple[datetime, float]]] = {}
    for row in back.event_scores:
        scores_by_device.setdefault(row["device_id"], []).append((_when(row["timestamp"]), row["score"]))
    out = []
    for fault in sorted(data.faults, key=lambda f: f.onset):
        hits = sorted(
            (_when(a["timestamp"]), a)
            for a in live
            if a["device_id"] == fault.device_id and fault.onset <= _when(a["timestamp"]) < fault.failure
        )
        in_window = [
            s for t, s in scores_by_device.get(fault.device_id, []) if fault.onset <= t < fault.failure
        ]
        entry: dict[str, Any] = {
            "device_id": fault.device_id,
            "kind": fault.kind,
            "onset": _iso(fault.onset),
            "failure": _iso(fault.failure),
            "failure_after_run_end": fault.failure > end,
            "warning_available_hours": round(fault.lead_time / timedelta(hours=1), 2),
            "scored_readings_in_fault": len(in_window),
            "max_score_in_fault": round(max(in_window), 3) if in_window else None,
            "detected": bool(hits),
        }
        if hits:
            first_at, first = hits[0]
            entry.update(
                first_alert=_iso(first_at),
                first_alert_rule=first["rule_id"],
                first_alert_severity=first["severity"],
                lead_time_hours=round((fault.failure - first_at) / timedelta(hours=1), 2),
                delay_after_onset_hours=round((first_at - fault.onset) / timedelta(hours=1), 2),
                alerts_in_fault=len(hits),
                rules=sorted({a["rule_id"] for _, a in hits}),
            )
        else:
            entry["missed_because"] = (
                "no reading of the fault window was scored"
                if not in_window
                else f"no alert from onset to failure (highest score {max(in_window):.3f})"
            )
        out.append(entry)
    return out


def analyse(run: DemoRun, back: Readback, results: list[StepResult]) -> dict[str, Any]:
    """``summary.json``'s content: every step, the faults, false alerts, deliveries, versions."""
    plan = run.plan
    end = plan.plant.start + plan.plant.duration
    summary: dict[str, Any] = {
        "plan": plan.name,
        "seed": plan.plant.seed,
        "steps": [r.to_dict() for r in results],
        "not_run": {r.name: r.reason for r in results if r.status != "ok"},
        "failed_steps": [r.name for r in results if r.status == "failed"],
    }
    data = run.data
    if data is None:
        return summary
    live = [a for a in back.alerts_eventbridge if a.get("scope") != "file"]
    file_alerts = [a for a in back.alerts_eventbridge if a.get("scope") == "file"]
    raised = [a for a in live if a["kind"] == "raised"]
    classes = Counter(_classify(a, data) for a in raised)
    machine_hours_healthy = 0.0
    windows = _fault_windows(data)
    live_hours = (end - plan.live_start) / timedelta(hours=1)
    for machine in data.machines:
        window = windows.get(machine.device_id)
        healthy_until = min(window[0], end) if window else end
        machine_hours_healthy += max(0.0, (healthy_until - plan.live_start) / timedelta(hours=1))
    false_alerts = [a for a in raised if _classify(a, data) in ("false", "drift")]
    faults = _faults(back, data, end)
    eb_keys = {f"{a['alert_id']}:{a['kind']}" for a in back.alerts_eventbridge}
    sns_keys = {f"{a['alert_id']}:{a['kind']}" for a in back.alerts_sns}
    summary.update(
        plant={
            "machines": len(data.machines),
            "lines": plan.plant.lines,
            "start": _iso(plan.plant.start),
            "end": _iso(end),
            "commissioning_end": _iso(plan.live_start),
            "sample_period_seconds": plan.plant.sample_period_seconds,
            "readings_simulated": len(data.frame),
        },
        readings={
            "event_scores_in_lake": len(back.event_scores),
            "file_scores_in_lake": len(back.file_scores),
            "quarantined_objects": back.quarantined_objects,
            "live_hours": round(live_hours, 2),
        },
        alerts={
            "eventbridge": len(back.alerts_eventbridge),
            "sns": len(back.alerts_sns),
            "same_alerts_on_both": eb_keys == sns_keys,
            "only_on_eventbridge": len(eb_keys - sns_keys),
            "only_on_sns": len(sns_keys - eb_keys),
            "live_by_kind": dict(Counter(a["kind"] for a in live)),
            "live_raised_by_rule": dict(Counter(a["rule_id"] for a in raised)),
            "file_alerts": len(file_alerts),
        },
        faults=faults,
        faults_detected=sum(1 for f in faults if f["detected"]),
        faults_missed=[f["device_id"] for f in faults if not f["detected"]],
        false_alerts={
            "raised_on_healthy_machines": classes.get("false", 0),
            "raised_during_sensor_drift": classes.get("drift", 0),
            "raised_after_failure": classes.get("after_failure", 0),
            "raised_in_fault": classes.get("in_fault", 0),
            "healthy_machine_hours_streamed": round(machine_hours_healthy, 1),
            "per_healthy_machine_day": round(24 * len(false_alerts) / machine_hours_healthy, 3)
            if machine_hours_healthy
            else None,
            "list": [
                {
                    "device_id": a["device_id"],
                    "timestamp": a["timestamp"],
                    "rule_id": a["rule_id"],
                    "severity": a["severity"],
                    "why": _classify(a, data),
                }
                for a in sorted(false_alerts, key=lambda a: a["timestamp"])
            ],
            "file_alerts_in_commissioning": len(file_alerts),
        },
        drift=_not_run_or(
            results, "drift_retraining", {"drifts_injected": [d.model_dump(mode="json") for d in data.drifts]}
        ),
        edge=_not_run_or(results, "edge_box", {}),
        models=_models(back),
    )
    production = back.aliases.get("production")
    summary["models"]["retrained_version_in_production"] = (
        None if _status(results, "drift_retraining") != "ok" else production is not None and production > 1
    )
    return summary


def _status(results: list[StepResult], name: str) -> str | None:
    return next((r.status for r in results if r.name == name), None)


def _not_run_or(results: list[StepResult], name: str, extra: dict[str, Any]) -> dict[str, Any]:
    step = next((r for r in results if r.name == name), None)
    if step is None:
        return {"status": "absent", **extra}
    return {"status": step.status, "reason": step.reason, **step.detail, **extra}


def _models(back: Readback) -> dict[str, Any]:
    by_hash = {v["content_hash"][:12]: v["version"] for v in back.versions}
    served: dict[tuple[str, str], dict[str, Any]] = {}
    for where, rows in (
        ("score_event (Lambda)", back.event_scores),
        ("score_batch (Lambda)", back.file_scores),
    ):
        for row in rows:
            key = (str(row.get("model_version")), where)
            entry = served.setdefault(
                key, {"model_version": key[0], "where": where, "readings": 0, "first": None, "last": None}
            )
            entry["readings"] += 1
            stamp = row["timestamp"]
            stamp = stamp if isinstance(stamp, str) else _iso(stamp)
            entry["first"] = min(filter(None, (entry["first"], stamp)))
            entry["last"] = max(filter(None, (entry["last"], stamp)))
    for entry in served.values():
        entry["registry_version"] = by_hash.get(entry["model_version"].rsplit(":", 1)[-1])
    return {
        "versions": [
            {
                "version": v["version"],
                "content_hash": v["content_hash"],
                "artifact_uri": v["artifact_uri"],
                "registered_at": v["registered_at"],
            }
            for v in back.versions
        ],
        "aliases": back.aliases,
        "production_at_end": back.aliases.get("production"),
        "history": [
            {
                "at": h["at"],
                "alias": h["alias"],
                "action": h["action"],
                "from": h["from_version"],
                "to": h["to_version"],
                "candidate": h.get("candidate"),
                "reason": h["reason"],
            }
            for h in sorted(back.history, key=lambda h: h["at"])
        ],
        "served": sorted(served.values(), key=lambda e: (e["first"] or "", e["where"])),
    }


# -- plots and HTML


def _plot_scores(run: DemoRun, back: Readback, summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = run.data
    assert data is not None
    machines = list(data.machines)
    columns = 2 if len(machines) > 4 else 1
    rows = -(-len(machines) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(8 * columns, 2.3 * rows), sharex=True, squeeze=False)
    thresholds = {}
    if back.versions:
        thresholds = back.versions[0].get("thresholds", {}).get("levels", {})
    scores: dict[str, list[tuple[datetime, float]]] = {}
    for row in [*back.file_scores, *back.event_scores]:
        stamp = row["timestamp"]
        moment = _when(stamp) if isinstance(stamp, str) else stamp
        scores.setdefault(row["device_id"], []).append((moment, float(row["score"])))
    alerts = [a for a in back.alerts_eventbridge if a.get("scope") != "file" and a["kind"] == "raised"]
    for ax, machine in zip(axes.flat, machines, strict=False):
        series = sorted(scores.get(machine.device_id, []))
        if series:
            ax.plot([t for t, _ in series], [s for _, s in series], lw=0.6, color="tab:blue", label="score")
        for level, value in thresholds.items():
            ax.axhline(value, ls=":", lw=0.8, color="tab:orange" if level == "warning" else "tab:red")
        mine = [a for a in alerts if a["device_id"] == machine.device_id]
        if mine:
            ax.scatter(
                [_when(a["timestamp"]) for a in mine],
                [float(a.get("score") or 0.0) for a in mine],
                marker="v",
                color="crimson",
                s=18,
                zorder=3,
                label="alert raised",
            )
        for fault in data.faults:
            if fault.device_id == machine.device_id:
                ax.axvline(fault.onset, color="red", ls="--", lw=1, label=f"{fault.kind} onset")
                ax.axvline(fault.failure, color="black", lw=1, label="failure")
        for drift in data.drifts:
            if machine.device_id in drift.devices:
                ax.axvline(drift.start, color="darkorange", ls="-.", lw=1, label=f"{drift.sensor} drift")
        ax.axvspan(run.plan.plant.start, run.plan.live_start, color="0.92", zorder=0)
        ax.set_xlim(run.plan.plant.start, run.plan.plant.start + run.plan.plant.duration)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(machine.device_id, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left", ncol=3)
    for ax in list(axes.flat)[len(machines) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Model score per machine (grey: commissioning, scored by score_batch; then live, score_event)",
        fontsize=10,
    )
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_lead_times(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faults = summary.get("faults", [])
    fig, ax = plt.subplots(figsize=(8, 0.6 * max(len(faults), 1) + 1.2))
    labels = [f"{f['device_id'].split('-', 2)[-1]} ({f['kind']})" for f in faults]
    available = [f["warning_available_hours"] for f in faults]
    lead = [f.get("lead_time_hours") or 0.0 for f in faults]
    ax.barh(labels, available, color="0.85", label="onset to failure")
    ax.barh(labels, lead, color="tab:green", label="first alert to failure (lead time)")
    for y, fault in enumerate(faults):
        if not fault["detected"]:
            ax.text(0.5, y, "missed", va="center", color="crimson", fontsize=8)
    ax.set_xlabel("hours")
    ax.legend(fontsize=7)
    ax.set_title("Detection lead time per injected fault", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _false_by_machine(alerts: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[str]]:
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for a in alerts:
        grouped.setdefault((a["device_id"], a["rule_id"], a["why"]), []).append(a["timestamp"])
    return grouped


def _html(summary: dict[str, Any], plots: list[str]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Zaindari demo report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:left}th{background:#eee}.not_run{color:#a60}.failed{color:#c00}</style>",
        "</head><body>",
        f"<h1>Zaindari demo ({html.escape(summary['plan'])} plant, seed {summary['seed']})</h1>",
        f"<p>Wall time {summary.get('wall_seconds', 0):.0f} s. Every number below was read back from the run's "
        "outputs (lake, alert inboxes on SNS and EventBridge, registry); fault onsets, failures and drifts "
        "are the simulator's ground truth.</p>",
        "<h2>Steps</h2>",
        _table(
            ["step", "status", "seconds", "what", "why not"],
            [[s["name"], s["status"], s["seconds"], s["title"], s["reason"]] for s in summary["steps"]],
        ),
    ]
    if "faults" in summary:
        alerts, false = summary["alerts"], summary["false_alerts"]
        parts += [
            "<h2>Faults: detected or missed</h2>",
            _table(
                [
                    "machine",
                    "fault",
                    "onset",
                    "failure",
                    "first alert",
                    "rule",
                    "lead time (h)",
                    "warning available (h)",
                    "outcome",
                ],
                [
                    [
                        f["device_id"],
                        f["kind"],
                        f["onset"],
                        f["failure"] + (" (after the run)" if f["failure_after_run_end"] else ""),
                        f.get("first_alert"),
                        f.get("first_alert_rule"),
                        f.get("lead_time_hours"),
                        f["warning_available_hours"],
                        "detected" if f["detected"] else "MISSED: " + f.get("missed_because", ""),
                    ]
                    for f in summary["faults"]
                ],
            ),
            "<h2>Alerts</h2>",
            f"<p>{alerts['eventbridge']} alert events on EventBridge, {alerts['sns']} notifications on SNS "
            f"(the same alerts on both: {alerts['same_alerts_on_both']}). Live alerts by kind: "
            f"{html.escape(json.dumps(alerts['live_by_kind']))}; raised by rule: "
            f"{html.escape(json.dumps(alerts['live_raised_by_rule']))}. File alerts from the historian drop: "
            f"{alerts['file_alerts']}.</p>",
            "<h3>False alerts</h3>",
            f"<p>Raised on healthy machines: {false['raised_on_healthy_machines']}; on a healthy machine whose "
            f"sensor drifts: {false['raised_during_sensor_drift']}; after a failure (machine stopped): "
            f"{false['raised_after_failure']}. Rate: {false['per_healthy_machine_day']} per healthy machine-day "
            f"({false['healthy_machine_hours_streamed']} healthy machine-hours streamed).</p>",
            _table(
                ["machine", "rule", "why false", "alerts", "first", "last"],
                [
                    [device, rule, why, len(times), min(times), max(times)]
                    for (device, rule, why), times in sorted(_false_by_machine(false["list"]).items())
                ],
            ),
        ]
    for plot in plots:
        parts.append(f"<p><img src='{html.escape(plot)}' style='max-width:100%'></p>")
    if "drift" in summary:
        drift = summary["drift"]
        parts += [
            "<h2>Drift evidence</h2>",
            f"<p>Step status: {html.escape(str(drift.get('status')))}. {html.escape(str(drift.get('reason') or ''))}</p>",
            _table(
                ["sensor", "kind", "magnitude", "start", "devices"],
                [
                    [d["sensor"], d["kind"], d["magnitude"], d["start"], ", ".join(d["devices"])]
                    for d in drift["drifts_injected"]
                ],
            ),
        ]
    if "models" in summary:
        models = summary["models"]
        parts += [
            "<h2>Model versions: timeline and where each ran</h2>",
            "<p>Registry decisions carry the wall-clock time of the run; the readings each version "
            "scored carry the plant's simulated time.</p>",
            _table(
                ["at", "alias", "action", "from", "to", "reason"],
                [
                    [h["at"], h["alias"], h["action"], h["from"], h["to"], h["reason"]]
                    for h in models["history"]
                ],
            ),
            _table(
                ["model version", "registry version", "ran in", "readings", "first reading", "last reading"],
                [
                    [
                        s["model_version"],
                        s["registry_version"],
                        s["where"],
                        s["readings"],
                        s["first"],
                        s["last"],
                    ]
                    for s in models["served"]
                ],
            ),
            f"<p>Production at the end: version {models['production_at_end']}. Edge box: "
            f"{html.escape(str(summary['edge'].get('status')))} ({html.escape(str(summary['edge'].get('reason') or ''))}).</p>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def draw_plots(run: DemoRun, back: Readback, summary: dict[str, Any]) -> list[str]:
    """``scores.png`` and ``lead_times.png`` under the run's folder (when the plant was simulated)."""
    if run.data is None or "faults" not in summary:
        return []
    _plot_scores(run, back, summary, run.out_dir / "scores.png")
    _plot_lead_times(summary, run.out_dir / "lead_times.png")
    return ["scores.png", "lead_times.png"]


def write_html(summary: dict[str, Any], plots: list[str], path: Path) -> Path:
    """``report.html``: the summary as tables, with the plots."""
    path.write_text(_html(summary, plots), encoding="utf-8")
    return path


def print_summary(summary: dict[str, Any], out_dir: Path) -> str:
    """A few lines for the terminal."""
    lines = [f"Zaindari demo ({summary['plan']}): {summary.get('wall_seconds', 0):.0f} s"]
    for step in summary["steps"]:
        mark = {"ok": "ok     ", "failed": "FAILED ", "not_run": "not run"}[step["status"]]
        note = f"  ({step['reason']})" if step["reason"] else ""
        lines.append(f"  {mark} {step['name']:<22} {step['seconds']:7.1f} s{note}")
    if "faults" in summary:
        lines.append(
            f"  faults detected: {summary['faults_detected']}/{len(summary['faults'])}"
            + (f", missed: {', '.join(summary['faults_missed'])}" if summary["faults_missed"] else "")
        )
        for f in summary["faults"]:
            if f["detected"]:
                lines.append(
                    f"    {f['device_id']} {f['kind']}: first alert {f['first_alert']} ({f['first_alert_rule']}), "
                    f"lead time {f['lead_time_hours']} h of {f['warning_available_hours']} h"
                )
        false = summary["false_alerts"]
        lines.append(
            f"  false alerts: {false['raised_on_healthy_machines']} on healthy machines, "
            f"{false['raised_during_sensor_drift']} during sensor drift "
            f"({false['per_healthy_machine_day']} per healthy machine-day)"
        )
        alerts = summary["alerts"]
        lines.append(
            f"  alerts read back: {alerts['eventbridge']} from EventBridge, {alerts['sns']} from SNS"
        )
        lines.append(f"  production model at the end: version {summary['models']['production_at_end']}")
    lines.append(f"  report: {out_dir / 'report.html'}  summary: {out_dir / 'summary.json'}")
    return "\n".join(lines)
