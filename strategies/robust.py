"""The robust aggregators' medfed defaults: Multi-Krum for ``krum``, a server step for the median.

**Multi-Krum** (Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017, section 5). Every update gets Krum's score,
the sum of squared distances to its ``n - f - 2`` nearest neighbours; the ``m`` best-scored
updates are averaged (weighted by example count, as Flower's ``MultiKrum`` does). ``m = 1`` is
classic Krum; medfed's default is ``m = n - f`` (the choice of the paper's experiments): the
``f`` hospitals a Byzantine minority could control are left out every round, and the rest of
the federation's data is used, instead of one hospital's update. ``f`` defaults to the most the
federation tolerates, ``(n - 3) // 2`` (Krum's condition ``n >= 2f + 3``): 0 with 4 hospitals,
where Multi-Krum keeps every update, 1 with 5 or 6, 2 with 7 or 8. Flower's selection is used
as is (:func:`flwr.serverapp.strategy.strategy_utils.select_multikrum`); only ``m`` is set
per round from the updates actually received (after dropouts and screening).

**FedMedian with a server step** (the server-optimiser view of Reddi et al., "Adaptive Federated
Optimization", ICLR 2021: the aggregate is a pseudo-gradient ``w - agg`` the server steps
along). The coordinate-wise median of the hospitals' weights ignores their example counts, so its
step is the middle hospital's, not the example-weighted one FedAvg takes. A hospital with more
rows takes more local SGD steps per epoch, so with unlike hospitals the median moves the model
by the median hospital's few steps and converges in more rounds (benchmarks/README.md,
``strategy_table.py``). ``w <- w + server_learning_rate * (median_k(w_k) - w)``; at 1.0 this is
Flower's FedMedian exactly. The step is a constant, never derived from what hospitals report, so
a malicious hospital still moves each coordinate only within the honest hospitals' range (times
that constant).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fl

from medfed.models.settings import krum_tolerance

__all__ = ["MedfedFedMedian", "MedfedMultiKrum", "krum_tolerance"]

LOG = logging.getLogger("medfed")


class MedfedMultiKrum(fl.MultiKrum):
    """Flower's Multi-Krum selecting ``n - f`` of the ``n`` updates received in each round.

    ``num_nodes_to_select=None`` (medfed's default) means ``n - f`` with ``n`` the round's
    valid replies; an integer fixes ``m`` (1 is classic Krum).
    """

    def __init__(self, *, num_nodes_to_select: int | None = None, **kwargs: object) -> None:
        super().__init__(num_nodes_to_select=num_nodes_to_select or 1, **kwargs)  # type: ignore[arg-type]
        self.fixed_selection = num_nodes_to_select

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Say once when Multi-Krum, tolerating no attacker, averages every update."""
        if server_round == 1 and self.num_malicious_nodes == 0 and self.fixed_selection is None:
            LOG.warning(
                "strategy=krum with num_malicious_nodes=0 keeps every update (FedAvg); Krum "
                "tolerates f attackers only with hospitals >= 2f + 3"
            )
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Set ``m`` from the replies that are not errors, then Flower's Multi-Krum."""
        replies = list(replies)
        if self.fixed_selection is None:
            valid = sum(1 for reply in replies if not reply.has_error())
            self.num_nodes_to_select = max(valid - self.num_malicious_nodes, 1)
        return super().aggregate_train(server_round, replies)


class MedfedFedMedian(fl.FedMedian):
    """Flower's coordinate-wise median followed by a server step of ``server_learning_rate``."""

    def __init__(self, *, server_learning_rate: float = 1.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.server_learning_rate = float(server_learning_rate)
        self.current_arrays: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global weights sent, the origin of this round's step."""
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The median, then ``w + server_learning_rate * (median - w)`` per array."""
        median, metrics = super().aggregate_train(server_round, replies)
        if median is None or self.server_learning_rate == 1.0:
            return median, metrics
        if self.current_arrays is None:
            raise RuntimeError("FedMedian's server step needs the weights sent (configure_train)")
        eta = self.server_learning_rate
        stepped = ArrayRecord()
        for key, value in median.items():
            origin = self.current_arrays[key].numpy()
            moved = origin + eta * (value.numpy() - origin)
            stepped[key] = Array(np.asarray(moved, dtype=origin.dtype))
        return stepped, metrics
