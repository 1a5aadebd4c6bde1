"""Cost of checking an error reason for quoted cells, against the size of the node's data, as JSON.

    .venv/bin/python benchmarks/cellguard_cost.py [--repeats 7] [--calls 200]

:func:`medfed.client.cellguard.withhold_cells` runs on every error text a node sends. Its cost
should depend on the text (the word spans it has to look up), not on how many distinct cells the
hospital's data holds. Arms: vocabularies of 200, 20,000 and 1,000,000 synthetic patient cells
(sorted 64-bit hashes, as :func:`medfed.client.cellguard.vocabulary` builds them); the same
~430-span reason is checked ``--calls`` times per sample; arms interleave in a fresh random order
per repeat. ``ratio`` is median(arm) / median(200 cells) of the time per check;
``numpy_isin_ms`` is the same check by ``np.isin`` (the former implementation, which sorts both
arrays on every call) at each size, for comparison.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import numpy as np
import pandas as pd
from _common import log, machine

from medfed.client.cellguard import _hash, _spans, withhold_cells

SIZES = (200, 20_000, 1_000_000)
REASON = "DataConfigError: " + "data.csv column 'cholesterol', 3 rows (4, 8, 10): text " * 4


def cells(n: int) -> np.ndarray:
    texts = np.asarray([f"patient {i:07d}" for i in range(n)], dtype=object)
    return np.unique(pd.util.hash_array(texts, categorize=False))


def per_call(check, vocabulary: np.ndarray, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        check(REASON, vocabulary)
    return (time.perf_counter() - started) / calls * 1000


def isin(text: str, vocabulary: np.ndarray) -> None:
    np.isin(_hash([text[a:b].casefold() for a, b in _spans(text)]), vocabulary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    vocabularies = {n: cells(n) for n in SIZES}
    samples: dict[str, dict[int, list[float]]] = {"medfed": {}, "isin": {}}
    for repeat in range(args.repeats):
        order = [(arm, n) for arm in samples for n in SIZES]
        random.shuffle(order)
        for arm, n in order:
            check = withhold_cells if arm == "medfed" else isin
            value = per_call(check, vocabularies[n], args.calls)
            samples[arm].setdefault(n, []).append(value)
        log(f"repeat {repeat + 1}/{args.repeats} done")
    ms = {arm: {n: statistics.median(v) for n, v in by.items()} for arm, by in samples.items()}
    base = ms["medfed"][SIZES[0]]
    out = {
        "benchmark": "cellguard_cost",
        "spans_in_reason": len(_spans(REASON)),
        "repeats": args.repeats,
        "calls_per_sample": args.calls,
        "ms_per_check": {str(n): round(v, 3) for n, v in ms["medfed"].items()},
        "ratio": {str(n): round(v / base, 3) for n, v in ms["medfed"].items()},
        "numpy_isin_ms": {str(n): round(v, 3) for n, v in ms["isin"].items()},
        "target": "ratio at 1,000,000 cells <= 1.5 (cost follows the text, not the data)",
        "ok": ms["medfed"][SIZES[-1]] / base <= 1.5,
        "machine": machine(),
    }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
