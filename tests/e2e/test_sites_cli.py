"""A study over real-looking site exports, driven through the CLI: export, check, simulate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MEDFED = str(Path(sys.executable).with_name("medfed"))


def _medfed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run(
        [MEDFED, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_export_check_and_simulate_over_cards(tmp_path: Path) -> None:
    cards_dir = tmp_path / "cards"
    done = _medfed(
        "synth", "export", "--task", "treatment", "--hospitals", "3", str(cards_dir), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    cards = sorted(cards_dir.glob("*.yaml"))
    assert len(cards) == 3
    for card in cards:
        check = _medfed("node", "check", "--dataset", str(card), cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "usable" in check.stdout
    listed = ",".join(c.name for c in cards)
    run = _medfed(
        "simulate",
        "task=treatment",
        "federation=sites",
        f"federation.cards=[{listed}]",
        "rounds=3",
        "compare=true",
        "quiet=true",
        "preprocessing.normalisation=site",
        f"output_dir={tmp_path / 'out'}",
        cwd=cards_dir,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [h["name"] for h in summary["hospitals"]] == [c.stem for c in cards]
    assert summary["federation"] == "sites" and summary["normalisation"] == "site"
    assert set(summary["global"]) >= {"accuracy", "macro_f1", "top2_accuracy"}
    assert 0 < summary["global_mean_over_hospitals"]["accuracy"] <= 1
    assert set(summary["baselines"]) >= {"pooled", "local"}


def test_a_card_for_another_task_is_one_line(tmp_path: Path) -> None:
    done = _medfed(
        "synth",
        "export",
        "--task",
        "diagnosis",
        "--hospitals",
        "2",
        str(tmp_path / "cards"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    card = sorted((tmp_path / "cards").glob("*.yaml"))[0]
    run = _medfed(
        "simulate",
        "task=pricing",
        "federation=sites",
        f"federation.cards=[{card},{card}]",
        "rounds=1",
        "quiet=true",
        f"output_dir={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("medfed: error:"), run.stderr
    assert "Traceback" not in run.stderr and card.name in lines[0]
