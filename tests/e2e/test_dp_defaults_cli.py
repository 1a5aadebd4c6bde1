"""DP-SGD's own defaults through the real console script: the task's ``training.dpsgd`` block,
the per-hospital learning rate ``config.yaml`` records and the ledger proves, and bad values."""

from __future__ import annotations

import json

import pytest
import yaml

from medfed.client.ledger import Ledger
from medfed.models.privacy import step_noise_lr

SMALL = ["federation.hospitals=3", "federation.min_size=60", "federation.max_size=400"]


@pytest.mark.slow
@pytest.mark.cli(
    "pricing-dp",
    "simulate",
    "task=pricing",
    "privacy=dpsgd",
    "privacy.target_epsilon=1",
    "rounds=2",
    "quiet=true",
    *SMALL,
    "output_dir={cwd}/run",
)
def test_pricing_under_dp_takes_its_dp_block_and_records_each_hospitals_lr(cli):
    run = cli["pricing-dp"]
    done = run.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    out = run.cwd / "run"
    config = yaml.safe_load((out / "config.yaml").read_text())
    block, privacy = config["task"]["training"]["dpsgd"], config["privacy"]
    assert config["train"]["lr"] == block["lr"] and privacy["max_step_noise"] == 0.025
    sizes = {
        h["name"]: h["n_train"] for h in json.loads((out / "summary.json").read_text())["hospitals"]
    }
    batch = config["train"]["batch_size"]
    for name, lr in privacy["planned_lr"].items():
        # the noise the hospital's ledger says it used gives the lr config.yaml recorded
        used = {entry[0] for entry in Ledger(out / "ledgers" / f"{name}.ledger.jsonl").history()}
        assert len(used) == 1
        expected = step_noise_lr(block["lr"], 0.025, used.pop(), 1.0, min(batch, sizes[name]))
        assert lr == pytest.approx(expected, abs=1e-4) and lr < block["lr"]  # epsilon 1: capped


@pytest.mark.cli("bad-cap", "simulate", "privacy=dpsgd", "privacy.max_step_noise=-1", "quiet=true")
def test_a_bad_step_noise_cap_is_one_line_exit_2(cli):
    done = cli["bad-cap"].wait()
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "medfed: error: privacy.max_step_noise must be a number > 0, got -1"
    )
