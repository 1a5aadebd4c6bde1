"""Issue 11 section 10: a coordinator on a public address exposes only what hospitals need.

One coordinator listens on every interface (``coordinator init --host <this machine's
non-loopback IP>``), as the README sets it up for real hospitals. From that non-loopback
address the Control and Runtime APIs answer 403, the Fleet API does not; from 127.0.0.1 the
Control API works (``medfed status``). A node with a key that was never registered is told so at
once; SIGTERM to ``medfed run`` stops its study like Ctrl-C; stopping the coordinator stops the
SuperExec it started (Flower starts it detached). Every process is stopped by its id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from medfed.infra.processes import alive, descendants, flower_env, free_port
from medfed.infra.superlink import REFUSAL, is_loopback

MEDFED = str(Path(sys.executable).with_name("medfed"))


def _public_ip() -> str | None:
    """A non-loopback IPv4 address of this machine (None when it has none)."""
    try:
        names = subprocess.run(
            ["hostname", "-I"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
    except OSError:
        return None
    return next((ip for ip in names if "." in ip and not is_loopback(ip)), None)


PUBLIC = _public_ip()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,
    pytest.mark.skipif(
        PUBLIC is None, reason="this machine has no non-loopback IPv4 address to test from"
    ),
]


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class _Coordinator:
    def __init__(self, work: Path) -> None:
        self.work, self.port = work, free_port()
        self.env = flower_env(work / "flwr-home")
        self.children: list[subprocess.Popen] = []

    def medfed(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [MEDFED, *args],
            cwd=self.work,
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.work / f"{name}.log").open("wb")
        child = subprocess.Popen(
            [MEDFED, *args],
            cwd=self.work,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.children.append(child)
        return child

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("exposure")
    coord = _Coordinator(work)
    init = coord.medfed(
        "coordinator", "init", "coord", "--host", str(PUBLIC), "--port", str(coord.port)
    )
    assert init.returncode == 0, init.stderr
    superlink = coord.spawn("coordinator", "coordinator", "start", "coord")
    deadline = time.monotonic() + 90
    while "SuperLink running" not in coord.log("coordinator"):
        assert superlink.poll() is None and time.monotonic() < deadline, coord.log("coordinator")
        time.sleep(0.3)
    try:
        yield coord, superlink
    finally:
        coord.stop_all()


def _post(host: str, port: int, path: str) -> httpx.Response:
    # TLS is on (the coordinator's own CA); this test is about who may call what
    return httpx.post(f"https://{host}:{port}{path}", content=b"", timeout=10, verify=False)


def test_control_and_runtime_apis_answer_loopback_only(coordinator) -> None:
    coord, _ = coordinator
    for path in ("/v1/control/list-runs", "/v1/runtime/get-run", "/docs"):
        refused = _post(str(PUBLIC), coord.port, path)
        assert refused.status_code == 403 and refused.json() == {"detail": REFUSAL}, path
        assert _post("127.0.0.1", coord.port, path).status_code != 403, path
    fleet = _post(str(PUBLIC), coord.port, "/v1/fleet/activate-node")
    assert fleet.status_code != 403 and REFUSAL not in fleet.text
    status = coord.medfed("status", "coord")  # the Control API from the coordinator's machine
    assert status.returncode == 0, status.stderr


def test_a_never_registered_key_is_told_at_once(coordinator) -> None:
    coord, _ = coordinator
    assert coord.medfed("synth", "export", "--hospitals", "1", "cards").returncode == 0
    assert coord.medfed("node", "keys", "stranger").returncode == 0
    (coord.work / "policy.yaml").write_text("max_epsilon_total: 10\n")
    started = time.monotonic()

    node = coord.medfed(
        "node",
        "start",
        "--dataset",
        "cards/hospital-0.yaml",
        "--policy",
        "policy.yaml",
        "--superlink",
        f"{PUBLIC}:{coord.port}",
        "--ca",
        "coord/ca.crt",
        "--key",
        "stranger/node.key",
        timeout=60,
    )

    assert node.returncode == 1
    assert "medfed: error: key not registered at the coordinator" in node.stderr
    assert "still holds this node's previous connection" not in node.stdout
    assert time.monotonic() - started < 30


def test_sigterm_stops_a_run_and_stopping_the_coordinator_stops_what_it_started(coordinator):
    coord, superlink = coordinator
    run = coord.spawn(
        "run",
        "run",
        "--superlink",
        f"127.0.0.1:{coord.port}",
        "--ca",
        "coord/ca.crt",
        "rounds=2",
        "timeout=300",
        "output_dir=runs/waiting",
    )
    deadline = time.monotonic() + 90
    while "Successfully started run" not in coord.log("run"):  # it waits for hospitals
        assert run.poll() is None and time.monotonic() < deadline, coord.log("run")
        time.sleep(0.3)
    tree = descendants(superlink.pid)
    assert len(tree) >= 2  # the SuperLink, its detached SuperExec, the study's ServerApp...

    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=90) == 130, coord.log("run")
    assert "stopped" in coord.log("run")

    superlink.send_signal(signal.SIGTERM)
    assert superlink.wait(timeout=60) == 0
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in tree if alive(pid)]
    for pid in left:  # never leave them behind, even when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], "processes the coordinator started outlived it"
    assert not _answers("127.0.0.1", coord.port)
