"""``medfed node approve | revoke | audit`` on real cards and manifest files (in process)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml

from medfed.client.commands.audit import governance_main
from medfed.client.policy import Policy, PolicyError
from medfed.models.ingest.export import synth_main
from medfed.server.deploy.manifest import document
from medfed.server.study.config import compose_study


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cards")
    assert synth_main(["export", "--task", "diagnosis", "--hospitals", "2", str(folder)]) == 0
    return folder


def _manifest(cards: Path, path: Path, *overrides: str) -> dict:
    study = compose_study(
        [
            "federation=sites",
            f"federation.cards=[{cards}/hospital-0.yaml,{cards}/hospital-1.yaml]",
            "rounds=2",
            *overrides,
        ]
    )
    doc = document(study, None)
    path.write_text(yaml.safe_dump(doc, sort_keys=True))
    return doc


def _node(*args: str) -> int:
    return governance_main(list(args))


def test_approve_audit_revoke(cards, tmp_path, capsys):
    doc = _manifest(cards, tmp_path / "m.yaml")
    appr = str(tmp_path / "appr")
    card = str(cards / "hospital-0.yaml")
    assert (
        _node(
            "approve", str(tmp_path / "m.yaml"), "--dataset", card, "--approvals-dir", appr, "--yes"
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"approved manifest {doc['sha256'][:8]} for hospital-0" in out
    assert "rounds of 1 local epoch(s)" in out and "with:    hospital-0, hospital-1" in out
    assert _node("audit", "--dataset", card, "--approvals-dir", appr, "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["kind"] for r in rows] == ["data-check", "approve"]
    assert _node("revoke", doc["sha256"][:6], "--dataset", card, "--approvals-dir", appr) == 0
    assert "revoked manifest" in capsys.readouterr().out
    assert _node("audit", "--dataset", card, "--approvals-dir", appr, "--since", "2999-01-01") == 0
    assert capsys.readouterr().out == ""


def test_approve_without_an_answer_asks_for_yes(cards, tmp_path, capsys, monkeypatch):
    _manifest(cards, tmp_path / "m.yaml")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert (
        _node(
            "approve",
            str(tmp_path / "m.yaml"),
            "--dataset",
            str(cards / "hospital-0.yaml"),
            "--approvals-dir",
            str(tmp_path),
        )
        == 2
    )
    assert "no answer to confirm the approval" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert (
        _node(
            "approve",
            str(tmp_path / "m.yaml"),
            "--dataset",
            str(cards / "hospital-0.yaml"),
            "--approvals-dir",
            str(tmp_path),
        )
        == 1
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["manifest"]["train"].update(lr=0.11), "does not match its sha256"),
        (
            lambda d: d["signature"].update(signature=d["signature"]["signature"][::-1]),
            "signature does not verify",
        ),
        (lambda d: d["manifest"]["code"].update(sha256="0" * 64), "does not match its sha256"),
    ],
)
def test_a_changed_manifest_file_is_refused(cards, tmp_path, capsys, edit, message):
    doc = _manifest(cards, tmp_path / "m.yaml")
    edit(doc)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    assert (
        _node(
            "approve",
            str(tmp_path / "m.yaml"),
            "--dataset",
            str(cards / "hospital-0.yaml"),
            "--approvals-dir",
            str(tmp_path),
            "--yes",
        )
        == 1
    )
    assert message in capsys.readouterr().err


def test_a_site_outside_the_study_cannot_approve_it(cards, tmp_path, capsys):
    _manifest(cards, tmp_path / "m.yaml", "governance.sites=[hospital-1,hospital-9]")
    assert (
        _node(
            "approve",
            str(tmp_path / "m.yaml"),
            "--dataset",
            str(cards / "hospital-0.yaml"),
            "--approvals-dir",
            str(tmp_path),
            "--yes",
        )
        == 1
    )
    assert "site 'hospital-0' is not one of the study's sites" in capsys.readouterr().err


def test_a_tampered_log_is_reported_and_acknowledged(cards, tmp_path, capsys):
    _manifest(cards, tmp_path / "m.yaml")
    card = str(cards / "hospital-1.yaml")
    args = ["--dataset", card, "--approvals-dir", str(tmp_path)]
    assert _node("approve", str(tmp_path / "m.yaml"), *args, "--yes") == 0
    log = tmp_path / "hospital-1.audit.jsonl"
    log.write_text(log.read_text().replace('"rows_kept":', '"rows_kept":1', 1))
    capsys.readouterr()
    assert _node("audit", *args, "--verify") == 1
    err = capsys.readouterr().err
    assert err.startswith("medfed: error: audit log tampered: ") and err.count("\n") == 1
    assert _node("audit", *args, "--acknowledge", "restored") == 0
    assert _node("audit", *args, "--verify") == 0
    assert "1 entries, chain and head verified" in capsys.readouterr().out


def test_policy_governance_keys():
    policy = Policy.from_dict(
        {"require_approval": True, "approvals_dir": "/a", "min_cell_count": 10}
    )
    assert (policy.require_approval, policy.approvals_dir, policy.min_cell_count) == (
        True,
        "/a",
        10,
    )
    assert Policy().min_cell_count == 5 and not Policy().require_approval
    with pytest.raises(PolicyError, match="min_cell_count must be an integer >= 1"):
        Policy.from_dict({"min_cell_count": 0})
    with pytest.raises(PolicyError, match="require_approval must be true or false"):
        Policy.from_dict({"require_approval": "yes"})
