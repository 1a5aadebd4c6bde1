"""``medfed simulate`` as a researcher runs it: a real subprocess of the installed console script.

Each run is declared with ``@pytest.mark.cli(name, *args)`` and starts in the background when the
test session starts (see ``tests/conftest.py``); the tests wait for their run and read its output.
``{cwd}`` is the run's own working directory.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SMALL = ["federation.hospitals=3", "federation.min_size=60", "federation.max_size=120"]
TASKS = {"diagnosis": "accuracy", "treatment": "accuracy", "pricing": "rmse"}


def _ok(run) -> tuple[Path, object]:
    done = run.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    return run.cwd, done


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _task_run(task: str):
    return pytest.param(
        task,
        marks=pytest.mark.cli(
            task, "simulate", f"task={task}", "rounds=3", "quiet=true", "output_dir={cwd}/run"
        ),
    )


@pytest.mark.parametrize("task", [_task_run(task) for task in TASKS])
def test_simulate_each_task(cli, task, load_model):
    cwd, done = _ok(cli[task])
    out = cwd / "run"

    assert done.stdout.strip() == ""  # quiet=true
    summary = _summary(out)
    assert (summary["task"], summary["strategy"], summary["engine"]) == (
        task,
        "fedavg",
        "inprocess",
    )
    assert summary["rounds"] == 3 and len(summary["hospitals"]) == 4
    assert math.isfinite(summary["global"][TASKS[task]])
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 5  # rounds 0..3 x (4 hospitals + all hospitals)
    state = load_model(out)
    assert state and all(torch.isfinite(v).all() for v in state.values())
    # output_dir= is the run directory: Hydra leaves nothing behind in the working directory
    assert not (cwd / "outputs").exists() and not (out / ".hydra").exists()


@pytest.mark.cli("progress", "simulate", "rounds=2", *SMALL, "output_dir={cwd}/run")
def test_without_quiet_a_progress_bar_and_a_table_are_shown(cli):
    _, done = _ok(cli["progress"])
    shown = done.stdout + done.stderr

    assert "round" in shown and "2/2" in shown
    assert "final global model" in shown
    assert "all hospitals" in shown and "hospital-2" in shown
    assert "accuracy" in shown
    assert "results:" in shown


@pytest.mark.cli(
    "sweep",
    "simulate",
    "-m",
    "seed=1,2",
    "rounds=2",
    "quiet=true",
    *SMALL,
    "hydra.sweep.dir={cwd}/sweep",
)
def test_a_sweep_writes_one_run_directory_per_combination(cli, load_model):
    cwd, _ = _ok(cli["sweep"])

    run_dirs = sorted(p.parent for p in (cwd / "sweep").glob("*/summary.json"))
    assert len(run_dirs) == 2
    assert sorted(_summary(d)["seed"] for d in run_dirs) == [1, 2]
    first, second = (load_model(d) for d in run_dirs)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert not (cwd / "multirun").exists()


def _config_error(name: str, override: str, *named: str):
    return pytest.param(
        name,
        named,
        marks=pytest.mark.cli(name, "simulate", override, "quiet=true", "output_dir={cwd}/run"),
    )


@pytest.mark.parametrize(
    "name, named",
    [
        _config_error("unknown_task", "task=nope", "nope", "diagnosis", "pricing"),
        _config_error("unknown_key", "foo=1", "foo"),
        _config_error("zero_rounds", "rounds=0", "rounds", "0"),
    ],
)
def test_a_config_error_is_one_line_on_stderr(cli, name, named):
    done = cli[name].wait()

    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("medfed: error:")
    assert all(word in lines[0] for word in named), lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (cli[name].cwd / "run").exists()


def test_a_failing_study_is_one_line_on_stderr(monkeypatch, capfd, tmp_path):
    """In-process (the failure is injected): the CLI's own handling, not a subprocess's imports."""
    from medfed.infra import cli
    from medfed.server.simulation import run as simulation
    from medfed.server.study.loop import StudyError

    def fail(study):
        raise StudyError("only 1 of the 2 hospitals needed connected within 600 s")

    monkeypatch.setattr(simulation, "run_simulated_study", fail)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(["simulate", "rounds=1", "quiet=true", f"output_dir={tmp_path / 'run'}"])
    err = capfd.readouterr().err

    assert info.value.code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("medfed: error:"), err
    assert "only 1 of the 2 hospitals" in lines[0]


@pytest.mark.slow  # not slow, but two more studies: kept out of the fast tier's time budget
@pytest.mark.cli(
    "sweep_output_dir",
    "simulate",
    "-m",
    "seed=1,2",
    "rounds=1",
    "quiet=true",
    *SMALL,
    "output_dir={cwd}/run",
    "hydra.sweep.dir={cwd}/sweep",
)
def test_a_sweep_with_output_dir_keeps_every_run(cli):
    cwd, _ = _ok(cli["sweep_output_dir"])
    seeds = sorted(_summary(p.parent)["seed"] for p in cwd.rglob("summary.json"))
    assert seeds == [1, 2]


@pytest.mark.slow
def test_ray_engine_reaches_the_in_process_weights(launch, load_model):
    args = [
        "simulate",
        "rounds=2",
        "quiet=true",
        "federation.hospitals=4",
        "federation.min_size=60",
        "federation.max_size=120",
        "output_dir={cwd}/run",
    ]
    on_ray = launch(*args, "engine=ray")
    in_process = launch(*args, "engine=inprocess")
    ray_out, local_out = _ok(on_ray)[0] / "run", _ok(in_process)[0] / "run"

    ray_summary, local_summary = _summary(ray_out), _summary(local_out)
    assert ray_summary["engine"] == "ray" and local_summary["engine"] == "inprocess"
    assert ray_summary["total_train_steps"] == local_summary["total_train_steps"]
    for on, off in zip(ray_summary["hospitals"], local_summary["hospitals"], strict=True):
        assert (on["name"], on["n_train"], on["n_test"]) == (
            off["name"],
            off["n_train"],
            off["n_test"],
        )
        assert on["metrics"] == pytest.approx(off["metrics"], rel=1e-4, nan_ok=True)
    ray_state, local_state = load_model(ray_out), load_model(local_out)
    assert ray_state.keys() == local_state.keys()
    for key in ray_state:
        assert torch.equal(ray_state[key], local_state[key]), key  # bit for bit
