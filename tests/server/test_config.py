"""Composing the study with Hydra, and the one-sentence errors for every mistake."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from medfed.server.study.config import ConfigError, compose_study, expand_sweeps, validate_study


def test_defaults():
    study = compose_study([])

    assert study["task"]["name"] == "diagnosis"
    assert study["strategy"]["name"] == "fedavg"
    assert study["engine"]["name"] == "inprocess"
    assert study["federation"]["name"] == "synthetic"
    assert study["federation"]["hospitals"] == 4
    assert (study["rounds"], study["seed"]) == (15, 0)
    assert study["train"]["lr"] == 0.1 and study["train"]["optimizer"] == "sgd"
    assert study["preprocessing"]["normalisation"] == "global"
    assert study["output_dir"] is None and study["compare"] is False
    assert "hydra" not in study
    assert {f["name"] for f in study["task"]["features"]} >= {"age", "sex", "cholesterol"}


def test_overrides_reach_the_study():
    study = compose_study(
        [
            "task=pricing",
            "strategy=fedyogi",
            "strategy.eta=0.05",
            "rounds=5",
            "seed=3",
            "train.optimizer=adam",
            "federation.hospitals=6",
            "engine=ray",
            "output_dir=/tmp/x",
        ]
    )

    assert study["task"]["name"] == "pricing"
    assert study["task"]["target"]["type"] == "continuous"
    assert study["strategy"] == {
        "name": "fedyogi",
        "fraction_train": 1.0,
        "min_nodes": 2,
        "eta": 0.05,
        "tau": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.99,
    }
    assert (study["rounds"], study["seed"]) == (5, 3)
    assert study["train"]["optimizer"] == "adam"
    assert study["federation"]["hospitals"] == 6
    assert study["engine"]["name"] == "ray" and study["engine"]["num_cpus_per_client"] == 1
    assert study["output_dir"] == "/tmp/x"


def test_composing_twice_gives_the_same_study():
    assert compose_study(["task=treatment"]) == compose_study(["task=treatment"])


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        compose_study(list(overrides))
    message = str(info.value)
    assert message.strip() and "\n" not in message, message
    assert "Traceback" not in message
    return message


def test_unknown_task_names_the_choices():
    message = _error("task=nope")
    assert "nope" in message
    assert all(name in message for name in ("diagnosis", "treatment", "pricing"))
    # Hydra's search-path listing is noise for a user
    assert "provider=" not in message and "search path" not in message.lower()


def test_unknown_strategy_names_the_choices():
    message = _error("strategy=fedmagic")
    assert "fedmagic" in message and "fedavg" in message and "krum" in message


def test_unknown_key_is_named():
    message = _error("foo=1")
    assert "'foo'" in message
    assert "no such setting" in message


def test_unknown_nested_key_is_named():
    assert "train.momentun" in _error("train.momentun=0.9")


@pytest.mark.parametrize(
    "override",
    [
        "rounds=0",
        "train.lr=-1",
        "train.batch_size=0",
        "preprocessing.normalisation=x",
        "federation.hospitals=0",
        "strategy.min_nodes=9",
    ],
)
def test_invalid_override_is_one_sentence_naming_the_setting(override: str):
    setting, value = override.split("=", 1)
    message = _error(override)
    assert setting in message
    assert value in message  # the value the user typed is quoted back


@pytest.fixture(scope="module")
def default_study() -> dict:
    return compose_study([])


@pytest.mark.parametrize(
    "setting, value",
    [
        ("rounds", -3),
        ("rounds", 2.5),
        ("rounds", True),
        ("train.lr", 0),
        ("train.local_epochs", 0),
        ("train.local_steps", 0),
        ("train.optimizer", "lbfgs"),
        ("evaluate.every", 0),
        ("seed", "abc"),
        ("seed", 1.5),
        ("timeout", 0),
        ("strategy.fraction_train", 0),
        ("strategy.fraction_train", 1.5),
        ("federation.sizes", [100, 200]),
    ],
)
def test_invalid_value_is_one_sentence_naming_the_setting(default_study, setting, value):
    """The same checks on an edited study (no Hydra round trip: cheaper, same validator)."""
    study = copy.deepcopy(default_study)
    *parents, leaf = setting.split(".")
    section = study
    for part in parents:
        section = section[part]
    section[leaf] = value

    with pytest.raises(ConfigError) as info:
        validate_study(study)
    message = str(info.value)
    assert "\n" not in message
    assert setting in message, message


def test_the_bad_value_is_quoted_back():
    assert "'x'" in _error("preprocessing.normalisation=x")
    assert "-1" in _error("train.lr=-1")


def test_negative_seed_is_a_config_error():
    # the synthetic generator needs a non-negative seed: caught before any hospital starts
    message = _error("seed=-1")
    assert "seed" in message and "-1" in message


@pytest.mark.parametrize(
    "override", ["federation.min_size=1", "federation.max_size=50", "federation.test_fraction=1.5"]
)
def test_impossible_federation_sizes_are_config_errors(override: str):
    message = _error(override)
    key, value = override.split("=")
    assert "federation" in message and key.split(".")[-1] in message
    assert value in message


def test_validate_study_accepts_a_composed_study_and_rejects_an_edited_one():
    study = compose_study([])
    validate_study(study)
    study["train"]["batch_size"] = 0
    with pytest.raises(ConfigError, match="train.batch_size"):
        validate_study(study)


def test_expand_sweeps_gives_every_combination():
    combos = expand_sweeps(["strategy=fedavg,fedyogi", "seed=1,2", "rounds=3"])

    assert len(combos) == 4
    assert {tuple(c) for c in combos} == {
        ("strategy=fedavg", "seed=1", "rounds=3"),
        ("strategy=fedavg", "seed=2", "rounds=3"),
        ("strategy=fedyogi", "seed=1", "rounds=3"),
        ("strategy=fedyogi", "seed=2", "rounds=3"),
    }


def test_expand_sweeps_without_sweep_is_one_combination():
    assert expand_sweeps(["rounds=3", "task=pricing"]) == [["rounds=3", "task=pricing"]]


def test_every_sweep_combination_composes():
    for combo in expand_sweeps(["strategy=fedavg,fedyogi", "seed=1,2"]):
        study = compose_study(combo)
        assert f"strategy={study['strategy']['name']}" in combo
        assert f"seed={study['seed']}" in combo


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A study of 2 rounds that ran to its end with ``medfed simulate`` (in this process)."""
    from medfed.infra.cli import main

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    main(
        [
            "simulate",
            "federation.hospitals=3",
            "federation.min_size=60",
            "federation.max_size=120",
            "rounds=2",
            "quiet=true",
            f"output_dir={run_dir}",
        ]
    )
    return run_dir


def _resume_says_nothing_to_do(command: list[str], run_dir: Path, capsys) -> None:
    from medfed.infra.cli import main

    before = {str(p): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    assert (
        out == f"medfed: {run_dir} already finished all 2 rounds; nothing to resume (the run "
        "directory is unchanged)\n"
    )
    assert {str(p): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_resuming_a_finished_simulation_changes_nothing(finished_run, capsys):
    """Without this check the resume evaluated the final model again and overwrote
    summary.json, report.md and config.yaml with the re-run's wall time."""
    _resume_says_nothing_to_do(["simulate", f"resume={finished_run}"], finished_run, capsys)


@pytest.mark.parametrize("overrides", [[], ["timeout=30"]])
def test_medfed_run_resume_of_a_finished_study_exits_0_before_connecting(
    finished_run, capsys, overrides
):
    """No SuperLink listens on port 1: the answer comes before any connection is tried."""
    _resume_says_nothing_to_do(
        [
            "run",
            "--superlink",
            "127.0.0.1:1",
            "--ca",
            "ca.crt",
            "--resume",
            str(finished_run),
            *overrides,
        ],
        finished_run,
        capsys,
    )


def test_a_study_that_stopped_early_can_still_be_resumed(finished_run, tmp_path):
    from medfed.server.study.config import NothingToResume, check_unfinished

    stopped = tmp_path / "stopped"
    shutil.copytree(finished_run, stopped)
    summary = json.loads((stopped / "summary.json").read_text())
    summary["status"] = "stopped"  # resume= trusts the status field
    summary["stopped"] = "round 2: 1 of 2 hospitals ready; the study stopped there"
    (stopped / "summary.json").write_text(json.dumps(summary))
    check_unfinished(stopped)  # no error
    assert compose_study([f"resume={stopped}"])["resume"] == str(stopped)
    (stopped / "summary.json").unlink()  # an interrupted study writes no summary
    check_unfinished(stopped)
    with pytest.raises(NothingToResume, match="already finished all 2 rounds"):
        check_unfinished(finished_run)


TRAINING = ("rounds", "optimizer", "lr", "batch_size", "local_epochs")


def _training(study: dict) -> dict:
    return {k: study["rounds"] if k == "rounds" else study["train"][k] for k in TRAINING}


@pytest.mark.parametrize("task", ["diagnosis", "treatment", "pricing"])
def test_each_task_trains_with_its_own_defaults_unless_overridden(task: str):
    plain = compose_study([f"task={task}"])
    defaults = plain["task"]["training"]
    assert _training(plain) == {k: defaults.get(k, 1) for k in TRAINING}
    study = compose_study([f"task={task}", "privacy=dpsgd"])
    dp = defaults["dpsgd"]  # every shipped task has its DP-SGD block, at least C
    assert _training(study) == {k: dp.get(k, defaults.get(k, 1)) for k in TRAINING}
    assert study["privacy"]["max_grad_norm"] == dp["max_grad_norm"]
    assert _training(compose_study([f"task={task}", "privacy=central"])) == _training(plain)
    mine = compose_study(
        [
            f"task={task}",
            "privacy=dpsgd",
            "rounds=3",
            "train.lr=0.05",
            "train.optimizer=adam",
            "privacy.max_grad_norm=2.5",
        ]
    )
    assert (mine["rounds"], mine["train"]["lr"], mine["train"]["optimizer"]) == (3, 0.05, "adam")
    assert mine["privacy"]["max_grad_norm"] == 2.5


def test_a_task_without_training_defaults_gets_the_generic_ones():
    study = compose_study(["~task.training", "privacy=dpsgd"])
    assert (study["rounds"], study["train"]["lr"], study["train"]["batch_size"]) == (15, 0.1, 32)
    assert study["train"]["optimizer"] == "sgd" and study["privacy"]["max_grad_norm"] == 1.0
