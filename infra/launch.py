"""The command lines and environments of Flower's processes, as medfed starts them.

Every setting of a SuperLink, a SuperNode and a node's ClientApp worker is chosen here, once, for
both sides: the coordinator (``medfed coordinator start``), the hospital (``medfed node start``)
and the loopback federation of the tests and benchmarks build their commands with these
functions. The modules they start are named by string (``python -m medfed.client...``): this
module imports no medfed package. Why each fast setting exists: :mod:`medfed.client.supernode`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from medfed.infra.processes import BIN, flower_env

DEFAULT_POLL = 0.1
"""Seconds the SuperNode waits before asking the SuperLink again for a message (Flower: 3 s)."""


DEFAULT_HEARTBEAT = 10.0
"""Heartbeat interval (s) the fast SuperNode announces: the SuperLink's minimum (Flower: 30 s)."""


PRELOAD = ("medfed.client.app", "torch._dynamo")
"""Modules the worker imports before it takes tasks: the ClientApp (flwr, torch, medfed) and
``torch._dynamo``, which torch imports (with sympy, ~800 modules) the first time any optimizer is
built: measured 1.5-4 s here, paid by the first ``train`` message otherwise -- and by *every*
``train`` message in Flower's default one-process-per-message setup."""


NodeConfig = Mapping[str, str | int | float | bool]


WORKER_POLL = 0.05
"""Seconds between two ``AcquireTask`` calls of an idle ClientApp worker (SuperExec: 1 s)."""
WORKER_READY = "serving the ClientApp tasks of"
"""What the worker logs once it asks for tasks (after ``--preload``)."""
SUPEREXEC_POLL = 0.05
"""Seconds between the SuperLink's SuperExec checks for a run to start (Flower: 1 s)."""
POLL_ENV = "MEDFED_GRID_POLL"
"""Environment variable of the ServerApp's process (inherited from the SuperLink) overriding the
Grid's poll (:func:`medfed.infra.polling.grid_poll`); ``3`` reproduces Flower's own loop."""


def node_config_arg(node_config: NodeConfig | str) -> str:
    """``--node-config``'s value: space-separated ``key=value``, strings quoted."""
    if isinstance(node_config, str):
        return node_config
    return " ".join(f"{key}={json.dumps(value)}" for key, value in node_config.items())


def supernode_command(
    superlink: str,
    port: int,
    node_config: NodeConfig | str,
    *,
    root_certificates: Path | None,
    private_key: Path | None,
    host: str = "127.0.0.1",
    fast: bool = True,
    poll: float = DEFAULT_POLL,
    heartbeat: float = DEFAULT_HEARTBEAT,
) -> list[str]:
    """The command line of one hospital's SuperNode (every node setting in one place).

    Parameters
    ----------
    superlink
        The coordinator's SuperLink, ``host:port``.
    port, host
        Where this SuperNode serves its Runtime API (one port per node on a host); its worker
        connects there.
    node_config
        ``--node-config`` (a mapping or the string itself), e.g. the dataset card's path.
    root_certificates
        CA certificate of the SuperLink's TLS; ``None`` connects without TLS (``--insecure``:
        test federations only, a TLS SuperLink refuses it).
    private_key
        The node's key for SuperNode authentication (needs TLS).
    fast
        ``True``: the launcher of this module (short polls and heartbeats, ``--isolation
        process`` and its own long-lived worker); ``False``: Flower's plain ``flower-supernode``
        with a new ClientApp process per message.
    poll, heartbeat
        The fast SuperNode's idle poll and announced heartbeat interval, in seconds.
    """
    if fast:
        command = [
            sys.executable,
            "-m",
            "medfed.client.supernode.launcher",
            "--poll",
            str(poll),
            "--heartbeat",
            str(heartbeat),
        ]
    else:
        command = [str(BIN / "flower-supernode")]
    command += [
        "--superlink",
        superlink,
        "--host",
        host,
        "--port",
        str(port),
        "--node-config",
        node_config_arg(node_config),
    ]
    command += (
        ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
    )
    if private_key is not None:
        command += ["--auth-supernode-private-key", str(private_key)]
    return command


def clientapp_command(
    port: int,
    *,
    host: str = "127.0.0.1",
    parent_pid: int | None = None,
    poll: float = WORKER_POLL,
    preload: Sequence[str] = PRELOAD,
) -> list[str]:
    """The long-lived ClientApp worker of the fast SuperNode whose Runtime API is ``host:port``;
    ``parent_pid`` (the SuperNode's) makes the worker exit with it."""
    command = [
        sys.executable,
        "-m",
        "medfed.client.supernode.worker",
        "--runtime-api-address",
        f"{host}:{port}",
        "--insecure",
        "--poll",
        str(poll),
    ]
    for module in preload:
        command += ["--preload", module]
    if parent_pid is not None:
        command += ["--parent-pid", str(parent_pid)]
    return command


def superlink_command(
    port: int,
    database: Path | None = None,
    *,
    host: str = "127.0.0.1",
    tls: tuple[Path, Path, Path] | None = None,
    node_auth: bool = False,
) -> list[str]:
    """``flower-superlink`` on ``host:port``; ``tls`` = (CA, certificate, key) or ``--insecure``;
    ``node_auth`` admits registered node keys only. It runs through
    :mod:`medfed.infra.superlink`: its Control and Runtime APIs answer loopback callers only."""
    command = [
        sys.executable,
        "-m",
        "medfed.infra.superlink",
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if database is not None:
        command += ["--database", str(database)]
    if tls is None:
        command.append("--insecure")
    else:
        ca, cert, key = tls
        command += [
            "--ssl-ca-certfile",
            str(ca),
            "--ssl-certfile",
            str(cert),
            "--ssl-keyfile",
            str(key),
        ]
    if node_auth:
        command.append("--enable-supernode-auth")
    return command


def superlink_env(
    flwr_home: Path, fast: bool = True, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The SuperLink's environment (inherited by the ServerApp it starts): the fast setup's
    SuperExec poll, or Flower's intervals (``fast=False``)."""
    env = flower_env(flwr_home, base)
    if fast:
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(SUPEREXEC_POLL)
    else:
        env[POLL_ENV] = "3"
    return env
