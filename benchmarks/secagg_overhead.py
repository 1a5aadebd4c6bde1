"""SecAgg+ overhead: seconds per train round with secure aggregation / without, as JSON.

    .venv/bin/python benchmarks/secagg_overhead.py [--repeats 7] [--rounds 5] [--models ...]

Setup: 4 synthetic hospitals, ``task=diagnosis``, defaults otherwise (1 local epoch, batch 32),
on the in-process engine, in this process (imports and Hydra are paid once, before timing). Each
repeat runs both arms in a fresh random order (one warm-up study per arm is not recorded):

- ``plain``: ``secure_aggregation=false`` (FedAvg on the hospitals' weights);
- ``secagg``: ``secure_aggregation=true`` (Flower's SecAgg+: four message exchanges per round,
  key agreement, Shamir shares, masking and unmasking; ``medfed.strategies.secagg``).

A round's time is what the study loop records for it (``RoundRecord.seconds``: sending the
weights, every hospital's evaluation and training, aggregation); a run's value is the median over
its rounds, the reported value the median over runs. The process CPU time of a whole study (round
0 and the final evaluation included) is reported too, being less disturbed by other load on a
shared machine. Also reported: bytes on the wire per round, and the largest difference between
the final weights of the two arms next to the per-round quantisation bound 2 c K / sum q_k
(``medfed.strategies.secagg``). Models: the default logistic regression, and an MLP with 256 hidden
units to show how the per-weight cost of masking grows with the model.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import warnings

import numpy as np
from _common import log, machine

from medfed.client.app import app
from medfed.models.ingest.sources import federation_size
from medfed.server.simulation.engine import InProcessGrid
from medfed.server.study.config import compose_study
from medfed.server.study.loop import StudyResult, run_study

HOSPITALS = 4
MODELS = {
    "diagnosis-logreg": ["task=diagnosis"],
    "diagnosis-mlp256": ["task=diagnosis", "task.model.family=mlp", "task.model.hidden=[256]"],
}
ARMS = {"plain": "secure_aggregation=false", "secagg": "secure_aggregation=true"}


def run(overrides: list[str]) -> tuple[StudyResult, float]:
    """One in-process study; its result and the process CPU seconds it took."""
    study = compose_study(
        [
            *overrides,
            "quiet=true",
            f"federation.hospitals={HOSPITALS}",
            "checkpoint.every=0",
            "output_dir=/tmp/medfed-secagg-bench",
        ]
    )
    n = federation_size(study["federation"])
    grid = InProcessGrid(
        app, [{"partition-id": i, "num-partitions": n} for i in range(n)], run_config={}
    )
    cpu = time.process_time()
    result = run_study(grid, study)
    return result, time.process_time() - cpu


def _bound(result: StudyResult) -> float:
    cfg = result.study["secagg"]
    n = np.array([h["n_train"] for h in result.hospitals.values()], dtype=float)
    q = np.round(n / n.max() * cfg["quantization_range"])
    return float(2 * cfg["clipping_range"] * len(n) / q.sum())


def measure(name: str, rounds: int, repeats: int) -> dict:
    base = [*MODELS[name], f"rounds={rounds}"]
    samples: dict[str, dict[str, list[float]]] = {a: {"round": [], "cpu": []} for a in ARMS}
    last: dict[str, StudyResult] = {arm: run([*base, flag])[0] for arm, flag in ARMS.items()}
    order = random.Random(0)
    for repeat in range(repeats):
        for arm in order.sample(list(ARMS), len(ARMS)):
            result, cpu = run([*base, ARMS[arm]])
            samples[arm]["round"].append(statistics.median(r.seconds for r in result.rounds[1:]))
            samples[arm]["cpu"].append(cpu)
            last[arm] = result
        log(f"{name}: repeat {repeat + 1}/{repeats}")
    round_s = {arm: statistics.median(s["round"]) for arm, s in samples.items()}
    cpu_s = {arm: statistics.median(s["cpu"]) for arm, s in samples.items()}
    wire = {
        arm: statistics.median(r.wire_bytes for r in result.rounds[1:])
        for arm, result in last.items()
    }
    secure, plain = last["secagg"], last["plain"]
    diff = max(
        float((secure.final_state[k] - plain.final_state[k]).abs().max()) for k in plain.final_state
    )
    return {
        "model": name,
        "parameters": sum(v.numel() for v in plain.final_state.values()),
        "round_s": {a: round(v, 4) for a, v in round_s.items()},
        "round_time_ratio": round(round_s["secagg"] / round_s["plain"], 2),
        "round_s_added": round(round_s["secagg"] - round_s["plain"], 4),
        "study_cpu_s": {a: round(v, 3) for a, v in cpu_s.items()},
        "study_cpu_ratio": round(cpu_s["secagg"] / cpu_s["plain"], 2),
        "wire_bytes_per_round": wire,
        "wire_ratio": round(wire["secagg"] / wire["plain"], 2) if wire["plain"] else None,
        "max_weight_diff_vs_plain": diff,
        "quantisation_bound_per_round": _bound(secure),
        "secure_rounds_failed": sum(len(r.failures) for r in secure.rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per arm (>= 5)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    models = args.models.split(",")
    if args.repeats < 5 or set(models) - set(MODELS):
        parser.error(f"--repeats must be >= 5 and --models among {sorted(MODELS)}")
    warnings.filterwarnings("ignore")
    results = [measure(name, args.rounds, args.repeats) for name in models]
    print(
        json.dumps(
            {
                "benchmark": "secagg_overhead",
                "engine": "inprocess",
                "hospitals": HOSPITALS,
                "rounds": args.rounds,
                "repeats": args.repeats,
                "results": results,
                "machine": machine(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
