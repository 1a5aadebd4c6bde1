"""q-FedAvg fed with medfed's loss sums: one round computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from medfed.strategies.fairness import MedfedQFedAvg, config_problem
from medfed.strategies.registry import build_strategy


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2]


def _reply(weight: float, loss_sum: float, examples: float, node: int) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.node_id = node
    content = RecordDict(
        {
            "arrays": ArrayRecord([np.array([weight], dtype=np.float64)]),
            "metrics": MetricRecord(
                {
                    "num-examples": examples,
                    "train-loss-sum": loss_sum,
                    "train-examples": examples,
                    "train-steps": 1.0,
                }
            ),
        }
    )
    request = Message(RecordDict({}), dst_node_id=node, message_type="train", group_id="1")
    reply = Message(content, reply_to=request)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def _one_round(q: float, a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    strategy = build_strategy(
        {
            "name": "qfedavg",
            "fraction_train": 1.0,
            "min_nodes": 2,
            "q": q,
            "client_learning_rate": 0.1,
        },
        n_nodes=2,
    )
    assert isinstance(strategy, MedfedQFedAvg)
    start = ArrayRecord([np.array([1.0], dtype=np.float64)])
    list(strategy.configure_train(1, start, ConfigRecord({}), _Grid()))  # type: ignore[arg-type]
    arrays, _ = strategy.aggregate_train(1, [_reply(*a, 1), _reply(*b, 2)])
    assert arrays is not None
    (value,) = arrays.to_numpy_ndarrays()
    return float(value[0])


def test_one_round_by_hand(task_identity):
    # w = 1, lr = 0.1 so L = 10, q = 1. Hospital A: w_A = 0.5, loss 2/2 = 1, 2 examples (p 0.4);
    # B: w_B = 0.9, loss 12/3 = 4, 3 examples (p 0.6).
    # delta_k = loss^q L (w - w_k): A 1*10*0.5 = 5, B 4*10*0.1 = 4.
    # h_k = q loss^(q-1) ||L (w - w_k)||^2 + L loss^q: A 25 + 10 = 35, B 1 + 40 = 41.
    # w' = w - (0.4 * 5 + 0.6 * 4) / (0.4 * 35 + 0.6 * 41) = 1 - 4.4 / 38.6.
    assert _one_round(1.0, (0.5, 2.0, 2.0), (0.9, 12.0, 3.0)) == pytest.approx(1 - 4.4 / 38.6)


def test_equal_hospitals_give_flowers_unweighted_result(task_identity):
    # As above with 3 examples each (A's loss 3/3 = 1): w' = 1 - (5 + 4) / (35 + 41).
    assert _one_round(1.0, (0.5, 3.0, 3.0), (0.9, 12.0, 3.0)) == pytest.approx(1 - 9 / 76)


def test_q_zero_is_fedavg(task_identity):
    # q = 0: delta_k = L (w - w_k), h_k = L, so w' = sum_k p_k w_k = 0.4 * 0.5 + 0.6 * 0.9 = 0.74.
    assert _one_round(0.0, (0.5, 2.0, 2.0), (0.9, 12.0, 3.0)) == pytest.approx(0.74)


def test_refused_with_dp_sgd_in_one_line():
    study = {"strategy": {"name": "qfedavg"}, "privacy": {"name": "dpsgd"}}
    assert "strategy=qfedavg needs each hospital's training loss" in config_problem(study)
    assert config_problem({"strategy": {"name": "fedavg"}, "privacy": {"name": "dpsgd"}}) is None
