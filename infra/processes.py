"""Starting, watching and stopping the processes of a federation, and their environment.

Both sides start Flower's processes (the coordinator its SuperLink, a hospital its SuperNode and
worker) and both must stop them by process id, never by name: what is here is shared by
:mod:`medfed.server` and :mod:`medfed.client` and imports neither.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

BIN = Path(sys.executable).parent


FLWR_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
"""No telemetry, no update check, and no ``uv sync`` of the app's dependencies per run (which
could replace the pinned CPU torch): every Flower process runs the medfed that is installed."""


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


EXIT_OK = 0
STOP_GRACE = 30.0  # seconds a child gets to stop after SIGINT/SIGTERM before SIGKILL


def run_child(
    command: list[str],
    env: Mapping[str, str],
    started: Callable[[subprocess.Popen], None] | None = None,
    watch: Sequence[str] = (),
    seen: set[str] | None = None,
) -> int:
    """Run ``command`` until it ends or we are told to stop; return its status (0 once stopped).

    The child gets its own process group, so a terminal's Ctrl-C reaches only this process,
    which forwards SIGINT/SIGTERM, waits up to ``STOP_GRACE`` seconds and then kills it.
    ``started(child)`` runs once the child is up (e.g. to register node keys). With ``watch``,
    the child's output passes through this process, and each watched text it contains is added
    to ``seen``.
    """
    piped = bool(watch)
    child = subprocess.Popen(
        command,
        env={**env, "PYTHONUNBUFFERED": "1"} if piped else dict(env),
        process_group=0,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if piped else None,
        stderr=subprocess.STDOUT if piped else None,
    )
    relay = None
    if piped:
        import threading

        relay = threading.Thread(
            target=_relay, args=(child, watch, seen if seen is not None else set()), daemon=True
        )
        relay.start()
    stopping: list[int] = []
    started_by_child: list[int] = []  # what the child started: stopped with it (proctree)

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if child.poll() is None:
            started_by_child.extend(descendants(child.pid))
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
            stop_pids(started_by_child)
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
    if child.stdout is None:  # relayed only when piped
        return
    for raw in child.stdout:
        line = raw.decode(errors="replace")
        if out is not None:
            out.write(raw)
        else:
            sys.stdout.write(line)
        sys.stdout.flush()
        seen.update(text for text in watch if text in line)


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (children, grandchildren...), read from ``/proc``."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found += [child]
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_pids(pids: Sequence[int], grace: float = 10.0) -> list[int]:
    """SIGTERM each of ``pids`` still running, SIGKILL what is left after ``grace`` s; return
    those that had to be stopped.

    For what a child started (:func:`descendants`, listed before the child stops): Flower's
    SuperLink starts ``flower-superexec`` detached (its own session, out of the SuperLink's
    process group), and that one ``flwr-serverapp`` per study; both outlived a stopped
    SuperLink, retrying for about 90 s.
    """
    running = [pid for pid in dict.fromkeys(pids) if alive(pid)]
    for pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(pid) for pid in running):
        time.sleep(0.1)
    for pid in running:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return running


class Supervised:
    """A child process that is started again whenever it exits, until :meth:`close`.

    The fast SuperNode's worker runs every message of the node: if it died (killed by the
    kernel for memory, a crash in a native library) while the SuperNode stayed up, the node
    would look online to the coordinator and answer nothing. It is restarted after ``delay``
    seconds, doubled (up to 60 s) while it keeps dying within a minute of its start.
    """

    def __init__(self, command: Sequence[str], name: str, delay: float = 1.0) -> None:

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
                "the node's ClientApp %s exited (code %s); starting it again", self.name, code
            )
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
