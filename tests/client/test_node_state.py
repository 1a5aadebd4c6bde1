"""The node's between-round state on disk (medfed.client.node_state): which round's file a resume
loads, where a deployed node keeps it, and the one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, Context, RecordDict

from medfed.client import node_state
from medfed.client.personal import LOCAL_STATE
from medfed.client.scaffold import STATE as SCAFFOLD_STATE


def _study(tmp_path: Path, **extra) -> dict:
    return {
        "study_id": "s-1",
        "output_dir": str(tmp_path),
        "strategy": {"name": "scaffold"},
        "personalise": {"method": "none"},
        **extra,
    }


def _context(node_config: dict | None = None) -> Context:
    return Context(
        run_id=1, node_id=7, node_config=node_config or {}, state=RecordDict(), run_config={}
    )


def _trained(context: Context, study: dict, server_round: int) -> None:
    """What the node holds after ``server_round``: c_i filled with the round number."""
    context.state.array_records[SCAFFOLD_STATE] = ArrayRecord(
        {"c": torch.full((3,), float(server_round))}
    )
    node_state.save(context, study, "site-a", server_round)


def test_a_resume_loads_the_newest_file_up_to_the_checkpoint_round(tmp_path):
    study, context = _study(tmp_path), _context()
    for server_round in (1, 2, 4):  # the node was not sampled in round 3
        _trained(context, study, server_round)
    folder = tmp_path / "node_state" / "s-1" / "site-a"
    assert sorted(p.name for p in folder.iterdir()) == ["round-1.pt", "round-2.pt", "round-4.pt"]
    fresh = _context()
    assert node_state.restore(fresh, study, "site-a", resume_round=3, trained_round=2) == 2
    restored = fresh.state.array_records[SCAFFOLD_STATE].to_torch_state_dict()["c"]
    assert torch.equal(restored, torch.full((3,), 2.0))  # round 4 came after the checkpoint
    assert node_state.restore(_context(), study, "site-a", 4, 4) == 4


def test_a_node_that_had_not_trained_starts_empty_but_a_lost_file_is_refused(tmp_path):
    study = _study(tmp_path)
    empty = _context()
    assert node_state.restore(empty, study, "site-a", resume_round=2, trained_round=0) == 0
    assert SCAFFOLD_STATE not in empty.state.array_records
    _trained(_context(), study, 1)
    missing = tmp_path / "node_state" / "s-1" / "site-a" / "round-2.pt"
    with pytest.raises(node_state.NodeStateError) as caught:
        node_state.restore(_context(), study, "site-a", resume_round=2, trained_round=2)
    assert str(caught.value) == (
        f"cannot resume: this node's state after round 2 ({missing}) is missing; "
        "restore it from a backup, or start the study anew"
    )


def test_a_file_of_another_study_or_site_is_refused(tmp_path):
    study = _study(tmp_path)
    _trained(_context(), study, 1)
    path = tmp_path / "node_state" / "s-1" / "site-a" / "round-1.pt"
    with pytest.raises(node_state.NodeStateError, match="belongs to study s-1 at site-a, not"):
        node_state.read(path, study, "site-b")


def test_a_deployed_node_keeps_its_state_beside_its_card(tmp_path):
    card = tmp_path / "hospital" / "card.yaml"
    study = _study(tmp_path / "runs", personalise={"method": "fedper"}, strategy={"name": "fedavg"})
    context = _context({"dataset": str(card)})
    context.state.array_records[LOCAL_STATE] = ArrayRecord({"2.weight": torch.ones(1, 4)})
    node_state.save(context, study, "site-a", 1)
    assert (tmp_path / "hospital" / "node_state" / "s-1" / "site-a" / "round-1.pt").is_file()
    assert not (tmp_path / "runs").exists()  # nothing in the coordinator's run directory
    back = _context({"dataset": str(card)})
    node_state.restore(back, study, "site-a", 1, 1)
    head = back.state.array_records[LOCAL_STATE].to_torch_state_dict()["2.weight"]
    assert torch.equal(head, torch.ones(1, 4))


def test_studies_without_node_state_write_nothing(tmp_path):
    study = _study(tmp_path, strategy={"name": "fedavg"})
    context = _context()
    context.state.array_records[LOCAL_STATE] = ArrayRecord({"w": torch.ones(2)})
    node_state.save(context, study, "site-a", 1)
    assert not (tmp_path / "node_state").exists()
    assert node_state.restore(_context(), study, "site-a", 3, 3) == 0


def test_damaged_files_are_refused_in_one_line_naming_them(tmp_path):
    import hashlib

    study = _study(tmp_path)
    _trained(_context(), study, 1)
    path = tmp_path / "node_state" / "s-1" / "site-a" / "round-1.pt"
    path.write_bytes(b"not a node state file")
    with pytest.raises(node_state.NodeStateError, match=f"node state {path} is corrupted"):
        node_state.restore(_context(), study, "site-a", 1, 1)
    body = b"a well-hashed payload torch cannot load"  # e.g. written by another program
    path.write_bytes(node_state.MAGIC + hashlib.sha256(body).digest() + body)
    with pytest.raises(node_state.NodeStateError) as caught:
        node_state.read(path, study, "site-a")
    assert str(caught.value).startswith(f"cannot resume: node state {path} cannot be read: ")
    assert "\n" not in str(caught.value)
