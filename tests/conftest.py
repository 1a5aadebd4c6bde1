"""Shared fixtures: an isolated Flower home per test, small federations, the ``medfed`` CLI.

Helpers that several test files need are fixtures returning callables (the test folders are not
packages, so test modules cannot import each other).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from medfed.infra.processes import FLWR_ENV as FLOWER_ENV

# Property tests: no per-example deadline (a loaded 2-core machine is slow, not wrong). CI runs
# the same fixed examples every time (``MEDFED_HYPOTHESIS=ci`` in .ci/run), so a red CI is
# reproducible; locally each run draws new examples and finds new counterexamples.
settings.register_profile("local", deadline=None, print_blob=True)
settings.register_profile("ci", deadline=None, print_blob=True, derandomize=True)
settings.load_profile(os.environ.get("MEDFED_HYPOTHESIS", "local"))

# Three hospitals of 60-120 rows: a whole study takes well under a second.
SMALL = [
    "federation.hospitals=3",
    "federation.min_size=60",
    "federation.max_size=120",
    "policy.min_cell_count=1",
]  # tiny test splits: metrics are checked, not disclosure
MEDFED = Path(sys.executable).with_name("medfed")


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of a subprocess: this one plus Flower's switches and its own home."""
    return {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(flwr_home)}


@pytest.fixture(autouse=True)
def isolated_flower_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own ``FLWR_HOME`` and never phones home or installs packages."""
    home = tmp_path_factory.mktemp("flwr-home")
    for key, value in FLOWER_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FLWR_HOME", str(home))
    return home


@pytest.fixture
def task_identity():
    """Set Flower's process-wide task identity (needed to build a Message) and restore it."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    yield TaskIdentity
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="session")
def small_study() -> Callable[..., dict[str, Any]]:
    """``small_study("rounds=2", ...)``: a composed, validated study of three small hospitals."""
    from medfed.server.study.config import compose_study

    def make(*overrides: str) -> dict[str, Any]:
        return compose_study([*SMALL, "quiet=true", *overrides])

    return make


@pytest.fixture(scope="session")
def run_inprocess() -> Callable[..., Any]:
    """``run_inprocess(study, client_app=None)``: run_study on an InProcessGrid, as simulate does.

    ``client_app`` replaces medfed's ClientApp (e.g. a wrapper that fails or spies);
    ``offline`` lists node ids taken off the grid before the study starts.
    """
    from medfed.client.app import app as medfed_client
    from medfed.models.ingest.sources import federation_size
    from medfed.server.simulation.engine import InProcessGrid
    from medfed.server.study.loop import run_study

    def run(study: dict[str, Any], client_app: Any = None, offline: tuple[int, ...] = ()):
        n = federation_size(study["federation"])
        grid = InProcessGrid(
            client_app or medfed_client,
            [{"partition-id": i, "num-partitions": n} for i in range(n)],
            run_config={},
        )
        for node_id in offline:
            grid.set_online(node_id, False)
        return run_study(grid, study)

    return run


class Launched:
    """A ``medfed`` subprocess started in the background; :meth:`wait` collects its output."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.args, self.cwd = args, cwd
        self._out, self._err = cwd / "stdout.txt", cwd / "stderr.txt"
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.process = subprocess.Popen(
                [str(MEDFED), *args],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait(self, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(self.process)
            raise
        return subprocess.CompletedProcess(
            self.args, self.process.returncode, self._out.read_text(), self._err.read_text()
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_group(self.process)


def stop_group(process: subprocess.Popen) -> None:
    """End a subprocess this suite started (and the process group it leads), by its id."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory):
    """``launch(*args) -> Launched``: start ``medfed`` now, in a fresh working directory.

    ``{cwd}`` in an argument stands for that directory (e.g. ``output_dir={cwd}/run``).
    """
    started: list[Launched] = []
    home = tmp_path_factory.mktemp("cli-flwr-home")

    def start(*args: str) -> Launched:
        cwd = tmp_path_factory.mktemp("cli-run")
        started.append(
            Launched([a.replace("{cwd}", str(cwd)) for a in args], cwd, flower_env(home))
        )
        return started[-1]

    yield start
    for run in started:
        run.stop()


# Background CLI runs. A test marked ``@pytest.mark.cli(name, *args)`` reads the ``medfed *args``
# run called ``name`` through the ``cli`` fixture. Every such run of the session starts when the
# session starts, and the marked tests run last: the subprocesses (mostly imports) overlap the
# in-process tests instead of adding to them.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cli(name, *args): the test reads the background "
        "`medfed *args` run called name (via the `cli` fixture)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("cli") is not None)


def _cli_specs(items: list[pytest.Item]) -> dict[str, tuple[str, ...]]:
    specs: dict[str, tuple[str, ...]] = {}
    for item in items:
        for marker in item.iter_markers("cli"):
            name, args = marker.args[0], tuple(marker.args[1:])
            if specs.setdefault(name, args) != args:
                raise pytest.UsageError(f"two different background runs are called {name!r}")
    return specs


@pytest.fixture(scope="session")
def cli_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Every background run the selected tests need, started at once (see above)."""
    home = tmp_path_factory.mktemp("cli-flwr-home")
    runs: dict[str, Launched] = {}
    for name, args in _cli_specs(request.session.items).items():
        cwd = tmp_path_factory.mktemp(f"cli-{name}")
        runs[name] = Launched([a.replace("{cwd}", str(cwd)) for a in args], cwd, flower_env(home))
    yield runs
    for run in runs.values():
        run.stop()


@pytest.fixture(scope="session", autouse=True)
def _start_cli_runs_early(request: pytest.FixtureRequest) -> None:
    if any(item.get_closest_marker("cli") for item in request.session.items):
        request.getfixturevalue("cli_runs")


@pytest.fixture
def cli(request: pytest.FixtureRequest, cli_runs: dict[str, Launched]) -> dict[str, Launched]:
    """The background runs this test's ``cli`` markers name, by name."""
    return {marker.args[0]: cli_runs[marker.args[0]] for marker in request.node.iter_markers("cli")}


@pytest.fixture(scope="session")
def load_model():
    """``load_model(run_dir)``: the state dict a run directory's ``model.pt`` holds."""
    import torch

    def load(run_dir: Path) -> dict[str, Any]:
        return torch.load(Path(run_dir) / "model.pt")["state_dict"]

    return load


class CrashAfter:
    """A study observer that kills the study once round ``n`` is over (and checkpointed), as a
    coordinator crash would; the test expects :attr:`Crash`."""

    class Crash(Exception):
        """Stands for the coordinator dying."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_start(self, study: dict[str, Any], hospitals: list[str]) -> None:
        pass

    def on_round(self, server_round: int, record: Any) -> None:
        if server_round + 1 == self.n:  # the loop reports round r - 1 at the end of round r
            raise self.Crash


@pytest.fixture(scope="session")
def crash_after() -> type[CrashAfter]:
    """``crash_after(n)``: an observer that stops a study after round ``n``
    (``pytest.raises(crash_after.Crash)``)."""
    return CrashAfter
