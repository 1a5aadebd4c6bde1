"""Metrics from additive sufficient statistics.

Every hospital reduces its test predictions to a few sums (:func:`metric_statistics`); sums from
several hospitals add up (:func:`sum_statistics`), and :func:`metrics_from_statistics` turns any sum
into metrics. The metric over all hospitals' test rows together is therefore computed exactly (AUROC
up to the width of a histogram bin) without a single prediction leaving a hospital.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from medfed.models.schema import TaskSchema

Statistics = dict[str, float | list[float]]

AUROC_BINS = 1000
_RELATIVE_EPS = 1e-12


def _array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def bce_with_logits(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example binary cross-entropy (nats) from logits, stable for large |logit|."""
    return np.maximum(logits, 0.0) - logits * y + np.log1p(np.exp(-np.abs(logits)))


def tweedie_deviance(y: np.ndarray, mean: np.ndarray, power: float) -> np.ndarray:
    """Per-example Tweedie unit deviance for ``1 < power < 2`` (0 when ``mean == y``)."""
    one, two = 1.0 - power, 2.0 - power
    return 2.0 * (
        np.power(y, two) / (one * two) - y * np.power(mean, one) / one + np.power(mean, two) / two
    )


def _binary(y: np.ndarray, logits: np.ndarray, n_bins: int) -> Statistics:
    positive = y > 0.5
    predicted = logits >= 0.0
    prob = 0.5 * (1.0 + np.tanh(0.5 * logits))
    bins = np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)
    return {
        "n": float(y.size),
        "tp": float(np.sum(predicted & positive)),
        "fp": float(np.sum(predicted & ~positive)),
        "tn": float(np.sum(~predicted & ~positive)),
        "fn": float(np.sum(~predicted & positive)),
        "hist_pos": np.bincount(bins[positive], minlength=n_bins).astype(np.int64).tolist(),
        "hist_neg": np.bincount(bins[~positive], minlength=n_bins).astype(np.int64).tolist(),
        "loss_sum": float(bce_with_logits(logits, positive.astype(np.float64)).sum()),
        "brier_sum": float(np.square(prob - positive).sum()),
    }


def _multiclass(y: np.ndarray, logits: np.ndarray) -> Statistics:
    n, n_classes = logits.shape
    labels = y.astype(np.int64)
    predicted = logits.argmax(axis=1)
    confusion = np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes)
    top2 = np.argpartition(-logits, 1, axis=1)[:, :2] if n else np.zeros((0, 2), np.int64)
    shifted = logits - logits.max(axis=1, keepdims=True) if n else logits
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    loss = log_norm - shifted[np.arange(n), labels]
    return {
        "n": float(n),
        "confusion": confusion.astype(np.int64).tolist(),
        "top2_hits": float(np.sum(top2 == labels[:, None])),
        "loss_sum": float(loss.sum()),
    }


def _continuous(
    y: np.ndarray, mean: np.ndarray, loss: str, power: float, scale: float
) -> Statistics:
    error = mean - y
    if loss == "tweedie":
        per_example = tweedie_deviance(y / scale, mean / scale, power)
    else:
        per_example = np.square(np.log(mean) - np.log1p(y))
    return {
        "n": float(y.size),
        "sum_abs_err": float(np.abs(error).sum()),
        "sum_sq_err": float(np.square(error).sum()),
        "sum_y": float(y.sum()),
        "sum_y2": float(np.square(y).sum()),
        "sum_pred": float(mean.sum()),
        "loss_sum": float(per_example.sum()),
    }


def metric_statistics(
    schema: TaskSchema, y_true: Any, output: Any, *, loss_scale: float = 1.0, bins: int = AUROC_BINS
) -> Statistics:
    """Additive statistics of one batch of test predictions.

    Parameters
    ----------
    schema
        The task; its target kind decides which statistics are kept.
    y_true
        Targets as :func:`medfed.models.encoding.encode_target` returns them.
    output
        What :func:`medfed.models.nets.predict_output` returns: logits ``(n,)`` (binary) or
        ``(n, C)`` (multiclass), or the predicted mean in the target's unit ``(n,)`` (continuous).
    loss_scale
        The Tweedie loss is the deviance of ``y / loss_scale`` (the global mean target), exactly
        as in training (``GlobalStats.loss_scale``); ignored otherwise.
    bins
        Number of equal-width probability bins of the AUROC histograms (binary targets); every
        hospital must use the same number for the statistics to add up.

    Returns
    -------
    dict
        Floats and lists of floats (e.g. the ``bins``-long histograms of predicted probabilities of
        positives and negatives that give the AUROC), ready for a Flower MetricRecord.
    """
    y, out = _array(y_true).reshape(-1), _array(output)
    if out.shape[0] != y.size:
        raise ValueError(f"Got {out.shape[0]} predictions for {y.size} targets.")
    kind = schema.target.kind
    if kind == "binary":
        if bins < 1:
            raise ValueError(f"The number of AUROC bins must be positive, got {bins}.")
        return _binary(y, out.reshape(-1), bins)
    if kind == "multiclass":
        return _multiclass(y, out.reshape(y.size, schema.target.n_outputs))
    return _continuous(
        y, out.reshape(-1), schema.model.loss, schema.model.tweedie_power, loss_scale
    )


def add_statistics(a: Mapping[str, Any], b: Mapping[str, Any]) -> Statistics:
    """Element-wise sum of two statistics dicts of the same task."""
    return sum_statistics([a, b])


def sum_statistics(stats: Iterable[Mapping[str, Any]]) -> Statistics:
    """Element-wise sum of several statistics dicts (e.g. of every hospital, or every batch)."""
    items = list(stats)
    if not items:
        raise ValueError("sum_statistics needs at least one statistics dict.")
    keys = items[0].keys()
    for item in items:
        if item.keys() != keys:
            raise ValueError(
                "Cannot add metric statistics with different keys: "
                f"{sorted(keys)} and {sorted(item)}."
            )
    out: Statistics = {}
    for key in keys:
        try:
            out[key] = np.sum([item[key] for item in items], axis=0, dtype=np.float64).tolist()
        except ValueError:
            message = f"Cannot add metric statistics '{key}' of different lengths."
            raise ValueError(message) from None
    return out


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def auroc_from_histograms(hist_pos: Sequence[float], hist_neg: Sequence[float]) -> float:
    """Area under the ROC curve from score histograms; pairs within one bin count half.

    NaN unless both classes are present.
    """
    pos, neg = np.asarray(hist_pos, np.float64), np.asarray(hist_neg, np.float64)
    neg_below = np.cumsum(neg) - neg
    return _ratio(float(np.dot(pos, neg_below + 0.5 * neg)), float(pos.sum() * neg.sum()))


def _binary_metrics(s: Mapping[str, Any]) -> dict[str, float]:
    return {
        "accuracy": _ratio(s["tp"] + s["tn"], s["n"]),
        "auroc": auroc_from_histograms(s["hist_pos"], s["hist_neg"]),
        "sensitivity": _ratio(s["tp"], s["tp"] + s["fn"]),
        "specificity": _ratio(s["tn"], s["tn"] + s["fp"]),
        "loss": _ratio(s["loss_sum"], s["n"]),
    }


def _multiclass_metrics(s: Mapping[str, Any], n_classes: int) -> dict[str, float]:
    confusion = np.asarray(s["confusion"], np.float64).reshape(n_classes, n_classes)
    tp = np.diag(confusion)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)
    occurring = denominator > 0
    f1 = 2.0 * tp[occurring] / denominator[occurring]
    return {
        "accuracy": _ratio(float(tp.sum()), s["n"]),
        "macro_f1": float(f1.mean()) if f1.size else math.nan,
        "top2_accuracy": _ratio(s["top2_hits"], s["n"]),
        "loss": _ratio(s["loss_sum"], s["n"]),
    }


def _continuous_metrics(s: Mapping[str, Any]) -> dict[str, float]:
    n = s["n"]
    total_ss = s["sum_y2"] - s["sum_y"] ** 2 / n if n > 0 else 0.0
    constant = total_ss <= _RELATIVE_EPS * s["sum_y2"]
    return {
        "mae": _ratio(s["sum_abs_err"], n),
        "rmse": math.sqrt(s["sum_sq_err"] / n) if n > 0 else math.nan,
        "r2": math.nan if n < 2 or constant else 1.0 - s["sum_sq_err"] / total_ss,
        "calibration": _ratio(s["sum_pred"], s["sum_y"]),
        "loss": _ratio(s["loss_sum"], n),
    }


def metrics_from_statistics(schema: TaskSchema, stats: Mapping[str, Any]) -> dict[str, float]:
    """All metrics of the task's kind (plus ``loss``, the mean loss) from summed statistics.

    Undefined values are NaN: sensitivity without positives, AUROC with one class, R² with
    (numerically) constant targets, any metric of zero examples. Macro-F1 averages over the
    classes that occur in the targets or the predictions.
    """
    kind = schema.target.kind
    if kind == "binary":
        return _binary_metrics(stats)
    if kind == "multiclass":
        return _multiclass_metrics(stats, schema.target.n_outputs)
    return _continuous_metrics(stats)
