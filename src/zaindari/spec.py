"""The model spec: the single description of a model's inputs, features, task, and alert policy.

Online scoring, file scoring and Spark training all read the same spec (YAML or JSON), so a feature
is defined once. Feature order is fixed by the spec: feature sensors in declared order, then
derived features, then window features (per window, per statistic, in declared order), then
``readings_since_start`` when enabled. See ``docs/MODEL_SPEC.md`` for a worked example.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from zaindari.expressions import Expr, ExpressionError, parse_expression
from zaindari.validation import CachedModel

__all__ = [
    "AlertPolicy",
    "AllOf",
    "AnyOf",
    "Condition",
    "DerivedFeature",
    "ExpertRule",
    "Identifiers",
    "LabelSpec",
    "LearnedPolicy",
    "ModelSpec",
    "RangeCondition",
    "RateCondition",
    "SensorSpec",
    "SpecError",
    "ThresholdCondition",
    "WindowFeature",
    "condition_features",
    "load_spec",
]

WindowStat = Literal["mean", "std", "min", "max", "slope", "ewm"]
Task = Literal["anomaly", "classification", "regression"]
Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


class SpecError(ValueError):
    """A model spec is invalid; the message names the offending entry."""


class _Strict(CachedModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SensorSpec(_Strict):
    """A raw sensor: its valid (physically plausible) range and whether the model reads it."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    feature: bool = True
    description: str | None = None

    @model_validator(mode="after")
    def _range_ordered(self) -> SensorSpec:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"sensor {self.name}: min {self.min} must be below max {self.max}")
        return self


class DerivedFeature(_Strict):
    """A feature computed from sensors of the same reading, e.g. ``torque * speed / 9549``."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
    expr: str
    unit: str | None = None
    description: str | None = None

    @cached_property
    def tree(self) -> Expr:
        return parse_expression(self.expr)

    @field_validator("expr")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            parse_expression(value)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from exc
        return value


class WindowFeature(_Strict):
    """Statistics over each device's last ``size`` readings of one sensor or derived feature.

    Partial windows (fewer than ``size`` readings seen) use what there is. ``std`` is the
    population standard deviation; ``slope`` is the least-squares slope per reading; ``ewm`` is an
    exponentially weighted mean over the window with weight ``(1 - alpha) ** age`` (age 0 = newest),
    normalised by the sum of the weights.
    """

    source: str
    size: int = Field(ge=2, le=1000)
    stats: tuple[WindowStat, ...] = Field(min_length=1)
    alpha: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _alpha_for_ewm(self) -> WindowFeature:
        if "ewm" in self.stats and self.alpha is None:
            raise ValueError(f"window on {self.source}: 'ewm' needs 'alpha'")
        if len(set(self.stats)) != len(self.stats):
            raise ValueError(f"window on {self.source}: a statistic is listed twice")
        return self

    def feature_name(self, stat: str) -> str:
        return f"{self.source}__{stat}_{self.size}"

    @property
    def feature_names(self) -> list[str]:
        return [self.feature_name(s) for s in self.stats]


# ----------------------------------------------------------------------------- alert policy


class ThresholdCondition(_Strict):
    """``feature op value``; while active, it holds until the value is ``deadband`` back inside."""

    feature: str
    op: Literal[">", ">=", "<", "<="]
    value: float
    deadband: float = Field(default=0.0, ge=0)


class RangeCondition(_Strict):
    """True when ``range`` (a feature) leaves ``[min, max]``."""

    range: str
    min: float
    max: float
    deadband: float = Field(default=0.0, ge=0)


class RateCondition(_Strict):
    """True when ``|d feature / dt|`` exceeds ``max_per_second`` (needs the previous reading)."""

    rate_of_change: str
    max_per_second: float = Field(gt=0)


class AllOf(_Strict):
    all: list[Condition] = Field(min_length=1)


class AnyOf(_Strict):
    any: list[Condition] = Field(min_length=1)


Condition = Annotated[
    ThresholdCondition | RangeCondition | RateCondition | AllOf | AnyOf,
    Field(union_mode="smart"),
]
AllOf.model_rebuild()
AnyOf.model_rebuild()


class ExpertRule(_Strict):
    """A plant expert's rule: a condition, how long it must hold, in which modes, and how bad it is."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    when: Condition
    severity: Severity = "warning"
    for_consecutive: int = Field(default=1, ge=1)
    modes: tuple[str, ...] | None = None
    message: str | None = None


class LearnedPolicy(_Strict):
    """How the model's score and its learned thresholds (``thresholds.json``) raise alerts."""

    enabled: bool = True
    for_consecutive: int = Field(default=1, ge=1)
    deadband_ratio: float = Field(default=0.1, ge=0, lt=1)
    top_contributors: int = Field(default=3, ge=1, le=20)


class AlertPolicy(_Strict):
    """Expert rules plus the learned thresholds, with hysteresis.

    An alert is raised once when its condition has held ``for_consecutive`` readings, and resolved
    once when it has been clear for ``clear_after`` readings.
    """

    rule_set_version: str = "1"
    rules: list[ExpertRule] = Field(default_factory=list)
    learned: LearnedPolicy = Field(default_factory=LearnedPolicy)
    clear_after: int = Field(default=3, ge=1)

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: list[ExpertRule]) -> list[ExpertRule]:
        ids = [r.id for r in rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"rule ids must be unique, repeated: {dupes}")
        if "model_score" in ids:
            raise ValueError("rule id 'model_score' is reserved for the learned thresholds")
        return rules


# ----------------------------------------------------------------------------- training side


class Identifiers(_Strict):
    """Which columns identify a row in a user's own table (training and file scoring)."""

    asset: str = "device_id"
    time: str = "timestamp"
    mode: str | None = "mode"


class LabelSpec(_Strict):
    """The training label: an existing column, or one derived from run-to-failure data."""

    column: str
    derive: Literal["none", "remaining_useful_life", "failure_within"] = "none"
    failure_column: str | None = None
    cap: float | None = Field(default=None, gt=0)
    horizon: float | None = Field(default=None, gt=0)


# ----------------------------------------------------------------------------- the spec


class ModelSpec(_Strict):
    """A model's contract with the data. See the module docstring for feature order."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,62}$")
    task: Task = "anomaly"
    description: str | None = None
    sensors: list[SensorSpec] = Field(min_length=1)
    derived: list[DerivedFeature] = Field(default_factory=list)
    windows: list[WindowFeature] = Field(default_factory=list)
    readings_since_start: bool = False
    identifiers: Identifiers = Field(default_factory=Identifiers)
    label: LabelSpec | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    alert_policy: AlertPolicy = Field(default_factory=AlertPolicy)

    @model_validator(mode="after")
    def _references_resolve(self) -> ModelSpec:
        sensor_names = [s.name for s in self.sensors]
        repeated = sorted({n for n in sensor_names if sensor_names.count(n) > 1})
        if repeated:
            raise ValueError(f"sensor names must be unique, repeated: {repeated}")
        known = set(sensor_names)
        for d in self.derived:
            missing = d.tree.names() - known
            if missing:
                raise ValueError(f"derived feature {d.name} reads unknown names {sorted(missing)}")
            if d.name in known:
                raise ValueError(f"derived feature {d.name} clashes with another name")
            known.add(d.name)
        for w in self.windows:
            if w.source not in known:
                raise ValueError(f"window source {w.source!r} is not a sensor or derived feature")
        all_names = self.column_names
        clashes = sorted({n for n in all_names if all_names.count(n) > 1})
        if clashes:
            raise ValueError(f"two window definitions produce the same feature names {clashes}")
        if not self.model_features:
            raise ValueError("the spec defines no model feature")
        for rule in self.alert_policy.rules:
            for ref in condition_features(rule.when):
                if ref not in all_names:
                    raise ValueError(f"rule {rule.id} reads unknown feature {ref!r}")
        for source in self.rate_sources:
            if source not in known:
                raise ValueError(f"rate_of_change on {source!r}: only a sensor or derived feature has a rate")
        if self.task != "anomaly" and self.label is None:
            raise ValueError(f"task {self.task!r} needs a 'label'")
        return self

    # -- names -----------------------------------------------------------------------------

    @property
    def sensor_names(self) -> list[str]:
        return [s.name for s in self.sensors]

    # (window_sources, history_size and rate_sources are asked for by every scoring call: worked
    # out once per spec, a frozen model, as feature_sensors is)

    @property
    def window_sources(self) -> list[str]:
        """Columns whose history must be kept per device (deduplicated, declared order)."""
        return list(self._window_sources)

    @cached_property
    def _window_sources(self) -> tuple[str, ...]:
        out: list[str] = []
        for w in self.windows:
            if w.source not in out:
                out.append(w.source)
        for source in self._rate_sources:
            if source not in out:
                out.append(source)
        return tuple(out)

    @cached_property
    def history_size(self) -> int:
        """Readings of history a device's state must keep (largest window minus the current one)."""
        sizes = [w.size - 1 for w in self.windows]
        if self._rate_sources:
            sizes.append(1)
        return max(sizes, default=0)

    @property
    def rate_sources(self) -> list[str]:
        return list(self._rate_sources)

    @cached_property
    def _rate_sources(self) -> tuple[str, ...]:
        out: list[str] = []
        for rule in self.alert_policy.rules:
            for ref in _condition_rates(rule.when):
                if ref not in out:
                    out.append(ref)
        return tuple(out)

    @property
    def model_features(self) -> list[str]:
        """The model's input columns, in order."""
        names = [s.name for s in self.sensors if s.feature]
        names += [d.name for d in self.derived]
        for w in self.windows:
            names += w.feature_names
        if self.readings_since_start:
            names.append("readings_since_start")
        return names

    @property
    def column_names(self) -> list[str]:
        """Every named column the features produce: all sensors, derived, windows, counters."""
        names = list(self.sensor_names) + [d.name for d in self.derived]
        for w in self.windows:
            names += w.feature_names
        if self.readings_since_start:
            names.append("readings_since_start")
        return names

    def feature_sensors(self, feature: str) -> list[str]:
        """The raw sensors a feature is computed from (for alert explanations); worked out once
        per feature (the alert policy asks for each alert it explains)."""
        known = self._feature_sources.get(feature)
        if known is None:
            known = self._feature_sources[feature] = self._sensors_of(feature)
        return list(known)

    @cached_property
    def _feature_sources(self) -> dict[str, list[str]]:
        return {}

    def _sensors_of(self, feature: str) -> list[str]:
        sensors = set(self.sensor_names)
        if feature in sensors:
            return [feature]
        for d in self.derived:
            if d.name == feature:
                return sorted(d.tree.names() & sensors)
        for w in self.windows:
            if feature in w.feature_names:
                return self._sensors_of(w.source)
        return []

    # -- io --------------------------------------------------------------------------------

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    def to_json(self) -> str:
        """The spec as JSON, which is also YAML. JSON has no infinity: a bound of ``.inf`` comes
        out as ``null`` (see :meth:`to_bundle_text`)."""
        return self.model_dump_json(indent=2, exclude_none=True)

    def to_bundle_text(self) -> str:
        """What a bundle's ``spec.yaml`` holds: JSON (which is YAML), so that a scoring function
        reads it without loading a YAML parser (~7 ms of a cold start), unless JSON would change
        the spec (an infinite bound): then YAML, which keeps ``.inf``."""
        text = self.to_json()
        try:
            same = load_spec(text) == self
        except SpecError:  # e.g. a range rule's infinite bound read back as null
            same = False
        return text if same else self.to_yaml()


def condition_features(cond: Any, *, rate_suffix: str = "") -> list[str]:
    """Every feature a rule condition reads, in order (repeats kept); a rate condition's feature
    with ``rate_suffix`` appended (``"__rate"``: the column of its rates the alert policy reads)."""
    if isinstance(cond, ThresholdCondition):
        return [cond.feature]
    if isinstance(cond, RangeCondition):
        return [cond.range]
    if isinstance(cond, RateCondition):
        return [cond.rate_of_change + rate_suffix]
    if isinstance(cond, AllOf):
        return [f for c in cond.all for f in condition_features(c, rate_suffix=rate_suffix)]
    if isinstance(cond, AnyOf):
        return [f for c in cond.any for f in condition_features(c, rate_suffix=rate_suffix)]
    return []


def _condition_rates(cond: Any) -> list[str]:
    if isinstance(cond, RateCondition):
        return [cond.rate_of_change]
    if isinstance(cond, AllOf):
        return [f for c in cond.all for f in _condition_rates(c)]
    if isinstance(cond, AnyOf):
        return [f for c in cond.any for f in _condition_rates(c)]
    return []


def _parse_yaml(text: str) -> Any:
    import yaml  # only for specs written as YAML: bundles hold JSON (ModelSpec.to_json)

    # libyaml's safe loader (in PyYAML's wheels) parses a spec ~10x faster than the pure-Python
    # one: ~15 ms of a Lambda cold start. Both build the same plain data.
    loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise SpecError(f"model spec is not valid YAML/JSON: {exc}") from exc


def _parse_json_or_yaml(text: str) -> Any:
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass  # JSON with YAML in it (a comment added by hand): YAML reads both
    return _parse_yaml(text)


def load_spec(source: str | Path | dict[str, Any]) -> ModelSpec:
    """Load and validate a spec from a YAML/JSON file path, YAML/JSON text, or a mapping.

    Raises
    ------
    SpecError
        With every validation problem, each naming its entry.
    """
    from pydantic import ValidationError

    from zaindari.validation import validation_problems

    data: Any
    if isinstance(source, dict):
        data = source
    else:
        text = source.read_text() if isinstance(source, Path) else source
        if isinstance(source, str) and "\n" not in source and Path(source).is_file():
            text = Path(source).read_text()
        data = _parse_json_or_yaml(text)
    if not isinstance(data, dict):
        raise SpecError("model spec must be a mapping at the top level")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"invalid model spec: {validation_problems(exc, whole='spec')}") from exc
