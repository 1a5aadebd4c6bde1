"""The ``medfed`` command: a dispatcher and nothing else.

Every command is owned by the side that runs it and is named here by its module and function,
imported only when it runs (so ``medfed --help`` starts in a fraction of a second and this module
imports no medfed package):

- the coordinator's and the researcher's commands live in :mod:`medfed.server`
  (``simulate``, ``tasks``, ``checkpoint-key``, ``coordinator ...``, ``run``, ``status``);
- a hospital's commands live in :mod:`medfed.client` (``node ...``, ``privacy plan``,
  ``predict``, ``model verify|export``);
- ``synth export`` (built-in synthetic hospitals as files) lives with the data, in
  :mod:`medfed.models.ingest`.

Exit codes, for every command: 0 success, 1 a study or check that failed, 2 a usage or
configuration error (130 when interrupted with Ctrl-C).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Command:
    """One command: ``target`` is ``"module:function"``, a function of the remaining words
    (including the subcommand's own name when ``with_name``) returning the exit code."""

    target: str
    summary: str
    with_name: bool = False


COMMANDS: dict[str, dict[str, Command] | Command] = {
    "simulate": Command(
        "medfed.server.commands:simulate_main",
        "run a simulated federation (Hydra overrides; -m for sweeps)",
    ),
    "tasks": Command("medfed.server.commands:tasks_main", "list the shipped task schemas"),
    "checkpoint-key": Command(
        "medfed.server.commands:checkpoint_key_main",
        "create a Fernet key for encrypted checkpoints",
    ),
    "run": Command(
        "medfed.server.deploy.flwr_cli:run_main",
        "run a study on a deployed federation (at the coordinator)",
    ),
    "status": Command(
        "medfed.server.deploy.flwr_cli:status_main",
        "connected hospitals and studies of a deployed federation",
    ),
    "dashboard": Command(
        "medfed.server.dashboard.cli:dashboard_main",
        "a read-only web dashboard of studies and of a hospital node",
    ),
    "predict": Command(
        "medfed.client.commands.predict:predict_main",
        "score a hospital's rows with a verified model bundle",
    ),
    "model": {
        "verify": Command(
            "medfed.client.commands.model:model_main",
            "check a model bundle's signature and every file's hash",
            with_name=True,
        ),
        "export": Command(
            "medfed.client.commands.model:model_main",
            "export a model bundle to ONNX (with its preprocessing)",
            with_name=True,
        ),
    },
    "study": {
        "manifest": Command(
            "medfed.server.deploy.manifest:study_main",
            "a study's manifest (YAML) and SHA-256, signed, for hospitals to approve",
            with_name=True,
        ),
    },
    "coordinator": {
        "init": Command(
            "medfed.server.deploy.coordinator:coordinator_main",
            "create the CA, the SuperLink's TLS certificate and coordinator.yaml",
            with_name=True,
        ),
        "add-node": Command(
            "medfed.server.deploy.coordinator:coordinator_main",
            "register a hospital's node key",
            with_name=True,
        ),
        "start": Command(
            "medfed.server.deploy.coordinator:coordinator_main",
            "run the SuperLink (TLS, node keys, state database)",
            with_name=True,
        ),
        "audit": Command(
            "medfed.server.deploy.coordinator_audit:coordinator_audit_main",
            "the coordinator's log of studies, approvals and outcomes",
        ),
    },
    "node": {
        "check": Command(
            "medfed.client.commands.check:node_main",
            "validate a hospital's dataset card and data (aggregates only)",
            with_name=True,
        ),
        "ledger": Command(
            "medfed.client.commands.privacy:ledger_main",
            "a hospital's privacy spend per study and in total",
        ),
        "keys": Command(
            "medfed.client.commands.deploy:node_deploy_main",
            "create the node's key pair",
            with_name=True,
        ),
        "start": Command(
            "medfed.client.commands.deploy:node_deploy_main",
            "check the data, then join the federation",
            with_name=True,
        ),
        "approve": Command(
            "medfed.client.commands.audit:governance_main",
            "approve a study's manifest for this hospital's data",
            with_name=True,
        ),
        "revoke": Command(
            "medfed.client.commands.audit:governance_main",
            "revoke an approval: the node refuses the study from its next round",
            with_name=True,
        ),
        "audit": Command(
            "medfed.client.commands.audit:governance_main",
            "the node's audit log (verify it, filter, csv or json)",
            with_name=True,
        ),
    },
    "privacy": {
        "plan": Command(
            "medfed.client.commands.privacy:plan_main",
            "noise and epsilon per round for each hospital before a study",
        ),
    },
    "synth": {
        "export": Command(
            "medfed.models.ingest.export:synth_main",
            "write synthetic hospitals as CSV files plus dataset cards",
            with_name=True,
        ),
    },
}
"""Every command by group and name; ``medfed --help`` is generated from it."""


def usage(group: str | None = None) -> str:
    """The help text of ``medfed`` (every command) or of one group."""
    lines = [
        f"usage: medfed {group or '<command>'} {'<subcommand> ' if group else ''}[options]",
        "",
        "commands:",
    ]
    for name, entry in COMMANDS.items():
        if group is not None and name != group:
            continue
        if isinstance(entry, Command):
            lines.append(f"  {name:24s}{entry.summary}")
            continue
        for sub, command in entry.items():
            lines.append(f"  {name + ' ' + sub:24s}{command.summary}")
    lines += [
        "",
        "`medfed COMMAND --help` describes a command's options.",
        "exit codes: 0 success, 1 a study or check failed, 2 a usage or configuration error",
    ]
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"medfed: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def resolve(args: list[str]) -> tuple[Command, list[str]] | int:
    """The command ``args`` name and the words it gets, or an exit code after printing help or
    an error."""
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return EXIT_OK if args else EXIT_USAGE
    entry = COMMANDS.get(args[0])
    if entry is None:
        return _fail(f"unknown command '{args[0]}'; see `medfed --help`")
    if isinstance(entry, Command):
        return entry, args[1:]
    rest = args[1:]
    if not rest or rest[0] in ("-h", "--help", "help"):
        print(usage(args[0]))
        return EXIT_OK if rest else EXIT_USAGE
    command = entry.get(rest[0])
    if command is None:
        return _fail(f"unknown command 'medfed {args[0]} {rest[0]}'; see `medfed {args[0]} --help`")
    return command, rest if command.with_name else rest[1:]


def run_command(args: list[str]) -> int:
    """Run the command ``args`` names (the words after ``medfed``); its exit code."""
    found = resolve(list(args))
    if isinstance(found, int):
        return found
    command, rest = found
    module, _, function = command.target.partition(":")
    code = getattr(importlib.import_module(module), function)(rest)
    return EXIT_OK if code is None else int(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``medfed`` console script: returns on success, exits otherwise."""
    code = run_command(list(sys.argv[1:] if argv is None else argv))
    if code != EXIT_OK:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
