"""Simulation wall time / the same SGD steps in a plain PyTorch loop (DESIGN.md, Performance).

Arms, each a whole process timed from outside (``time.perf_counter`` around ``subprocess.run``),
interleaved A, B, C, A, B, C ... so that the machine's noise hits every arm alike:

* ``inprocess``: ``medfed simulate task=diagnosis rounds=R quiet=true engine=inprocess``;
* ``ray``: the same with ``engine=ray`` (Flower's simulation runtime; ``--skip-ray`` drops it);
* ``plain``: ``benchmarks/plain_fedavg.py``, the same data, model, seeds, local epochs, FedAvg
  and per-round evaluation in one plain PyTorch process (no Flower, no Hydra).

The headline is the ratio of the wall-time medians. Because these machines are shared, the
report also gives the median of the per-repeat (paired) ratios, the ratio of the minima, the
ratio of CPU seconds (user + system of the process tree) and the steady-state round time
(median of rounds 2..R as each run measures it itself: ``metrics.csv`` ``seconds`` for the
federation, the same loop body for the plain script). Before each sample the script waits (up to
``--max-wait`` s) for the CPUs to be idle, and records how busy they were.

Every repeat checks the equal-work rule (the plain script's SGD steps = ``total_train_steps``
of the federation's ``summary.json``) and compares the plain script's final weights with the
federation's ``model.pt``. Start-up is measured separately: bare interpreter, ``import torch``,
``import medfed.server.simulation.run``, and each arm with ``rounds=1``.

Prints one JSON object to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from _common import (
    ROOT,
    Sample,
    log,
    machine,
    medfed_command,
    median,
    read_json,
    subprocess_env,
    timed_run,
    wait_for_idle,
)

TARGET_INPROCESS_OVER_PLAIN = 1.3
HOSPITALS = 4
PLAIN = ROOT / "benchmarks" / "plain_fedavg.py"
IMPORTS = {
    "python_pass": "pass",
    "import_torch": "import torch",
    "import_medfed_server_simulation": "import medfed.server.simulation.run",
}


def _simulate(engine: str, rounds: int, out: Path) -> list[str]:
    return [
        *medfed_command(),
        "simulate",
        "task=diagnosis",
        f"rounds={rounds}",
        "quiet=true",
        f"engine={engine}",
        f"federation.hospitals={HOSPITALS}",
        f"output_dir={out}",
    ]


def _plain(rounds: int, weights: Path) -> list[str]:
    return [
        sys.executable,
        str(PLAIN),
        "--task",
        "diagnosis",
        "--rounds",
        str(rounds),
        "--hospitals",
        str(HOSPITALS),
        "--save-weights",
        str(weights),
    ]


def _max_weight_diff(plain_weights: Path, model_pt: Path) -> float:
    plain = torch.load(plain_weights, weights_only=True)
    federated = torch.load(model_pt, weights_only=False)["state_dict"]
    if list(plain) != list(federated):
        return float("inf")
    return max(float((plain[k] - federated[k]).abs().max()) for k in plain)


def _round_seconds(metrics_csv: Path) -> list[float]:
    """The federation's own per-round seconds (rounds 1..R) from ``metrics.csv``."""
    seconds: dict[int, float] = {}
    with metrics_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if int(row["round"]) >= 1:
                seconds[int(row["round"])] = float(row["seconds"])
    return [seconds[r] for r in sorted(seconds)]


def _steady(round_seconds: list[float]) -> float | None:
    """Median round time without round 1 (which pays torch's lazy imports in every arm)."""
    return statistics.median(round_seconds[1:]) if len(round_seconds) > 1 else None


class Bench:
    """Runs the probes, keeps every sample and the equal-work evidence."""

    def __init__(self, tmp: Path, rounds: int, max_busy: float, max_wait: float) -> None:
        self.tmp, self.rounds, self.env = tmp, rounds, subprocess_env(tmp)
        self.max_busy, self.max_wait = max_busy, max_wait
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.internal: dict[str, list[float]] = {}
        self.steady: dict[str, list[float]] = {}
        self.steps: dict[str, set[int]] = {}
        self.weight_diff: dict[str, float] = {}
        self.busy_before: list[float] = []
        self.waited = 0.0
        self._n = 0

    def _out(self) -> Path:
        self._n += 1
        return self.tmp / f"run{self._n}"

    def _run(self, command: list[str], record: bool) -> Sample:
        if record:
            busy, waited = wait_for_idle(self.max_busy, self.max_wait)
            self.busy_before.append(busy)
            self.waited += waited
        return timed_run(command, env=self.env, cwd=self.tmp)

    def _record(self, name: str, sample: Sample, record: bool) -> None:
        if record:
            self.wall.setdefault(name, []).append(round(sample.wall, 4))
            self.cpu.setdefault(name, []).append(round(sample.cpu, 4))
        note = "" if record else "  (warm-up, discarded)"
        log(f"  {name:34s} {sample.wall:7.2f} s wall {sample.cpu:7.2f} s cpu{note}")

    def _keep(self, store: dict, name: str, value, record: bool) -> None:
        if record and value is not None:
            store.setdefault(name, []).append(value)

    def federation(self, engine: str, rounds: int, record: bool = True) -> Path:
        out = self._out()
        sample = self._run(_simulate(engine, rounds, out), record)
        name = engine if rounds == self.rounds else f"{engine}_rounds{rounds}"
        self._record(name, sample, record)
        summary = read_json(out / "summary.json")
        self._keep(self.internal, name, float(summary["wall_seconds"]), record)
        self._keep(self.steady, name, _steady(_round_seconds(out / "metrics.csv")), record)
        if record:
            self.steps.setdefault(name, set()).add(int(summary["total_train_steps"]))
        return out

    def plain(self, rounds: int, compare_with: dict[str, Path], record: bool = True) -> None:
        weights = self._out().with_suffix(".pt")
        sample = self._run(_plain(rounds, weights), record)
        name = "plain" if rounds == self.rounds else f"plain_rounds{rounds}"
        self._record(name, sample, record)
        result = json.loads(sample.stdout)
        self._keep(self.internal, name, float(result["seconds_after_imports"]), record)
        self._keep(self.steady, name, _steady(result["round_seconds"]), record)
        if record:
            self.steps.setdefault(name, set()).add(int(result["total_train_steps"]))
        for engine, out in compare_with.items():
            key = f"{name}_vs_{engine}"
            diff = _max_weight_diff(weights, out / "model.pt")
            self.weight_diff[key] = max(self.weight_diff.get(key, 0.0), diff)
        weights.unlink()

    def python(self, name: str, code: str) -> None:
        self._record(name, self._run([sys.executable, "-c", code], True), True)


def run(
    repeats: int, rounds: int, skip_ray: bool, warmup: bool, max_busy: float, max_wait: float
) -> dict:
    engines = ["inprocess"] + ([] if skip_ray else ["ray"])
    started = machine()
    with tempfile.TemporaryDirectory(prefix="medfed-bench-") as name:
        bench = Bench(Path(name), rounds, max_busy, max_wait)
        if warmup:
            log("warm-up (page cache, .pyc files): one run of each arm, not recorded")
            outs = {e: bench.federation(e, rounds, record=False) for e in engines}
            bench.plain(rounds, outs, record=False)
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)
        for repeat in range(1, repeats + 1):
            log(f"repeat {repeat}/{repeats}")
            outs = {e: bench.federation(e, rounds) for e in engines}
            bench.plain(rounds, outs)
            startup_outs = {e: bench.federation(e, 1) for e in engines}
            bench.plain(1, startup_outs)
            for probe, code in IMPORTS.items():
                bench.python(probe, code)
            for out in [*outs.values(), *startup_outs.values()]:
                shutil.rmtree(out, ignore_errors=True)
    return _report(bench, engines, repeats, rounds, started)


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def _arm(bench: Bench, name: str) -> dict:
    out = {
        "median_s": median(bench.wall[name]),
        "min_s": round(min(bench.wall[name]), 4),
        "samples_s": bench.wall[name],
        "cpu_median_s": median(bench.cpu[name]),
        "cpu_samples_s": bench.cpu[name],
    }
    if name in bench.internal:
        out["internal_median_s"] = median(bench.internal[name])
    if bench.steady.get(name):
        out["steady_round_median_s"] = median(bench.steady[name])
    if name in bench.steps:
        out["total_train_steps"] = sorted(bench.steps[name])
    return out


def _ratios(bench: Bench, arm: str, reference: str) -> dict:
    wall, ref = bench.wall[arm], bench.wall[reference]
    paired = [a / b for a, b in zip(wall, ref, strict=True)]
    out = {
        "wall_median_ratio": _ratio(statistics.median(wall), statistics.median(ref)),
        "wall_paired_median_ratio": round(statistics.median(paired), 3),
        "wall_min_ratio": _ratio(min(wall), min(ref)),
        "cpu_median_ratio": _ratio(
            statistics.median(bench.cpu[arm]), statistics.median(bench.cpu[reference])
        ),
    }
    if bench.steady.get(arm) and bench.steady.get(reference):
        out["steady_round_ratio"] = _ratio(
            statistics.median(bench.steady[arm]), statistics.median(bench.steady[reference])
        )
    return out


def _report(bench: Bench, engines: list[str], repeats: int, rounds: int, started: dict) -> dict:
    arms_all = [*engines, "plain"]
    arms = {arm: _arm(bench, arm) for arm in arms_all}
    ratios = {f"{e}_over_plain": _ratios(bench, e, "plain") for e in engines}
    plain_steps = bench.steps["plain"]
    fed_steps = {e: sorted(bench.steps[e]) for e in engines}
    headline = {f"{e}_over_plain": ratios[f"{e}_over_plain"]["wall_median_ratio"] for e in engines}
    startup = {
        "imports": {probe: _arm(bench, probe) for probe in IMPORTS},
        "rounds1": {arm: _arm(bench, f"{arm}_rounds1") for arm in arms_all},
        "rounds1_over_plain": {e: _ratios(bench, f"{e}_rounds1", "plain_rounds1") for e in engines},
        "extra_startup_s_vs_plain_rounds1": {
            e: round(
                statistics.median(bench.wall[f"{e}_rounds1"])
                - statistics.median(bench.wall["plain_rounds1"]),
                3,
            )
            for e in engines
        },
    }
    busy = bench.busy_before
    return {
        "benchmark": "sim_overhead",
        "what": "whole-process wall time of a simulated federation / the same SGD steps in "
        "plain PyTorch (benchmarks/plain_fedavg.py); arms interleaved, medians",
        "setup": {
            "task": "diagnosis",
            "hospitals": HOSPITALS,
            "rounds": rounds,
            "model": "logreg (defaults)",
            "local_epochs": 1,
            "batch_size": 32,
            "lr": 0.1,
            "repeats": repeats,
            "order_per_repeat": [*arms_all, *[f"{a}_rounds1" for a in arms_all], *IMPORTS],
        },
        "headline": headline,
        "target": {
            "inprocess_over_plain_max": TARGET_INPROCESS_OVER_PLAIN,
            "met": headline["inprocess_over_plain"] <= TARGET_INPROCESS_OVER_PLAIN,
        },
        "arms": arms,
        "ratios": ratios,
        "equal_work": {
            "plain_total_train_steps": sorted(plain_steps),
            "federation_total_train_steps": fed_steps,
            "equal": all(set(s) == plain_steps for s in fed_steps.values()),
            "max_abs_final_weight_diff": bench.weight_diff,
        },
        "startup": startup,
        "machine": started,
        "noise": {
            "cpu_busy_fraction_before_samples": {
                "min": round(min(busy), 3),
                "median": round(statistics.median(busy), 3),
                "max": round(max(busy), 3),
            },
            "seconds_waited_for_idle": round(bench.waited, 1),
            "max_busy_allowed": bench.max_busy,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="samples per arm (median)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 repeat, 3 rounds, no warm-up"
    )
    parser.add_argument("--skip-ray", action="store_true", help="leave out the Ray arm")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--no-warmup", action="store_true", help="skip the unrecorded warm-up run of each arm"
    )
    parser.add_argument(
        "--max-busy",
        type=float,
        default=0.3,
        help="start a sample only when the CPUs are at most this busy",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=120.0,
        help="seconds to wait for idle CPUs before a sample (then go anyway)",
    )
    args = parser.parse_args()
    repeats, rounds = (1, 3) if args.quick else (args.repeats, args.rounds)
    if repeats < 1 or rounds < 2:
        parser.error("--repeats must be at least 1 and --rounds at least 2")
    result = run(
        repeats,
        rounds,
        args.skip_ray,
        not (args.quick or args.no_warmup),
        args.max_busy,
        5.0 if args.quick else args.max_wait,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
