"""A running SuperLink through Flower's ``flwr`` CLI: ``medfed run`` and ``medfed status``.

Every call uses a private ``FLWR_HOME`` whose ``config.toml`` holds one connection, ``medfed``,
pointing at the SuperLink with the coordinator's CA certificate, so nothing in the user's own
``~/.flwr`` is read or changed.

``medfed run`` composes the study exactly as ``medfed simulate`` does (with ``federation=nodes``
unless a ``federation=`` override says otherwise: the hospitals are the connected nodes, each
bringing its own dataset card), resolves it to JSON and submits it with ``flwr run`` (run config
``config-json`` and ``output-dir``; the ServerApp in :mod:`medfed.server.app` reads both). The
ServerApp runs inside the SuperLink's process tree, so the run directory is written on the
coordinator's machine: run ``medfed run`` there.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from medfed.infra.keys import DeployError
from medfed.server.deploy.connection import (
    CONNECTION,
    FLWR,
    Connection,
    connection_for,
    load_config,
    toml_string,
)

PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "medfed"
version = "{version}"
description = "A medfed study (the apps come from the installed medfed package)."
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "medfed"

[tool.flwr.app.components]
serverapp = "medfed.server.app:app"
clientapp = "medfed.client.app:app"

[tool.flwr.app.config]
overrides = ""
config-json = ""
output-dir = ""
"""


def _study(args: argparse.Namespace) -> dict[str, Any]:
    """The study to submit: composed from the overrides (exit 2 with one line on a mistake;
    exit 0 with one line when ``--resume`` names a study that already finished)."""
    from medfed.server.outputs.rundir import default_output_dir
    from medfed.server.study.config import (
        ConfigError,
        NothingToResume,
        check_output_dir,
        check_unfinished,
        compose_study,
        validate_study,
    )

    overrides = list(args.overrides)
    if not any(o.lstrip("+~").startswith("federation=") for o in overrides):
        overrides.insert(0, "federation=nodes")  # the hospitals are the connected nodes
    try:
        if args.resume:
            run_dir = Path(args.resume).expanduser().resolve()
            saved = run_dir / "config.yaml"
            if not saved.is_file():
                raise ConfigError(
                    f"--resume {run_dir}: no config.yaml there; give the run "
                    "directory of the study to continue"
                )
            if args.overrides:  # composing a resumed study checks that it is unfinished
                study = compose_study([*overrides, f"resume={run_dir}"])
            else:  # the same study continues, in its own run directory
                check_unfinished(run_dir)
                study = yaml.safe_load(saved.read_text())
                study.update(
                    resume=str(run_dir), output_dir=study.get("output_dir") or str(run_dir)
                )
                validate_study(study)
        else:
            study = compose_study(overrides)
    except NothingToResume as exc:
        print(f"medfed: {exc}")
        raise SystemExit(0) from None
    except ConfigError as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if study.get("compare"):
        print(
            "medfed: error: compare=true needs every hospital's rows in one place: it is for "
            "`medfed simulate` only",
            file=sys.stderr,
        )
        raise SystemExit(2)
    study["output_dir"] = str(
        Path(study.get("output_dir") or default_output_dir(study)).expanduser().resolve()
    )
    try:
        check_output_dir(study)
    except ConfigError as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return study


def submit(connection: Connection, study: dict[str, Any], work: Path) -> int:
    """``flwr run`` the study, echoing Flower's log; 0 once the run directory is complete."""
    project = work / "app"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT.format(version=version("medfed")))
    run_toml = work / "run.toml"
    run_toml.write_text(
        f"config-json = {toml_string(json.dumps(study))}\n"
        f"output-dir = {toml_string(study['output_dir'])}\n"
    )
    command = [
        str(FLWR),
        "run",
        str(project),
        CONNECTION,
        "--run-config",
        str(run_toml),
        "--stream",
    ]
    child = subprocess.Popen(
        command,
        env=connection.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    run_id = ""
    try:
        for line in child.stdout or []:
            print(line, end="", flush=True)
            run_id = run_id or "".join(re.findall(r"Successfully started run (\d+)", line))
        child.wait()
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
        if run_id:
            subprocess.run(
                [str(FLWR), "stop", run_id, CONNECTION],
                env=connection.env(),
                capture_output=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        print(f"medfed: run {run_id or '(not started)'} stopped", file=sys.stderr)
        return 130
    from medfed.server.study.runstate import run_state

    summary = Path(study["output_dir"]) / "summary.json"
    state = run_state(study["output_dir"])
    if state is None or state[0] == "interrupted":
        raise DeployError(
            f"run {run_id or '(not started)'} ended without {summary} (flwr "
            f"status {child.returncode}); Flower's log above says why"
        )
    print(f"run directory: {study['output_dir']}")
    if state[0] != "finished":
        print(f"medfed: the study {state[0]}: {state[1]}", file=sys.stderr)
        return 1
    return 0


def _interrupt(signum: int, _frame: object) -> None:
    """SIGTERM as Ctrl-C: the study is stopped with ``flwr stop`` (:func:`submit`)."""
    raise KeyboardInterrupt


def _connection_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--superlink",
        required=required,
        metavar="HOST:PORT",
        help="the SuperLink (on the coordinator: 127.0.0.1:PORT)",
    )
    parser.add_argument(
        "--ca", required=required, metavar="CA_CRT", help="the coordinator's ca.crt"
    )


def run_main(argv: list[str]) -> int:
    """``medfed run --superlink HOST:PORT --ca ca.crt [--resume RUN_DIR] [overrides]``."""
    parser = argparse.ArgumentParser(
        prog="medfed run",
        description="Submit a study to a running SuperLink and wait for it. "
        "Run it on the coordinator's machine: the ServerApp runs inside the SuperLink and "
        "writes the run directory (output_dir=...) there.",
    )
    _connection_args(parser, required=True)
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue that run's study from its checkpoint (resume=RUN_DIR)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="serve Prometheus metrics on 127.0.0.1:P while the study runs (metrics_port=P)",
    )
    parser.add_argument(
        "--manifest",
        metavar="FILE",
        help="the approved manifest (medfed study "
        "manifest): its sites and coordinator; a study that differs is refused",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for medfed simulate")
    try:
        args = parser.parse_intermixed_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if (
        args.metrics_port is not None
    ):  # checked with the other settings (medfed.server.monitor.alerts)
        args.overrides.append(f"metrics_port={args.metrics_port}")
    study = governed(_study(args), args)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the study as Ctrl-C does
    try:
        with tempfile.TemporaryDirectory(prefix="medfed-run-") as work:
            connection = Connection(args.superlink, Path(args.ca).expanduser(), Path(work) / "flwr")
            return submit(connection, study, Path(work))
    except DeployError as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return 1


def governed(study: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The study with its approved manifest (``--manifest``) and the coordinator's audit log
    beside ``--ca`` (the coordinator folder); exit 2 with one line when they do not match."""
    from medfed.server.deploy.manifest import ManifestError, apply_manifest

    governance = study.setdefault("governance", {})
    if not governance.get("audit_file"):
        governance["audit_file"] = str(
            Path(args.ca).expanduser().resolve().with_name("audit.jsonl")
        )
    if args.manifest:
        try:
            apply_manifest(study, Path(args.manifest).expanduser())
        except ManifestError as exc:
            print(f"medfed: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return study


def status_main(argv: list[str]) -> int:
    """``medfed status DIR`` or ``medfed status --superlink HOST:PORT --ca ca.crt``."""
    parser = argparse.ArgumentParser(
        prog="medfed status", description="Connected hospitals and studies of a SuperLink."
    )
    parser.add_argument("dir", nargs="?", metavar="DIR", help="a coordinator folder")
    _connection_args(parser, required=False)
    parser.add_argument("--json", action="store_true", help="print JSON")
    try:
        args = parser.parse_args(argv)
        if not args.dir and not (args.superlink and args.ca):
            parser.error("give a coordinator DIR, or --superlink and --ca")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with tempfile.TemporaryDirectory(prefix="medfed-status-") as work:
            report = status(args, Path(work))
    except DeployError as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"SuperLink {report['superlink']}\n\nnodes:")
    for node in report["nodes"]:
        print(
            f"  {node['name'] or '-':20s} {node['node-id']:>20s}  {node['status']:10s} "
            f"last online {node.get('online-at', 'N/A')}"
        )
    for study in report.get("approvals", []):  # studies waiting in round 0 (medfed run)
        print(
            f"\nmanifest {study['manifest'][:8]}: approved by node(s) "
            f"{', '.join(study['approved']) or '(none)'}; not approved by "
            f"{', '.join(study['not_approved']) or '(none)'}"
        )
    print("\nstudies:")
    for run in report["runs"]:
        print(
            f"  {run.get('run-id', '?'):>20}  {run.get('status', '?'):20s} "
            f"{float(run.get('elapsed') or 0):8.0f} s"
        )
    return 0


def status(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Nodes (with the hospital names the coordinator folder records) and runs."""
    names: dict[str, str] = {}
    if args.dir:
        folder = Path(args.dir).expanduser()
        config = load_config(folder)
        connection = connection_for(folder, config)
        names = {str(node.get("node_id")): name for name, node in config["nodes"].items()}
    else:
        connection = Connection(args.superlink, Path(args.ca).expanduser(), work / "flwr")
    nodes = [
        {**node, "node-id": str(node["node-id"]), "name": names.get(str(node["node-id"]), "")}
        for node in connection.nodes()
    ]
    report = {"superlink": connection.address, "nodes": nodes, "runs": connection.runs()}
    if args.dir and (Path(args.dir).expanduser() / "audit.jsonl").exists():
        from medfed.server.deploy.coordinator_audit import pending

        report["approvals"] = [  # node ids by the hospital names the coordinator registered
            {
                **study,
                "approved": [names.get(n, n) for n in study["approved"]],
                "not_approved": {names.get(n, n): why for n, why in study["not_approved"].items()},
            }
            for study in pending(Path(args.dir).expanduser())
        ]
    return report
