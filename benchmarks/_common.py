"""Helpers shared by the benchmark scripts: subprocess runs, environment, machine description."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the final JSON."""
    print(message, file=sys.stderr, flush=True)


def medfed_command() -> list[str]:
    """The ``medfed`` console script next to this interpreter (else ``python -m``)."""
    script = BIN / "medfed"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "medfed.server.commands"]


def subprocess_env(tmp: Path) -> dict[str, str]:
    """The caller's environment plus Flower's opt-outs; Ray's session files go under ``tmp``."""
    env = dict(os.environ, **ENV)
    env["RAY_TMPDIR"] = str(tmp / "ray")
    return env


@dataclass
class Sample:
    """One whole-process run: wall seconds (from outside), CPU seconds, stdout."""

    wall: float
    cpu: float
    stdout: str


def timed_run(
    command: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 900.0
) -> Sample:
    """Run ``command`` as a whole process and time it from outside.

    ``cpu`` is user + system time of the process and the descendants it waited for
    (``RUSAGE_CHILDREN``): much less sensitive than wall time to other load on a shared machine.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n{tail}")
    return Sample(wall, cpu, proc.stdout)


def _cpu_ticks() -> tuple[int, int]:
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_fraction(window: float = 1.0) -> float:
    """Share of the machine's CPU time spent busy over ``window`` seconds (0..1)."""
    busy0, total0 = _cpu_ticks()
    time.sleep(window)
    busy1, total1 = _cpu_ticks()
    return (busy1 - busy0) / max(total1 - total0, 1)


def wait_for_idle(max_busy: float, max_wait: float) -> tuple[float, float]:
    """Wait (up to ``max_wait`` s) until other processes leave the CPUs mostly idle.

    Returns the last busy fraction seen and the seconds waited. These machines are shared:
    starting a sample while someone else's job runs only adds noise.
    """
    started = time.monotonic()
    busy = busy_fraction()
    while busy > max_busy and time.monotonic() - started < max_wait:
        busy = busy_fraction(2.0)
    return busy, time.monotonic() - started


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict:
    """Where the numbers were measured (these machines are shared and noisy: see load)."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "flwr": _version("flwr"),
        "ray": _version("ray"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
