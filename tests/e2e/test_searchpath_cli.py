"""Issue 11 section 7 through the CLI: a user's task schema in ``hydra.searchpath=[file://DIR]``
works in ``simulate``, ``run``, ``privacy plan`` and ``node check``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medfed.server.study.config import config_dir

MEDFED = str(Path(sys.executable).with_name("medfed"))


def _medfed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run(
        [MEDFED, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """A folder with ``task/heart.yaml`` (the diagnosis schema renamed), its searchpath
    override, and a card naming the task ``heart``."""
    conf = tmp_path_factory.mktemp("myconf")
    schema = yaml.safe_load((config_dir() / "task" / "diagnosis.yaml").read_text())
    schema["name"] = "heart"
    (conf / "task").mkdir()
    (conf / "task" / "heart.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    cards = conf / "cards"
    done = _medfed(
        "synth",
        "export",
        "--task",
        str(conf / "task" / "heart.yaml"),
        "--hospitals",
        "2",
        str(cards),
        cwd=conf,
    )
    assert done.returncode == 0, done.stderr
    card = cards / "hospital-0.yaml"
    text = yaml.safe_load(card.read_text())
    text["task"] = "heart"
    card.write_text(yaml.safe_dump(text))
    return conf, f"hydra.searchpath=[file://{conf}]", card


@pytest.mark.slow
def test_simulate_runs_a_task_from_the_searchpath(custom, tmp_path) -> None:
    _, searchpath, _ = custom
    done = _medfed(
        "simulate",
        searchpath,
        "task=heart",
        "rounds=1",
        "quiet=true",
        "federation.hospitals=2",
        "federation.min_size=60",
        "federation.max_size=80",
        f"output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["task"] == "heart"


def test_run_composes_with_the_searchpath(custom, tmp_path) -> None:
    _, searchpath, _ = custom
    without = _medfed(
        "run", "--superlink", "127.0.0.1:9", "--ca", "ca.crt", "task=heart", cwd=tmp_path
    )
    assert without.returncode == 2 and "Could not find 'task/heart'" in without.stderr

    # with it the study composes; the (deliberately) bad delta is the first thing refused
    done = _medfed(
        "run",
        "--superlink",
        "127.0.0.1:9",
        "--ca",
        "ca.crt",
        searchpath,
        "task=heart",
        "privacy=dpsgd",
        "privacy.delta=2",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr == "medfed: error: privacy.delta must lie strictly between 0 and 1, got 2\n"


def test_node_check_and_privacy_plan_find_the_task(custom, tmp_path) -> None:
    _, searchpath, card = custom
    unknown = _medfed("node", "check", "--dataset", str(card), cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown task 'heart'" in unknown.stderr

    check = _medfed("node", "check", "--dataset", str(card), searchpath, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    plan = _medfed(
        "privacy",
        "plan",
        searchpath,
        "--cards",
        str(card),
        "--batch-size",
        "16",
        "--local-steps",
        "5",
        "--rounds",
        "2",
        "--noise-multiplier",
        "1.0",
        "--json",
        cwd=tmp_path,
    )
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["hospitals"][0]["hospital"] == "hospital-0"
