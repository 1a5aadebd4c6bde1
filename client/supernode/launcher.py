"""How medfed runs Flower's processes: the SuperNode (fast or Flower's plain setup), their
environment, ports and stopping. ``medfed node start`` and the loopback federation of the tests
and benchmark use these builders; :mod:`medfed.infra.loopback` has the SuperLink's.

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
every second                                                   and
:mod:`medfed.client.supernode.worker` asks
                                                               every 0.05 s
a new ``flwr-clientapp`` process per       2-4 s (imports of   one long-lived worker process per
message: imports, unpacks the app, exits   flwr, torch,        node: imports and app loading paid
                                           medfed; the FAB;    once, before the first message
                                           torch._dynamo on    (:data:`PRELOAD`)
                                           every ``train``)
the ServerApp's Grid pulls replies,        0-3 s               :func:`medfed.infra.polling.
sleeps 3 s between pulls                                       send_and_receive` (server side)
an object of a message is not there yet    1 s, then 2 s...    :func:`quick_object_pulls`: 0.02 s
(the message is visible first): the        (at each of three   first retry, in the SuperNode, the
puller sleeps 1 s before asking again      hops)               worker and the ServerApp's Grid
========================================  ==================  =====================================

Flower offers no flag or environment variable for the SuperNode's 3 s sleep nor for the Grid's
(only SuperExec's: ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, which the worker makes moot).
:func:`run_supernode` therefore replaces the ``time`` module seen by
``flwr.supernode.start_client_internal`` with one whose ``sleep`` is capped, starts the node's
worker (:func:`clientapp_command`) as its own child, then runs Flower's own ``flower-supernode``
entry point unchanged: every flag (TLS to the SuperLink, node authentication, ``--node-config``)
keeps its meaning. If a later Flower moves that loop, the launcher says so and runs Flower
unpatched. A 0.1 s poll is ten small HTTP requests per second from each node to the SuperLink
while idle; raise ``poll`` for hundreds of nodes or slow links.

The worker and its SuperNode are one unit: the launcher stops the worker (by its id) when the
SuperNode ends, also on Ctrl-C/SIGTERM, and the worker exits by itself when the launcher dies
(even by SIGKILL: it watches its parent's id). The link between them is the SuperNode's Runtime
API on 127.0.0.1, plain HTTP: in Flower 1.41 that API speaks TLS only when the SuperNode gets
``--ssl-certfile``/``--ssl-keyfile``, which a local-only port does not need; TLS and the node key
protect the link to the SuperLink.

Dropouts: a SuperNode tells the SuperLink it is alive every ~20 s and announces a 30 s heartbeat
interval, so a node that dies without signing off (power cut, SIGKILL) stays "online" for 60 s
(Flower's patience: two intervals) and the server waits for it. The fast launcher announces
:data:`DEFAULT_HEARTBEAT` (10 s, the least the SuperLink accepts): heartbeats every ~4 s, and a
dead node is offline after at most 20 s.

Stopped runs: Flower 1.41's SuperNode can be jammed by ``flwr stop`` hitting a message it is
receiving (a task left waiting for objects, or a stale reply sent in place of the next one); the
node then answers nothing in later studies. The launcher wraps its receive step
(:func:`robust_receive`) so that the stopped run is dropped and replies are never left behind.

``fast=False`` gives Flower's plain command (subprocess isolation, Flower's own intervals), for
comparison and as a fallback (``medfed node start --flower-defaults``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from medfed.infra.flower_patches import patch_supernode
from medfed.infra.launch import DEFAULT_HEARTBEAT, DEFAULT_POLL, clientapp_command
from medfed.infra.processes import Supervised


def run_supernode(
    argv: Sequence[str],
    poll: float = DEFAULT_POLL,
    heartbeat: float = DEFAULT_HEARTBEAT,
    host: str = "127.0.0.1",
    port: int = 9094,
) -> None:
    """Run Flower's ``flower-supernode`` with ``argv`` in process isolation, its loop's sleeps
    capped, and its worker as a child process for as long as it runs."""
    patch_supernode(poll, heartbeat)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    worker = Supervised(clientapp_command(port, host=host, parent_pid=os.getpid()), "worker")
    sys.argv = [
        "flower-supernode",
        *argv,
        "--isolation",
        "process",
        "--host",
        host,
        "--port",
        str(port),
    ]
    try:
        flower_supernode()
    finally:
        worker.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m medfed.client.supernode.launcher [--poll S] [--heartbeat S] [--host H] [--port P]
    <other flower-supernode arguments>``."""
    parser = argparse.ArgumentParser(
        prog="python -m medfed.client.supernode.launcher",
        description="flower-supernode with short polls and a long-lived ClientApp worker; "
        "every other argument goes to flower-supernode.",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=DEFAULT_POLL,
        help=f"the SuperNode's idle poll in seconds (default {DEFAULT_POLL})",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        help="heartbeat interval announced to the SuperLink, 10-1800 s "
        f"(default {DEFAULT_HEARTBEAT:g})",
    )
    parser.add_argument("--host", default="127.0.0.1", help="the Runtime API's host")
    parser.add_argument("--port", type=int, default=9094, help="the Runtime API's port")
    args, rest = parser.parse_known_args(argv)
    if not 0 < args.poll <= 3:
        parser.exit(2, f"--poll must be between 0 and 3 seconds (got {args.poll})\n")
    if not 10 <= args.heartbeat <= 1800:
        parser.exit(
            2,
            f"--heartbeat must be between 10 and 1800 seconds, the range the "
            f"SuperLink accepts (got {args.heartbeat})\n",
        )
    run_supernode(rest, args.poll, args.heartbeat, args.host, args.port)


if __name__ == "__main__":
    main()
