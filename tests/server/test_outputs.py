"""The run directory: every file a researcher reads, plots or recomputes from."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml

from medfed.server.outputs.rundir import write_run
from medfed.server.simulation.run import run_simulated_study
from medfed.server.study.loop import GLOBAL

ROUNDS = 2
HOSPITALS = ["hospital-0", "hospital-1", "hospital-2"]
FILES = {"config.yaml", "metrics.csv", "summary.json", "model.pt", "convergence.png", "report.md"}


@pytest.fixture(scope="module")
def compared(small_study, tmp_path_factory):
    """A finished study with ``compare=true``, run as ``medfed simulate`` runs it."""
    out = tmp_path_factory.mktemp("run") / "compared"
    study = small_study(f"rounds={ROUNDS}", "compare=true", f"output_dir={out}")
    return run_simulated_study(study), out


@pytest.fixture(scope="module")
def summary(compared):
    _, out = compared

    def strict(value: str):
        raise ValueError(f"summary.json holds {value}, which is not JSON")

    return json.loads((out / "summary.json").read_text(), parse_constant=strict)


def test_the_run_directory_holds_every_file_and_no_temporary_one(compared):
    _, out = compared
    names = {p.name for p in out.iterdir()}
    assert FILES <= names
    assert not [name for name in names if name.startswith(".") or name.endswith(".tmp")]
    for name in FILES:
        assert (out / name).stat().st_size > 0, name


def test_config_yaml_is_the_resolved_study(compared):
    result, out = compared
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config == result.study
    assert config["output_dir"] == str(out)
    assert config["rounds"] == ROUNDS and config["federation"]["hospitals"] == 3


def _rows(out) -> list[dict[str, str]]:
    with (out / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_metrics_csv_has_a_row_per_round_and_hospital_plus_all_hospitals(compared):
    result, out = compared
    rows = _rows(out)

    assert len(rows) == (ROUNDS + 1) * (len(HOSPITALS) + 1)
    assert {(int(r["round"]), r["hospital"]) for r in rows} == {
        (n, h) for n in range(ROUNDS + 1) for h in [*HOSPITALS, GLOBAL]
    }
    assert list(rows[0])[:3] == ["round", "hospital", "n_test"]
    assert {"accuracy", "auroc", "loss", "train_loss", "train_steps", "wire_bytes"} <= set(rows[0])
    sizes = {h["name"]: h["n_test"] for h in result.hospitals.values()}
    for row in rows:
        expected = sum(sizes.values()) if row["hospital"] == GLOBAL else sizes[row["hospital"]]
        assert int(row["n_test"]) == expected
    final = {r["hospital"]: r for r in rows if int(r["round"]) == ROUNDS}
    assert float(final[GLOBAL]["accuracy"]) == pytest.approx(
        result.final.global_metrics["accuracy"]
    )
    trained = [r for r in rows if int(r["round"]) >= 1 and r["hospital"] != GLOBAL]
    assert sum(float(r["train_steps"]) for r in trained) == result.total_train_steps


def test_summary_json_has_the_promised_keys(compared, summary):
    result, _ = compared
    assert {
        "task",
        "strategy",
        "engine",
        "rounds",
        "seed",
        "wall_seconds",
        "global",
        "hospitals",
        "baselines",
    } <= set(summary)
    assert (summary["task"], summary["strategy"], summary["engine"]) == (
        "diagnosis",
        "fedavg",
        "inprocess",
    )
    assert (summary["rounds"], summary["seed"]) == (ROUNDS, 0)
    assert summary["wall_seconds"] > 0
    assert summary["global"]["accuracy"] == pytest.approx(result.final.global_metrics["accuracy"])
    assert [h["name"] for h in summary["hospitals"]] == HOSPITALS
    for h in summary["hospitals"]:
        assert {"name", "n_train", "n_test", "metrics"} <= set(h)
        assert h["n_train"] > 0 and h["n_test"] > 0
        assert "accuracy" in h["metrics"]
    assert summary["total_train_steps"] == result.total_train_steps


def test_summary_baselines_follow_the_equal_work_rule(summary):
    base = summary["baselines"]
    assert base["pooled"]["steps"] == summary["total_train_steps"]
    assert sum(base["local"]["steps"].values()) == summary["total_train_steps"]
    assert set(base["local"]["hospitals"]) == set(HOSPITALS)
    for metrics in (base["pooled"]["global"], base["local"]["mean"]):
        assert 0.0 <= metrics["accuracy"] <= 1.0


def test_model_pt_loads_into_the_task_model(compared):
    from medfed.models.encoding import GlobalStats
    from medfed.models.pipeline import n_inputs, new_model

    result, out = compared
    saved = torch.load(out / "model.pt")
    assert saved["task"] == "diagnosis"
    stats = GlobalStats.from_dict(saved["statistics"])
    model = new_model(result.schema, stats, n_inputs(result.schema, stats, result.study))
    model.load_state_dict(saved["state_dict"])
    for key, value in result.final_state.items():
        assert torch.equal(saved["state_dict"][key], value)


def test_convergence_png_is_a_png(compared):
    from PIL import Image

    _, out = compared
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "convergence.png") as image:
        assert image.size == (900, 540)


def test_report_md_names_the_study_and_the_baselines(compared, summary):
    _, out = compared
    report = (out / "report.md").read_text()
    assert report.startswith("# medfed study: diagnosis with fedavg")
    assert all(name in report for name in HOSPITALS)
    assert "pooled" in report and "local only" in report
    assert f"{summary['global']['accuracy']:.4g}" in report
    assert "convergence.png" in report


def test_without_compare_there_are_no_baselines(small_study, run_inprocess, tmp_path):
    result = run_inprocess(small_study("rounds=1", f"output_dir={tmp_path / 'plain'}"))
    out = write_run(result)

    data = json.loads((out / "summary.json").read_text())
    assert "baselines" not in data
    assert "pooled" not in (out / "report.md").read_text()


def test_undefined_metrics_are_written_as_null(small_study, run_inprocess, tmp_path):
    result = run_inprocess(small_study("rounds=1", f"output_dir={tmp_path / 'nan'}"))
    result.final.global_metrics["auroc"] = math.nan
    out = write_run(result)

    text = (out / "summary.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["global"]["auroc"] is None
