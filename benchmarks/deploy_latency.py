"""Seconds per round of a 3-hospital diagnosis study on Flower's Deployment Engine, on loopback,
with the real commands.

Two arms, each a new :class:`medfed.infra.loopback.LoopbackFederation`: ``medfed coordinator
init|add-node|start`` (TLS SuperLink with node authentication), three ``medfed node start`` with
cards from ``medfed synth export`` and keys from ``medfed node keys``, and the study submitted with
``medfed run rounds=5 privacy=none strategy.min_nodes=3`` (``federation=nodes``):

* ``before``: Flower 1.41's defaults, ``--flower-defaults`` on the coordinator and the nodes:
  ``flower-supernode`` (a new ``flwr-clientapp`` process per message, SuperExec polling every
  1 s, the SuperNode polling the SuperLink every 3 s) and the Grid's 3 s reply poll.
* ``after``: the default fast setup (:mod:`medfed.client.supernode.launcher`,
:mod:`medfed.infra.polling`):
  the SuperNode with 0.1 s polls and ``--isolation process``, one long-lived
  :mod:`medfed.client.supernode.worker` per node, the Grid polling every 0.05 s, and object pulls
  that
  retry after 0.02 s instead of 1 s (:func:`medfed.infra.flower_patches.quick_object_pulls`).

A training round's seconds come from the ``seconds`` column of ``metrics.csv`` (the study times
push, train at every hospital, replies and aggregation). ``round0_and_final_evaluate_s`` is
``wall_seconds`` of ``summary.json`` minus the training rounds: round 0 (``query.stats`` and
``query.prepare``), the final ``evaluate`` and the study's set-up. ``medfed_run_s`` is the whole
``medfed run`` from outside (FAB build, run start, ServerApp imports, the study, log stream end).
The headline is the median training round. Arms alternate (before, after, before, ...); every
repeat starts new processes. Progress goes to stderr, one JSON object to stdout.

    .venv/bin/python benchmarks/deploy_latency.py             # ~4 min on 2 idle cores
    .venv/bin/python benchmarks/deploy_latency.py --quick     # rounds=2
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from _common import log, machine, median, read_json, wait_for_idle

from medfed.infra.flower_patches import PULL_BACKOFF, PULL_BACKOFF_CAP
from medfed.infra.launch import DEFAULT_HEARTBEAT, PRELOAD, SUPEREXEC_POLL, WORKER_POLL
from medfed.infra.launch import DEFAULT_POLL as SUPERNODE_POLL
from medfed.infra.loopback import LoopbackFederation
from medfed.infra.polling import DEFAULT_POLL as GRID_POLL

HOSPITALS = 3
ARMS = {"before": True, "after": False}  # arm -> --flower-defaults
SETTINGS = {
    "before": "medfed coordinator start --flower-defaults, medfed node start --flower-defaults: "
    "flower-supernode --isolation subprocess (a new flwr-clientapp process per "
    "message; SuperExec task poll 1 s; SuperNode idle poll 3 s, reply wait 0.5 s; "
    "heartbeat 30 s); Grid reply poll 3 s",
    "after": {
        "supernode": "python -m medfed.client.supernode.launcher "
        f"--poll {SUPERNODE_POLL} --heartbeat {DEFAULT_HEARTBEAT:g}: "
        "Flower's flower-supernode --isolation process with "
        f"every sleep of its loop capped at {SUPERNODE_POLL} s (Flower: 3 s idle, "
        "0.5 s reply wait)",
        "clientapp": "python -m medfed.client.supernode.worker "
        f"--preload {' --preload '.join(PRELOAD)}"
        ": one long-lived process per node, started by the launcher, runs every "
        f"message (imports and app bundle loaded once); task poll {WORKER_POLL} s "
        "(SuperExec: 1 s)",
        "grid": f"medfed.infra.polling.send_and_receive, reply poll {GRID_POLL} s (Flower's "
        "Grid: 3 s)",
        "object_pulls": f"first retry after {PULL_BACKOFF} s, at most {PULL_BACKOFF_CAP} s "
        "apart, for an object not there yet, in the worker, the SuperNode and "
        "the ServerApp (Flower: 1 s, then 2, 4... up to 10 s)",
        "superlink": f"FLWR_SUPEREXEC_TASK_POLL_INTERVAL={SUPEREXEC_POLL} (ServerApp start, "
        "once per run; Flower: 1 s)",
    },
}


def run_arm(arm: str, rounds: int, tmp: Path, repeat: int) -> dict:
    """One study on a new loopback federation; its timings from metrics.csv and summary.json."""
    work = tmp / f"{arm}-{repeat}"
    out = work / "out"
    with LoopbackFederation(work, HOSPITALS, flower_defaults=ARMS[arm]) as federation:
        started = time.perf_counter()
        done = federation.run(
            f"rounds={rounds}",
            "privacy=none",
            f"strategy.min_nodes={HOSPITALS}",
            f"output_dir={out}",
        )
        medfed_run = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{arm}: medfed run failed (logs in {work}):\n{done.stderr[-2000:]}")
    summary = read_json(out / "summary.json")
    if summary.get("failures") or summary.get("stopped"):
        raise RuntimeError(
            f"{arm}: the study did not complete cleanly: "
            f"{summary.get('failures')} {summary.get('stopped')}"
        )
    with (out / "metrics.csv").open(newline="") as handle:
        seconds = {int(row["round"]): float(row["seconds"]) for row in csv.DictReader(handle)}
    train = [seconds[r] for r in range(1, rounds + 1)]
    return {
        "train_round_s": [round(s, 3) for s in train],
        "round0_and_final_evaluate_s": round(summary["wall_seconds"] - sum(train), 3),
        "wall_s": summary["wall_seconds"],
        "medfed_run_s": round(medfed_run, 3),
        "accuracy": summary["global"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="rounds=2, one repeat")
    parser.add_argument("--max-busy", type=float, default=0.3)
    parser.add_argument("--max-wait", type=float, default=60.0)
    args = parser.parse_args()
    rounds, repeats = (2, 1) if args.quick else (args.rounds, args.repeats)
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    noise = []
    with tempfile.TemporaryDirectory(prefix="medfed-deploy-latency-") as tmp:
        for repeat in range(repeats):
            for arm in ARMS:
                busy, waited = wait_for_idle(args.max_busy, args.max_wait)
                noise.append(
                    {"arm": arm, "busy_before": round(busy, 2), "waited_s": round(waited, 1)}
                )
                log(f"{arm} #{repeat + 1}: {rounds} rounds (CPU busy {busy:.0%})")
                results[arm].append(run_arm(arm, rounds, Path(tmp), repeat))
                log(f"  {json.dumps(results[arm][-1])}")
    per_round = {
        arm: median([s for r in runs for s in r["train_round_s"]]) for arm, runs in results.items()
    }
    print(
        json.dumps(
            {
                "before_s_per_round": per_round["before"],
                "after_s_per_round": per_round["after"],
                "ratio": round(per_round["before"] / per_round["after"], 2),
                "round0_and_final_evaluate_s": {
                    arm: median([r["round0_and_final_evaluate_s"] for r in runs])
                    for arm, runs in results.items()
                },
                "medfed_run_s": {
                    arm: median([r["medfed_run_s"] for r in runs]) for arm, runs in results.items()
                },
                "runs": results,
                "settings": SETTINGS,
                "setup": {
                    "hospitals": HOSPITALS,
                    "rounds": rounds,
                    "repeats": repeats,
                    "task": "diagnosis",
                    "privacy": "none",
                    "transport": "127.0.0.1, TLS (own CA) + SuperNode authentication",
                },
                "noise": noise,
                "machine": machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
