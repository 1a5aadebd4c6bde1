"""Aggregation of the hospitals' replies: FedAvg weights by examples, metrics are summed."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from medfed.strategies.registry import build_strategy
from medfed.strategies.statistics import add_into, sum_metric_records

W0 = [np.array([[1.0, 2.0], [-3.0, 0.5]], np.float32), np.array([3.0], np.float32)]
W1 = [np.array([[5.0, -2.0], [1.0, 4.5]], np.float32), np.array([7.0], np.float32)]


def _reply(
    task_identity, node_id: int, arrays: list[np.ndarray], metrics: dict[str, float | list[float]]
) -> Message:
    """A hospital's reply to a ``train`` instruction, built as a ClientApp builds it."""
    task_identity.node_id = 0
    instruction = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=node_id,
        message_type="train",
        group_id="1",
    )
    instruction.metadata.__dict__["_message_id"] = f"instruction-{node_id}"
    task_identity.node_id = node_id
    reply = Message(
        RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)}),
        reply_to=instruction,
    )
    task_identity.node_id = 0
    return reply


def test_fedavg_is_the_example_weighted_average(task_identity):
    strategy = build_strategy({"name": "fedavg", "fraction_train": 1.0, "min_nodes": 2}, 2)
    replies = [
        _reply(task_identity, 11, W0, {"num-examples": 1}),
        _reply(task_identity, 12, W1, {"num-examples": 3}),
    ]

    arrays, metrics = strategy.aggregate_train(1, replies)

    got = arrays.to_numpy_ndarrays()
    expected = [(w0 * 1 + w1 * 3) / 4 for w0, w1 in zip(W0, W1, strict=True)]
    assert len(got) == 2
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(got[0], [[4.0, -1.0], [0.0, 3.5]])  # by hand
    np.testing.assert_array_equal(got[1], [6.0])
    assert metrics["num-examples"] == 4


def test_fedavg_metrics_are_summed_not_averaged(task_identity):
    strategy = build_strategy({"name": "fedavg", "fraction_train": 1.0, "min_nodes": 2}, 2)
    replies = [
        _reply(
            task_identity,
            11,
            W0,
            {"num-examples": 1, "eval-tp": 2.0, "eval-hist_pos": [1.0, 0.0, 2.0]},
        ),
        _reply(
            task_identity,
            12,
            W1,
            {"num-examples": 3, "eval-tp": 5.0, "eval-hist_pos": [0.5, 4.0, 1.0]},
        ),
    ]

    _, metrics = strategy.aggregate_train(1, replies)

    assert metrics["eval-tp"] == 7.0
    assert metrics["eval-hist_pos"] == [1.5, 4.0, 3.0]


def test_fedavg_skips_error_replies(task_identity):
    from flwr.app import Error

    strategy = build_strategy({"name": "fedavg", "fraction_train": 1.0, "min_nodes": 2}, 2)
    good = _reply(task_identity, 11, W0, {"num-examples": 2})
    instruction = Message(RecordDict(), dst_node_id=12, message_type="train", group_id="1")
    instruction.metadata.__dict__["_message_id"] = "instruction-12"
    failed = Message(Error(code=0, reason="boom"), reply_to=instruction)

    arrays, metrics = strategy.aggregate_train(1, [good, failed])

    for g, w in zip(arrays.to_numpy_ndarrays(), W0, strict=True):
        np.testing.assert_array_equal(g, w)
    assert metrics["num-examples"] == 2


def _content(**metrics: float | list[float]) -> RecordDict:
    return RecordDict({"metrics": MetricRecord(dict(metrics))})


def test_sum_metric_records_adds_scalars_and_lists_elementwise():
    total = sum_metric_records(
        [
            _content(**{"num-examples": 10, "loss_sum": 2.5, "confusion": [1.0, 2.0, 3.0, 4.0]}),
            _content(**{"num-examples": 5, "loss_sum": 0.25, "confusion": [0.0, 1.0, 0.0, 6.0]}),
            _content(**{"num-examples": 1, "loss_sum": 1.0, "confusion": [2.0, 0.0, 0.0, 0.0]}),
        ],
        "num-examples",
    )

    assert isinstance(total, MetricRecord)
    assert total["num-examples"] == 16
    assert total["loss_sum"] == pytest.approx(3.75)
    assert total["confusion"] == [3.0, 3.0, 3.0, 10.0]


def test_sum_metric_records_counts_every_record_of_a_reply():
    content = RecordDict({"a": MetricRecord({"n": 1.0}), "b": MetricRecord({"n": 2.0})})
    assert sum_metric_records([content, _content(n=4.0)], "num-examples")["n"] == 7.0


def test_sum_metric_records_rejects_lists_of_different_lengths():
    with pytest.raises(ValueError, match="hist"):
        sum_metric_records(
            [_content(hist=[1.0, 2.0]), _content(hist=[1.0, 2.0, 3.0])], "num-examples"
        )


@pytest.mark.parametrize("first, second", [([1.0, 2.0], 3.0), (3.0, [1.0, 2.0])])
def test_sum_metric_records_rejects_a_list_meeting_a_number(first, second):
    with pytest.raises(ValueError, match="hist"):
        sum_metric_records([_content(hist=first), _content(hist=second)], "num-examples")


def test_add_into_keeps_a_running_total_without_touching_the_record():
    total: dict = {}
    record = MetricRecord({"n": 3, "h": [1.0, 2.0]})
    add_into(total, record)
    add_into(total, record)
    assert total == {"n": 6.0, "h": [2.0, 4.0]}
    assert record["h"] == [1.0, 2.0]
