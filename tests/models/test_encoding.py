"""Federated preprocessing: additive site statistics, their merge, and the encoder."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from medfed.models.encoding import (
    Encoder,
    GlobalStats,
    encode_target,
    merge_statistics,
    site_statistics,
    suppress_small_cells,
)
from medfed.models.schema import task_from_dict

TINY = {
    "name": "tiny",
    "features": [
        {"name": "x", "type": "numeric", "unit": "mmHg"},
        {"name": "b", "type": "binary"},
        {"name": "c", "type": "categorical", "categories": ["lo", "mid", "hi"]},
        {"name": "opt", "type": "numeric", "required": False},
    ],
    "target": {"name": "y", "type": "binary"},
    "model": {"family": "logreg"},
}
COST = {
    "name": "cost",
    "features": [{"name": "x", "type": "numeric"}],
    "target": {"name": "charges", "type": "continuous", "unit": "USD"},
    "model": {"family": "glm", "loss": "tweedie"},
}


@pytest.fixture
def schema():
    return task_from_dict(TINY)


def frame(x, b, c, opt, y) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": np.array(x, dtype=float),
            "b": np.array(b, dtype=float),
            "c": pd.Series(c, dtype=object),
            "opt": np.array(opt, dtype=float),
            "y": y,
        }
    )


@pytest.fixture
def site_a():
    return frame([1.0, 2.0, np.nan], [1, 0, np.nan], ["lo", None, "hi"], [0, 0, 0], [0, 1, 1])


@pytest.fixture
def site_b():
    return frame([3.0, 6.0], [1, 1], ["hi", "zzz"], [np.nan, 1], [0, 0])


def test_site_statistics_are_hand_computed_sums(schema, site_a):
    stats = site_statistics(site_a, schema)
    assert stats["rows"] == 3
    assert stats["numeric"]["x"] == {"count": 2, "sum": 3.0, "sumsq": 5.0, "missing": 1}
    assert stats["binary"]["b"] == {"count": 2, "sum": 1.0, "sumsq": 1.0, "missing": 1}
    assert stats["categorical"]["c"] == {"categories": {"lo": 1, "mid": 0, "hi": 1}, "missing": 1}
    assert stats["target"] == {"kind": "binary", "classes": [1, 2]}
    assert json.loads(json.dumps(stats)) == stats


def test_unknown_category_counts_as_missing(schema, site_b):
    cells = site_statistics(site_b, schema)["categorical"]["c"]
    assert cells == {"categories": {"lo": 0, "mid": 0, "hi": 1}, "missing": 1}


def test_merged_mean_and_std_equal_the_pooled_ones(schema, site_a, site_b):
    merged = merge_statistics([site_statistics(site_a, schema), site_statistics(site_b, schema)])
    pooled = np.array([1.0, 2.0, 3.0, 6.0])
    assert merged.means["x"] == pytest.approx(pooled.mean())  # 3.0
    assert merged.stds["x"] == pytest.approx(pooled.std())  # sqrt(3.5)
    assert merged.rates["b"] == pytest.approx(3 / 4)
    assert merged.missing_rates["x"] == pytest.approx(1 / 5)
    assert merged.means["opt"] == pytest.approx(1 / 4)
    assert merged.class_priors == pytest.approx((3 / 5, 2 / 5))
    assert merged.rows == 5


def test_small_category_cells_are_suppressed_per_site(schema):
    a = frame([1.0] * 10, [0] * 10, ["lo"] * 6 + ["mid"] * 4, [0] * 10, [0] * 10)
    b = frame([1.0] * 4, [0] * 4, ["mid"] * 4, [0] * 4, [0] * 4)
    sites = [site_statistics(a, schema), site_statistics(b, schema)]
    assert merge_statistics(sites, min_cell=5).modes["c"] == "lo"  # mid's 4 + 4 never counted
    assert merge_statistics(sites, min_cell=0).modes["c"] == "mid"
    assert suppress_small_cells(sites[0], 5)["categorical"]["c"]["categories"]["mid"] == 0


def test_degenerate_features_get_safe_defaults(schema):
    df = frame([2.0, 2.0], [np.nan, np.nan], [None, None], [np.nan, np.nan], [1, 1])
    merged = merge_statistics([site_statistics(df, schema)])
    assert (merged.means["x"], merged.stds["x"]) == (2.0, 1.0)
    assert merged.rates["b"] == 0.5
    assert merged.modes["c"] == "lo"


def test_sites_of_different_schemas_do_not_merge(schema, site_a):
    other = task_from_dict({**TINY, "features": TINY["features"][:2]})
    with pytest.raises(ValueError, match="same task schema"):
        merge_statistics([site_statistics(site_a, schema), site_statistics(site_a, other)])


def test_global_stats_round_trip_through_json(schema, site_a, site_b):
    merged = merge_statistics([site_statistics(site_a, schema), site_statistics(site_b, schema)])
    again = GlobalStats.from_dict(json.loads(json.dumps(merged.to_dict())))
    assert again == merged
    with pytest.raises(TypeError):
        merged.means["x"] = 0.0  # type: ignore[index]


def test_continuous_target_statistics_use_log1p():
    schema = task_from_dict(COST)
    costs = np.array([0.0, math.e - 1, math.e**3 - 1])
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "charges": costs})
    merged = merge_statistics([site_statistics(df, schema)])
    assert merged.target_log_mean == pytest.approx(4 / 3)
    assert merged.target_log_std == pytest.approx(np.std([0.0, 1.0, 3.0]))
    assert merged.target_offset == pytest.approx(4 / 3)
    assert merged.loss_scale == pytest.approx(costs.mean())


def test_encoder_layout_and_imputation(schema, site_a, site_b):
    merged = merge_statistics(
        [site_statistics(site_a, schema), site_statistics(site_b, schema)], min_cell=0
    )
    encoder = Encoder(schema, merged, missing_indicators=True)
    assert encoder.column_names == ("x", "b", "c=lo", "c=mid", "c=hi", "opt", "opt_missing")
    assert encoder.n_inputs == 7
    std = math.sqrt(3.5)
    opt_std = math.sqrt(1 / 4 - 1 / 16)
    expected = np.array(
        [
            [(3 - 3) / std, 1.0, 0, 0, 1, (1 - 0.25) / opt_std, 0],  # hi is the mode (2 of 3)
            [(6 - 3) / std, 1.0, 0, 0, 1, (1 - 0.25) / opt_std, 0],  # 'zzz' -> mode
        ],
        dtype=np.float32,
    )
    expected[0, 5:] = [0.0, 1.0]  # missing opt -> mean, flagged
    out = encoder.transform(site_b)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    row = encoder.transform(site_a)[2]  # x and b missing
    np.testing.assert_allclose(row[:2], [0.0, 0.75])


def test_encoder_without_indicators_and_absent_optional_column(schema, site_a):
    merged = merge_statistics([site_statistics(site_a, schema)])
    encoder = Encoder(schema, merged)
    assert encoder.n_inputs == 6
    out = encoder.transform(site_a.drop(columns="opt"))
    np.testing.assert_array_equal(out[:, 5], 0.0)


def test_absent_required_column_is_named(schema, site_a):
    merged = merge_statistics([site_statistics(site_a, schema)])
    with pytest.raises(ValueError, match="no column 'x'"):
        Encoder(schema, merged).transform(site_a.drop(columns="x"))
    with pytest.raises(ValueError, match="no column 'y'"):
        site_statistics(site_a.drop(columns="y"), schema)


def test_encode_target_dtypes():
    binary = task_from_dict(TINY)
    assert encode_target(pd.DataFrame({"y": [0, 1]}), binary).dtype == np.float32
    multi = task_from_dict(
        {**TINY, "target": {"name": "y", "type": "multiclass", "classes": ["a", "b", "c"]}}
    )
    assert encode_target(pd.DataFrame({"y": [2, 0]}), multi).dtype == np.int64
    cost = encode_target(pd.DataFrame({"charges": [1234.5]}), task_from_dict(COST))
    assert cost.dtype == np.float32 and cost[0] == pytest.approx(1234.5)
    with pytest.raises(ValueError, match="target column 'y'"):
        encode_target(pd.DataFrame({"y": [0.0, np.nan]}), binary)
