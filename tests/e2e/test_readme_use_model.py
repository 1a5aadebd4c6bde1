"""README "Use the trained model": its blocks run as written, in order, in one fresh folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent


def use_blocks() -> dict[str, str]:
    """The bash block after each ``<!-- readme-use: NAME -->`` marker of README.md, by name."""
    found = re.findall(
        r"^<!-- readme-use: ([\w-]+) -->\n```bash\n(.*?)^```", README.read_text(), re.M | re.S
    )
    return dict(found)


def _run(block: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-e", "-c", block],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_the_readme_walk_from_a_study_to_predictions_runs_as_written(tmp_path: Path) -> None:
    blocks = use_blocks()
    assert list(blocks) == ["study", "hospital"]
    study = _run(blocks["study"], tmp_path)
    assert study.returncode == 0, study.stderr
    assert study.stdout.splitlines()[-1].startswith("OK: runs/demo/model verifies: 5 files")
    hospital = _run(blocks["hospital"], tmp_path)
    assert hospital.returncode == 0, hospital.stderr
    assert "into predictions.csv; every row was scored" in hospital.stdout
    assert "row,probability,label" in hospital.stdout  # head -3 predictions.csv
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert predictions["probability"].between(0, 1).all() and len(predictions) > 100
    assert (tmp_path / "model.onnx").stat().st_size > 0
    assert (tmp_path / "runs" / "demo" / "calibration.png").is_file()
