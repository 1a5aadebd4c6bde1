"""``medfed simulate -m hydra/sweeper=optuna``: the README's search, run as a researcher runs it.

Hydra's Optuna sweeper drives the trials and gets each trial's *validation* metric back (early
stopping's held-out training rows); the test split is never what it optimises.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

# The README's example, as written (docs: "Hyper-parameter search").
EXAMPLE = [
    "simulate",
    "-m",
    "hydra/sweeper=optuna",
    "hydra.sweeper.n_trials=3",
    "rounds=2",
    "early_stopping.patience=1",
    "train.lr=interval(0.01,0.3)",
]
SMALL = ["federation.hospitals=3", "federation.min_size=60", "federation.max_size=120"]
README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_shows_the_example_these_tests_run():
    section = README.read_text().split("**Hyper-parameter search on the validation metric.**")[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    assert shlex.split(block.group(1).replace("\\\n", " ")) == ["medfed", *EXAMPLE]


def _ok(run) -> str:
    done = run.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert "Warning" not in done.stderr, done.stderr  # the plugin's Optuna deprecations are muted
    return done.stdout


def _trials(folder: Path) -> dict[int, tuple[float, float, dict]]:
    """Job number -> (train.lr, best validation value, summary) of every trial in ``folder``."""
    found = {}
    for summary_file in folder.glob("*/summary.json"):
        summary = json.loads(summary_file.read_text())
        config = yaml.safe_load((summary_file.parent / "config.yaml").read_text())
        job = int(summary_file.parent.name.split("-", 1)[0])
        found[job] = (config["train"]["lr"], summary["early_stopping"]["best_validation"], summary)
    return found


@pytest.mark.slow  # three studies and Optuna's start-up: about 6 s
@pytest.mark.cli("example", *EXAMPLE)
@pytest.mark.cli("example_again", *EXAMPLE)
def test_the_readme_search_optimises_the_validation_metric(cli):
    stdout = _ok(cli["example"])
    (folder,) = (cli["example"].cwd / "multirun").iterdir()  # the default: multirun/<time>
    trials = _trials(folder)
    results = yaml.safe_load((folder / "optimization_results.yaml").read_text())

    assert sorted(trials) == [0, 1, 2]
    assert len({lr for lr, _, _ in trials.values()}) == 3
    assert all(0.01 <= lr <= 0.3 for lr, _, _ in trials.values())
    best_job = max(trials, key=lambda job: trials[job][1])  # accuracy: higher is better
    best_lr, best_value, best_summary = trials[best_job]
    assert results["best_value"] == best_value  # the validation value the trial returned
    assert results["best_params"] == {"train.lr": best_lr}
    assert best_summary["early_stopping"]["metric"] == "accuracy"
    assert (
        best_summary["status"] == "finished"
        and (folder / f"{best_job}-diagnosis-fedavg-seed0").is_dir()
    )
    assert (
        f"best trial's run directory: {folder.resolve() / f'{best_job}-diagnosis-fedavg-seed0'}"
        in stdout
    )
    # the sampler is seeded with the study's seed: the same command proposes the same trials
    _ok(cli["example_again"])
    (again,) = (cli["example_again"].cwd / "multirun").iterdir()
    assert sorted(lr for lr, _, _ in _trials(again).values()) == sorted(
        lr for lr, _, _ in trials.values()
    )


@pytest.mark.slow
@pytest.mark.cli(
    "grid_pricing",
    "simulate",
    "-m",
    "hydra/sweeper=optuna",
    "hydra/sweeper/sampler=grid",
    "task=pricing",
    "train.lr=choice(0.01,0.3)",
    "rounds=2",
    "early_stopping.patience=1",
    "quiet=true",
    *SMALL,
    "output_dir={cwd}/search",
)
def test_an_error_metric_is_minimised_and_output_dir_holds_the_search(cli):
    stdout = _ok(cli["grid_pricing"])
    folder = cli["grid_pricing"].cwd / "search"
    trials = _trials(folder)
    results = yaml.safe_load((folder / "optimization_results.yaml").read_text())

    assert sorted(lr for lr, _, _ in trials.values()) == [0.01, 0.3]  # the grid: both values
    assert results["best_value"] == min(value for _, value, _ in trials.values())
    assert stdout.splitlines()[0].startswith("medfed: best validation rmse")
    assert not (cli["grid_pricing"].cwd / "multirun").exists()


@pytest.mark.cli(
    "no_validation",
    "simulate",
    "-m",
    "hydra/sweeper=optuna",
    "train.lr=interval(0.01,0.3)",
    "quiet=true",
)
def test_a_search_without_a_validation_split_is_refused_in_one_line(cli):
    done = cli["no_validation"].wait()

    assert done.returncode == 2
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "medfed: error: hydra/sweeper=optuna optimises the validation metric of early "
        "stopping, and this study has no validation split: set early_stopping.patience=N "
        "(settings are never chosen on the test split)"
    ]
    assert sorted(p.name for p in cli["no_validation"].cwd.iterdir()) == [
        "stderr.txt",
        "stdout.txt",
    ]  # no multirun folder: nothing ran


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["hydra/sweeper=optuna", "early_stopping.patience=1"],
            "hydra/sweeper=optuna runs a search: add -m",
        ),
        (
            ["-m", "hydra/sweeper=optuna", "early_stopping.patience=1", "train.lr=interval(0,1)"],
            "train.lr must be a positive number, got 0",
        ),
        (
            ["-m", "hydra/sweeper=optuna", "early_stopping.patience=1", "rounds=interval(1,3)"],
            "rounds must be a positive integer, got 1.764 (a value inside rounds=interval(1,3)",
        ),
        (
            [
                "-m",
                "hydra/sweeper=optuna",
                "task=pricing",
                "early_stopping.patience=1",
                "hydra.sweeper.direction=maximize",
            ],
            "hydra.sweeper.direction=maximize contradicts the metric: validation rmse",
        ),
    ],
)
def test_a_search_that_cannot_start_is_one_line_before_any_trial(
    args, message, monkeypatch, capfd, tmp_path
):
    """In-process: the CLI's own checks, each before Hydra or Optuna starts a trial."""
    from medfed.infra import cli

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(["simulate", *args, "quiet=true"])
    err = capfd.readouterr().err

    assert info.value.code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("medfed: error:"), err
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []  # no multirun folder, no run directory
