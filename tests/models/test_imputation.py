"""Federated imputation: the median of merged histograms, missing as a category, model.pt state."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medfed.models.encoding import (
    Encoder,
    GlobalStats,
    encoder_from_state,
    encoder_state,
    merge_statistics,
    site_statistics,
)
from medfed.models.imputation import (
    BINS,
    MISSING,
    histogram_median,
)
from medfed.models.schema import load_task
from medfed.server.study.config import ConfigError, compose_study

PRICING = load_task("pricing")


def test_histogram_median_by_hand() -> None:
    # two values in [1, 2) and two in [2, 3): the median is the edge between them
    assert histogram_median([0, 2, 2, 0], 0.0, 4.0) == 2.0
    # three in [0, 1), one in [3, 4): half of 4 is reached 2/3 of the way into the first bin
    assert histogram_median([3, 0, 0, 1], 0.0, 4.0) == pytest.approx(2 / 3)
    assert histogram_median([0, 0, 0, 0], 0.0, 4.0) is None


def frame(bmi: list[float]) -> pd.DataFrame:
    n = len(bmi)
    return pd.DataFrame(
        {
            "age": [40.0] * n,
            "sex": ["female", "male"] * (n // 2),
            "bmi": bmi,
            "children": [1.0] * n,
            "smoker": [0.0] * n,
            "region": ["northeast"] * n,
            "charges": [1000.0] * n,
        }
    )


def test_median_of_two_sites_comes_from_their_summed_histograms() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(24, 3, 300), rng.lognormal(3.5, 0.2, 200)
    stats = [site_statistics(frame(list(x)), PRICING, histograms=True) for x in (a, b)]
    assert len(stats[0]["numeric"]["bmi"]["histogram"]) == BINS
    merged = merge_statistics(stats, imputation="median")
    feat = PRICING.feature("bmi")
    width = (feat.high - feat.low) / BINS
    assert abs(merged.fills["bmi"] - np.median(np.concatenate([a, b]))) <= width
    assert merged.fills["bmi"] != pytest.approx(merged.means["bmi"], abs=0.1)
    assert merge_statistics(stats).fills["bmi"] == merged.means["bmi"]  # imputation: mean


def test_histograms_are_sent_only_for_median_imputation_and_small_bins_suppressed() -> None:
    assert "histogram" not in site_statistics(frame([20.0, 30.0]), PRICING)["numeric"]["bmi"]
    one_outlier = [25.0] * 9 + [55.0]
    stats = site_statistics(frame(one_outlier), PRICING, histograms=True)
    merged = merge_statistics([stats], min_cell=5, imputation="median")
    feat = PRICING.feature("bmi")
    assert abs(merged.fills["bmi"] - 25.0) <= (feat.high - feat.low) / BINS


def test_the_encoder_fills_a_missing_numeric_value_with_the_median() -> None:
    stats = merge_statistics(
        [site_statistics(frame([20.0] * 8 + [40.0] * 2), PRICING, histograms=True)],
        imputation="median",
    )
    encoder = Encoder(PRICING, stats)
    x = encoder.transform(frame([np.nan, 20.0]))
    col = encoder.column_names.index("bmi")
    expected = (stats.fills["bmi"] - stats.means["bmi"]) / stats.stds["bmi"]
    assert x[0, col] == pytest.approx(expected, abs=1e-6)
    assert abs(stats.fills["bmi"] - 20.0) <= (70 - 10) / BINS  # the median, not the mean (24)


def test_categorical_missing_as_its_own_category() -> None:
    rows = frame([25.0] * 10)
    stats = merge_statistics([site_statistics(rows, PRICING)], categorical_missing="category")
    encoder = Encoder(PRICING, stats)
    assert "sex=" + MISSING in encoder.column_names
    rows.loc[0, "sex"] = None
    x = encoder.transform(rows)
    names = encoder.column_names
    assert x[0, names.index("sex=" + MISSING)] == 1.0
    assert x[0, names.index("sex=female")] == x[0, names.index("sex=male")] == 0.0
    mode = Encoder(PRICING, merge_statistics([site_statistics(rows, PRICING)]))
    assert mode.n_inputs == encoder.n_inputs - 2  # sex and region lose their missing column


def test_model_pt_encoder_state_rebuilds_the_same_encoding() -> None:
    stats = merge_statistics(
        [site_statistics(frame([20.0, 30.0] * 5), PRICING, histograms=True)],
        imputation="median",
        categorical_missing="category",
    )
    state = encoder_state(stats, missing_indicators=True)
    rows = frame([np.nan, 22.0])
    rows.loc[1, "region"] = None
    again = encoder_from_state(PRICING, state)
    np.testing.assert_array_equal(
        again.transform(rows), Encoder(PRICING, stats, missing_indicators=True).transform(rows)
    )
    assert GlobalStats.from_dict(state["statistics"]).imputation == "median"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "preprocessing.imputation=mode",
            "preprocessing.imputation must be mean or median, got 'mode'",
        ),
        (
            "preprocessing.categorical_missing=drop",
            "preprocessing.categorical_missing must be mode or category, got 'drop'",
        ),
    ],
)
def test_bad_imputation_settings_are_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose_study([override])
    assert str(info.value) == message
