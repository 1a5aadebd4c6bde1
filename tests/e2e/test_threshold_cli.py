"""``medfed predict`` labels rows at the threshold the study chose on its validation split.

A study with early stopping (``early_stopping.patience``) holds out validation rows at every
node; the coordinator picks the F1-optimal cut-off from their summed score histograms and records
it in the model bundle; ``medfed predict`` uses it unless ``--threshold`` says otherwise.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from medfed.infra.loopback import MEDFED

pytestmark = pytest.mark.slow


def _medfed(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [MEDFED, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


@pytest.mark.cli(
    "threshold",
    "simulate",
    "rounds=4",
    "early_stopping.patience=2",
    "quiet=true",
    "output_dir={cwd}/run",
)
def test_predict_labels_at_the_threshold_chosen_on_validation(cli):
    done = cli["threshold"].wait()
    assert done.returncode == 0, done.stderr[-3000:]
    cwd = cli["threshold"].cwd
    bundle = cwd / "run" / "model"
    card = json.loads((bundle / "model_card.json").read_text())["decision"]
    threshold = card["threshold"]
    summary = json.loads((cwd / "run" / "summary.json").read_text())
    assert summary["early_stopping"]["threshold"]["value"] == threshold != 0.5
    assert card["threshold_source"].startswith("F1-optimal on the validation split")
    stored = json.loads((bundle / "preprocessing.json").read_text())["threshold"]
    assert stored == {"value": threshold, "source": card["threshold_source"]}
    markdown = (bundle / "model_card.md").read_text()
    assert f"labels a row positive from probability {threshold:g} up (F1-optimal" in markdown

    _medfed(cwd, "synth", "export", "--task", "diagnosis", "--hospitals", "1", "new")
    card_file = str(cwd / "new" / "hospital-0.yaml")
    said = _medfed(cwd, "predict", "--model", str(bundle), "--dataset", card_file, "--out", "a.csv")
    _medfed(
        cwd, "predict", "--model", str(bundle), "--dataset", card_file, "--out", "b.csv",
        "--threshold", "0.5",
    )  # fmt: skip
    study, given = pd.read_csv(cwd / "a.csv"), pd.read_csv(cwd / "b.csv")
    assert (study["label"] == (study["probability"] >= threshold)).all(), said.stdout
    shown = f"labels from probability {threshold:g} up (the study's, F1-optimal on the validation"
    assert shown in said.stdout
    assert (given["label"] == (given["probability"] >= 0.5)).all()
    low, high = sorted((threshold, 0.5))
    between = (study["probability"] >= low) & (study["probability"] < high)
    assert between.any() and ((study["label"] != given["label"]) == between).all()
