"""The hospital side of a deployment: node keys, the SuperNode command, preflight refusals and
the node settings that override the study the server sends."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medfed.client import node
from medfed.client.commands.deploy import node_deploy_main
from medfed.client.privacy_round import ledger_for
from medfed.infra.keys import DeployError, check_private_key, create_node_keys
from medfed.infra.launch import supernode_command
from medfed.models.ingest.export import synth_main


def test_node_keys_are_p384_openssh_and_match(tmp_path):
    private, public = create_node_keys(tmp_path / "keys")
    key = serialization.load_ssh_private_key(private.read_bytes(), None)
    pub = serialization.load_ssh_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert public.read_text().endswith(" medfed-node\n")
    assert pub.public_numbers() == key.public_key().public_numbers()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    check_private_key(private)


def test_node_keys_never_replace_a_key_silently(tmp_path, capsys):
    assert node_deploy_main(["keys", str(tmp_path)]) == 0
    first = (tmp_path / "node.pub").read_bytes()
    assert node_deploy_main(["keys", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert (tmp_path / "node.pub").read_bytes() == first
    assert node_deploy_main(["keys", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "node.pub").read_bytes() != first


@pytest.mark.parametrize("content", [b"", b"not a key", None])
def test_bad_private_key_file_is_one_sentence(tmp_path, content):
    path = tmp_path / "node.key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DeployError, match="--key"):
        check_private_key(path)


@pytest.mark.parametrize("fast", [True, False])
def test_supernode_command_carries_tls_key_port_and_node_config(fast):
    command = supernode_command(
        "coord:9093",
        9101,
        {"dataset": "/d/a b.yaml", "policy": "/p.yaml"},
        root_certificates=Path("/c/ca.crt"),
        private_key=Path("/k/node.key"),
        fast=fast,
    )
    start = command.index("--superlink")
    flags = dict(zip(command[start::2], command[start + 1 :: 2], strict=False))
    assert flags["--superlink"] == "coord:9093" and flags["--port"] == "9101"
    assert flags["--root-certificates"] == "/c/ca.crt"
    assert flags["--auth-supernode-private-key"] == "/k/node.key"
    assert flags["--node-config"] == 'dataset="/d/a b.yaml" policy="/p.yaml"'
    assert "--insecure" not in command
    from flwr.common.config import parse_config_args

    assert parse_config_args([flags["--node-config"]]) == {
        "dataset": "/d/a b.yaml",
        "policy": "/p.yaml",
    }
    launcher = ["-m", "medfed.client.supernode.launcher", "--poll", "0.1", "--heartbeat", "10.0"]
    assert (command[1:start] == launcher) == fast
    assert command[0].endswith("flower-supernode") != fast
    plain = supernode_command("c:1", 2, {}, root_certificates=None, private_key=None, fast=fast)
    assert "--insecure" in plain and "--auth-supernode-private-key" not in plain


def test_launcher_refuses_intervals_flower_would_not_take(capsys):
    from medfed.client.supernode.launcher import main

    for args, message in (
        (["--poll", "0"], "--poll must be"),
        (["--heartbeat", "5"], "--heartbeat must be between 10 and 1800"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--superlink", "c:1"])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture
def hospital(tmp_path):
    assert (
        synth_main(["export", "--task", "diagnosis", "--hospitals", "2", str(tmp_path / "cards")])
        == 0
    )
    (tmp_path / "policy.yaml").write_text("max_epsilon_total: 3.0\nrequire_dp: true\n")
    create_node_keys(tmp_path / "keys")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return tmp_path


def _start(tmp_path: Path, card: Path, **extra: str) -> list[str]:
    args = {
        "--dataset": str(card),
        "--policy": str(tmp_path / "policy.yaml"),
        "--superlink": "127.0.0.1:1",
        "--ca": str(tmp_path / "ca.crt"),
        "--key": str(tmp_path / "keys" / "node.key"),
        **extra,
    }
    return ["start", *[item for pair in args.items() for item in pair]]


def test_node_start_refuses_data_that_fails_the_check(hospital, capsys):
    card = hospital / "cards" / "hospital-0.yaml"
    (hospital / "cards" / "hospital-0-train.csv").write_text("age,sex\n")
    assert node_deploy_main(_start(hospital, card)) == 1
    err = capsys.readouterr().err
    assert "node check failed" in err and err.count("\n") == 1
    assert f"medfed node check --dataset {card}" in err


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--policy", "missing.yaml", "no such policy file"),
        ("--ca", "keys/node.pub", "not a PEM certificate"),
        ("--key", "keys/node.pub", "not an unencrypted ECDSA private key"),
    ],
)
def test_node_start_refuses_bad_files_before_starting(hospital, capsys, flag, value, message):
    args = _start(hospital, hospital / "cards" / "hospital-1.yaml", **{flag: str(hospital / value)})
    assert node_deploy_main(args) == 1
    assert message in capsys.readouterr().err


def _study(small_study, tmp_path: Path) -> str:
    study = small_study(
        "privacy=dpsgd",
        f"output_dir={tmp_path / 'out'}",
        "privacy.ledger_dir=/server/chosen",
        "policy.max_epsilon_total=100",
    )
    return json.dumps(study)


def test_node_settings_replace_the_servers_data_policy_and_ledger(hospital, small_study):
    card = hospital / "cards" / "hospital-1.yaml"
    config_json = _study(small_study, hospital)
    local = json.loads(
        node.local_study(
            config_json, {"dataset": str(card), "policy": str(hospital / "policy.yaml")}
        )
    )
    assert local["federation"] == {"name": "sites", "cards": [str(card)], "min_cohort": None}
    assert local["policy"] == {
        "max_epsilon_total": 3.0,
        "require_dp": True,
        "require_approval": True,
    }  # a deployed node's default
    assert local["privacy"]["secure_rng"] is True
    assert ledger_for(local, "hospital-1").path == card.with_name("hospital-1.yaml.ledger.jsonl")
    assert node.site_index({"dataset": str(card), "partition-id": 2}) == 0
    site = node._site(json.dumps(local), 0)
    assert site.name == "hospital-1"

    with_dir = json.loads(
        node.local_study(
            config_json,
            {
                "dataset": str(card),
                "policy": str(hospital / "policy.yaml"),
                "ledger-dir": str(hospital / "ledgers"),
            },
        )
    )
    assert (
        ledger_for(with_dir, "hospital-1").path == hospital / "ledgers" / "hospital-1.ledger.jsonl"
    )


def test_simulation_keeps_the_study_as_sent(small_study, tmp_path):
    config_json = _study(small_study, tmp_path)
    assert node.local_study(config_json, {"partition-id": 2, "num-partitions": 3}) == config_json
    assert node.site_index({"partition-id": 2, "num-partitions": 3}) == 2


def test_a_server_cannot_point_a_node_at_another_ledger(hospital, small_study):
    study = json.loads(_study(small_study, hospital))
    study["privacy"]["ledger_file"] = "/elsewhere/empty.ledger.jsonl"
    card = hospital / "cards" / "hospital-0.yaml"
    local = json.loads(node.local_study(json.dumps(study), {"dataset": str(card)}))
    assert local["privacy"]["ledger_file"] == str(card) + ".ledger.jsonl"
    assert local["policy"]["max_epsilon_total"] == 10.0  # the shipped default, not the study's


def test_run_child_relays_the_output_and_notes_the_watched_texts(capsys):
    import sys

    from medfed.client.commands.deploy import HELD, run_child

    seen: set[str] = set()
    code = f"print('starting'); print({HELD + '.'!r}); raise SystemExit(1)"
    assert run_child([sys.executable, "-c", code], {}, watch=[HELD, "never"], seen=seen) == 1
    assert seen == {HELD}
    assert capsys.readouterr().out == f"starting\n{HELD}.\n"


@pytest.fixture
def fake_supernode(monkeypatch):
    """``run_child`` replaced by a script of outcomes: ``"held"`` (Flower's activation refusal,
    status 1), ``"refused"`` (status 1, another reason) or ``"stopped"`` (status 0)."""
    from medfed.client.commands import deploy

    script: list[str] = []
    calls: list[list[str]] = []

    def run_child(command, env, started=None, watch=(), seen=None):
        calls.append(command)
        outcome = script.pop(0)
        if outcome == "held":
            seen.add(deploy.HELD)
        return 0 if outcome == "stopped" else 1

    monkeypatch.setattr(deploy, "run_child", run_child)
    monkeypatch.setattr(deploy, "HELD_RETRY", 0.0)
    return script, calls


def test_node_start_tries_again_while_the_coordinator_holds_its_key(
    hospital, fake_supernode, capsys
):
    script, calls = fake_supernode
    script += ["held", "held", "stopped"]
    assert node_deploy_main(_start(hospital, hospital / "cards" / "hospital-0.yaml")) == 0
    assert len(calls) == 3 and calls[0] == calls[2]
    assert capsys.readouterr().out.count("still holds this node's previous connection") == 2


def test_node_start_gives_up_when_the_key_stays_held(hospital, fake_supernode, monkeypatch, capsys):
    from medfed.client.commands import deploy

    script, calls = fake_supernode
    script += ["held"] * 5
    monkeypatch.setattr(deploy, "held_for", lambda flower_defaults: 0.0)
    assert node_deploy_main(_start(hospital, hospital / "cards" / "hospital-0.yaml")) == 1
    err = capsys.readouterr().err
    assert len(calls) == 1 and "is this node's key already in use by another running node" in err


def test_node_start_does_not_retry_a_refused_key(hospital, fake_supernode, capsys):
    script, calls = fake_supernode
    script += ["refused", "stopped"]
    assert node_deploy_main(_start(hospital, hospital / "cards" / "hospital-0.yaml")) == 1
    assert len(calls) == 1 and "Exit Code 305" in capsys.readouterr().err


def test_a_key_is_held_for_two_heartbeats_and_a_margin():
    from medfed.client.commands.deploy import held_for

    assert held_for(flower_defaults=False) == 2 * 10 + 15
    assert held_for(flower_defaults=True) == 2 * 30 + 15
