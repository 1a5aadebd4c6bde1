"""Metrics from additive statistics: hand-computed values and the split/merge property."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.models.metrics import (
    add_statistics,
    auroc_from_histograms,
    metric_statistics,
    metrics_from_statistics,
    sum_statistics,
)
from medfed.models.schema import task_from_dict

FEATURES = [{"name": "x", "type": "numeric"}]
BINARY = task_from_dict(
    {
        "name": "b",
        "features": FEATURES,
        "model": {"family": "logreg"},
        "target": {"name": "y", "type": "binary"},
    }
)
MULTI = task_from_dict(
    {
        "name": "m",
        "features": FEATURES,
        "model": {"family": "logreg"},
        "target": {"name": "y", "type": "multiclass", "classes": ["a", "b", "c"]},
    }
)
COST = task_from_dict(
    {
        "name": "c",
        "features": FEATURES,
        "model": {"family": "glm"},
        "target": {"name": "y", "type": "continuous"},
    }
)
TWEEDIE = task_from_dict(
    {
        "name": "t",
        "features": FEATURES,
        "target": {"name": "y", "type": "continuous"},
        "model": {"family": "glm", "loss": "tweedie", "tweedie_power": 1.5},
    }
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def exact_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half, over all pairs."""
    pos, neg = scores[positive], scores[~positive]
    if not pos.size or not neg.size:
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def test_binary_metrics_by_hand():
    logits = np.array([2.0, -1.0, 0.5, -3.0])
    y = np.array([1, 1, 0, 0])
    stats = metric_statistics(BINARY, y, logits)
    assert (stats["tp"], stats["fn"], stats["fp"], stats["tn"]) == (1, 1, 1, 1)
    m = metrics_from_statistics(BINARY, stats)
    assert m["accuracy"] == 0.5 and m["sensitivity"] == 0.5 and m["specificity"] == 0.5
    assert m["auroc"] == pytest.approx(3 / 4)  # 0.88>0.62, 0.88>0.05, 0.27<0.62, 0.27>0.05
    hand_loss = (
        -(
            math.log(sigmoid(2))
            + math.log(sigmoid(-1))
            + math.log(1 - sigmoid(0.5))
            + math.log(1 - sigmoid(-3))
        )
        / 4
    )
    assert m["loss"] == pytest.approx(hand_loss)


def test_binary_undefined_values_are_nan():
    m = metrics_from_statistics(BINARY, metric_statistics(BINARY, [0, 0], [1.0, -1.0]))
    assert math.isnan(m["sensitivity"]) and math.isnan(m["auroc"])
    assert m["specificity"] == 0.5
    empty = metrics_from_statistics(BINARY, metric_statistics(BINARY, [], []))
    assert all(math.isnan(v) for v in empty.values())


def test_auroc_ties_within_a_bin_count_half():
    assert auroc_from_histograms([0, 2, 0], [0, 2, 0]) == 0.5
    assert auroc_from_histograms([0, 0, 1], [1, 0, 0]) == 1.0
    assert auroc_from_histograms([1, 0, 0], [0, 1, 0]) == 0.0


def test_multiclass_metrics_by_hand():
    logits = np.array(
        [
            [3.0, 2.0, 0.0],  # true 0, predicted 0, top-2 {0, 1}
            [0.0, 1.0, 2.0],  # true 1, predicted 2, top-2 {2, 1}
            [1.0, 0.0, 3.0],  # true 2, predicted 2
            [2.0, 0.0, 1.0],
        ]
    )  # true 1, predicted 0, top-2 {0, 2}
    y = np.array([0, 1, 2, 1])
    stats = metric_statistics(MULTI, y, logits)
    assert stats["confusion"] == [1, 0, 0, 1, 0, 1, 0, 0, 1]
    m = metrics_from_statistics(MULTI, stats)
    assert m["accuracy"] == 0.5
    assert m["top2_accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0 + 2 / 3) / 3)  # f1 = 2tp / (2tp+fp+fn)
    lse = [math.log(sum(math.exp(v) for v in row)) for row in logits]
    hand = np.mean([lse[i] - logits[i, y[i]] for i in range(4)])
    assert m["loss"] == pytest.approx(hand)


def test_macro_f1_skips_classes_absent_from_truth_and_predictions():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    m = metrics_from_statistics(MULTI, metric_statistics(MULTI, [0, 1], logits))
    assert m["macro_f1"] == 1.0


def test_continuous_metrics_by_hand():
    y, pred = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0])
    m = metrics_from_statistics(COST, metric_statistics(COST, y, pred))
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert m["r2"] == pytest.approx(0.0)  # SSE 2, total sum of squares 2
    assert m["calibration"] == pytest.approx(1.0)
    hand = (
        (math.log(2) - math.log(2)) ** 2
        + (math.log(2) - math.log(3)) ** 2
        + (math.log(2) - math.log(4)) ** 2
    ) / 3
    assert m["loss"] == pytest.approx(hand)
    m = metrics_from_statistics(COST, metric_statistics(COST, [5.0], [4.0]))
    assert math.isnan(m["r2"]) and m["calibration"] == pytest.approx(0.8)


def test_tweedie_loss_is_the_scaled_deviance():
    """p = 1.5, scale 100: rows (y/s, mu/s) = (1, 1) and (1, 4) have deviances 0 and
    2 * (1 / (-0.5 * 0.5) - 4**-0.5 / -0.5 + 4**0.5 / 0.5) = 2 * (-4 + 1 + 4) = 2."""
    stats = metric_statistics(TWEEDIE, [100.0, 100.0], [100.0, 400.0], loss_scale=100.0)
    assert metrics_from_statistics(TWEEDIE, stats)["loss"] == pytest.approx(1.0)


def test_adding_statistics_checks_keys_and_lengths():
    a = metric_statistics(BINARY, [1], [1.0])
    b = metric_statistics(BINARY, [0], [1.0])
    total = add_statistics(a, b)
    assert total["fp"] == 1 and total["tp"] == 1 and sum(total["hist_neg"]) == 1
    assert sum_statistics([a, b, a])["n"] == 3
    with pytest.raises(ValueError, match="different keys"):
        add_statistics(a, metric_statistics(COST, [1.0], [1.0]))
    with pytest.raises(ValueError, match="'hist_pos' of different lengths"):
        add_statistics(a, metric_statistics(BINARY, [1], [1.0], bins=10))


def test_histogram_auroc_close_to_exact_on_continuous_scores():
    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.3
    logits = rng.normal(size=3000) + 1.2 * y
    m = metrics_from_statistics(BINARY, metric_statistics(BINARY, y, logits))
    assert m["auroc"] == pytest.approx(exact_auroc(logits, y), abs=1e-3)


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(
        math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-9)
        or (math.isnan(a[k]) and math.isnan(b[k]))
        for k in a
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 999), st.booleans()), min_size=1, max_size=60), st.data())
def test_binary_halves_add_up_to_the_whole(rows, data):
    """Probabilities at bin centres, so the histogram AUROC must match the exact one."""
    cut = data.draw(st.integers(0, len(rows)))
    prob = (np.array([k for k, _ in rows]) + 0.5) / 1000
    logits, y = np.log(prob / (1 - prob)), np.array([p for _, p in rows])
    whole = metrics_from_statistics(BINARY, metric_statistics(BINARY, y, logits))
    halves = add_statistics(
        metric_statistics(BINARY, y[:cut], logits[:cut]),
        metric_statistics(BINARY, y[cut:], logits[cut:]),
    )
    assert close(metrics_from_statistics(BINARY, halves), whole)
    exact = exact_auroc(prob, y)
    assert (math.isnan(exact) and math.isnan(whole["auroc"])) or abs(whole["auroc"] - exact) < 1e-3


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.lists(st.floats(-5, 5), min_size=3, max_size=3)),
        min_size=1,
        max_size=40,
    ),
    st.data(),
)
def test_multiclass_halves_add_up_to_the_whole(rows, data):
    cut = data.draw(st.integers(0, len(rows)))
    y, logits = np.array([c for c, _ in rows]), np.array([v for _, v in rows])
    whole = metrics_from_statistics(MULTI, metric_statistics(MULTI, y, logits))
    halves = add_statistics(
        metric_statistics(MULTI, y[:cut], logits[:cut]),
        metric_statistics(MULTI, y[cut:], logits[cut:]),
    )
    assert close(metrics_from_statistics(MULTI, halves), whole)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.floats(1, 1e4)), min_size=1, max_size=40),
    st.data(),
)
def test_continuous_halves_add_up_to_the_whole(rows, data):
    cut = data.draw(st.integers(0, len(rows)))
    y, pred = np.array([a for a, _ in rows]), np.array([b for _, b in rows])
    for schema in (COST, TWEEDIE):
        whole = metrics_from_statistics(schema, metric_statistics(schema, y, pred))
        halves = add_statistics(
            metric_statistics(schema, y[:cut], pred[:cut]),
            metric_statistics(schema, y[cut:], pred[cut:]),
        )
        got = metrics_from_statistics(schema, halves)
        for key in whole:
            if math.isnan(whole[key]):
                assert math.isnan(got[key])
            else:
                assert got[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-6)
