"""Send messages and collect the replies without Flower's 3-second poll.

Flower 1.41's deployment Grid (``flwr.superlink.grid.http_grid.HttpGrid``, the one a ServerApp
gets under ``flwr run`` on a real SuperLink) pulls replies in ``send_and_receive`` and sleeps a
hard-coded 3 s between pulls: every exchange took a multiple of 3 s although the hospitals had
answered long before (measured on loopback: round 0 and every training round rounded up to the
next 3 s). :func:`send_and_receive` does the same push-then-pull with a short poll instead, and
the Grid's pull of a reply's objects waits 0.02 s, not Flower's 1 s, for an object the node has
not finished pushing (:func:`medfed.infra.flower_patches.quick_object_pulls`).
Other grids keep their own ``send_and_receive``: the in-process engine answers synchronously (and
never answers for a hospital taken offline, so polling it would wait for the whole timeout) and
Flower's simulation grid already polls every 0.1 s.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from medfed.infra.flower_patches import name_reply_source, quick_object_pulls
from medfed.infra.launch import POLL_ENV

DEFAULT_POLL = 0.05
"""Seconds between two pulls: one small HTTP request to the SuperLink each."""


def grid_poll() -> float:
    """The poll interval in seconds: ``$MEDFED_GRID_POLL`` or :data:`DEFAULT_POLL`."""
    raw = os.environ.get(POLL_ENV, "")
    try:
        poll = float(raw) if raw else DEFAULT_POLL
    except ValueError:
        poll = -1.0
    if not 0 < poll <= 60:
        raise ValueError(f"{POLL_ENV}={raw!r}: set it to a number of seconds in (0, 60].")
    return poll


def _polls_slowly(grid: Grid) -> bool:
    """Whether ``grid`` is Flower's deployment grid (its module is only loaded by that runtime)."""
    module = sys.modules.get("flwr.superlink.grid.http_grid")
    return module is not None and isinstance(grid, module.HttpGrid)


def send_and_receive(
    grid: Grid, messages: Iterable[Message], timeout: float | None, poll: float | None = None
) -> list[Message]:
    """Push ``messages`` and return the replies that arrive within ``timeout`` seconds.

    Same contract as ``Grid.send_and_receive``: replies in arrival order, missing replies are
    simply absent when the timeout expires, ``timeout=None`` waits for every reply. Only the
    pause between pulls (``poll`` seconds, default :func:`grid_poll`) differs, a message the
    SuperLink refused to take (Flower returns ``None`` for its id) is not waited for, and every
    reply names the node its message went to: the "Node Unavailable" error the SuperLink writes
    for a node that missed its heartbeats comes from the SuperLink's own id (1) otherwise, and
    the study would not know which hospital dropped out.
    """
    if not _polls_slowly(grid):
        return list(grid.send_and_receive(messages, timeout=timeout))
    poll = grid_poll() if poll is None else poll
    if poll < 1:  # the fast setup; Flower's own (MEDFED_GRID_POLL=3) keeps Flower's backoff
        quick_object_pulls(sys.modules["flwr.superlink.grid.http_grid"])
    messages = list(messages)
    sent_to = {
        message_id: message.metadata.dst_node_id
        for message_id, message in zip(grid.push_messages(messages), messages, strict=True)
        if message_id
    }
    pending = set(sent_to)
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        pulled = list(grid.pull_messages(pending))
        for reply in pulled:  # the SuperLink answers for a node gone offline, as node 1
            name_reply_source(reply, sent_to[reply.metadata.reply_to_message_id])
        replies.extend(pulled)
        pending.difference_update(reply.metadata.reply_to_message_id for reply in pulled)
        if not pending or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(poll)
    return replies
