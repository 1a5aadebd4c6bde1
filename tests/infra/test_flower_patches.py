"""The fast SuperNode's launcher: Flower's object pulls without the 1 s backoff, a receive step
that a stopped run cannot jam (on Flower's own NodeState), and a worker that is started again
when it dies."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError, pull_objects

from medfed.infra.flower_patches import (
    PULL_BACKOFF,
    drop_stopped_run,
    missing_internals,
    quick_object_pulls,
    robust_receive,
    waiting_reply_run,
)
from medfed.infra.processes import Supervised


def _late_object(delay: float):
    """A ``pull_object_fn`` whose object exists ``delay`` s after the first ask."""
    first: list[float] = []

    def pull(object_id: str) -> bytes:
        first.append(first[0] if first else time.monotonic())
        if time.monotonic() - first[0] < delay:
            raise ObjectUnavailableError(object_id)
        return b"content"

    return pull


@pytest.mark.parametrize("quick", [False, True])
def test_an_object_that_arrives_late_is_pulled_soon_after(quick):
    """Flower's backoff sleeps 0.8-1.2 s for an object that is there 0.05 s later; ours
    asks again within a few tens of milliseconds."""
    module = SimpleNamespace(pull_objects=pull_objects)
    assert quick_object_pulls(module) if quick else True
    started = time.monotonic()
    assert module.pull_objects(["a"], _late_object(0.05)) == {"a": b"content"}
    elapsed = time.monotonic() - started
    assert (elapsed < 0.5) if quick else (elapsed > 0.75)  # asks at 0, .02, .06, .14 s: .14


def test_quick_pulls_wrap_once_and_refuse_a_function_they_do_not_know():
    module = SimpleNamespace(pull_objects=pull_objects, other=lambda ids, fn: None)
    assert quick_object_pulls(module) and quick_object_pulls(module)
    assert module.pull_objects.func is pull_objects  # one partial, not a partial of a partial
    assert module.pull_objects.keywords == {"initial_backoff": PULL_BACKOFF, "backoff_cap": 2.0}
    assert not quick_object_pulls(module, "other") and not quick_object_pulls(module, "missing")


def test_the_flower_functions_the_fast_setup_shortens_exist_in_this_flower():
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    modules = [SimpleNamespace(**vars(m)) for m in (http_grid, start_client_internal)]
    assert all(quick_object_pulls(m) for m in modules)
    copy = SimpleNamespace(**vars(run_clientapp))
    assert quick_object_pulls(copy, "pull_and_inflate_object_from_tree")


def _message(run_id: int, reply_to=None):
    from flwr.app import ConfigRecord, Message, Metadata, RecordDict

    content = RecordDict({"config": ConfigRecord({"lr": 0.1})})
    if reply_to is not None:
        return Message(content, reply_to=reply_to)
    message = Message(
        content,
        metadata=Metadata(
            run_id=run_id,
            message_id="",
            src_node_id=0,
            dst_node_id=1,
            reply_to_message_id="",
            group_id="3",
            created_at=time.time(),
            ttl=600,
            message_type="train",
        ),
    )
    message.metadata.__dict__["_message_id"] = message.object_id
    return message


def _node():
    """Flower 1.41's own SuperNode state and object store, and its loop module."""
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.nodestate import NodeStateFactory

    factory = ObjectStoreFactory()
    return loop, NodeStateFactory(factory).state(), factory.store()


def _receive_step(state, store, receive, pull_object=None):
    return dict(
        state=state,
        object_store=store,
        node_config={},
        receive=receive,
        get_run=None,
        get_fab=None,
        pull_object=pull_object,
        confirm_message_received=lambda run_id, message_id: None,
        trusted_entities=None,
    )


def test_a_reply_left_by_a_stopped_run_is_sent_at_the_next_empty_receive():
    """Flower's loop sends replies only after it received a message; a reply left behind by a
    stopped run would then stand in for the next message's reply, and the node would wait for
    ever. The wrapped receive reports the waiting reply and Flower's own push sends it."""
    loop, state, store = _node()
    loop._insert_message(_message(7, reply_to=_message(7)), state, store)
    arguments = _receive_step(state, store, receive=lambda: None)
    assert loop._pull_and_store_message(**arguments) is None  # Flower: nothing to do
    assert waiting_reply_run(state) == 7
    wrapped = robust_receive(loop._pull_and_store_message)
    assert wrapped(**arguments) == 7
    sent = []
    loop._push_messages(
        state=state,
        object_store=store,
        push_object=lambda *a: None,
        send=lambda msg, tree, runtime: sent.append(msg) or (set(), "s"),
    )
    assert [m.metadata.run_id for m in sent] == [7]
    assert waiting_reply_run(state) is None and wrapped(**arguments) is None


@pytest.mark.parametrize("robust", [False, True])
def test_a_run_stopped_while_its_message_is_received_leaves_no_task_behind(robust):
    """The SuperLink refuses the message's objects (its run was stopped) after Flower created
    the message's task: Flower leaves that task pending, and a ClientApp that takes it waits
    for objects that never come. The wrapped receive finishes it and drops the message."""
    from flwr.common.constant import Status, SubStatus
    from flwr.supercore.inflatable.inflatable_object import get_object_tree
    from flwr.supercore.run import Run, RunNotRunningException

    loop, state, store = _node()
    state.store_run(Run.create_empty(7))  # a run the node knows: no get_run/get_fab
    message = _message(7)
    received = iter([(message, get_object_tree(message))])

    def refused(run_id, object_id):
        raise RunNotRunningException

    step = robust_receive(loop._pull_and_store_message) if robust else loop._pull_and_store_message
    assert step(**_receive_step(state, store, lambda: next(received), refused)) is None
    tasks = state.get_tasks(run_ids=[7])
    assert len(tasks) == 1
    if robust:
        assert tasks[0].status.status == Status.FINISHED
        assert tasks[0].status.sub_status == SubStatus.STOPPED
        assert not state.msg_store
    else:  # what Flower 1.41 leaves behind
        assert (
            tasks[0].status.status == Status.PENDING
            and message.metadata.message_id in state.msg_store
        )


def test_dropping_a_stopped_run_keeps_other_runs():
    loop, state, store = _node()
    for run_id in (7, 8):
        state.create_task(task_type="client_app", run_id=run_id, fab_hash="h")
        loop._insert_message(_message(run_id), state, store)
    assert drop_stopped_run(state, store, 7) == 1
    assert [m.metadata.run_id for m in state.get_messages_legacy()] == [8]
    assert [t.status.status for t in state.get_tasks(run_ids=[8])] == ["pending"]


def test_waiting_replies_are_looked_for_only_in_a_state_it_knows():
    assert waiting_reply_run(object()) is None and waiting_reply_run(None) is None
    assert robust_receive(lambda **kw: 3)(state=None) == 3


def _wait(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_worker_that_dies_is_started_again_until_closed():
    child = Supervised([sys.executable, "-c", "import sys; sys.exit(3)"], "worker", delay=0.05)
    try:
        _wait(lambda: child.restarts >= 2)
    finally:
        child.close()
    restarts = child.restarts
    time.sleep(0.5)
    assert child.restarts == restarts and child.process.poll() is not None


def test_closing_stops_a_running_worker_by_its_id():
    child = Supervised([sys.executable, "-c", "import time; time.sleep(60)"], "worker")
    first = child.process
    assert first.poll() is None
    child.close(grace=5.0)
    assert first.poll() is not None and child.restarts == 0


def test_the_installed_flower_has_everything_the_patches_replace():
    """Fails, naming the patch, the day a Flower upgrade moves a name medfed patches or calls."""
    assert missing_internals() == [], "\n".join(missing_internals())


def test_a_moved_internal_is_named_with_its_patch(monkeypatch):
    from medfed.infra import flower_patches

    moved = flower_patches.Internal(
        "flwr.supernode.start_client_internal", "no_such_loop", "capped_sleep"
    )
    monkeypatch.setattr(flower_patches, "INTERNALS", (moved,))
    assert flower_patches.missing_internals() == [
        "capped_sleep: flwr has no flwr.supernode.start_client_internal.no_such_loop"
    ]
