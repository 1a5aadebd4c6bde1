"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020): control variates correct each hospital's drift towards its own optimum.

The server keeps a control variate ``c`` (one value per weight); every hospital keeps its own
``c_i`` at the node (:mod:`medfed.client.scaffold`) and takes local steps
``y <- y - lr (g(y) - c_i + c)``. After ``K`` steps it sets (the paper's option II)
``c_i+ = c_i - c + (x - y) / (K lr)`` and replies with its weights ``y`` and ``c_i+ - c_i``.
The server averages the weights as FedAvg does (example-weighted; the paper's uniform mean with
global step 1 differs only in the weights) and updates ``c <- c + |S|/N mean_k (c_i+ - c_i)``.

Flower's Message API ships no SCAFFOLD. The control travels inside the weights' ArrayRecord under
:data:`KEY` (a flat float32 vector laid out like the packed weights, :mod:`medfed.models.flat`),
so the node's reply guard sees the layout it was sent; the study loop calls
:meth:`Scaffold.take_controls` before screening, which removes the controls from the replies
and keeps them for :meth:`Scaffold.aggregate_train`, so screening and FedAvg see plain weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fl

KEY = "scaffold-control"


class Scaffold(fl.FedAvg):
    """FedAvg of the weights plus SCAFFOLD's server control variate (see the module docstring).

    Parameters
    ----------
    n_nodes
        ``N``, the number of hospitals of the study (the control moves by ``|S| / N`` of the mean
        control update of the ``|S|`` hospitals that replied).
    """

    def __init__(self, *, n_nodes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_nodes = n_nodes
        self.control: torch.Tensor | None = None
        self._deltas: dict[int, torch.Tensor] = {}

    def state_dict(self) -> dict[str, Any]:
        """``c`` for the study checkpoint (:mod:`medfed.server.study.checkpoint`)."""
        return {"control": None if self.control is None else self.control.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``c`` from :meth:`state_dict` (a resumed study goes on with it)."""
        control = state.get("control")
        self.control = None if control is None else torch.tensor(control, dtype=torch.float32)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's messages, the weights' record carrying ``c`` under :data:`KEY`."""
        weights = arrays.to_torch_state_dict()
        if self.control is None:
            self.control = torch.zeros_like(weights["float32"])
        self._deltas = {}
        with_control = ArrayRecord({**weights, KEY: self.control.clone()})
        return super().configure_train(server_round, with_control, config, grid)

    def take_controls(self, replies: list[Message]) -> list[Message]:
        """Remove each reply's control update (kept for aggregation); the replies, in place."""
        for reply in replies:
            if reply.has_error() or "arrays" not in reply.content.array_records:
                continue
            state = reply.content.array_records["arrays"].to_torch_state_dict()
            if KEY in state:
                self._deltas[reply.metadata.src_node_id] = state.pop(KEY)
                reply.content["arrays"] = ArrayRecord(state)
        return replies

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg of the weights; ``c`` moves by ``|S|/N`` times the mean control update of the
        replies that reached aggregation (a rejected update moves nothing)."""
        replies = self.take_controls(list(replies))
        kept = [
            self._deltas[r.metadata.src_node_id]
            for r in replies
            if not r.has_error() and r.metadata.src_node_id in self._deltas
        ]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if kept and self.control is not None:
            mean = torch.stack(kept).mean(dim=0)
            self.control = self.control + (len(kept) / self.n_nodes) * mean
        return arrays, metrics


def config_problem(study: dict[str, Any]) -> str | None:
    """One line when ``strategy=scaffold`` cannot run with the study's other settings."""
    if study["strategy"].get("name") != "scaffold":
        return None
    if study["privacy"]["name"] != "none":
        return (
            f"strategy=scaffold runs with privacy=none only (got privacy="
            f"{study['privacy']['name']}): its correction is not part of DP-SGD's accounting"
        )
    if study.get("secure_aggregation"):
        return "strategy=scaffold cannot run with secure_aggregation=true"
    if (study.get("personalise") or {}).get("method") in ("fedper", "fedbn"):
        return "strategy=scaffold cannot be combined with personalise.method=fedper or fedbn"
    return None
