"""Every strategy x task with its defaults: the final primary metric over several seeds.

    .venv/bin/python benchmarks/strategy_table.py [--seeds 0,1,2] [--tasks diagnosis,...]
                                                  [--strategies fedavg,...] [--out DIR]
                                                  [override ...]

Each cell is ``medfed simulate task=<task> strategy=<strategy> seed=<seed>`` with nothing else
changed (the task's own training defaults, the strategy's own hyper-parameters, 4 synthetic
hospitals, the in-process engine), run in this process through ``run_simulated_study``. The
table holds the mean of the task's primary metric over the seeds and the gap to FedAvg: in
points (100 x difference) for a classification metric, in percent of FedAvg's RMSE for pricing;
positive = worse than FedAvg. ``ok`` is the acceptance rule of issue 13 section 5: no strategy
more than 3 points (pricing: 10% RMSE) behind FedAvg. Extra arguments are Hydra overrides for
every cell.

The fairness view of issue 13 section 2, per strategy: ``worst`` is the mean over seeds of the
worst hospital's primary metric on its own test rows (lowest accuracy, highest RMSE) and
``spread`` the mean of max - min over the hospitals, both over the hospitals whose metric the
summary reports (a hospital whose test split has a class below the small-cell limit has its
metrics withheld). A strategy for the worst site (q-FedAvg) should raise ``worst`` or narrow
``spread``.

Writes ``<out>/strategy_table.csv`` (one row per strategy, task and seed, so every number can be
recomputed) and prints the table as one JSON object on stdout (progress on stderr). Takes about
``11 strategies x 3 tasks x 3 seeds`` runs of 1-10 s each.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

TASKS = ("diagnosis", "treatment", "pricing")
STRATEGIES = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedavgm",
    "fedmedian",
    "trimmedmean",
    "krum",
    "qfedavg",
    "scaffold",
)
LIMITS = {"points": 3.0, "rmse_percent": 10.0}


def run_cell(task: str, strategy: str, seed: int, overrides: list[str]) -> dict[str, Any]:
    """One study with defaults; its primary metric and how many updates were rejected."""
    from medfed.models.pipeline import study_schema
    from medfed.server.outputs.rundir import summary
    from medfed.server.simulation.run import run_simulated_study
    from medfed.server.study.config import compose_study

    with tempfile.TemporaryDirectory() as out:
        study = compose_study(
            [
                f"task={task}",
                f"strategy={strategy}",
                f"seed={seed}",
                "quiet=true",
                f"output_dir={out}",
                *overrides,
            ]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = summary(run_simulated_study(study))
    metric = study_schema(study).primary_metric
    own = [  # each hospital's own test rows (a metric too small to report is None: skipped)
        float(h["metrics"][metric])
        for h in result["hospitals"]
        if h.get("metrics", {}).get(metric) is not None
    ]
    return {
        "task": task,
        "strategy": strategy,
        "seed": seed,
        "metric": metric,
        "value": float(result["global"][metric]),
        "rounds": int(study["rounds"]),
        "rejected": len(result.get("rejected") or []),
        "worst": max(own) if metric == "rmse" else min(own),
        "spread": max(own) - min(own),
    }


def gap(task_metric: str, value: float, reference: float) -> tuple[float, str]:
    """How far ``value`` is behind FedAvg's ``reference`` (positive = worse) and its unit."""
    if task_metric == "rmse":
        return 100.0 * (value - reference) / reference, "rmse_percent"
    return 100.0 * (reference - value), "points"


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per strategy and task, with the gap to FedAvg and the acceptance flag."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["task"], row["strategy"]), []).append(row)
    out = []
    for (task, strategy), group in cells.items():
        values = [r["value"] for r in group]
        out.append(
            {
                "task": task,
                "strategy": strategy,
                "metric": group[0]["metric"],
                "mean": statistics.mean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "seeds": len(values),
                "rejected": sum(r["rejected"] for r in group),
                "worst": statistics.mean(r["worst"] for r in group),
                "spread": statistics.mean(r["spread"] for r in group),
            }
        )
    for cell in out:
        ref = next(
            (c["mean"] for c in out if c["task"] == cell["task"] and c["strategy"] == "fedavg"),
            None,
        )
        if ref is not None:
            cell["behind_fedavg"], cell["unit"] = gap(cell["metric"], cell["mean"], ref)
            cell["ok"] = cell["behind_fedavg"] <= LIMITS[cell["unit"]]
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = [
        "task",
        "strategy",
        "seed",
        "metric",
        "value",
        "rounds",
        "rejected",
        "worst",
        "spread",
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _names(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if not names or bad:
        raise SystemExit(
            f"strategy_table: {flag} must be a comma-separated subset of "
            f"{','.join(allowed)}, got {text!r}"
        )
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", type=Path, default=Path("outputs/strategy-table"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every cell")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"strategy_table: --seeds must be integers, got {args.seeds!r}") from None
    tasks = _names(args.tasks, TASKS, "--tasks")
    strategies = _names(args.strategies, STRATEGIES, "--strategies")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in tasks:
        for strategy in strategies:
            for seed in seeds:
                rows.append(run_cell(task, strategy, seed, args.overrides))
                print(
                    f"strategy_table: {task} {strategy} seed={seed}: "
                    f"{rows[-1]['metric']}={rows[-1]['value']:.4g}",
                    file=sys.stderr,
                    flush=True,
                )
    write_csv(rows, args.out / "strategy_table.csv")
    cells = table(rows)
    print(
        json.dumps(
            {
                "seeds": seeds,
                "overrides": args.overrides,
                "limits": LIMITS,
                "csv": str(args.out / "strategy_table.csv"),
                "all_ok": all(c.get("ok", True) for c in cells),
                "table": cells,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
