"""q-FedAvg (Li, Sanjabi, Beirami & Smith, "Fair Resource Allocation in Federated Learning",
ICLR 2020) for the worst-site objective: hospitals with a higher loss weigh more (``q`` > 0;
``q`` = 0 is FedAvg).

Flower ships the aggregation (``flwr.serverapp.strategy.QFedAvg``); it reads each reply's training
loss under one metric key, while a medfed node reports additive sums (``train-loss-sum`` over
``train-examples``, :mod:`medfed.strategies.statistics`). This subclass derives the mean loss
from them before Flower's own aggregation runs. Under DP-SGD a node reports no training loss
(it would not be covered by epsilon), so q-FedAvg is refused there (:func:`config_problem`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp import strategy as fl

LOSS_KEY = "train_loss"


class MedfedQFedAvg(fl.QFedAvg):
    """Flower's q-FedAvg fed with the mean training loss of each hospital's reply."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Add ``train_loss`` = ``train-loss-sum`` / ``train-examples``, then aggregate."""
        replies = list(replies)
        for reply in replies:
            if reply.has_error() or "metrics" not in reply.content.metric_records:
                continue
            metrics = reply.content.metric_records["metrics"]
            examples = max(float(metrics["train-examples"]), 1.0)  # type: ignore[arg-type]
            metrics[LOSS_KEY] = float(metrics["train-loss-sum"]) / examples  # type: ignore[arg-type]
        return super().aggregate_train(server_round, replies)


def config_problem(study: dict[str, Any]) -> str | None:
    """One line when ``strategy=qfedavg`` cannot run with the study's other settings."""
    if study["strategy"].get("name") == "qfedavg" and study["privacy"]["name"] == "dpsgd":
        return (
            "strategy=qfedavg needs each hospital's training loss, which a node does not "
            "report under privacy=dpsgd; use another strategy with DP-SGD"
        )
    return None
