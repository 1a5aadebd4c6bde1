"""Calibration of a yes/no model from the additive statistics the hospitals report.

Every node reports, for its test rows, the counts of positives and negatives per equal-width bin
of predicted probability (``hist_pos``/``hist_neg``, the AUROC histograms) and the sum of squared
errors ``brier_sum``: the reliability diagram, the Brier score and the F1-optimal threshold follow
from their sums, so no prediction leaves a hospital. A bin's mean predicted probability is taken
at the centres of the fine bins it merges (off by at most half a fine bin: 0.005 with the default
100 bins).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

WELL_CALIBRATED = 0.02  # mean |predicted - observed| below this reads as well calibrated


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of the reliability diagram: its range, row count, mean predicted probability and
    observed share of positives (NaN when empty)."""

    low: float
    high: float
    count: int
    predicted: float
    observed: float


def reliability(
    hist_pos: Sequence[float], hist_neg: Sequence[float], groups: int = 10
) -> list[ReliabilityBin]:
    """Merge the fine histograms into ``groups`` equal-width bins of predicted probability."""
    pos, neg = np.asarray(hist_pos, np.float64), np.asarray(hist_neg, np.float64)
    fine = pos.size
    if fine % groups:
        groups = math.gcd(fine, groups) or 1
    centres = (np.arange(fine) + 0.5) / fine
    out = []
    for g, idx in enumerate(np.array_split(np.arange(fine), groups)):
        count = float(pos[idx].sum() + neg[idx].sum())
        predicted = float(np.dot(centres[idx], pos[idx] + neg[idx]) / count) if count else math.nan
        observed = float(pos[idx].sum() / count) if count else math.nan
        out.append(ReliabilityBin(g / groups, (g + 1) / groups, int(count), predicted, observed))
    return out


def brier_score(stats: Mapping[str, Any]) -> float:
    """Mean squared difference between predicted probability and outcome (0 is perfect)."""
    n = float(stats.get("n", 0.0))
    return float(stats["brier_sum"]) / n if n > 0 and "brier_sum" in stats else math.nan


def confidence_gap(bins: Sequence[ReliabilityBin]) -> tuple[float, float]:
    """Row-weighted mean ``|predicted - observed|`` and the signed over-confidence.

    The signed value is positive when predictions are more extreme than the outcomes (a bin
    above 50 % sees fewer positives than predicted, one below sees more): over-confidence;
    negative for under-confidence.
    """
    used = [b for b in bins if b.count]
    total = sum(b.count for b in used)
    if not total:
        return math.nan, math.nan
    absolute = sum(b.count * abs(b.predicted - b.observed) for b in used) / total
    signed = (
        sum(
            b.count * math.copysign(1.0, b.predicted - 0.5) * (b.predicted - b.observed)
            for b in used
        )
        / total
    )
    return absolute, signed


def calibration_sentence(bins: Sequence[ReliabilityBin], brier: float) -> str:
    """One sentence a clinician can read: over-, under- or well calibrated, with the numbers."""
    absolute, signed = confidence_gap(bins)
    rows = sum(b.count for b in bins)
    numbers = (
        f"mean gap {absolute:.3f} between predicted and observed risk over {rows} test "
        f"rows; Brier score {brier:.3f}"
    )
    if not math.isfinite(absolute):
        return "No test rows were scored, so calibration cannot be judged."
    if absolute < WELL_CALIBRATED:
        return f"The model is well calibrated: predicted risks match observed rates ({numbers})."
    if signed > 0:
        return (
            "The model is over-confident: its risks are more extreme than the observed "
            f"rates, so treat probabilities near 0 or 1 with caution ({numbers})."
        )
    return (
        "The model is under-confident: the observed rates are more extreme than its "
        f"risks, which sit too close to 50 % ({numbers})."
    )


def f1_optimal_threshold(
    hist_pos: Sequence[float], hist_neg: Sequence[float]
) -> tuple[float, float]:
    """The bin edge ``k / bins`` at which labelling "yes" from there up maximises F1, and F1.

    Ties go to the threshold nearest 0.5. ``(0.5, nan)`` without positives.
    """
    pos, neg = np.asarray(hist_pos, np.float64), np.asarray(hist_neg, np.float64)
    if pos.sum() <= 0:
        return 0.5, math.nan
    tp = np.cumsum(pos[::-1])[::-1]  # positives at or above edge k
    fp = np.cumsum(neg[::-1])[::-1]
    f1 = 2 * tp / (2 * tp + fp + (pos.sum() - tp))
    edges = np.arange(pos.size) / pos.size
    best = np.flatnonzero(np.isclose(f1, f1.max()))
    k = int(best[np.argmin(np.abs(edges[best] - 0.5))])
    return float(edges[k]), float(f1[k])


def validation_threshold(stats: Mapping[str, Any]) -> dict[str, Any] | None:
    """The decision threshold chosen on a validation split from its summed score histograms
    (``hist_pos``/``hist_neg``; ``None`` without them: not a yes/no target).

    ``value`` is :func:`f1_optimal_threshold`, with its ``f1`` and the ``rows`` and
    ``positives`` it was chosen on; ``value`` is ``None``, and ``reason`` says why, when no site
    disclosed its validation statistics, when the split has no positive case, or when no cut-off
    beats labelling every row positive (F1 ``2P / (2P + N)``): then the histograms cannot tell
    cases apart -- typically a few validation rows per site, merged into one bin by the nodes'
    small-cell coarsening -- and a threshold chosen on them would be arbitrary.

    The histograms are the sites' additive statistics, each coarsened at its node so that no bin
    holds 1 to ``min_cell_count - 1`` cases (:func:`medfed.client.disclosure.coarsen_histograms`):
    the true and false positives at every bin edge are sums of such counts, and no validation
    row's score leaves a node.
    """
    if "hist_pos" not in stats or "hist_neg" not in stats:
        return None
    positives = float(np.sum(stats["hist_pos"]))
    rows = positives + float(np.sum(stats["hist_neg"]))
    out: dict[str, Any] = {"value": None, "f1": math.nan, "rows": rows, "positives": positives}
    if rows <= 0:
        return {**out, "reason": "no site disclosed validation statistics (small cells withheld)"}
    if positives <= 0:
        return {**out, "reason": "the validation split held no positive case"}
    value, f1 = f1_optimal_threshold(stats["hist_pos"], stats["hist_neg"])
    everyone = 2 * positives / (positives + rows)
    if f1 <= everyone + 1e-12:
        return {
            **out,
            "f1": f1,
            "reason": f"no cut-off beat labelling every validation row positive (F1 "
            f"{everyone:.3f}): too few validation rows per site to tell cases apart once "
            "small cells are coarsened",
        }
    return {**out, "value": value, "f1": f1}
