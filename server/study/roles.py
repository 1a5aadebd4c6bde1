"""Site roles in a study: hospitals that train, and evaluation-only hospitals (``role: evaluate``).

A hospital's dataset card says its role; the node tells the server in its round-0 reply. An
evaluation-only hospital never trains: the strategy never samples it, it receives the global
model in an ``evaluate`` message whenever evaluation is due and reports its test statistics, it
sends no update and spends no privacy budget; its round-0 statistics do not shape the global
normalisation (the model is fitted to the training hospitals' rows). Before round 1,
:func:`training_problem` tells the study whether enough hospitals can train, naming every
hospital that cannot and why.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from medfed.infra.polling import send_and_receive
from medfed.server.study.cohort import CohortView

TRAIN, EVALUATE = "train", "evaluate"
EVALUATION_ONLY = "evaluation only (role: evaluate in its dataset card)"


def role_of(hospital: dict[str, Any]) -> str:
    """A hospital entry's role (``train`` when the node did not say)."""
    return str(hospital.get("role", TRAIN))


def trainers(hospitals: dict[int, dict[str, Any]]) -> list[int]:
    """Node ids of the hospitals that train."""
    return [node_id for node_id, h in hospitals.items() if role_of(h) == TRAIN]


def evaluators(hospitals: dict[int, dict[str, Any]]) -> list[int]:
    """Node ids of the evaluation-only hospitals."""
    return [node_id for node_id, h in hospitals.items() if role_of(h) == EVALUATE]


def training_problem(
    study: dict[str, Any], hospitals: dict[int, dict[str, Any]], failures: dict[str, str]
) -> str | None:
    """Why the study cannot start (fewer than ``strategy.min_nodes`` hospitals can train), or
    ``None``. The message gives every hospital that cannot train with its reason."""
    needed = int(study["strategy"]["min_nodes"])
    able = trainers(hospitals)
    if len(able) >= needed:
        return None
    reasons = {hospitals[nid]["name"]: EVALUATION_ONLY for nid in evaluators(hospitals)}
    reasons.update(failures)
    detail = "; ".join(f"{name}: {why}" for name, why in reasons.items())
    return (
        f"only {len(able)} hospital(s) can train, strategy.min_nodes={needed}; cannot train: "
        f"{detail or 'none connected'}"
    )


def training_view(
    grid: Grid,
    study: dict[str, Any],
    hospitals: dict[int, dict[str, Any]],
    view: CohortView | None,
    reason: str,
) -> tuple[CohortView | None, list[int], str]:
    """The ready hospitals that train (the strategy samples only these), every ready hospital
    (evaluation-only ones included), and why the round cannot start when too few can train."""
    if view is None:
        return None, [], reason
    ready = view.get_node_ids()
    able = [node_id for node_id in ready if node_id in trainers(hospitals)]
    needed = int(study["strategy"]["min_nodes"])
    if len(able) < needed:
        why = f"only {len(able)} of the strategy.min_nodes={needed} hospitals needed to train"
        return None, ready, f"{why} were ready (the others are evaluation-only or offline)"
    return CohortView(grid, able, hospitals), ready, ""


def evaluation_due(study: dict[str, Any], server_round: int) -> bool:
    """Whether the model received in ``server_round`` is evaluated (``evaluate.every``)."""
    return (server_round - 1) % int(study["evaluate"]["every"]) == 0


def evaluate_only(
    grid: Grid, arrays: ArrayRecord, node_ids: list[int], server_round: int, study: dict[str, Any]
) -> tuple[list[Message], list[Message]]:
    """Send the global model to the evaluation-only hospitals ``node_ids`` (when due).

    Returns the messages sent and the replies (metrics ``eval-*``, as in a train reply).
    """
    if not node_ids or not evaluation_due(study, server_round):
        return [], []
    messages = [
        Message(
            RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}),
            dst_node_id=node_id,
            message_type="evaluate",
            group_id=f"{server_round}-evaluate",
        )
        for node_id in node_ids
    ]
    return messages, send_and_receive(grid, messages, float(study["timeout"]))
