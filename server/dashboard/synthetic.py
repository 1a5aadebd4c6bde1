"""A synthetic run directory of any size, for the dashboard's load-time benchmark and tests.

It holds a ``status.json`` as :mod:`medfed.server.monitor.status` writes it (alerts computed by
:mod:`medfed.server.monitor.alerts`), a ``summary.json`` with a per-hospital benefit table and a
``cross_site.csv``: every part of the study page has something to draw. Values come from a
seeded generator; no hospital data is involved.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

from medfed.server.monitor.alerts import DEFAULTS, compute_alerts

STATES = ("trained",) * 17 + ("missed", "refused", "rejected")
REASONS = {
    "trained": "",
    "missed": "no reply within timeout=600 s",
    "refused": "refused by the node's policy: epsilon 9.1 would pass max_epsilon_total 9",
    "rejected": "update norm 41.2 is more than 10 x the median of the others",
}


def _entry(rng: random.Random, round_: int, sites: list[str]) -> dict[str, Any]:
    participation = {s: [state := rng.choice(STATES), REASONS[state]] for s in sites}
    hospitals = {
        s: {
            "accuracy": min(0.95, 0.55 + 0.003 * round_ + rng.uniform(-0.05, 0.05)),
            "auroc": min(0.99, 0.6 + 0.003 * round_ + rng.uniform(-0.04, 0.04)),
        }
        for s in sites
    }
    mean = {m: sum(h[m] for h in hospitals.values()) / len(sites) for m in ("accuracy", "auroc")}
    return {
        "round": round_,
        "seconds": round(rng.uniform(0.2, 0.6), 4),
        "participation": participation,
        "epsilon": {
            s: 0.09 * round_ * (1 + i / len(sites))
            for i, s in enumerate(sites)
            if participation[s][0] == "trained"
        },
        "global": mean,
        "hospitals": hospitals,
    }


def write_synthetic_run(
    folder: Path, rounds: int, hospitals: int, *, seed: int = 0, status: str = "finished"
) -> Path:
    """Write a run directory of ``rounds`` x ``hospitals`` into ``folder``; return ``folder``."""
    rng = random.Random(seed)
    sites = [f"hospital-{i:02d}" for i in range(hospitals)]
    history = [_entry(rng, r, sites) for r in range(1, rounds + 1)]
    document = {
        "study_id": f"diagnosis-synthetic{seed}",
        "task": "diagnosis",
        "strategy": "fedavg",
        "engine": "inprocess",
        "privacy": "dpsgd",
        "rounds": rounds,
        "primary_metric": "accuracy",
        "higher_is_better": True,
        "started": "2026-01-01T00:00:00Z",
        "updated": "2026-01-01T01:00:00Z",
        "status": status,
        "reason": "",
        "round": rounds,
        "budget": {s: 20.0 for s in sites},
        "history": history,
    }
    document["alerts"] = compute_alerts(document, DEFAULTS)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "status.json").write_text(json.dumps(document))
    benefit = [
        {
            "hospital": s,
            "federated": history[-1]["hospitals"][s]["accuracy"],
            "local_only": history[0]["hospitals"][s]["accuracy"],
        }
        for s in sites
    ]
    (folder / "summary.json").write_text(json.dumps({"task": "diagnosis", "benefit": benefit}))
    with (folder / "cross_site.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", *sites])
        for model in ["global", *(f"local {s}" for s in sites[:3])]:
            writer.writerow([model, *(f"{rng.uniform(0.5, 0.9):.6f}" for _ in sites)])
    return folder
