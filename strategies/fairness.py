"""q-FedAvg (Li, Sanjabi, Beirami & Smith, "Fair Resource Allocation in Federated Learning",
ICLR 2020) for the worst-site objective: hospitals with a higher loss weigh more (``q`` > 0;
``q`` = 0 is FedAvg).

Flower ships the aggregation (``flwr.serverapp.strategy.QFedAvg``); it reads each reply's training
loss under one metric key, while a medfed node reports additive sums (``train-loss-sum`` over
``train-examples``, :mod:`medfed.strategies.statistics`). This subclass derives the mean loss
from them first. Flower's aggregation weighs every hospital alike,
``w - sum_k Delta_k / sum_k h_k``; the paper's objective weighs hospital ``k`` by its share of
the data ``p_k = n_k / n``, which its Algorithm 2 realises by sampling hospitals with probability
``p_k``. medfed trains every hospital every round (``fraction_train`` 1.0), so it puts ``p_k``
into both sums instead, ``w - sum_k p_k Delta_k / sum_k p_k h_k`` (Flower's own ``Delta_k`` and
``h_k``, :func:`flwr.serverapp.strategy.qfedavg.compute_delta_and_h`): with ``q`` = 0 this is
FedAvg exactly, and with equal hospitals it is Flower's result. Unweighted, ``q`` = 0 is the
plain mean of the hospitals' weights, which on unlike hospitals moves the model by the average
hospital's local steps rather than the example-weighted ones and left treatment 3.7 accuracy
points behind FedAvg in 15 rounds (benchmarks/README.md, ``strategy_table.py``). Under DP-SGD
a node reports no training loss (it would not be covered by epsilon), so q-FedAvg is refused
there (:func:`config_problem`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp import strategy as fl
from flwr.serverapp.strategy.qfedavg import compute_delta_and_h, get_local_weights


class MedfedQFedAvg(fl.QFedAvg):
    """Flower's q-FedAvg with each hospital weighted by its example count ``p_k``."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``w - sum_k p_k Delta_k / sum_k p_k h_k`` with ``train_loss`` from the loss sums."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid:
            return None, None
        if self.current_arrays is None:
            raise RuntimeError("q-FedAvg needs the weights sent (configure_train) to aggregate")
        weights = self.current_arrays.to_numpy_ndarrays()
        counts = [float(_metrics(r)[self.weighted_by_key]) for r in valid]  # type: ignore[arg-type]
        lipschitz = 1.0 / self.client_learning_rate
        step = [np.zeros_like(w, dtype=np.float64) for w in weights]
        h_sum = 0.0
        for reply, count in zip(valid, counts, strict=True):
            delta, h = compute_delta_and_h(
                weights, get_local_weights(reply), self.q, lipschitz, _mean_loss(reply)
            )
            share = count / sum(counts)
            step = [s + share * d for s, d in zip(step, delta, strict=True)]
            h_sum += share * h
        arrays = ArrayRecord(
            {
                key: Array(np.asarray(w - s / h_sum, dtype=w.dtype))
                for key, w, s in zip(self.current_arrays.keys(), weights, step, strict=True)
            }
        )
        return arrays, self.train_metrics_aggr_fn([r.content for r in valid], self.weighted_by_key)


def _metrics(reply: Message) -> MetricRecord:
    return next(iter(reply.content.metric_records.values()))


def _mean_loss(reply: Message) -> float:
    """The hospital's mean training loss: ``train-loss-sum`` / ``train-examples``."""
    metrics = _metrics(reply)
    examples = max(float(metrics["train-examples"]), 1.0)  # type: ignore[arg-type]
    return float(metrics["train-loss-sum"]) / examples  # type: ignore[arg-type]


def config_problem(study: dict[str, Any]) -> str | None:
    """One line when ``strategy=qfedavg`` cannot run with the study's other settings."""
    if study["strategy"].get("name") == "qfedavg" and study["privacy"]["name"] == "dpsgd":
        return (
            "strategy=qfedavg needs each hospital's training loss, which a node does not "
            "report under privacy=dpsgd; use another strategy with DP-SGD"
        )
    return None
