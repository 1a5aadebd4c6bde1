"""How medfed runs Flower's processes: the SuperNode (fast or Flower's plain setup), their
environment, ports and stopping. ``medfed node start`` and the loopback federation of the tests
and benchmark use these builders; :mod:`medfed.server.runtime` has the SuperLink's.

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
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from medfed.client.worker import DEFAULT_POLL as WORKER_POLL

BIN = Path(sys.executable).parent
DEFAULT_POLL = 0.1
"""Seconds the SuperNode waits before asking the SuperLink again for a message (Flower: 3 s)."""
DEFAULT_HEARTBEAT = 10.0
"""Heartbeat interval (s) the fast SuperNode announces: the SuperLink's minimum (Flower: 30 s)."""

FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
"""No telemetry, no update check, and no ``uv sync`` of the app's dependencies per run (which
could replace the pinned CPU torch): every Flower process runs the medfed that is installed."""

PRELOAD = ("medfed.client.app", "torch._dynamo")
"""Modules the worker imports before it takes tasks: the ClientApp (flwr, torch, medfed) and
``torch._dynamo``, which torch imports (with sympy, ~800 modules) the first time any optimizer is
built: measured 1.5-4 s here, paid by the first ``train`` message otherwise -- and by *every*
``train`` message in Flower's default one-process-per-message setup."""

NodeConfig = Mapping[str, str | int | float | bool]


def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a Flower process: ``base`` (default: ours) plus :data:`FLWR_ENV`,
    its own ``FLWR_HOME`` and this installation's scripts first on ``PATH`` (Flower starts its
    helpers, e.g. ``flwr-serverapp``, by name)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    base = os.environ if base is None else base
    path = os.pathsep.join([str(BIN), base.get("PATH", "")])
    return {**base, **FLWR_ENV, "FLWR_HOME": str(flwr_home), "PATH": path}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop(processes: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM to each process (by its id, in order), SIGKILL to any left after ``grace`` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in processes if p.poll() is None]
        for process in alive:
            process.send_signal(sig)
        deadline = time.monotonic() + grace
        for process in alive:
            try:
                process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                continue


def node_config_arg(node_config: NodeConfig | str) -> str:
    """``--node-config``'s value: space-separated ``key=value``, strings quoted."""
    if isinstance(node_config, str):
        return node_config
    return " ".join(f"{key}={json.dumps(value)}" for key, value in node_config.items())


def supernode_command(superlink: str, port: int, node_config: NodeConfig | str, *,
                      root_certificates: Path | None, private_key: Path | None,
                      host: str = "127.0.0.1", fast: bool = True, poll: float = DEFAULT_POLL,
                      heartbeat: float = DEFAULT_HEARTBEAT) -> list[str]:
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
        command = [sys.executable, "-m", "medfed.client.runtime", "--poll", str(poll),
                   "--heartbeat", str(heartbeat)]
    else:
        command = [str(BIN / "flower-supernode")]
    command += ["--superlink", superlink, "--host", host, "--port", str(port),
                "--node-config", node_config_arg(node_config)]
    command += (["--root-certificates", str(root_certificates)] if root_certificates
                else ["--insecure"])
    if private_key is not None:
        command += ["--auth-supernode-private-key", str(private_key)]
    return command


def clientapp_command(port: int, *, host: str = "127.0.0.1", parent_pid: int | None = None,
                      poll: float = WORKER_POLL,
                      preload: Sequence[str] = PRELOAD) -> list[str]:
    """The long-lived ClientApp worker of the fast SuperNode whose Runtime API is ``host:port``;
    ``parent_pid`` (the SuperNode's) makes the worker exit with it."""
    command = [sys.executable, "-m", "medfed.client.worker", "--runtime-api-address",
               f"{host}:{port}", "--insecure", "--poll", str(poll)]
    for module in preload:
        command += ["--preload", module]
    if parent_pid is not None:
        command += ["--parent-pid", str(parent_pid)]
    return command


PULL_BACKOFF = 0.02
"""First pause (s) before asking again for an object that has not arrived yet (Flower: 1 s)."""
PULL_BACKOFF_CAP = 2.0
"""Longest pause (s) between two asks for the same object (Flower: 10 s)."""


def quick_object_pulls(module: object, name: str = "pull_objects") -> bool:
    """Make ``module.<name>`` (Flower's ``pull_objects`` or ``pull_and_inflate_object_from_tree``
    as one of its modules imported it) wait :data:`PULL_BACKOFF` s, not 1 s, for an object that
    is not there yet; returns whether it could (``False``: this Flower differs from 1.41's).

    A message becomes visible before its objects have arrived: the SuperNode stores a message and
    creates its task before it pulls the message's objects from the SuperLink, and a sender
    pushes the message before its objects. Whoever pulls at once finds an object missing and, with
    Flower's backoff, sleeps 1 s (then 2 s...) although the object arrives milliseconds later:
    measured 1.1-1.8 s of every message's 1.2-1.9 s in the worker, and the same again at the
    SuperNode and the ServerApp. The number of tries and the overall time limit stay Flower's.
    """
    import functools
    import inspect

    pull = getattr(module, name, None)
    if pull is None:
        return False
    if getattr(pull, "_medfed_quick", False):
        return True
    if not {"initial_backoff", "backoff_cap"} <= set(inspect.signature(pull).parameters):
        return False
    quick = functools.partial(pull, initial_backoff=PULL_BACKOFF, backoff_cap=PULL_BACKOFF_CAP)
    quick._medfed_quick = True  # type: ignore[attr-defined]
    setattr(module, name, quick)
    return True


class _CappedSleep:
    """Stands in for the ``time`` module in one Flower module: ``sleep`` waits at most ``cap``."""

    def __init__(self, cap: float) -> None:
        self._cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str):
        return getattr(time, name)


def waiting_reply_run(state: object) -> int | None:
    """The run of a reply that waits in a SuperNode's state to be sent, if any (``None`` also
    when ``state`` is not Flower 1.41's in-memory NodeState). Looks without taking it."""
    store, lock = getattr(state, "msg_store", None), getattr(state, "lock_msg_store", None)
    if not isinstance(store, dict) or lock is None:
        return None
    with lock:
        for entry in store.values():
            metadata = entry.message.metadata
            if not entry.is_retrieved and metadata.reply_to_message_id:
                return int(metadata.run_id)
    return None


def drop_stopped_run(state: object, store: object, run_id: int) -> int:
    """Forget what a SuperNode holds of a stopped run: finish its unfinished tasks (their tokens
    are revoked, so a ClientApp still working on one gives up at its next call) and delete its
    messages and their objects. Returns how many tasks were finished."""
    from flwr.common.constant import Status, SubStatus

    tasks = state.get_tasks(run_ids=[run_id],  # type: ignore[attr-defined]
                            statuses=[Status.PENDING, Status.STARTING, Status.RUNNING])
    finished = sum(bool(state.finish_task(  # type: ignore[attr-defined]
        task.task_id, SubStatus.STOPPED, "its run was stopped while the SuperNode received "
        "its message")) for task in tasks)
    lock = getattr(state, "lock_msg_store", None)
    messages = getattr(state, "msg_store", None)
    if lock is not None and isinstance(messages, dict):
        with lock:
            ids = [mid for mid, entry in messages.items()
                   if entry.message.metadata.run_id == run_id]
        state.delete_messages(message_ids=ids)  # type: ignore[attr-defined]
        for message_id in ids:
            store.delete(message_id)  # type: ignore[attr-defined]
    return finished


def robust_receive(pull: Callable[..., int | None]) -> Callable[..., int | None]:
    """Flower's ``_pull_and_store_message`` (the SuperNode's receive step), made safe against a
    run stopped while one of its messages is received.

    Flower 1.41 creates the message's task and stores the message before it pulls the message's
    objects. When the run is stopped meanwhile, it logs "not in RUNNING status. Ignoring message"
    and returns -- leaving the task and the half-received message behind:

    * a ClientApp takes the task and waits for objects that never come (Flower's pull gives up
      after 500 tries: ~17 min here, over an hour with Flower's backoff). The long-lived worker
      runs one task at a time, so the node answered nothing in the next study (seen after
      ``flwr stop``). Here the stopped run's tasks are finished and its messages dropped
      (:func:`drop_stopped_run`): the worker's next call is refused and it moves on.
    * a ClientApp that got the objects in time replies. Flower's loop sends replies only right
      after it received a message (one message at a time), so that stale reply went out in place
      of the next message's reply, which was left behind, and the node waited for ever for a
      message the coordinator would not send before that reply. Here an empty receive with a
      reply waiting (:func:`waiting_reply_run`) returns the reply's run, and Flower's loop sends
      it.
    """
    import functools

    from flwr.supercore.run import RunNotRunningException

    @functools.wraps(pull)
    def receive_step(*args: object, **kwargs: object) -> int | None:
        received: list[int] = []
        stopped: list[bool] = []

        def noting(name: str, fn: Callable[..., object]) -> Callable[..., object]:
            def call(*a: object, **k: object) -> object:
                try:
                    result = fn(*a, **k)
                except RunNotRunningException:
                    stopped.append(True)
                    raise
                if name == "receive" and result is not None:
                    received.append(int(result[0].metadata.run_id))  # type: ignore[index]
                return result
            return call

        for name in ("receive", "get_run", "get_fab", "pull_object",
                     "confirm_message_received"):
            if callable(kwargs.get(name)):
                kwargs[name] = noting(name, kwargs[name])  # type: ignore[arg-type]
        run_id = pull(*args, **kwargs)
        state = kwargs.get("state", args[0] if args else None)
        if run_id is None and stopped and received and state is not None:
            count = drop_stopped_run(state, kwargs.get("object_store"), received[0])
            from flwr.common.logger import log  # beside Flower's "Ignoring message" line

            log(logging.INFO, "medfed: run %d was stopped while this node received its "
                "message: its %d unfinished task(s) and its messages are dropped", received[0],
                count)
        if run_id is None:
            run_id = waiting_reply_run(state)
        return run_id

    receive_step._medfed_robust = True  # type: ignore[attr-defined]
    return receive_step


def _patch_flower(poll: float, heartbeat: float) -> None:
    """Cap the SuperNode loop's sleeps at ``poll``, shorten its object pulls' backoff, make its
    receive step safe against stopped runs (:func:`robust_receive`) and announce ``heartbeat`` s
    heartbeats."""
    from flwr.supercore import heartbeat as sender
    from flwr.supernode import fleet_http_connection as fleet
    from flwr.supernode import start_client_internal as loop

    patched = getattr(loop, "time", None) is time and quick_object_pulls(loop)
    pull = getattr(loop, "_pull_and_store_message", None)
    if pull is None:
        patched = False
    elif not getattr(pull, "_medfed_robust", False):
        loop._pull_and_store_message = robust_receive(pull)  # type: ignore[attr-defined]
    if getattr(loop, "time", None) is time:
        loop.time = _CappedSleep(poll)  # type: ignore[attr-defined]
    for module in (sender, fleet):
        if hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
            module.HEARTBEAT_DEFAULT_INTERVAL = heartbeat  # type: ignore[attr-defined]
        else:
            patched = False
    if not patched:
        logging.getLogger("medfed").warning(
            "this Flower version's SuperNode differs from flwr 1.41's: some of its poll or "
            "heartbeat intervals keep Flower's values")


def run_supernode(argv: Sequence[str], poll: float = DEFAULT_POLL,
                  heartbeat: float = DEFAULT_HEARTBEAT, host: str = "127.0.0.1",
                  port: int = 9094) -> None:
    """Run Flower's ``flower-supernode`` with ``argv`` in process isolation, its loop's sleeps
    capped, and its worker as a child process for as long as it runs."""
    _patch_flower(poll, heartbeat)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    worker = Supervised(clientapp_command(port, host=host, parent_pid=os.getpid()), "worker")
    sys.argv = ["flower-supernode", *argv, "--isolation", "process", "--host", host,
                "--port", str(port)]
    try:
        flower_supernode()
    finally:
        worker.close()


class Supervised:
    """A child process that is started again whenever it exits, until :meth:`close`.

    The fast SuperNode's worker runs every message of the node: if it died (killed by the
    kernel for memory, a crash in a native library) while the SuperNode stayed up, the node
    would look online to the coordinator and answer nothing. It is restarted after ``delay``
    seconds, doubled (up to 60 s) while it keeps dying within a minute of its start.
    """

    def __init__(self, command: Sequence[str], name: str, delay: float = 1.0) -> None:
        import threading

        self.command, self.name, self.delay = list(command), name, delay
        self.restarts = 0
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.process = self._spawn()
        self._thread = threading.Thread(target=self._watch, name=f"{name}-watch", daemon=True)
        self._thread.start()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, stdin=subprocess.DEVNULL)

    def _watch(self) -> None:
        delay = self.delay
        while not self._closed.is_set():
            started = time.monotonic()
            code = self.process.wait()
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, 60.0) if time.monotonic() - started < 60 else self.delay
            logging.getLogger("medfed").warning(
                "the node's ClientApp %s exited (code %s); starting it again", self.name, code)
            with self._lock:
                if self._closed.is_set():
                    return
                self.process = self._spawn()
                self.restarts += 1

    def close(self, grace: float = 5.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL after ``grace`` s) and do not restart it."""
        with self._lock:
            self._closed.set()
        stop([self.process], grace=grace)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m medfed.client.runtime [--poll S] [--heartbeat S] [--host H] [--port P]
    <other flower-supernode arguments>``."""
    parser = argparse.ArgumentParser(
        prog="python -m medfed.client.runtime",
        description="flower-supernode with short polls and a long-lived ClientApp worker; "
                    "every other argument goes to flower-supernode.")
    parser.add_argument("--poll", type=float, default=DEFAULT_POLL,
                        help=f"the SuperNode's idle poll in seconds (default {DEFAULT_POLL})")
    parser.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT,
                        help="heartbeat interval announced to the SuperLink, 10-1800 s "
                             f"(default {DEFAULT_HEARTBEAT:g})")
    parser.add_argument("--host", default="127.0.0.1", help="the Runtime API's host")
    parser.add_argument("--port", type=int, default=9094, help="the Runtime API's port")
    args, rest = parser.parse_known_args(argv)
    if not 0 < args.poll <= 3:
        parser.exit(2, f"--poll must be between 0 and 3 seconds (got {args.poll})\n")
    if not 10 <= args.heartbeat <= 1800:
        parser.exit(2, f"--heartbeat must be between 10 and 1800 seconds, the range the "
                       f"SuperLink accepts (got {args.heartbeat})\n")
    run_supernode(rest, args.poll, args.heartbeat, args.host, args.port)


if __name__ == "__main__":
    main()
