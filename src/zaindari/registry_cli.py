"""``zaindari registry``: list, show, register, promote, deploy, roll back and read the history of models.

Runs against the configured AWS (``AWS_ENDPOINT_URL`` for moto or LocalStack) with the registry
table and lake bucket from ``ZAINDARI_*`` settings. Output is plain-text tables. Exit codes: 0 done
(or awaiting approval), 1 refused by the gate or a downstream failure, 2 bad arguments, settings
or an unknown model/version/bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zaindari.deployment import DeploymentOutcome, ModelLifecycle
    from zaindari.registry import HistoryEntry, ModelRegistry, ModelVersion
    from zaindari.settings import Settings

__all__ = ["build_registry_command", "format_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned plain-text columns separated by two spaces; ``None`` prints as ``-``."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _actor() -> str:
    return f"cli:{os.environ.get('USER', 'unknown')}"


def _key_metrics(version: ModelVersion) -> str:
    from zaindari.registry import METRIC_RULES, metric_value

    parts = []
    for rule in METRIC_RULES.get(version.task, ()):
        value = metric_value(version.metrics, rule.path)
        if value is not None:
            parts.append(f"{rule.name}={value:.4g}")
    return " ".join(parts) or "-"


def _numbers(entry: HistoryEntry) -> str:
    """The deciding figures of a history entry on one line."""
    parts = []
    for row in entry.numbers.get("metrics", []):
        mark = "ok" if row["passed"] else "WORSE"
        parts.append(f"{row['metric']} {row['champion']:.4g}->{row['challenger']:.4g} {mark}")
    shadow = entry.numbers.get("shadow")
    if shadow:
        bound = f" bound {shadow['bound']:g}" if "bound" in shadow else ""
        parts.append(
            f"alerts {shadow['champion_alert_rate']:.3f}->{shadow['challenger_alert_rate']:.3f}{bound}"
        )
    if "approved_by" in entry.numbers:
        parts.append(f"approved by {entry.numbers['approved_by']}")
    return "; ".join(parts)


def _registry(settings: Settings) -> ModelRegistry:
    from zaindari.infra.registry_store import build_model_registry
    from zaindari.infra.wiring import client_factory

    return build_model_registry(settings, client_factory())


def _list(registry: ModelRegistry, args: argparse.Namespace) -> int:
    rows = []
    for model in registry.store.list_models():
        versions = registry.store.list_versions(model)
        aliases = registry.store.aliases(model)
        custom = ", ".join(
            f"{a}={v}" for a, v in sorted(aliases.items()) if a not in ("staging", "production", "archived")
        )
        rows.append(
            [
                model,
                len(versions),
                versions[-1].version if versions else None,
                aliases.get("production"),
                aliases.get("staging"),
                aliases.get("archived"),
                custom or None,
            ]
        )
    print(
        format_table(
            ["model", "versions", "latest", "production", "staging", "archived", "other aliases"], rows
        )
    )
    return 0


def _show(registry: ModelRegistry, args: argparse.Namespace) -> int:
    from zaindari.registry import RegistryError

    aliases = registry.store.aliases(args.model)
    by_version: dict[int, list[str]] = {}
    for alias, number in sorted(aliases.items()):
        by_version.setdefault(number, []).append(alias)
    if args.version is None:
        versions = registry.store.list_versions(args.model)
        if not versions:
            raise RegistryError(f"no model {args.model!r} in the registry")
        rows = [
            [
                v.version,
                ",".join(by_version.get(v.version, [])) or None,
                v.task,
                _key_metrics(v),
                v.content_hash[:12],
                v.registered_at,
                v.artifact_uri,
            ]
            for v in versions
        ]
        print(format_table(["version", "aliases", "task", "metrics", "hash", "registered", "artifact"], rows))
        return 0
    v = registry.version(args.model, args.version)
    fields = [
        ("model", v.model),
        ("version", v.version),
        ("aliases", ",".join(by_version.get(v.version, [])) or "-"),
        ("task", v.task),
        ("artifact", v.artifact_uri),
        ("content hash", v.content_hash),
        ("registered", f"{v.registered_at} by {v.registered_by or '-'}"),
        ("source", v.source),
        ("bundle version", v.bundle_version or "-"),
        ("features", ", ".join(v.signature.get("features", []))),
        ("outputs", ", ".join(f"{o['name']} ({o['role']})" for o in v.signature.get("outputs", []))),
        ("thresholds", json.dumps(v.thresholds.get("levels", {}), sort_keys=True)),
        ("parity", json.dumps(v.parity, sort_keys=True)),
        ("lineage", json.dumps(v.lineage, sort_keys=True)),
        ("metrics", json.dumps(v.metrics, sort_keys=True)),
    ]
    print(format_table(["field", "value"], fields))
    return 0


def _register(registry: ModelRegistry, args: argparse.Namespace) -> int:
    version = registry.register_version(args.path, model=args.model, actor=_actor())
    print(
        f"registered {version.model} version {version.version} (staging) at {version.artifact_uri} "
        f"hash {version.content_hash[:12]}"
    )
    return 0


def _read_readings(path: str) -> list[Any]:
    from zaindari.contract import parse_readings
    from zaindari.registry import RegistryError

    try:
        text = Path(path).read_text(encoding="utf-8")
        stripped = text.lstrip()
        records = (
            json.loads(text)
            if stripped.startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: readings cannot be read (a JSON array or JSON Lines): {exc}") from exc
    readings = list(parse_readings(records).readings)
    if not readings:
        raise RegistryError(f"{path}: no valid reading to shadow-score")
    return readings


def _read_maintenance(path: str) -> Any:
    from zaindari.maintenance import MaintenanceError, read_maintenance_log
    from zaindari.registry import RegistryError

    try:
        return read_maintenance_log([path], lambda name: Path(name).read_bytes())
    except (OSError, MaintenanceError) as exc:
        raise RegistryError(f"maintenance log {exc}") from exc


def _promote(registry: ModelRegistry, args: argparse.Namespace, settings: Settings) -> int:
    from zaindari.bundle import load_bundle
    from zaindari.registry import GatePolicy, ShadowResult, shadow_alert_rates

    policy = GatePolicy(
        tolerance=settings.promotion_tolerance if args.tolerance is None else args.tolerance,
        alert_rate_bound=None if args.no_shadow else settings.promotion_alert_rate_bound,
        manual_approval=settings.promotion_manual_approval,
    )
    shadow: ShadowResult | None = None
    champion = registry.alias_version(args.model, "production")
    if args.readings and champion is not None:

        def bundle(number: int) -> Any:
            return load_bundle(registry.artifacts.fetch(registry.version(args.model, number).artifact_uri))

        known_fault = _read_maintenance(args.maintenance).covers if args.maintenance else None
        shadow = shadow_alert_rates(
            bundle(champion), bundle(args.version), _read_readings(args.readings), known_fault=known_fault
        )
    decision = registry.promote(
        args.model,
        args.version,
        policy=policy,
        shadow=shadow,
        approved_by=args.approved_by,
        actor=_actor(),
        reason=args.reason or "",
    )
    print(
        f"{decision.outcome}: {decision.model} version {decision.candidate} (production was {decision.champion})"
    )
    for reason in decision.reasons:
        print(f"  {reason}")
    rows = [
        [
            r["metric"],
            r["better"],
            r["champion"],
            r["challenger"],
            f"{r['worst_allowed']:.6g}",
            "ok" if r["passed"] else "WORSE",
        ]
        for r in decision.numbers.get("metrics", [])
    ]
    if rows:
        print(format_table(["metric", "better", "production", "candidate", "worst allowed", "verdict"], rows))
    if "shadow" in decision.numbers:
        s = decision.numbers["shadow"]
        print(
            f"shadow: {s['readings']} readings, alert rate production {s['champion_alert_rate']:.4f}, "
            f"candidate {s['challenger_alert_rate']:.4f}"
        )
        if "known_fault" in s:
            k = s["known_fault"]
            print(
                f"known faults (maintenance log): {k['scored']} readings, alert rate production "
                f"{k['champion_alert_rate']:.4f}, candidate {k['challenger_alert_rate']:.4f}"
            )
    if decision.promoted:
        _lifecycle(settings).announce_promotion(decision, actor=_actor())
        print("announced: Zaindari Model Promoted (deploy_model deploys it)")
    return 1 if decision.outcome == "refused" else 0


def _lifecycle(settings: Settings) -> ModelLifecycle:
    from zaindari.infra.deploy_ports import build_model_lifecycle
    from zaindari.infra.wiring import client_factory

    return build_model_lifecycle(settings, client_factory())


def _print_deployment(outcome: DeploymentOutcome) -> None:
    rows = [
        [t.target, t.status, ", ".join(f"{k}={v}" for k, v in t.detail.items() if k != "statuses") or None]
        for t in outcome.targets
    ]
    if rows:
        print(format_table(["target", "status", "detail"], rows))


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    """Production back to the previous (or --to) version, deployed everywhere, announced."""
    lifecycle = _lifecycle(settings)
    before = lifecycle.registry.alias_version(args.model, "production")
    outcome = lifecycle.rollback(args.model, to_version=args.to, reason=args.reason, actor=_actor())
    print(f"rolled back {args.model} production from version {before} to {outcome.version}: {args.reason}")
    _print_deployment(outcome)
    return 0


def _deploy(args: argparse.Namespace, settings: Settings) -> int:
    """Deploy the production version again (the SageMaker endpoint, the edge, the mirror)."""
    outcome = _lifecycle(settings).deploy_production(args.model, reason=args.reason or "deployed by hand")
    print(f"{outcome.status}: {args.model} version {outcome.version} {outcome.reason}".rstrip())
    _print_deployment(outcome)
    return 0 if outcome.status == "deployed" else 1


def _history(registry: ModelRegistry, args: argparse.Namespace) -> int:
    rows = [
        [
            e.at,
            e.alias,
            e.action,
            e.from_version,
            e.to_version if e.changed else (f"({e.candidate})" if e.candidate is not None else None),
            e.actor or None,
            e.reason,
            _numbers(e) or None,
        ]
        for e in registry.store.history(args.model)
    ]
    print(format_table(["at", "alias", "action", "from", "to", "by", "reason", "numbers"], rows))
    return 0


def _run(args: argparse.Namespace) -> int:
    from zaindari.ports import PortError
    from zaindari.registry import AliasConflict, RegistryError
    from zaindari.settings import Settings, SettingsError

    try:
        settings = Settings.from_env(os.environ)
        registry = _registry(settings)
        command = args.registry_command
        if command == "promote":
            return _promote(registry, args, settings)
        if command == "rollback":
            return _rollback(args, settings)
        if command == "deploy":
            return _deploy(args, settings)
        handlers = {
            "list": _list,
            "show": _show,
            "register": _register,
            "history": _history,
        }
        return handlers[command](registry, args)
    except (SettingsError, RegistryError) as exc:
        print(f"zaindari registry {args.registry_command}: {exc}", file=sys.stderr)
        return 2
    except (PortError, AliasConflict) as exc:
        print(f"zaindari registry {args.registry_command}: {exc}", file=sys.stderr)
        return 1


def build_registry_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``zaindari registry ...`` to the ``zaindari`` parser."""
    registry = commands.add_parser(
        "registry",
        help="the model registry: versions, aliases, promotion gate, rollback, history",
        description=(
            "Against the configured AWS (AWS_ENDPOINT_URL for the embedded AWS); the registry table "
            "and lake bucket come from ZAINDARI_REGISTRY_TABLE and ZAINDARI_LAKE_BUCKET, the gate from "
            "ZAINDARI_PROMOTION_*."
        ),
    )
    sub = registry.add_subparsers(dest="registry_command", metavar="<command>", required=True)
    sub.add_parser("list", help="registered models and their aliases")
    show = sub.add_parser("show", help="a model's versions, or one version in full")
    show.add_argument("model", metavar="MODEL")
    show.add_argument("version", metavar="VERSION", type=int, nargs="?")
    register = sub.add_parser(
        "register", help="verify a bundle and register it as the next version (staging)"
    )
    register.add_argument("model", metavar="MODEL")
    register.add_argument("path", metavar="PATH", help="the bundle: a folder or an s3:// prefix")
    promote = sub.add_parser(
        "promote", help="the champion/challenger gate: make VERSION production if it earns it"
    )
    promote.add_argument("model", metavar="MODEL")
    promote.add_argument("version", metavar="VERSION", type=int)
    promote.add_argument(
        "--readings",
        metavar="FILE",
        help="recent readings (JSON array or JSON Lines) to shadow-score with both models",
    )
    promote.add_argument(
        "--maintenance",
        metavar="FILE",
        help="the maintenance log (JSON Lines of known fault windows): readings inside them are judged apart",
    )
    promote.add_argument("--no-shadow", action="store_true", help="skip the shadow alert-rate check")
    promote.add_argument("--tolerance", type=float, help="override ZAINDARI_PROMOTION_TOLERANCE")
    promote.add_argument("--approved-by", metavar="NAME", help="the approver (when manual approval is on)")
    promote.add_argument("--reason", help="why, kept in the history")
    deploy = sub.add_parser(
        "deploy",
        help="deploy the production version again: SageMaker endpoint, edge update, package statuses",
    )
    deploy.add_argument("model", metavar="MODEL")
    deploy.add_argument("--reason", help="why, sent with the edge's model-update event")
    rollback = sub.add_parser(
        "rollback", help="set production back to the previous (or a named) version and deploy it everywhere"
    )
    rollback.add_argument("model", metavar="MODEL")
    rollback.add_argument("--to", metavar="VERSION", type=int, help="the version to go back to")
    rollback.add_argument("--reason", required=True, help="why, kept in the history")
    history = sub.add_parser("history", help="the model's audit history, oldest first")
    history.add_argument("model", metavar="MODEL")
    for parser in (registry, *sub.choices.values()):
        parser.set_defaults(handler=_run)
