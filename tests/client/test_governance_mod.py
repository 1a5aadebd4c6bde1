"""The governance mod on later messages, driven with real Flower Messages: a round the node's
policy refuses is written to the audit log with its reason, and personalisation is gated by the
approval and audited like any other reply."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from medfed.client.approval import approve
from medfed.client.audit import AuditLog
from medfed.client.governance import STATE, governance_mod
from medfed.client.privacy_round import NodeRefusal

DIGEST = "ab" * 32


def _context(log: AuditLog, require: bool) -> Context:
    state = RecordDict()
    state.config_records[STATE] = ConfigRecord(
        {
            "site": "hospital-0",
            "study": "diagnosis-1",
            "manifest": DIGEST,
            "audit": str(log.path),
            "require": require,
            "min-cell": 5,
        }
    )
    return Context(run_id=1, node_id=7, node_config={}, state=state, run_config={})


def _message(kind: str, server_round: int) -> Message:
    content = RecordDict({"config": ConfigRecord({"server-round": server_round})})
    return Message(content=content, dst_node_id=7, message_type=kind)


def test_a_round_the_policy_refuses_is_in_the_audit_log_with_its_reason(tmp_path, task_identity):
    log = AuditLog(tmp_path / "hospital-0.audit.jsonl")
    reason = "ledger: this round would take epsilon to 3.2, above max_epsilon_total=3"

    def refuse(msg, context):
        raise NodeRefusal(reason)

    with pytest.raises(NodeRefusal, match="above max_epsilon_total"):
        governance_mod(_message("train", 4), _context(log, require=False), refuse)
    (entry,) = log.verify()
    assert (entry["kind"], entry["round"], entry["site"]) == ("refusal", 4, "hospital-0")
    assert entry["details"] == {"reason": f"refused by the node's policy: {reason}"}


def test_personalisation_needs_the_approval_and_is_audited(tmp_path, task_identity):
    log = AuditLog(tmp_path / "hospital-0.audit.jsonl")
    called = []

    def personalise(msg, context):
        called.append(msg.metadata.message_type)
        metrics = MetricRecord({"n-test": 40.0, "federated": 0.8, "personalised": 0.85})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    with pytest.raises(NodeRefusal, match="study not approved: manifest abababab"):
        governance_mod(_message("query.personalise", 3), _context(log, True), personalise)
    assert called == []  # a study not approved is never personalised
    approve(log, DIGEST, "hospital-0", [])  # signed with a node key made beside the log
    reply = governance_mod(_message("query.personalise", 3), _context(log, True), personalise)
    assert not reply.has_error() and called == ["query.personalise"]
    kinds = [entry["kind"] for entry in log.verify()]
    assert kinds == ["refusal", "approve", "personalise"]
    assert log.verify()[-1]["details"]["sent"]["metrics"]["metrics"]["keys"] == [
        "federated",
        "n-test",
        "personalised",
    ]
