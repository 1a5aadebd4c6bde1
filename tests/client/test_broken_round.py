"""A hospital node survives a broken round: an exception in training or a malformed message gives
an error reply for that round only, and the node keeps serving the rounds after it."""

from __future__ import annotations

import pytest

from medfed.client import privacy_round
from medfed.server.simulation.engine import FIRST_NODE_ID


def test_an_exception_in_training_costs_the_hospital_one_round(
    small_study, run_inprocess, monkeypatch
):
    real = privacy_round.train_round
    calls = {"n": 0}

    def flaky(model, site, *args, server_round, **kwargs):
        if site.name == "hospital-1" and server_round == 2:
            calls["n"] += 1
            raise MemoryError("out of memory while training")
        return real(model, site, *args, server_round=server_round, **kwargs)

    monkeypatch.setattr(privacy_round, "train_round", flaky)
    result = run_inprocess(small_study("rounds=4"))
    assert calls["n"] == 1
    assert "out of memory while training" in result.rounds[2].failures["hospital-1"]
    assert [sorted(r.train) for r in result.rounds[1:]] == [
        ["hospital-0", "hospital-1", "hospital-2"],
        ["hospital-0", "hospital-2"],
        ["hospital-0", "hospital-1", "hospital-2"],
        ["hospital-0", "hospital-1", "hospital-2"],
    ]
    assert "hospital-1" in result.final.hospital_metrics


@pytest.mark.parametrize("broken", ["no-config", "bad-round", "no-arrays"])
def test_a_malformed_train_message_is_answered_with_an_error(small_study, broken):
    """The node answers nonsense with an error reply and then trains normally."""
    from flwr.app import ConfigRecord, RecordDict

    from medfed.client.app import app as client_app
    from medfed.server.simulation.engine import InProcessGrid
    from medfed.server.study.loop import StudyRun

    study = small_study("rounds=2")
    grid = InProcessGrid(
        client_app, [{"partition-id": i, "num-partitions": 3} for i in range(3)], run_config={}
    )
    run = StudyRun(grid, study, None)  # round 0 done: every node holds the study
    good = list(run.strategy.configure_train(1, run.arrays, run.train_config, grid))
    message = good[0]
    content = RecordDict(dict(message.content.items()))
    if broken == "no-config":
        del content["config"]
    elif broken == "bad-round":
        content["config"] = ConfigRecord({"server-round": "two"})
    else:
        del content["arrays"]
    bad = grid.create_message(content, "train", message.metadata.dst_node_id, "1")
    (reply,) = grid.send_and_receive([bad])
    assert reply.has_error() and reply.error.reason
    assert run.train_round(1) and sorted(run.rounds[1].train) == [
        "hospital-0",
        "hospital-1",
        "hospital-2",
    ]
    assert FIRST_NODE_ID in run.hospitals
