"""The hospital side of a real federation: ``medfed node keys`` and ``medfed node start``.

``node keys DIR`` writes the node's key pair (ECDSA P-384; ``DIR/node.key`` in OpenSSH private
format, mode 0600, and ``DIR/node.pub``, an OpenSSH public key line, what ``flwr supernode
register`` takes). The coordinator registers the public key; the SuperLink then admits only a
SuperNode that proves it holds the private key.

``node start`` checks the dataset card first (the same checks as ``medfed node check``) and the
policy file, then runs the node's SuperNode over TLS (the coordinator's CA certificate) with the
node key: by default the fast setup of :mod:`medfed.client.supernode.launcher` (short polls, a
long-lived ClientApp worker started and stopped with the SuperNode), with ``--flower-defaults``
Flower's plain ``flower-supernode``. The dataset card, the policy and the ledger folder go into the
SuperNode's own ``--node-config``: the ClientApp takes them from there, never from the study
the server sends (:func:`medfed.client.node.local_study`). Flower's files live in
``<key folder>/flwr`` (its ``FLWR_HOME``). Ctrl-C (or SIGTERM) stops the SuperNode and its worker
and ends with status 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from medfed.infra.keys import DeployError, check_private_key, create_node_keys
from medfed.infra.launch import DEFAULT_HEARTBEAT, supernode_command
from medfed.infra.processes import flower_env, free_port, run_child

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
HELD = "Failed to activate SuperNode"
"""What Flower's SuperNode logs when the SuperLink still counts its key as online."""
NOT_REGISTERED = "The provided public key is not valid"
"""What it logs when the coordinator's SuperLink never registered its key
(:data:`medfed.infra.superlink.NOT_REGISTERED`)."""
HELD_RETRY = 1.0  # seconds between two starts while the SuperLink holds the key (a start
# costs 2-5 s of Python and Flower start-up, so the node is back a few seconds after the
# SuperLink lets the old session go)
FLOWER_HEARTBEAT = 30.0  # Flower's own heartbeat interval (--flower-defaults)


def _first_error(report: str) -> str:
    lines = [line for line in report.splitlines() if line.startswith("error:")]
    return (lines[0] if lines else report.splitlines()[-1]).removeprefix("error: ")


def preflight(args: argparse.Namespace) -> dict[str, str]:
    """Check the card, policy, CA and key before anything starts; return the node config."""
    from medfed.client.commands.check import check_dataset
    from medfed.client.policy import PolicyError, load_policy

    dataset = Path(args.dataset).expanduser().resolve()
    status, report = check_dataset(dataset)
    if status != 0:
        raise DeployError(
            f"node check failed: {_first_error(report)} (run `medfed node check "
            f"--dataset {dataset}` for the full report)"
        )
    policy = Path(args.policy).expanduser().resolve()
    try:
        load_policy(policy)
    except PolicyError as exc:
        raise DeployError(str(exc)) from None
    ca = Path(args.ca).expanduser().resolve()
    if not ca.is_file() or b"BEGIN CERTIFICATE" not in ca.read_bytes():
        raise DeployError(f"--ca {ca}: not a PEM certificate; use the coordinator's ca.crt")
    check_private_key(Path(args.key).expanduser())
    _record_check(dataset, policy)
    config = {"dataset": str(dataset), "policy": str(policy)}
    if args.ledger_dir:
        ledger_dir = Path(args.ledger_dir).expanduser().resolve()
        ledger_dir.mkdir(parents=True, exist_ok=True)
        config["ledger-dir"] = str(ledger_dir)
    _bind_ledger(dataset, config.get("ledger-dir"), bool(getattr(args, "new_ledger", False)))
    return config


def _bind_ledger(dataset: Path, ledger_dir: str | None, new_ledger: bool) -> None:
    """The ledger this node will use is the one its data spent from before, or ``--new-ledger``
    (:mod:`medfed.client.ledger_binding`)."""
    from medfed.client.ledger import SUFFIX, ledger_path
    from medfed.client.ledger_binding import LedgerBindingError, bind
    from medfed.models.ingest.cardspec import load_card

    ledger = (
        Path(ledger_dir) / f"{load_card(dataset).name}{SUFFIX}"
        if ledger_dir
        else ledger_path(dataset)
    )
    try:
        bind(dataset, ledger, new_ledger=new_ledger)
    except LedgerBindingError as exc:
        raise DeployError(str(exc)) from None


def _record_check(dataset: Path, policy: Path) -> None:
    """Record the data check in the node's audit log (a damaged log stops the start)."""
    from medfed.client.audit import AuditTampered
    from medfed.client.commands.audit import start_check

    try:
        start_check(dataset, policy)
    except AuditTampered as exc:
        raise DeployError(
            f"audit log tampered: {exc} (acknowledge it with medfed node audit "
            f"--dataset {dataset} --acknowledge REASON)"
        ) from None


def held_for(flower_defaults: bool) -> float:
    """Seconds ``node start`` keeps trying while the SuperLink refuses a key it still counts as
    online: two of the node's heartbeat intervals (the SuperLink's patience) plus a margin."""
    return 2 * (FLOWER_HEARTBEAT if flower_defaults else DEFAULT_HEARTBEAT) + 15


def start_node(args: argparse.Namespace) -> int:
    """``medfed node start``: preflight, then run the SuperNode until it ends or is stopped."""
    node_config = preflight(args)
    key = Path(args.key).expanduser().resolve()
    port = args.port or free_port()
    command = supernode_command(
        args.superlink,
        port,
        node_config,
        root_certificates=Path(args.ca).expanduser().resolve(),
        private_key=key,
        fast=not args.flower_defaults,
    )
    setup = "Flower's default setup" if args.flower_defaults else "fast setup"
    print(
        f"medfed node: joining {args.superlink} with {node_config['dataset']} ({setup}, local "
        f"port {port}; Ctrl-C stops)",
        flush=True,
    )
    # After a crash the SuperLink holds the key online for two heartbeat intervals and refuses
    # it meanwhile: keep trying that long (and a little more) before giving up.
    hold = held_for(args.flower_defaults)
    deadline = time.monotonic() + hold
    while True:
        seen: set[str] = set()
        status = run_child(
            command, flower_env(key.parent / "flwr"), watch=[HELD, NOT_REGISTERED], seen=seen
        )
        if NOT_REGISTERED in seen:
            raise DeployError(
                f"key not registered at the coordinator: {args.superlink} does "
                f"not know the public key of {key}; send "
                f"{key.with_suffix('.pub')} to the coordinator, who registers it "
                "with `medfed coordinator add-node DIR NAME node.pub`"
            )
        if status == EXIT_OK or HELD not in seen or time.monotonic() > deadline:
            break
        print(
            f"medfed node: the coordinator still holds this node's previous connection (for "
            f"up to {hold:.0f} s after a crash); trying again in "
            f"{HELD_RETRY:.0f} s",
            flush=True,
        )
        try:
            time.sleep(HELD_RETRY)
        except KeyboardInterrupt:
            return EXIT_OK
    if status != EXIT_OK:  # Flower ends every error with status 1; its log names the code
        raise DeployError(
            f"the SuperNode stopped with status {status}; its log above says "
            f"why (Exit Code 305: the SuperLink at {args.superlink} refused this "
            f"node: is the public key of {key} registered with `medfed coordinator "
            f"add-node`? '{HELD}' for {hold:.0f} s: is this node's key already "
            "in use by another running node?)"
        )
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medfed node", description="A hospital's node.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keys = commands.add_parser("keys", help="create the node's key pair (DIR/node.key, .pub)")
    keys.add_argument("dir", metavar="DIR")
    keys.add_argument("--force", action="store_true", help="replace an existing key pair")
    start = commands.add_parser("start", help="join a federation (runs flower-supernode)")
    start.add_argument("--dataset", required=True, metavar="CARD", help="the dataset card")
    start.add_argument("--policy", required=True, metavar="POLICY", help="the node policy YAML")
    start.add_argument(
        "--superlink",
        required=True,
        metavar="HOST:PORT",
        help="the coordinator's address (printed by `medfed coordinator start`)",
    )
    start.add_argument("--ca", required=True, metavar="CA_CRT", help="the coordinator's ca.crt")
    start.add_argument("--key", required=True, metavar="KEY", help="the node's private key")
    start.add_argument(
        "--ledger-dir",
        metavar="D",
        help="privacy ledgers go here as "
        "<site>.ledger.jsonl (default: <card>.ledger.jsonl beside the card)",
    )
    start.add_argument(
        "--new-ledger",
        action="store_true",
        help="start a new privacy ledger although this dataset spent budget "
        "before and its ledger is missing (logged)",
    )
    start.add_argument(
        "--port",
        type=int,
        default=0,
        help="local Runtime API port, one per node on a host (default: a free one)",
    )
    start.add_argument(
        "--flower-defaults",
        action="store_true",
        help="run Flower's plain SuperNode (a new ClientApp process per message, "
        "3 s polls, 30 s heartbeats): ~10x slower rounds; for comparison",
    )
    return parser


def node_deploy_main(argv: list[str]) -> int:
    """``medfed node keys|start ...``: 0 on success (or Ctrl-C), 1 on failure, 2 on bad input."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "keys":
            private, public = create_node_keys(Path(args.dir).expanduser(), force=args.force)
            print(
                f"private key {private} (keep it here, mode 0600)\npublic key  {public}: send "
                "it to the coordinator, who runs\n  medfed coordinator add-node COORD_DIR "
                f"<hospital name> {public.name}"
            )
            return EXIT_OK
        return start_node(args)
    except DeployError as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if args.command == "keys" else EXIT_FAILED
