"""``medfed simulate privacy=central`` as a researcher runs it (a real subprocess of the CLI):
noise planned for a target epsilon, client-side clipping, and a bad setting as one line."""

from __future__ import annotations

import json

import pytest

SMALL = [
    "federation.hospitals=4",
    "federation.min_size=60",
    "federation.max_size=120",
    "policy.min_cell_count=1",
]
pytestmark = pytest.mark.slow


@pytest.mark.cli(
    "central_target",
    "simulate",
    "privacy=central",
    "privacy.clipping=client",
    "privacy.target_epsilon=3",
    "rounds=3",
    "quiet=true",
    *SMALL,
    "output_dir={cwd}/run",
)
def test_a_central_dp_study_ends_at_its_target_epsilon(cli):
    done = cli["central_target"].wait()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout

    summary = json.loads((cli["central_target"].cwd / "run" / "summary.json").read_text())
    dp = summary["central_dp"]
    assert summary["privacy"] == "central" and dp["clipping"] == "client"
    assert dp["target_epsilon"] == 3 and dp["released_rounds"] == 3
    assert 3 * 0.999 < dp["epsilon"] <= 3  # the planned noise spends the target, not more
    assert dp["noise_multiplier"] > 1


@pytest.mark.cli(
    "central_bad",
    "simulate",
    "privacy=central",
    "privacy.clipping=nodes",
    "quiet=true",
    *SMALL,
    "output_dir={cwd}/run",
)
def test_a_bad_central_setting_is_one_line(cli):
    done = cli["central_bad"].wait()

    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["medfed: error: privacy.clipping must be server or client, got 'nodes'"]
