"""A real federation on loopback: a TLS SuperLink with node keys and three hospital SuperNodes.

Drives the ``medfed`` CLI as the README does: ``coordinator init`` / ``add-node`` / ``start``,
``node keys`` / ``node start`` with cards from ``synth export``, ``medfed run`` with DP-SGD and
``medfed status``; and shows that a node with an unregistered key and a plaintext SuperNode are
refused. Every process is stopped by its id at the end, also when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from medfed.client.deploy import free_port, node_deploy_main, supernode_command
from medfed.server.deploy import coordinator_main

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 300.0
MEDFED = str(Path(sys.executable).with_name("medfed"))
POLICY = "max_epsilon_total: 30\nmax_epsilon_per_study: 30\nmin_noise_multiplier: 0.5\n"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (children, grandchildren...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in {path}:\n{path.read_text()}")
        time.sleep(0.5)


@dataclass
class Federation:
    work: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    port: int = 0
    run: subprocess.CompletedProcess | None = None
    run_seconds: float = 0.0
    status: dict | None = None
    simulated: Path = Path()

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.work / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(command, cwd=self.work, env=self.env,
                                                stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL,
                                                start_new_session=True)
        return self.processes[name]

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text()

    def medfed(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([MEDFED, *args],
                              cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def stop(self, name: str, grace: float = 40.0) -> int | None:
        """SIGTERM one process (medfed forwards it to Flower's), wait; its exit status."""
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                return None
        return process.returncode


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    work = tmp_path_factory.mktemp("deploy")
    home = tmp_path_factory.mktemp("deploy-flwr-home")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_HOME": str(home)}
    fed = Federation(work, env, port=free_port())
    pids: set[int] = set()
    try:
        _run_federation(fed, pids)
        yield fed
    finally:
        for name in list(fed.processes):
            pids.update([fed.processes[name].pid, *_descendants(fed.processes[name].pid)])
            fed.stop(name, grace=20)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _run_federation(fed: Federation, pids: set[int]) -> None:
    work, coord = fed.work, fed.work / "coord"
    sim = fed.start("simulate", [MEDFED, "simulate",
                                 "rounds=1", "privacy=dpsgd", "quiet=true",
                                 f"output_dir={work / 'sim'}", f"privacy.ledger_dir={work}/sl"])
    assert fed.medfed("synth", "export", "--task", "diagnosis", "--hospitals", "3",
                      str(work / "cards")).returncode == 0
    (work / "policy.yaml").write_text(POLICY)
    done = fed.medfed("coordinator", "init", str(coord), "--host", "127.0.0.1",
                      "--port", str(fed.port))
    assert done.returncode == 0, done.stderr
    for name in ("hospital-0", "hospital-1", "hospital-2", "plain", "stranger"):
        assert node_deploy_main(["keys", str(work / name)]) == 0
    for name in ("hospital-0", "hospital-1", "plain"):  # recorded, registered at start
        assert coordinator_main(["add-node", str(coord), name, str(work / name / "node.pub")]) == 0
    link = fed.start("coordinator", [MEDFED,
                                     "coordinator", "start", str(coord)])
    _wait_for(work / "coordinator.log", "SuperLink running", link, 90)
    pids.update(_descendants(link.pid))
    added = fed.medfed("coordinator", "add-node", str(coord), "hospital-2",
                       str(work / "hospital-2" / "node.pub"))  # registered at once
    assert added.returncode == 0 and "registered hospital-2" in added.stdout, added.stderr
    superlink = f"127.0.0.1:{fed.port}"
    for index, name in enumerate(("hospital-0", "hospital-1", "hospital-2", "stranger")):
        extra = ["--ledger-dir", str(work / "ledgers")] if index == 2 else []
        fed.start(name, [MEDFED, "node", "start",
                         "--dataset", str(work / "cards" / f"hospital-{index % 3}.yaml"),
                         "--policy", str(work / "policy.yaml"), "--superlink", superlink,
                         "--ca", str(coord / "ca.crt"),
                         "--key", str(work / name / "node.key"), *extra])
    fed.start("plain", supernode_command(
        superlink=superlink, port=free_port(), node_config={}, root_certificates=None,
        private_key=work / "plain" / "node.key", extra=("--max-retries", "3")))
    started = time.monotonic()
    fed.run = fed.medfed("run", "--superlink", superlink, "--ca", str(coord / "ca.crt"),
                         "rounds=3", "privacy=dpsgd", "strategy.min_nodes=3", "timeout=120",
                         f"output_dir={work / 'run'}", timeout=RUN_TIMEOUT)
    fed.run_seconds = time.monotonic() - started
    fed.status = json.loads(fed.medfed("status", str(coord), "--json").stdout or "{}")
    sim.wait(timeout=120)
    fed.simulated = work / "sim"


def test_deployed_study_writes_the_run_directory_of_a_simulated_one(fed):
    assert fed.run.returncode == 0, fed.run.stdout + fed.run.stderr
    run = fed.work / "run"
    assert {p.name for p in run.iterdir()} >= {p.name for p in fed.simulated.iterdir()}
    summary = json.loads((run / "summary.json").read_text())
    simulated = json.loads((fed.simulated / "summary.json").read_text())
    assert summary.keys() == simulated.keys()
    assert summary["rounds"] == 3 and summary["engine"] == "flwr-run"
    assert [h["name"] for h in summary["hospitals"]] == ["hospital-0", "hospital-1",
                                                         "hospital-2"]
    assert not summary["refusals"] and not summary["failures"]
    seconds = [r["seconds"] for r in _rounds(run)]
    print(f"deployment: {fed.run_seconds:.1f} s for `medfed run`, rounds {seconds}")


def _rounds(run: Path) -> list[dict]:
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [{"round": int(r["round"]), "seconds": round(float(r["seconds"]), 1)}
            for r in rows if r["hospital"] == "all hospitals" and int(r["round"]) > 0]


def test_each_node_spends_on_its_own_ledger(fed):
    """Ledgers where the node's own settings put them: beside the card, or in --ledger-dir."""
    from medfed.client.ledger import Ledger

    cards, run = fed.work / "cards", fed.work / "run"
    ledgers = [cards / "hospital-0.yaml.ledger.jsonl", cards / "hospital-1.yaml.ledger.jsonl",
               fed.work / "ledgers" / "hospital-2.ledger.jsonl"]
    for ledger in ledgers:
        assert len(Ledger(ledger).history()) == 3, ledger
    assert not (run / "ledgers").exists()  # the study's default ledger_dir was not used


def test_a_node_with_an_unregistered_key_is_refused(fed):
    stranger = fed.processes["stranger"]
    assert stranger.wait(timeout=60) == 1
    log = fed.log("stranger")
    assert "Exit Code: 305" in log and "refused this node" in log  # Flower's, then medfed's


def test_a_plaintext_supernode_is_refused_by_the_tls_superlink(fed):
    plain = fed.processes["plain"]
    assert plain.wait(timeout=90) != 0
    assert "SuperNode ID" not in fed.log("plain")
    assert sum(n["status"] == "online" for n in fed.status["nodes"]) == 3


def test_status_names_the_connected_hospitals_and_the_study(fed):
    online = sorted(n["name"] for n in fed.status["nodes"] if n["status"] == "online")
    assert online == ["hospital-0", "hospital-1", "hospital-2"]
    assert [r["status"] for r in fed.status["runs"]] == ["finished:completed"]


def test_sigterm_stops_nodes_and_coordinator_cleanly(fed):
    children = {name: _descendants(p.pid) for name, p in fed.processes.items()}
    for name in ("hospital-0", "hospital-1", "hospital-2", "coordinator"):
        assert fed.stop(name) == 0, fed.log(name)[-2000:]
    deadline = time.monotonic() + 20  # Flower's helpers notice their parent is gone and exit
    left = [pid for pids in children.values() for pid in pids]
    while (left := [pid for pid in left if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left
    assert not (fed.work / "coord" / "superlink.pid").exists()
