"""DP-SGD studies end to end: epsilon per hospital, refusals as dropouts, ledgers across studies."""

from __future__ import annotations

from pathlib import Path

from medfed.client.app import app as client_app
from medfed.client.ledger import Ledger
from medfed.models.privacy import epsilon_from_history
from medfed.server.outputs.rundir import summary
from medfed.server.simulation.engine import InProcessGrid
from medfed.server.study.config import compose_study
from medfed.server.study.loop import run_study


def _study(tmp_path: Path, *extra: str) -> dict:
    return compose_study(
        [
            "rounds=2",
            "federation.hospitals=3",
            "federation.min_size=60",
            "federation.max_size=120",
            "privacy=dpsgd",
            "privacy.noise_multiplier=2.0",
            f"privacy.ledger_dir={tmp_path / 'led'}",
            f"output_dir={tmp_path / 'out'}",
            "overwrite=true",
            *extra,
        ]
    )


def _run(study: dict):
    grid = InProcessGrid(
        client_app, [{"partition-id": i, "num-partitions": 3} for i in range(3)], run_config={}
    )
    return run_study(grid, study)


def test_epsilon_is_reported_and_matches_the_ledger(tmp_path: Path) -> None:
    result = _run(_study(tmp_path))
    data = summary(result)
    for hospital in data["hospitals"]:
        ledger = Ledger(tmp_path / "led" / f"{hospital['name']}.ledger.jsonl")
        history = ledger.history()
        assert len(history) == 2
        accountant = result.study["privacy"]["accountant"]
        assert accountant == "prv"  # the default: Opacus' own, the tightest bound it offers
        expected = epsilon_from_history(history, hospital["delta"], accountant)
        assert abs(hospital["epsilon"] - expected) < 1e-9
        # the same spend under the looser RDP bound (the default until 2026-12)
        assert epsilon_from_history(history, hospital["delta"], "rdp") > expected
        assert 0 < hospital["epsilon"] < 10
    assert data["refusals"] == {}


def test_a_refusal_is_a_dropout_not_a_crash(tmp_path: Path) -> None:
    study = _study(tmp_path, "policy.hospitals={hospital-1: {max_epsilon_total: 0.5}}")
    data = summary(_run(study))
    assert set(data["refusals"]) == {"1", "2"}
    reason = data["refusals"]["1"]["hospital-1"]
    assert "budget" in reason and "max_epsilon_total 0.5" in reason
    by_name = {h["name"]: h for h in data["hospitals"]}
    assert by_name["hospital-1"]["rounds_missed"] == [1, 2]
    assert "epsilon" in by_name["hospital-0"] and by_name["hospital-0"]["rounds_missed"] == []
    assert (
        not (tmp_path / "led" / "hospital-1.ledger.jsonl").exists()
        or Ledger(tmp_path / "led" / "hospital-1.ledger.jsonl").history() == []
    )


def test_epsilon_composes_across_studies_and_tampering_stops_training(tmp_path: Path) -> None:
    first = summary(_run(_study(tmp_path)))
    second = summary(_run(_study(tmp_path)))
    eps1 = {h["name"]: h["epsilon"] for h in first["hospitals"]}
    eps2 = {h["name"]: h["epsilon"] for h in second["hospitals"]}
    assert all(eps2[name] > eps1[name] for name in eps1)
    path = tmp_path / "led" / "hospital-2.ledger.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    third = summary(_run(_study(tmp_path)))
    reason = third["refusals"]["1"]["hospital-2"]
    assert "ledger" in reason
