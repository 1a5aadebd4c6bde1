"""``flwr run <project> local``: the same ServerApp and ClientApp on Flower's simulation runtime.

The ``local`` connection starts a background ``flower-superlink --simulation`` that outlives
``flwr run``. This module gives it a private ``FLWR_HOME`` and private ports, and stops it by its
process id (found by its command line, which names that ``FLWR_HOME``), also when a test fails.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from medfed.infra.processes import alive as _alive
from medfed.infra.processes import free_port as _free_port

pytestmark = [pytest.mark.slow, pytest.mark.serial]

PROJECT = Path(__file__).resolve().parents[2]
FLWR = Path(sys.executable).with_name("flwr")
CONFIG_TOML = """[superlink]
default = "local"

[superlink.local]
address = ":local:"
"""
FILES = {"config.yaml", "metrics.csv", "summary.json", "model.pt", "convergence.png", "report.md"}
RUN_TIMEOUT = 240.0
SUMMARY_TIMEOUT = 180.0


def _superlinks(flwr_home: Path) -> list[int]:
    """Process ids of the ``flower-superlink`` processes whose command line names ``flwr_home``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(Path(a).name == "flower-superlink" for a in argv[:2]) and any(
            str(flwr_home) in a for a in argv
        ):
            pids.append(int(proc.name))
    return pids


def _stop(pid: int, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, one process id."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.2)


@dataclass
class FlwrRun:
    done: subprocess.CompletedProcess[str] | None = None
    out: Path = Path()
    superlinks: list[int] = field(default_factory=list)


@pytest.fixture(scope="module")
def flwr_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("flwr-home")
    (home / "config.toml").write_text(CONFIG_TOML)
    work = tmp_path_factory.mktemp("flwr-run")
    run = FlwrRun(out=work / "flwr-out")
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_HOME": str(home),
        # the local SuperLink and its workers are started by name: use this venv's
        "PATH": f"{FLWR.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # private ports: never reuse (or disturb) another local SuperLink on this machine
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
    }
    command = [
        str(FLWR),
        "run",
        str(PROJECT),
        "local",
        "--run-config",
        f'overrides="rounds=2 federation.hospitals=3" output-dir="{run.out}"',
        "--federation-config",
        "num-supernodes=3 client-resources-num-cpus=1",
        "--stream",
    ]
    try:
        run.done = subprocess.run(
            command,
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + SUMMARY_TIMEOUT
        while not (run.out / "summary.json").exists() and time.monotonic() < deadline:
            time.sleep(1.0)
        run.superlinks = _superlinks(home)
        yield run
    finally:
        for pid in _superlinks(home):
            _stop(pid)


def test_flwr_run_succeeds_and_leaves_a_superlink_we_can_find(flwr_run):
    done = flwr_run.done
    assert done is not None and done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert len(flwr_run.superlinks) == 1


def test_flwr_run_writes_the_run_directory(flwr_run):
    out = flwr_run.out
    assert (out / "summary.json").exists(), (flwr_run.done.stdout + flwr_run.done.stderr)[-3000:]
    assert FILES <= {p.name for p in out.iterdir()}

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["task"], summary["strategy"], summary["rounds"]) == ("diagnosis", "fedavg", 2)
    assert [h["name"] for h in summary["hospitals"]] == ["hospital-0", "hospital-1", "hospital-2"]
    assert all(h["metrics"] for h in summary["hospitals"])
    assert math.isfinite(summary["global"]["accuracy"])
    assert summary["total_train_steps"] > 0
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 * 4  # header + rounds 0..2 x (3 hospitals + all hospitals)


def test_flwr_run_summary_names_the_engine_that_ran(flwr_run):
    summary = json.loads((flwr_run.out / "summary.json").read_text())
    assert summary["engine"] != "inprocess"


def test_flwr_run_reaches_the_in_process_weights(flwr_run, run_inprocess, load_model):
    import torch

    from medfed.server.study.config import compose_study

    expected = run_inprocess(compose_study(["rounds=2", "federation.hospitals=3"])).final_state
    got = load_model(flwr_run.out)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.allclose(got[key], value, atol=1e-5), key
