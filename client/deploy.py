"""The hospital side of a real federation: ``medfed node keys`` and ``medfed node start``.

``node keys DIR`` writes the node's key pair (ECDSA P-384; ``DIR/node.key`` in OpenSSH private
format, mode 0600, and ``DIR/node.pub``, an OpenSSH public key line, what ``flwr supernode
register`` takes). The coordinator registers the public key; the SuperLink then admits only a
SuperNode that proves it holds the private key.

``node start`` checks the dataset card first (the same checks as ``medfed node check``) and the
policy file, then runs the node's SuperNode over TLS (the coordinator's CA certificate) with the
node key: by default the fast setup of :mod:`medfed.client.runtime` (short polls, a long-lived
ClientApp worker started and stopped with the SuperNode), with ``--flower-defaults`` Flower's
plain ``flower-supernode``. The dataset card, the policy and the ledger folder go into the
SuperNode's own ``--node-config``: the ClientApp takes them from there, never from the study
the server sends (:func:`medfed.client.node.local_study`). Flower's files live in
``<key folder>/flwr`` (its ``FLWR_HOME``). Ctrl-C (or SIGTERM) stops the SuperNode and its worker
and ends with status 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medfed.client.runtime import DEFAULT_HEARTBEAT, flower_env, free_port, supernode_command

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STOP_GRACE = 30.0  # seconds a child gets to stop after SIGINT/SIGTERM before SIGKILL
HELD = "Failed to activate SuperNode"
"""What Flower's SuperNode logs when the SuperLink still counts its key as online."""
HELD_RETRY = 1.0  # seconds between two starts while the SuperLink holds the key (a start
# costs 2-5 s of Python and Flower start-up, so the node is back a few seconds after the
# SuperLink lets the old session go)
FLOWER_HEARTBEAT = 30.0  # Flower's own heartbeat interval (--flower-defaults)


class DeployError(RuntimeError):
    """A deployment step cannot go on; the message is one sentence naming the file or setting."""


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (mode 0600, also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def create_node_keys(folder: Path, comment: str = "medfed-node", *,
                     force: bool = False) -> tuple[Path, Path]:
    """Write ``node.key`` (private, 0600) and ``node.pub`` into ``folder``; return both paths."""
    private, public = folder / "node.key", folder / "node.pub"
    if private.exists() and not force:
        raise DeployError(f"{private} exists already; keep it (its public key may be registered) "
                          "or pass --force to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    write_private(private, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH)
                       + f" {comment}\n".encode())
    return private, public


def load_ssh_key(path: Path, *, public: bool, where: str, hint: str) -> bytes:
    """The bytes of the ECDSA key in OpenSSH format at ``path`` (a ``public`` key or an
    unencrypted private one); :class:`DeployError` ``"<where>: <hint>"`` when it is anything
    else."""
    try:
        data = path.read_bytes()
        key = (serialization.load_ssh_public_key(data) if public
               else serialization.load_ssh_private_key(data, None))
    except OSError as exc:
        raise DeployError(f"{where}: cannot read it ({exc.strerror})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    expected = ec.EllipticCurvePublicKey if public else ec.EllipticCurvePrivateKey
    if not isinstance(key, expected):
        raise DeployError(f"{where}: {hint}")
    return data


def check_private_key(path: Path) -> None:
    """Raise :class:`DeployError` unless ``path`` is an EC private key in OpenSSH format."""
    load_ssh_key(path, public=False, where=f"--key {path}",
                 hint="not an unencrypted ECDSA private key in OpenSSH format; create one with "
                      "`medfed node keys DIR`")


def run_child(command: list[str], env: Mapping[str, str],
              started: Callable[[subprocess.Popen], None] | None = None,
              watch: Sequence[str] = (), seen: set[str] | None = None) -> int:
    """Run ``command`` until it ends or we are told to stop; return its status (0 once stopped).

    The child gets its own process group, so a terminal's Ctrl-C reaches only this process,
    which forwards SIGINT/SIGTERM, waits up to ``STOP_GRACE`` seconds and then kills it.
    ``started(child)`` runs once the child is up (e.g. to register node keys). With ``watch``,
    the child's output passes through this process, and each watched text it contains is added
    to ``seen``.
    """
    piped = bool(watch)
    child = subprocess.Popen(command, env={**env, "PYTHONUNBUFFERED": "1"} if piped else dict(env),
                             process_group=0, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE if piped else None,
                             stderr=subprocess.STDOUT if piped else None)
    relay = None
    if piped:
        import threading

        relay = threading.Thread(target=_relay, args=(child, watch, seen if seen is not None
                                                      else set()), daemon=True)
        relay.start()
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if child.poll() is None:
            child.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if started is not None:
            started(child)
        while child.poll() is None and not stopping:
            time.sleep(0.2)
        if stopping:
            try:
                child.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return EXIT_OK
        return int(child.returncode)
    except BaseException:
        if child.poll() is None:
            child.kill()
            child.wait()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if relay is not None:
            relay.join(timeout=5.0)


def _relay(child: subprocess.Popen, watch: Sequence[str], seen: set[str]) -> None:
    """Copy the child's output to ours line by line, noting the watched texts it contains."""
    out = getattr(sys.stdout, "buffer", None)
    for raw in child.stdout:
        line = raw.decode(errors="replace")
        if out is not None:
            out.write(raw)
        else:
            sys.stdout.write(line)
        sys.stdout.flush()
        seen.update(text for text in watch if text in line)


def _first_error(report: str) -> str:
    lines = [line for line in report.splitlines() if line.startswith("error:")]
    return (lines[0] if lines else report.splitlines()[-1]).removeprefix("error: ")


def preflight(args: argparse.Namespace) -> dict[str, str]:
    """Check the card, policy, CA and key before anything starts; return the node config."""
    from medfed.client.check import check_dataset
    from medfed.client.policy import PolicyError, load_policy

    dataset = Path(args.dataset).expanduser().resolve()
    status, report = check_dataset(dataset)
    if status != 0:
        raise DeployError(f"node check failed: {_first_error(report)} (run `medfed node check "
                          f"--dataset {dataset}` for the full report)")
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
    return config


def _record_check(dataset: Path, policy: Path) -> None:
    """Record the data check in the node's audit log (a damaged log stops the start)."""
    from medfed.client.audit import AuditTampered
    from medfed.client.audit_cli import start_check

    try:
        start_check(dataset, policy)
    except AuditTampered as exc:
        raise DeployError(f"audit log tampered: {exc} (acknowledge it with medfed node audit "
                          f"--dataset {dataset} --acknowledge REASON)") from None


def held_for(flower_defaults: bool) -> float:
    """Seconds ``node start`` keeps trying while the SuperLink refuses a key it still counts as
    online: two of the node's heartbeat intervals (the SuperLink's patience) plus a margin."""
    return 2 * (FLOWER_HEARTBEAT if flower_defaults else DEFAULT_HEARTBEAT) + 15


def start_node(args: argparse.Namespace) -> int:
    """``medfed node start``: preflight, then run the SuperNode until it ends or is stopped."""
    node_config = preflight(args)
    key = Path(args.key).expanduser().resolve()
    port = args.port or free_port()
    command = supernode_command(args.superlink, port, node_config,
                                root_certificates=Path(args.ca).expanduser().resolve(),
                                private_key=key, fast=not args.flower_defaults)
    setup = "Flower's default setup" if args.flower_defaults else "fast setup"
    print(f"medfed node: joining {args.superlink} with {node_config['dataset']} ({setup}, local "
          f"port {port}; Ctrl-C stops)", flush=True)
    # After a crash the SuperLink holds the key online for two heartbeat intervals and refuses
    # it meanwhile: keep trying that long (and a little more) before giving up.
    hold = held_for(args.flower_defaults)
    deadline = time.monotonic() + hold
    while True:
        seen: set[str] = set()
        status = run_child(command, flower_env(key.parent / "flwr"), watch=[HELD], seen=seen)
        if status == EXIT_OK or HELD not in seen or time.monotonic() > deadline:
            break
        print(f"medfed node: the coordinator still holds this node's previous connection (for "
              f"up to {hold:.0f} s after a crash); trying again in "
              f"{HELD_RETRY:.0f} s", flush=True)
        try:
            time.sleep(HELD_RETRY)
        except KeyboardInterrupt:
            return EXIT_OK
    if status != EXIT_OK:  # Flower ends every error with status 1; its log names the code
        raise DeployError(f"the SuperNode stopped with status {status}; its log above says "
                          f"why (Exit Code 305: the SuperLink at {args.superlink} refused this "
                          f"node: is the public key of {key} registered with `medfed coordinator "
                          f"add-node`? '{HELD}' for {hold:.0f} s: is this node's key already "
                          "in use by another running node?)")
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
    start.add_argument("--superlink", required=True, metavar="HOST:PORT",
                       help="the coordinator's address (printed by `medfed coordinator start`)")
    start.add_argument("--ca", required=True, metavar="CA_CRT", help="the coordinator's ca.crt")
    start.add_argument("--key", required=True, metavar="KEY", help="the node's private key")
    start.add_argument("--ledger-dir", metavar="D", help="privacy ledgers go here as "
                       "<site>.ledger.jsonl (default: <card>.ledger.jsonl beside the card)")
    start.add_argument("--port", type=int, default=0,
                       help="local Runtime API port, one per node on a host (default: a free one)")
    start.add_argument("--flower-defaults", action="store_true",
                       help="run Flower's plain SuperNode (a new ClientApp process per message, "
                            "3 s polls, 30 s heartbeats): ~10x slower rounds; for comparison")
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
            print(f"private key {private} (keep it here, mode 0600)\npublic key  {public}: send "
                  "it to the coordinator, who runs\n  medfed coordinator add-node COORD_DIR "
                  f"<hospital name> {public.name}")
            return EXIT_OK
        return start_node(args)
    except DeployError as exc:
        print(f"medfed: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if args.command == "keys" else EXIT_FAILED
