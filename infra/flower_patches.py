"""Every place medfed reaches into Flower 1.41's internals, fenced in one module.

Flower offers no setting for the intervals and fixes below, so medfed changes Flower's modules
at run time. Each patch is a function here with a docstring saying what Flower does, why it breaks
medfed, and what the patch does instead; :data:`INTERNALS` lists every Flower-internal name any
medfed module relies on (patched or only called), and :func:`missing_internals` tells which of
them the installed Flower no longer has: ``tests/infra/test_flower_patches.py`` fails, naming the
patch, the day a Flower upgrade moves one. At run time a patch whose target is missing logs a
warning and leaves Flower's behaviour in place (slower, still correct).

Measured on loopback (``benchmarks/deploy_latency.py``): Flower's defaults 12.74 s per training
round, the patched setup 2.39 s (median).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Internal:
    """A Flower-internal name medfed relies on: ``module.attribute`` and, for a function, the
    parameters medfed passes or wraps."""

    module: str
    attribute: str
    used_by: str
    parameters: tuple[str, ...] = ()


INTERNALS: tuple[Internal, ...] = (
    Internal("flwr.supernode.start_client_internal", "time", "capped_sleep"),
    Internal(
        "flwr.supernode.start_client_internal",
        "_pull_and_store_message",
        "robust_receive",
        ("state", "object_store"),
    ),
    Internal(
        "flwr.supernode.start_client_internal",
        "pull_objects",
        "quick_object_pulls",
        ("initial_backoff", "backoff_cap"),
    ),
    Internal("flwr.supercore.heartbeat", "HEARTBEAT_DEFAULT_INTERVAL", "short_heartbeat"),
    Internal(
        "flwr.supernode.fleet_http_connection", "HEARTBEAT_DEFAULT_INTERVAL", "short_heartbeat"
    ),
    Internal("flwr.supercore.run", "RunNotRunningException", "robust_receive"),
    Internal("flwr.superlink.grid.http_grid", "HttpGrid", "name_reply_source"),
    Internal(
        "flwr.superlink.grid.http_grid",
        "pull_objects",
        "quick_object_pulls",
        ("initial_backoff", "backoff_cap"),
    ),
    Internal(
        "flwr.supernode.runtime.run_clientapp",
        "pull_task_input",
        "the ClientApp worker (medfed.client.supernode.worker)",
    ),
    Internal(
        "flwr.supernode.runtime.run_clientapp",
        "push_task_output",
        "the ClientApp worker (medfed.client.supernode.worker)",
    ),
    Internal(
        "flwr.supernode.runtime.run_clientapp",
        "pull_and_inflate_object_from_tree",
        "quick_object_pulls",
        ("initial_backoff", "backoff_cap"),
    ),
    Internal(
        "flwr.supercore.runtime",
        "RuntimeHttpClient",
        "the ClientApp worker (medfed.client.supernode.worker)",
    ),
    Internal(
        "flwr.supercore.task_identity",
        "TaskIdentity",
        "the in-process engine (medfed.server.simulation.engine)",
    ),
)
"""Every Flower-internal name medfed uses, with the patch or module that uses it."""


def missing_internals() -> list[str]:
    """One sentence per entry of :data:`INTERNALS` the installed Flower lacks (empty: all there)."""
    problems = []
    for item in INTERNALS:
        try:
            target = getattr(importlib.import_module(item.module), item.attribute)
        except (ImportError, AttributeError):
            problems.append(f"{item.used_by}: flwr has no {item.module}.{item.attribute}")
            continue
        if item.parameters:
            have = set(inspect.signature(target).parameters)
            lacking = [p for p in item.parameters if p not in have]
            if lacking:
                problems.append(
                    f"{item.used_by}: {item.module}.{item.attribute} takes no {', '.join(lacking)}"
                )
    return problems


PULL_BACKOFF = 0.02
"""First pause (s) before asking again for an object that has not arrived yet (Flower: 1 s)."""


PULL_BACKOFF_CAP = 2.0
"""Longest pause (s) between two asks for the same object (Flower: 10 s)."""


def quick_object_pulls(module: object, name: str = "pull_objects") -> bool:
    """Make ``module.<name>`` (Flower's ``pull_objects`` or ``pull_and_inflate_object_from_tree``
    as one of its modules imported it) wait :data:`PULL_BACKOFF` s, not 1 s, for an object that
    is not there yet; returns whether it could (``False``: this Flower differs from 1.41's).

    A message becomes visible before its objects have arrived: the SuperNode stores a message and
    creates its task before it pulls the message's objects from the SuperLink, and a sender
    pushes the message before its objects. Whoever pulls at once finds an object missing and, with
    Flower's backoff, sleeps 1 s (then 2 s...) although the object arrives milliseconds later:
    measured 1.1-1.8 s of every message's 1.2-1.9 s in the worker, and the same again at the
    SuperNode and the ServerApp. The number of tries and the overall time limit stay Flower's.
    """
    import functools
    import inspect

    pull = getattr(module, name, None)
    if pull is None:
        return False
    if getattr(pull, "_medfed_quick", False):
        return True
    if not {"initial_backoff", "backoff_cap"} <= set(inspect.signature(pull).parameters):
        return False
    quick = functools.partial(pull, initial_backoff=PULL_BACKOFF, backoff_cap=PULL_BACKOFF_CAP)
    quick._medfed_quick = True  # type: ignore[attr-defined]
    setattr(module, name, quick)
    return True


class CappedSleep:
    """Stands in for the ``time`` module in one Flower module: ``sleep`` waits at most ``cap``."""

    def __init__(self, cap: float) -> None:
        self._cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str):
        return getattr(time, name)


def waiting_reply_run(state: object) -> int | None:
    """The run of a reply that waits in a SuperNode's state to be sent, if any (``None`` also
    when ``state`` is not Flower 1.41's in-memory NodeState). Looks without taking it."""
    store, lock = getattr(state, "msg_store", None), getattr(state, "lock_msg_store", None)
    if not isinstance(store, dict) or lock is None:
        return None
    with lock:
        for entry in store.values():
            metadata = entry.message.metadata
            if not entry.is_retrieved and metadata.reply_to_message_id:
                return int(metadata.run_id)
    return None


def drop_stopped_run(state: object, store: object, run_id: int) -> int:
    """Forget what a SuperNode holds of a stopped run: finish its unfinished tasks (their tokens
    are revoked, so a ClientApp still working on one gives up at its next call) and delete its
    messages and their objects. Returns how many tasks were finished."""
    from flwr.common.constant import Status, SubStatus

    tasks = state.get_tasks(  # type: ignore[attr-defined]
        run_ids=[run_id],
        statuses=[Status.PENDING, Status.STARTING, Status.RUNNING],
    )
    finished = sum(
        bool(
            state.finish_task(  # type: ignore[attr-defined]
                task.task_id,
                SubStatus.STOPPED,
                "its run was stopped while the SuperNode received its message",
            )
        )
        for task in tasks
    )
    lock = getattr(state, "lock_msg_store", None)
    messages = getattr(state, "msg_store", None)
    if lock is not None and isinstance(messages, dict):
        with lock:
            ids = [
                mid for mid, entry in messages.items() if entry.message.metadata.run_id == run_id
            ]
        state.delete_messages(message_ids=ids)  # type: ignore[attr-defined]
        for message_id in ids:
            store.delete(message_id)  # type: ignore[attr-defined]
    return finished


def robust_receive(pull: Callable[..., int | None]) -> Callable[..., int | None]:
    """Flower's ``_pull_and_store_message`` (the SuperNode's receive step), made safe against a
    run stopped while one of its messages is received.

    Flower 1.41 creates the message's task and stores the message before it pulls the message's
    objects. When the run is stopped meanwhile, it logs "not in RUNNING status. Ignoring message"
    and returns -- leaving the task and the half-received message behind:

    * a ClientApp takes the task and waits for objects that never come (Flower's pull gives up
      after 500 tries: ~17 min here, over an hour with Flower's backoff). The long-lived worker
      runs one task at a time, so the node answered nothing in the next study (seen after
      ``flwr stop``). Here the stopped run's tasks are finished and its messages dropped
      (:func:`drop_stopped_run`): the worker's next call is refused and it moves on.
    * a ClientApp that got the objects in time replies. Flower's loop sends replies only right
      after it received a message (one message at a time), so that stale reply went out in place
      of the next message's reply, which was left behind, and the node waited for ever for a
      message the coordinator would not send before that reply. Here an empty receive with a
      reply waiting (:func:`waiting_reply_run`) returns the reply's run, and Flower's loop sends
      it.
    """
    import functools

    from flwr.supercore.run import RunNotRunningException

    @functools.wraps(pull)
    def receive_step(*args: object, **kwargs: object) -> int | None:
        received: list[int] = []
        stopped: list[bool] = []

        def noting(name: str, fn: Callable[..., object]) -> Callable[..., object]:
            def call(*a: object, **k: object) -> object:
                try:
                    result = fn(*a, **k)
                except RunNotRunningException:
                    stopped.append(True)
                    raise
                if name == "receive" and result is not None:
                    received.append(int(result[0].metadata.run_id))  # type: ignore[index]
                return result

            return call

        for name in ("receive", "get_run", "get_fab", "pull_object", "confirm_message_received"):
            if callable(kwargs.get(name)):
                kwargs[name] = noting(name, kwargs[name])  # type: ignore[arg-type]
        run_id = pull(*args, **kwargs)
        state = kwargs.get("state", args[0] if args else None)
        if run_id is None and stopped and received and state is not None:
            count = drop_stopped_run(state, kwargs.get("object_store"), received[0])
            from flwr.common.logger import log  # beside Flower's "Ignoring message" line

            log(
                logging.INFO,
                "medfed: run %d was stopped while this node received its "
                "message: its %d unfinished task(s) and its messages are dropped",
                received[0],
                count,
            )
        if run_id is None:
            run_id = waiting_reply_run(state)
        return run_id

    receive_step._medfed_robust = True  # type: ignore[attr-defined]
    return receive_step


def patch_supernode(poll: float, heartbeat: float) -> None:
    """Cap the SuperNode loop's sleeps at ``poll``, shorten its object pulls' backoff, make its
    receive step safe against stopped runs (:func:`robust_receive`) and announce ``heartbeat`` s
    heartbeats."""
    from flwr.supercore import heartbeat as sender
    from flwr.supernode import fleet_http_connection as fleet
    from flwr.supernode import start_client_internal as loop

    patched = getattr(loop, "time", None) is time and quick_object_pulls(loop)
    pull = getattr(loop, "_pull_and_store_message", None)
    if pull is None:
        patched = False
    elif not getattr(pull, "_medfed_robust", False):
        loop._pull_and_store_message = robust_receive(pull)
    if getattr(loop, "time", None) is time:
        loop.time = CappedSleep(poll)  # type: ignore[assignment]  # stands in for the module
    for module in (sender, fleet):
        if hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
            module.HEARTBEAT_DEFAULT_INTERVAL = heartbeat  # type: ignore[attr-defined]
        else:
            patched = False
    if not patched:
        logging.getLogger("medfed").warning(
            "this Flower version's SuperNode differs from flwr 1.41's: some of its poll or "
            "heartbeat intervals keep Flower's values"
        )


def name_reply_source(reply: object, node_id: int) -> None:
    """Make ``reply`` name the node its message went to.

    Flower 1.41's SuperLink answers for a node that missed its heartbeats with a "Node
    Unavailable" error reply whose source is the SuperLink's own id (1), so the study could not
    tell which hospital dropped out; the message metadata offers no setter for its source.
    """
    reply.metadata.__dict__["_src_node_id"] = node_id  # type: ignore[attr-defined]
