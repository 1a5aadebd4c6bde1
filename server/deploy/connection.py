"""How this machine talks to a SuperLink: Flower's ``flwr`` CLI with a private connection, and
the coordinator folder's own connection (its ``coordinator.yaml``, address and CA).

Both ``medfed coordinator ...`` (:mod:`.coordinator`) and ``medfed run|status``
(:mod:`.flwr_cli`) use these; neither imports the other.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medfed.infra.keys import DeployError
from medfed.infra.processes import flower_env

CONNECTION = "medfed"


FLWR = Path(sys.executable).with_name("flwr")


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string (ASCII, standard escapes) is a TOML basic string


@dataclass
class Connection:
    """A SuperLink address, the CA certificate that signs it, and a private ``FLWR_HOME``."""

    address: str
    ca: Path
    home: Path

    def env(self) -> dict[str, str]:
        """The environment of a ``flwr`` call; writes the connection into ``config.toml``."""
        if not self.ca.is_file():
            raise DeployError(f"--ca {self.ca}: no such file; use the coordinator's ca.crt")
        env = flower_env(self.home)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f"address = {toml_string(self.address)}\n"
            f"root-certificates = {toml_string(str(self.ca.resolve()))}\n"
        )
        return env

    def call(self, *args: str) -> Any:
        """Run ``flwr ARGS medfed --format json``; the parsed JSON, or one-line error."""
        done = subprocess.run(
            [str(FLWR), *args, CONNECTION, "--format", "json"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        try:
            reply = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError:
            reply = {"success": False, "error-message": (done.stderr or done.stdout).strip()}
        if not reply.get("success", False):
            message = str(reply.get("error-message", "")).strip().splitlines()
            raise DeployError(
                f"`flwr {' '.join(args)}` at {self.address} failed: "
                f"{(message or ['no answer'])[-1]}"
            )
        return reply

    def register(self, public_key: Path, name: str) -> int | str:
        """Register a node's public key; its SuperNode id (``"registered"`` if it already was)."""
        try:
            return int(
                self.call("supernode", "register", str(public_key.resolve()), "--name", name)[
                    "node-id"
                ]
            )
        except DeployError as exc:
            if "already in use" in str(exc):
                return "registered"
            raise

    def nodes(self) -> list[dict[str, Any]]:
        """The SuperNodes the SuperLink knows (``flwr supernode list``)."""
        return list(self.call("supernode", "list")["nodes"])

    def runs(self) -> list[dict[str, Any]]:
        """The runs the SuperLink knows (``flwr ls``)."""
        return list(self.call("ls")["runs"])


CONFIG = "coordinator.yaml"


def address_of(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def load_config(folder: Path) -> dict[str, Any]:
    """The coordinator configuration of ``folder``; one-sentence errors for a missing or bad
    folder."""
    path = folder / CONFIG
    if not path.is_file():
        raise DeployError(
            f"{folder} is not a coordinator folder (no {CONFIG}); create one with "
            "`medfed coordinator init DIR`"
        )
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DeployError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    missing = [
        k
        for k in ("listen", "port", "address", "ca", "cert", "key", "database")
        if not isinstance(config, dict) or config.get(k) in (None, "")
    ]
    if missing:
        raise DeployError(
            f"{path}: missing setting(s) {missing}; run `medfed coordinator init` "
            "again in a new folder"
        )
    config["nodes"] = dict(config.get("nodes") or {})
    return config


def local_address(config: dict[str, Any]) -> str:
    """Where this machine reaches its own SuperLink (loopback when it listens everywhere)."""
    listen = str(config["listen"])
    host = "127.0.0.1" if listen in ("0.0.0.0", "::", "") else listen
    return address_of(host, int(config["port"]))


def connection_for(folder: Path, config: dict[str, Any]) -> Connection:
    """This machine's connection to its own SuperLink (``flwr`` home ``DIR/cli``)."""
    return Connection(local_address(config), (folder / config["ca"]).resolve(), folder / "cli")
