"""A resumed study gives every hospital back the state it kept between rounds.

The coordinator's own state (weights, strategy state such as SCAFFOLD's ``c``, early stopping's
best round and weights, random states) comes back from ``checkpoint.pt``. What a hospital keeps
between rounds (FedPer heads, FedBN norms, its SCAFFOLD ``c_i``) never leaves it: each node
writes it to its own disk after every round (:mod:`medfed.client.node_state`), and on resume the
coordinator only tells each node, with ``query.restore``, which round to continue from and the
last round in which it recorded that node's update, so the node can tell a missing file from a
node that had not trained yet. A node that cannot restore its state stops the resume with its
one-line reason (naming the file): the study never goes on with heads silently restarted.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from medfed.infra.polling import send_and_receive

NODE_SAYS = "cannot resume:"  # how medfed.client.node_state words a refusal


class ResumeError(RuntimeError):
    """A hospital could not restore its state; the message names the hospital and the file."""


def last_update(rounds: list[Any], name: str, server_round: int) -> int:
    """The last round ``<= server_round`` in which ``name``'s update reached the coordinator
    (aggregated or rejected by screening: the node trained either way); 0 for none."""
    return max(
        (
            record.server_round
            for record in rounds
            if 0 < record.server_round <= server_round
            and (name in record.train or name in record.rejected)
        ),
        default=0,
    )


def ask_nodes(
    grid: Grid,
    study: dict[str, Any],
    hospitals: dict[int, dict[str, Any]],
    rounds: list[Any],
    server_round: int,
) -> dict[int, str]:
    """Ask every hospital in ``hospitals`` to load the state it held after ``server_round``;
    return, by node id, the one-line reason of each one that could not (or did not answer)."""
    messages = [
        Message(
            RecordDict(
                {
                    "config": ConfigRecord(
                        {
                            "resume-round": server_round,
                            "trained-round": last_update(rounds, entry["name"], server_round),
                        }
                    )
                }
            ),
            dst_node_id=node_id,
            message_type="query.restore",
            group_id="0",
        )
        for node_id, entry in hospitals.items()
    ]
    timeout = float(study["timeout"])
    replies = {r.metadata.src_node_id: r for r in send_and_receive(grid, messages, timeout)}
    problems = {}
    for node_id in hospitals:
        reply = replies.get(node_id)
        if reply is None:
            problems[node_id] = (
                f"did not confirm it restored its state within timeout={timeout:.0f} s"
            )
        elif reply.has_error():
            problems[node_id] = _worded(reply.error.reason or "")
    return problems


def restore_nodes(
    grid: Grid,
    study: dict[str, Any],
    hospitals: dict[int, dict[str, Any]],
    rounds: list[Any],
    server_round: int,
) -> None:
    """:func:`ask_nodes` for a resumed study: every hospital must have its state back.

    Raises
    ------
    ResumeError
        Naming each hospital that could not, and its reason (the node's file), in one line.
    """
    problems = ask_nodes(grid, study, hospitals, rounds, server_round)
    if problems:
        raise ResumeError(
            "; ".join(f"{hospitals[node_id]['name']}: {why}" for node_id, why in problems.items())
        )


def _worded(reason: str) -> str:
    """The node's sentence without the wrapping Flower's runtimes add around an exception
    (``NodeStateError: ...`` in process, ``<class '...'>:<'...'>`` on a deployed node)."""
    first = (reason.splitlines() or [""])[0]
    if NODE_SAYS in first:
        first = first[first.index(NODE_SAYS) :]
        return first[:-2] if first.endswith("'>") else first
    return first
