"""``medfed predict`` throughput: 1 million rows, wall seconds and peak memory (issue 14).

Targets: under 30 s and under 1 GB peak RSS on a 2-core machine. Setup (not timed): a 2-round
diagnosis study gives the bundle; the export is 1,000,000 rows drawn with replacement from four
synthetic hospitals' CSV files (numbers jittered, 2 % of the cells blank, no target column). Two
arms, interleaved, each a whole ``medfed predict`` process: ``rows`` scores the million rows,
``startup`` scores 10 rows (imports, bundle verification, writing: the fixed cost). The
process's own peak RSS comes from ``os.wait4``. Prints one JSON object; progress on stderr.

    .venv/bin/python benchmarks/predict_throughput.py [--repeats 5] [--rows 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from _common import ENV, log, machine, medfed_command, median, wait_for_idle

TARGET_SECONDS, TARGET_MB = 30.0, 1024.0


def _export(folder: Path, rows: int, seed: int = 0, chunk: int = 100_000) -> Path:
    """``rows`` rows like the synthetic hospitals' exports, written as one CSV file (in chunks,
    so the set-up stays small in memory)."""
    from medfed.models.ingest.export import export_synthetic

    cards = export_synthetic("diagnosis", 4, folder / "cards", seed=seed)
    pool = pd.concat([pd.read_csv(c.parent / f"{c.stem}-train.csv") for c in cards])
    pool = pool.drop(columns=["cad"]).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    out = folder / f"rows-{rows}.csv"
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        frame = pool.iloc[rng.integers(0, len(pool), n)].reset_index(drop=True)
        for column in ("resting_bp", "cholesterol", "max_heart_rate"):
            frame[column] = frame[column] + rng.integers(-3, 4, n)
        frame = frame.astype(object).mask(rng.random(frame.shape) < 0.02)
        frame.to_csv(out, mode="a", header=start == 0, index=False, float_format="%.1f")
    return out


def _bundle(folder: Path, env: dict[str, str]) -> Path:
    run = folder / "run"
    subprocess.run(
        [*medfed_command(), "simulate", "rounds=2", "quiet=true", f"output_dir={run}"],
        env=env,
        check=True,
        capture_output=True,
        cwd=folder,
    )
    return run / "model"


class Run(NamedTuple):
    """One ``medfed predict`` process: wall seconds, CPU seconds (user + system: what the process
    itself needed, whatever else ran on the shared machine) and peak RSS in MB."""

    wall: float
    cpu: float
    rss_mb: float


def _predict(bundle: Path, data: Path, out: Path, env: dict[str, str]) -> Run:
    """Run one ``medfed predict`` of ``data`` into ``out`` and measure it."""
    out.unlink(missing_ok=True)
    out.with_name(f"{out.stem}.unscorable.csv").unlink(missing_ok=True)
    command = [*medfed_command(), "predict", "--model", str(bundle), "--dataset", str(data),
               "--out", str(out)]  # fmt: skip
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"medfed predict failed: {child.stderr.read().decode()[-500:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0)


def _summary(rows: int, repeats: int, arms: dict[str, list[Run]]) -> dict:
    big, small = arms["rows"], arms["startup"]
    seconds, peak = median([r.wall for r in big]), max(r.rss_mb for r in big)
    return {"rows": rows, "repeats": repeats, "seconds": seconds,
            "seconds_runs": [round(r.wall, 3) for r in big],
            "cpu_seconds": median([r.cpu for r in big]),
            "startup_seconds": median([r.wall for r in small]),
            "startup_cpu_seconds": median([r.cpu for r in small]),
            "rows_per_second": round(rows / seconds), "peak_rss_mb": round(peak, 1),
            "ratio_seconds_to_target": round(seconds / TARGET_SECONDS, 3),
            "ratio_cpu_seconds_to_target": round(median([r.cpu for r in big]) / TARGET_SECONDS, 3),
            "ratio_rss_to_target": round(peak / TARGET_MB, 3),
            "targets": {"seconds": TARGET_SECONDS, "peak_rss_mb": TARGET_MB},
            "machine": machine()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="2 repeats of 100,000 rows")
    args = parser.parse_args()
    repeats, rows = (2, 100_000) if args.quick else (args.repeats, args.rows)
    env = dict(os.environ, **ENV)
    with tempfile.TemporaryDirectory(prefix="medfed-predict-bench-") as tmp:
        folder = Path(tmp)
        log("setup: a 2-round study and the export ...")
        bundle, data = _bundle(folder, env), _export(folder, rows)
        small = folder / "small.csv"
        pd.read_csv(data, nrows=10).to_csv(small, index=False)
        arms: dict[str, list[Run]] = {"rows": [], "startup": []}
        for i in range(repeats + 1):  # the first round warms the page cache: not recorded
            wait_for_idle(0.6, 60.0)
            for arm, source in (("rows", data), ("startup", small)):
                run = _predict(bundle, source, folder / f"{arm}.csv", env)
                log(f"run {i} {arm}: {run.wall:.2f} s ({run.cpu:.2f} s CPU), {run.rss_mb:.0f} MB")
                if i:
                    arms[arm].append(run)
    print(json.dumps(_summary(rows, repeats, arms), indent=2))


if __name__ == "__main__":
    main()
