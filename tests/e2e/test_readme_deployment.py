"""The README's deployment sections, run as written ("Run a federation across hospitals", "Join a
federation").

Every bash block after a ``<!-- readme-test: NAME -->`` line of README.md runs as written, each
party in its own folder as on its own machine: ``coordinator/`` and three hospitals
``hospital-a/``, ``hospital-b/``, ``hospital-c/`` (the study needs ``strategy.min_nodes=3``).
Only the variable lines at the top of a block are changed: ``PORT`` and ``SUPERLINK`` get a free
port, and hospitals b and c get ``CARD=data/hospital-1.yaml`` and ``data/hospital-2.yaml``.
Files travel as the README says: each hospital's ``keys/node.pub`` to the coordinator's
``received/<name>.pub``, the coordinator's ``coord/ca.crt`` to each hospital's ``ca.crt``.
A block's long-running last command (``medfed coordinator start``, ``medfed node start``) runs in
the background, the same text through ``bash -c``, in its own session with its output in
``<party>.log``, and is stopped by process id at the end (nodes first, SIGTERM, SIGKILL after a
grace); everything else runs with ``bash -euo pipefail`` and must exit 0.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from medfed.infra.launch import WORKER_READY as READY
from medfed.infra.processes import alive, descendants, flower_env, free_port

pytestmark = [pytest.mark.slow, pytest.mark.serial]

README = Path(__file__).resolve().parents[2] / "README.md"
CARDS = {
    "hospital-a": "data/hospital-0.yaml",
    "hospital-b": "data/hospital-1.yaml",
    "hospital-c": "data/hospital-2.yaml",
}
LONG_RUNNING = ("medfed coordinator start", "medfed node start")
VARIABLE = re.compile(r"[A-Z_]+=")
GRACE = 30.0  # seconds a stopped party gets before SIGKILL


def readme_blocks() -> dict[str, str]:
    """The bash block after each ``<!-- readme-test: NAME -->`` marker of README.md, by name."""
    found = re.findall(
        r"^<!-- readme-test: ([\w-]+) -->\n```bash\n(.*?)^```", README.read_text(), re.M | re.S
    )
    assert len(dict(found)) == len(found), "a readme-test marker is used twice"
    return dict(found)


def parts(block: str, **values: str) -> tuple[str, str | None]:
    """The block as two scripts: its variable lines (set to ``values``) with every command before
    the long-running one, and the variable lines with that command (``None`` if none)."""
    lines = block.splitlines()
    top = next(i for i, line in enumerate(lines) if not VARIABLE.match(line))
    for i in range(top):
        name = lines[i].split("=", 1)[0]
        if name in values:
            lines[i] = f"{name}={shlex.quote(values.pop(name))}"
    assert not values, f"no variable line {sorted(values)} at the top of:\n{block}"
    long = [i for i, line in enumerate(lines) if line.startswith(LONG_RUNNING)]
    if not long:
        return "\n".join(lines) + "\n", None
    assert len(long) == 1 and all(line.endswith("\\") for line in lines[long[0] : -1]), (
        f"the long-running command must be the block's last:\n{block}"
    )
    head = "\n".join(lines[:top]) + "\n"
    return head + "\n".join(lines[top : long[0]]) + "\n", head + "\n".join(lines[long[0] :]) + "\n"


class Parties:
    """The parties' folders under ``root``, the scripts they run and their background lines."""

    def __init__(self, root: Path) -> None:
        self.root, self.env = root, flower_env(root / "flwr-home")
        self.background: dict[str, subprocess.Popen] = {}
        self.seconds: dict[str, float] = {}
        for name in ("coordinator", *CARDS):
            (root / name).mkdir()

    def run(self, scripts: dict[str, str], timeout: float = 120) -> dict[str, str]:
        """Run each party's script (at the same time, as on separate machines) with
        ``bash -euo pipefail``; their output, once all exited 0."""
        started = {
            name: subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=self.root / name,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            for name, script in scripts.items()
        }
        outputs = {}
        for name, process in started.items():
            try:
                outputs[name] = process.communicate(timeout=timeout)[0]
            except subprocess.TimeoutExpired:
                self._stop(process)
                raise
            assert process.returncode == 0, (
                f"{name}: status {process.returncode} of\n"
                f"{scripts[name]}\n{outputs[name]}\n{self.tails()}"
            )
        return outputs

    def start(self, name: str, script: str) -> None:
        """Start ``name``'s long-running line in the background, its output in ``name.log``."""
        with (self.root / f"{name}.log").open("ab") as log:
            self.background[name] = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=self.root / name,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tails(self) -> str:
        return "\n".join(
            f"--- {name}.log ---\n{self.log(name)[-2500:]}" for name in self.background
        )

    def wait_for(self, name: str, *texts: str, timeout: float = 120) -> None:
        """Wait until ``name``'s log shows every text (error if its line ends first)."""
        deadline = time.monotonic() + timeout
        while not all(text in self.log(name) for text in texts):
            assert self.background[name].poll() is None and time.monotonic() < deadline, (
                f"no {texts} in {name}.log:\n{self.log(name)[-3000:]}"
            )
            time.sleep(0.2)

    def close(self) -> dict[str, int]:
        """Stop the background lines by process id, the nodes first, then the coordinator (nodes
        sign off from it); the exit status of each."""
        for name in sorted(self.background, key=lambda name: name == "coordinator"):
            if self.background[name].poll() is None:
                self._stop(self.background[name])
        return {name: process.returncode for name, process in self.background.items()}

    @staticmethod
    def _stop(shell: subprocess.Popen) -> None:
        """SIGTERM the block's command, SIGKILL whatever of its process tree is left after the
        grace. bash runs a script's last command in its own process (exec), so that is the
        command; otherwise its children are (bash would not pass the signal on)."""
        tree = [shell.pid, *descendants(shell.pid)]
        comm = Path(f"/proc/{shell.pid}/comm").read_text().strip()
        children = Path(f"/proc/{shell.pid}/task/{shell.pid}/children").read_text().split()
        for pid in [shell.pid] if comm != "bash" else map(int, children):
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in filter(alive, tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shell.wait(timeout=10)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's sequence: hospitals prepare and send their keys, the coordinator registers
    them and starts, sends its CA certificate, the nodes start, the coordinator runs the study
    (and resumes it), each hospital reads its ledger."""
    blocks = readme_blocks()
    port = str(free_port())
    parties = Parties(tmp_path_factory.mktemp("readme"))
    root, clock = parties.root, [time.monotonic()]

    def lap(step: str) -> None:  # wall seconds of each step, printed by a test
        parties.seconds[step] = round(time.monotonic() - clock[0], 1)
        clock[0] = time.monotonic()

    try:
        prepare = {
            name: parts(blocks["hospital-prepare"], CARD=card)[0] for name, card in CARDS.items()
        }
        parties.run(prepare)
        lap("hospitals prepare")
        for name in CARDS:
            (root / "coordinator" / "received").mkdir(exist_ok=True)
            shutil.copyfile(
                root / name / "keys" / "node.pub", root / "coordinator" / "received" / f"{name}.pub"
            )
        setup, serve = parts(blocks["coordinator-start"], PORT=port)
        parties.run({"coordinator": setup})
        parties.start("coordinator", serve)
        parties.wait_for("coordinator", "SuperLink running")
        lap("coordinator init, add-node, start")
        for name, card in CARDS.items():
            shutil.copyfile(root / "coordinator" / "coord" / "ca.crt", root / name / "ca.crt")
            parties.start(
                name, parts(blocks["hospital-start"], SUPERLINK=f"127.0.0.1:{port}", CARD=card)[1]
            )
        for name in CARDS:
            parties.wait_for(name, "SuperNode ID:", READY)
        lap("nodes start")
        parties.study = parties.run(
            {"coordinator": parts(blocks["coordinator-run"], PORT=port)[0]}, timeout=240
        )
        lap("status, run, resume")
        parties.ledgers = parties.run(
            {name: parts(blocks["hospital-ledger"], CARD=card)[0] for name, card in CARDS.items()}
        )
        parties.status = json.loads(
            parties.run({"coordinator": "medfed status coord --json"})["coordinator"]
        )
        lap("ledgers, status")
        yield parties
        stopped = parties.close()
        assert set(stopped.values()) == {0}, f"not stopped cleanly: {stopped}\n{parties.tails()}"
    finally:
        parties.close()


def test_every_readme_block_has_a_marker_and_is_run():
    """Each bash block of the two sections is one of the blocks this test runs."""
    text = README.read_text()
    sections = text[
        text.index("## Run a federation across hospitals") : text.index("## Privacy: DP-SGD")
    ]
    fences = re.findall(r"^(.*)\n```bash$", sections, re.M)
    assert fences and all(line.startswith("<!-- readme-test: ") for line in fences), fences
    assert sorted(readme_blocks()) == [
        "coordinator-run",
        "coordinator-start",
        "hospital-ledger",
        "hospital-prepare",
        "hospital-start",
    ]
    with pytest.raises(AssertionError, match="no variable line"):
        parts(readme_blocks()["hospital-ledger"], PORT="1")


def test_the_study_ran_on_three_hospitals(readme_run):
    run = readme_run.root / "coordinator" / "runs" / "first"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["engine"] == "flwr-run"
    assert [h["name"] for h in summary["hospitals"]] == ["hospital-0", "hospital-1", "hospital-2"]
    assert all(h["epsilon"] > 0 and h["rounds_missed"] == [] for h in summary["hospitals"])
    assert not summary["failures"] and not summary["refusals"] and not summary["stopped"]
    with (run / "metrics.csv").open(newline="") as handle:
        seconds = {
            int(r["round"]): round(float(r["seconds"]), 1)
            for r in csv.DictReader(handle)
            if r["hospital"] == "all hospitals" and int(r["round"]) > 0
        }
    assert sorted(seconds) == [1, 2, 3]
    print(f"README blocks, seconds per step: {readme_run.seconds}; round seconds {seconds}")


def test_the_deployed_bundle_is_signed_by_the_coordinators_key(readme_run):
    from medfed.models.release.bundle import verify_bundle

    coordinator = readme_run.root / "coordinator"
    verified = verify_bundle(
        coordinator / "runs" / "first" / "model", coordinator / "coord" / "signing.pub"
    )
    assert verified.signer_kind == "coordinator" and verified.pinned


def test_status_lists_the_three_hospitals_online(readme_run):
    out = readme_run.study["coordinator"]
    nodes = out[out.index("nodes:") : out.index("studies:")]
    assert sorted(re.findall(r"^\s+(hospital-[abc])\s+\d+\s+online\b", nodes, re.M)) == list(
        CARDS
    ), out[:2000]
    online = sorted(n["name"] for n in readme_run.status["nodes"] if n["status"] == "online")
    assert online == list(CARDS)


def test_resume_of_the_finished_study_says_so_and_submits_nothing(readme_run):
    run = readme_run.root / "coordinator" / "runs" / "first"
    out = readme_run.study["coordinator"]
    assert f"medfed: {run} already finished all 3 rounds; nothing to resume" in out, out[-2000:]
    assert out.count("Successfully started run") == 1
    assert [r["status"] for r in readme_run.status["runs"]] == ["finished:completed"]


def test_each_hospital_ledger_shows_the_spend(readme_run):
    for name, card in CARDS.items():
        ledger = readme_run.root / name / f"{card}.ledger.jsonl"
        assert len(ledger.read_text().splitlines()) >= 3, ledger
        out = readme_run.ledgers[name]
        site = Path(card).stem
        assert site in out and "epsilon" in out.lower(), out
