"""The checks of an Optuna search before trial 1 (:mod:`medfed.server.tuning`), by hand."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from medfed.server import tuning, tuning_report

DIAGNOSIS = {"primary_metric": "accuracy", "metrics": ["accuracy", "auroc"]}
PRICING = {"primary_metric": "rmse", "metrics": ["mae", "rmse", "r2"]}


def _study(task=DIAGNOSIS, patience=2, metric=None, seed=0, output_dir=None) -> dict:
    return {
        "task": task,
        "seed": seed,
        "output_dir": output_dir,
        "early_stopping": {"patience": patience, "metric": metric, "validation": 0.2},
    }


def test_candidates_are_both_ends_of_an_interval_and_every_choice():
    combos = tuning.candidate_combos(
        ["rounds=2", "train.lr=interval(0.01,0.3)", "strategy=choice(fedavg,fedprox,fedyogi)"]
    )
    assert combos == [
        ["rounds=2", "train.lr=0.01", "strategy=fedavg"],
        ["rounds=2", "train.lr=0.3", "strategy=fedavg"],
        ["rounds=2", "train.lr=0.12078", "strategy=fedavg"],  # 0.01 + 0.29 * 0.382
        ["rounds=2", "train.lr=0.01", "strategy=fedprox"],
        ["rounds=2", "train.lr=0.01", "strategy=fedyogi"],
    ]


def test_candidates_of_a_range_are_both_ends_and_log_intervals_their_ends_and_inside():
    """range(16,80,16): Optuna's IntDistribution(16, 80, step=16) includes 80."""
    combos = tuning.candidate_combos(
        ["train.batch_size=range(16,80,16)", "train.lr=tag(log,interval(0.001,0.1))"]
    )
    assert combos == [
        ["train.batch_size=16", "train.lr=0.001"],
        ["train.batch_size=80", "train.lr=0.001"],
        ["train.batch_size=16", "train.lr=0.1"],
        ["train.batch_size=16", "train.lr=0.038818"],
    ]


def test_an_interval_of_whole_numbers_is_checked_at_a_fraction():
    """Hydra reads interval(1,3) as floats: a whole-number setting must be refused up front."""
    assert tuning.candidate_combos(["train.local_epochs=interval(1,3)"]) == [
        ["train.local_epochs=1.0"],
        ["train.local_epochs=3.0"],
        ["train.local_epochs=1.764"],
    ]


def test_a_config_files_search_space_comes_first_and_the_command_line_wins():
    sweeper = {"params": {"train.lr": "interval(0.01,0.3)", "seed": "choice(1,2)"}}
    argv = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "seed=range(0,4)"]
    assert tuning.search_space(argv, sweeper) == ["train.lr=interval(0.01,0.3)", *argv]


def test_bad_sweeper_settings_are_one_line():
    with pytest.raises(tuning.SearchError) as info:
        tuning.sweeper_settings(["hydra/sweeper=optuna", "hydra.sweeper.n_trials=abc"])
    assert str(info.value) == (
        "Error merging override hydra.sweeper.n_trials=abc: Value 'abc' of type 'str' "
        "could not be converted to Integer"
    )
    with pytest.raises(tuning.SearchError, match="hydra.sweeper.n_trials must be a whole"):
        tuning.sweeper_settings(["hydra/sweeper=optuna", "hydra.sweeper.n_trials=0"])
    settings = tuning.sweeper_settings(["hydra/sweeper=optuna", "train.lr=interval(0.01,0.3)"])
    assert settings["n_trials"] == 20 and settings["params"] is None


def test_without_a_validation_split_the_search_is_refused():
    with pytest.raises(tuning.SearchError, match="early_stopping.patience=N"):
        tuning.objective(_study(patience=None))


@pytest.mark.parametrize(
    "task, metric, expected",
    [
        (DIAGNOSIS, None, ("accuracy", "maximize")),
        (DIAGNOSIS, "loss", ("loss", "minimize")),
        (PRICING, None, ("rmse", "minimize")),
        (PRICING, "r2", ("r2", "maximize")),
    ],
)
def test_the_direction_follows_the_validation_metric(task, metric, expected):
    name = tuning.objective(_study(task=task, metric=metric))
    assert (name, tuning.direction(name)) == expected


def test_the_sweeper_gets_the_direction_the_seed_and_a_fixed_folder():
    added, folder = tuning.sweeper_arguments(["-m"], [_study(task=PRICING, seed=7)])
    assert added[:2] == ["hydra.sweeper.direction=minimize", "hydra.sweeper.sampler.seed=7"]
    assert added[2] == f"hydra.sweep.dir={folder}" and folder.startswith("multirun/")


def test_output_dir_is_the_sweep_folder_and_a_grid_sampler_gets_no_seed():
    argv = ["-m", "hydra/sweeper/sampler=grid", "hydra.sweeper.direction=maximize"]
    added, folder = tuning.sweeper_arguments(argv, [_study(output_dir="/data/search")])
    assert (added, folder) == (["hydra.sweep.dir=/data/search"], "/data/search")


def test_a_direction_against_the_metric_is_refused():
    with pytest.raises(tuning.SearchError, match="hydra.sweeper.direction=maximize contradicts"):
        tuning.sweeper_arguments(["hydra.sweeper.direction=maximize"], [_study(task=PRICING)])


def test_trials_that_would_optimise_different_metrics_are_refused():
    with pytest.raises(
        tuning.SearchError, match=r"different validation metrics \(accuracy, rmse\)"
    ):
        tuning.sweeper_arguments(["-m"], [_study(), _study(task=PRICING)])


def test_a_trial_returns_its_best_validation_value_and_a_diverged_one_the_worst(capsys):
    assert tuning.trial_value({}) is None
    assert tuning.trial_value({"metric": "auroc", "best_validation": 0.75}) == 0.75
    assert tuning.trial_value({"metric": "auroc", "best_validation": math.nan}) == -math.inf
    assert tuning.trial_value({"metric": "rmse", "best_validation": math.nan}) == math.inf
    assert "no round had a finite validation rmse" in capsys.readouterr().err


def test_a_missing_plugin_is_one_line_saying_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper", None)
    with pytest.raises(tuning.SearchError) as info:
        tuning.check_plugin()
    assert "\n" not in str(info.value) and "--no-deps hydra-optuna-sweeper==1.3.0" in str(
        info.value
    )


def test_the_report_names_the_best_trial_by_value_and_settings_first_of_ties(tmp_path: Path):
    runs = [(2, 0.8, 0.05, "fedavg"), (10, 0.8, 0.05, "fedavg"), (9, 0.6, 0.05, "fedavg")]
    runs.append((1, 0.8, 0.2, "fedavg"))  # the same value with other settings: not the best
    runs.append((0, 0.8, 0.05, "fedprox"))
    for job, value, lr, strategy in runs:
        run = tmp_path / f"{job}-diagnosis-{strategy}-seed0"
        run.mkdir()
        summary = {"early_stopping": {"best_validation": value}}
        (run / "summary.json").write_text(json.dumps(summary))
        config = f"train:\n  lr: {lr}\nstrategy:\n  name: {strategy}\n"
        (run / "config.yaml").write_text(config)
    (tmp_path / tuning.RESULTS).write_text(
        "name: optuna\nbest_params:\n  train.lr: 0.05\n  strategy: fedavg\nbest_value: 0.8\n"
    )
    lines = tuning_report.report(str(tmp_path), "accuracy")
    assert lines == [
        "medfed: best validation accuracy 0.8 (highest of the trials) with train.lr=0.05 "
        "strategy=fedavg",
        f"medfed: best trial's run directory: {tmp_path / '2-diagnosis-fedavg-seed0'}",
        f"medfed: every trial and optimization_results.yaml: {tmp_path}",
    ]


def test_a_grid_over_an_interval_and_a_sampler_gone_from_optuna_are_refused():
    grid = ["hydra/sweeper/sampler=grid"]
    with pytest.raises(tuning.SearchError, match=r"train.lr=interval\(0.01,0.3\) is an interval"):
        tuning.check_sampler(grid, ["-m", "train.lr=interval(0.01,0.3)", "seed=0"])
    tuning.check_sampler(grid, ["train.lr=choice(0.01,0.3)", "rounds=range(2,5)"])
    with pytest.raises(tuning.SearchError, match="sampler=motpe cannot run with this install"):
        tuning.check_sampler(["hydra/sweeper/sampler=motpe"], [])


def test_a_folder_holding_an_earlier_search_is_refused_unless_overwrite(tmp_path: Path):
    tuning.check_folder(str(tmp_path), {})  # empty: fine
    (tmp_path / "0-diagnosis-fedavg-seed0").mkdir()
    (tmp_path / "0-diagnosis-fedavg-seed0" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(tuning.SearchError, match="already holds a search"):
        tuning.sweeper_arguments(["-m"], [_study(output_dir=str(tmp_path))])
    tuning.check_folder(str(tmp_path), {"overwrite": True})


def test_a_refused_point_inside_an_interval_is_explained():
    overrides = ["rounds=2", "train.local_epochs=interval(1,3)"]
    inside, end = tuning.candidate_combos(overrides)[2], tuning.candidate_combos(overrides)[1]
    assert tuning.note(overrides, inside) == (
        " (a value inside train.local_epochs=interval(1,3): Hydra's intervals are floats; use "
        "range(a,b) or choice(...) for whole numbers)"
    )
    assert tuning.note(overrides, end) == ""
