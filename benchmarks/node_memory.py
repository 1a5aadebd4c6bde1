"""Peak memory of a hospital node reading a big export: ``node check`` and a node's round 0.

Writes a 14-column diagnosis export (13 features and the target, as a hospital's CSV with a
header, a few missing cells and a few bad rows) of 0.2, 1 and 2 million rows, then measures, each
in a fresh process started with ``nice``:

* ``check``: ``medfed node check --dataset CARD`` (the command hospital IT runs first);
* ``node``: what ``medfed node start`` does with the data when a study arrives: round 0 of the
  ClientApp (``site_summary`` + ``prepared_site``: read, validate, split, statistics, encoding);
* ``guard``: the reply guard's cost when an error text must be checked: building the node's cell
  vocabulary (``build_seconds``, once per data version) and checking one reason (``check_ms``).

Peak RSS is the child's own ``ru_maxrss`` from ``os.wait4`` (not the cumulative children figure),
seconds are wall time from outside. The arms are interleaved, each size and arm repeated
``--repeats`` times (median reported). Prints one JSON object::

    .venv/bin/python benchmarks/node_memory.py                 # 0.2M, 1M, 2M rows, 5 repeats
    .venv/bin/python benchmarks/node_memory.py --rows 200000 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ENV, log, machine, medfed_command, median  # noqa: E402

_NODE = """
import json, sys
from medfed.client import node
from medfed.server.study.config import compose_study
study = compose_study(["federation=sites", "federation.cards=[%s]", "strategy.min_nodes=1"])
config = json.dumps(study)
name, n_train, n_test, stats = node.site_summary(config, 0)
from medfed.models.encoding import merge_statistics
merged = json.dumps(merge_statistics([stats], min_cell=5).to_dict())
site = node.prepared_site(config, merged, 0)
print(n_train, n_test, site.x_train.shape)
"""


_GUARD = """
import json, time
from medfed.client.cellguard import vocabulary, withhold_cells
started = time.perf_counter()
cells = vocabulary("%s")
built = time.perf_counter() - started
reason = "DataConfigError: export.csv column 'cholesterol', 3 rows (4, 8, 10): text where a " \\
         "number is expected; fix the data or set on_invalid_row: drop in the card"
started = time.perf_counter()
for _ in range(1000):
    withhold_cells(reason, cells)
print(json.dumps({"build_seconds": built, "check_ms": (time.perf_counter() - started),
                  "cells": len(cells)}))
"""


def write_export(folder: Path, rows: int, seed: int = 0) -> Path:
    """A diagnosis CSV of ``rows`` rows in 200k-row blocks, and its card; returns the card."""
    rng = np.random.default_rng(seed)
    data = folder / f"export-{rows}.csv"
    with data.open("w", encoding="utf-8", newline="") as out:
        for start in range(0, rows, 200_000):
            n = min(200_000, rows - start)
            frame = pd.DataFrame(
                {
                    "age": rng.integers(25, 90, n),
                    "sex": rng.choice(["female", "male"], n),
                    "chest_pain": rng.choice(
                        ["typical_angina", "atypical_angina", "non_anginal", "asymptomatic"], n
                    ),
                    "resting_bp": rng.integers(90, 200, n),
                    "cholesterol": rng.integers(120, 500, n).astype(str).astype(object),
                    "fasting_blood_sugar_high": rng.integers(0, 2, n),
                    "resting_ecg": rng.choice(["normal", "st_t_abnormality", "lv_hypertrophy"], n),
                    "max_heart_rate": rng.integers(70, 210, n),
                    "exercise_angina": rng.integers(0, 2, n),
                    "st_depression": np.round(rng.uniform(0, 6, n), 1),
                    "st_slope": rng.choice(["upsloping", "flat", "downsloping", ""], n),
                    "major_vessels": rng.choice(["0", "1", "2", "3", ""], n),
                    "thal": rng.choice(["normal", "fixed_defect", "reversible_defect"], n),
                    "cad": rng.choice(["no", "yes"], n),
                }
            )
            frame.loc[rng.random(n) < 1e-4, "cholesterol"] = "n/a"  # a few invalid rows
            frame.to_csv(out, index=False, header=start == 0, lineterminator="\n")
    card = folder / f"export-{rows}.yaml"
    card.write_text(
        f"name: big{rows}\ntask: diagnosis\ntrain: {data.name}\n"
        "split: {test_fraction: 0.25, seed: 1}\n",
        encoding="utf-8",
    )
    return card


def measure(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``command`` niced in a fresh process; its own peak RSS (MB) and wall seconds."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["nice", "-n", "10", *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    extra = out.decode().strip().splitlines()[-1:] if b"build_seconds" in out else []
    proc.stdout.close(), proc.stderr.close()  # type: ignore[func-returns-value]
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(
            f"{command[-1][:60]} exited with {code}: {err.decode()[-800:]}{out.decode()[-400:]}"
        )
    return {
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "seconds": seconds,
        **(json.loads(extra[0]) if extra else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", default="200000,1000000,2000000", help="comma-separated row counts"
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, **ENV)
    results = []
    with tempfile.TemporaryDirectory(prefix="medfed-node-memory-") as tmp:
        for rows in [int(r) for r in args.rows.split(",")]:
            card = write_export(Path(tmp), rows)
            arms = {
                "check": [*medfed_command(), "node", "check", "--dataset", str(card)],
                "node": [sys.executable, "-c", _NODE % card],
                "guard": [sys.executable, "-c", _GUARD % card],
            }
            samples: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
            for repeat in range(args.repeats):
                for arm, command in arms.items():
                    samples[arm].append(measure(command, env))
                    log(f"{rows} rows, {arm}, repeat {repeat + 1}: {samples[arm][-1]}")
            data = card.with_suffix(".csv").with_name(f"export-{rows}.csv")
            entry = {"rows": rows, "columns": 14, "file_mb": round(data.stat().st_size / 2**20, 1)}
            for arm, runs in samples.items():
                entry[arm] = {key: median([r[key] for r in runs]) for key in runs[0]}
            entry["check"]["rss_per_file_mb"] = round(
                entry["check"]["peak_rss_mb"] / entry["file_mb"], 2
            )
            results.append(entry)
            data.unlink()
    print(json.dumps({"machine": machine(), "repeats": args.repeats, "results": results}, indent=2))


if __name__ == "__main__":
    main()
