"""Baselines honour the study: DP-SGD at the study's epsilon, a labelled non-private pooled row,
the configured normalisation; and a DP run directory records its planned noise and train loss."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml

from medfed.client.ledger import Ledger
from medfed.server.simulation.run import run_simulated_study

pytestmark = pytest.mark.slow  # two small federations with baselines, a few seconds each

EPSILON = 2.0


@pytest.fixture(scope="module")
def private_run(small_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("dp") / "run"
    study = small_study(
        "rounds=2",
        "compare=true",
        "privacy=dpsgd",
        f"privacy.target_epsilon={EPSILON}",
        f"output_dir={out}",
    )
    run_simulated_study(study)
    return out, json.loads((out / "summary.json").read_text())


def test_the_pooled_baseline_of_a_dp_study_is_private_at_the_same_epsilon(private_run):
    _, summary = private_run
    base = summary["baselines"]
    pooled, public = base["pooled"], base["pooled_non_private"]
    assert pooled["privacy"].startswith(f"DP-SGD at epsilon {EPSILON:g}, delta ")
    assert EPSILON - 0.05 <= pooled["epsilon"] <= EPSILON
    assert pooled["noise_multiplier"] > 0 and pooled["steps"] == summary["total_train_steps"]
    assert public["privacy"] == "none (not private)" and "epsilon" not in public
    assert public["steps"] == pooled["steps"]
    assert pooled["global"] != public["global"]  # the noise changed the model
    assert base["normalisation"] == "global"
    assert set(base["local"]["hospitals"]) == {h["name"] for h in summary["hospitals"]}


def test_the_report_labels_both_pooled_rows(private_run):
    out, _ = private_run
    report = (out / "report.md").read_text()
    assert f"pooled (all rows in one place; DP-SGD at epsilon {EPSILON:g}" in report
    assert "| pooled, not private |" in report


def test_config_yaml_records_the_noise_each_hospital_planned_and_used(private_run):
    out, summary = private_run
    planned = yaml.safe_load((out / "config.yaml").read_text())["privacy"][
        "planned_noise_multiplier"
    ]
    assert set(planned) == {h["name"] for h in summary["hospitals"]}
    for name, noise in planned.items():
        used = [entry[0] for entry in Ledger(out / "ledgers" / f"{name}.ledger.jsonl").history()]
        assert used and all(u == pytest.approx(noise, abs=1e-4) for u in used)


def test_train_loss_is_reported_under_dp(private_run):
    out, _ = private_run
    with (out / "metrics.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["round"] != "0"]
    losses = [float(r["train_loss"]) for r in rows if r["hospital"] != "all hospitals"]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)


def test_site_normalisation_reaches_the_baselines(small_study, tmp_path):
    study = small_study(
        "rounds=2", "compare=true", "preprocessing.normalisation=site", f"output_dir={tmp_path}"
    )
    run_simulated_study(study)
    base = json.loads((tmp_path / "summary.json").read_text())["baselines"]
    assert base["normalisation"] == "site" and "pooled_non_private" not in base
    assert 0.0 <= base["pooled"]["global"]["accuracy"] <= 1.0


def test_baselines_do_not_depend_on_what_ran_before_in_the_process(small_study, tmp_path):
    """The pooled and local-only baselines start from the study seed: on the in-process engine
    the hospitals train in the server's process and leave torch's global generator elsewhere
    than on Ray, so an unseeded baseline differed between engines (promise 5)."""
    import torch

    from medfed.client.app import app
    from medfed.server.simulation.engine import InProcessGrid
    from medfed.server.study.baselines import run_baselines
    from medfed.server.study.loop import run_study

    study = small_study("rounds=1", f"output_dir={tmp_path}")
    grid = InProcessGrid(
        app, [{"partition-id": i, "num-partitions": 3} for i in range(3)], run_config={}
    )
    result = run_study(grid, study)
    torch.manual_seed(1)
    first = run_baselines(result)
    torch.manual_seed(2)
    torch.rand(1000)
    second = run_baselines(result)
    assert first["pooled"]["global"] == second["pooled"]["global"]
    assert first["local"]["hospitals"] == second["local"]["hospitals"]
