"""Issue 11 section 5 through the CLI: every setting checked once, up front, in one line, exit 2.

The many settings go through the real ``medfed`` dispatcher in this process (the CLI's code
path without a new interpreter per case); a few run as the installed console script. Before
the check fails, no hospital trains: no run directory is created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medfed.infra.cli import main

MEDFED = str(Path(sys.executable).with_name("medfed"))
SMALL = [
    "rounds=2",
    "quiet=true",
    "federation.hospitals=3",
    "federation.min_size=60",
    "federation.max_size=80",
]
BAD = [
    (["privacy=dpsgd", "privacy.max_grad_norm=0"], "privacy.max_grad_norm must be a number > 0"),
    (["privacy=dpsgd", "privacy.max_grad_norm=-1"], "privacy.max_grad_norm must be a number > 0"),
    (["privacy=dpsgd", "privacy.delta=1"], "privacy.delta must lie strictly between 0 and 1"),
    (["privacy=dpsgd", "privacy.delta=0"], "privacy.delta must lie strictly between 0 and 1"),
    (["privacy=dpsgd", "privacy.target_epsilon=0"], "privacy.target_epsilon must be a number > 0"),
    (
        ["privacy=dpsgd", "privacy.target_epsilon=50"],
        "privacy.target_epsilon=50 is above the node policy's cap policy.max_epsilon_per_study=10",
    ),
    (["privacy=central", "privacy.clipping_norm=-0.5"], "privacy.clipping_norm must be a number"),
    (["policy.max_epsilon_total=-3"], "policy: max_epsilon_total must be a number > 0, got -3"),
    (["policy.min_cohort=4"], "policy.min_cohort=4 but the federation has 3 hospital(s)"),
    (
        ["strategy=krum", "strategy.num_malicious_nodes=1"],
        "strategy.num_malicious_nodes=1 is too many for 3 hospitals",
    ),
    (["strategy=trimmedmean", "strategy.beta=0.5"], "strategy.beta=0.5 must be in [0, 0.5)"),
    (["+train.learning_rate=0.1"], "+train.learning_rate=0.1 adds a setting medfed does not have"),
    (["attack.hospitals=1"], "attack.hospitals must be a list, got 1"),
]


def run_command(args: list[str]) -> int:
    """``medfed *args`` through the real dispatcher in this process; the exit status."""
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_simulate_refuses_a_bad_setting_before_anyone_trains(overrides, message, tmp_path, capsys):
    out = tmp_path / "run"

    code = run_command(["simulate", *SMALL, *overrides, f"output_dir={out}"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("medfed: error: "), err
    assert message in err
    assert not out.exists()


def _medfed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run(
        [MEDFED, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_run_and_privacy_plan_use_the_same_checks(tmp_path: Path) -> None:
    run = _medfed(
        "run",
        "--superlink",
        "127.0.0.1:9",
        "--ca",
        "ca.crt",
        "privacy=dpsgd",
        "privacy.delta=1.5",
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert run.stderr == (
        "medfed: error: privacy.delta must lie strictly between 0 and 1, got 1.5\n"
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text("max_epsilon_total: 4.0\n")
    plan = _medfed(
        "privacy",
        "plan",
        "--sizes",
        "100,200",
        "--batch-size",
        "16",
        "--local-steps",
        "5",
        "--rounds",
        "3",
        "--target-epsilon",
        "6",
        "--policy",
        str(policy),
        cwd=tmp_path,
    )
    assert plan.returncode == 2
    assert plan.stderr == (
        f"medfed: error: --target-epsilon=6 is above the node policy's cap "
        f"max_epsilon_total in {policy}=4: every round would be refused; "
        "lower the target\n"
    )


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("cards")
    assert run_command(["synth", "export", "--hospitals", "3", str(folder)]) == 0
    return sorted(folder.glob("*.yaml"))


def test_a_card_listed_twice_is_refused(cards, tmp_path, capsys) -> None:
    listing = ",".join(str(c) for c in [*cards, cards[0]])

    code = run_command(
        [
            "simulate",
            "federation=sites",
            f"federation.cards=[{listing}]",
            *SMALL[:2],
            f"output_dir={tmp_path / 'run'}",
        ]
    )

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"federation.cards: the dataset card {cards[0]} is listed twice" in err


def test_a_card_given_as_a_string_is_refused(cards, tmp_path, capsys) -> None:
    code = run_command(
        [
            "simulate",
            "federation=sites",
            f"federation.cards={cards[0]}",
            *SMALL[:2],
            f"output_dir={tmp_path / 'run'}",
        ]
    )

    err = capsys.readouterr().err
    assert code == 2 and f"federation.cards must be a list, got '{cards[0]}'" in err


@pytest.mark.slow
def test_an_unusable_card_stops_the_study_before_round_1_unless_allowed(cards, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for card in cards:
        for path in card.parent.glob(f"{card.stem}*"):
            (broken / path.name).write_bytes(path.read_bytes())
    (broken / f"{cards[1].stem}-train.csv").write_text("age,sex\n")  # a header, no rows
    listing = ",".join(str(broken / c.name) for c in cards)
    args = [
        "simulate",
        "federation=sites",
        f"federation.cards=[{listing}]",
        "rounds=2",
        "quiet=true",
    ]

    refused = _medfed(*args, f"output_dir={tmp_path / 'refused'}", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"medfed: error: {broken / cards[1].stem}")
    assert "federation.allow_missing_sites=true" in refused.stderr
    assert not (tmp_path / "refused").exists()

    allowed = _medfed(
        *args,
        "federation.allow_missing_sites=true",
        f"output_dir={tmp_path / 'allowed'}",
        cwd=tmp_path,
    )
    assert allowed.returncode == 0, allowed.stderr
    summary = json.loads((tmp_path / "allowed" / "summary.json").read_text())
    assert summary["sites"] == [cards[0].stem, cards[2].stem]
    assert [m["card"] for m in summary["missing_sites"]] == [str(broken / cards[1].name)]
