"""Update screening: hand-built replies, each with one defect, and the reason the server gives."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from medfed.server.study.adversary import poison
from medfed.strategies.screening import ScreeningConfig, screen_replies, update_norm

GLOBAL = {"w": np.zeros((2, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


@pytest.fixture
def request_message(task_identity):
    task_identity.node_id = 1
    return Message(
        RecordDict({"arrays": _record(GLOBAL), "config": ConfigRecord({"server-round": 1})}),
        dst_node_id=10,
        message_type="train",
        group_id="1",
    )


def _record(arrays: dict) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.asarray(v)) for k, v in arrays.items()})


def _reply(request: Message, node_id: int, arrays: dict, examples: float = 50):
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.node_id = node_id
    reply = Message(
        RecordDict(
            {"arrays": _record(arrays), "metrics": MetricRecord({"num-examples": examples})}
        ),
        reply_to=request,
    )
    reply.metadata.__dict__["_src_node_id"] = node_id
    return reply


def _update(value: float) -> dict:
    return {"w": np.full((2, 2), value, dtype=np.float32), "b": np.full(2, value, np.float32)}


def _screen(replies, config=None):
    config = config or ScreeningConfig()
    declared = {node: 100 for node in range(10, 20)}
    return screen_replies(
        replies, _record(GLOBAL), declared, config, lambda r: f"h{r.metadata.src_node_id}"
    )


def test_update_norm_is_the_l2_norm_over_all_arrays():
    # 6 weights of 0.5 -> sqrt(6 * 0.25)
    assert update_norm(_update(0.5), GLOBAL) == pytest.approx(math.sqrt(1.5))


def test_honest_replies_pass(request_message):
    replies = [_reply(request_message, 10 + i, _update(0.1 * (i + 1))) for i in range(3)]
    passed, rejected = _screen(replies)
    assert rejected == {} and passed == replies


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        ({"w": np.zeros((2, 2), np.float32)}, "not the model's layers"),
        ({"w": np.zeros((4,), np.float32), "b": np.zeros(2, np.float32)}, "has shape (4,)"),
        ({"w": np.zeros((2, 2), np.float64), "b": np.zeros(2, np.float32)}, "float64"),
        (
            {"w": np.array([[0, np.nan], [0, 0]], np.float32), "b": np.zeros(2, np.float32)},
            "NaN or infinite",
        ),
        (
            {"w": np.array([[0, np.inf], [0, 0]], np.float32), "b": np.zeros(2, np.float32)},
            "NaN or infinite",
        ),
    ],
)
def test_malformed_updates_are_rejected_with_the_hospitals_name(
    request_message, arrays, reason, caplog
):
    good = [_reply(request_message, 10 + i, _update(0.1)) for i in range(2)]
    bad = _reply(request_message, 13, arrays)
    passed, rejected = _screen([*good, bad])
    assert passed == good
    assert list(rejected) == ["h13"] and reason in rejected["h13"]
    assert rejected["h13"].startswith("update rejected: ")
    assert "h13" in caplog.text


def test_an_inflated_example_count_is_rejected(request_message):
    replies = [
        _reply(request_message, 10, _update(0.1)),
        _reply(request_message, 11, _update(0.1), examples=1e9),
        _reply(request_message, 12, _update(0.1), examples=0),
    ]
    _, rejected = _screen(replies)
    assert "claims 1e+09 training examples but declared 100" in rejected["h11"]
    assert "not a positive count" in rejected["h12"]


def test_a_boosted_update_is_rejected_relative_to_the_others(request_message):
    honest = [_reply(request_message, 10 + i, _update(0.1 + 0.01 * i)) for i in range(3)]
    boosted = _reply(request_message, 13, poison(GLOBAL, _update(0.1), "scale", 100.0, None))
    passed, rejected = _screen([*honest, boosted])
    assert passed == honest and "max_norm_ratio=10" in rejected["h13"]
    # the message gives the others' median norm and the limit, ten times it
    found = re.search(
        r"median norm of the others \(([\d.e+-]+); limit ([\d.e+-]+)\)", rejected["h13"]
    )
    assert found and float(found[2]) == pytest.approx(10 * float(found[1]), rel=1e-3)
    # with two hospitals, the honest one is measured against the boosted one and passes
    passed, rejected = _screen([honest[0], boosted])
    assert passed == [honest[0]] and list(rejected) == ["h13"]
    # screening off: everything of the right form passes
    off = ScreeningConfig(max_norm_ratio=None, max_update_norm=None)
    assert _screen([*honest, boosted], off)[1] == {}


def test_the_absolute_norm_limit(request_message):
    replies = [_reply(request_message, 10, _update(1.0))]  # norm sqrt(6) = 2.449
    assert _screen(replies, ScreeningConfig(max_update_norm=2.5))[1] == {}
    _, rejected = _screen(replies, ScreeningConfig(max_update_norm=2.4))
    assert "update norm 2.449 exceeds screening.max_update_norm=2.4" in rejected["h10"]


def test_error_replies_pass_through_untouched(request_message):
    from flwr.app import Error

    error = Message(Error(code=0, reason="boom"), reply_to=request_message)
    passed, rejected = _screen([error])
    assert passed == [error] and rejected == {}


def test_poison_kinds_by_hand():
    received = {"w": np.array([1.0, 2.0], np.float32)}
    honest = {"w": np.array([1.5, 1.0], np.float32)}  # update (+0.5, -1.0)
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(poison(received, honest, "sign_flip", 2.0, rng)["w"], [0.0, 4.0])
    np.testing.assert_allclose(poison(received, honest, "scale", 10.0, rng)["w"], [6.0, -8.0])
    assert np.isnan(poison(received, honest, "nan", 1.0, rng)["w"]).all()
    assert poison(received, honest, "noise", 1.0, rng)["w"].dtype == np.float32
