"""Hybrid alerting: expert rules and the model's learned thresholds, with hysteresis, explained.

Conditions are evaluated for all rows at once (numpy). The alert *state machine* then walks each
device's rows in time order: a condition must hold ``for_consecutive`` readings to raise an alert,
and an active alert resolves after ``clear_after`` clear readings, with a deadband so a value that
hovers at the threshold does not flap. A device that stays abnormal raises one alert (then, for the
learned score, an ``escalated`` alert if it crosses a higher level), and one ``resolved`` when it
recovers. The state is data in, data out (:class:`AlertState`): each runtime stores it.

Late readings (see ``zaindari.features``) are flagged per row but do not drive the state machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from zaindari.bundle import LearnedThresholds, Signature
from zaindari.codegen import COMPILE_ERRORS, IdentityCache, build
from zaindari.spec import (
    SEVERITY_RANK,
    AllOf,
    AnyOf,
    ExpertRule,
    ModelSpec,
    RangeCondition,
    RateCondition,
    ThresholdCondition,
    condition_features,
)

__all__ = [
    "LEARNED_RULE_ID",
    "Alert",
    "AlertEvaluation",
    "AlertState",
    "Contributor",
    "RuleState",
    "evaluate_alerts",
]

LEARNED_RULE_ID = "model_score"
#: Up to this many rows, :func:`evaluate_alerts` works on Python lists (the same alerts, flags and
#: states as its numpy path, see ``tests/unit/test_small_batches.py``): an edge box evaluates
#: groups of 1-8 readings, where numpy's per-call overhead was most of the ~100 us it took.
SMALL_ALERTS = 8
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass
class RuleState:
    """One rule's state on one device."""

    active: bool = False
    streak: int = 0
    clear_streak: int = 0
    severity: str | None = None
    started_at: str | None = None
    alert_id: str | None = None

    def is_idle(self) -> bool:
        return not self.active and self.streak == 0


@dataclass
class AlertState:
    """Every rule's state on one device (only non-idle rules are kept)."""

    rules: dict[str, RuleState] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: vars(v) for k, v in self.rules.items() if not v.is_idle()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AlertState:
        return cls({k: RuleState(**v) for k, v in dict(data or {}).items()})

    @property
    def active_rules(self) -> list[str]:
        return sorted(k for k, v in self.rules.items() if v.active)


class Contributor(BaseModel):
    """A feature that pushed the score, the raw sensors behind it, and its share of the score."""

    model_config = ConfigDict(frozen=True)

    feature: str
    sensors: list[str]
    share: float
    value: float


class Alert(BaseModel):
    """An alert as people and machines receive it: what fired, on what, why, and with which model."""

    model_config = ConfigDict(frozen=True)

    alert_id: str
    kind: Literal["raised", "escalated", "resolved"]
    device_id: str
    asset: str | None = None
    line: str | None = None
    site: str | None = None
    rule_id: str
    source: Literal["expert", "learned"]
    severity: str
    message: str
    timestamp: str
    started_at: str
    observed: dict[str, float]
    thresholds: dict[str, float]
    score: float | None = None
    top_contributors: list[Contributor] = []
    sensors: list[str] = []
    mode: str | None = None
    model_version: str
    rule_set_version: str

    @property
    def dedup_key(self) -> str:
        """One key per alert episode and kind: a redelivered reading cannot repeat it."""
        return f"{self.alert_id}:{self.kind}"


@dataclass
class AlertEvaluation:
    """What :func:`evaluate_alerts` returns: alerts in time order, per-row flags, new states."""

    alerts: list[Alert]
    row_rules: list[list[str]]
    row_severity: list[str | None]
    states: dict[str, AlertState]


@dataclass(frozen=True)
class _Compiled:
    rule_id: str
    source: Literal["expert", "learned"]
    fire: BoolArray
    hold: BoolArray
    severity: npt.NDArray[np.object_]
    for_consecutive: int
    clear_after: int
    features: tuple[str, ...]
    thresholds: dict[str, float]
    message: str


@dataclass  # (not frozen: a frozen dataclass's __init__ costs ~2 us, five per group)
class _CompiledRows:
    """:class:`_Compiled` for a few rows: the same facts, the per-row flags as Python lists
    (``hold`` worked out on first use: only a rule whose state machine walks reads it)."""

    rule_id: str
    source: Literal["expert", "learned"]
    fire: list[bool]
    hold_rows: Callable[[], list[bool]]
    severity: list[str | None]
    for_consecutive: int
    clear_after: int
    features: tuple[str, ...]
    thresholds: dict[str, float]
    message: str

    @cached_property
    def hold(self) -> list[bool]:
        return self.hold_rows()


def _compare(values: FloatArray, op: str, limit: float) -> BoolArray:
    if op == ">":
        return values > limit
    if op == ">=":
        return values >= limit
    if op == "<":
        return values < limit
    return values <= limit


def _condition(cond: Any, columns: Mapping[str, FloatArray], hold: bool) -> BoolArray:
    """The condition per row; with ``hold`` the deadband widens it (an active alert stays up).

    Call it under ``np.errstate(invalid="ignore")`` (``nan`` features compare false): one
    context for all rules, not one per comparison, which cost ~40 us per rule and call.
    """
    if isinstance(cond, ThresholdCondition):
        shift = cond.deadband if hold else 0.0
        limit = cond.value - shift if cond.op in (">", ">=") else cond.value + shift
        return _compare(columns[cond.feature], cond.op, limit)
    if isinstance(cond, RangeCondition):
        shift = cond.deadband if hold else 0.0
        values = columns[cond.range]
        return np.asarray((values < cond.min + shift) | (values > cond.max - shift))
    if isinstance(cond, RateCondition):
        rate = columns[f"{cond.rate_of_change}__rate"]
        return np.asarray(np.abs(rate) > cond.max_per_second)
    if isinstance(cond, AllOf):
        out = _condition(cond.all[0], columns, hold)
        for c in cond.all[1:]:
            out = out & _condition(c, columns, hold)
        return out
    if isinstance(cond, AnyOf):
        out = _condition(cond.any[0], columns, hold)
        for c in cond.any[1:]:
            out = out | _condition(c, columns, hold)
        return out
    raise TypeError(f"unknown condition {cond!r}")


def _condition_text(
    cond: Any, hold: bool, variable: dict[str, str], limits: list[float], lines: list[str]
) -> str:
    """:func:`_condition` of one row as the name of a Python value over one variable per feature
    column (``variable``, filled in here) and the limits (``L<k>``, appended to ``limits``): the
    same comparisons on the same numbers, worked out once per rule (:func:`_rule_rows`). Each
    condition is one assignment ``f<k> = ...`` of names (appended to ``lines``), so the code is
    flat however deep the rule nests (Python refuses ~200 nested parentheses)."""

    def value(name: str) -> str:
        return variable.setdefault(name, f"v{len(variable)}")

    def limit(x: float) -> str:
        limits.append(x)
        return f"L{len(limits) - 1}"

    def assign(text: str) -> str:
        lines.append(f"f{len(lines)} = {text}")
        return f"f{len(lines) - 1}"

    if isinstance(cond, ThresholdCondition):
        shift = cond.deadband if hold else 0.0
        bound = cond.value - shift if cond.op in (">", ">=") else cond.value + shift
        return assign(f"{value(cond.feature)} {cond.op} {limit(bound)}")
    if isinstance(cond, RangeCondition):
        shift = cond.deadband if hold else 0.0
        v = value(cond.range)
        return assign(f"{v} < {limit(cond.min + shift)} or {v} > {limit(cond.max - shift)}")
    if isinstance(cond, RateCondition):
        return assign(f"abs({value(f'{cond.rate_of_change}__rate')}) > {limit(cond.max_per_second)}")
    if isinstance(cond, AllOf):
        parts = [_condition_text(c, hold, variable, limits, lines) for c in cond.all]
        return assign(" and ".join(parts))
    if isinstance(cond, AnyOf):
        parts = [_condition_text(c, hold, variable, limits, lines) for c in cond.any]
        return assign(" or ".join(parts))
    raise TypeError(f"unknown condition {cond!r}")


@dataclass(frozen=True)
class _RuleRows:
    """An expert rule's per-row flags as two compiled functions of its feature columns (Python
    lists) and the rows' modes: ``fire`` and ``hold`` (its deadband's condition or ``fire``),
    both false outside the rule's modes."""

    rule: ExpertRule
    columns: tuple[str, ...]
    fire: Callable[..., list[bool]]
    hold: Callable[..., list[bool]]
    #: (every part of the text is a comparison, ``and`` or ``or`` of comparisons: a ``bool``)


#: Per rule: its compiled flags.
_RULE_ROWS: IdentityCache[ExpertRule, _RuleRows] = IdentityCache()


def _rule_rows(rule: ExpertRule) -> _RuleRows:
    return _RULE_ROWS.get(rule, _compile_rule_rows)


def _compile_rule_rows(rule: ExpertRule) -> _RuleRows:
    allowed = None if rule.modes is None else frozenset(str(m) for m in rule.modes)
    try:
        return _rule_rows_compiled(rule, allowed)
    except COMPILE_ERRORS:
        return _rule_rows_numpy(rule, allowed)  # kept: not compiled again


def _rule_rows_compiled(rule: ExpertRule, allowed: frozenset[str] | None) -> _RuleRows:
    """The rule's flags as two generated functions (one assignment per condition, one loop)."""
    variable: dict[str, str] = {}
    limits: list[float] = []
    lines: list[str] = []
    fire = _condition_text(rule.when, False, variable, limits, lines)
    fire_lines = len(lines)  # (hold's assignments follow, under their own names)
    hold = _condition_text(rule.when, True, variable, limits, lines)
    names = list(variable.values())
    row = ", ".join(names) + ", m" if names else "m"
    columns = ", ".join(f"c{k}" for k in range(len(names)))
    mode = "" if rule.modes is None else " and (m in allowed)"
    loop = f"        for {row} in zip({columns}{', ' if names else ''}modes):\n"

    def body(part: Sequence[str]) -> str:
        return "".join(f"            {line}\n" for line in part)

    source = (
        f"def make({', '.join(f'L{k}' for k in range(len(limits)))}{', ' if limits else ''}allowed):\n"
        f"    def fire({columns}{', ' if names else ''}modes):\n"
        f"        out = []\n"
        f"{loop}{body(lines[:fire_lines])}"
        f"            out.append({fire}{mode})\n"
        f"        return out\n"
        f"    def hold({columns}{', ' if names else ''}modes):\n"
        f"        out = []\n"
        f"{loop}{body(lines)}"
        f"            out.append(({hold} or {fire}){mode})\n"
        f"        return out\n"
        f"    return fire, hold\n"
    )
    fire_fn, hold_fn = build(source, *limits, allowed)  # names, comparison operators, L<k> and m
    return _RuleRows(rule, tuple(variable), fire_fn, hold_fn)


def _rule_rows_numpy(rule: ExpertRule, allowed: frozenset[str] | None) -> _RuleRows:
    """The rule's flags by :func:`_condition` on numpy columns (the same numbers), for a rule
    Python cannot compile."""
    columns = tuple(dict.fromkeys(condition_features(rule.when, rate_suffix="__rate")))

    def flags(hold: bool, values: Sequence[Sequence[float]], modes: Sequence[str]) -> list[bool]:
        arrays = {name: np.array(v, dtype=np.float64) for name, v in zip(columns, values, strict=True)}
        with np.errstate(invalid="ignore"):
            out = _condition(rule.when, arrays, hold=False)
            if hold:
                out = _condition(rule.when, arrays, hold=True) | out
        result: list[bool] = out.tolist()
        if allowed is not None:
            result = [f and m in allowed for f, m in zip(result, modes, strict=True)]
        return result

    return _RuleRows(
        rule,
        columns,
        lambda *args: flags(False, args[:-1], args[-1]),
        lambda *args: flags(True, args[:-1], args[-1]),
    )


def _condition_thresholds(cond: Any) -> dict[str, float]:
    if isinstance(cond, ThresholdCondition):
        return {cond.feature: cond.value}
    if isinstance(cond, RangeCondition):
        return {f"{cond.range}.min": cond.min, f"{cond.range}.max": cond.max}
    if isinstance(cond, RateCondition):
        return {f"{cond.rate_of_change}.max_per_second": cond.max_per_second}
    out: dict[str, float] = {}
    for c in cond.all if isinstance(cond, AllOf) else cond.any:
        out.update(_condition_thresholds(c))
    return out


def _describe(cond: Any) -> str:
    if isinstance(cond, ThresholdCondition):
        return f"{cond.feature} {cond.op} {cond.value:g}"
    if isinstance(cond, RangeCondition):
        return f"{cond.range} outside [{cond.min:g}, {cond.max:g}]"
    if isinstance(cond, RateCondition):
        return f"|d {cond.rate_of_change}/dt| > {cond.max_per_second:g}/s"
    if isinstance(cond, AllOf):
        return " and ".join(f"({_describe(c)})" for c in cond.all)
    return " or ".join(f"({_describe(c)})" for c in cond.any)


#: Per rule (by identity; the rule is kept in the value so its id is not reused): the features,
#: thresholds and message its alerts carry, which depend on the rule only.
_RULE_FACTS: dict[int, tuple[ExpertRule, tuple[str, ...], dict[str, float], str]] = {}


def _rule_facts(rule: ExpertRule) -> tuple[tuple[str, ...], dict[str, float], str]:
    cached = _RULE_FACTS.get(id(rule))
    if cached is None or cached[0] is not rule:
        if len(_RULE_FACTS) > 1024:
            _RULE_FACTS.clear()
        cached = (
            rule,
            tuple(dict.fromkeys(condition_features(rule.when))),
            _condition_thresholds(rule.when),
            rule.message or _describe(rule.when),
        )
        _RULE_FACTS[id(rule)] = cached
    return cached[1], dict(cached[2]), cached[3]


def _filled(n: int, value: str | None) -> npt.NDArray[np.object_]:
    """``np.full(n, value, dtype=object)``, which takes ~25 us for 1,000 rows where a slice
    assignment takes ~2 us (``np.empty`` of objects already holds ``None``)."""
    out = np.empty(n, dtype=object)
    if value is not None:
        out[:] = value
    return out


def _compile_expert(
    rule: ExpertRule, columns: Mapping[str, FloatArray], modes: npt.NDArray[np.object_], clear_after: int
) -> _Compiled:
    # under evaluate_alerts' np.errstate(invalid="ignore") (see _condition)
    fire = _condition(rule.when, columns, hold=False)
    hold = _condition(rule.when, columns, hold=True) | fire
    if rule.modes is not None:
        if len(modes) <= 8:  # a few rows (an edge box's groups): a set lookup, not np.isin's sort
            allowed = {str(m) for m in rule.modes}
            in_mode = np.array([str(m) in allowed for m in modes.tolist()], dtype=bool)
        else:
            in_mode = np.isin(modes.astype(str), np.array(rule.modes, dtype=str))
        fire &= in_mode
        hold &= in_mode
    features, thresholds, message = _rule_facts(rule)
    return _Compiled(
        rule_id=rule.id,
        source="expert",
        fire=fire,
        hold=hold,
        severity=_filled(len(fire), rule.severity),
        for_consecutive=rule.for_consecutive,
        clear_after=clear_after,
        features=features,
        thresholds=thresholds,
        message=message,
    )


def _learned_bounds(
    spec: ModelSpec, thresholds: LearnedThresholds
) -> tuple[list[tuple[str, float]], float, float]:
    """The learned rule's levels (lowest first), the score at which it fires (the lowest level's)
    and the score it holds to while active (that less its deadband, on the quiet side)."""
    levels = thresholds.ordered()
    deadband = spec.alert_policy.learned.deadband_ratio
    if thresholds.direction == "above":
        lowest = levels[0][1]
        return levels, lowest, lowest - abs(lowest) * deadband
    lowest = max(v for _, v in levels)
    return levels, lowest, lowest + abs(lowest) * deadband


class _SmallPolicy(NamedTuple):
    """What the small path (:func:`_evaluate_rows`) needs of an alert policy and the learned
    thresholds, worked out once per spec and thresholds (by identity; both are frozen)."""

    spec: ModelSpec
    thresholds: LearnedThresholds
    #: per expert rule: the rule, its compiled flags, and the features, thresholds and message
    #: its alerts carry (:func:`_rule_facts`)
    experts: list[tuple[ExpertRule, _RuleRows, tuple[str, ...], dict[str, float], str]]
    #: the learned rule's levels (lowest first), the score it fires at and the one it holds to
    #: (:func:`_learned_bounds`), its thresholds and message; ``None``: not enabled
    learned: tuple[list[tuple[str, float]], float, float, dict[str, float], str] | None


#: Per learned thresholds object: the small path's plan (:class:`_SmallPolicy`).
_SMALL_POLICIES: IdentityCache[LearnedThresholds, _SmallPolicy] = IdentityCache()


def _small_policy(spec: ModelSpec, thresholds: LearnedThresholds) -> _SmallPolicy:
    plan = _SMALL_POLICIES.get(thresholds, lambda t: _make_small_policy(spec, t))
    if plan.spec is not spec:  # (the same thresholds under another spec: rare)
        plan = _make_small_policy(spec, thresholds)
        _SMALL_POLICIES.put(thresholds, plan)
    return plan


def _make_small_policy(spec: ModelSpec, thresholds: LearnedThresholds) -> _SmallPolicy:
    policy = spec.alert_policy
    experts = [(rule, _rule_rows(rule), *_rule_facts(rule)) for rule in policy.rules]
    learned = None
    if policy.learned.enabled:
        levels, lowest, hold_at = _learned_bounds(spec, thresholds)
        learned = (
            levels,
            lowest,
            hold_at,
            {f"score.{k}": v for k, v in levels},
            thresholds.method or "learned from data",
        )
    return _SmallPolicy(spec, thresholds, experts, learned)


def _expert_rows(
    plan: tuple[ExpertRule, _RuleRows, tuple[str, ...], dict[str, float], str],
    fire: list[bool],
    values: Sequence[Sequence[float]],
    modes: Sequence[str],
    clear_after: int,
) -> _CompiledRows:
    """:func:`_compile_expert` for a few rows, from the rule's flags (:func:`_rule_rows`)."""
    rule, compiled, features, thresholds, message = plan
    return _CompiledRows(
        rule_id=rule.id,
        source="expert",
        fire=fire,
        hold_rows=lambda: compiled.hold(*values, modes),
        severity=[rule.severity] * len(fire),
        for_consecutive=rule.for_consecutive,
        clear_after=clear_after,
        features=features,
        thresholds=dict(thresholds),
        message=message,
    )


def _learned_rows(
    spec: ModelSpec,
    plan: tuple[list[tuple[str, float]], float, float, dict[str, float], str],
    direction: str,
    score: Sequence[float],
    fire: list[bool],
) -> _CompiledRows:
    """:func:`_compile_learned` for a few rows (``fire``: the scores at or past the lowest level)."""
    levels, _, hold_at, thresholds, message = plan
    severity: list[str | None] = [None] * len(score)
    if direction == "above":
        hold = [s >= hold_at for s in score]
        for level, value in levels:
            for i, s in enumerate(score):
                if s >= value:
                    severity[i] = level
    else:
        hold = [s <= hold_at for s in score]
        for level, value in levels:
            for i, s in enumerate(score):
                if s <= value:
                    severity[i] = level
    for i, h in enumerate(hold):
        if h and severity[i] is None:
            severity[i] = levels[0][0]
    return _CompiledRows(
        rule_id=LEARNED_RULE_ID,
        source="learned",
        fire=fire,
        hold_rows=lambda: [h or f for h, f in zip(hold, fire, strict=True)],
        severity=severity,
        for_consecutive=spec.alert_policy.learned.for_consecutive,
        clear_after=spec.alert_policy.clear_after,
        features=(),
        thresholds=dict(thresholds),
        message=message,
    )


def _compile_learned(spec: ModelSpec, thresholds: LearnedThresholds, score: FloatArray) -> _Compiled:
    policy = spec.alert_policy.learned
    levels, lowest, hold_at = _learned_bounds(spec, thresholds)
    severity = _filled(len(score), None)
    if thresholds.direction == "above":
        fire = score >= lowest
        hold = score >= hold_at
        for level, value in levels:
            severity[score >= value] = level
    else:
        fire = score <= lowest
        hold = score <= hold_at
        for level, value in levels:
            severity[score <= value] = level
    severity[hold & (severity == None)] = levels[0][0]  # noqa: E711 - elementwise comparison
    return _Compiled(
        rule_id=LEARNED_RULE_ID,
        source="learned",
        fire=fire,
        hold=hold | fire,
        severity=severity,
        for_consecutive=policy.for_consecutive,
        clear_after=spec.alert_policy.clear_after,
        features=(),
        thresholds={f"score.{k}": v for k, v in levels},
        message=thresholds.method or "learned from data",
    )


def _contributors(
    spec: ModelSpec,
    signature: Signature,
    matrix_row: FloatArray | None,
    contrib_row: FloatArray | None,
    top: int,
) -> list[Contributor]:
    features = signature.features
    if contrib_row is not None:
        weights = np.abs(contrib_row)
    elif matrix_row is not None and signature.feature_stats is not None:
        mean = np.asarray(signature.feature_stats.mean)
        std = np.maximum(np.asarray(signature.feature_stats.std), 1e-12)
        weights = np.abs((matrix_row - mean) / std)
    else:
        return []
    total = float(weights.sum()) or 1.0
    order = np.argsort(-weights, kind="stable")[:top]
    return [
        Contributor(
            feature=features[i],
            sensors=spec.feature_sensors(features[i]),
            share=round(float(weights[i]) / total, 4),
            value=float(matrix_row[i]) if matrix_row is not None else float("nan"),
        )
        for i in order
    ]


def _alert_id(device: str, rule_id: str, started_at: str) -> str:
    return hashlib.sha256(f"{device}|{rule_id}|{started_at}".encode()).hexdigest()[:24]


def evaluate_alerts(
    *,
    spec: ModelSpec,
    signature: Signature,
    thresholds: LearnedThresholds,
    model_version: str,
    columns: Mapping[str, FloatArray],
    matrix: FloatArray,
    score: FloatArray,
    contributions: FloatArray | None,
    devices: Sequence[str],
    timestamps: FloatArray,
    modes: Sequence[str | None],
    late: BoolArray,
    identity: Sequence[Mapping[str, str | None]] | None = None,
    states: Mapping[str, AlertState] | None = None,
) -> AlertEvaluation:
    """Evaluate rules and learned thresholds for a batch of scored rows.

    Parameters
    ----------
    spec, signature, thresholds, model_version
        The deployed model (from its bundle).
    columns
        Every named feature column (from :func:`zaindari.features.compute_features`).
    matrix, score, contributions
        The model input and outputs, one row per reading.
    devices, timestamps, modes, late
        Per row: device id, epoch seconds, operating mode, late flag.
    identity
        Per row: ``asset``, ``line``, ``site`` to copy onto alerts.
    states
        Each device's alert state before the batch.

    Returns
    -------
    AlertEvaluation
        Alerts (raised, escalated, resolved), per row the rules whose condition held and the
        worst severity, and every device's state after the batch.
    """
    n = len(score)
    if n <= SMALL_ALERTS:
        return _evaluate_rows(
            spec=spec,
            signature=signature,
            thresholds=thresholds,
            model_version=model_version,
            columns=columns,
            matrix=matrix,
            score=score,
            contributions=contributions,
            devices=devices,
            timestamps=timestamps,
            modes=modes,
            late=late,
            identity=identity,
            states=states,
        )
    policy = spec.alert_policy
    mode_arr = np.array([m if m is not None else "" for m in modes], dtype=object)
    with np.errstate(invalid="ignore"):  # one context for every rule (nan features compare false)
        compiled = [_compile_expert(r, columns, mode_arr, policy.clear_after) for r in policy.rules]
    if policy.learned.enabled:
        compiled.append(_compile_learned(spec, thresholds, score))

    row_rules: list[list[str]] = [[] for _ in range(n)]
    row_severity: list[str | None] = [None] * n
    for c in compiled:
        fired = np.flatnonzero(c.fire)
        # Python ints and objects of the firing rows only (numpy item access costs ~0.1 us a time)
        _mark(
            row_rules, row_severity, c.rule_id, zip(fired.tolist(), c.severity[fired].tolist(), strict=True)
        )

    out_states = _copied(states)
    alerts: list[Alert] = []
    for_device = _emitter(
        alerts,
        spec,
        signature,
        model_version,
        columns,
        matrix,
        score,
        contributions,
        timestamps,
        mode_arr,
        identity,
    )
    device_arr = np.asarray(devices, dtype=object)
    order = np.lexsort((timestamps, device_arr.astype(str))) if n else np.zeros(0, dtype=np.intp)
    order = order[~late[order]]
    boundaries = np.flatnonzero(device_arr[order][1:] != device_arr[order][:-1]) + 1
    for rows in np.split(order, boundaries) if len(order) else []:
        device = str(device_arr[rows[0]])
        emit = for_device(device)
        state = out_states.setdefault(device, AlertState())
        row_list: list[int] | None = None
        for c in compiled:
            rule_state = state.rules.get(c.rule_id) or RuleState()
            device_fire = c.fire[rows]
            if rule_state.is_idle() and not device_fire.any():
                continue
            if row_list is None:
                row_list = rows.tolist()
            # the device's rows as Python lists, once per rule that walks them
            fire, hold, severity = device_fire.tolist(), c.hold[rows].tolist(), c.severity[rows].tolist()
            _walk_rule(state, rule_state, c, row_list, fire, hold, severity, timestamps, emit)
    alerts.sort(key=lambda a: (a.timestamp, a.device_id, a.rule_id))
    return AlertEvaluation(alerts=alerts, row_rules=row_rules, row_severity=row_severity, states=out_states)


def _evaluate_rows(
    *,
    spec: ModelSpec,
    signature: Signature,
    thresholds: LearnedThresholds,
    model_version: str,
    columns: Mapping[str, FloatArray],
    matrix: FloatArray,
    score: FloatArray,
    contributions: FloatArray | None,
    devices: Sequence[str],
    timestamps: FloatArray,
    modes: Sequence[str | None],
    late: BoolArray,
    identity: Sequence[Mapping[str, str | None]] | None,
    states: Mapping[str, AlertState] | None,
) -> AlertEvaluation:
    """:func:`evaluate_alerts` for a few rows, on Python lists: the same steps in the same order
    (rules compiled, per-row flags, each device's rows walked in time order). A rule no row fires
    and no device of the group holds a state of is left out (its walk would change nothing)."""
    n = len(score)
    policy = spec.alert_policy
    plan = _small_policy(spec, thresholds)
    mode_list = [m if m is not None else "" for m in modes]
    lists: dict[str, list[float]] = {}

    def column(name: str) -> list[float]:
        values = lists.get(name)
        if values is None:
            values = lists[name] = columns[name].tolist()
        return values

    # each rule's fire flags, and whether any row fires it (usually none)
    fires: list[list[bool]] = []
    rule_values: list[list[list[float]]] = []
    for _, flags, _, _, _ in plan.experts:
        values = [column(name) for name in flags.columns]
        rule_values.append(values)
        fires.append(flags.fire(*values, mode_list))
    score_list: list[float] = score.tolist()
    if plan.learned is not None:
        lowest = plan.learned[1]
        if thresholds.direction == "above":
            fires.append([s >= lowest for s in score_list])
        else:
            fires.append([s <= lowest for s in score_list])
    firing = [True in fire for fire in fires]
    rule_ids = [rule.id for rule, _, _, _, _ in plan.experts]
    if plan.learned is not None:
        rule_ids.append(LEARNED_RULE_ID)
    held = {rule_id for s in (states or {}).values() for rule_id in s.rules}  # rules in a state
    compiled: list[_CompiledRows | None] = []
    for k, (rule_id, fires_any) in enumerate(zip(rule_ids, firing, strict=True)):
        if not fires_any and rule_id not in held:
            compiled.append(None)
        elif k < len(plan.experts):
            compiled.append(
                _expert_rows(plan.experts[k], fires[k], rule_values[k], mode_list, policy.clear_after)
            )
        else:
            assert plan.learned is not None
            compiled.append(_learned_rows(spec, plan.learned, thresholds.direction, score_list, fires[k]))

    row_rules: list[list[str]] = [[] for _ in range(n)]
    row_severity: list[str | None] = [None] * n
    for c, fires_any in zip(compiled, firing, strict=True):
        if fires_any and c is not None:
            _mark(
                row_rules,
                row_severity,
                c.rule_id,
                ((i, sev) for i, (fired, sev) in enumerate(zip(c.fire, c.severity, strict=True)) if fired),
            )

    out_states = _copied(states)
    live = [(c, fires_any) for c, fires_any in zip(compiled, firing, strict=True) if c is not None]
    alerts: list[Alert] = []
    if not live:  # nothing fires, no state to walk: every device's state as it was, a device
        # new to them with an empty one (as the numpy path gives it)
        for device, is_late in zip(devices, late.tolist(), strict=True):
            if not is_late:
                out_states.setdefault(str(device), AlertState())
        return AlertEvaluation(
            alerts=alerts, row_rules=row_rules, row_severity=row_severity, states=out_states
        )
    for_device = _emitter(
        alerts,
        spec,
        signature,
        model_version,
        columns,
        matrix,
        score,
        contributions,
        timestamps,
        mode_list,
        identity,
    )
    device_of = [str(d) for d in devices]
    stamps = timestamps.tolist()
    late_rows = late.tolist()
    # lexsort's order (device, then time, stable), late rows left out, cut where the device changes
    order = [i for i in sorted(range(n), key=lambda i: (device_of[i], stamps[i])) if not late_rows[i]]
    begin = 0
    while begin < len(order):
        device = device_of[order[begin]]
        emit = None
        end = begin + 1
        while end < len(order) and device_of[order[end]] == device:
            end += 1
        rows = order[begin:end]
        begin = end
        state = out_states.setdefault(device, AlertState())
        for c, fires_any in live:
            known = state.rules.get(c.rule_id)
            fire = c.fire
            device_fire = [fire[i] for i in rows]
            if (known is None or (not known.active and known.streak == 0)) and not (
                fires_any and True in device_fire
            ):
                continue  # idle and not firing: its walk would change nothing
            if emit is None:
                emit = for_device(device)
            rule_state = known or RuleState()
            hold, severity = c.hold, c.severity
            _walk_rule(
                state, rule_state, c, rows, device_fire, [hold[i] for i in rows],
                [severity[i] for i in rows], timestamps, emit,
            )  # fmt: skip
    alerts.sort(key=lambda a: (a.timestamp, a.device_id, a.rule_id))
    return AlertEvaluation(alerts=alerts, row_rules=row_rules, row_severity=row_severity, states=out_states)


def _mark(
    row_rules: list[list[str]],
    row_severity: list[str | None],
    rule_id: str,
    firing: Iterable[tuple[int, str | None]],
) -> None:
    """Each firing row (position, severity) names the rule and keeps its highest severity."""
    for i, sev in firing:
        row_rules[i].append(rule_id)
        current = row_severity[i]
        if sev is not None and (current is None or SEVERITY_RANK[sev] > SEVERITY_RANK[current]):
            row_severity[i] = sev


def _copied(states: Mapping[str, AlertState] | None) -> dict[str, AlertState]:
    """The devices' alert states, copied (the caller's are not changed)."""
    return {
        d: AlertState({k: RuleState(**vars(v)) for k, v in s.rules.items()} if s.rules else {})
        for d, s in (states or {}).items()
    }


_Emit = Callable[
    [Literal["raised", "escalated", "resolved"], RuleState, "_Compiled | _CompiledRows", int], None
]


def _emitter(
    alerts: list[Alert],
    spec: ModelSpec,
    signature: Signature,
    model_version: str,
    columns: Mapping[str, FloatArray],
    matrix: FloatArray,
    score: FloatArray,
    contributions: FloatArray | None,
    timestamps: FloatArray,
    modes: npt.NDArray[np.object_] | Sequence[str],
    identity: Sequence[Mapping[str, str | None]] | None,
) -> Callable[[str], _Emit]:
    """``for_device(device)(event, rule_state, c, i)`` appends that event's :class:`Alert` to ``alerts``."""

    def for_device(device: str) -> _Emit:
        def emit(
            event: Literal["raised", "escalated", "resolved"],
            rule_state: RuleState,
            c: _Compiled | _CompiledRows,
            i: int,
        ) -> None:
            alerts.append(
                _make_alert(
                    event,
                    rule_state,
                    c,
                    i,
                    device,
                    spec,
                    signature,
                    model_version,
                    columns,
                    matrix,
                    score,
                    contributions,
                    timestamps,
                    modes,
                    identity,
                )
            )

        return emit

    return for_device


def _walk_rule(
    state: AlertState,
    rule_state: RuleState,
    c: _Compiled | _CompiledRows,
    rows: Sequence[int],
    fire: Sequence[bool],
    hold: Sequence[bool],
    severity: Sequence[str | None],
    timestamps: FloatArray,
    emit: _Emit,
) -> None:
    """One rule's state machine over one device's ``rows`` (in time order; ``fire``, ``hold`` and
    ``severity`` aligned with them), its events emitted, its state kept in ``state`` (dropped
    when idle). Both alert paths (numpy and small groups) walk rules through here."""
    for i, fired, held, sev in zip(rows, fire, hold, severity, strict=True):
        if not fired and not rule_state.active and rule_state.streak == 0:
            continue  # idle and not firing: _step would leave it idle and emit nothing
        event = _step(rule_state, c, fired, held, sev, i, timestamps)
        if event is not None:
            emit(event, rule_state, c, i)
            if event == "resolved":
                rule_state = RuleState()
    if rule_state.is_idle():
        state.rules.pop(c.rule_id, None)
    else:
        state.rules[c.rule_id] = rule_state


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def _step(
    state: RuleState,
    c: _Compiled | _CompiledRows,
    fire: bool,
    hold: bool,
    sev: str | None,
    i: int,
    timestamps: FloatArray,
) -> Literal["raised", "escalated", "resolved"] | None:
    """Advance one rule on reading ``i`` (``fire``, ``hold``, ``sev``: the rule's row ``i``);
    returns the alert kind it emits, if any."""
    if not state.active:
        state.streak = state.streak + 1 if fire else 0
        if state.streak >= c.for_consecutive:
            state.active = True
            state.clear_streak = 0
            state.severity = str(sev)
            state.started_at = _iso(float(timestamps[i]))
            return "raised"
        return None
    if hold:
        state.clear_streak = 0
        if (
            sev is not None
            and state.severity is not None
            and SEVERITY_RANK[sev] > SEVERITY_RANK[state.severity]
        ):
            state.severity = str(sev)
            return "escalated"
        return None
    state.clear_streak += 1
    if state.clear_streak >= c.clear_after:
        return "resolved"
    return None


def _make_alert(
    kind: Literal["raised", "escalated", "resolved"],
    state: RuleState,
    c: _Compiled | _CompiledRows,
    i: int,
    device: str,
    spec: ModelSpec,
    signature: Signature,
    model_version: str,
    columns: Mapping[str, FloatArray],
    matrix: FloatArray,
    score: FloatArray,
    contributions: FloatArray | None,
    timestamps: FloatArray,
    modes: npt.NDArray[np.object_] | Sequence[str],
    identity: Sequence[Mapping[str, str | None]] | None,
) -> Alert:
    assert state.started_at is not None
    learned = spec.alert_policy.learned
    if c.source == "learned":
        contributors = _contributors(
            spec,
            signature,
            matrix[i],
            None if contributions is None else contributions[i],
            learned.top_contributors,
        )
        observed = {"score": float(score[i])}
        sensors = sorted({s for ct in contributors for s in ct.sensors})
    else:
        contributors = []
        observed = {f: float(columns[f][i]) for f in c.features if f in columns}
        for f in c.features:
            rate = columns.get(f"{f}__rate")
            if rate is not None:
                observed[f"{f}.rate_per_second"] = float(rate[i])
        sensors = sorted({s for f in c.features for s in spec.feature_sensors(f)})
    ident = dict(identity[i]) if identity is not None else {}
    if state.alert_id is None:
        state.alert_id = _alert_id(device, c.rule_id, state.started_at)
    prefix = {"raised": "", "escalated": "escalated: ", "resolved": "resolved: "}[kind]
    message = c.message
    if c.source == "learned":
        level = state.severity or "warning"
        message = (
            f"model score {float(score[i]):.4g} vs learned {level} threshold "
            f"{c.thresholds.get(f'score.{level}', float('nan')):.4g} ({c.message})"
        )
    return Alert(
        alert_id=state.alert_id,
        kind=kind,
        device_id=device,
        asset=ident.get("asset"),
        line=ident.get("line"),
        site=ident.get("site"),
        rule_id=c.rule_id,
        source=c.source,
        severity=state.severity or "warning",
        message=f"{prefix}{message}",
        timestamp=_iso(float(timestamps[i])),
        started_at=state.started_at,
        observed={k: round(v, 6) for k, v in observed.items()},
        thresholds=c.thresholds,
        score=float(score[i]),
        top_contributors=contributors,
        sensors=sensors,
        mode=str(modes[i]) or None,
        model_version=model_version,
        rule_set_version=spec.alert_policy.rule_set_version,
    )
