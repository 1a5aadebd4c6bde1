"""Built-in synthetic hospitals: the default data of every simulation.

Each task has ONE hidden ground-truth model of the outcome given the features, shared by all
hospitals, so that a federated model has something to learn. Hospitals differ the way real ones do,
each scaled by :class:`SkewConfig`: their age and sex mix (covariate shift, which propagates to
the features that depend on age or sex), their prevalence (a shift of the outcome intercept), a
smaller random site effect on the outcome, missing values at site-specific rates, and their size.

The generator reads the task schema, so a user-written schema gets data without any code. The
optional ``synthetic:`` mapping of a schema makes the data clinically plausible::

    synthetic:                  # conf/task/pricing.yaml has the full example
      features:
        age: {mean: 40, sd: 14, clip: [18, 85], decimals: 0, role: age}
        sex: {probs: [0.5, 0.5]}                        # categorical: base probabilities
        smoker: {p: 0.2, effects: {"sex=male": 0.3}}    # binary: base probability of 1
        children: {dist: poisson, mean: 1.1, missing: 1.0}
        bmi: {mean: 30.5, sd: 6.0, effects: {age: 0.15}}
      outcome:
        link: log                                       # E[charges] = exp(linear predictor)
        intercept: 8.75
        effects: {age: 0.5, smoker: 1.2, "smoker*bmi": 0.45, "region=southeast": 0.04}

Numeric features take ``dist`` (normal, the default, lognormal or poisson), a reference ``mean``
and ``sd``, ``clip`` (bounds within the schema range) and ``decimals``; binary ones ``p``;
categorical ones ``probs``. Any feature takes ``role`` (age or sex, guessed from the name: the site
mix that shifts it), ``missing`` (relative missing rate; default 1 for ``required: false``
features, else 0) and ``effects`` on it of other features, which shift a normal mean in SDs, a
lognormal log-mean in SDs of the log, a poisson log-rate, or a logit. The outcome takes
``intercept`` and ``effects``; a continuous one also ``link``, ``shape`` (gamma noise of the log
link) or ``sd`` (normal noise of the identity link), and ``decimals``.

A term is a numeric feature standardised against its reference mean and sd, a binary feature as
0/1, a categorical indicator ``"feature=category"``, or a product ``"a*b"``. A coefficient on a
categorical feature or a multiclass target maps categories to shifts (absent ones are 0). Anything
not hinted is derived from the schema: numeric features from their range, random category mixes,
and a random linear ground truth, all seeded by ``seed``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from medfed.models.schema import Feature, SchemaError, TaskSchema, _check_keys

_TAG_SIZES, _TAG_LAYOUT, _TAG_TRUTH = 0x512E, 0x1A70, 0x7207
_MAX_MISSING = 0.6
_ROLE_NAMES = {"age": ("age", "age_band", "age_group"), "sex": ("sex", "gender")}
_FEATURE_HINTS = {
    "numeric": {"dist", "mean", "sd", "clip", "decimals"},
    "binary": {"p"},
    "categorical": {"probs"},
}
_COMMON_HINTS = {"role", "missing", "effects"}
_OUTCOME_HINTS = {
    "logit": set(),
    "softmax": set(),
    "log": {"link", "shape", "decimals"},
    "identity": {"link", "sd", "decimals"},
}
_LOG_PREVALENCE, _LOG_SITE = 0.4, 0.5

# Generator hints of the shipped diagnosis task. They belong in conf/task/diagnosis.yaml (key
# ``synthetic``); they apply only while that schema carries no hints of its own.
_BUILTIN_HINTS = {
    "diagnosis": """
features:
  age: {mean: 54, sd: 9, clip: [29, 80], decimals: 0, role: age}
  sex: {probs: [0.32, 0.68], role: sex}
  chest_pain: {probs: [0.08, 0.17, 0.28, 0.47], effects: {"sex=male": {asymptomatic: 0.3}}}
  resting_bp: {mean: 132, sd: 17.5, clip: [90, 200], decimals: 0, missing: 0.3, effects: {age: 0.3}}
  cholesterol:
    mean: 246
    sd: 52
    clip: [120, 560]
    decimals: 0
    missing: 0.5
    effects: {age: 0.15, "sex=male": -0.2}
  fasting_blood_sugar_high: {p: 0.15, effects: {age: 0.3}}
  resting_ecg: {probs: [0.55, 0.15, 0.30], effects: {age: {lv_hypertrophy: 0.3}}}
  max_heart_rate: {mean: 150, sd: 22, clip: [70, 202], decimals: 0, effects: {age: -0.45}}
  exercise_angina: {p: 0.3, effects: {"chest_pain=asymptomatic": 1.4}}
  st_depression:
    {mean: 0.7, sd: 1.2, clip: [0, 6.2], decimals: 1, effects: {exercise_angina: 0.5, age: 0.2}}
  st_slope:
    probs: [0.47, 0.46, 0.07]
    effects: {st_depression: {flat: 0.8, downsloping: 1.0}}
  major_vessels: {dist: poisson, mean: 0.65, clip: [0, 3], effects: {age: 0.4}}
  thal: {probs: [0.56, 0.06, 0.38], effects: {"sex=male": {reversible_defect: 0.8}}}
outcome:
  intercept: -3.8
  effects:
    age: 0.45
    "sex=male": 1.05
    "chest_pain=asymptomatic": 1.95
    "chest_pain=non_anginal": 0.15
    resting_bp: 0.3
    cholesterol: 0.3
    fasting_blood_sugar_high: 0.15
    "resting_ecg=lv_hypertrophy": 0.3
    max_heart_rate: -0.7
    exercise_angina: 0.9
    st_depression: 0.8
    "st_slope=flat": 0.75
    "st_slope=downsloping": 0.6
    major_vessels: 1.2
    "thal=reversible_defect": 1.65
    "thal=fixed_defect": 0.9
"""
}


@dataclass(frozen=True)
class SkewConfig:
    """How much the simulated hospitals differ (0 = identical populations).

    ``age`` and ``sex`` scale the shift of the age and sex mix, ``prevalence`` the shift of the
    outcome intercept, ``site_effect`` the sd of a per-site random outcome shift, and ``missing``
    the average missing rate of the features that may be missing.
    """

    age: float = 0.5
    sex: float = 0.5
    prevalence: float = 0.5
    site_effect: float = 0.3
    missing: float = 0.1

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"skew.{item.name} must be a finite number >= 0, got {value!r}")


@dataclass
class Site:
    """One simulated hospital: train and test frames in schema columns, and the test ground truth.

    ``test_oracle`` is the true P(y=1) (binary), the (n, C) class probabilities (multiclass) or
    E[y] (continuous) of each test row, computed from the complete features before masking.
    """

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    test_oracle: np.ndarray


@dataclass(frozen=True)
class _Term:
    """A product of factors (feature name, category index or None for the value itself)."""

    factors: tuple[tuple[str, int | None], ...]


Effects = tuple[tuple[_Term, np.ndarray], ...]


@dataclass(frozen=True)
class _FeatureGen:
    feature: Feature
    dist: str
    base: np.ndarray
    mean: float
    sd: float
    clip: tuple[float, float]
    decimals: int | None
    role: str | None
    missing: float
    effects: Effects


@dataclass(frozen=True)
class _OutcomeGen:
    intercept: np.ndarray
    effects: Effects
    link: str
    noise: float
    clip: tuple[float, float]
    decimals: int | None


@dataclass(frozen=True)
class _TaskGen:
    features: tuple[_FeatureGen, ...]
    outcome: _OutcomeGen

    def by_name(self) -> dict[str, _FeatureGen]:
        return {g.feature.name: g for g in self.features}


@dataclass(frozen=True)
class _Layout:
    """What makes one site differ: role shifts, outcome shift per output, missing multiplier."""

    roles: dict[str, float]
    outcome_shift: np.ndarray
    missing: float


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SchemaError(f"{where} must be a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _number(where: str, key: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SchemaError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise SchemaError(f"{where}: '{key}' must be positive, got {value!r}")
    return float(value)


def _decimals(where: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise SchemaError(f"{where}: 'decimals' must be an integer, got {value!r}")
    return value


def _parse_term(schema: TaskSchema, where: str, text: str) -> _Term:
    factors: list[tuple[str, int | None]] = []
    for part in text.split("*"):
        name, eq, cat = (s.strip() for s in part.partition("="))
        if name not in schema.feature_names:
            raise SchemaError(f"{where}: term '{text}' names unknown feature '{name}'")
        feat = schema.feature(name)
        if feat.kind == "categorical" and cat not in feat.categories:
            raise SchemaError(
                f"{where}: term '{text}' must pick a category of '{name}' as "
                f"'{name}=<category>' (one of {list(feat.categories)})"
            )
        if feat.kind != "categorical" and eq:
            raise SchemaError(
                f"{where}: term '{text}' uses '=' on '{name}', which is not categorical"
            )
        factors.append((name, feat.categories.index(cat) if eq else None))
    return _Term(tuple(factors))


def _coefficient(where: str, key: str, value: Any, labels: tuple[str, ...]) -> np.ndarray:
    if not labels:
        return np.array([_number(where, key, value)])
    if not isinstance(value, Mapping):
        raise SchemaError(
            f"{where}: '{key}' must map categories to shifts, e.g. {{{labels[-1]}: 0.5}}"
        )
    shifts = {str(k): v for k, v in value.items()}
    unknown = sorted(set(shifts) - set(labels))
    if unknown:
        raise SchemaError(
            f"{where}: '{key}' names unknown categories {unknown} (choose from {list(labels)})"
        )
    return np.array([_number(where, f"{key}.{c}", shifts.get(c, 0.0)) for c in labels])


def _effects(schema: TaskSchema, where: str, raw: Any, labels: tuple[str, ...]) -> Effects:
    return tuple(
        (_parse_term(schema, where, key), _coefficient(where, key, value, labels))
        for key, value in _mapping(f"{where}.effects", raw).items()
    )


def _clip(where: str, low: float | None, high: float | None, raw: Any) -> tuple[float, float]:
    lo = -math.inf if low is None else low
    hi = math.inf if high is None else high
    if raw is not None:
        if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != 2:
            raise SchemaError(f"{where}: 'clip' must be a list [low, high] (null for no bound)")
        lo = lo if raw[0] is None else max(lo, _number(where, "clip", raw[0]))
        hi = hi if raw[1] is None else min(hi, _number(where, "clip", raw[1]))
    if lo > hi:
        raise SchemaError(f"{where}: 'clip' does not overlap the schema range")
    return lo, hi


def _default_moments(clip: tuple[float, float]) -> tuple[float, float]:
    """A reference mean and sd that put nearly all mass inside the bounds."""
    lo, hi = clip
    if math.isfinite(lo) and math.isfinite(hi):
        return (lo + hi) / 2, max(hi - lo, 1e-9) / 6
    if math.isfinite(lo):
        scale = max(abs(lo), 1.0)
        return lo + 2 * scale, scale
    if math.isfinite(hi):
        scale = max(abs(hi), 1.0)
        return hi - 2 * scale, scale
    return 0.0, 1.0


def _probabilities(where: str, feat: Feature, raw: Any, rng: np.random.Generator) -> np.ndarray:
    if raw is None:
        return rng.dirichlet(np.full(len(feat.categories), 5.0))
    if (
        isinstance(raw, str | Mapping)
        or not isinstance(raw, Sequence)
        or len(raw) != len(feat.categories)
    ):
        raise SchemaError(
            f"{where}: 'probs' must list one probability per category ({len(feat.categories)})"
        )
    probs = np.array([_number(where, "probs", p, positive=True) for p in raw])
    return probs / probs.sum()


def _distribution(
    where: str,
    feat: Feature,
    hint: dict[str, Any],
    clip: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[str, np.ndarray, float, float]:
    """The sampling family, base logits (binary/categorical), reference mean and sd."""
    if feat.kind == "categorical":
        return "categorical", np.log(_probabilities(where, feat, hint.get("probs"), rng)), 0.0, 1.0
    if feat.kind == "binary":
        p = _number(where, "p", hint.get("p", rng.uniform(0.2, 0.8)), positive=True)
        if p >= 1:
            raise SchemaError(f"{where}: 'p' must lie strictly between 0 and 1, got {p}")
        return "binary", np.array([math.log(p / (1 - p))]), 0.0, 1.0
    dist = hint.get("dist", "normal")
    if dist not in ("normal", "lognormal", "poisson"):
        raise SchemaError(f"{where}: 'dist' must be normal, lognormal or poisson, got {dist!r}")
    mean, sd = _default_moments(clip)
    mean = _number(where, "mean", hint.get("mean", mean), positive=dist != "normal")
    if dist == "poisson":
        return dist, np.zeros(1), mean, math.sqrt(mean)
    return dist, np.zeros(1), mean, _number(where, "sd", hint.get("sd", sd), positive=True)


def _feature_gen(
    schema: TaskSchema, feat: Feature, raw: Any, rng: np.random.Generator
) -> _FeatureGen:
    where = f"task '{schema.name}': synthetic.features.{feat.name}"
    hint = _mapping(where, raw)
    _check_keys(where, hint, _COMMON_HINTS | _FEATURE_HINTS[feat.kind])
    clip = _clip(where, feat.low, feat.high, hint.get("clip"))
    dist, base, mean, sd = _distribution(where, feat, hint, clip, rng)
    guessed = next((r for r, names in _ROLE_NAMES.items() if feat.name.lower() in names), None)
    role = hint.get("role", guessed)
    if role not in (None, "age", "sex"):
        raise SchemaError(f"{where}: 'role' must be age or sex, got {role!r}")
    missing = _number(where, "missing", hint.get("missing", 0.0 if feat.required else 1.0))
    if missing < 0:
        raise SchemaError(f"{where}: 'missing' must be >= 0, got {missing}")
    return _FeatureGen(
        feature=feat,
        dist=dist,
        base=base,
        mean=mean,
        sd=sd,
        clip=clip,
        decimals=_decimals(where, hint.get("decimals", 0 if feat.unit == "count" else None)),
        role=role,
        missing=missing,
        effects=_effects(schema, where, hint.get("effects"), feat.categories),
    )


def _dependency_order(schema: TaskSchema, gens: list[_FeatureGen]) -> tuple[_FeatureGen, ...]:
    """Order features so each is drawn after the features its effects refer to."""
    pending, done, order = list(gens), set[str](), []
    while pending:
        ready = next(
            (
                g
                for g in pending
                if {name for term, _ in g.effects for name, _ in term.factors} <= done
            ),
            None,
        )
        if ready is None:
            names = sorted(g.feature.name for g in pending)
            raise SchemaError(
                f"task '{schema.name}': synthetic feature effects form a cycle among {names}"
            )
        order.append(ready)
        done.add(ready.feature.name)
        pending.remove(ready)
    return tuple(order)


def _outcome_defaults(schema: TaskSchema, link: str) -> tuple[float, float, float]:
    """Intercept, noise (gamma shape or sd) and random-coefficient scale without hints."""
    mean, sd = _default_moments(_clip("target", schema.target.low, schema.target.high, None))
    if link == "log":
        return math.log(max(mean, 1.0)), 3.0, 0.8
    if link == "identity":
        return mean, sd / 2, sd
    return 0.0, 1.0, 2.5


def _outcome_link(schema: TaskSchema, where: str, hint: dict[str, Any]) -> str:
    kind = schema.target.kind
    if kind != "continuous":
        if "link" in hint:
            raise SchemaError(f"{where}: 'link' applies to continuous targets only")
        return "logit" if kind == "binary" else "softmax"
    low = schema.target.low
    link = hint.get("link", "log" if low is not None and low >= 0 else "identity")
    if link not in ("log", "identity"):
        raise SchemaError(f"{where}: 'link' must be log or identity, got {link!r}")
    if link == "log" and (low is None or low < 0):
        raise SchemaError(f"{where}: link log needs a target range with low >= 0")
    return link


def _random_effects(
    gens: Sequence[_FeatureGen], width: int, scale: float, rng: np.random.Generator
) -> Effects:
    """A seeded linear ground truth on every feature (all categories but the first)."""
    scale /= math.sqrt(max(len(gens), 1))
    effects = []
    for gen in gens:
        levels = range(1, len(gen.feature.categories)) if gen.dist == "categorical" else [None]
        for level in levels:
            effects.append((_Term(((gen.feature.name, level),)), rng.normal(0, scale, width)))
    return tuple(effects)


def _outcome_gen(
    schema: TaskSchema, raw: Any, gens: Sequence[_FeatureGen], rng: np.random.Generator
) -> _OutcomeGen:
    where = f"task '{schema.name}': synthetic.outcome"
    hint = _mapping(where, raw)
    link = _outcome_link(schema, where, hint)
    _check_keys(where, hint, {"intercept", "effects"} | _OUTCOME_HINTS[link])
    labels = schema.target.classes if link == "softmax" else ()
    intercept, noise, scale = _outcome_defaults(schema, link)
    raw_intercept = hint.get("intercept", {} if labels else intercept)
    if raw is None:
        effects = _random_effects(gens, max(len(labels), 1), scale, rng)
    else:
        effects = _effects(schema, where, hint.get("effects"), labels)
    noise_key = "sd" if link == "identity" else "shape"
    return _OutcomeGen(
        intercept=_coefficient(where, "intercept", raw_intercept, labels),
        effects=effects,
        link=link,
        noise=_number(where, noise_key, hint.get(noise_key, noise), positive=True),
        clip=_clip(where, schema.target.low, schema.target.high, None),
        decimals=_decimals(where, hint.get("decimals")),
    )


def _build(schema: TaskSchema, hints: dict[str, Any], seed: int) -> _TaskGen:
    where = f"task '{schema.name}': synthetic"
    _check_keys(where, hints, {"features", "outcome"})
    feature_hints = _mapping(f"{where}.features", hints.get("features"))
    unknown = sorted(set(feature_hints) - set(schema.feature_names))
    if unknown:
        raise SchemaError(f"{where}.features names unknown feature(s) {unknown}")
    entropy = [seed, _TAG_TRUTH, zlib.crc32(schema.name.encode())]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    gens = [_feature_gen(schema, f, feature_hints.get(f.name), rng) for f in schema.features]
    outcome = _outcome_gen(schema, hints.get("outcome"), gens, rng)
    return _TaskGen(features=_dependency_order(schema, gens), outcome=outcome)


def _task_gen(schema: TaskSchema, seed: int) -> _TaskGen:
    """The generator of a task from its ``synthetic`` hints, else from the built-in ones.

    Built-in hints that do not fit a user schema reusing a shipped name are skipped.
    """
    own = _mapping(f"task '{schema.name}': synthetic", schema.extra.get("synthetic"))
    builtin = _BUILTIN_HINTS.get(schema.name)
    if own or builtin is None:
        return _build(schema, own, seed)
    try:
        return _build(schema, yaml.safe_load(builtin), seed)
    except SchemaError:
        return _build(schema, {}, seed)


def _spread(seed: int, index: int, n_hospitals: int, tag: int) -> float:
    """A site's position on one axis of heterogeneity, in [-sqrt(3), sqrt(3)] (unit variance).

    The sites are stratified over the axis, so even a small federation spans it.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_LAYOUT, n_hospitals, tag]))
    slots, jitter = rng.permutation(n_hospitals), rng.uniform(size=n_hospitals)
    quantile = (slots[index] + jitter[index]) / n_hospitals
    return math.sqrt(3.0) * (2.0 * quantile - 1.0)


def _layout(
    gen: _TaskGen,
    seed: int,
    index: int,
    n_hospitals: int,
    skew: SkewConfig,
    rng: np.random.Generator,
) -> _Layout:
    roles = {
        "age": skew.age * _spread(seed, index, n_hospitals, 1),
        "sex": skew.sex * _spread(seed, index, n_hospitals, 2),
    }
    prevalence = skew.prevalence * _spread(seed, index, n_hospitals, 3)
    out = gen.outcome
    width = len(out.intercept)
    shift = rng.normal(0.0, skew.site_effect, width)
    if out.link == "softmax":
        shift[1:] += prevalence
        shift[0] = 0.0
    elif out.link == "log":
        shift = _LOG_PREVALENCE * prevalence + _LOG_SITE * shift
    elif out.link == "identity":
        shift = out.noise * (prevalence + shift)
    else:
        shift = prevalence + shift
    return _Layout(
        roles=roles, outcome_shift=shift, missing=skew.missing * float(rng.uniform(0.0, 2.0))
    )


def _term_value(
    term: _Term, cols: dict[str, np.ndarray], gens: dict[str, _FeatureGen], n: int
) -> np.ndarray:
    value = np.ones(n)
    for name, level in term.factors:
        gen, x = gens[name], cols[name]
        if level is not None:
            value = value * (x == level)
        elif gen.dist == "binary":
            value = value * x
        else:
            value = value * (x - gen.mean) / gen.sd
    return value


def _linear(
    effects: Effects, cols: dict[str, np.ndarray], gens: dict[str, _FeatureGen], n: int, width: int
) -> np.ndarray:
    eta = np.zeros((n, width))
    for term, coef in effects:
        eta += _term_value(term, cols, gens, n)[:, None] * coef[None, :]
    return eta


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _draw_class(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cumulative = probs.cumsum(axis=1)
    index = (cumulative < rng.random((len(probs), 1)) * cumulative[:, -1:]).sum(axis=1)
    return np.minimum(index, probs.shape[1] - 1)


def _finish(x: np.ndarray, clip: tuple[float, float], decimals: int | None) -> np.ndarray:
    if decimals is not None:
        x = np.round(x, decimals)
    return np.clip(x, *clip)


def _draw_feature(gen: _FeatureGen, eta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one column given its linear predictor; categorical columns as category indices."""
    n = len(eta)
    if gen.dist == "categorical":
        return _draw_class(_softmax(gen.base + eta), rng).astype(float)
    if gen.dist == "binary":
        return (rng.random(n) < _sigmoid(gen.base[0] + eta[:, 0])).astype(float)
    if gen.dist == "poisson":
        x = rng.poisson(gen.mean * np.exp(np.minimum(eta[:, 0], 15.0))).astype(float)
    elif gen.dist == "lognormal":
        s2 = math.log1p((gen.sd / gen.mean) ** 2)
        x = np.exp(math.log(gen.mean) - s2 / 2 + math.sqrt(s2) * (eta[:, 0] + rng.normal(size=n)))
    else:
        x = gen.mean + gen.sd * (eta[:, 0] + rng.normal(size=n))
    return _finish(x, gen.clip, gen.decimals)


def _role_shift(gen: _FeatureGen, layout: _Layout) -> np.ndarray | float:
    """The site's age/sex mix shift: in SDs, a logit, or ordered over the categories."""
    shift = layout.roles.get(gen.role or "", 0.0)
    if gen.dist == "categorical":
        return shift * np.linspace(-0.5, 0.5, len(gen.base))
    if gen.dist == "poisson":
        return shift / max(math.sqrt(gen.mean), 1.0)
    return shift


def _draw_features(
    gen: _TaskGen, layout: _Layout, n: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {}
    gens = gen.by_name()
    for fgen in gen.features:
        eta = _linear(fgen.effects, cols, gens, n, len(fgen.base)) + _role_shift(fgen, layout)
        cols[fgen.feature.name] = _draw_feature(fgen, eta, rng)
    return cols


def _draw_outcome(
    gen: _TaskGen, cols: dict[str, np.ndarray], layout: _Layout, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes and their ground truth (P(y=1), class probabilities or E[y])."""
    out = gen.outcome
    eta = (
        out.intercept
        + layout.outcome_shift
        + _linear(out.effects, cols, gen.by_name(), n, len(out.intercept))
    )
    if out.link == "logit":
        p = _sigmoid(eta[:, 0])
        return (rng.random(n) < p).astype(np.int64), p
    if out.link == "softmax":
        probs = _softmax(eta)
        return _draw_class(probs, rng).astype(np.int64), probs
    if out.link == "log":
        mu = np.exp(np.minimum(eta[:, 0], 700.0))
        y = rng.gamma(out.noise, mu / out.noise)
    else:
        mu = eta[:, 0]
        y = mu + out.noise * rng.normal(size=n)
    return _finish(y, out.clip, out.decimals).astype(float), np.clip(mu, *out.clip)


def _mask(
    gen: _TaskGen, cols: dict[str, np.ndarray], layout: _Layout, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Copies of the columns with values missing at site-specific rates (NaN)."""
    masked = {}
    for fgen in gen.features:
        x = cols[fgen.feature.name].copy()
        rate = min(_MAX_MISSING, layout.missing * fgen.missing * rng.uniform(0.5, 1.5))
        x[rng.random(len(x)) < rate] = np.nan
        masked[fgen.feature.name] = x
    return masked


def _frame(
    schema: TaskSchema, cols: dict[str, np.ndarray], y: np.ndarray, rows: slice
) -> pd.DataFrame:
    """A frame in the data conventions: floats with NaN, object categories with None."""
    data: dict[str, pd.Series] = {}
    for feat in schema.features:
        x = cols[feat.name][rows]
        if feat.kind == "categorical":
            labels = np.full(len(x), None, dtype=object)
            present = ~np.isnan(x)
            labels[present] = np.array(feat.categories, dtype=object)[x[present].astype(int)]
            data[feat.name] = pd.Series(labels, dtype=object)
        else:
            data[feat.name] = pd.Series(x, dtype=float)
    data[schema.target.name] = pd.Series(y[rows])
    return pd.DataFrame(data)


def _check_site_args(
    index: int, n_hospitals: int, n_rows: int, test_fraction: float, seed: int
) -> int:
    """Validate the arguments of :func:`generate_site`; return the number of test rows."""
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0 <= index < n_hospitals:
        raise ValueError(f"site index {index} is outside 0..{n_hospitals - 1}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    if n_rows < (2 if test_fraction > 0 else 1):
        raise ValueError(f"n_rows={n_rows} is too few to split into training and test rows")
    if test_fraction == 0:
        return 0
    return min(max(round(n_rows * test_fraction), 1), n_rows - 1)


def generate_site(
    schema: TaskSchema,
    index: int,
    n_hospitals: int,
    *,
    n_rows: int,
    test_fraction: float,
    skew: SkewConfig,
    seed: int,
) -> Site:
    """Simulate hospital ``index`` of ``n_hospitals``: ``n_rows`` patients, split train/test.

    Deterministic given ``(seed, index, n_hospitals)``: its random stream comes from
    ``SeedSequence([seed, index])`` and its place among the sites only from the seed, so a node
    can generate its own site alone and get the rows the simulation would give it.

    Raises
    ------
    ValueError
        For an index outside the federation, a bad test fraction, too few rows or a bad seed.
    SchemaError
        When the schema's ``synthetic`` hints are malformed.
    """
    n_test = _check_site_args(index, n_hospitals, n_rows, test_fraction, seed)
    gen = _task_gen(schema, int(seed))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), index]))
    layout = _layout(gen, int(seed), index, n_hospitals, skew, rng)
    cols = _draw_features(gen, layout, n_rows, rng)
    y, truth = _draw_outcome(gen, cols, layout, n_rows, rng)
    masked = _mask(gen, cols, layout, rng)
    train, test = slice(0, n_rows - n_test), slice(n_rows - n_test, n_rows)
    return Site(
        name=f"hospital-{index}",
        train=_frame(schema, masked, y, train),
        test=_frame(schema, masked, y, test),
        test_oracle=truth[test],
    )


def site_sizes(
    hospitals: int, min_size: int, max_size: int, *, seed: int, sizes: Sequence[int] | None = None
) -> list[int]:
    """Row counts per site: ``sizes`` when given, else drawn log-uniformly in [min_size, max_size].

    The draw is stratified (one draw per equal slice of the log range, slices shuffled over the
    sites), so the sites differ a lot in size, as hospitals do, even in a small federation.
    """
    if hospitals < 1:
        raise ValueError(f"a federation needs at least one hospital, got {hospitals}")
    if sizes is not None:
        if len(sizes) != hospitals:
            raise ValueError(f"sizes lists {len(sizes)} hospitals but hospitals is {hospitals}")
        return [int(n) for n in sizes]
    if not 2 <= min_size <= max_size:
        raise ValueError(f"need 2 <= min_size <= max_size, got {min_size} and {max_size}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_SIZES, hospitals]))
    edges = np.linspace(math.log(min_size), math.log(max_size), hospitals + 1)
    logs = rng.uniform(edges[:-1], edges[1:])[rng.permutation(hospitals)]
    return [int(np.clip(round(math.exp(v)), min_size, max_size)) for v in logs]


def generate_federation(
    schema: TaskSchema,
    *,
    hospitals: int,
    min_size: int,
    max_size: int,
    test_fraction: float,
    skew: SkewConfig,
    seed: int,
    sizes: list[int] | None = None,
) -> list[Site]:
    """Simulate ``hospitals`` sites; site i equals ``generate_site(schema, i, hospitals, ...)``.

    ``sizes`` fixes the row count of each site; otherwise :func:`site_sizes` draws them.
    """
    sizes = site_sizes(hospitals, min_size, max_size, seed=seed, sizes=sizes)
    return [
        generate_site(
            schema, i, hospitals, n_rows=n, test_fraction=test_fraction, skew=skew, seed=seed
        )
        for i, n in enumerate(sizes)
    ]


def oracle_score(schema: TaskSchema, sites: list[Site]) -> dict[str, float]:
    """Metrics of the ground-truth model over all test rows: the ceiling a learned model can reach.

    Binary and multiclass: ``accuracy``; continuous: ``rmse``, ``mae`` and ``r2``.
    """
    y = np.concatenate([site.test[schema.target.name].to_numpy() for site in sites])
    if len(y) == 0:
        raise ValueError("the sites have no test rows to score the ground truth on")
    truth = np.concatenate([site.test_oracle for site in sites])
    if schema.target.kind == "binary":
        return {"accuracy": float(np.mean((truth >= 0.5) == y))}
    if schema.target.kind == "multiclass":
        return {"accuracy": float(np.mean(truth.argmax(axis=1) == y))}
    err = y.astype(float) - truth
    r2 = 1.0 - float(np.sum(err**2)) / max(float(np.sum((y - y.mean()) ** 2)), 1e-300)
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))), "r2": r2}


def export_csv(schema: TaskSchema, sites: list[Site], out_dir: str | Path) -> list[Path]:
    """Write ``<name>-train.csv`` and ``<name>-test.csv`` per site (header row, empty = missing).

    Columns are the schema features then the target, in the frames' conventions (binary 0/1,
    multiclass target as the class index).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = [*schema.feature_names, schema.target.name]
    paths = []
    for site in sites:
        for part, frame in (("train", site.train), ("test", site.test)):
            absent = [c for c in columns if c not in frame.columns]
            if absent:
                raise ValueError(f"site {site.name} {part} frame lacks column(s) {absent}")
            path = out / f"{site.name}-{part}.csv"
            frame.to_csv(path, columns=columns, index=False, na_rep="")
            paths.append(path)
    return paths
