"""Synthetic hospitals: deterministic, valid, heterogeneous, and with a learnable ground truth."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.models.ingest.synthetic import (
    Site,
    SkewConfig,
    export_csv,
    generate_federation,
    generate_site,
    oracle_score,
    site_sizes,
)
from medfed.models.schema import SchemaError, TaskSchema, load_task, task_dir, task_from_dict

TASKS = ("diagnosis", "treatment", "pricing")
MAY_BE_MISSING = {
    "diagnosis": {"st_slope", "major_vessels", "thal", "resting_bp", "cholesterol"},
    "treatment": {"admission_source", "num_lab_procedures"},
    "pricing": {"children", "bmi"},
}
DEFAULT_SKEW = SkewConfig()
DEFAULTS = {"hospitals": 4, "min_size": 120, "max_size": 1200, "test_fraction": 0.25}


@cache
def _schema(name: str) -> TaskSchema:
    return load_task(name)


@cache
def _federation(name: str, seed: int = 0) -> list[Site]:
    return generate_federation(_schema(name), skew=SkewConfig(), seed=seed, **DEFAULTS)


@cache
def _large(name: str, seed: int = 0, skew: SkewConfig = DEFAULT_SKEW) -> list[Site]:
    return generate_federation(
        _schema(name),
        hospitals=4,
        min_size=2,
        max_size=2,
        test_fraction=0.5,
        skew=skew,
        seed=seed,
        sizes=[3000] * 4,
    )


def _check_conventions(schema: TaskSchema, frame: pd.DataFrame) -> None:
    assert list(frame.columns) == [*schema.feature_names, schema.target.name]
    for feat in schema.features:
        col = frame[feat.name]
        present = col.dropna()
        if feat.kind == "categorical":
            assert col.dtype == object
            assert set(present) <= set(feat.categories)
            assert all(v is None for v in col[col.isna()])
            continue
        assert col.dtype == np.float64
        if feat.kind == "binary":
            assert set(present) <= {0.0, 1.0}
        if feat.low is not None:
            assert (present >= feat.low).all(), feat.name
        if feat.high is not None:
            assert (present <= feat.high).all(), feat.name
    target = frame[schema.target.name]
    assert target.notna().all()
    if schema.target.kind == "continuous":
        assert target.dtype == np.float64
        assert schema.target.low is None or (target >= schema.target.low).all()
    else:
        assert target.dtype == np.int64
        assert target.between(0, max(schema.target.n_outputs, 2) - 1).all()


@pytest.mark.parametrize("name", TASKS)
def test_frames_follow_the_data_conventions(name: str) -> None:
    schema = _schema(name)
    for site in _federation(name):
        _check_conventions(schema, site.train)
        _check_conventions(schema, site.test)
        assert len(site.test_oracle) == len(site.test)


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_data_other_seed_other_data(name: str) -> None:
    again = generate_federation(_schema(name), skew=SkewConfig(), seed=0, **DEFAULTS)
    for a, b in zip(_federation(name), again, strict=True):
        pd.testing.assert_frame_equal(a.train, b.train)
        pd.testing.assert_frame_equal(a.test, b.test)
        np.testing.assert_array_equal(a.test_oracle, b.test_oracle)
    other = generate_federation(_schema(name), skew=SkewConfig(), seed=1, **DEFAULTS)
    assert [len(s.train) for s in other] != [len(s.train) for s in _federation(name)]
    fixed = dict(DEFAULTS, min_size=300, max_size=300)
    a, b = (
        generate_federation(_schema(name), skew=SkewConfig(), seed=s, **fixed)[0] for s in (0, 1)
    )
    assert not a.train.equals(b.train)


@pytest.mark.parametrize("name", TASKS)
def test_a_site_does_not_depend_on_the_other_sites(name: str) -> None:
    for index, site in enumerate(_federation(name)):
        alone = generate_site(
            _schema(name),
            index,
            4,
            n_rows=len(site.train) + len(site.test),
            test_fraction=0.25,
            skew=SkewConfig(),
            seed=0,
        )
        assert alone.name == site.name == f"hospital-{index}"
        pd.testing.assert_frame_equal(alone.train, site.train)
        pd.testing.assert_frame_equal(alone.test, site.test)
        np.testing.assert_array_equal(alone.test_oracle, site.test_oracle)


@pytest.mark.parametrize("seed", range(5))
def test_sizes_are_in_bounds_and_spread(seed: int) -> None:
    sizes = site_sizes(4, 120, 1200, seed=seed)
    assert all(120 <= n <= 1200 for n in sizes)
    assert max(sizes) / min(sizes) > 3
    sites = generate_federation(_schema("diagnosis"), skew=SkewConfig(), seed=seed, **DEFAULTS)
    assert [len(s.train) + len(s.test) for s in sites] == sizes
    assert [len(s.test) for s in sites] == [round(0.25 * n) for n in sizes]


def test_explicit_sizes() -> None:
    sites = generate_federation(
        _schema("pricing"),
        hospitals=3,
        min_size=120,
        max_size=1200,
        test_fraction=0.2,
        skew=SkewConfig(),
        seed=0,
        sizes=[10, 50, 2000],
    )
    assert [len(s.train) for s in sites] == [8, 40, 1600]
    assert site_sizes(3, 120, 1200, seed=0, sizes=[10, 50, 2000]) == [10, 50, 2000]
    with pytest.raises(ValueError, match="sizes lists 2 hospitals but hospitals is 3"):
        generate_federation(
            _schema("pricing"),
            hospitals=3,
            min_size=120,
            max_size=1200,
            test_fraction=0.2,
            skew=SkewConfig(),
            seed=0,
            sizes=[10, 20],
        )


@pytest.mark.parametrize("name", TASKS)
def test_missing_values_only_where_allowed(name: str) -> None:
    frames = [f for s in _large(name) for f in (s.train, s.test)]
    missing = {c for f in frames for c in f.columns[f.isna().any()]}
    assert missing <= MAY_BE_MISSING[name]
    optional = {f.name for f in _schema(name).features if not f.required}
    assert optional <= missing
    none = _large(name, skew=SkewConfig(missing=0.0))
    assert not any(s.train.isna().any().any() for s in none)


def test_missing_rates_differ_across_sites() -> None:
    rates = [s.train["thal"].isna().mean() for s in _large("diagnosis")]
    assert max(rates) - min(rates) > 0.03


def test_sites_differ_in_prevalence_age_and_sex() -> None:
    sites = _large("diagnosis")
    prevalence = [s.train["cad"].mean() for s in sites]
    age = [s.train["age"].mean() for s in sites]
    male = [(s.train["sex"] == "male").mean() for s in sites]
    assert max(prevalence) - min(prevalence) > 0.1
    assert max(age) - min(age) > 4
    assert max(male) - min(male) > 0.1
    same = _large("diagnosis", skew=SkewConfig(age=0, sex=0, prevalence=0, site_effect=0))
    assert np.ptp([s.train["age"].mean() for s in same]) < 1.5
    assert np.ptp([s.train["cad"].mean() for s in same]) < 0.06


def test_sites_differ_in_insulin_use_and_cost() -> None:
    no_insulin = [(s.train["insulin"] == 0).mean() for s in _large("treatment")]
    assert max(no_insulin) - min(no_insulin) > 0.05
    cost = [s.train["charges"].mean() for s in _large("pricing")]
    assert max(cost) / min(cost) > 1.3


def test_oracle_metrics_with_default_settings() -> None:
    assert 0.80 <= oracle_score(_schema("diagnosis"), _federation("diagnosis"))["accuracy"] <= 0.88
    assert 0.60 <= oracle_score(_schema("treatment"), _federation("treatment"))["accuracy"] <= 0.75
    assert 0.70 <= oracle_score(_schema("pricing"), _federation("pricing"))["r2"] <= 0.85


@pytest.mark.parametrize(
    ("name", "metric", "low", "high"),
    [
        ("diagnosis", "accuracy", 0.80, 0.88),
        ("treatment", "accuracy", 0.60, 0.75),
        ("pricing", "r2", 0.70, 0.85),
    ],
)
def test_oracle_metrics_on_large_sites(name: str, metric: str, low: float, high: float) -> None:
    for seed in (0, 1):
        assert low <= oracle_score(_schema(name), _large(name, seed))[metric] <= high


def test_oracle_outputs() -> None:
    site = _federation("treatment")[0]
    assert site.test_oracle.shape == (len(site.test), 4)
    np.testing.assert_allclose(site.test_oracle.sum(axis=1), 1.0)
    site = _federation("diagnosis")[0]
    assert site.test_oracle.shape == (len(site.test),)
    assert ((site.test_oracle > 0) & (site.test_oracle < 1)).all()
    assert set(oracle_score(_schema("pricing"), _federation("pricing"))) == {"rmse", "mae", "r2"}


def test_clinically_plausible_directions() -> None:
    train = pd.concat([s.train for s in _large("diagnosis")])
    assert train.groupby("chest_pain")["cad"].mean().idxmax() == "asymptomatic"
    assert (
        train.loc[train["cad"] == 1, "max_heart_rate"].mean()
        < train.loc[train["cad"] == 0, "max_heart_rate"].mean()
    )
    cost = pd.concat([s.train for s in _large("pricing")])
    assert 9_000 < cost["charges"].mean() < 18_000
    assert cost["charges"].mean() > cost["charges"].median()
    smokers = cost[cost["smoker"] == 1]
    assert smokers["charges"].mean() > 2.5 * cost.loc[cost["smoker"] == 0, "charges"].mean()
    assert (
        smokers[smokers["bmi"] > 30]["charges"].mean()
        > smokers[smokers["bmi"] < 30]["charges"].mean() * 1.4
    )
    treat = pd.concat([s.train for s in _large("treatment")])
    up = treat.groupby("a1c_result")["insulin"].apply(lambda y: (y == 2).mean())
    assert up[">8"] > up["norm"]


USER_SCHEMA = {
    "name": "readmission",
    "features": [
        {"name": "age", "type": "numeric", "unit": "years", "range": [18, 100]},
        {"name": "gender", "type": "categorical", "categories": ["f", "m", "x"]},
        {"name": "los", "type": "numeric", "unit": "days", "range": [0, None]},
        {"name": "icu", "type": "binary", "required": False},
        {"name": "visits", "type": "numeric", "unit": "count", "range": [0, 50]},
    ],
    "target": {"name": "readmitted", "type": "binary"},
}


@pytest.mark.parametrize(
    "target",
    [
        {"name": "readmitted", "type": "binary"},
        {"name": "ward", "type": "multiclass", "classes": ["a", "b", "c"]},
        {"name": "cost", "type": "continuous", "range": [0, None]},
        {"name": "score", "type": "continuous", "range": [-10, 10]},
    ],
)
def test_user_written_schema_gets_data(tmp_path: Path, target: dict) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(dict(USER_SCHEMA, target=target)), encoding="utf-8")
    schema = load_task(path)
    sites = generate_federation(
        schema,
        hospitals=3,
        min_size=200,
        max_size=2000,
        test_fraction=0.5,
        skew=SkewConfig(missing=0.3),
        seed=3,
    )
    for site in sites:
        _check_conventions(schema, site.train)
        assert site.train.columns[site.train.isna().any()].tolist() in ([], ["icu"])
    assert (site.train["visits"] == site.train["visits"].round()).all()
    score = oracle_score(schema, sites)
    if target["type"] == "continuous":
        assert score["r2"] > 0.3
    else:
        assert score["accuracy"] > 1.0 / max(schema.target.n_outputs, 2) + 0.15


def test_user_hints_drive_the_ground_truth() -> None:
    hints = {
        "features": {"los": {"dist": "lognormal", "mean": 5, "sd": 4, "decimals": 1}},
        "outcome": {"intercept": 0.0, "effects": {"los": 2.0, "gender=m*icu": -1.0}},
    }
    schema = task_from_dict(dict(USER_SCHEMA, synthetic=hints))
    site = generate_site(
        schema, 0, 1, n_rows=4000, test_fraction=0.25, skew=SkewConfig(missing=0.0), seed=0
    )
    train = site.train
    assert train["los"].corr(train["readmitted"]) > 0.3
    assert (
        train.loc[(train["gender"] == "m") & (train["icu"] == 1), "readmitted"].mean()
        < train.loc[train["gender"] == "f", "readmitted"].mean()
    )


@pytest.mark.parametrize(
    ("hints", "fragment"),
    [
        ({"colour": 1}, "unknown key(s) ['colour']"),
        ({"features": {"weight": {}}}, "unknown feature(s) ['weight']"),
        ({"features": {"age": {"spread": 1}}}, "synthetic.features.age: unknown key(s)"),
        ({"features": {"age": {"dist": "beta"}}}, "'dist' must be normal, lognormal or poisson"),
        ({"features": {"gender": {"probs": [0.5, 0.5]}}}, "one probability per category (3)"),
        ({"features": {"icu": {"p": 1.5}}}, "strictly between 0 and 1"),
        ({"features": {"age": {"sd": -1}}}, "'sd' must be positive"),
        ({"features": {"age": {"clip": [200, 300]}}}, "does not overlap the schema range"),
        (
            {"features": {"age": {"effects": {"los": 0.1}}, "los": {"effects": {"age": 0.1}}}},
            "form a cycle",
        ),
        ({"outcome": {"effects": {"gender": 1.0}}}, "must pick a category of 'gender'"),
        ({"outcome": {"effects": {"age=old": 1.0}}}, "uses '=' on 'age'"),
        ({"outcome": {"effects": {"bmi": 1.0}}}, "names unknown feature 'bmi'"),
        ({"outcome": {"link": "log"}}, "'link' applies to continuous targets only"),
        ({"outcome": {"effects": {"age": "high"}}}, "must be a finite number"),
        ({"outcome": {"shape": 2.0}}, "synthetic.outcome: unknown key(s) ['shape']"),
        ({"features": {"age": {"probs": [0.5, 0.5]}}}, "unknown key(s) ['probs']"),
        ({"features": {"gender": {"p": 0.5}}}, "unknown key(s) ['p']"),
        ({"features": {"icu": {"missing": -1}}}, "'missing' must be >= 0"),
        ({"features": {"age": {"role": "income"}}}, "'role' must be age or sex"),
        ({"features": {"visits": {"decimals": 0.5}}}, "'decimals' must be an integer"),
    ],
)
def test_bad_hints_raise_schema_error(hints: dict, fragment: str) -> None:
    schema = task_from_dict(dict(USER_SCHEMA, synthetic=hints))
    with pytest.raises(SchemaError) as info:
        generate_site(schema, 0, 1, n_rows=10, test_fraction=0.2, skew=SkewConfig(), seed=0)
    assert fragment in str(info.value)
    assert str(info.value).startswith("task 'readmission'")


def test_multiclass_hint_coefficients_map_classes() -> None:
    schema = task_from_dict(
        dict(
            USER_SCHEMA,
            target={"name": "ward", "type": "multiclass", "classes": ["a", "b", "c"]},
            synthetic={"outcome": {"effects": {"age": {"d": 1.0}}}},
        )
    )
    with pytest.raises(SchemaError, match=r"unknown categories \['d'\]"):
        generate_site(schema, 0, 1, n_rows=10, test_fraction=0.2, skew=SkewConfig(), seed=0)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"index": 4}, "site index 4 is outside 0..3"),
        ({"n_rows": 1}, "too few to split"),
        ({"test_fraction": 1.0}, "test_fraction must lie in [0, 1)"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_site_arguments(kwargs: dict, fragment: str) -> None:
    args = {"index": 0, "n_rows": 100, "test_fraction": 0.25, "seed": 0} | kwargs
    with pytest.raises(ValueError) as info:
        generate_site(_schema("diagnosis"), args.pop("index"), 4, skew=SkewConfig(), **args)
    assert fragment in str(info.value)


def test_bad_skew_and_sizes() -> None:
    with pytest.raises(ValueError, match=r"skew.age must be a finite number >= 0"):
        SkewConfig(age=-0.1)
    with pytest.raises(ValueError, match="min_size <= max_size"):
        site_sizes(3, 500, 100, seed=0)
    with pytest.raises(ValueError, match="no test rows"):
        oracle_score(
            _schema("diagnosis"),
            [
                replace(s, test=s.test.iloc[:0], test_oracle=s.test_oracle[:0])
                for s in _federation("diagnosis")
            ],
        )


def test_export_csv_round_trips(tmp_path: Path) -> None:
    schema, sites = _schema("treatment"), _federation("treatment")
    paths = export_csv(schema, sites, tmp_path / "out")
    assert [p.name for p in paths[:2]] == ["hospital-0-train.csv", "hospital-0-test.csv"]
    assert len(paths) == 2 * len(sites)
    back = pd.read_csv(paths[0])
    assert list(back.columns) == [*schema.feature_names, "insulin"]
    assert back["a1c_result"].isna().sum() == 0
    assert "none" in set(back["a1c_result"])
    assert back["admission_source"].isna().sum() == sites[0].train["admission_source"].isna().sum()
    np.testing.assert_array_equal(back["insulin"], sites[0].train["insulin"])
    np.testing.assert_allclose(back["num_medications"], sites[0].train["num_medications"])
    lines = paths[0].read_text(encoding="utf-8").splitlines()
    assert any(",," in line for line in lines[1:])


def test_federation_config_matches_the_generator() -> None:
    conf = yaml.safe_load((task_dir().parent / "federation" / "synthetic.yaml").read_text())
    assert conf["name"] == "synthetic"
    sites = generate_federation(
        _schema("pricing"),
        hospitals=conf["hospitals"],
        min_size=conf["min_size"],
        max_size=conf["max_size"],
        test_fraction=conf["test_fraction"],
        skew=SkewConfig(**conf["skew"]),
        seed=0,
        sizes=conf["sizes"],
    )
    assert len(sites) == conf["hospitals"] == 4
    assert SkewConfig(**conf["skew"]) == SkewConfig()


def test_models_do_not_import_flower() -> None:
    code = (
        "import sys, medfed.models.schema, medfed.models.ingest.synthetic; "
        "sys.exit(any(m == 'flwr' or m.startswith('flwr.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(TASKS),
    seed=st.integers(0, 2**32 - 1),
    n_rows=st.integers(2, 80),
    test_fraction=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
    index=st.integers(0, 5),
    skew=st.builds(
        SkewConfig,
        **{k: st.floats(0, 3) for k in ("age", "sex", "prevalence", "site_effect", "missing")},
    ),
)
def test_any_site_is_valid_and_reproducible(
    name: str, seed: int, n_rows: int, test_fraction: float, index: int, skew: SkewConfig
) -> None:
    schema = _schema(name)
    site = generate_site(
        schema, index, 6, n_rows=n_rows, test_fraction=test_fraction, skew=skew, seed=seed
    )
    assert len(site.train) + len(site.test) == n_rows and len(site.train) >= 1
    for frame in (site.train, site.test):
        _check_conventions(schema, frame)
        assert set(frame.columns[frame.isna().any()]) <= MAY_BE_MISSING[name]
    again = generate_site(
        schema, index, 6, n_rows=n_rows, test_fraction=test_fraction, skew=skew, seed=seed
    )
    pd.testing.assert_frame_equal(site.train, again.train)
