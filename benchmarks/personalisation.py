"""Personalisation under strong site heterogeneity: per hospital, global vs local-only vs the
personalised methods, on each hospital's own test rows, averaged over seeds (JSON on stdout).

    .venv/bin/python benchmarks/personalisation.py [--seeds 0,1,2] [--tasks diagnosis,...]
                                                   [--rounds 8]

"Strong" heterogeneity is ``SKEW`` below: every shift of the built-in generator
(:class:`medfed.models.ingest.synthetic.SkewConfig`) at 1.0, twice the default age/sex/prevalence
shifts and more than three times the default per-site outcome shift. Each (task, seed, method)
is one study on the in-process engine (4 hospitals, ``--rounds`` FedAvg rounds); the
``finetune`` study gives the global model (its ``federated`` column), the local-only model and
fine-tuning; ``fedper`` and ``fedbn`` (MLP tasks) give their own personalised models. The values
are what the nodes reported (:mod:`medfed.client.personal`): nothing here touches a test row.
The proof test (``tests/e2e/test_personalisation_proof.py``) runs this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any

SKEW = "federation.skew={age: 1.0, sex: 1.0, prevalence: 1.0, site_effect: 1.0, missing: 0.1}"
COMMON = [
    "federation.hospitals=4",
    "federation.min_size=120",
    "federation.max_size=600",
    "quiet=true",
    "personalise.epochs=5",
    SKEW,
]
TASK = {
    "diagnosis": ["task.model.family=mlp"],
    "treatment": ["task.model.family=mlp"],
    "pricing": ["train.optimizer=adam", "train.lr=0.01"],
}
METHODS = ("finetune", "fedper", "fedbn")


def _run(task: str, seed: int, method: str, rounds: int) -> dict[str, Any]:
    from medfed.client.app import app as client_app
    from medfed.models.ingest.sources import federation_size
    from medfed.server.simulation.engine import InProcessGrid
    from medfed.server.study.config import compose_study
    from medfed.server.study.loop import run_study

    with tempfile.TemporaryDirectory() as out:
        study = compose_study(
            [
                f"task={task}",
                f"seed={seed}",
                f"rounds={rounds}",
                *COMMON,
                *TASK[task],
                f"personalise.method={method}",
                f"output_dir={out}",
            ]
        )
        n = federation_size(study["federation"])
        grid = InProcessGrid(
            client_app, [{"partition-id": i, "num-partitions": n} for i in range(n)], run_config={}
        )
        return run_study(grid, study).personalised


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def task_table(task: str, seeds: list[int], rounds: int) -> dict[str, Any]:
    """Per hospital: mean over seeds of global, local and each method's personalised value."""
    cells: dict[str, dict[str, list[float]]] = {}
    higher = True
    for seed in seeds:
        for method in METHODS:
            table = _run(task, seed, method, rounds)
            higher = table["metric"] not in ("rmse", "mae", "loss")
            for name, row in table["hospitals"].items():
                cell = cells.setdefault(name, {})
                if method == "finetune":
                    cell.setdefault("n_test", []).append(row["n_test"])
                    cell.setdefault("global", []).append(row["federated"][0])
                    cell.setdefault("local", []).append(row["local"][0])
                cell.setdefault(method, []).append(row["personalised"][0])
    hospitals = {name: {key: _mean(v) for key, v in cell.items()} for name, cell in cells.items()}
    pick = max if higher else min
    for row in hospitals.values():
        row["best_personalised"] = pick(row[m] for m in METHODS)
    return {"metric": table["metric"], "higher_is_better": higher, "hospitals": hospitals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default="diagnosis,treatment,pricing")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    report = {task: task_table(task, seeds, args.rounds) for task in args.tasks.split(",")}
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["seeds"] = seeds
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
