"""Task schemas: a clinical task described as data, not code.

A task schema (``conf/task/<name>.yaml``) lists the features a hospital must provide (with type,
unit, valid range or categories, and whether they are required), the prediction target, the model
family and the metrics. Every layer of medfed reads the schema instead of hard-coding columns, so a
user adds a task by writing a YAML file.

The same YAML file is the Hydra config group ``task=<name>``; :func:`task_from_dict` turns the
composed ``cfg.task`` (a plain dict) into a validated, immutable :class:`TaskSchema`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml

FeatureKind = Literal["numeric", "binary", "categorical"]
TargetKind = Literal["binary", "multiclass", "continuous"]

MODEL_FAMILIES = ("logreg", "mlp", "glm")
LOSSES = ("bce", "cross_entropy", "mse_log", "tweedie")
KNOWN_METRICS = {
    "binary": ("accuracy", "auroc", "sensitivity", "specificity", "loss"),
    "multiclass": ("accuracy", "macro_f1", "top2_accuracy", "loss"),
    "continuous": ("mae", "rmse", "r2", "calibration", "loss"),
}
_DEFAULT_LOSS = {"binary": "bce", "multiclass": "cross_entropy", "continuous": "mse_log"}


class SchemaError(ValueError):
    """A task schema is malformed; the message names the schema and the offending key."""


@dataclass(frozen=True)
class Feature:
    """One input column of a task.

    ``low``/``high`` bound valid numeric values in ``unit`` (inclusive; ``None`` = unbounded).
    Binary features take the values 0 and 1. Categorical features take one of ``categories``.
    """

    name: str
    kind: FeatureKind
    unit: str | None = None
    low: float | None = None
    high: float | None = None
    categories: tuple[str, ...] = ()
    required: bool = True
    description: str = ""


@dataclass(frozen=True)
class Target:
    """The prediction target: binary (0/1), multiclass (index into ``classes``) or continuous."""

    name: str
    kind: TargetKind
    classes: tuple[str, ...] = ()
    unit: str | None = None
    low: float | None = None
    high: float | None = None

    @property
    def n_outputs(self) -> int:
        """Number of model outputs: one logit/value, or one logit per class."""
        return len(self.classes) if self.kind == "multiclass" else 1


@dataclass(frozen=True)
class ModelSpec:
    """Model family and loss. ``hidden`` are MLP layer widths; ``tweedie_power`` in (1, 2)."""

    family: str = "mlp"
    hidden: tuple[int, ...] = (32,)
    loss: str = "bce"
    tweedie_power: float = 1.5


@dataclass(frozen=True)
class TaskSchema:
    """A validated, immutable task description (see the module docstring)."""

    name: str
    features: tuple[Feature, ...]
    target: Target
    model: ModelSpec
    metrics: tuple[str, ...]
    primary_metric: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def feature(self, name: str) -> Feature:
        """Return the feature called ``name`` (KeyError with the known names otherwise)."""
        for feat in self.features:
            if feat.name == name:
                return feat
        known = ", ".join(f.name for f in self.features)
        raise KeyError(f"task '{self.name}' has no feature '{name}' (features: {known})")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger primary metric is better (False for error metrics)."""
        return self.primary_metric not in ("mae", "rmse", "loss")


_TOP_KEYS = {
    "name",
    "description",
    "features",
    "target",
    "model",
    "metrics",
    "primary_metric",
    "synthetic",
    "training",
}  # training: the task's defaults (conf/config.yaml reads them)
# training: the task's defaults; its dpsgd block applies only under privacy=dpsgd (conf/config.yaml)
_TRAINING_KEYS = {
    "optimizer",
    "lr",
    "lr_schedule",
    "batch_size",
    "rounds",
    "max_grad_norm",
    "dpsgd",
}
_DPSGD_KEYS = {
    "optimizer",
    "lr",
    "lr_schedule",
    "batch_size",
    "rounds",
    "local_epochs",
    "max_grad_norm",
    "max_step_noise",
}
_FEATURE_KEYS = {"name", "type", "unit", "range", "categories", "required", "description"}
_TARGET_KEYS = {"name", "type", "classes", "unit", "range"}
_MODEL_KEYS = {"family", "hidden", "loss", "tweedie_power"}


def _check_keys(where: str, got: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(got) - allowed)
    if unknown:
        raise SchemaError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _range(where: str, value: Any) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise SchemaError(f"{where}: 'range' must be a list [low, high] (use null for no bound)")
    low, high = (None if v is None else float(v) for v in value)
    if low is not None and high is not None and not low <= high:
        raise SchemaError(f"{where}: range low {low} is above high {high}")
    if any(v is not None and not math.isfinite(v) for v in (low, high)):
        raise SchemaError(f"{where}: range bounds must be finite numbers or null")
    return low, high


def _feature(src: str, i: int, raw: Any) -> Feature:
    if not isinstance(raw, dict) or "name" not in raw:
        raise SchemaError(f"{src}: features[{i}] must be a mapping with at least 'name' and 'type'")
    where = f"{src}: feature '{raw['name']}'"
    _check_keys(where, raw, _FEATURE_KEYS)
    kind = raw.get("type")
    if kind not in ("numeric", "binary", "categorical"):
        raise SchemaError(f"{where}: type must be numeric, binary or categorical, got {kind!r}")
    cats = tuple(str(c) for c in raw.get("categories") or ())
    if kind == "categorical" and len(cats) < 2:
        raise SchemaError(f"{where}: a categorical feature needs at least two 'categories'")
    if kind != "categorical" and cats:
        raise SchemaError(f"{where}: only categorical features take 'categories'")
    if len(set(cats)) != len(cats):
        raise SchemaError(f"{where}: categories are not unique")
    low, high = _range(where, raw.get("range"))
    return Feature(
        name=str(raw["name"]),
        kind=kind,
        unit=raw.get("unit"),
        low=low,
        high=high,
        categories=cats,
        required=bool(raw.get("required", True)),
        description=str(raw.get("description", "")),
    )


def _target(src: str, raw: Any) -> Target:
    if not isinstance(raw, dict) or "name" not in raw:
        raise SchemaError(f"{src}: 'target' must be a mapping with 'name' and 'type'")
    _check_keys(f"{src}: target", raw, _TARGET_KEYS)
    kind = raw.get("type")
    if kind not in ("binary", "multiclass", "continuous"):
        raise SchemaError(
            f"{src}: target type must be binary, multiclass or continuous, got {kind!r}"
        )
    classes = tuple(str(c) for c in raw.get("classes") or ())
    if kind == "multiclass" and len(classes) < 3:
        raise SchemaError(
            f"{src}: a multiclass target needs at least three 'classes' (use type: binary for two)"
        )
    if kind == "binary" and classes and len(classes) != 2:
        raise SchemaError(f"{src}: a binary target has exactly two classes [negative, positive]")
    low, high = _range(f"{src}: target", raw.get("range"))
    return Target(
        name=str(raw["name"]), kind=kind, classes=classes, unit=raw.get("unit"), low=low, high=high
    )


def _model(src: str, raw: Any, target: Target) -> ModelSpec:
    raw = dict(raw or {})
    _check_keys(f"{src}: model", raw, _MODEL_KEYS)
    family = raw.get("family", "mlp")
    if family not in MODEL_FAMILIES:
        raise SchemaError(f"{src}: model.family must be one of {MODEL_FAMILIES}, got {family!r}")
    loss = raw.get("loss", _DEFAULT_LOSS[target.kind])
    allowed = {
        "binary": ("bce",),
        "multiclass": ("cross_entropy",),
        "continuous": ("mse_log", "tweedie"),
    }[target.kind]
    if loss not in allowed:
        raise SchemaError(
            f"{src}: model.loss {loss!r} does not fit a {target.kind} target (use one of {allowed})"
        )
    if family == "logreg" and target.kind == "continuous":
        raise SchemaError(
            f"{src}: model.family logreg needs a binary or multiclass target; "
            "use glm for a continuous one"
        )
    if family == "glm" and target.kind != "continuous":
        raise SchemaError(f"{src}: model.family glm is for continuous targets; use logreg")
    hidden = tuple(int(h) for h in raw.get("hidden", (32,)) or ())
    if any(h <= 0 for h in hidden):
        raise SchemaError(f"{src}: model.hidden widths must be positive integers")
    power = float(raw.get("tweedie_power", 1.5))
    if not 1.0 < power < 2.0:
        raise SchemaError(f"{src}: model.tweedie_power must lie strictly between 1 and 2")
    return ModelSpec(family=family, hidden=hidden, loss=loss, tweedie_power=power)


def _check_training(source: str, raw: dict[str, Any]) -> None:
    """Refuse unknown keys in ``training`` and ``training.dpsgd`` (a typo would be ignored)."""
    training = raw.get("training") or {}
    if not isinstance(training, dict) or not isinstance(training.get("dpsgd") or {}, dict):
        raise SchemaError(f"{source}: 'training' and 'training.dpsgd' must be mappings")
    _check_keys(f"{source}: training", training, _TRAINING_KEYS)
    _check_keys(f"{source}: training.dpsgd", training.get("dpsgd") or {}, _DPSGD_KEYS)


def task_from_dict(raw: dict[str, Any], source: str = "<task>") -> TaskSchema:
    """Validate a task schema given as a plain dict (parsed YAML or a Hydra ``cfg.task``).

    Raises
    ------
    SchemaError
        With one sentence naming ``source`` and the offending key.
    """
    if not isinstance(raw, dict):
        raise SchemaError(f"{source}: a task schema must be a YAML mapping")
    _check_keys(source, raw, _TOP_KEYS)
    _check_training(source, raw)
    for key in ("name", "features", "target"):
        if key not in raw:
            raise SchemaError(f"{source}: missing required key '{key}'")
    if not isinstance(raw["features"], list) or not raw["features"]:
        raise SchemaError(f"{source}: 'features' must be a non-empty list")
    features = tuple(_feature(source, i, f) for i, f in enumerate(raw["features"]))
    names = [f.name for f in features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SchemaError(f"{source}: duplicated feature name(s) {dupes}")
    target = _target(source, raw["target"])
    if target.name in names:
        raise SchemaError(f"{source}: the target '{target.name}' is also listed as a feature")
    known = KNOWN_METRICS[target.kind]
    metrics = tuple(raw.get("metrics") or known[:-1])
    bad = [m for m in metrics if m not in known]
    if bad:
        raise SchemaError(
            f"{source}: metric(s) {bad} do not apply to a {target.kind} target "
            f"(choose from {list(known)})"
        )
    primary = raw.get("primary_metric", metrics[0])
    if primary not in metrics:
        raise SchemaError(f"{source}: primary_metric {primary!r} is not in metrics {list(metrics)}")
    return TaskSchema(
        name=str(raw["name"]),
        features=features,
        target=target,
        model=_model(source, raw.get("model"), target),
        metrics=metrics,
        primary_metric=primary,
        description=str(raw.get("description", "")),
        extra={"synthetic": raw.get("synthetic") or {}},
    )


def task_dir() -> Path:
    """The folder of the shipped task schemas (``conf/task``)."""
    return Path(str(files("medfed.conf"))) / "task"


def available_tasks() -> list[str]:
    """Names of the shipped task schemas."""
    return sorted(p.stem for p in task_dir().glob("*.yaml"))


def load_task(name_or_path: str | Path) -> TaskSchema:
    """Load a shipped task by name (``"diagnosis"``) or a schema YAML by path.

    Raises
    ------
    SchemaError
        When the task is unknown, the file is missing or not valid YAML, or the schema is invalid.
    """
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = task_dir() / f"{text}.yaml"
        if not path.is_file():
            raise SchemaError(
                f"unknown task '{text}': choose one of {available_tasks()} "
                "or give the path of a schema YAML"
            )
    if not path.is_file():
        raise SchemaError(f"task schema file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SchemaError(f"{path}: not valid YAML{where}; fix the syntax") from None
    return task_from_dict(raw, source=str(path))
