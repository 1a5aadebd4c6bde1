"""The audit log and approvals: one hash chain with the ledger, approvals minus revocations,
signatures, tampering, and an operator's acknowledgement that keeps the damaged log."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from medfed.client.approval import NotApproved, approve, check_approved, sign, verify_signature
from medfed.client.audit import AuditLog, AuditTampered, acknowledge, audit_path
from medfed.client.ledger import Ledger
from medfed.infra.chain import GENESIS, HashChain
from medfed.infra.keys import create_node_keys

H1, H2 = "a" * 64, "b" * 64


def test_ledger_and_audit_log_share_one_chain(tmp_path):
    assert issubclass(Ledger, HashChain) and issubclass(AuditLog, HashChain)
    assert Ledger._read is HashChain._read and AuditLog._read is HashChain._read


def test_entries_chain_by_hash(tmp_path):
    log = AuditLog(tmp_path / "site.audit.jsonl")
    first = log.record("data-check", site="s", details={"rows_kept": 10})
    second = log.record("refusal", site="s", round=3, details={"reason": "r"})
    assert first["prev_hash"] == GENESIS and second["prev_hash"] == first["hash"]
    body = {k: v for k, v in first.items() if k != "hash"}
    expected = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert first["hash"] == expected
    assert [e["kind"] for e in log.verify()] == ["data-check", "refusal"]


def test_unknown_kinds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown audit entry kind"):
        AuditLog(tmp_path / "a.audit.jsonl").record("party")


def test_approvals_are_approvals_minus_later_revocations(tmp_path):
    log = AuditLog(tmp_path / "a.audit.jsonl")
    approve(log, H1, "s", ["summary"])
    approve(log, H2, "s", ["summary"])
    log.record("revoke", site="s", manifest=H1)
    assert set(log.approvals()) == {H2}
    approve(log, H1, "s", ["again"])
    assert set(log.approvals()) == {H1, H2}
    assert log.find("bbbb") == H2
    with pytest.raises(ValueError, match="no approved manifest"):
        log.find("cc")


def test_check_approved_names_the_manifest(tmp_path):
    log = AuditLog(tmp_path / "a.audit.jsonl")
    with pytest.raises(NotApproved) as info:
        check_approved(log, H1)
    assert str(info.value) == (
        "study not approved: manifest aaaaaaaa (approve it with medfed node approve)"
    )
    approve(log, H1, "s", [])
    check_approved(log, H1)
    log.record("revoke", site="s", manifest=H1)
    with pytest.raises(NotApproved):
        check_approved(log, H1)


def test_approvals_are_signed_with_the_node_key(tmp_path):
    private, public = create_node_keys(tmp_path / "keys")
    log = AuditLog(tmp_path / "a.audit.jsonl")
    entry = approve(log, H1, "s", [], key=private)
    assert entry["details"]["public_key"] == " ".join(public.read_text().split()[:2])
    assert verify_signature(entry["details"]["signed"], entry["details"])
    forged = dict(entry["details"]["signed"], manifest=H2)
    assert not verify_signature(forged, entry["details"])
    # without a node key, an Ed25519 approval key is made once beside the log (mode 0600)
    approve(log, H2, "s", [])
    key_file = log.path.with_name(log.path.name + ".key")
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_a_signature_by_another_key_does_not_verify():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    one, two = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    signed = sign(one, {"sha256": H1})
    assert verify_signature({"sha256": H1}, signed)
    assert not verify_signature(
        {"sha256": H1}, {**signed, **{"public_key": sign(two, {"x": 1})["public_key"]}}
    )


def _edit(path: Path, line: int, old: str, new: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line] = lines[line].replace(old, new)
    path.write_text("".join(lines))


def test_an_edited_or_truncated_log_is_tampered_and_approvals_stop(tmp_path):
    log = AuditLog(tmp_path / "a.audit.jsonl")
    approve(log, H1, "s", [])
    log.record("round", site="s", round=1, details={"sent": {"array_bytes": 224}})
    _edit(log.path, 1, '"array_bytes":224', '"array_bytes":22')
    with pytest.raises(AuditTampered, match="line 2: its hash does not match"):
        log.approvals()
    log2 = AuditLog(tmp_path / "b.audit.jsonl")
    approve(log2, H1, "s", [])
    log2.record("round", site="s", round=1)
    log2.path.write_text(log2.path.read_text().splitlines(keepends=True)[0])
    with pytest.raises(AuditTampered, match="holds 1 entries but its head records 2"):
        check_approved(log2, H1)


def test_acknowledge_keeps_the_damaged_log_and_starts_a_new_one(tmp_path):
    log = AuditLog(tmp_path / "a.audit.jsonl")
    approve(log, H1, "s", [])
    damaged = log.path.read_bytes().replace(b'"kind":"approve"', b'"kind":"revoke"')
    log.path.write_bytes(damaged)
    kept, entry = acknowledge(log.path, "restored from backup by J. Doe")
    assert kept.read_bytes() == damaged
    assert entry["kind"] == "acknowledge" and entry["seq"] == 0
    assert entry["details"]["damaged_sha256"] == hashlib.sha256(damaged).hexdigest()
    assert [e["kind"] for e in AuditLog(log.path).verify()] == ["acknowledge"]
    assert AuditLog(log.path).approvals() == {}  # approve again
    with pytest.raises(ValueError, match="nothing to acknowledge"):
        acknowledge(log.path, "again")


def test_audit_paths():
    assert audit_path("/d/card.yaml") == Path("/d/card.yaml.audit.jsonl")
    assert audit_path(None, folder="/appr", site="h0") == Path("/appr/h0.audit.jsonl")
