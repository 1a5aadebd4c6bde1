"""A whole federation on loopback: a coordinator and N hospitals on 127.0.0.1.

:class:`LoopbackFederation` runs them with the real commands (``medfed coordinator
init|add-node|start``, ``medfed node keys|start`` with cards from ``medfed synth export``,
``medfed run``), TLS and node keys on, and stops every process it started by its id: the
deployment end-to-end tests and ``benchmarks/deploy_latency.py`` use it. The SuperLink's and the
nodes' fast settings are explained in :mod:`medfed.infra.launch` and
:mod:`medfed.client.supernode`.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medfed.infra.launch import WORKER_READY
from medfed.infra.processes import BIN, alive, descendants, flower_env, free_port, stop

MEDFED = str(BIN / "medfed")
POLICY = (
    "max_epsilon_total: 30\nmax_epsilon_per_study: 30\nmin_noise_multiplier: 0.5\n"
    "require_approval: false\n"
)
"""The loopback hospitals' policy: DP-SGD studies of a few rounds pass it."""


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM as an exception, so that a federation's ``with`` block stops its processes."""
    raise SystemExit(128 + signum)


class LoopbackFederation:
    """A coordinator and ``hospitals`` nodes on 127.0.0.1, started with the ``medfed`` commands.

    Hospital ``i`` is ``hospital-i`` (card ``cards/hospital-i.yaml``, key ``hospital-i/node.key``,
    log ``hospital-i.log``); ``flower_defaults`` runs coordinator and nodes with
    ``--flower-defaults``; ``node_args`` adds arguments to some nodes' ``medfed node start``
    (by name). Use it as a context manager: leaving it stops every process it
    started (and their children), by process id, also when SIGTERM ends the program.
    """

    def __init__(
        self,
        workdir: Path,
        hospitals: int = 3,
        *,
        flower_defaults: bool = False,
        node_args: Mapping[str, list[str]] | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self.workdir, self.hospitals, self.start_timeout = workdir, hospitals, start_timeout
        self.node_args = dict(node_args or {})
        self.slow = ["--flower-defaults"] if flower_defaults else []
        self.coord = workdir / "coord"
        self.port = free_port()
        self.superlink = f"127.0.0.1:{self.port}"
        self.env = flower_env(workdir / "flwr-home")
        self.processes: dict[str, subprocess.Popen] = {}
        self._pids: set[int] = set()
        self._sigterm: Any = None

    def medfed(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``medfed ARGS`` to the end; its output captured. Past ``timeout`` seconds it is
        killed and the error shows its output and the end of every process's log."""
        try:
            return subprocess.run(
                [MEDFED, *args],
                cwd=self.workdir,
                env=self.env,
                text=True,
                capture_output=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            output: bytes | str = (exc.stdout or b"") + (exc.stderr or b"")
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
            raise TimeoutError(
                f"medfed {' '.join(args)} did not end within {timeout:.0f} s; "
                f"its output:\n{output[-3000:]}\n{self.tails()}"
            ) from None

    def tails(self, chars: int = 2500) -> str:
        """The end of every process's log, for a failure message."""
        return "\n".join(
            f"--- {name}.log ---\n{self.log(name)[-chars:]}" for name in self.processes
        )

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        """Start ``command`` in the background, its output in ``<workdir>/<name>.log``."""
        with (self.workdir / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self.processes[name]

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, name: str, text: str, count: int = 1) -> None:
        """Wait until ``name``'s log shows ``text`` ``count`` times (error if it exits first)."""
        deadline = time.monotonic() + self.start_timeout
        while self.log(name).count(text) < count:
            if self.processes[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"no {text!r} in {self.workdir / name}.log:\n{self.log(name)[-3000:]}"
                )
            time.sleep(0.2)

    def node_command(self, name: str, card: int) -> list[str]:
        """``medfed node start`` for the node whose key is in ``<workdir>/<name>``."""
        return [
            MEDFED,
            "node",
            "start",
            "--dataset",
            str(self.workdir / "cards" / f"hospital-{card}.yaml"),
            "--policy",
            str(self.workdir / "policy.yaml"),
            "--superlink",
            self.superlink,
            "--ca",
            str(self.coord / "ca.crt"),
            "--key",
            str(self.workdir / name / "node.key"),
            *self.slow,
            *self.node_args.get(name, []),
        ]

    def start_node(self, name: str, card: int) -> subprocess.Popen:
        """Start a node with a registered key (``hospital-<card>``'s card); wait until it is
        connected (and its worker ready)."""
        started = self.log(name).count("SuperNode ID:")
        self.start(name, self.node_command(name, card))
        self._wait_ready(name, started + 1)
        return self.processes[name]

    def _wait_ready(self, name: str, count: int) -> None:
        for text in ["SuperNode ID:"] + ([] if self.slow else [WORKER_READY]):
            self.wait_for(name, text, count)

    def __enter__(self) -> LoopbackFederation:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds the `with`
            self._sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # stdout may be a benchmark's JSON
                self._prepare()
            self.start("coordinator", [MEDFED, "coordinator", "start", str(self.coord), *self.slow])
            self.wait_for("coordinator", "SuperLink running")
            for index in range(self.hospitals):  # all at once, then wait for each
                self.start(f"hospital-{index}", self.node_command(f"hospital-{index}", index))
            for index in range(self.hospitals):
                self._wait_ready(f"hospital-{index}", 1)
        except BaseException:
            self.close()
            raise
        return self

    def _prepare(self) -> None:
        """Cards, policy, the coordinator folder and the hospitals' registered keys."""
        from medfed.infra.cli import run_command

        done = self.medfed(
            "synth",
            "export",
            "--task",
            "diagnosis",
            "--hospitals",
            str(self.hospitals),
            str(self.workdir / "cards"),
        )
        assert done.returncode == 0, done.stderr
        (self.workdir / "policy.yaml").write_text(POLICY)
        assert run_command(["coordinator", "init", str(self.coord), "--port", str(self.port)]) == 0
        names = [f"hospital-{i}" for i in range(self.hospitals)]
        for name in names:
            assert run_command(["node", "keys", str(self.workdir / name)]) == 0
            assert (
                run_command(
                    [
                        "coordinator",
                        "add-node",
                        str(self.coord),
                        name,
                        str(self.workdir / name / "node.pub"),
                    ]
                )
                == 0
            )

    def run(self, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``medfed run`` a study (Hydra overrides) to the end."""
        return self.medfed(
            "run",
            "--superlink",
            self.superlink,
            "--ca",
            str(self.coord / "ca.crt"),
            *overrides,
            timeout=timeout,
        )

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and every process below it at once: a node that crashes."""
        process = self.processes[name]
        for pid in [process.pid, *descendants(process.pid)]:
            os.kill(pid, signal.SIGKILL)
        process.wait()

    def close(self) -> None:
        """Stop every process started here, by id: nodes first, then the coordinator (nodes
        sign off from it as they stop); then kill whatever they left behind."""
        order = sorted(self.processes, key=lambda name: name == "coordinator")
        for name in order:
            self._pids.update(descendants(self.processes[name].pid))
        for name in order:
            stop([self.processes[name]], grace=30.0)
        for pid in self._pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None

    def __exit__(self, *exc: object) -> None:
        self.close()
