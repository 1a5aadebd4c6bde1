"""Aggregation strategies by name: the ``strategy=`` config group maps onto Flower's own classes.

Each file in ``conf/strategy/`` names a strategy and its hyper-parameters; :func:`build_strategy`
turns it into a Flower ``Strategy``. The aggregation maths is Flower's: FedProx's proximal term
is applied by the hospital (the strategy only sends ``proximal-mu``), the adaptive optimisers,
the robust aggregators and FedAvg itself are Flower's implementations. medfed's additions are
thin subclasses: ``krum`` is Flower's Multi-Krum keeping ``n - f`` updates and ``fedmedian``
can take a server step (:mod:`medfed.strategies.robust`), q-FedAvg reads medfed's loss sums
(:mod:`~medfed.strategies.fairness`), SCAFFOLD is medfed's own (Flower's Message API lacks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp import strategy as fl

from medfed.strategies.fairness import MedfedQFedAvg
from medfed.strategies.robust import MedfedFedMedian, MedfedMultiKrum, krum_tolerance
from medfed.strategies.scaffold import Scaffold
from medfed.strategies.statistics import sum_metric_records

STRATEGIES: dict[str, type[fl.FedAvg]] = {
    "fedavg": fl.FedAvg,
    "fedprox": fl.FedProx,
    "fedadam": fl.FedAdam,
    "fedyogi": fl.FedYogi,
    "fedadagrad": fl.FedAdagrad,
    "fedavgm": fl.FedAvgM,
    "fedmedian": MedfedFedMedian,  # Flower's FedMedian and a server step (robust.py)
    "trimmedmean": fl.FedTrimmedAvg,
    "krum": MedfedMultiKrum,  # Flower's Multi-Krum keeping n - f updates (robust.py)
    "qfedavg": MedfedQFedAvg,  # Flower's QFedAvg reading medfed's loss sums (fairness.py)
    "scaffold": Scaffold,  # control variates (scaffold.py); the node corrects its steps
}

_HYPER_PARAMETERS: dict[str, tuple[str, ...]] = {
    "fedprox": ("proximal_mu",),
    "fedadam": ("eta", "beta_1", "beta_2", "tau"),
    "fedyogi": ("eta", "beta_1", "beta_2", "tau"),
    "fedadagrad": ("eta", "tau"),
    "fedavgm": ("server_learning_rate", "server_momentum"),
    "trimmedmean": ("beta",),
    "fedmedian": ("server_learning_rate",),
    "krum": ("num_malicious_nodes", "num_nodes_to_select"),
    "qfedavg": ("q", "client_learning_rate"),
}
_COMMON = ("name", "fraction_train", "min_nodes")


class StrategyConfigError(ValueError):
    """The ``strategy`` section names an unknown strategy or an invalid setting."""


def build_strategy(cfg: Mapping[str, Any], n_nodes: int) -> fl.Strategy:
    """Build the Flower strategy described by the ``strategy`` config section.

    Every metric a medfed node sends is an additive statistic, so both metric aggregators are
    plain sums (:func:`~medfed.strategies.statistics.sum_metric_records`), never averages.
    Federated evaluation is driven by medfed's study loop, so ``fraction_evaluate`` is 1.

    Parameters
    ----------
    cfg
        The ``strategy`` section: ``name``, ``fraction_train``, ``min_nodes`` and the
        strategy's own hyper-parameters.
    n_nodes
        Number of hospitals in the study; ``min_nodes`` may not exceed it.
    """
    name = cfg.get("name")
    if name not in STRATEGIES:
        raise StrategyConfigError(
            f"strategy={name!r} is unknown; choose one of {sorted(STRATEGIES)}"
        )
    allowed = set(_COMMON) | set(_HYPER_PARAMETERS.get(name, ()))
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise StrategyConfigError(
            f"strategy.{unknown[0]} is not a setting of {name}; settings: {sorted(allowed)}"
        )
    fraction = float(cfg.get("fraction_train", 1.0))
    if not 0.0 < fraction <= 1.0:
        raise StrategyConfigError(f"strategy.fraction_train must be in (0, 1], got {fraction}")
    min_nodes = int(cfg.get("min_nodes", 2))
    if not 1 <= min_nodes <= n_nodes:
        raise StrategyConfigError(
            f"strategy.min_nodes={min_nodes} must be between 1 and the "
            f"number of hospitals ({n_nodes})"
        )
    params = {key: cfg[key] for key in _HYPER_PARAMETERS.get(name, ()) if key in cfg}
    if name == "scaffold":
        params["n_nodes"] = n_nodes
    if params.get("num_malicious_nodes") == "auto":
        params["num_malicious_nodes"] = krum_tolerance(n_nodes)
    return STRATEGIES[name](
        fraction_train=fraction,
        fraction_evaluate=1.0,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
        train_metrics_aggr_fn=sum_metric_records,
        evaluate_metrics_aggr_fn=sum_metric_records,
        **params,
    )
