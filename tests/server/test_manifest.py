"""``medfed study manifest``, ``run --manifest`` matching, the coordinator log and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medfed.client.approval import verify_signature
from medfed.server.deploy.coordinator import coordinator_main
from medfed.server.deploy.coordinator_audit import coordinator_audit_main, pending
from medfed.server.deploy.manifest import ManifestError, apply_manifest, study_main
from medfed.server.study.approvals import CoordinatorLog, reason
from medfed.server.study.config import compose_study

OVERRIDES = ["rounds=2", "strategy.min_nodes=2"]


@pytest.fixture(scope="module")
def coord(tmp_path_factory) -> Path:
    from medfed.infra.keys import create_node_keys

    work = tmp_path_factory.mktemp("coord")
    assert coordinator_main(["init", str(work / "coord"), "--port", "9999"]) == 0
    for name in ("hospital-b", "hospital-a"):
        _, public = create_node_keys(work / name)
        assert coordinator_main(["add-node", str(work / "coord"), name, str(public)]) == 0
    return work / "coord"


@pytest.fixture(scope="module")
def written(coord, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("m") / "study.yaml"
    assert study_main(["manifest", "--coordinator", str(coord), "--out", str(out), *OVERRIDES]) == 0
    return out, yaml.safe_load(out.read_text())


def test_the_document_is_signed_by_the_coordinator_key(coord, written):
    _, doc = written
    manifest = doc["manifest"]
    assert manifest["sites"] == ["hospital-a", "hospital-b"]
    assert manifest["coordinator"] == doc["signature"]["public_key"]
    assert manifest["coordinator"].startswith("ssh-ed25519 ")
    assert verify_signature({"sha256": doc["sha256"]}, doc["signature"])
    assert (coord / "manifest.key").stat().st_mode & 0o777 == 0o600


def test_the_same_overrides_give_the_same_hash_and_refuse_to_overwrite(coord, written, capsys):
    out, doc = written
    assert study_main(["manifest", "--coordinator", str(coord), "--out", str(out), *OVERRIDES]) == 0
    assert capsys.readouterr().out.splitlines()[-2] == f"sha256: {doc['sha256']}"
    assert (
        study_main(
            [
                "manifest",
                "--coordinator",
                str(coord),
                "--out",
                str(out),
                "rounds=3",
                "strategy.min_nodes=2",
            ]
        )
        == 2
    )
    assert "holds another manifest" in capsys.readouterr().err


def _deployed(*extra: str) -> dict:
    return compose_study(["federation=nodes", *OVERRIDES, *extra])


def test_run_with_the_manifest_takes_its_sites_and_coordinator(written):
    out, doc = written
    study = _deployed("timeout=30", "output_dir=/tmp/elsewhere")  # how it runs: not hashed
    assert apply_manifest(study, out) == doc["sha256"]
    assert study["governance"]["sites"] == doc["manifest"]["sites"]


def test_run_refuses_a_study_that_differs_in_one_character(written):
    out, doc = written
    with pytest.raises(ManifestError) as info:
        apply_manifest(_deployed("train.lr=0.11"), out)
    assert str(info.value) == (
        f"--manifest {out}: this study differs from the approved manifest {doc['sha256'][:8]} "
        "in train; run the approved settings, or write a new manifest and have it approved"
    )


def test_reasons_keep_the_nodes_wording():
    wrapped = (
        "<class 'medfed.client.approval.NotApproved'>:<'study not approved: manifest "
        "0123abcd (approve it with medfed node approve)'>"
    )
    assert reason(wrapped) == (
        "study not approved: manifest 0123abcd (approve it with medfed node approve)"
    )
    assert reason("ValueError: other") == "ValueError: other"


def test_coordinator_audit_and_pending_approvals(tmp_path, capsys):
    log = CoordinatorLog(tmp_path / "audit.jsonl")
    log.record("study-submitted", "s1", "a" * 64, {"sites": ["x", "y"]})
    log.record("approvals", "s1", "a" * 64, {"approved": ["1"], "not_approved": {"2": "no"}})
    assert pending(tmp_path) == [
        {"manifest": "a" * 64, "approved": ["1"], "not_approved": {"2": "no"}}
    ]
    log.record("study-started", "s1", "a" * 64, {"hospitals": ["x"], "absent": {"y": "no"}})
    assert pending(tmp_path) == []
    assert coordinator_audit_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "approved by nodes 1; waiting for 2" in out and "hospitals x; absent y: no" in out
    assert coordinator_audit_main([str(tmp_path), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    log.path.write_text(log.path.read_text().replace('"s1"', '"s2"', 1))
    assert coordinator_audit_main([str(tmp_path), "--verify"]) == 1
    assert "coordinator audit log tampered" in capsys.readouterr().err
