"""The coordinator adds the hospitals' updates in the order of their names: float addition depends
on the order, and replies arrive in any order under node ids an engine picks (random in
deployment), so without it the same study would not reach the same bits on every engine."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from medfed.server.study.cohort import CohortView, by_site

HOSPITALS = {7: {"name": "b-clinic"}, 3: {"name": "c-centre"}, 9: {"name": "a-hospital"}}
VALUES = {7: 1e8, 3: 1.0, 9: -1e8}  # in float32, (x + y) + z depends on the order


@pytest.fixture
def replies(task_identity) -> list[Message]:
    request = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=1,
        message_type="train",
        group_id="1",
    )
    out = []
    for node_id in (7, 3, 9, 42):  # 42: a node the study does not know
        task_identity.node_id = node_id
        arrays = {"w": Array(np.array([VALUES.get(node_id, 0.0)], dtype=np.float32))}
        reply = Message(
            RecordDict(
                {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 1})}
            ),
            reply_to=request,
        )
        reply.metadata.__dict__["_src_node_id"] = node_id
        out.append(reply)
    return out


def test_replies_go_in_the_order_of_their_sites_names(replies):
    ordered = by_site(replies, HOSPITALS)
    assert [r.metadata.src_node_id for r in ordered] == [9, 7, 3, 42]  # a-, b-, c-, unknown


def test_fedavg_gives_the_same_bits_whatever_order_replies_arrive_in(replies):
    known = replies[:3]

    def aggregate(order: list[Message]) -> bytes:
        arrays, _ = FedAvg().aggregate_train(1, order)
        assert arrays is not None
        return arrays["w"].numpy().tobytes()

    arrivals = [list(p) for p in itertools.permutations(known)]
    assert len({aggregate(order) for order in arrivals}) > 1  # the order does matter here
    assert len({aggregate(by_site(order, HOSPITALS)) for order in arrivals}) == 1


def test_the_strategy_samples_from_nodes_ordered_by_name():
    view = CohortView(None, [3, 7, 9], HOSPITALS)  # type: ignore[arg-type]
    assert view.get_node_ids() == [9, 7, 3]
    assert CohortView(None, [3, 7, 9]).get_node_ids() == [3, 7, 9]  # type: ignore[arg-type]
