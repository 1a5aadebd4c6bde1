"""The privacy/utility sweep script end to end: DP-SGD at epsilon 1 against the non-private run.

Runs ``benchmarks/privacy_sweep.py`` (what ``make sweep`` runs) as a process on the smallest
honest slice of its default sweep: the diagnosis task with its own training defaults, 4
synthetic hospitals on the in-process engine, seed 0, DP-SGD planned for epsilon 1 and the
non-private reference (two whole federations, about 15 s). The full table (3 tasks x 3 budgets x
3 seeds) is in ``benchmarks/README.md``.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "privacy_sweep.py"
POINTS = 3.0  # issue 13: at epsilon 1, accuracy within 3 points of the non-private run


def test_diagnosis_at_epsilon_one_stays_within_three_points(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tasks",
            "diagnosis",
            "--seeds",
            "0",
            "--epsilons",
            "1,inf",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    with (tmp_path / "privacy_sweep.csv").open(encoding="utf-8") as handle:
        rows = {float(r["epsilon_target"]): r for r in csv.DictReader(handle)}
    assert list(rows) == [1.0, math.inf]
    dp, reference = rows[1.0], rows[math.inf]
    assert 0.9 <= float(dp["epsilon_achieved"]) <= 1.0 and int(dp["rounds_missed"]) == 0
    assert float(reference["epsilon_achieved"]) == math.inf and not reference["delta"]
    assert {"accuracy", "auroc", "sensitivity", "specificity"} <= set(dp)
    assert float(reference["accuracy"]) >= 0.75  # the reference itself learned something
    (cell,) = [c for c in report["table"] if c["epsilon_target"] == 1.0]
    drop = 100 * (float(reference["accuracy"]) - float(dp["accuracy"]))
    assert cell["accuracy_drop_points"] == pytest.approx(drop, abs=0.01)
    assert cell["ok"] is (drop <= POINTS) and cell["ok"], (dp, reference)
    summary = json.loads((tmp_path / "diagnosis-eps-1-seed0" / "summary.json").read_text())
    assert summary["privacy"] == "dpsgd" and len(summary["hospitals"]) == 4


def test_bad_epsilons_end_in_one_sentence(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--epsilons", "1,-2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "privacy_sweep: --epsilons must be positive (inf: no DP), got '1,-2'"
    ]
