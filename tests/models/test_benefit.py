"""Paired bootstrap intervals at the node and the plain benefit sentence."""

from __future__ import annotations

import math

import numpy as np

from medfed.models.benefit import BENEFIT_KEYS, PAIRS, benefit_sentence, paired_intervals
from medfed.models.pipeline import study_schema


def test_points_are_hand_computed_and_identical_models_differ_by_exactly_zero(small_study):
    schema = study_schema(small_study("task=diagnosis"))  # binary, primary metric accuracy
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0], dtype=np.float32)
    perfect = np.where(y > 0, 3.0, -3.0)
    half = np.array([3.0, 3.0, 3.0, 3.0, -3.0, -3.0, -3.0, -3.0])  # right on 4 of 8
    out = paired_intervals(
        schema,
        y,
        {"a": perfect, "b": half, "c": perfect},
        {"a-b": ("a", "b"), "a-c": ("a", "c")},
        resamples=100,
        seed=0,
    )
    assert out["a"][0] == 1.0 and out["b"][0] == 0.5 and out["a-b"][0] == 0.5
    assert out["a"][1] == out["a"][2] == 1.0  # every resample of a perfect model is perfect
    assert out["a-c"] == (0.0, 0.0, 0.0)
    low, high = out["a-b"][1:]
    assert 0.0 <= low <= 0.5 <= high <= 1.0


def test_interval_is_seeded_and_narrows_with_more_rows(small_study):
    schema = study_schema(small_study("task=diagnosis"))
    rng = np.random.default_rng(0)

    def width(n: int) -> float:
        y = rng.integers(0, 2, size=n).astype(np.float32)
        logits = np.where(rng.random(n) < 0.7, 2 * y - 1, 1 - 2 * y).astype(np.float64)
        point, low, high = paired_intervals(schema, y, {"m": logits}, {}, seed=3)["m"]
        again = paired_intervals(schema, y, {"m": logits}, {}, seed=3)["m"]
        assert again == (point, low, high) and low <= point <= high
        return high - low

    assert width(2000) < width(50)


def test_sentence_reads_gain_for_both_metric_directions():
    improved = benefit_sentence("H1", "auroc", True, (0.04, 0.01, 0.07))
    tail = " compared with training alone."
    assert improved == "H1: joining improved auroc by 0.04 [0.01, 0.07]" + tail
    lower = benefit_sentence("H2", "rmse", False, (-1200.0, -2000.0, -300.0))  # RMSE fell
    assert lower == "H2: joining improved rmse by 1,200 [300, 2,000]" + tail
    worse = benefit_sentence("H3", "accuracy", True, (-0.1, -0.2, -0.05))
    assert "worsened accuracy by 0.1 [0.05, 0.2]" in worse
    assert "no clear difference" in benefit_sentence("H4", "accuracy", True, (0.01, -0.02, 0.04))
    assert "too few" in benefit_sentence("H5", "auroc", True, (0.1, math.nan, math.nan))


def test_only_values_and_interval_ends_are_whitelisted():
    assert len(BENEFIT_KEYS) == 3 * (3 + len(PAIRS)) + 2
    assert all(
        key.split("-")[0] in ("federated", "personalised", "local", "n", "epochs")
        for key in BENEFIT_KEYS
    )
