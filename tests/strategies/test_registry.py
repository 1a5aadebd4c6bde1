"""The ``strategy=`` config group: every shipped file builds; mistakes are named sentences."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flwr.serverapp import strategy as fl

from medfed.server.study.config import config_dir
from medfed.strategies.registry import STRATEGIES, StrategyConfigError, build_strategy
from medfed.strategies.statistics import sum_metric_records

STRATEGY_FILES = sorted((config_dir() / "strategy").glob("*.yaml"))


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_every_registered_strategy_ships_a_config_file():
    assert {p.stem for p in STRATEGY_FILES} == set(STRATEGIES)


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=lambda p: p.stem)
def test_every_shipped_strategy_builds(path: Path):
    cfg = _load(path)
    assert cfg["name"] == path.stem

    strategy = build_strategy(cfg, n_nodes=4)

    assert type(strategy) is STRATEGIES[cfg["name"]]
    assert strategy.fraction_train == cfg["fraction_train"]
    assert strategy.min_train_nodes == cfg["min_nodes"]
    assert strategy.min_available_nodes == cfg["min_nodes"]
    assert strategy.fraction_evaluate == 1.0
    assert strategy.train_metrics_aggr_fn is sum_metric_records
    assert strategy.evaluate_metrics_aggr_fn is sum_metric_records


def test_hyper_parameters_reach_the_flower_strategy():
    prox = build_strategy({"name": "fedprox", "min_nodes": 2, "proximal_mu": 0.25}, 3)
    yogi = build_strategy(
        {"name": "fedyogi", "min_nodes": 2, "eta": 0.05, "tau": 0.01, "beta_1": 0.8, "beta_2": 0.9},
        3,
    )
    trimmed = build_strategy({"name": "trimmedmean", "min_nodes": 2, "beta": 0.3}, 3)

    assert isinstance(prox, fl.FedProx) and prox.proximal_mu == 0.25
    assert (yogi.eta, yogi.tau, yogi.beta_1, yogi.beta_2) == (0.05, 0.01, 0.8, 0.9)
    assert trimmed.beta == 0.3


def _error(cfg: dict, n_nodes: int = 4) -> str:
    with pytest.raises(StrategyConfigError) as info:
        build_strategy(cfg, n_nodes)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_strategy_is_named_with_the_choices():
    message = _error({"name": "fedmagic"})
    assert "strategy=" in message and "fedmagic" in message
    assert "fedavg" in message and "fedyogi" in message


def test_unknown_setting_is_named():
    message = _error({"name": "fedavg", "min_nodes": 2, "proximal_mu": 0.1})
    assert "strategy.proximal_mu" in message
    assert "fedavg" in message


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_bad_fraction_is_named(fraction: float):
    message = _error({"name": "fedavg", "fraction_train": fraction, "min_nodes": 2})
    assert "strategy.fraction_train" in message
    assert str(fraction) in message


def test_min_nodes_above_the_number_of_hospitals_is_named():
    message = _error({"name": "fedavg", "min_nodes": 5}, n_nodes=3)
    assert "strategy.min_nodes" in message
    assert "5" in message and "3" in message


def test_min_nodes_zero_is_rejected():
    assert "strategy.min_nodes" in _error({"name": "fedavg", "min_nodes": 0})


def test_min_nodes_equal_to_the_hospitals_is_allowed():
    assert build_strategy({"name": "fedavg", "min_nodes": 3}, 3).min_train_nodes == 3


def test_the_strategy_table_benchmark_covers_every_registered_strategy():
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "strategy_table.py"
    spec = importlib.util.spec_from_file_location("strategy_table", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(module.STRATEGIES) == sorted(STRATEGIES)
    assert module.STRATEGIES[0] == "fedavg"  # every gap is measured against it
