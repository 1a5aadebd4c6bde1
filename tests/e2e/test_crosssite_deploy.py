"""Cross-site evaluation on a real federation: a TLS SuperLink and three SuperNodes on loopback
(:class:`medfed.infra.loopback.LoopbackFederation`), one ``medfed run`` of one round with
personalisation. hospital-0 and hospital-1 allow both switches in their policy files; hospital-2
keeps the defaults (no). ``cross_site.csv`` holds the pairs both allow, blanks with the reason
for the others, and hospital-2's local-only weights never leave it: the coordinator never asks,
its audit log has no cross-site entry, and nobody scored a model of hospital-2.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from medfed.client.audit import AuditLog
from medfed.infra.loopback import POLICY, LoopbackFederation
from medfed.server.study.approvals import CoordinatorLog

pytestmark = [pytest.mark.slow, pytest.mark.serial]

ALLOW = POLICY + "share_local_model: true\nevaluate_other_models: true\n"
NAMES = ("hospital-0", "hospital-1", "hospital-2")


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    work = tmp_path_factory.mktemp("crosssite")
    (work / "allow.yaml").write_text(ALLOW)
    allow = ["--policy", str(work / "allow.yaml")]  # after the shared policy.yaml: it wins
    with LoopbackFederation(work, node_args={"hospital-0": allow, "hospital-1": allow}) as fed:
        fed.done = fed.run(
            "rounds=1",
            "strategy.min_nodes=3",
            "personalise.method=finetune",
            "policy.min_cell_count=1",
            f"output_dir={work / 'run'}",
        )
        fed.out = work / "run"
        yield fed


def _table(fed) -> dict[str, dict[str, str]]:
    with (fed.out / "cross_site.csv").open() as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


def test_the_study_finishes_and_writes_the_cross_site_table(fed):
    assert fed.done.returncode == 0, fed.done.stderr[-3000:] + fed.tails()
    assert (fed.out / "cross_site.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _table(fed)
    assert list(rows) == [
        "global",
        *(f"local {n}" for n in NAMES),
        *(f"personalised {n}" for n in NAMES),
    ]
    assert all(rows["global"][n] for n in NAMES)


def test_allowed_pairs_are_filled_the_others_blank_with_the_reason(fed):
    rows = _table(fed)
    benefit = json.loads((fed.out / "summary.json").read_text())["personalised"]["hospitals"]
    for name in NAMES:  # each local model on its own rows: the node's benefit table
        assert float(rows[f"local {name}"][name]) == pytest.approx(
            benefit[name]["local"][0], abs=1e-5
        )
    filled = {("hospital-0", "hospital-1"), ("hospital-1", "hospital-0")}
    for owner in NAMES:
        for column in NAMES:
            if column != owner:
                value = rows[f"local {owner}"][column]
                assert (value != "") == ((owner, column) in filled), (owner, column, value)
                assert value == "" or 0.0 <= float(value) <= 1.0
    assert rows["local hospital-2"]["note"] == (
        "hospital-0, hospital-1: hospital-2 does not share its local-only model (policy)"
    )
    assert rows["local hospital-0"]["note"] == (
        "hospital-2: hospital-2 does not score other hospitals' models (policy)"
    )
    report = (fed.out / "report.md").read_text()
    assert "- scored: hospital-0 on hospital-1; hospital-1 on hospital-0" in report
    assert (
        "- hospital-2's model not scored on hospital-0, hospital-1: hospital-2 does not " in report
    )
    for name in NAMES:  # personalised models never travel: their own site only
        others = [rows[f"personalised {name}"][c] for c in NAMES if c != name]
        assert others == ["", ""] and rows[f"personalised {name}"][name] != ""
        assert not math.isnan(float(rows[f"personalised {name}"][name]))


def test_the_refusing_nodes_weights_never_left_it(fed):
    summary = json.loads((fed.out / "summary.json").read_text())["cross_site"]
    assert summary["asked"] == ["hospital-0", "hospital-1"]
    assert "hospital-2" not in summary["sent"] and "hospital-2" not in summary["scores"]
    cards = fed.workdir / "cards"
    entries = {
        name: [
            e["details"]
            for e in AuditLog(cards / f"{name}.yaml.audit.jsonl").verify()
            if e["kind"] == "cross-site"
        ]
        for name in NAMES
    }
    assert entries["hospital-2"] == []  # asked for nothing, sent nothing, scored nothing
    for name, other in (("hospital-0", "hospital-1"), ("hospital-1", "hospital-0")):
        exchanges = sorted((d["exchange"], d.get("model_site", "")) for d in entries[name])
        assert exchanges == [("evaluate_other", other), ("share_local", "")]
        shared = next(d for d in entries[name] if d["exchange"] == "share_local")
        assert shared["sent"]["array_bytes"] > 0  # the weights that left, recorded
    coordinator = CoordinatorLog(fed.coord / "audit.jsonl").verify()
    steps = [e["details"] for e in coordinator if e["kind"] == "cross-site"]
    assert [s["step"] for s in steps] == ["plan", "weights", "scores"]
    assert steps[1]["received_from"] == ["hospital-0", "hospital-1"]


def test_the_audit_commands_show_each_exchange_in_words(fed):
    cards = fed.workdir / "cards"
    hospital = fed.medfed("node", "audit", "--dataset", str(cards / "hospital-0.yaml"))
    assert hospital.returncode == 0, hospital.stderr
    assert "local-only model sent: " in hospital.stdout
    assert "scored hospital-1's local-only model here: n=" in hospital.stdout
    refusing = fed.medfed("node", "audit", "--dataset", str(cards / "hospital-2.yaml"))
    assert refusing.returncode == 0 and "cross-site" not in refusing.stdout
    coordinator = fed.medfed("coordinator", "audit", str(fed.coord))
    assert coordinator.returncode == 0, coordinator.stderr
    for line in (
        "asking hospital-0, hospital-1 for local-only models",
        "local-only models received from hospital-0, hospital-1",
        "local-only models sent for scoring: hospital-0 to hospital-1; hospital-1 to hospital-0",
    ):
        assert line in coordinator.stdout
