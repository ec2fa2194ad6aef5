"""The ``training`` section of a model spec, validated: search grid, splits, thresholds, parity.

A spec keeps ``training`` as a free mapping (:class:`zaindari.spec.ModelSpec`); the training job
reads it through :func:`training_settings`, which fills the defaults below and names any unknown
or invalid key. Nothing here imports pyspark, so a spec can be checked without Spark.

Defaults, per task:

* all tasks: ``validation_fraction`` 0.25 of the assets are held out (metrics, thresholds,
  parity); ``seed`` 42; the search holds out ``search.tune_fraction`` 0.25 of the *training*
  assets (``train_validation_split``) or uses ``search.folds`` asset-grouped folds
  (``cross_validation``); parity tolerance 1e-4 on up to 20,000 held-out rows.
* ``anomaly``: ``components`` grid ``[2, 3, 4, 5, 6]``; without a label the smallest ``k`` whose
  explained variance reaches ``explained_variance`` (0.9) wins, with a label the ``k`` with the
  best ROC AUC on the search's held-out assets; ``quantiles`` warning 0.995, critical 0.9995 of
  the validation score (healthy rows when a label exists).
* ``classification``: ``models`` gbt (``maxDepth`` 3, 5; ``maxIter`` 40), random_forest
  (``numTrees`` 60; ``maxDepth`` 6, 10), logistic_regression (``regParam`` 0, 0.01), scored by
  ROC AUC; ``target_precision`` 0.8 (warning) and ``critical_precision`` 0.95.
* ``regression``: ``models`` gbt, random_forest, linear_regression (same grids), scored by
  RMSE; ``levels`` warning 48, critical 12 (label units, hours for a derived RUL), direction
  ``below``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zaindari.spec import ModelSpec, Severity, SpecError
from zaindari.validation import validation_problems

__all__ = [
    "DEFAULT_MODELS",
    "ModelName",
    "ParitySettings",
    "SearchSettings",
    "TrainingSettings",
    "training_settings",
]

ModelName = Literal["gbt", "random_forest", "logistic_regression", "linear_regression"]

DEFAULT_MODELS: dict[str, dict[str, dict[str, list[Any]]]] = {
    "classification": {
        "gbt": {"maxDepth": [3, 5], "maxIter": [40]},
        "random_forest": {"numTrees": [60], "maxDepth": [6, 10]},
        "logistic_regression": {"regParam": [0.0, 0.01]},
    },
    "regression": {
        "gbt": {"maxDepth": [3, 5], "maxIter": [40]},
        "random_forest": {"numTrees": [60], "maxDepth": [6, 10]},
        "linear_regression": {"regParam": [0.0, 0.01]},
    },
}
_TASK_MODELS = {
    "classification": {"gbt", "random_forest", "logistic_regression"},
    "regression": {"gbt", "random_forest", "linear_regression"},
}


def _levels(**values: float) -> dict[Severity, float]:
    return {"warning": values["warning"], "critical": values["critical"]}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SearchSettings(_Strict):
    """How hyperparameters are chosen; every held-out part is a set of whole assets."""

    method: Literal["train_validation_split", "cross_validation"] = "train_validation_split"
    tune_fraction: float = Field(default=0.25, gt=0, lt=1)
    folds: int = Field(default=3, ge=2, le=20)
    metric: Literal["areaUnderROC", "areaUnderPR", "rmse", "mae"] | None = None
    parallelism: int = Field(default=1, ge=1, le=64)  # models fitted at once (cross_validation)


class ParitySettings(_Strict):
    """ONNX versus Spark on held-out rows: the largest absolute score difference allowed."""

    tolerance: float = Field(default=1e-4, gt=0)
    rows: int = Field(default=20_000, ge=10)


class TrainingSettings(_Strict):
    """Validated ``spec.training``; see the module docstring for the defaults."""

    validation_fraction: float = Field(default=0.25, gt=0, lt=1)
    seed: int = 42
    search: SearchSettings = Field(default_factory=SearchSettings)
    parity: ParitySettings = Field(default_factory=ParitySettings)
    # anomaly
    components: list[int] = Field(default=[2, 3, 4, 5, 6], min_length=1)
    explained_variance: float = Field(default=0.9, gt=0, le=1)
    fit_on: Literal["healthy", "all"] = "healthy"
    quantiles: dict[Severity, float] = Field(default_factory=lambda: _levels(warning=0.995, critical=0.9995))
    # classification and regression
    models: dict[ModelName, dict[str, list[Any]]] | None = None
    target_precision: float = Field(default=0.8, gt=0, le=1)
    critical_precision: float | None = Field(default=0.95, gt=0, le=1)
    levels: dict[Severity, float] = Field(default_factory=lambda: _levels(warning=48.0, critical=12.0))

    @model_validator(mode="after")
    def _sane(self) -> TrainingSettings:
        if any(k < 1 for k in self.components):
            raise ValueError("components: every k must be at least 1")
        if not self.quantiles or any(not 0 < q < 1 for q in self.quantiles.values()):
            raise ValueError("quantiles: each must be strictly between 0 and 1")
        if not self.levels:
            raise ValueError("levels: give at least one severity")
        for name, grid in (self.models or {}).items():
            for param, values in grid.items():
                if not isinstance(values, list) or not values:
                    raise ValueError(f"models.{name}.{param}: give a non-empty list of values")
        return self

    def candidate_models(self, task: str) -> dict[str, dict[str, list[Any]]]:
        """The model types and grids the search tries for ``task`` (the spec's or the defaults)."""
        models: dict[str, dict[str, list[Any]]] = (
            {str(k): v for k, v in self.models.items()} if self.models else DEFAULT_MODELS[task]
        )
        wrong = sorted(set(models) - _TASK_MODELS[task])
        if wrong:
            raise SpecError(
                f"training.models: {wrong} cannot be used for task {task!r}; "
                f"choose from {sorted(_TASK_MODELS[task])}"
            )
        return models


def training_settings(spec: ModelSpec) -> TrainingSettings:
    """Validate ``spec.training``.

    Raises
    ------
    SpecError
        Naming each unknown or invalid key.
    """
    try:
        settings = TrainingSettings.model_validate(spec.training)
    except ValidationError as exc:
        raise SpecError(f"invalid model spec: {validation_problems(exc, prefix='training.')}") from exc
    if spec.task in _TASK_MODELS:
        settings.candidate_models(spec.task)
    return settings
