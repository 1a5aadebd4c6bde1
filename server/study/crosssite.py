"""Cross-site evaluation in deployment: other hospitals' local-only models, where both allow it.

In a simulation every model is scored on every site's rows in one process
(:mod:`medfed.server.outputs.cross_site`). In deployment a local-only model exists only at its
hospital, so after personalisation the coordinator

1. asks for the local-only model (``query.share_local``, with the SGD steps the hospital took in
   the federation, so it is the model of the hospital's benefit table) only from the training
   hospitals that declared ``share_local_model`` in round 0, and only when some *other* hospital
   declared ``evaluate_other_models`` -- weights nobody may score are never asked for;
2. sends each model it received to exactly those other hospitals (``query.evaluate_other``, the
   weights and the statistics they encode rows with), which reply with additive test statistics
   (small cells withheld by the node, as for every evaluation);
3. keeps the primary metric of every pair and, for every pair left blank, the reason: a policy
   declared in round 0, a node's refusal in its own words, metrics the node withheld, no answer.

Each node checks its own policy on every request (:mod:`medfed.client.crosssite`), whatever it
declared: a coordinator that asked anyway gets a refusal and no weights. The weights stay in the
coordinator's memory for the exchange only; nothing of them is written. Every step is logged in
the coordinator's audit log (kind ``cross-site``).
"""

from __future__ import annotations

import math
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from medfed.infra.chain import ChainTampered
from medfed.infra.polling import send_and_receive
from medfed.models.metrics import metrics_from_statistics
from medfed.server.study import roles
from medfed.server.study.approvals import coordinator_log
from medfed.server.study.personalise import _steps as federation_steps

SHARE, EVALUATE = "query.share_local", "query.evaluate_other"
REFUSED = "refused by the node's policy"
WITHHELD = "withheld by {b}: a class of its test split has fewer cases than its min_cell_count"


def declarations(entry: dict[str, Any]) -> tuple[bool, bool]:
    """A hospital entry's round-0 switches: (shares its local model, scores others' models)."""
    return bool(entry.get("share_local")), bool(entry.get("evaluate_others"))


def _why(reply: Message) -> str:
    """A node's error reason in its own words (from the policy refusal on, when it is one)."""
    text = reply.error.reason or "failed"
    return text[text.index(REFUSED) :] if REFUSED in text else text


def _log(study: dict[str, Any], details: dict[str, Any]) -> None:
    log = coordinator_log(study)
    if log is None:
        return
    try:
        manifest = str((study.get("governance") or {}).get("manifest", ""))
        log.record("cross-site", str(study.get("study_id", "")), manifest, details)
    except ChainTampered as exc:  # the study's outputs still get written; the damage is reported
        print(f"medfed: warning: {exc}", flush=True)


def plan(
    hospitals: dict[int, dict[str, Any]], connected: set[int]
) -> tuple[list[int], dict[int, list[int]], dict[str, dict[str, str]]]:
    """Whom to ask for weights, whom to send each model to, and why every other pair is blank.

    Returns the node ids to ask, ``{owner node id: [evaluating node ids]}`` and ``{owner name:
    {column name: reason}}``.
    """
    name = {nid: str(h["name"]) for nid, h in hospitals.items()}
    blank: dict[str, dict[str, str]] = {}
    targets: dict[int, list[int]] = {}
    by_name = sorted(hospitals, key=lambda nid: name[nid])  # site-name order, never arrival
    for owner in sorted(roles.trainers(hospitals), key=lambda nid: name[nid]):
        row = blank.setdefault(name[owner], {})
        for other in (nid for nid in by_name if nid != owner):
            if not declarations(hospitals[owner])[0]:
                row[name[other]] = f"{name[owner]} does not share its local-only model (policy)"
            elif not declarations(hospitals[other])[1]:
                row[name[other]] = f"{name[other]} does not score other hospitals' models (policy)"
            elif owner not in connected or other not in connected:
                offline = name[owner] if owner not in connected else name[other]
                row[name[other]] = f"{offline} was not connected"
            else:
                targets.setdefault(owner, []).append(other)
    return sorted(targets, key=lambda nid: name[nid]), targets, blank


def _ask(
    grid: Grid, ask: list[int], steps: dict[str, int], result: Any
) -> dict[int, Message | None]:
    """The ``query.share_local`` reply of every node asked (None: no answer in time)."""
    messages = [
        Message(
            RecordDict(
                {
                    "config": ConfigRecord(
                        {
                            "local-steps": steps.get(result.hospitals[nid]["name"], 1),
                            "server-round": result.final.server_round,
                        }
                    )
                }
            ),
            dst_node_id=nid,
            message_type=SHARE,
            group_id="cross-site",
        )
        for nid in ask
    ]
    received = send_and_receive(grid, messages, _timeout(result))
    replies = {reply.metadata.src_node_id: reply for reply in received}
    return {nid: replies.get(nid) for nid in ask}


def _timeout(result: Any) -> float:
    return float(result.study["timeout"])


def _score_messages(
    shared: dict[int, Message], targets: dict[int, list[int]], result: Any
) -> list[Message]:
    messages = []
    for owner, reply in shared.items():
        statistics = str(reply.content.config_records["local"]["statistics-json"])
        weights = reply.content.array_records["arrays"]
        for other in targets[owner]:
            config = {
                "model-site": str(result.hospitals[owner]["name"]),
                "statistics-json": statistics,
                "server-round": result.final.server_round,
            }
            messages.append(
                Message(
                    RecordDict(
                        {
                            "arrays": ArrayRecord(weights.to_torch_state_dict()),
                            "config": ConfigRecord(config),
                        }
                    ),
                    dst_node_id=other,
                    message_type=EVALUATE,
                    group_id=f"cross-site-{owner}",
                )
            )
    return messages


def _value(reply: Message, result: Any) -> float:
    metrics = next(iter(reply.content.metric_records.values()))
    evaluation = {k[5:]: v for k, v in metrics.items() if k.startswith("eval-")}
    return float(metrics_from_statistics(result.schema, evaluation)[result.schema.primary_metric])


def _collect(
    asked: dict[int, Message | None], targets: dict[int, list[int]], result: Any, blank: dict
) -> tuple[dict[int, Message], dict[str, str]]:
    """The models received, and why the others were not (every pair of theirs is blank)."""
    shared: dict[int, Message] = {}
    missing: dict[str, str] = {}
    for owner, reply in asked.items():
        name = str(result.hospitals[owner]["name"])
        if reply is not None and not reply.has_error():
            shared[owner] = reply
            continue
        why = missing[name] = "no answer" if reply is None else _why(reply)
        for other in targets[owner]:
            blank[name][str(result.hospitals[other]["name"])] = f"{name}: {why}"
    return shared, missing


def exchange(grid: Grid, result: Any) -> dict[str, Any]:
    """Run the exchange of the module docstring for a finished deployed study ``result``.

    Returns ``{"scores": {owner: {column: value}}, "blank": {owner: {column: reason}},
    "asked": [names], "sent": {owner: [names]}}``; never raises for a node's refusal or silence.
    """
    hospitals, study = result.hospitals, result.study
    name = {nid: str(h["name"]) for nid, h in hospitals.items()}
    ask, targets, blank = plan(hospitals, set(grid.get_node_ids()))
    _log(study, {"step": "plan", "ask": [name[n] for n in ask], "blank": blank})
    asked = _ask(grid, ask, federation_steps(result.rounds), result)
    shared, missing = _collect(asked, targets, result, blank)
    shared = dict(sorted(shared.items(), key=lambda item: name[item[0]]))
    _log(study, {"step": "weights", "received_from": [name[n] for n in shared], "not": missing})
    messages = _score_messages(shared, targets, result)
    received = send_and_receive(grid, messages, _timeout(result))
    replies = {(r.metadata.group_id, r.metadata.src_node_id): r for r in received}
    scores: dict[str, dict[str, float]] = {}
    for message in messages:
        owner = int(message.metadata.group_id.rsplit("-", 1)[1])
        other = message.metadata.dst_node_id
        reply = replies.get((message.metadata.group_id, other))
        a, b = name[owner], name[other]
        if reply is None or reply.has_error():
            blank[a][b] = f"{b}: {'no answer' if reply is None else _why(reply)}"
            continue
        value = _value(reply, result)
        if math.isfinite(value):
            scores.setdefault(a, {})[b] = value
        else:
            blank[a][b] = WITHHELD.format(b=b)
    scores = {a: dict(sorted(row.items())) for a, row in sorted(scores.items())}
    sent = {name[o]: [name[t] for t in targets[o]] for o in shared}
    _log(study, {"step": "scores", "sent": sent, "scored": scores, "blank": blank})
    return {"scores": scores, "blank": blank, "asked": [name[n] for n in ask], "sent": sent}
