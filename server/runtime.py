"""The coordinator's SuperLink command line, and a whole federation on loopback.

The SuperLink itself needs no change for short rounds: its per-round costs are on the
ServerApp's side (the Grid's 3 s poll, replaced by :mod:`medfed.server.polling`) and on the
nodes' (see :mod:`medfed.client.runtime`). Its SuperExec starts the ServerApp once per run after
polling every second; ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (Flower's own setting) shortens that
one-off wait in the fast setup.

:class:`LoopbackFederation` starts a SuperLink and N hospital nodes on free 127.0.0.1 ports with a
private ``FLWR_HOME``, submits studies with ``flwr run`` and stops every process it started by its
id: the deployment benchmark (``benchmarks/deploy_latency.py``) and its end-to-end test use it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from medfed.client.runtime import FLWR_ENV, clientapp_command, supernode_command
from medfed.client.worker import READY

BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parents[1]
SUPEREXEC_POLL = 0.05
"""Seconds between the SuperLink's SuperExec checks for a run to start (Flower: 1 s)."""


def superlink_command(port: int, database: Path | None = None, *, host: str = "127.0.0.1",
                      tls: tuple[Path, Path, Path] | None = None,
                      node_auth: bool = False) -> list[str]:
    """``flower-superlink`` on ``host:port``; ``tls`` = (CA, certificate, key) or ``--insecure``."""
    command = [str(BIN / "flower-superlink"), "--host", host, "--port", str(port),
               "--disable-runtime-dependency-installation"]
    if database is not None:
        command += ["--database", str(database)]
    if tls is None:
        command.append("--insecure")
    else:
        ca, cert, key = tls
        command += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert),
                    "--ssl-keyfile", str(key)]
    if node_auth:
        command.append("--enable-supernode-auth")
    return command


def superlink_env(base: dict[str, str], fast: bool = True) -> dict[str, str]:
    """The SuperLink's environment; Flower's SuperExec finds ``flwr-serverapp`` on ``PATH``."""
    env = {**base, **FLWR_ENV, "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}"}
    if fast:
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(SUPEREXEC_POLL)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(processes: list[subprocess.Popen], grace: float = 10.0) -> None:
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


class LoopbackFederation:
    """A SuperLink and ``hospitals`` SuperNodes on 127.0.0.1, Flower's plain or fast setup.

    Node ``i`` gets ``--node-config "partition-id=i num-partitions=N"``; ``env`` is added to
    every process's environment. Logs go to ``workdir``.
    Use it as a context manager: leaving it stops every process it started, by process id.
    """

    def __init__(self, workdir: Path, hospitals: int = 3, fast: bool = True,
                 env: Mapping[str, str] | None = None) -> None:
        self.workdir, self.hospitals, self.fast = workdir, hospitals, fast
        self.home = workdir / "flwr-home"
        self.port = 0
        self.start_timeout = 120.0
        self.processes: list[subprocess.Popen] = []
        base = {**os.environ, **(env or {}), "FLWR_HOME": str(self.home)}
        self.env = superlink_env(base, fast)

    def _launch(self, name: str, command: list[str]) -> subprocess.Popen:
        """Start ``command`` in the background, its output in ``<workdir>/<name>.log``."""
        with (self.workdir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(command, env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=self.workdir)
        self.processes.append(process)
        return process

    def _wait_ready(self, started: dict[str, subprocess.Popen], ready: str) -> list[str]:
        """Wait until each log shows ``ready``; the names of the processes that exited first."""
        deadline = time.monotonic() + self.start_timeout
        waiting, exited = dict(started), []
        while waiting:
            for name, process in list(waiting.items()):
                if ready in (self.workdir / f"{name}.log").read_text(errors="replace"):
                    del waiting[name]
                elif process.poll() is not None:
                    exited.append(name)
                    del waiting[name]
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"{sorted(waiting)} not ready within "
                                   f"{self.start_timeout:.0f} s: see the logs in {self.workdir}")
            time.sleep(0.1)
        return exited

    def _start_on_free_ports(self, commands: dict, ready: str) -> dict[str, tuple]:
        """``{name: command(port)}`` on free ports, all at once; a process that exits before it
        is ready (another program took its port meanwhile) is retried on a new port, twice.
        Returns ``{name: (process, port)}``."""
        running: dict[str, tuple] = {}
        pending = list(commands)
        for _ in range(3):
            for name in pending:
                port = free_port()
                running[name] = (self._launch(name, commands[name](port)), port)
            pending = self._wait_ready({n: running[n][0] for n in pending}, ready)
            if not pending:
                return running
        raise RuntimeError(f"{pending} exited three times at start: see the logs in "
                           f"{self.workdir}")

    def __enter__(self) -> LoopbackFederation:
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.port = self._start_on_free_ports(
                {"superlink": lambda port: superlink_command(port, self.workdir / "state.db")},
                "Application startup complete")["superlink"][1]
            (self.home / "config.toml").write_text(
                f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
                f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
            nodes = self._start_on_free_ports({
                f"supernode-{i}": partial(supernode_command, f"127.0.0.1:{self.port}",
                                          node_config={"partition-id": i,
                                                       "num-partitions": self.hospitals},
                                          fast=self.fast)
                for i in range(self.hospitals)}, "SuperNode ID:")
            if self.fast:
                workers = {name.replace("supernode", "worker"): self._launch(
                    name.replace("supernode", "worker"),
                    clientapp_command(port, parent_pid=process.pid))
                    for name, (process, port) in nodes.items()}
                if exited := self._wait_ready(workers, READY):
                    raise RuntimeError(f"{exited} exited at start: see the logs in {self.workdir}")
        except BaseException:
            self.close()
            raise
        return self

    def run(self, overrides: str, output_dir: Path, timeout: float = 600.0) -> float:
        """Submit a study with ``flwr run . loopback --stream``; its wall seconds, from outside."""
        run_config = f'overrides="{overrides}" output-dir="{output_dir}"'
        started = time.perf_counter()
        done = subprocess.run([str(BIN / "flwr"), "run", str(PROJECT), "loopback",
                               "--run-config", run_config, "--stream"],
                              env=self.env, cwd=self.workdir, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        seconds = time.perf_counter() - started
        failed = [p.args[2] if len(p.args) > 2 else p.args[0]
                  for p in self.processes if p.poll() is not None]
        if done.returncode != 0 or failed or not (output_dir / "summary.json").exists():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"flwr run exited with {done.returncode} (processes that died: "
                               f"{failed or 'none'}; logs in {self.workdir}):\n{tail}")
        return seconds

    def close(self) -> None:
        """Stop every process this federation started, by process id: the nodes and workers
        together, then the SuperLink (nodes sign off from it as they stop)."""
        links = [p for p in self.processes if "flower-superlink" in str(p.args[0])]
        stop([p for p in self.processes if p not in links])
        stop(links)

    def __exit__(self, *exc: object) -> None:
        self.close()
