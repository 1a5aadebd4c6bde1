"""The governance mod: approval, audit and disclosure control around every ClientApp handler.

A Flower mod on the ClientApp (inside the reply guard, so the guard still checks what it lets
through). For each message it

1. in round 0 (``query.stats``) derives the study manifest from the configuration the server
   sent (:mod:`medfed.models.manifest`), opens the dataset's audit log and, when the node policy
   says ``require_approval``, refuses a manifest it has not approved with exactly
   ``study not approved: manifest <hash8> (approve it with medfed node approve)``;
2. before every later message (training, evaluation, personalisation, cross-site requests)
   checks the approval again, so ``medfed node revoke`` stops the study at its next message
   (the refusal is a policy refusal: the server counts a dropout);
3. applies the policy's ``min_cell_count`` to what the reply discloses (:mod:`.disclosure`);
4. appends what left the node to the audit log: array names, shapes and bytes, counts, metric
   keys, epsilon; refusals (a round the privacy budget or policy refuses included) and failures
   with their reasons (cross-site requests,
   :mod:`.crosssite`, as ``cross-site`` entries, their policy refusals as ``refusal``).

A damaged audit log stops the node (every message is refused, naming the file) until an operator
acknowledges it (``medfed node audit --dataset CARD --acknowledge REASON``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message

from medfed.client import node
from medfed.client.approval import NotApproved, check_approved
from medfed.client.audit import AuditLog, AuditTampered, audit_path
from medfed.client.crosssite import exchange_details
from medfed.client.crosssite_guard import EXCHANGES
from medfed.client.disclosure import protect_evaluation, protect_statistics, sent_summary
from medfed.client.policy import policy_for_site
from medfed.client.privacy_round import NodeRefusal
from medfed.infra.records import scalar
from medfed.models.manifest import build_manifest, manifest_hash

STATE = "medfed-governance"
ACK = "acknowledge it with medfed node audit --dataset CARD --acknowledge REASON"


class AuditDamaged(RuntimeError):
    """The node's audit log is damaged; it refuses to work until an operator acknowledges."""


def site_name(study: dict[str, Any], index: int) -> str:
    """The name of hospital ``index`` of the (node-local) study, without reading its rows."""
    import yaml

    federation = study["federation"]
    if federation.get("name") == "sites":
        card = Path(federation["cards"][index])
        return str((yaml.safe_load(card.read_text()) or {}).get("name") or card.stem)
    return f"hospital-{index}"


def log_for(
    study: dict[str, Any], node_config: Any, site: str, approvals_dir: str | None
) -> AuditLog | None:
    """The audit log of this node's dataset: ``approvals_dir/<site>.audit.jsonl`` (policy),
    else ``<card>.audit.jsonl`` beside a deployed node's card, else ``<output_dir>/audit/``;
    None for a simulated study without an output folder (a study run from Python in memory)."""
    if approvals_dir:
        return AuditLog(audit_path(folder=approvals_dir, site=site))
    if node_config.get("dataset"):
        return AuditLog(audit_path(str(node_config["dataset"])))
    if not study.get("output_dir"):
        return None
    return AuditLog(audit_path(folder=Path(study["output_dir"]) / "audit", site=site))


def _gate(log: AuditLog | None, digest: str, required: bool) -> None:
    """Raise unless the log is sound and (when required) ``digest`` is approved."""
    if log is None:
        if required:
            raise NotApproved(digest)
        return
    try:
        if required:
            check_approved(log, digest)  # reads the approvals from the verified log
        else:
            log.verify()
    except AuditTampered as exc:
        raise AuditDamaged(f"audit log damaged, the node refuses to work: {exc} ({ACK})") from None


def _refuse(
    log: AuditLog | None,
    state: dict[str, Any],
    error: Exception,
    server_round: int | None,
    extra: dict[str, Any] | None = None,
) -> None:
    if log is None:
        return
    try:
        log.record(
            "refusal",
            site=state["site"],
            study=state["study"],
            manifest=state["manifest"],
            round=server_round,
            details={"reason": str(error), **(extra or {})},
        )
    except AuditTampered:
        pass  # a damaged log cannot take entries; the refusal itself names the damage


def _round0(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    raw = str(msg.content.config_records["study"]["config-json"])
    sent = json.loads(raw)
    local = json.loads(node.local_study(raw, context.node_config))
    site = site_name(local, node.site_index(context.node_config))
    policy = policy_for_site(local.get("policy"), site)
    digest = manifest_hash(build_manifest(sent))
    log = log_for(local, context.node_config, site, policy.approvals_dir)
    state: dict[str, Any] = {
        "site": site,
        "study": str(sent.get("study_id", "")),
        "manifest": digest,
        "audit": str(log.path) if log else "",
        "require": policy.require_approval,
        "min-cell": policy.min_cell_count,
    }
    try:
        _gate(log, digest, policy.require_approval)
    except (NotApproved, AuditDamaged) as exc:
        _refuse(log, state, exc, 0)
        raise
    reply = call_next(msg, context)
    if reply.has_error():
        _refuse(log, state, RuntimeError(reply.error.reason), 0)
        return reply
    reply = protect_statistics(reply, policy.min_cell_count)
    context.state.config_records[STATE] = ConfigRecord(state)
    if log is None:
        return reply
    log.record(
        "study-start",
        site=site,
        study=state["study"],
        manifest=digest,
        round=0,
        details={
            "sent": sent_summary(reply),
            "require_approval": policy.require_approval,
            "min_cell_count": policy.min_cell_count,
        },
    )
    return reply


def _later(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    record = context.state.config_records.get(STATE)
    if record is None:  # no round 0 on this node: the handler refuses with its own reason
        return call_next(msg, context)
    state = dict(record)
    log = AuditLog(str(state["audit"])) if state["audit"] else None
    config = msg.content.config_records.get("config") if msg.has_content() else None
    server_round = int(scalar(config["server-round"])) if config and "server-round" in config else 0
    try:
        _gate(log, str(state["manifest"]), bool(state["require"]))
    except (NotApproved, AuditDamaged) as exc:
        _refuse(log, state, exc, server_round)
        raise NodeRefusal(str(exc)) from None
    try:
        reply = call_next(msg, context)
    except NodeRefusal as exc:  # the policy refuses: a round past the budget, a cross-site ask
        _refuse(log, state, exc, server_round, exchange_details(msg))
        raise
    if reply.has_error():
        _refuse(log, state, RuntimeError(reply.error.reason), server_round)
        return reply
    reply, suppressed = protect_evaluation(reply, int(scalar(state["min-cell"])))
    if log is None:
        return reply
    kind = msg.metadata.message_type
    log.record(
        {
            "evaluate": "study-end",
            "query.personalise": "personalise",
            "query.restore": "restore",
            **dict.fromkeys(EXCHANGES, "cross-site"),
        }.get(kind, "round"),
        site=str(state["site"]),
        study=str(state["study"]),
        manifest=str(state["manifest"]),
        round=server_round,
        details={
            "sent": sent_summary(reply),
            "evaluation_suppressed": suppressed,
            **exchange_details(msg),
        },
    )
    return reply


def governance_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Flower mod: approval before, disclosure control and the audit entry after each handler."""
    if msg.metadata.message_type == "query.stats":
        return _round0(msg, context, call_next)
    return _later(msg, context, call_next)  # every later message: personalise, restore too
