"""Messy multi-centre exports through the real CLI: ``node check`` on each, then one study.

The four sites of :mod:`messy_exports` differ in names, codes, units, delimiters and missing
codes; one has a derived stay from dates, a derived sum and 40 unused columns, one writes 0 for
"not measured", one is evaluation-only. Every site takes part, no card is edited by hand.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MEDFED = str(Path(sys.executable).with_name("medfed"))


def _messy():
    spec = importlib.util.spec_from_file_location(
        "messy_exports", Path(__file__).with_name("messy_exports.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["messy_exports"] = module
    spec.loader.exec_module(module)
    return module


def _medfed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_HOME": str(cwd / ".flwr"),
    }
    return subprocess.run(
        [MEDFED, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("messy")
    return out, {e.name: e for e in _messy().write_messy_exports(out)}


@pytest.mark.slow
def test_node_check_accepts_every_messy_export_as_it_is(exports) -> None:
    out, sites = exports
    texts = {}
    for name, export in sites.items():
        done = _medfed("node", "check", "--dataset", str(export.card), cwd=out)
        assert done.returncode == 0, done.stdout + done.stderr
        texts[name] = done.stdout
        assert f"rows      read {export.rows}, kept {export.rows}, dropped 0" in done.stdout
    north = [line for line in texts["north"].splitlines() if "does not use" in line]
    assert north == [
        f"warning: {out / 'north.csv'}: ignored 40 columns the task does not use: "
        "extra_00, extra_01, extra_02, extra_03, extra_04, ... (list with --verbose)"
    ]
    assert "notes" not in texts["north"]  # dropped on purpose: never reported
    for feature, zeros in sites["south"].zeros_as_missing.items():  # missing after column_missing
        share = 100 * zeros / sites["south"].rows
        assert any(
            line.split()[:2] == [feature, f"{share:.1f}%"] for line in texts["south"].splitlines()
        ), texts["south"]
    assert "fine for an evaluation-only site (role: evaluate)" in texts["east"]


@pytest.mark.slow
def test_a_study_over_all_messy_sites_accounts_for_every_row_and_role(exports) -> None:
    out, sites = exports
    cards = ",".join(f"{name}.yaml" for name in sites)
    run = _medfed(
        "simulate",
        "task=treatment",
        "federation=sites",
        f"federation.cards=[{cards}]",
        "rounds=2",
        "compare=true",
        "privacy=dpsgd",
        "preprocessing.imputation=median",
        "quiet=true",
        f"output_dir={out / 'run'}",
        cwd=out,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "run" / "summary.json").read_text())
    hospitals = {h["name"]: h for h in summary["hospitals"]}
    assert {n: h["role"] for n, h in hospitals.items()} == {
        "north": "train",
        "south": "train",
        "east": "evaluate",
        "west": "train",
    }
    for name, export in sites.items():  # nothing is dropped: every row is in one split
        assert hospitals[name]["n_train"] + hospitals[name]["n_test"] == export.rows
        assert hospitals[name]["metrics"]["accuracy"] >= 0
    assert hospitals["east"]["n_test"] == 120 and "epsilon" not in hospitals["east"]
    assert all("epsilon" in hospitals[n] for n in ("north", "south", "west"))
    assert not (out / "run" / "ledgers" / "east.ledger.jsonl").exists()  # spent nothing
    local = summary["baselines"]["local"]["hospitals"]
    assert local["east"] == {
        "role": "evaluate",
        "not_run": "evaluation-only site (role: evaluate): no local model",
    }
    assert set(summary["baselines"]["pooled"]["hospitals"]) == set(sites)
    assert "| east (evaluation only) | 40 | 120 |" in (out / "run" / "report.md").read_text()


@pytest.mark.slow
def test_too_few_training_sites_is_refused_before_round_1_naming_them(exports) -> None:
    out, sites = exports
    cards = ",".join(f"{name}.yaml" for name in sites)
    run = _medfed(
        "simulate",
        "task=treatment",
        "federation=sites",
        f"federation.cards=[{cards}]",
        "strategy.min_nodes=4",
        "quiet=true",
        f"output_dir={out / 'refused'}",
        cwd=out,
    )
    assert run.returncode == 1
    assert (
        "the study cannot start: only 3 hospital(s) can train, strategy.min_nodes=4; cannot "
        "train: east: evaluation only (role: evaluate in its dataset card)"
    ) in run.stderr
    failed = json.loads((out / "refused" / "summary.json").read_text())  # never "finished"
    assert failed["status"] == "failed" and "cannot start" in failed["reason"]
