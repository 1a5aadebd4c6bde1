"""The coordinator's TLS material, its configuration folder and the deployment commands' errors."""

from __future__ import annotations

import ipaddress
import stat

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from medfed.infra.keys import DeployError, create_node_keys
from medfed.server.deploy.certs import create_tls, san_entries
from medfed.server.deploy.coordinator import (
    add_node,
    coordinator_main,
    coordinator_superlink,
    init,
    load_config,
    local_address,
)
from medfed.server.deploy.flwr_cli import run_main


def test_sans_cover_the_given_hosts_and_loopback_once():
    names = san_entries(["10.1.2.3", "Coord.Example.org", "127.0.0.1", "[::1]"])
    assert names == [
        x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
        x509.DNSName("coord.example.org"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("localhost"),
    ]


def test_server_certificate_is_signed_by_the_ca_and_keys_are_private(tmp_path):
    paths = create_tls(tmp_path, ["coord.example.org", "192.168.0.7"])
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    cert.verify_directly_issued_by(ca)  # raises when the signature or issuer does not match
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["coord.example.org", "localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "192.168.0.7",
        "127.0.0.1",
        "::1",
    ]
    key = serialization.load_pem_private_key(paths["key"].read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    for private in (paths["key"], paths["ca_key"]):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_config_round_trip_and_superlink_flags(tmp_path):
    config = init(tmp_path / "coord", ["coord.example.org"], 9443, None)
    loaded = load_config(tmp_path / "coord")
    assert loaded == config
    assert (config["listen"], config["address"]) == ("0.0.0.0", "coord.example.org:9443")
    assert local_address(config) == "127.0.0.1:9443"
    command = coordinator_superlink(tmp_path / "coord", config)
    flags = {flag: command[i + 1] for i, flag in enumerate(command[:-1]) if flag.startswith("--")}
    assert flags["--ssl-ca-certfile"] == str((tmp_path / "coord" / "ca.crt").resolve())
    assert flags["--database"] == str((tmp_path / "coord" / "state.db").resolve())
    assert (flags["--host"], flags["--port"]) == ("0.0.0.0", "9443")
    assert "--enable-supernode-auth" in command and "--insecure" not in command


def test_fast_and_flower_default_superlink_environments(tmp_path):
    from medfed.infra.launch import POLL_ENV, superlink_env

    fast, slow = superlink_env(tmp_path / "a"), superlink_env(tmp_path / "b", fast=False)
    assert fast["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.05" and POLL_ENV not in fast
    assert slow[POLL_ENV] == "3" and "FLWR_SUPEREXEC_TASK_POLL_INTERVAL" not in slow
    for env, home in ((fast, "a"), (slow, "b")):
        assert env["FLWR_HOME"] == str(tmp_path / home)
        assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


def test_loopback_only_coordinator_listens_on_loopback(tmp_path):
    config = init(tmp_path / "c", [], 9093, None)
    assert (config["listen"], config["address"], config["hosts"]) == (
        "127.0.0.1",
        "127.0.0.1:9093",
        ["127.0.0.1"],
    )


def test_init_refuses_to_replace_a_ca(tmp_path, capsys):
    assert coordinator_main(["init", str(tmp_path / "c")]) == 0
    assert coordinator_main(["init", str(tmp_path / "c")]) == 2
    assert "exists already" in capsys.readouterr().err


def test_missing_or_broken_coordinator_folder_is_one_line(tmp_path, capsys):
    assert coordinator_main(["start", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a coordinator folder" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "coordinator.yaml").write_text("port: [1,\n")
    with pytest.raises(DeployError, match="not valid YAML"):
        load_config(tmp_path / "bad")


def test_add_node_records_a_key_until_the_superlink_runs(tmp_path):
    folder = tmp_path / "c"
    init(folder, [], 1, None)  # port 1: nothing answers, so the key is only recorded
    _, public = create_node_keys(tmp_path / "h0")
    assert "registered when" in add_node(folder, "hospital-0", public)
    nodes = load_config(folder)["nodes"]
    assert nodes == {"hospital-0": {"key": "nodes/hospital-0.pub", "node_id": None}}
    assert (folder / "nodes" / "hospital-0.pub").read_bytes() == public.read_bytes()
    with pytest.raises(DeployError, match="one name per key"):
        add_node(folder, "other-name", public)
    _, second = create_node_keys(tmp_path / "h1")
    with pytest.raises(DeployError, match="another key"):
        add_node(folder, "hospital-0", second)


def test_add_node_rejects_what_is_not_an_openssh_ec_key(tmp_path):
    folder = tmp_path / "c"
    init(folder, [], 1, None)
    with pytest.raises(DeployError, match="not an ECDSA public key"):
        add_node(folder, "h", folder / "ca.crt")
    rsa = tmp_path / "rsa.pub"
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys

    rsa.write_bytes(
        rsa_keys.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(DeployError, match="not an ECDSA public key"):
        add_node(folder, "h", rsa)
    with pytest.raises(DeployError, match="cannot read"):
        add_node(folder, "h", tmp_path / "missing.pub")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rounds=0"], "rounds must be a positive integer"),
        (["compare=true"], "for `medfed simulate` only"),
        (["no_such_key=1"], "no such setting"),
    ],
)
def test_run_config_errors_exit_2_with_one_line(tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--superlink", "127.0.0.1:1", "--ca", str(tmp_path / "ca.crt"), *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_resume_needs_a_run_directory(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--superlink", "127.0.0.1:1", "--ca", "ca.crt", "--resume", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no config.yaml there" in capsys.readouterr().err


def test_run_without_the_ca_file_says_so(tmp_path, capsys):
    status = run_main(
        [
            "--superlink",
            "127.0.0.1:1",
            "--ca",
            str(tmp_path / "ca.crt"),
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    assert status == 1
    assert "no such file; use the coordinator's ca.crt" in capsys.readouterr().err


def test_config_file_is_plain_yaml_with_relative_paths(tmp_path):
    init(tmp_path / "c", ["10.0.0.2"], 9093, "10.0.0.2")
    data = yaml.safe_load((tmp_path / "c" / "coordinator.yaml").read_text())
    assert data["ca"] == "ca.crt" and data["listen"] == "10.0.0.2"
    assert local_address(data) == "10.0.0.2:9093"


def _run_study(*overrides: str) -> dict:
    import argparse

    from medfed.server.deploy.flwr_cli import _study

    return _study(argparse.Namespace(overrides=list(overrides), resume=None))


def test_medfed_run_defaults_to_the_connected_nodes(tmp_path):
    from medfed.models.ingest.sources import MAX_NODES, federation_size

    study = _run_study("strategy.min_nodes=7", f"output_dir={tmp_path}")
    assert study["federation"] == {"name": "nodes", "hospitals": None}
    assert federation_size(study["federation"]) == MAX_NODES
    expected = _run_study("federation.hospitals=8", "strategy.min_nodes=8")
    assert federation_size(expected["federation"]) == 8
    assert _run_study("federation=synthetic")["federation"]["name"] == "synthetic"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["federation.hospitals=3", "strategy.min_nodes=4"],
            "strategy.min_nodes=4 must be between 1 and the number of hospitals (3)",
        ),
        (["federation.hospitals=0"], "federation.hospitals must be a positive number"),
        (["privacy=central"], "with federation=nodes set federation.hospitals=N"),
    ],
)
def test_nodes_federation_errors_are_one_line(capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_info:
        _run_study(*overrides)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_nodes_federation_has_no_rows_to_simulate(small_study):
    from medfed.infra.cli import main
    from medfed.models.ingest.sources import DataConfigError, load_site
    from medfed.models.pipeline import study_schema

    study = small_study()
    with pytest.raises(DataConfigError, match="each deployed node reads its dataset card"):
        load_site(study_schema(study), {"name": "nodes", "hospitals": 3}, 0, 0)
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "federation=nodes", "quiet=true"])
    assert exit_info.value.code == 2
