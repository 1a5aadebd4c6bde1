"""One malicious hospital out of five: FedAvg breaks, the robust aggregators and screening hold.

The attacker sends ``w - 100 (w_k - w)`` (sign-flipped and boosted gradient ascent) every round.
With screening off, FedAvg averages it in and falls to chance; coordinate-wise median, trimmed
mean and Krum leave it out, each with its defaults (Krum: Multi-Krum with f = auto, 1 of 5
hospitals, averaging the 4 best-scored updates; classic Krum keeps one). With screening on (the
default) the server rejects the update before any aggregator sees it and records the rejection
with the hospital's name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfed.server.simulation.run import run_simulated_study
from medfed.server.study.config import compose_study

pytestmark = pytest.mark.slow

FEDERATION = ["quiet=true", "federation.hospitals=5", "rounds=8", "seed=0"]
ATTACK = ["attack.hospitals=[1]", "attack.kind=sign_flip", "attack.scale=100"]
NO_SCREENING = ["screening.max_norm_ratio=null"]
ROBUST = {
    "fedmedian": [],
    "trimmedmean": ["strategy.beta=0.2"],
    "krum": [],
    "krum-classic": ["strategy.num_nodes_to_select=1"],
}


def _accuracy(tmp_path: Path, name: str, *overrides: str) -> tuple[float, dict]:
    study = compose_study([*FEDERATION, *overrides, f"output_dir={tmp_path / name}"])
    result = run_simulated_study(study)
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    return float(result.final.global_metrics["accuracy"]), summary


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> float:
    return _accuracy(tmp_path_factory.mktemp("clean"), "fedavg")[0]


def test_fedavg_is_degraded_by_one_attacker(tmp_path, clean):
    attacked, summary = _accuracy(tmp_path, "fedavg", *ATTACK, *NO_SCREENING)
    assert clean > 0.75
    assert attacked < clean - 0.2, (attacked, clean)
    assert summary["rejected"] == {}


@pytest.mark.parametrize("strategy", sorted(ROBUST))
def test_robust_aggregators_hold_accuracy(tmp_path, clean, strategy):
    attacked, _ = _accuracy(
        tmp_path,
        strategy,
        f"strategy={strategy.split('-')[0]}",
        *ROBUST[strategy],
        *ATTACK,
        *NO_SCREENING,
    )
    assert attacked > clean - 0.1, (strategy, attacked, clean)


@pytest.mark.parametrize("kind", ["sign_flip", "nan"])
def test_screening_rejects_the_attacker_and_fedavg_holds(tmp_path, clean, kind):
    attacked, summary = _accuracy(
        tmp_path, kind, *ATTACK[:1], f"attack.kind={kind}", "attack.scale=100"
    )
    assert abs(attacked - clean) < 0.05
    assert set(summary["rejected"]) == {str(r) for r in range(1, 9)}
    assert all(list(per_round) == ["hospital-1"] for per_round in summary["rejected"].values())
    hospital = next(h for h in summary["hospitals"] if h["name"] == "hospital-1")
    assert hospital["rounds_missed"] == list(range(1, 9))
