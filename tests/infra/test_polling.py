"""medfed.infra.polling: push, then pull with a short poll, on Flower's deployment grid only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flwr.superlink.grid import HttpGrid

from medfed.infra import polling


def _reply(to: str, src: int = 1) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=to, _src_node_id=src))


def _messages(n: int) -> list[SimpleNamespace]:
    """``n`` messages to nodes 100, 101, ..."""
    return [SimpleNamespace(metadata=SimpleNamespace(dst_node_id=100 + i)) for i in range(n)]


class ScriptedGrid(HttpGrid):
    """An HttpGrid (no connection) whose replies arrive on scripted pulls: ``{pull: [ids]}``."""

    def __init__(self, ids: list[str | None], arrivals: dict[int, list[str]]) -> None:
        self.ids, self.arrivals, self.pulls, self.asked = ids, arrivals, 0, []

    def push_messages(self, messages):
        assert len(messages) == len(self.ids)
        return list(self.ids)

    def pull_messages(self, message_ids):
        self.asked.append(sorted(message_ids))
        self.pulls += 1
        return [_reply(mid) for mid in self.arrivals.get(self.pulls, [])]


@pytest.fixture
def sleeps(monkeypatch):
    recorded: list[float] = []
    monkeypatch.setattr(polling.time, "sleep", recorded.append)
    return recorded


def test_pulls_until_every_reply_is_in_with_the_short_poll(sleeps):
    grid = ScriptedGrid(["a", "b", "c"], {1: ["b"], 3: ["a", "c"]})
    replies = polling.send_and_receive(grid, _messages(3), timeout=60, poll=0.01)
    assert [r.metadata.reply_to_message_id for r in replies] == ["b", "a", "c"]
    # every reply names the node its message went to, also the SuperLink's (node 1) errors
    assert [r.metadata._src_node_id for r in replies] == [101, 100, 102]
    assert grid.asked == [["a", "b", "c"], ["a", "c"], ["a", "c"]]
    assert sleeps == [0.01, 0.01]


def test_a_message_the_superlink_refused_is_not_waited_for(sleeps):
    grid = ScriptedGrid(["a", None], {1: ["a"]})
    assert len(polling.send_and_receive(grid, _messages(2), timeout=60, poll=0.01)) == 1
    assert grid.pulls == 1 and sleeps == []


def test_missing_replies_are_absent_after_the_timeout():
    grid = ScriptedGrid(["a", "b"], {1: ["a"]})
    replies = polling.send_and_receive(grid, _messages(2), timeout=0.05, poll=0.01)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert grid.pulls >= 2


def test_other_grids_keep_their_own_send_and_receive():
    calls = []
    grid = SimpleNamespace(send_and_receive=lambda messages, timeout: calls.append(timeout) or [])
    assert polling.send_and_receive(grid, [], timeout=7.0) == []
    assert calls == [7.0]


def test_the_poll_comes_from_the_environment(monkeypatch, sleeps):
    monkeypatch.setenv(polling.POLL_ENV, "3")
    grid = ScriptedGrid(["a"], {2: ["a"]})
    polling.send_and_receive(grid, _messages(1), timeout=60)
    assert sleeps == [3.0]
    monkeypatch.setenv(polling.POLL_ENV, "soon")
    with pytest.raises(ValueError, match="MEDFED_GRID_POLL='soon'"):
        polling.grid_poll()
    monkeypatch.delenv(polling.POLL_ENV)
    assert polling.grid_poll() == polling.DEFAULT_POLL
