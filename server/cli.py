"""The ``medfed`` command line.

``medfed simulate [Hydra overrides]`` runs a simulated federation (a Hydra app: ``-m`` sweeps,
``--cfg job``, ``--help`` work as in any Hydra app). Every configuration mistake ends with one
sentence and exit status 2; a study that fails ends with one sentence and exit status 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

USAGE = """usage: medfed <command> [options]

commands:
  simulate [overrides]   run a simulated federation (Hydra overrides, -m for sweeps), e.g.
                         medfed simulate task=pricing strategy=fedyogi rounds=20 compare=true
  tasks                  list the shipped task schemas
  node check --dataset CARD [--task NAME]
                         validate a hospital's dataset card and data (prints aggregates only)
  node ledger --dataset CARD_OR_LEDGER
                         a hospital's privacy spend per study and in total; verifies the chain
  privacy plan --sizes 120,400,900 --batch-size 32 --local-steps 10 --rounds 20 --target-epsilon 1
                         noise and epsilon per round for each hospital before a study
                         (--cards a.yaml,b.yaml instead of --sizes: sizes from the data, and
                         what each ledger already spent counts against the budget)
  synth export --task NAME --hospitals N DIR
                         write synthetic hospitals as CSV files plus dataset cards
  checkpoint-key FILE    create a Fernet key for encrypted checkpoints (checkpoint.key_file=FILE)

governance (see README "For your data-protection officer"):
  study manifest [--coordinator DIR] [--out FILE] [overrides]
                         the study's manifest (YAML) and SHA-256, signed, for hospitals to approve
  node approve MANIFEST --dataset CARD [--yes] | node revoke HASH --dataset CARD
  node audit --dataset CARD [--verify] [--since DATE] [--format text|csv|json]
  coordinator audit DIR  the coordinator's log of studies, approvals and outcomes

deployment (coordinator):
  coordinator init DIR [--host NAME_OR_IP ...] [--port P]
                         create the CA, the SuperLink's TLS certificate and DIR/coordinator.yaml
  coordinator add-node DIR NAME node.pub
                         register a hospital's node key (now if the SuperLink runs, else at start)
  coordinator start DIR  run the SuperLink (TLS, node keys, state database); Ctrl-C stops it
  run --superlink HOST:PORT --ca ca.crt [--resume RUN_DIR] [--manifest FILE] [overrides]
                         run a study on the federation (on the coordinator's machine: the run
                         directory is written there)
  status DIR | status --superlink HOST:PORT --ca ca.crt
                         connected hospitals and studies

deployment (hospital):
  node keys DIR          create the node's key pair (send DIR/node.pub to the coordinator)
  node start --dataset CARD --policy POLICY --superlink HOST:PORT --ca ca.crt --key KEY
             [--ledger-dir D] [--port P]
                         check the data, then join the federation; Ctrl-C stops the node
"""


def _fail(message: str, status: int) -> None:
    print(f"medfed: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _prevalidate(args: list[str]) -> list[dict[str, Any]]:
    """Compose and validate every sweep combination before any job starts; return the studies."""
    from medfed.server.config import ConfigError, NothingToResume, compose_study, expand_sweeps

    overrides = [a for a in args if not a.startswith("-") and not a.startswith("hydra.")
                 and not a.startswith("hydra/")]
    try:
        combos = expand_sweeps(overrides)
    except Exception as exc:
        _fail(f"cannot parse the overrides: {str(exc).splitlines()[0]}", 2)
    studies = []
    for combo in combos:
        try:
            studies.append(compose_study(combo))
        except NothingToResume as exc:
            print(f"medfed: {exc}")
            raise SystemExit(0) from None
        except ConfigError as exc:
            _fail(str(exc), 2)
        if studies[-1]["federation"]["name"] == "nodes":
            _fail("federation=nodes is a deployed federation (medfed run); simulate "
                  "federation=synthetic or federation=sites", 2)
    return studies


def simulate(argv: list[str]) -> None:
    """Run ``medfed simulate``: check the overrides, then hand over to Hydra."""
    import hydra

    from medfed.server.config import config_dir

    passthrough = any(a in ("--help", "-h", "--hydra-help", "--info") or a.startswith("--cfg")
                      for a in argv)
    sweep = "-m" in argv or "--multirun" in argv
    if not passthrough:
        studies = _prevalidate(argv)
        if not sweep and not any(a.startswith(("hydra.", "hydra/", "-")) for a in argv):
            _run_single(studies[0])  # one run: composed once, no Hydra job machinery
            return
    for arg in list(argv):
        if arg.startswith("output_dir=") and "-m" not in argv and "--multirun" not in argv:
            argv.append(f"hydra.run.dir={arg.split('=', 1)[1]}")
    sys.argv = ["medfed simulate", *argv]
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(
        _simulate_job)()


def _run_single(study: dict[str, Any]) -> None:
    from medfed.server.outputs import default_output_dir

    if not study.get("output_dir"):
        study["output_dir"] = str(default_output_dir(study))
    _run(study)


def _run(study: dict[str, Any]) -> None:
    """Run a validated study; a failure ends in one sentence (a traceback with verbose=true)."""
    from medfed.server.simulation import run_simulated_study

    try:
        run_simulated_study(study)
    except KeyboardInterrupt:
        _fail("interrupted; the run directory holds only what was finished", 130)
    except Exception as exc:  # a failed study ends in one sentence, not a traceback
        if study.get("verbose"):
            raise
        first = (str(exc).splitlines() or [""])[0]
        _fail(f"the study failed: {type(exc).__name__}: {first} (verbose=true shows the "
              "traceback)", 1)


def _simulate_job(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig

    from medfed.server.config import ConfigError, absolute_paths, study_from_cfg, validate_study

    study = absolute_paths(study_from_cfg(cfg))
    try:
        validate_study(study)
    except ConfigError as exc:
        _fail(str(exc), 2)
    hydra_cfg = HydraConfig.get()
    if not study.get("output_dir"):
        study["output_dir"] = hydra_cfg.runtime.output_dir
    elif str(hydra_cfg.mode) == "RunMode.MULTIRUN":  # one folder per job of a sweep
        study["output_dir"] = str(Path(study["output_dir"]) / str(hydra_cfg.sweep.subdir))
    _run(study)


def list_tasks() -> None:
    from medfed.models.schema import available_tasks, load_task

    for name in available_tasks():
        task = load_task(name)
        print(f"{name:12s} {task.target.kind:11s} {len(task.features):2d} features  "
              f"{task.description}")


def _checkpoint_key(args: list[str]) -> None:
    from medfed.server.checkpoint import CheckpointError, new_key

    if len(args) != 1 or args[0].startswith("-"):
        _fail("usage: medfed checkpoint-key FILE", 2)
    try:
        path = new_key(args[0])
    except (CheckpointError, OSError) as exc:
        _fail(str(exc), 2)
    print(f"wrote {path}; keep it safe: encrypted checkpoints cannot be read without it")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``medfed`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "simulate":
        simulate(rest)
    elif command == "tasks":
        list_tasks()
    elif command == "node" and rest[:1] == ["ledger"]:
        from medfed.client.privacy_cli import ledger_main

        raise SystemExit(ledger_main(rest[1:]))
    elif command == "node" and rest[:1] in (["keys"], ["start"]):
        from medfed.client.deploy import node_deploy_main

        raise SystemExit(node_deploy_main(rest))
    elif command == "node" and rest[:1] in (["approve"], ["revoke"], ["audit"]):
        from medfed.client.audit_cli import governance_main

        raise SystemExit(governance_main(rest))
    elif command == "study":
        from medfed.server.manifest import study_main

        raise SystemExit(study_main(rest))
    elif command == "coordinator" and rest[:1] == ["audit"]:
        from medfed.server.coordinator_audit import coordinator_audit_main

        raise SystemExit(coordinator_audit_main(rest[1:]))
    elif command == "coordinator":
        from medfed.server.deploy import coordinator_main

        raise SystemExit(coordinator_main(rest))
    elif command in ("run", "status"):
        from medfed.server import flwr_cli

        raise SystemExit((flwr_cli.run_main if command == "run" else flwr_cli.status_main)(rest))
    elif command == "node":
        from medfed.client.check import node_main

        raise SystemExit(node_main(rest))
    elif command == "privacy" and rest[:1] == ["plan"]:
        from medfed.client.privacy_cli import plan_main

        raise SystemExit(plan_main(rest[1:]))
    elif command == "synth":
        from medfed.models.export import synth_main

        raise SystemExit(synth_main(rest))
    elif command == "checkpoint-key":
        _checkpoint_key(rest)
    else:
        _fail(f"unknown command '{command}'; see `medfed --help`", 2)


if __name__ == "__main__":
    main()
