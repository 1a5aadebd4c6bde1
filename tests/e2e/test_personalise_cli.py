"""``medfed simulate personalise.*`` through the real console script (background runs)."""

from __future__ import annotations

import csv
import json

import pytest

SMALL = ["federation.hospitals=3", "federation.min_size=60", "federation.max_size=120"]


@pytest.mark.slow
@pytest.mark.cli(
    "fedper",
    "simulate",
    "task=treatment",
    "task.model.family=mlp",
    "rounds=2",
    "quiet=true",
    *SMALL,
    "personalise.method=fedper",
    "personalise.epochs=2",
    "output_dir={cwd}/run",
)
def test_fedper_run_writes_benefit_table_cross_site_and_node_models(cli):
    run = cli["fedper"]
    done = run.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    out = run.cwd / "run"
    summary = json.loads((out / "summary.json").read_text())
    table = summary["personalised"]
    assert table["method"] == "fedper" and table["metric"] == "accuracy"
    assert len(table["hospitals"]) == 3 and not table["failures"]
    report = (out / "report.md").read_text()
    for name, row in table["hospitals"].items():
        assert row["sentence"].startswith(f"{name}: joining ") and row["sentence"] in report
        assert (out / "personalised" / f"{name}.pt").is_file()
    assert set(table["fairness"]) == {"federated", "personalised", "local"}
    with (out / "cross_site.csv").open() as handle:
        rows = {r["model"]: r for r in csv.DictReader(handle)}
    names = sorted(table["hospitals"])
    assert sorted(rows) == sorted(
        ["global", *(f"local {n}" for n in names), *(f"personalised {n}" for n in names)]
    )
    for name in names:  # the diagonal is what the node reported on its own rows
        assert float(rows[f"personalised {name}"][name]) == pytest.approx(
            table["hospitals"][name]["personalised"][0], abs=1e-5
        )
        assert float(rows[f"local {name}"][name]) == pytest.approx(
            table["hospitals"][name]["local"][0], abs=1e-5
        )
    assert (out / "cross_site.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.cli("bad-method", "simulate", "personalise.method=ditto", "quiet=true")
def test_unknown_method_is_one_line_exit_2(cli):
    done = cli["bad-method"].wait()
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "medfed: error: personalise.method must be one of none, "
        "finetune, fedper, fedbn, got 'ditto'"
    )
