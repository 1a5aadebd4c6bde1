"""The privacy/utility sweep script end to end: DP-SGD at epsilon 1 against the non-private run.

Runs ``benchmarks/privacy_sweep.py`` (what ``make sweep`` runs) as a process: six whole
diagnosis federations of 4 synthetic hospitals on the in-process engine, same seed and settings,
DP-SGD planned for epsilon 0.5, 1, 2, 4 and 8, and the non-private reference (about 35 s).
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
POINTS = 0.05  # the issue: at epsilon 1, accuracy within 5 points of the non-private run


def test_epsilon_one_stays_within_five_points_of_non_private(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    with (tmp_path / "privacy_sweep.csv").open(encoding="utf-8") as handle:
        rows = {float(r["epsilon_target"]): r for r in csv.DictReader(handle)}
    assert list(rows) == [0.5, 1.0, 2.0, 4.0, 8.0, math.inf]
    dp, reference = rows[1.0], rows[math.inf]

    for target, row in rows.items():
        assert float(row["epsilon_achieved"]) <= target, row
        assert int(row["rounds_missed"]) == 0, row
    assert 0.9 <= float(dp["epsilon_achieved"])
    assert float(reference["epsilon_achieved"]) == math.inf and not reference["delta"]
    assert float(dp["accuracy"]) >= float(reference["accuracy"]) - POINTS, (dp, reference)
    assert float(reference["accuracy"]) >= 0.75  # the reference itself learned something
    assert (tmp_path / "privacy_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["accuracy"] for r in report["rows"]] == [float(r["accuracy"])
                                                        for r in rows.values()]
    summary = json.loads((tmp_path / "eps-1" / "summary.json").read_text())
    assert summary["privacy"] == "dpsgd" and len(summary["hospitals"]) == 4


def test_bad_epsilons_end_in_one_sentence(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--epsilons", "1,-2",
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "privacy_sweep: --epsilons must be positive (inf: no DP), got '1,-2'"]
