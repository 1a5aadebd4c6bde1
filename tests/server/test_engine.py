"""The in-process engine: Messages cross a real (de)serialisation; each node has its Context."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from medfed.server.simulation.engine import FIRST_NODE_ID, InProcessGrid, transmit


def _message(n_values: int, *, seed: int = 0) -> Message:
    rng = np.random.default_rng(seed)
    return Message(
        RecordDict(
            {
                "arrays": ArrayRecord(
                    [
                        rng.normal(size=n_values).astype(np.float32),
                        np.arange(6, dtype=np.int64).reshape(2, 3),
                    ]
                ),
                "metrics": MetricRecord({"num-examples": 12, "loss": 0.25, "hist": [1.0, 2.5]}),
                "config": ConfigRecord(
                    {
                        "server-round": 3,
                        "name": "hospital-2",
                        "blob": b"\x00\x01",
                        "flags": [True, False],
                    }
                ),
            }
        ),
        dst_node_id=FIRST_NODE_ID,
        message_type="train",
        group_id="3",
    )


def test_transmit_round_trips_content_and_metadata(task_identity):
    original = _message(50)
    original.metadata.__dict__["_message_id"] = "m-1"

    rebuilt, size = transmit(original)

    assert rebuilt is not original
    assert rebuilt.content is not original.content
    assert size > 0
    got, sent = rebuilt.content, original.content
    for g, s in zip(
        got.array_records["arrays"].to_numpy_ndarrays(),
        sent.array_records["arrays"].to_numpy_ndarrays(),
        strict=True,
    ):
        assert g.dtype == s.dtype and g.shape == s.shape
        np.testing.assert_array_equal(g, s)
    assert dict(got.metric_records["metrics"]) == dict(sent.metric_records["metrics"])
    assert dict(got.config_records["config"]) == dict(sent.config_records["config"])
    for field in ("message_id", "dst_node_id", "message_type", "group_id", "run_id"):
        assert getattr(rebuilt.metadata, field) == getattr(original.metadata, field)
    assert rebuilt.metadata.message_id == "m-1"


def test_transmit_size_grows_with_the_arrays(task_identity):
    _, small = transmit(_message(10))
    _, large = transmit(_message(10_010))
    # 10,000 more float32 values cannot take fewer than 40,000 more bytes (random: no compression)
    assert large - small >= 10_000 * 4
    assert large - small < 10_000 * 4 * 2


def _probe(message: Message, context: Context) -> Message:
    """A ClientApp that reports who it is and counts the messages its Context has seen."""
    seen = context.state.metric_records.get("seen", MetricRecord({"n": 0}))
    seen["n"] = int(seen["n"]) + 1
    context.state.metric_records["seen"] = seen
    if message.content.config_records["ask"]["fail"] and context.node_config["partition-id"] == 1:
        raise RuntimeError("disk full at hospital 1")
    return Message(
        RecordDict(
            {
                "who": MetricRecord(
                    {
                        "partition-id": int(context.node_config["partition-id"]),
                        "num-partitions": int(context.node_config["num-partitions"]),
                        "context-node-id": context.node_id,
                        "seen": int(seen["n"]),
                        "echo": int(message.content.config_records["ask"]["value"]),
                    }
                )
            }
        ),
        reply_to=message,
    )


def _grid(n: int = 3) -> InProcessGrid:
    return InProcessGrid(
        _probe,
        [{"partition-id": i, "num-partitions": n} for i in range(n)],
        run_config={"k": "v"},
        run_id=7,
    )


def _ask(grid: InProcessGrid, *, fail: bool = False, value: int = 0) -> dict[int, Message]:
    messages = [
        grid.create_message(
            RecordDict({"ask": ConfigRecord({"fail": fail, "value": value + nid})}),
            "query.probe",
            nid,
            "0",
        )
        for nid in grid.get_node_ids()
    ]
    replies = list(grid.send_and_receive(messages, timeout=5))
    return {r.metadata.src_node_id: r for r in replies}


def test_each_node_gets_its_own_context():
    grid = _grid(3)
    assert list(grid.get_node_ids()) == [FIRST_NODE_ID, FIRST_NODE_ID + 1, FIRST_NODE_ID + 2]

    replies = _ask(grid, value=100)

    assert sorted(replies) == list(grid.get_node_ids())
    for i in range(3):
        node_id = FIRST_NODE_ID + i
        who = replies[node_id].content.metric_records["who"]
        assert who["partition-id"] == i
        assert who["num-partitions"] == 3
        assert who["context-node-id"] == node_id
        assert who["echo"] == 100 + node_id
        assert replies[node_id].metadata.dst_node_id == SUPERLINK_NODE_ID
        assert replies[node_id].metadata.run_id == 7


def test_context_state_persists_per_node_across_messages():
    grid = _grid(2)
    _ask(grid)
    grid.set_online(FIRST_NODE_ID + 1, False)
    _ask(grid)
    grid.set_online(FIRST_NODE_ID + 1, True)

    replies = _ask(grid)

    assert replies[FIRST_NODE_ID].content.metric_records["who"]["seen"] == 3
    assert replies[FIRST_NODE_ID + 1].content.metric_records["who"]["seen"] == 2


def test_a_client_app_exception_becomes_an_error_reply():
    grid = _grid(3)

    replies = _ask(grid, fail=True)

    assert len(replies) == 3
    failed = replies[FIRST_NODE_ID + 1]
    assert failed.has_error()
    assert failed.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "RuntimeError" in failed.error.reason and "disk full" in failed.error.reason
    for node_id in (FIRST_NODE_ID, FIRST_NODE_ID + 2):
        assert not replies[node_id].has_error()
    # the grid keeps working after a failure
    assert not any(r.has_error() for r in _ask(grid).values())


def test_an_offline_node_is_not_listed_and_gets_nothing():
    grid = _grid(3)
    grid.set_online(FIRST_NODE_ID + 2, False)
    assert FIRST_NODE_ID + 2 not in list(grid.get_node_ids())

    message = grid.create_message(
        RecordDict({"ask": ConfigRecord({"fail": False, "value": 1})}),
        "query.probe",
        FIRST_NODE_ID + 2,
        "0",
    )
    assert list(grid.send_and_receive([message])) == []
    assert set(_ask(grid)) == {FIRST_NODE_ID, FIRST_NODE_ID + 1}

    grid.set_online(FIRST_NODE_ID + 2, True)
    assert set(_ask(grid)) == {FIRST_NODE_ID, FIRST_NODE_ID + 1, FIRST_NODE_ID + 2}


def test_the_grid_counts_bytes_both_ways():
    grid = _grid(2)
    assert grid.wire.total == 0
    _ask(grid)
    first = (grid.wire.sent, grid.wire.received)
    assert first[0] > 0 and first[1] > 0
    _ask(grid)
    assert grid.wire.sent == pytest.approx(2 * first[0], rel=0.05)
    assert grid.wire.total == grid.wire.sent + grid.wire.received


def test_push_then_pull_returns_each_reply_once():
    grid = _grid(2)
    messages = [
        grid.create_message(
            RecordDict({"ask": ConfigRecord({"fail": False, "value": 0})}), "query.probe", nid, "0"
        )
        for nid in grid.get_node_ids()
    ]
    ids = list(grid.push_messages(messages))
    assert len(set(ids)) == 2

    first = list(grid.pull_messages(ids))
    assert {r.metadata.reply_to_message_id for r in first} == set(ids)
    assert list(grid.pull_messages(ids)) == []
