"""Multi-Krum keeping n - f updates and FedMedian's server step, computed by hand."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import given
from hypothesis import settings as settings_h
from hypothesis import strategies as st

from medfed.models import settings
from medfed.strategies.registry import build_strategy
from medfed.strategies.robust import MedfedFedMedian, MedfedMultiKrum, krum_tolerance


class _Grid:
    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.n + 1))


def _round(strategy, start: list[float], weights: list[list[float]], examples: list[float]):
    """Send ``start`` to len(weights) hospitals; hospital k answers weights[k] (examples[k])."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.node_id = 0
    sent = ArrayRecord({"w": torch.tensor(start)})
    requests = list(strategy.configure_train(1, sent, ConfigRecord({}), _Grid(len(weights))))
    replies = []
    for request, w, n in zip(requests, weights, examples, strict=True):
        TaskIdentity.node_id = request.metadata.dst_node_id
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": torch.tensor(w)}),
                "metrics": MetricRecord({"num-examples": n}),
            }
        )
        replies.append(Message(content, reply_to=request))
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays["w"].numpy()


@contextmanager
def _identity() -> Iterator[None]:
    """Flower's task identity for building Messages (hypothesis cannot take the fixture)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


# Five hospitals at 0, 1, 2, 4 and 100 (the attacker), examples 1, 2, 3, 4, 5. With f = 1 each
# update is scored by its n - f - 2 = 2 nearest squared distances:
#   0: 1 + 4 = 5,  1: 1 + 1 = 2,  2: 1 + 4 = 5,  4: 4 + 9 = 13,  100: 96^2 + 98^2 = 18820.
POINTS = [[0.0], [1.0], [2.0], [4.0], [100.0]]
EXAMPLES = [1.0, 2.0, 3.0, 4.0, 5.0]
KRUM = {"name": "krum", "min_nodes": 2, "num_malicious_nodes": "auto", "num_nodes_to_select": None}


def test_multikrum_averages_the_n_minus_f_best_by_example_count(task_identity):
    strategy = build_strategy(KRUM, n_nodes=5)
    assert isinstance(strategy, MedfedMultiKrum) and strategy.num_malicious_nodes == 1
    # m = 5 - 1 = 4 keeps 0, 1, 2, 4: (0 x 1 + 1 x 2 + 2 x 3 + 4 x 4) / 10 = 2.4.
    np.testing.assert_allclose(_round(strategy, [0.0], POINTS, EXAMPLES), [2.4])
    assert strategy.num_nodes_to_select == 4


def test_classic_krum_keeps_the_single_best(task_identity):
    strategy = build_strategy({**KRUM, "num_nodes_to_select": 1}, n_nodes=5)
    np.testing.assert_allclose(_round(strategy, [0.0], POINTS, EXAMPLES), [1.0])


def test_multikrum_counts_the_updates_it_actually_received(task_identity):
    # The attacker's update never arrived (dropped out or screened): n = 4, f stays 1, m = 3.
    # Scores with the 4 - 1 - 2 = 1 nearest: 0: 1, 1: 1, 2: 1, 4: 4 -> (0 + 2 + 6) / 6.
    strategy = build_strategy(KRUM, n_nodes=5)
    np.testing.assert_allclose(_round(strategy, [0.0], POINTS[:4], EXAMPLES[:4]), [8.0 / 6.0])
    assert strategy.num_nodes_to_select == 3


def test_with_four_hospitals_multikrum_tolerates_none_and_keeps_every_update(task_identity, caplog):
    strategy = build_strategy(KRUM, n_nodes=4)
    assert strategy.num_malicious_nodes == 0
    with caplog.at_level("WARNING", logger="medfed"):
        np.testing.assert_allclose(_round(strategy, [0.0], POINTS[:4], EXAMPLES[:4]), [2.4])
    assert "num_malicious_nodes=0 keeps every update (FedAvg)" in caplog.text


@pytest.mark.parametrize(("n", "f"), [(3, 0), (4, 0), (5, 1), (6, 1), (7, 2), (10, 3)])
def test_krum_tolerance_is_the_largest_f_with_n_at_least_2f_plus_3(n: int, f: int):
    assert krum_tolerance(n) == f
    assert n >= 2 * f + 3 and n < 2 * (f + 1) + 3


def test_median_then_server_step(task_identity):
    # w = [1, 1]; replies [0, 2], [2, 5], [4, 3]: median [2, 3]; w + 2 ([2, 3] - w) = [3, 5].
    replies = [[0.0, 2.0], [2.0, 5.0], [4.0, 3.0]]
    stepped = build_strategy({"name": "fedmedian", "server_learning_rate": 2.0}, n_nodes=3)
    plain = build_strategy({"name": "fedmedian", "server_learning_rate": 1.0}, n_nodes=3)
    assert isinstance(stepped, MedfedFedMedian)
    np.testing.assert_allclose(_round(stepped, [1.0, 1.0], replies, [1.0, 5.0, 1.0]), [3.0, 5.0])
    np.testing.assert_allclose(_round(plain, [1.0, 1.0], replies, [1.0, 5.0, 1.0]), [2.0, 3.0])


@pytest.mark.parametrize(
    ("strategy", "n", "message"),
    [
        ({**KRUM, "num_malicious_nodes": "some"}, 5, "must be auto or a whole number >= 0"),
        ({**KRUM, "num_nodes_to_select": 5}, 5, "num_nodes_to_select=5 must be null"),
        ({**KRUM, "num_nodes_to_select": 0}, 5, "a whole number from 1 (classic Krum) to 4"),
        ({**KRUM, "num_malicious_nodes": 2}, 6, "num_malicious_nodes=2 is too many for 6"),
        ({"name": "fedmedian", "server_learning_rate": 0}, 5, "server_learning_rate must be"),
    ],
)
def test_bad_settings_are_one_named_line(strategy: dict, n: int, message: str):
    error = settings.robust_strategy_errors(strategy, n)
    assert error is not None and message in error and "\n" not in error


def test_good_settings_pass():
    assert settings.robust_strategy_errors(KRUM, 4) is None
    assert settings.robust_strategy_errors({**KRUM, "num_nodes_to_select": 4}, 5) is None
    assert settings.robust_strategy_errors({"name": "fedmedian"}, 4) is None


@settings_h(max_examples=25, deadline=None)
@given(
    points=st.lists(st.floats(-10, 10, allow_nan=False).map(lambda x: [x]), min_size=5, max_size=8),
    data=st.data(),
)
def test_multikrum_result_lies_within_the_kept_updates_and_drops_f(points, data):
    # Property: the aggregate is a convex combination of n - f of the updates, so it lies
    # between their extremes; with an outlier far outside, the outlier is never among them.
    n = len(points) + 1
    examples = data.draw(st.lists(st.floats(1, 100), min_size=n, max_size=n))
    strategy = build_strategy(KRUM, n_nodes=n)
    f = krum_tolerance(n)
    with _identity():
        (value,) = _round(strategy, [0.0], [*points, [1e6]], examples)
    assert strategy.num_nodes_to_select == n - f
    assert min(p[0] for p in points) - 1e-6 <= value <= max(p[0] for p in points) + 1e-6
