"""How a hospital node runs Flower's SuperNode with a short round latency: the command lines.

Flower 1.41's defaults, on loopback with 3 hospitals, cost 10-40 s per training round although the
training itself takes well under a second (numbers: ``benchmarks/deploy_latency.py``). Where the
time goes, per message and per hospital, and what this module sets instead:

========================================  ==================  =====================================
Flower 1.41 default                        cost per message    fast setting
========================================  ==================  =====================================
SuperNode asks the SuperLink for a         0-3 s (hard-coded   the SuperNode runs through
message, sleeps 3 s when there is none     ``time.sleep(3)``)  :func:`run_supernode`: every sleep of
(and 0.5 s while waiting for a reply)                          its loop capped at ``poll`` (0.1 s)
SuperExec asks the SuperNode for a task    0-1 s               no SuperExec: ``--isolation process``
every second                                                   and :mod:`medfed.client.worker` asks
                                                               every 0.05 s
a new ``flwr-clientapp`` process per       2-4 s (imports of   one long-lived worker process per
message: imports, unpacks the app, exits   flwr, torch,        node: imports and app loading paid
                                           medfed; the FAB;    once, before the first message
                                           torch._dynamo on    (:data:`PRELOAD`)
                                           every ``train``)
the ServerApp's Grid pulls replies,        0-3 s               :func:`medfed.server.polling.
sleeps 3 s between pulls                                       send_and_receive` (server side)
========================================  ==================  =====================================

Flower offers no flag or environment variable for the SuperNode's 3 s sleep nor for the Grid's
(only SuperExec's: ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, which the worker makes moot).
:func:`run_supernode` therefore replaces the ``time`` module seen by
``flwr.supernode.start_client_internal`` with one whose ``sleep`` is capped, then runs Flower's
own ``flower-supernode`` entry point unchanged: every flag (TLS, node authentication,
``--node-config``) keeps its meaning. If a later Flower moves that loop, the launcher says so and
runs Flower unpatched. A 0.1 s poll is ten small HTTP requests per second from each node to the
SuperLink while idle; raise ``poll`` for hundreds of nodes or slow links.

``fast=False`` gives Flower's plain command (subprocess isolation, Flower's own intervals), for
comparison and as a fallback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from medfed.client.worker import DEFAULT_POLL as WORKER_POLL

DEFAULT_POLL = 0.1
"""Seconds the SuperNode waits before asking the SuperLink again for a message (Flower: 3 s)."""

FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
"""No telemetry, no update check, and no ``uv sync`` of the app's dependencies per run (which
could replace the pinned CPU torch): the node runs the medfed that is installed."""

PRELOAD = ("medfed.client.app", "torch._dynamo")
"""Modules the worker imports before it takes tasks: the ClientApp (flwr, torch, medfed) and
``torch._dynamo``, which torch imports (with sympy, ~800 modules) the first time any optimizer is
built: measured 1.5-4 s here, paid by the first ``train`` message otherwise -- and by *every*
``train`` message in Flower's default one-process-per-message setup."""

NodeConfig = Mapping[str, str | int | float | bool]


def node_config_arg(node_config: NodeConfig | str) -> str:
    """``--node-config``'s value: space-separated ``key=value``, strings quoted."""
    if isinstance(node_config, str):
        return node_config
    return " ".join(f"{key}={json.dumps(value)}" for key, value in node_config.items())


def node_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment of a node's processes: ``base`` plus :data:`FLWR_ENV`."""
    return {**base, **FLWR_ENV}


def supernode_command(superlink: str, port: int, node_config: NodeConfig | str, *,
                      root_certificates: Path | None = None,
                      auth_private_key: Path | None = None, host: str = "127.0.0.1",
                      fast: bool = True, poll: float = DEFAULT_POLL) -> list[str]:
    """The command line of one hospital's SuperNode.

    Parameters
    ----------
    superlink
        The coordinator's SuperLink, ``host:port``.
    port, host
        Where this SuperNode serves its Runtime API (one port per node on a host); the worker
        of :func:`clientapp_command` connects there.
    node_config
        ``--node-config`` (a mapping or the string itself), e.g. the dataset card's path.
    root_certificates
        CA certificate of the SuperLink's TLS; ``None`` connects without TLS (``--insecure``).
    auth_private_key
        The node's key for SuperNode authentication (needs TLS).
    fast
        ``True``: the launcher with short polls and ``--isolation process`` (start the worker
        too); ``False``: Flower's plain ``flower-supernode`` with its own ClientApp processes.
    poll
        The SuperNode's idle poll in seconds (``fast`` only).
    """
    if fast:
        command = [sys.executable, "-m", "medfed.client.runtime", "--poll", str(poll),
                   "--isolation", "process"]
    else:
        command = [str(Path(sys.executable).with_name("flower-supernode"))]
    command += ["--superlink", superlink, "--host", host, "--port", str(port),
                "--node-config", node_config_arg(node_config)]
    command += (["--root-certificates", str(root_certificates)] if root_certificates
                else ["--insecure"])
    if auth_private_key:
        command += ["--auth-supernode-private-key", str(auth_private_key)]
    return command


def clientapp_command(port: int, *, host: str = "127.0.0.1", parent_pid: int | None = None,
                      poll: float = WORKER_POLL,
                      preload: Sequence[str] = PRELOAD) -> list[str]:
    """The long-lived ClientApp worker for the fast SuperNode on ``host:port``.

    The Runtime API between a SuperNode and its worker stays on the node's own host (plain HTTP
    on 127.0.0.1 by default): TLS and authentication protect the SuperNode-SuperLink link.
    ``parent_pid`` (the SuperNode's pid) makes the worker exit with its SuperNode.
    """
    command = [sys.executable, "-m", "medfed.client.worker", "--runtime-api-address",
               f"{host}:{port}", "--insecure", "--poll", str(poll)]
    for module in preload:
        command += ["--preload", module]
    if parent_pid is not None:
        command += ["--parent-pid", str(parent_pid)]
    return command


class _CappedSleep:
    """Stands in for the ``time`` module in one Flower module: ``sleep`` waits at most ``cap``."""

    def __init__(self, cap: float) -> None:
        self._cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str):
        return getattr(time, name)


def run_supernode(argv: Sequence[str], poll: float = DEFAULT_POLL) -> None:
    """Run Flower's ``flower-supernode`` with ``argv``, every sleep of its main loop capped."""
    from flwr.supernode import start_client_internal as loop

    if getattr(loop, "time", None) is time:
        loop.time = _CappedSleep(poll)  # type: ignore[attr-defined]
    else:
        logging.getLogger("medfed").warning(
            "this Flower version's SuperNode loop does not use the time module as flwr 1.41 "
            "does: running it with Flower's own poll intervals")
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m medfed.client.runtime [--poll S] <flower-supernode arguments>``."""
    parser = argparse.ArgumentParser(
        prog="python -m medfed.client.runtime",
        description="flower-supernode with short polls; every other argument goes to it.")
    parser.add_argument("--poll", type=float, default=DEFAULT_POLL,
                        help=f"the SuperNode's idle poll in seconds (default {DEFAULT_POLL})")
    args, rest = parser.parse_known_args(argv)
    if not 0 < args.poll <= 3:
        parser.exit(2, f"--poll must be between 0 and 3 seconds (got {args.poll})\n")
    run_supernode(rest, args.poll)


if __name__ == "__main__":
    main()
