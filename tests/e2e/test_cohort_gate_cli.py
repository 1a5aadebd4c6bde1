"""Issue 11 section 4 through the CLI: a lone hospital's update never becomes the global model.

The bug this reproduces: DP studies share each hospital's ledger; once two of three hospitals
have spent their budget they refuse every round, and FedAvg used to average the one update that
came back, so hospital-0's update *was* the new global model. Now such a round is skipped (the
model stays), recorded with the reason, and after ``stop_after_skipped`` rounds in a row the
study stops (status ``stopped``, exit 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

MEDFED = str(Path(sys.executable).with_name("medfed"))


def _medfed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run(
        [MEDFED, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_hospitals_out_of_budget_leave_the_global_model_unchanged(tmp_path: Path) -> None:
    common = [
        "federation.hospitals=3",
        "federation.min_size=60",
        "federation.max_size=80",
        "privacy=dpsgd",
        "privacy.noise_multiplier=2.0",
        "quiet=true",
        f"privacy.ledger_dir={tmp_path / 'ledgers'}",
    ]
    first = _medfed(
        "simulate", *common, "rounds=2", f"output_dir={tmp_path / 'first'}", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    spent = {
        h["name"]: h["epsilon"]
        for h in json.loads((tmp_path / "first" / "summary.json").read_text())["hospitals"]
    }
    cap = max(spent["hospital-1"], spent["hospital-2"]) * 1.0001  # no room for another round
    budget = [
        f"policy.max_epsilon_total={cap:.6f}",
        "policy.hospitals={hospital-0: {max_epsilon_total: 100.0}}",
    ]

    second = _medfed(
        "simulate", *common, *budget, "rounds=5", f"output_dir={tmp_path / 'second'}", cwd=tmp_path
    )

    assert second.returncode == 1
    summary = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert summary["status"] == "stopped"
    assert sorted(summary["skipped"]) == ["1", "2", "3"]
    assert summary["skipped"]["1"] == (
        "round 1 skipped: 1 update(s) accepted, 2 needed (strategy.min_nodes=2, largest "
        "min_cohort a hospital declared=2); the global model is unchanged"
    )
    assert summary["reason"].startswith("3 rounds in a row skipped (stop_after_skipped=3)")
    lines = second.stderr.strip().splitlines()  # alerts first (medfed alert: ...), then the end
    assert lines[-1] == f"medfed: the study stopped: {summary['reason']}"
    assert sum("the study stopped" in line for line in lines) == 1
    assert set(summary["refusals"]["1"]) == {"hospital-1", "hospital-2"}

    # Every hospital refusing stops the same study at round 1 with its initial weights: the
    # gated study's final model is exactly those, so hospital-0's update never became global.
    none = _medfed(
        "simulate",
        *common,
        "policy.max_epsilon_total=0.0001",
        "rounds=5",
        f"output_dir={tmp_path / 'none'}",
        cwd=tmp_path,
    )
    assert none.returncode == 1, none.stderr
    gated = torch.load(tmp_path / "second" / "model.pt", weights_only=True)["state_dict"]
    initial = torch.load(tmp_path / "none" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(gated[key], initial[key]) for key in initial)
