"""Bytes on the wire per round / (2 x model bytes x hospitals) (DESIGN.md, Performance protocol).

The in-process engine serialises every Message as Flower does for the network and counts the
bytes (``InProcessGrid.wire``); ``medfed simulate`` writes them per round to ``metrics.csv``
(``wire_bytes``: the round's train messages down and their replies up) and in total to
``summary.json``. A round ideally carries the model twice per hospital (global weights down,
local weights up): ``ideal = 2 x 4 bytes x parameters (from model.pt) x hospitals``. The ratio
is measured on training rounds 1..R only; round 0 (statistics exchange) and the final
evaluation are reported separately.

The train replies also carry the previous global model's test statistics (for a binary task two
``auroc_bins``-long histograms), so diagnosis runs with ``evaluate.auroc_bins`` 100 (default)
and 1000.

Each case runs ``--repeats`` times as a whole ``medfed simulate`` process (the byte counts must
not change between repeats), plus once in this process on an instrumented copy of the
in-process grid that splits the bytes by exchange and by Flower object type (model arrays,
metrics, config, envelope). Prints one JSON object to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from _common import ENV, log, machine, medfed_command, read_json, subprocess_env, timed_run

TARGET_RATIO = 1.05
TARGET_MIN_PARAMETERS = 5000
HOSPITALS = 4

# name, Hydra overrides, AUROC bins to try (bins only matter for a binary target)
CASES: list[tuple[str, list[str], list[int]]] = [
    ("diagnosis-logreg", ["task=diagnosis"], [100, 1000]),
    (
        "diagnosis-mlp256",
        ["task=diagnosis", "task.model.family=mlp", "task.model.hidden=[256]"],
        [100, 1000],
    ),
    (
        "diagnosis-mlp1024",
        ["task=diagnosis", "task.model.family=mlp", "task.model.hidden=[1024]"],
        [100],
    ),
    (
        "pricing-mlp128x32",
        ["task=pricing", "task.model.family=mlp", "task.model.hidden=[128,32]"],
        [100],
    ),
    (
        "treatment-mlp128x32",
        ["task=treatment", "task.model.family=mlp", "task.model.hidden=[128,32]"],
        [100],
    ),
]

_ARRAYS = ("ArrayRecord", "Array", "ArrayChunk")


def _overrides(case: list[str], bins: int, rounds: int) -> list[str]:
    return [
        *case,
        f"rounds={rounds}",
        f"evaluate.auroc_bins={bins}",
        f"federation.hospitals={HOSPITALS}",
        "quiet=true",
    ]


def _model_bytes(model_pt: Path) -> tuple[int, int]:
    state = torch.load(model_pt, weights_only=False)["state_dict"]
    parameters = sum(t.numel() for t in state.values())
    if any(t.dtype != torch.float32 for t in state.values()):
        raise RuntimeError(f"{model_pt}: expected float32 weights only")
    return parameters, 4 * parameters


def _round_bytes(metrics_csv: Path) -> dict[int, int]:
    """``wire_bytes`` per round (one value per round, repeated on every hospital's row)."""
    per_round: dict[int, set[int]] = defaultdict(set)
    with metrics_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("wire_bytes"):
                per_round[int(row["round"])].add(int(float(row["wire_bytes"])))
    if any(len(values) != 1 for values in per_round.values()):
        raise RuntimeError(f"{metrics_csv}: rounds with several wire_bytes values")
    return {r: values.pop() for r, values in sorted(per_round.items())}


def _cli_run(overrides: list[str], out: Path, env: dict[str, str], cwd: Path) -> dict:
    timed_run([*medfed_command(), "simulate", *overrides, f"output_dir={out}"], env=env, cwd=cwd)
    summary = read_json(out / "summary.json")
    parameters, model_bytes = _model_bytes(out / "model.pt")
    per_round = _round_bytes(out / "metrics.csv")
    shutil.rmtree(out, ignore_errors=True)
    return {
        "parameters": parameters,
        "model_bytes": model_bytes,
        "per_round": per_round,
        "sent": int(summary["wire_bytes"]["sent"]),
        "received": int(summary["wire_bytes"]["received"]),
    }


def _breakdown(overrides: list[str], out: Path) -> dict:
    """One run in this process on an instrumented in-process grid: bytes per exchange and type."""
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from medfed.client.app import app as client_app
    from medfed.server.app import build_server_app
    from medfed.server.simulation.engine import InProcessGrid
    from medfed.server.study.config import compose_study

    class CountingGrid(InProcessGrid):
        """Counts every message's serialised objects by exchange, direction and type."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.exchanges: list[dict] = []

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            kind = messages[0].metadata.message_type if messages else "none"
            self.exchanges.append(
                {
                    "type": kind,
                    "messages": len(messages),
                    "down": defaultdict(int),
                    "up": defaultdict(int),
                }
            )
            return super().send_and_receive(messages, timeout=timeout)

        def _deliver(self, message):
            self._count("down", message)
            reply = super()._deliver(message)
            self._count("up", reply)
            return reply

        def _count(self, direction, message) -> None:
            tally = self.exchanges[-1][direction]
            for obj in get_all_nested_objects(message).values():
                tally[type(obj).__name__] += len(obj.deflate())

    study = compose_study(overrides)
    study["output_dir"] = str(out)
    server_app = build_server_app(study)
    grid = CountingGrid(
        client_app,
        [{"partition-id": i, "num-partitions": HOSPITALS} for i in range(HOSPITALS)],
        run_config={},
    )
    server_app(
        grid,
        Context(
            run_id=1, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config={}
        ),
    )
    shutil.rmtree(out, ignore_errors=True)
    counted = sum(sum(e[d].values()) for e in grid.exchanges for d in ("down", "up"))
    if counted != grid.wire.total:
        raise RuntimeError(f"breakdown counted {counted} bytes, the grid {grid.wire.total}")
    return {
        "exchanges": [{**e, "down": dict(e["down"]), "up": dict(e["up"])} for e in grid.exchanges],
        "total": grid.wire.total,
    }


def _split(tally: dict[str, int], model_bytes: int | None) -> dict[str, int]:
    """Bytes of one direction of one exchange grouped as model arrays, metrics, config, envelope."""
    arrays = sum(tally.get(k, 0) for k in _ARRAYS)
    out = {"total": sum(tally.values())}
    if arrays:
        out["arrays"] = arrays
    if model_bytes is not None and arrays:
        out["arrays_framing"] = arrays - model_bytes
    out.update(
        {
            "metrics": tally.get("MetricRecord", 0),
            "config": tally.get("ConfigRecord", 0),
            "envelope": tally.get("Message", 0) + tally.get("RecordDict", 0),
        }
    )
    return {k: v for k, v in out.items() if v or k == "total"}


def _summarise_breakdown(raw: dict, model_bytes: int, rounds: int) -> dict:
    exchanges = raw["exchanges"]
    if (
        len(exchanges) != rounds + 3
        or [e["type"] for e in exchanges[:2]] != ["query.stats", "query.prepare"]
        or exchanges[-1]["type"] != "evaluate"
    ):
        raise RuntimeError(f"unexpected exchanges: {[e['type'] for e in exchanges]}")
    train = exchanges[2:-1]
    hospital_model = model_bytes * HOSPITALS

    def mean_split(direction: str) -> dict[str, float]:
        splits = [_split(e[direction], hospital_model) for e in train]
        keys = sorted({k for s in splits for k in s})
        return {k: round(statistics.fmean(s.get(k, 0) for s in splits), 1) for k in keys}

    round0 = {d: sum(sum(e[d].values()) for e in exchanges[:2]) for d in ("down", "up")}
    final = exchanges[-1]
    return {
        "train_round_mean_bytes": {
            "down_to_hospitals": mean_split("down"),
            "up_from_hospitals": mean_split("up"),
        },
        "per_reply_metrics_bytes": round(
            statistics.fmean(e["up"].get("MetricRecord", 0) for e in train) / HOSPITALS, 1
        ),
        "round0_statistics_bytes": {**round0, "total": round0["down"] + round0["up"]},
        "final_evaluate_bytes": {
            "down": _split(final["down"], hospital_model),
            "up": _split(final["up"], None),
        },
        "total_bytes": raw["total"],
    }


def _case_result(
    name: str, overrides: list[str], bins: int, runs: list[dict], breakdown: dict, rounds: int
) -> dict:
    first = runs[0]
    per_round = [first["per_round"][r] for r in range(1, rounds + 1)]
    ideal = 2 * first["model_bytes"] * HOSPITALS
    ratios = [b / ideal for b in per_round]
    deterministic = all(
        r["per_round"] == first["per_round"]
        and r["sent"] == first["sent"]
        and r["received"] == first["received"]
        for r in runs
    )
    total = first["sent"] + first["received"]
    applies = first["parameters"] >= TARGET_MIN_PARAMETERS
    ratio = statistics.median(ratios)
    overhead = (statistics.median(per_round) - ideal) / HOSPITALS
    return {
        "case": name,
        "overrides": overrides,
        "auroc_bins": bins,
        "parameters": first["parameters"],
        "model_bytes": first["model_bytes"],
        "ideal_bytes_per_round": ideal,
        "train_round_bytes": {
            "median": statistics.median(per_round),
            "min": min(per_round),
            "max": max(per_round),
            "rounds_1_to_R": per_round,
        },
        "ratio": {
            "median": round(ratio, 4),
            "min": round(min(ratios), 4),
            "max": round(max(ratios), 4),
        },
        "overhead_bytes_per_hospital_round": round(overhead, 1),
        "parameters_needed_for_target_at_this_overhead": math.ceil(
            overhead / (2 * 4 * (TARGET_RATIO - 1.0))
        ),
        "target_applies": applies,
        "target_met": (ratio <= TARGET_RATIO) if applies else None,
        "round0_plus_final_evaluate_bytes": total - sum(per_round),
        "total_bytes": {"sent": first["sent"], "received": first["received"], "total": total},
        "identical_across_repeats": deterministic,
        "repeats": len(runs),
        "breakdown_matches_cli_total": breakdown["total_bytes"] == total,
        "breakdown": breakdown,
    }


def run(repeats: int, rounds: int) -> dict:
    started = machine()
    plan = [(name, case, bins) for name, case, all_bins in CASES for bins in all_bins]
    results: dict[tuple[str, int], list[dict]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="medfed-wire-") as tmp_name:
        tmp = Path(tmp_name)
        env = subprocess_env(tmp)
        for repeat in range(1, repeats + 1):  # interleaved: every case once per repeat
            for name, case, bins in plan:
                # same path length as the breakdown run's: the study JSON sent in round 0
                # carries output_dir, so its length shows in the byte counts
                out = tmp / "c" / f"{name}-{bins}"
                results[(name, bins)].append(
                    _cli_run(_overrides(case, bins, rounds), out, env, tmp)
                )
                log(
                    f"repeat {repeat}/{repeats} {name} bins={bins}: "
                    f"{results[(name, bins)][-1]['per_round'].get(1)} bytes in round 1"
                )
        cases = []
        for name, case, bins in plan:
            raw = _breakdown(_overrides(case, bins, rounds), tmp / "b" / f"{name}-{bins}")
            model_bytes = results[(name, bins)][0]["model_bytes"]
            cases.append(
                _case_result(
                    name,
                    _overrides(case, bins, rounds),
                    bins,
                    results[(name, bins)],
                    _summarise_breakdown(raw, model_bytes, rounds),
                    rounds,
                )
            )
            log(f"{name} bins={bins}: ratio {cases[-1]['ratio']['median']}")
    return {
        "benchmark": "wire_bytes",
        "what": "bytes on the wire per training round / (2 x 4 bytes x parameters x hospitals), "
        "from the in-process engine's serialised Flower messages",
        "setup": {
            "hospitals": HOSPITALS,
            "rounds": rounds,
            "repeats": repeats,
            "engine": "inprocess",
            "env": ENV,
        },
        "target": {
            "ratio_max": TARGET_RATIO,
            "for_models_with_parameters_at_least": TARGET_MIN_PARAMETERS,
        },
        "ratios": {
            f"{c['case']} (bins={c['auroc_bins']}, {c['parameters']} params)": c["ratio"]["median"]
            for c in cases
        },
        "target_met_for_all_applicable": all(c["target_met"] for c in cases if c["target_applies"]),
        "cases": cases,
        "machine": started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="whole-process runs per case (the bytes must not vary)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 2 rounds")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    os.environ.update(ENV)  # the in-process breakdown runs Flower here
    repeats, rounds = (1, 2) if args.quick else (args.repeats, args.rounds)
    if repeats < 1 or rounds < 1:
        parser.error("--repeats and --rounds must be at least 1")
    print(json.dumps(run(repeats, rounds), indent=2))


if __name__ == "__main__":
    main()
