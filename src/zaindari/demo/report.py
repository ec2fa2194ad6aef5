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

from zaindari.demo.steps import EDGE_BOX_ID, MODEL_NAME, DemoRun, StepResult
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
    notices_sns: list[Any] = field(default_factory=list)
    event_scores: list[dict[str, Any]] = field(default_factory=list)
    edge_scores: list[dict[str, Any]] = field(default_factory=list)
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
        # the topic also carries notices for people (drift, registry): alerts are the ones with an id
        for message in drain_queue(factory, run.inboxes["sns"]):
            is_alert = isinstance(message, dict) and "alert_id" in message
            (back.alerts_sns if is_alert else back.notices_sns).append(message)
    wanted = ("device_id", "timestamp", "score", "severity", "alert", "model_version")

    def fetch(key: str) -> tuple[str, bytes]:
        return key, s3.get_object(Bucket=run.lake, Key=key)["Body"].read()

    # one object per batch and date: thousands on the full plant, fetched side by side
    with ThreadPoolExecutor(max_workers=8) as pool:
        for key, body in pool.map(fetch, _keys(run, "scores/")):
            if key.endswith(".jsonl.gz"):
                # the edge box ships under the same prefix, its objects named edge-<box id>-...
                rows = back.edge_scores if f"/edge-{EDGE_BOX_ID}-" in key else back.event_scores
                for line in gzip.decompress(body).splitlines():
                    row = orjson.loads(line)
                    rows.append({k: row.get(k) for k in wanted})
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
    for row in [*back.event_scores, *back.edge_scores]:
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
            "edge_scores_in_lake": len(back.edge_scores),
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
        edge=_edge(run, back, results),
        models=_models(back),
    )
    summary["models"]["deployed"] = _deployments(results)
    summary["alerts"]["notices_for_people_sns"] = len(back.notices_sns)
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


EDGE_WHERE = "edge box (zaindari edge serve)"


def _edge(run: DemoRun, back: Readback, results: list[StepResult]) -> dict[str, Any]:
    """The edge box's figures: what it was sent offline and online, what it buffered and shipped,
    the version it ran at the end, and its alerts as EventBridge and SNS delivered them."""
    steps = {r.name: r for r in results if r.name in ("edge_box", "edge_model_update")}
    if not steps:
        return {"status": "absent"}
    failed = [r for r in steps.values() if r.status != "ok"]
    out: dict[str, Any] = {
        "status": failed[0].status if failed else "ok",
        "reason": failed[0].reason if failed else None,
    }
    for step in steps.values():
        out.update(step.detail)
    sent = sum(
        part.get("sent", 0)
        for part in (out.get("offline") or {}, out.get("online") or {}, out.get("scored_after_update") or {})
    )
    devices = set(out.get("devices") or [])
    keys = {(r["device_id"], str(r["timestamp"])) for r in back.edge_scores}
    alerts_eb = [a for a in back.alerts_eventbridge if a.get("scope") != "file" and a["device_id"] in devices]
    alerts_sns = [a for a in back.alerts_sns if a.get("scope") != "file" and a["device_id"] in devices]
    out.update(
        readings_sent=sent,
        readings_in_lake=len(back.edge_scores),
        distinct_readings_in_lake=len(keys),
        every_reading_once=sent == len(back.edge_scores) == len(keys),
        alerts_on_eventbridge=len(alerts_eb),
        alerts_on_sns=len(alerts_sns),
        alerts_answered=sum(
            part.get("alerts", 0)
            for part in (
                out.get("offline") or {},
                out.get("online") or {},
                out.get("scored_after_update") or {},
            )
        ),
        same_alerts_on_both={(a["alert_id"], a["kind"]) for a in alerts_eb}
        == {(a["alert_id"], a["kind"]) for a in alerts_sns},
    )
    return out


def _deployments(results: list[StepResult]) -> list[dict[str, Any]]:
    """What deploy_model put where (SageMaker endpoint, edge update), from the steps that ran it."""
    out: list[dict[str, Any]] = []
    for step in results:
        if step.status != "ok":
            continue
        if step.name == "deploy":
            version, targets = step.detail.get("version"), step.detail.get("targets") or {}
        elif step.name == "drift_retraining" and step.detail.get("promoted"):
            version, targets = step.detail.get("challenger"), step.detail.get("deployed") or {}
        else:
            continue
        for name, target in targets.items():
            where = {k: v for k, v in target.items() if k not in ("target", "status")}
            out.append({"registry_version": version, "target": name, "status": target.get("status"), **where})
    return out


def _models(back: Readback) -> dict[str, Any]:
    by_hash = {v["content_hash"][:12]: v["version"] for v in back.versions}
    served: dict[tuple[str, str], dict[str, Any]] = {}
    for where, rows in (
        ("score_event (Lambda)", back.event_scores),
        ("score_batch (Lambda)", back.file_scores),
        (EDGE_WHERE, back.edge_scores),
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
    numbers = {v["version"] for v in back.versions}
    for entry in served.values():
        # model_version is <model>:<registry version> (registry://) or <model>:<content hash prefix>
        suffix = entry["model_version"].rsplit(":", 1)[-1]
        number = int(suffix) if suffix.isdigit() and int(suffix) in numbers else None
        entry["registry_version"] = number if number is not None else by_hash.get(suffix)
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
    for row in [*back.file_scores, *back.event_scores, *back.edge_scores]:
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
        "Model score per machine (grey: commissioning, scored by score_batch; then live: score_event, "
        f"the edge box on {run.plan.edge_line})",
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
    drift = summary.get("drift") or {}
    if drift.get("status") == "ok":
        evidence = drift.get("evidence") or {}
        features = (evidence.get("evidence") or evidence).get("features") or []
        parts += [
            f"<p>monitor_drift at {html.escape(str(drift.get('checked_at')))} (plant time): "
            f"{html.escape(str(drift['check'].get('status')))}, drifted features "
            f"{html.escape(', '.join(drift['check'].get('drifted_features') or []))} on "
            f"{drift['check'].get('scored')} scored readings.</p>",
            _table(
                ["feature", "sensors", "PSI", "KS D", "n", "PSI threshold", "KS threshold"],
                [
                    [
                        f["feature"],
                        ", ".join(f.get("sensors") or []),
                        f["psi"],
                        f["ks"],
                        f["n"],
                        f.get("threshold"),
                        f.get("ks_threshold"),
                    ]
                    for f in features
                ],
            ),
            "<h2>Retraining and the promotion gate</h2>",
            f"<p>Retraining run {html.escape(str(drift['retraining_run'].get('run_id')))} on the days "
            f"{html.escape(json.dumps(drift['retraining_run'].get('data_range')))}: challenger version "
            f"{drift.get('challenger')}, registration {html.escape(str(drift.get('registration')))}.</p>",
        ]
        gate = drift.get("gate") or {}
        parts += _gate_html(drift, gate)
        parts.append(
            _table(
                ["gate outcome", "champion", "reasons", "numbers"],
                [
                    [
                        gate.get("outcome"),
                        gate.get("champion"),
                        "; ".join(gate.get("reasons") or []),
                        html.escape(json.dumps(gate.get("numbers"), default=str)),
                    ]
                ],
            )
        )
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
            _table(
                ["registry version", "deployed to", "status", "detail"],
                [
                    [
                        d["registry_version"],
                        d["target"],
                        d["status"],
                        html.escape(
                            json.dumps(
                                {
                                    k: v
                                    for k, v in d.items()
                                    if k not in ("registry_version", "target", "status")
                                },
                                default=str,
                            )
                        ),
                    ]
                    for d in models.get("deployed", [])
                ],
            ),
            f"<p>Production at the end: version {models['production_at_end']}.</p>",
        ]
    parts += _edge_html(summary.get("edge") or {})
    parts.append("</body></html>")
    return "\n".join(parts)


def _gate_html(drift: dict[str, Any], gate: dict[str, Any]) -> list[str]:
    """The maintenance log, what it took out of the training set, and the shadow comparison in words."""
    log = drift.get("maintenance_log") or {}
    rows = ((drift.get("jobs") or {}).get("build_training_set") or {}).get("summary", {}).get("rows") or {}
    shadow = (gate.get("numbers") or {}).get("shadow") or {}
    known = shadow.get("known_fault") or {}
    out = [
        "<p>An anomaly model learns normal operation. The maintenance log (work orders the plant "
        "knew of at the drift check, written to <code>labels/maintenance/</code>) names the machines "
        "known faulty and since when: "
        + html.escape(
            "; ".join(
                f"{w['device_id']} {w['kind']} from {w['start']} ({w['note']})"
                for w in log.get("windows", [])
            )
            or "none"
        )
        + ". Faults nobody had seen yet: "
        + html.escape(
            ", ".join(
                f"{f['device_id']} {f['kind']} (onset {f['onset']})"
                for f in log.get("faults_not_known_yet", [])
            )
            or "none"
        )
        + f". The training set kept {rows.get('valid')} of {rows.get('in')} rows; set aside by stage: "
        + html.escape(json.dumps(rows.get("rejected_by_stage")))
        + ".</p>"
    ]
    if shadow:
        bound = shadow.get("bound")
        text = (
            f"<p>Shadow scoring on the {shadow.get('readings')} most recent readings: outside known fault "
            f"windows ({shadow.get('normal_scored', shadow.get('challenger_scored'))} readings) the champion "
            f"alerted on {shadow.get('champion_alert_rate', 0):.4f} of them, the challenger on "
            f"{shadow.get('challenger_alert_rate', 0):.4f}"
        )
        if known:
            developing = log.get("developing_in_shadow_sample") or []
            text += (
                f"; inside them ({known.get('scored')} readings) {known.get('champion_alert_rate', 0):.4f} and "
                f"{known.get('challenger_alert_rate', 0):.4f}. The challenger may alert no more than the "
                f"champion plus {bound} on the first, and no less than the champion minus {bound} on the "
                "known faults. Known faults still developing (machine running) in the sample: "
                + (
                    html.escape(", ".join(developing))
                    if developing
                    else "none: every known-fault machine had "
                    "broken down, and on a stopped machine the expert rules alert whatever the model, so this "
                    "sample tests the learned score's detection little"
                )
                + "."
            )
        else:
            text += f". With no known fault in the sample, the rates must be within {bound} of each other."
        out.append(text + "</p>")
    return out


def _edge_html(edge: dict[str, Any]) -> list[str]:
    if edge.get("status") != "ok":
        return [
            "<h2>Edge box</h2>",
            f"<p>{html.escape(str(edge.get('status')))}: {html.escape(str(edge.get('reason') or ''))}</p>",
        ]
    offline, online = edge.get("offline") or {}, edge.get("online") or {}
    after = edge.get("scored_after_update") or {}
    return [
        "<h2>Edge box</h2>",
        f"<p>Box {html.escape(str(edge.get('box_id')))} scores {html.escape(str(edge.get('line')))} "
        f"({html.escape(', '.join(edge.get('devices') or []))}), served by "
        f"{html.escape(str(edge.get('served_by')))}, installed with version "
        f"{html.escape(str(edge.get('installed_version')))}. Its link to AWS was down from "
        f"{html.escape(str(offline.get('from')))} to {html.escape(str(offline.get('until')))} (plant time): "
        f"it scored {offline.get('sent')} readings offline ({offline.get('alerts')} alerts raised on the box) "
        f"and held {html.escape(json.dumps(edge.get('buffered_when_link_came_back')))} buffered rows "
        f"({edge.get('buffer_bytes_when_link_came_back')} bytes); the link came back and its shipper "
        f"emptied the buffer in {edge.get('seconds_to_ship_backlog')} s. Online until the drift check it "
        f"scored {online.get('sent')} more.</p>",
        f"<p>Model updates it received (deploy_model's <code>Zaindari Model Update</code>, posted to its "
        f"model-sync): {html.escape(json.dumps(edge.get('outcomes'), default=str))}. It scored the last "
        f"{after.get('sent')} readings of its line with version {html.escape(str(edge.get('version_after_update')))}; "
        f"at the end it runs version <b>{html.escape(str(edge.get('model_version')))}</b>. Acknowledgements on "
        f"EventBridge: {html.escape(json.dumps(edge.get('acks_on_eventbridge'), default=str))}.</p>",
        f"<p>Readings sent to the box: {edge.get('readings_sent')}; its scores in the lake: "
        f"{edge.get('readings_in_lake')} ({edge.get('distinct_readings_in_lake')} distinct; every reading "
        f"exactly once: {edge.get('every_reading_once')}). Its alerts: {edge.get('alerts_answered')} in its "
        f"answers, {edge.get('alerts_on_eventbridge')} on EventBridge, {edge.get('alerts_on_sns')} on SNS "
        f"(the same on both: {edge.get('same_alerts_on_both')}).</p>",
    ]


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
        drift = summary.get("drift") or {}
        if drift.get("status") == "ok":
            gate = drift.get("gate") or {}
            lines.append(
                f"  drift: {', '.join(drift['check'].get('drifted_features') or [])}; challenger version "
                f"{drift.get('challenger')}: gate {gate.get('outcome')} ({'; '.join(gate.get('reasons') or [])})"
            )
        lines.append(f"  production model at the end: version {summary['models']['production_at_end']}")
        edge = summary.get("edge") or {}
        if edge.get("status") == "ok":
            lines.append(
                f"  edge box {edge.get('box_id')}: {(edge.get('offline') or {}).get('sent')} readings offline, "
                f"{edge.get('readings_in_lake')}/{edge.get('readings_sent')} in the lake, "
                f"{edge.get('alerts_on_eventbridge')} alerts on EventBridge; runs version {edge.get('model_version')}"
            )
    lines.append(f"  report: {out_dir / 'report.html'}  summary: {out_dir / 'summary.json'}")
    return "\n".join(lines)
