"""Per-hospital benefit of joining: paired bootstrap intervals computed at the node.

A hospital scores several models (federated, personalised, local-only) on its own test rows and
wants to know whether joining helped *it*, with an uncertainty. The percentile bootstrap
(Efron & Tibshirani, 1993) resamples the test rows with replacement; every resample scores all
models on the *same* rows, so the interval of a difference is paired. Only the point values and
the interval ends leave the node, never a prediction or a row. Written here rather than with
``scipy.stats.bootstrap`` because the metric is medfed's own (from additive statistics, the same
as every other metric medfed reports) and the models must share each resample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from medfed.models.metrics import metric_statistics, metrics_from_statistics
from medfed.models.schema import TaskSchema

Interval = tuple[float, float, float]  # point, lower, upper
MODELS = ("federated", "personalised", "local")
PAIRS = {
    "personalised-minus-local": ("personalised", "local"),
    "federated-minus-local": ("federated", "local"),
    "personalised-minus-federated": ("personalised", "federated"),
}
BENEFIT_KEYS = frozenset(
    {f"{name}{end}" for name in (*MODELS, *PAIRS) for end in ("", "-low", "-high")}
    | {"n-test", "epochs"}
)
"""The only metrics a node's ``query.personalise`` reply may carry (the reply guard's list)."""


def _metric(
    schema: TaskSchema, y: np.ndarray, output: np.ndarray, scale: float, bins: int
) -> float:
    stats = metric_statistics(schema, y, output, loss_scale=scale, bins=bins)
    return float(metrics_from_statistics(schema, stats)[schema.primary_metric])


def paired_intervals(
    schema: TaskSchema,
    y: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    pairs: Mapping[str, tuple[str, str]],
    *,
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
    loss_scale: float = 1.0,
    bins: int = 100,
) -> dict[str, Interval]:
    """Primary metric of every model and of every paired difference, with percentile intervals.

    Parameters
    ----------
    outputs
        Model name -> its predictions on the rows ``y`` (:func:`predict_output` form).
    pairs
        Difference name -> ``(a, b)``: the interval of ``metric(a) - metric(b)``.

    Returns
    -------
    dict
        Name -> ``(point, lower, upper)`` for each model and each difference (NaN where the metric
        is undefined on too many resamples, e.g. AUROC with one class).
    """
    rng = np.random.default_rng(seed)
    names = list(outputs)
    draws: dict[str, list[float]] = {name: [] for name in [*names, *pairs]}
    n = len(y)
    for _ in range(resamples):
        index = rng.integers(0, n, size=n)
        values = {
            name: _metric(schema, y[index], outputs[name][index], loss_scale, bins)
            for name in names
        }
        for name in names:
            draws[name].append(values[name])
        for name, (a, b) in pairs.items():
            draws[name].append(values[a] - values[b])
    points = {name: _metric(schema, y, outputs[name], loss_scale, bins) for name in names}
    points.update({name: points[a] - points[b] for name, (a, b) in pairs.items()})
    tail = (1.0 - level) / 2.0
    result: dict[str, Interval] = {}
    for name, drawn in draws.items():
        finite = np.asarray([v for v in drawn if math.isfinite(v)])
        if finite.size < 0.9 * resamples:
            result[name] = (points[name], math.nan, math.nan)
            continue
        low, high = np.quantile(finite, [tail, 1.0 - tail])
        result[name] = (points[name], float(low), float(high))
    return result


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def benefit_sentence(
    hospital: str,
    metric: str,
    higher_is_better: bool,
    difference: Interval,
    versus: str = "training alone",
) -> str:
    """One plain sentence, e.g. ``H1: joining improved auroc by 0.04 [0.01, 0.07] compared with
    training alone.``; the numbers are the *gain* (sign flipped for a lower-is-better metric such
    as RMSE), so "improved by" always means better; an interval holding 0 says so."""
    point, low, high = difference
    if not math.isfinite(point):
        return f"{hospital}: {metric} could not be compared with {versus}."
    if not higher_is_better:
        point, low, high = -point, -high, -low
    if not math.isfinite(low):
        return (
            f"{hospital}: joining changed {metric} by {point:+.3g} compared with {versus} "
            "(too few test rows for an interval)."
        )
    if low <= 0.0 <= high:
        return (
            f"{hospital}: joining made no clear difference to {metric} ({_num(point)} "
            f"[{_num(low)}, {_num(high)}] compared with {versus}; 95% interval of the gain)."
        )
    if point > 0:
        return (
            f"{hospital}: joining improved {metric} by {_num(point)} [{_num(low)}, "
            f"{_num(high)}] compared with {versus}."
        )
    return (
        f"{hospital}: joining worsened {metric} by {_num(-point)} [{_num(-high)}, "
        f"{_num(-low)}] compared with {versus}."
    )
