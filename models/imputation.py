"""Federated imputation: the values a missing feature takes, from round-0 statistics only.

``preprocessing.imputation`` chooses the fill of a missing numeric value:

* ``mean``: the federated mean (from the counts and sums every site sends anyway);
* ``median``: the median of the *merged histograms*: with median imputation each site also sends,
  per numeric feature, its counts in :data:`BINS` fixed bins over the feature's valid range (the
  same edges at every site, so the histograms add up). No site sends a row or an exact quantile;
  bins below ``preprocessing.min_cell`` are suppressed on the node like small category cells. The
  median is interpolated inside the bin where the cumulative count passes half, so it is exact to
  ``(high - low) / BINS``. A feature without a valid range in its schema falls back to the mean.

``preprocessing.categorical_missing`` is ``mode`` (a missing category takes the global mode) or
``category`` (missing is its own one-hot column, :data:`MISSING`). ``preprocessing.
missing_indicators`` adds a 0/1 column per optional feature. All of it lives in the
:class:`~medfed.models.encoding.GlobalStats` (and ``model.pt`` stores them with
:func:`medfed.models.encoding.encoder_state`), so anything that scores new rows later encodes them
exactly the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medfed.models.schema import Feature

BINS = 64
MISSING = "(missing)"
IMPUTATIONS = ("mean", "median")
CATEGORICAL_MISSING = ("mode", "category")


def histogram_of(present: np.ndarray, feat: Feature) -> dict[str, list[int]]:
    """``{"histogram": counts}`` of the present values in fixed bins over ``feat``'s valid range
    (empty when the schema gives no range: the median then falls back to the mean)."""
    if feat.low is None or feat.high is None or feat.high <= feat.low:
        return {}
    counts, _ = np.histogram(
        np.clip(present, feat.low, feat.high), bins=BINS, range=(feat.low, feat.high)
    )
    out: dict[str, Any] = {
        "histogram": [int(c) for c in counts],
        "histogram_low": float(feat.low),
        "histogram_high": float(feat.high),
    }
    return out


def suppress_histogram(stats: Mapping[str, Any], min_cell: int) -> dict[str, Any]:
    """A numeric feature's statistics with histogram bins below ``min_cell`` set to 0."""
    if "histogram" not in stats:
        return dict(stats)
    return dict(stats, histogram=[n if n >= min_cell else 0 for n in stats["histogram"]])


def histogram_median(counts: list[float], low: float, high: float) -> float | None:
    """The median of merged bin ``counts`` over ``[low, high]``, interpolated within its bin."""
    counts_arr = np.asarray(counts, dtype=np.float64)
    total = counts_arr.sum()
    if total <= 0:
        return None
    cumulative = np.cumsum(counts_arr)
    index = int(np.searchsorted(cumulative, total / 2.0))
    before = cumulative[index - 1] if index else 0.0
    width = (high - low) / len(counts_arr)
    share = (total / 2.0 - before) / counts_arr[index] if counts_arr[index] else 0.0
    return float(low + width * (index + share))


def fill_value(total: Mapping[str, Any], mean: float, imputation: str) -> float:
    """The value a missing numeric feature takes: ``mean``, or the median of the merged
    histogram (``total``: the sites' statistics of the feature, added up)."""
    if imputation != "median" or "histogram" not in total:
        return mean
    median = histogram_median(total["histogram"], total["histogram_low"], total["histogram_high"])
    return mean if median is None else median


def statistics_options(study: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`~medfed.models.encoding.merge_statistics` for ``study``."""
    prep = study["preprocessing"]
    return {
        "min_cell": int(prep["min_cell"]),
        "imputation": prep.get("imputation", "mean"),
        "categorical_missing": prep.get("categorical_missing", "mode"),
    }


def wants_histograms(study: Mapping[str, Any]) -> bool:
    """Whether the sites send histograms in round 0 (only for median imputation)."""
    return study["preprocessing"].get("imputation", "mean") == "median"


def check_preprocessing(prep: Mapping[str, Any]) -> str | None:
    """The one-line problem with ``preprocessing.imputation``/``categorical_missing``, or None."""
    imputation = prep.get("imputation", "mean")
    if imputation not in IMPUTATIONS:
        return f"preprocessing.imputation must be mean or median, got {imputation!r}"
    categorical = prep.get("categorical_missing", "mode")
    if categorical not in CATEGORICAL_MISSING:
        return f"preprocessing.categorical_missing must be mode or category, got {categorical!r}"
    return None
