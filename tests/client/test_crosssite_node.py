"""Cross-site evaluation through the real ClientApp on the in-process engine: the exchange fills
exactly the pairs both policies allow, with the values a simulation computes from the rows, and a
node whose policy says no refuses whatever the coordinator sends (promise 3)."""

from __future__ import annotations

import math

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from medfed.client.app import app as client
from medfed.client.audit import AuditLog
from medfed.infra.polling import send_and_receive
from medfed.server.outputs.cross_site import cross_site, deployed_cross_site
from medfed.server.simulation.engine import InProcessGrid
from medfed.server.study.approvals import CoordinatorLog
from medfed.server.study.crosssite import EVALUATE, SHARE, exchange
from medfed.server.study.loop import run_study

pytestmark = pytest.mark.slow
POLICIES = (
    "+policy.hospitals={hospital-0: {share_local_model: true, evaluate_other_models: true}, "
    "hospital-1: {share_local_model: true, evaluate_other_models: true}}"
)  # hospital-2 keeps the defaults: it neither shares nor scores


@pytest.fixture(scope="module")
def study_run(small_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("crosssite")
    study = small_study("rounds=1", "personalise.method=finetune", POLICIES, f"output_dir={out}")
    grid = InProcessGrid(
        client, [{"partition-id": i, "num-partitions": 3} for i in range(3)], run_config={}
    )
    result = run_study(grid, study)
    node = {h["name"]: nid for nid, h in result.hospitals.items()}
    return grid, result, node, exchange(grid, result)


def test_round_0_declares_each_nodes_switches(study_run):
    _, result, _, _ = study_run
    declared = {
        h["name"]: (h["share_local"], h["evaluate_others"]) for h in result.hospitals.values()
    }
    assert declared == {
        "hospital-0": (True, True),
        "hospital-1": (True, True),
        "hospital-2": (False, False),
    }


def test_only_allowed_pairs_are_filled_with_the_simulations_values(study_run):
    _, result, _, exchanged = study_run
    assert exchanged["asked"] == ["hospital-0", "hospital-1"]  # never hospital-2
    assert exchanged["sent"] == {"hospital-0": ["hospital-1"], "hospital-1": ["hospital-0"]}
    full = cross_site(result)["rows"]  # every cell, from every site's rows in one process
    for owner, column in (("hospital-0", "hospital-1"), ("hospital-1", "hospital-0")):
        assert exchanged["scores"][owner][column] == pytest.approx(full[f"local {owner}"][column])
    table = deployed_cross_site(result, exchanged)
    rows = table["rows"]
    for name in ("hospital-0", "hospital-1", "hospital-2"):  # the diagonal: the benefit table
        assert rows[f"local {name}"][name] == pytest.approx(full[f"local {name}"][name], abs=1e-9)
    blank = [(r, c) for r, row in rows.items() for c, v in row.items() if not math.isfinite(v)]
    assert sorted(blank) == sorted(
        [
            ("local hospital-0", "hospital-2"),
            ("local hospital-1", "hospital-2"),
            ("local hospital-2", "hospital-0"),
            ("local hospital-2", "hospital-1"),
            *[
                (f"personalised {r}", c)
                for r in ("hospital-0", "hospital-1", "hospital-2")
                for c in ("hospital-0", "hospital-1", "hospital-2")
                if r != c
            ],
        ]
    )
    assert table["notes"]["local hospital-2"] == (
        "hospital-0, hospital-1: hospital-2 does not share its local-only model (policy)"
    )
    assert table["notes"]["local hospital-0"] == (
        "hospital-2: hospital-2 does not score other hospitals' models (policy)"
    )


def test_every_exchange_is_in_the_audit_logs(study_run):
    _, result, _, _ = study_run
    folder = f"{result.study['output_dir']}/audit"
    kinds = {
        name: [
            (e["details"].get("exchange"), e["details"].get("model_site"))
            for e in AuditLog(f"{folder}/{name}.audit.jsonl").verify()
            if e["kind"] == "cross-site"
        ]
        for name in ("hospital-0", "hospital-1")
    }
    assert sorted(kinds["hospital-0"]) == [("evaluate_other", "hospital-1"), ("share_local", None)]
    assert sorted(kinds["hospital-1"]) == [("evaluate_other", "hospital-0"), ("share_local", None)]
    log = CoordinatorLog(f"{folder}/coordinator.audit.jsonl").verify()
    steps = [e["details"] for e in log if e["kind"] == "cross-site"]
    assert [step["step"] for step in steps] == ["plan", "weights", "scores"]
    assert steps[0]["ask"] == steps[1]["received_from"] == ["hospital-0", "hospital-1"]
    assert steps[2]["sent"] == {"hospital-0": ["hospital-1"], "hospital-1": ["hospital-0"]}


def _ask(grid, node_id: int, kind: str, records: dict) -> Message:
    message = Message(RecordDict(records), dst_node_id=node_id, message_type=kind, group_id="x")
    (reply,) = send_and_receive(grid, [message], 60)
    return reply


def test_a_node_whose_policy_says_no_refuses_a_coordinator_that_asks_anyway(study_run, tmp_path):
    grid, result, node, _ = study_run
    audit = AuditLog(f"{result.study['output_dir']}/audit/hospital-2.audit.jsonl")
    before = len(audit.verify())
    config = ConfigRecord({"local-steps": 3, "server-round": 1})
    reply = _ask(grid, node["hospital-2"], SHARE, {"config": config})
    assert reply.has_error() and not reply.has_content()  # no weights, no metric
    assert "refused by the node's policy: share_local_model: this node does not let" in (
        reply.error.reason
    )
    shared = _ask(grid, node["hospital-0"], SHARE, {"config": config})
    assert not shared.has_error()
    records = {
        "arrays": ArrayRecord(shared.content.array_records["arrays"].to_torch_state_dict()),
        "config": ConfigRecord(
            {
                "model-site": "hospital-0",
                "statistics-json": str(shared.content.config_records["local"]["statistics-json"]),
            }
        ),
    }
    scored = _ask(grid, node["hospital-2"], EVALUATE, records)
    assert scored.has_error() and not scored.has_content()
    assert "evaluate_other_models: this node does not score" in scored.error.reason
    own = _ask(grid, node["hospital-0"], EVALUATE, records)  # its own model: refused too
    assert own.has_error() and "this hospital's own (hospital-0)" in own.error.reason
    entries = audit.verify()[before:]
    assert [(e["kind"], e["details"]["exchange"]) for e in entries] == [
        ("refusal", "share_local"),
        ("refusal", "evaluate_other"),
    ]
    assert entries[1]["details"]["model_site"] == "hospital-0"
