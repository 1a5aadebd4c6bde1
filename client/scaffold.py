"""The node's side of SCAFFOLD (:mod:`medfed.strategies.scaffold`): its own control variate
``c_i``, the corrected local steps and the control update it replies with.

``c_i`` lives in the run's ``context.state`` (ArrayRecord ``medfed-scaffold``; zero at first)
and, for a resumed study, on the node's disk after every round (:mod:`medfed.client.node_state`).
Every optimiser step is preceded by the decoupled correction ``w <- w - lr (c - c_i)`` (one
in-place add per parameter), which with plain SGD is exactly SCAFFOLD's corrected gradient step
``w <- w - lr (g - c_i + c)``; after ``K`` steps ``c_i+ = c_i - c + (x - y) / (K lr)``.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message

from medfed.models.flat import pack

KEY = "scaffold-control"  # as medfed.strategies.scaffold.KEY (client never imports strategies)
STATE = "medfed-scaffold"


class Correction:
    """SCAFFOLD's correction for one round of local training at this node."""

    def __init__(
        self, model: torch.nn.Module, control: torch.Tensor, own: torch.Tensor, lr: float
    ) -> None:
        self.params: list[torch.Tensor] = list(model.parameters())
        sizes = [p.numel() for p in self.params]
        if sum(sizes) != control.numel() or len(self.params) != len(model.state_dict()):
            raise ValueError("SCAFFOLD needs a model whose state is exactly its parameters")
        self.control, self.own, self.lr = control, own, lr
        self.diffs = [
            d.reshape(p.shape)
            for d, p in zip(torch.split(control - own, sizes), self.params, strict=True)
        ]
        self.start = pack(model.state_dict())["float32"].clone()

    @torch.no_grad()
    def pre_step(self) -> None:
        """``w <- w - lr (c - c_i)`` before every optimiser step."""
        torch._foreach_add_(self.params, self.diffs, alpha=-self.lr)

    def finish(self, model: torch.nn.Module, steps: int, context: Context) -> torch.Tensor:
        """Store ``c_i+`` at the node; return the control update ``c_i+ - c_i`` to send."""
        end = pack(model.state_dict())["float32"]
        new = self.own - self.control + (self.start - end) / (max(steps, 1) * self.lr)
        context.state.array_records[STATE] = ArrayRecord({"c": new.clone()})
        return new - self.own


def received_control(msg: Message) -> torch.Tensor | None:
    """The server's ``c`` when the train message carries one (strategy=scaffold)."""
    state = msg.content.array_records["arrays"].to_torch_state_dict()
    return state.get(KEY)


def start(msg: Message, context: Context, model: torch.nn.Module, lr: float) -> Correction | None:
    """The round's correction, or ``None`` when the study does not run SCAFFOLD."""
    control = received_control(msg)
    if control is None:
        return None
    own = (
        context.state.array_records[STATE].to_torch_state_dict()["c"]
        if STATE in context.state.array_records
        else torch.zeros_like(control)
    )
    return Correction(model, control, own, lr)
