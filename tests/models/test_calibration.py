"""Calibration from summed histograms: hand-computed bins, Brier score, threshold, verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medfed.models.calibration import (
    ReliabilityBin,
    brier_score,
    calibration_sentence,
    confidence_gap,
    f1_optimal_threshold,
    reliability,
    validation_threshold,
)
from medfed.models.metrics import _binary, metrics_from_statistics, sum_statistics
from medfed.models.schema import load_task


def test_fine_bins_merge_into_ten_with_hand_computed_values() -> None:
    pos, neg = [0] * 20, [0] * 20
    pos[1], neg[1] = 1, 3  # fine bin 1 of 20: centre 0.075
    pos[19], neg[18] = 2, 1  # centres 0.975 and 0.925, both in the last tenth
    bins = reliability(pos, neg)
    assert len(bins) == 10 and bins[0].count == 4
    assert bins[0].predicted == pytest.approx(0.075) and bins[0].observed == pytest.approx(0.25)
    assert bins[9].predicted == pytest.approx((2 * 0.975 + 0.925) / 3)
    assert bins[9].observed == pytest.approx(2 / 3)
    assert bins[5].count == 0 and math.isnan(bins[5].observed)


def test_brier_score_is_summed_on_the_node_and_added_across_hospitals() -> None:
    y = np.array([1.0, 0.0, 1.0, 0.0])
    logits = np.array([0.0, 0.0, np.log(3.0), -np.log(3.0)])  # p = .5, .5, .75, .25
    one, two = _binary(y[:2], logits[:2], 10), _binary(y[2:], logits[2:], 10)
    total = sum_statistics([one, two])
    expected = (0.25 + 0.25 + 0.0625 + 0.0625) / 4
    assert brier_score(total) == pytest.approx(expected)
    assert "brier" not in metrics_from_statistics(load_task("diagnosis"), total)  # report only


def test_the_f1_optimal_threshold_is_a_bin_edge_hand_computed() -> None:
    pos = [0, 0, 1, 3]  # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]
    neg = [4, 1, 1, 0]
    # from edge .25: tp 4 fp 2 fn 0 -> 8/10; from .5: tp 4 fp 1 -> 8/9; from .75: tp 3 fn 1 -> 6/7
    threshold, f1 = f1_optimal_threshold(pos, neg)
    assert threshold == 0.5 and f1 == pytest.approx(8 / 9)
    assert f1_optimal_threshold([0, 0], [3, 1]) == (0.5, pytest.approx(math.nan, nan_ok=True))


def test_the_validation_threshold_comes_from_the_sites_summed_histograms() -> None:
    from medfed.client.disclosure import coarsen_histograms

    # each node coarsens its validation histograms (min_cell_count 5) before sending them:
    # site B's 2 + 3 positives in the top bins merge into one group of 5 in bin [.5, .75)
    site_a = ([0.0, 5.0, 0.0, 5.0], [5.0, 0.0, 5.0, 0.0])
    site_b = coarsen_histograms([0.0, 0.0, 2.0, 3.0], [5.0, 0.0, 0.0, 0.0], 5)
    assert site_b == ([0.0, 0.0, 5.0, 0.0], [5.0, 0.0, 0.0, 0.0])
    summed = {
        "hist_pos": [a + b for a, b in zip(site_a[0], site_b[0], strict=True)],  # 0 5 5 5
        "hist_neg": [a + b for a, b in zip(site_a[1], site_b[1], strict=True)],  # 10 0 5 0
    }
    # labelling "yes" from edge 0: tp 15 fp 15 fn 0 -> F1 30/45; from .25: tp 15 fp 5 -> 30/35;
    # from .5: tp 10 fp 5 fn 5 -> 20/30; from .75: tp 5 fp 0 fn 10 -> 10/25
    chosen = validation_threshold(summed)
    assert chosen == {"value": 0.25, "f1": pytest.approx(6 / 7), "rows": 30.0, "positives": 15.0}
    assert validation_threshold({"mae_sum": 1.0}) is None  # not a yes/no target


def test_a_validation_split_that_cannot_choose_keeps_no_threshold() -> None:
    none = validation_threshold({"hist_pos": [0, 0], "hist_neg": [3, 4]})
    assert none is not None and none["value"] is None and "no positive case" in none["reason"]
    withheld = validation_threshold({"hist_pos": [0, 0], "hist_neg": [0, 0]})  # all zeroed
    assert withheld is not None and "no site disclosed" in withheld["reason"]
    # every row in one coarsened bin: each edge gives F1 2P / (2P + N) = 10/17 (all "yes")
    merged = validation_threshold({"hist_pos": [0, 5, 0], "hist_neg": [0, 7, 0]})
    assert merged is not None and merged["value"] is None
    assert merged["f1"] == pytest.approx(10 / 17) and "every validation row" in merged["reason"]


def _bin(predicted: float, observed: float, count: int = 10) -> ReliabilityBin:
    return ReliabilityBin(0.0, 1.0, count, predicted, observed)


def test_the_sentence_says_over_under_or_well_calibrated() -> None:
    over = [_bin(0.9, 0.7), _bin(0.1, 0.3)]
    under = [_bin(0.6, 0.9), _bin(0.4, 0.1)]
    well = [_bin(0.8, 0.81), _bin(0.2, 0.2)]
    assert calibration_sentence(over, 0.1).startswith("The model is over-confident")
    assert calibration_sentence(under, 0.1).startswith("The model is under-confident")
    assert calibration_sentence(well, 0.1).startswith("The model is well calibrated")
    assert confidence_gap(over) == (pytest.approx(0.2), pytest.approx(0.2))
    assert "20 test rows; Brier score 0.100" in calibration_sentence(over, 0.1)


@given(
    st.lists(st.integers(0, 50), min_size=100, max_size=100),
    st.lists(st.integers(0, 50), min_size=100, max_size=100),
)
def test_bins_keep_every_row_and_stay_within_their_range(pos: list[int], neg: list[int]) -> None:
    bins = reliability(pos, neg)
    assert sum(b.count for b in bins) == sum(pos) + sum(neg)
    for b in bins:
        assert b.count == 0 or b.low <= b.predicted <= b.high
