"""The coordinator side of a real federation: ``medfed coordinator init|start|add-node``.

``init DIR`` writes a private CA, the SuperLink's TLS certificate (:mod:`.certs`) and
``DIR/coordinator.yaml``: where the SuperLink listens, the address hospitals dial, the paths of
the certificates and the state database, and the registered hospitals (name -> public key file
and the SuperNode id Flower gave it).

Node keys: ``add-node DIR NAME node.pub`` copies the key to ``DIR/nodes/NAME.pub`` and records
it; when the SuperLink is running it is registered at once (``flwr supernode register``),
otherwise ``start`` registers every recorded key that is not yet registered as soon as the
SuperLink answers. Registrations live in the state database (``DIR/state.db``), so they survive
restarts; a database that was deleted has every key registered again.

``start DIR`` runs ``flower-superlink`` with TLS, SuperNode authentication and the database
(:func:`medfed.infra.launch.superlink_command`, the fast setup's environment unless
``--flower-defaults``), with ``FLWR_HOME=DIR/flwr`` (the ServerApp writes run directories from
inside it, on this machine), prints the address hospitals need and stops cleanly on Ctrl-C or
SIGTERM. ``init`` also writes the coordinator's Ed25519 ``signing.key``/``signing.pub``:
``start`` hands the key to the ServerApp, which signs every study's model bundle with it
(:mod:`.bundle`); hospitals check bundles with ``signing.pub``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from medfed.infra.keys import DeployError, load_ssh_key
from medfed.infra.launch import superlink_command, superlink_env
from medfed.infra.processes import run_child
from medfed.models.release.signing import SIGNING_KEY_ENV, write_key_pair
from medfed.server.deploy.certs import LOOPBACK, create_tls
from medfed.server.deploy.connection import (
    CONFIG,
    address_of,
    connection_for,
    load_config,
    local_address,
)

DEFAULT_PORT = 9093
START_TIMEOUT = 60.0  # seconds for the SuperLink to accept connections


def _is_loopback(host: str) -> bool:
    return host.strip("[]") in LOOPBACK or host.startswith("127.")


def save_config(folder: Path, config: dict[str, Any]) -> None:
    """Write ``coordinator.yaml`` atomically (a reader never sees half a file)."""
    tmp = folder / f".{CONFIG}.tmp"
    tmp.write_text(
        "# medfed coordinator: paths are relative to this folder\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    os.replace(tmp, folder / CONFIG)


def init(folder: Path, hosts: list[str], port: int, listen: str | None) -> dict[str, Any]:
    """Create the coordinator folder: TLS material and ``coordinator.yaml``."""
    if (folder / CONFIG).exists():
        raise DeployError(
            f"{folder / CONFIG} exists already; use another folder (the CA in it "
            "is the one hospitals trust)"
        )
    hosts = hosts or ["127.0.0.1"]
    public = [h for h in hosts if not _is_loopback(h)]
    create_tls(folder, hosts)
    config = {
        "listen": listen or ("0.0.0.0" if public else "127.0.0.1"),
        "port": port,
        "address": address_of((public or hosts)[0], port),
        "hosts": hosts,
        "ca": "ca.crt",
        "cert": "server.crt",
        "key": "server.key",
        "database": "state.db",
        "signing_key": write_key_pair(folder)[0].name,  # signs every study's model bundle
        "nodes": {},
    }
    save_config(folder, config)
    return config


def coordinator_superlink(folder: Path, config: dict[str, Any]) -> list[str]:
    """The coordinator's ``flower-superlink`` command: its folder's TLS material, node
    authentication and database (:func:`medfed.infra.launch.superlink_command`)."""
    path = lambda key: (folder / config[key]).resolve()  # noqa: E731
    return superlink_command(
        int(config["port"]),
        path("database"),
        host=str(config["listen"]),
        tls=(path("ca"), path("cert"), path("key")),
        node_auth=True,
    )


def _answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _check_public_key(path: Path) -> bytes:
    return load_ssh_key(
        path,
        public=True,
        where=str(path),
        hint="not an ECDSA public key in OpenSSH format (the hospital's node.pub "
        "from `medfed node keys`)",
    )


def register_pending(folder: Path, config: dict[str, Any]) -> list[str]:
    """Register every recorded key without a SuperNode id; return the names registered."""
    done = []
    connection = connection_for(folder, config)
    for name, node in config["nodes"].items():
        if node.get("node_id") is None:
            node["node_id"] = connection.register(folder / node["key"], name)
            done.append(name)
    if done:
        fresh = load_config(folder)  # keep nodes another add-node wrote meanwhile
        for name in done:
            fresh["nodes"].setdefault(name, config["nodes"][name])["node_id"] = config["nodes"][
                name
            ]["node_id"]
        save_config(folder, fresh)
    return done


def add_node(folder: Path, name: str, public_key: Path) -> str:
    """Record a hospital's key and register it now if the SuperLink runs; say which."""
    config = load_config(folder)
    data = _check_public_key(public_key)
    if not name or "/" in name or name.startswith("."):
        raise DeployError(f"node name {name!r}: use letters, digits, '-' or '_'")
    stored = folder / "nodes" / f"{name}.pub"
    for other, node in config["nodes"].items():
        same = (folder / node["key"]).read_bytes().split()[:2] == data.split()[:2]
        if same != (other == name):
            raise DeployError(
                f"node '{other}' is recorded with {'this' if same else 'another'}"
                f" key ({folder / node['key']}); one name per key"
            )
    stored.parent.mkdir(exist_ok=True)
    shutil.copyfile(public_key, stored)
    config["nodes"].setdefault(name, {"key": f"nodes/{name}.pub", "node_id": None})
    save_config(folder, config)
    if not _answers(local_address(config)):
        return (
            f"recorded {name}; its key is registered when `medfed coordinator start {folder}` runs"
        )
    register_pending(folder, config)
    return f"registered {name} (SuperNode id {load_config(folder)['nodes'][name]['node_id']})"


def start(folder: Path, fast: bool = True) -> int:
    """Run the SuperLink until Ctrl-C/SIGTERM; register pending keys once it answers.

    ``fast=False`` keeps Flower's poll intervals for the SuperExec and the study's Grid."""
    config = load_config(folder)
    for key in ("ca", "cert", "key"):
        if not (folder / config[key]).is_file():
            raise DeployError(
                f"{folder / config[key]} is missing (setting '{key}' of {folder / CONFIG})"
            )
    address = local_address(config)
    if _answers(address):
        raise DeployError(
            f"something already listens on {address} (another SuperLink?); stop "
            f"it or change 'port' in {folder / CONFIG}"
        )
    if not (folder / config["database"]).exists():  # a fresh database knows no keys
        for node in config["nodes"].values():
            node["node_id"] = None
        save_config(folder, config)

    def started(child: Any) -> None:
        (folder / "superlink.pid").write_text(f"{child.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(address):
            if child.poll() is not None or time.monotonic() > deadline:
                return  # run_child reports the status
            time.sleep(0.3)
        names = register_pending(folder, config)
        if names:
            print(f"medfed coordinator: registered {', '.join(names)}", flush=True)
        print(
            f"medfed coordinator: SuperLink running; hospitals join with\n  medfed node start "
            f"--superlink {config['address']} --ca ca.crt --key node.key --dataset CARD "
            f"--policy POLICY\n(ca.crt: {(folder / config['ca']).resolve()}; Ctrl-C stops)",
            flush=True,
        )

    try:
        env = superlink_env((folder / "flwr").resolve(), fast)
        if config.get("signing_key"):  # the ServerApp signs each study's model/ with it
            env[SIGNING_KEY_ENV] = str((folder / config["signing_key"]).resolve())
        status = run_child(coordinator_superlink(folder, config), env, started)
    finally:
        (folder / "superlink.pid").unlink(missing_ok=True)
    if status != 0:
        raise DeployError(f"flower-superlink ended with status {status} (see its log above)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medfed coordinator", description="The coordinator's SuperLink."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init_cmd = commands.add_parser("init", help="create CA, TLS certificate and configuration")
    init_cmd.add_argument("dir", metavar="DIR")
    init_cmd.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="HOST",
        help="a name or IP hospitals dial (repeatable); loopback is always covered",
    )
    init_cmd.add_argument("--port", type=int, default=DEFAULT_PORT)
    init_cmd.add_argument(
        "--listen",
        help="interface to listen on (default: 0.0.0.0 when a "
        "non-loopback --host is given, else 127.0.0.1)",
    )
    start_cmd = commands.add_parser("start", help="run the SuperLink (Ctrl-C stops it)")
    start_cmd.add_argument("dir", metavar="DIR")
    start_cmd.add_argument(
        "--flower-defaults",
        action="store_true",
        help="keep Flower's 1 s SuperExec and 3 s Grid polls (slower rounds; for comparison)",
    )
    add = commands.add_parser("add-node", help="register a hospital's node.pub")
    add.add_argument("dir", metavar="DIR")
    add.add_argument("name", metavar="NAME")
    add.add_argument("public_key", metavar="NODE_PUB", type=Path)
    return parser


def coordinator_main(argv: list[str]) -> int:
    """``medfed coordinator ...``: 0 on success, 1 when a step fails, 2 on bad input."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    folder = Path(args.dir).expanduser()
    try:
        if args.command == "init":
            config = init(folder, args.host, args.port, args.listen)
            print(
                f"coordinator folder {folder}: hospitals dial {config['address']} and trust "
                f"{folder / 'ca.crt'}; model bundles are signed with {folder / 'signing.key'} "
                f"(hospitals verify them with {folder / 'signing.pub'})\n"
                f"next: medfed coordinator start {folder}"
            )
        elif args.command == "add-node":
            print(add_node(folder, args.name, args.public_key))
        else:
            return start(folder, fast=not args.flower_defaults)
    except DeployError as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return 1 if args.command == "start" else 2
    return 0
