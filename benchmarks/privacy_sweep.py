"""Privacy/utility sweep: epsilon x task x metric, each task with its own defaults, CSV and JSON.

    .venv/bin/python benchmarks/privacy_sweep.py [--epsilons 1,8,inf] [--seeds 0,1,2]
                                                 [--tasks diagnosis,treatment,pricing]
                                                 [--out outputs/privacy-sweep] [override ...]

Every point is the study ``medfed simulate task=<task> seed=<seed>`` with the task's own
training defaults (``training:`` in ``conf/task/<task>.yaml``: optimiser, learning rate, batch,
rounds; under DP-SGD its ``training.dpsgd:`` block first: the clipping norm and DP-only
settings), 4 synthetic hospitals, FedAvg and the in-process engine,
run in this process through ``run_simulated_study``; only the privacy changes. A finite epsilon
is ``privacy=dpsgd privacy.target_epsilon=<epsilon>``: each hospital plans the noise for the
whole study (rounds x local steps at its own sampling rate) and its ledger composes the spend;
``inf`` is ``privacy=none``, the non-private reference. Extra arguments are Hydra overrides for
every point (e.g. ``rounds=20``).

The targets of issue 13 (section 4), checked on the means over the seeds: pricing federated RMSE
at epsilon 1 <= 1.15x and at epsilon 8 <= 1.05x the non-private RMSE; diagnosis and treatment
accuracy at epsilon 1 within 3 points of the non-private accuracy. ``ok`` is null where no
target applies.

Writes ``<out>/privacy_sweep.csv`` (one row per task, epsilon and seed: epsilon target and
achieved (max over hospitals), delta, every metric of the task, seconds, rounds missed) and
prints one JSON object on stdout: the settings, the rows and ``table`` (per task and epsilon: the
mean of each metric over the seeds, the primary metric's ratio or drop against the non-private
mean, and ``ok``). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

TASKS = ("diagnosis", "treatment", "pricing")
SETTINGS = ["federation=synthetic", "federation.hospitals=4", "strategy=fedavg", "engine=inprocess"]
DEFAULT_EPSILONS = "1,8,inf"
# (task, epsilon) -> (kind, limit): "ratio" of RMSE to the non-private one, or "drop" in points.
TARGETS = {
    ("pricing", 1.0): ("ratio", 1.15),
    ("pricing", 8.0): ("ratio", 1.05),
    ("diagnosis", 1.0): ("drop", 3.0),
    ("treatment", 1.0): ("drop", 3.0),
}
COLUMNS = [
    "task",
    "epsilon_target",
    "seed",
    "epsilon_achieved",
    "delta",
    "seconds",
    "rounds_missed",
]


def parse_epsilons(text: str) -> list[float]:
    """``"0.5,1,inf"`` -> ``[0.5, 1.0, inf]``; every value must be positive (``inf``: no DP)."""
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise SystemExit(
            f"privacy_sweep: --epsilons must be numbers or inf, got {text!r}"
        ) from None
    if not values or any(not v > 0 for v in values):
        raise SystemExit(f"privacy_sweep: --epsilons must be positive (inf: no DP), got {text!r}")
    return values


def run_point(
    task: str, epsilon: float, seed: int, out: Path, overrides: list[str]
) -> dict[str, Any]:
    """Run one study and return its row (``epsilon_target`` inf: no DP)."""
    from medfed.server.outputs.rundir import summary
    from medfed.server.simulation.run import run_simulated_study
    from medfed.server.study.config import compose_study

    privacy = (
        ["privacy=none"]
        if math.isinf(epsilon)
        else ["privacy=dpsgd", f"privacy.target_epsilon={epsilon}"]
    )
    folder = out / f"{task}-eps-{epsilon:g}-seed{seed}"
    study = compose_study(
        [
            f"task={task}",
            *SETTINGS,
            *privacy,
            f"seed={seed}",
            "quiet=true",
            f"output_dir={folder}",
            *overrides,
        ]
    )
    started = time.perf_counter()
    with warnings.catch_warnings():  # Opacus: "Optimal order is the largest alpha" at small eps
        warnings.simplefilter("ignore", UserWarning)
        result = summary(run_simulated_study(study))
    spent = [h["epsilon"] for h in result["hospitals"] if h.get("epsilon") is not None]
    return {
        "task": task,
        "epsilon_target": epsilon,
        "seed": seed,
        "epsilon_achieved": max(spent) if spent else math.inf,
        "delta": max((h["delta"] for h in result["hospitals"] if h.get("delta")), default=None),
        **{k: v for k, v in result["global"].items() if k != "loss"},
        "seconds": round(time.perf_counter() - started, 2),
        "rounds_missed": sum(len(h["rounds_missed"]) for h in result["hospitals"]),
    }


def _verdict(
    task: str, epsilon: float, metric: str, value: float, reference: float | None
) -> dict[str, Any]:
    """The primary metric against the non-private mean, and whether issue 13's target holds."""
    if reference is None or math.isinf(epsilon):
        return {}
    if metric == "rmse":
        out: dict[str, Any] = {"rmse_ratio": round(value / reference, 4)}
        kind, measured = "ratio", out["rmse_ratio"]
    else:
        out = {f"{metric}_drop_points": round(100 * (reference - value), 2)}
        kind, measured = "drop", out[f"{metric}_drop_points"]
    target = TARGETS.get((task, epsilon))
    out["ok"] = None if target is None or target[0] != kind else measured <= target[1]
    return out


def table(rows: list[dict[str, Any]], primary: dict[str, str]) -> list[dict[str, Any]]:
    """Per task and epsilon: the mean of every metric over the seeds and the verdict."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["epsilon_target"]), []).append(row)
    out = []
    for (task, epsilon), group in groups.items():
        metrics = [k for k in group[0] if k not in COLUMNS]
        means = {k: statistics.mean(float(r[k]) for r in group) for k in metrics}
        reference = groups.get((task, math.inf))
        ref = statistics.mean(float(r[primary[task]]) for r in reference) if reference else None
        out.append(
            {
                "task": task,
                "epsilon_target": epsilon,
                "seeds": len(group),
                "epsilon_achieved_max": max(r["epsilon_achieved"] for r in group),
                **{k: round(v, 4) for k, v in means.items()},
                **_verdict(task, epsilon, primary[task], means[primary[task]], ref),
            }
        )
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per point; the metric columns are the union over the tasks."""
    columns = COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: row.get(c) for c in columns} for row in rows)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in TASKS for n in names):
        raise SystemExit(
            f"privacy_sweep: --tasks must be a comma-separated subset of "
            f"{','.join(TASKS)}, got {text!r}"
        )
    return names


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise SystemExit(f"privacy_sweep: --seeds must be non-negative integers, got {text!r}")
    return seeds


def sweep(
    tasks: list[str], epsilons: list[float], seeds: list[int], out: Path, overrides: list[str]
) -> dict[str, Any]:
    """Run every point and write the CSV; return what is printed as JSON."""
    from medfed.models.schema import load_task

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in tasks:
        for epsilon in epsilons:
            for seed in seeds:
                print(
                    f"privacy_sweep: {task} epsilon={epsilon:g} seed={seed} ...",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(run_point(task, epsilon, seed, out, overrides))
                if rows[-1]["rounds_missed"]:
                    print(
                        f"privacy_sweep: {rows[-1]['rounds_missed']} hospital round(s) "
                        "refused or failed; see its summary.json",
                        file=sys.stderr,
                    )
    write_csv(rows, out / "privacy_sweep.csv")
    primary = {task: load_task(task).primary_metric for task in tasks}

    def clean(row: dict[str, Any]) -> dict[str, Any]:
        return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()}

    return {
        "settings": [*SETTINGS, *overrides],
        "seeds": seeds,
        "csv": str(out / "privacy_sweep.csv"),
        "table": [clean(r) for r in table(rows, primary)],
        "rows": [clean(r) for r in rows],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epsilons",
        default=DEFAULT_EPSILONS,
        help=f"comma-separated budgets, inf = no DP (default {DEFAULT_EPSILONS})",
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/privacy-sweep"),
        help="folder for the CSV and the run directories",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every point")
    args = parser.parse_args(argv)
    from medfed.server.study.config import ConfigError

    epsilons, seeds, tasks = (parse_epsilons(args.epsilons), _seeds(args.seeds), _names(args.tasks))
    try:
        report = sweep(tasks, epsilons, seeds, args.out, args.overrides)
    except ConfigError as exc:
        raise SystemExit(f"privacy_sweep: {exc}") from None
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
