"""Issue 11 section 6 through the CLI: the ledger cannot be reset by mistake.

``medfed node ledger`` prints the epsilon the node's own policy check computed (one function:
:func:`medfed.client.ledger.spent_epsilon`); a missing ledger is an error, never "0 spent"; a
node whose data spent budget before refuses to start on a new, empty ledger unless told so with
``--new-ledger`` (logged in the binding beside the card).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medfed.client.ledger import Ledger, spent_epsilon
from medfed.client.ledger_binding import bind, binding_path, mark_spent, read_binding

MEDFED = str(Path(sys.executable).with_name("medfed"))


def _medfed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    return subprocess.run(
        [MEDFED, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_node_ledger_prints_what_the_policy_check_computed(tmp_path: Path) -> None:
    ledgers = tmp_path / "ledgers"
    common = [
        "federation.hospitals=2",
        "federation.min_size=60",
        "federation.max_size=80",
        "privacy=dpsgd",
        "privacy.noise_multiplier=1.5",
        "rounds=2",
        "quiet=true",
        f"privacy.ledger_dir={ledgers}",
    ]
    for study in ("a", "b", "c"):
        done = _medfed("simulate", *common, f"output_dir={tmp_path / study}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    last = json.loads((tmp_path / "c" / "summary.json").read_text())["hospitals"][0]

    shown = _medfed(
        "node",
        "ledger",
        "--dataset",
        str(ledgers / f"{last['name']}.ledger.jsonl"),
        "--delta",
        repr(last["delta"]),
        "--json",
        cwd=tmp_path,
    )

    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert len(report["studies"]) == 3 and report["entries"] == 12
    history = Ledger(ledgers / f"{last['name']}.ledger.jsonl").history()
    assert report["accountant"] == "prv"  # the last one the ledger recorded (the default)
    assert report["total_epsilon"] == spent_epsilon(history, last["delta"], "prv")
    assert report["total_epsilon"] == pytest.approx(last["epsilon"], rel=1e-9)


@pytest.fixture
def node_files(tmp_path: Path) -> dict[str, Path]:
    assert (
        _medfed(
            "synth", "export", "--hospitals", "1", str(tmp_path / "data"), cwd=tmp_path
        ).returncode
        == 0
    )
    assert _medfed("coordinator", "init", str(tmp_path / "coord"), cwd=tmp_path).returncode == 0
    assert _medfed("node", "keys", str(tmp_path / "keys"), cwd=tmp_path).returncode == 0
    (tmp_path / "policy.yaml").write_text("max_epsilon_total: 5.0\n")
    return {
        "card": tmp_path / "data" / "hospital-0.yaml",
        "ca": tmp_path / "coord" / "ca.crt",
        "key": tmp_path / "keys" / "node.key",
        "policy": tmp_path / "policy.yaml",
    }


def test_a_missing_ledger_is_an_error_and_a_spent_dataset_needs_its_ledger(node_files, tmp_path):
    card = node_files["card"]
    nothing = _medfed("node", "ledger", "--dataset", str(card), cwd=tmp_path)
    assert nothing.returncode == 1
    assert nothing.stderr.startswith(f"error: no privacy ledger at {card}.ledger.jsonl")

    ledger = Ledger(f"{card}.ledger.jsonl")  # what `node start` then a DP round leave behind
    bind(card, ledger.path)
    ledger.reserve("s1", "diagnosis", 1, 1.5, 0.1, 10, 1e-5, 0.4)
    mark_spent(binding_path(card))
    moved = tmp_path / "elsewhere.ledger.jsonl"
    ledger.path.rename(moved)
    ledger.head_path.rename(moved.with_name(moved.name + ".head"))

    read = _medfed("node", "ledger", "--dataset", str(card), cwd=tmp_path)
    assert read.returncode == 1
    assert f"this dataset spent privacy budget before (ledger {ledger.path})" in read.stderr
    start = [
        "node",
        "start",
        "--dataset",
        str(card),
        "--policy",
        str(node_files["policy"]),
        "--superlink",
        "127.0.0.1:9",
        "--ca",
        str(node_files["ca"]),
        "--key",
        str(node_files["key"]),
    ]
    refused = _medfed(*start, "--ledger-dir", str(tmp_path / "new"), cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"medfed: error: {card}: this dataset spent privacy budget before (ledger "
        f"{ledger.path}), but there is no ledger at {tmp_path / 'new' / 'hospital-0.ledger.jsonl'}"
        "; point the node at that ledger (--ledger-dir) or start a new one explicitly with "
        "`medfed node start --new-ledger`"
    )


def test_new_ledger_is_explicit_and_logged(node_files, tmp_path, capsys) -> None:
    card = node_files["card"]
    old = Ledger(tmp_path / "old" / "hospital-0.ledger.jsonl")
    old.path.parent.mkdir()
    bind(card, old.path)
    old.reserve("s1", "diagnosis", 1, 1.5, 0.1, 10, 1e-5, 0.4)
    mark_spent(binding_path(card))
    new = tmp_path / "new" / "hospital-0.ledger.jsonl"

    bind(card, old.path)  # the same ledger: fine
    with pytest.raises(RuntimeError, match="spent privacy budget before"):
        bind(card, new)
    bind(card, new, new_ledger=True)

    assert "--new-ledger: starting a new privacy ledger at" in capsys.readouterr().err
    record = read_binding(card)
    assert record["ledger"] == str(new) and record["new_ledger"]["previous_ledger"] == str(old.path)
