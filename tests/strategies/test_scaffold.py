"""SCAFFOLD: one round computed by hand, node side and server side, and through the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from medfed.client.scaffold import STATE, Correction
from medfed.strategies.registry import build_strategy
from medfed.strategies.scaffold import KEY, Scaffold, config_problem


def test_node_round_by_hand():
    # w = 1, loss (w x - y)^2 / 2 at x = 1, y = 0 so g = w = 1; c = 0.5, c_i = 0.2, lr = 0.1.
    # Corrected step: w - lr (g - c_i + c) = 1 - 0.1 (1 - 0.2 + 0.5) = 0.87.
    # c_i+ = c_i - c + (x - y) / (K lr) = 0.2 - 0.5 + 0.13 / 0.1 = 1.0; update c_i+ - c_i = 0.8.
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    correction = Correction(model, torch.tensor([0.5]), torch.tensor([0.2]), lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.register_step_pre_hook(lambda *_: correction.pre_step())
    loss = 0.5 * (model(torch.ones(1, 1)) - 0.0).pow(2).sum()
    loss.backward()
    opt.step()
    assert model.weight.item() == pytest.approx(0.87, abs=1e-6)
    update = correction.finish(model, steps=1, context=context)
    assert update.item() == pytest.approx(0.8, abs=1e-5)
    kept = context.state.array_records[STATE].to_torch_state_dict()["c"]
    assert kept.item() == pytest.approx(1.0, abs=1e-5)


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2]


def _reply(
    request: Message, node: int, weights: list[float], control: list[float], examples: float
) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.node_id = node
    arrays = ArrayRecord({"float32": torch.tensor(weights), KEY: torch.tensor(control)})
    reply = Message(
        RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": examples})}),
        reply_to=request,
    )
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def test_server_round_by_hand(task_identity):
    # x = [1, 1], c = 0. Hospital 1 (1 example): y = [0, 2], update [1, -1];
    # hospital 2 (3 examples): y = [2, 2], update [3, 1].
    # Weights (FedAvg): (1 [0, 2] + 3 [2, 2]) / 4 = [1.5, 2]; c = 2/4 * mean = 0.5 [2, 0] = [1, 0].
    strategy = build_strategy(
        {"name": "scaffold", "fraction_train": 1.0, "min_nodes": 2}, n_nodes=4
    )
    assert isinstance(strategy, Scaffold)
    task_identity.node_id = 0
    start = ArrayRecord({"float32": torch.tensor([1.0, 1.0])})
    messages = list(strategy.configure_train(1, start, ConfigRecord({}), _Grid()))
    sent = messages[0].content.array_records["arrays"].to_torch_state_dict()
    assert torch.equal(sent[KEY], torch.zeros(2))
    replies = [
        _reply(messages[0], 1, [0.0, 2.0], [1.0, -1.0], 1.0),
        _reply(messages[1], 2, [2.0, 2.0], [3.0, 1.0], 3.0),
    ]
    replies = strategy.take_controls(replies)  # the study loop, before screening
    assert all(list(r.content.array_records["arrays"]) == ["float32"] for r in replies)
    arrays, _ = strategy.aggregate_train(1, replies)
    (weights,) = arrays.to_numpy_ndarrays()
    np.testing.assert_allclose(weights, [1.5, 2.0])
    np.testing.assert_allclose(strategy.control.numpy(), [1.0, 0.0])
    again = build_strategy({"name": "scaffold", "fraction_train": 1.0, "min_nodes": 2}, 4)
    again.load_state_dict(strategy.state_dict())  # the checkpoint keeps c
    assert torch.equal(again.control, strategy.control)


def test_refusals_are_one_line():
    study = {"strategy": {"name": "scaffold"}, "privacy": {"name": "dpsgd"}}
    assert config_problem(study).startswith("strategy=scaffold runs with privacy=none only")
    study = {
        "strategy": {"name": "scaffold"},
        "privacy": {"name": "none"},
        "personalise": {"method": "fedper"},
    }
    assert "personalise.method" in config_problem(study)


@pytest.mark.slow
def test_a_scaffold_study_runs_and_every_update_is_aggregated(small_study, run_inprocess):
    study = small_study("task=treatment", "strategy=scaffold", "rounds=3")
    result = run_inprocess(study)
    assert not any(r.rejected or r.failures for r in result.rounds)
    assert all(len(r.train) == 3 for r in result.rounds[1:])
    assert result.final.global_metrics["accuracy"] > 0.4
