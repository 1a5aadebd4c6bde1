"""The federation's SGD work in one plain PyTorch process: no Flower, no Hydra, no messages.

The reference arm of ``sim_overhead.py``. It does what ``medfed simulate`` does for the default
synthetic federation, minus the federation machinery:

* the same data: every hospital's rows from ``medfed.models.ingest.sources.load_site`` with the
seed and
  sizes of ``conf/config.yaml`` + ``conf/federation/synthetic.yaml`` (read with PyYAML);
* the same round 0: additive site statistics merged into global normalisation statistics;
* the same model, initial weights (``torch.manual_seed(seed)`` then ``build_model``), loss,
  optimiser, batch size, learning rate, local epochs and per-hospital, per-round shuffling seeds;
* FedAvg: the global weights are the average of the hospitals' weights weighted by their
  training example counts;
* the same evaluation: the global model is scored on every hospital's test split before each
  round and after the last one (additive statistics per hospital, summed for the global metric).

Prints one JSON object (steps, metrics, seconds after imports) to stdout. ``--save-weights PATH``
writes the final global ``state_dict`` so a caller can check that the weights match the
federation's ``model.pt``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

from medfed.models.encoding import Encoder, encode_target, merge_statistics, site_statistics
from medfed.models.ingest.sources import load_site
from medfed.models.metrics import metric_statistics, metrics_from_statistics, sum_statistics
from medfed.models.nets import build_model, output_layer, predict_output
from medfed.models.schema import task_from_dict
from medfed.models.training import loss_function, make_loader, train


def _conf() -> Path:
    return Path(str(files("medfed.conf")))


def _defaults(task: str) -> tuple[dict, dict, dict]:
    """The top-level config, the federation section and the task, as the YAML files give them."""
    conf = _conf()
    raw_top = yaml.safe_load((conf / "config.yaml").read_text(encoding="utf-8"))
    federation = yaml.safe_load((conf / "federation" / "synthetic.yaml").read_text("utf-8"))
    raw_task = yaml.safe_load((conf / "task" / f"{task}.yaml").read_text(encoding="utf-8"))
    # rounds and train.* interpolate the task's `training:` defaults: resolve them with the task
    raw_top = {k: v for k, v in raw_top.items() if k not in ("defaults", "hydra")}
    top = OmegaConf.to_container(OmegaConf.create({**raw_top, "task": raw_task}), resolve=True)
    top.pop("task")
    return top, federation, raw_task


def _round_seed(seed: int, name: str, server_round: int) -> int:
    """Same derivation as the ClientApp's (``medfed.models.pipeline.round_seed`` of the site's
    ``site_key``: the first 4 bytes of the SHA-256 of its name)."""
    key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big")
    return int(np.random.SeedSequence([seed, key, server_round]).generate_state(1)[0])


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def run(task: str, rounds: int | None, hospitals: int | None, save_weights: str | None) -> dict:
    started = time.perf_counter()
    top, federation, raw_task = _defaults(task)
    if hospitals is not None:
        federation["hospitals"] = hospitals
    rounds = int(top["rounds"] if rounds is None else rounds)
    seed, cfg = int(top["seed"]), top["train"]
    bins, every = int(top["evaluate"]["auroc_bins"]), int(top["evaluate"]["every"])
    if cfg.get("local_steps") is not None or cfg["optimizer"] != "sgd" or every != 1:
        raise SystemExit(
            "plain_fedavg.py mirrors the default config only (sgd, local_epochs, evaluate.every=1)"
        )
    torch.set_num_threads(int(top["threads"]))
    schema = task_from_dict(raw_task, source=task)
    n = int(federation["hospitals"])

    # Round 0: each site's rows, their additive statistics, the merged global statistics.
    sites = [load_site(schema, federation, i, seed) for i in range(n)]
    stats = merge_statistics(
        [site_statistics(s.train, schema) for s in sites],
        min_cell=int(top["preprocessing"]["min_cell"]),
    )
    encoder = Encoder(
        schema, stats, missing_indicators=bool(top["preprocessing"]["missing_indicators"])
    )
    data = [
        (
            encoder.transform(s.train),
            encode_target(s.train, schema),
            torch.from_numpy(encoder.transform(s.test)),
            encode_target(s.test, schema),
        )
        for s in sites
    ]
    counts = torch.tensor([len(d[1]) for d in data], dtype=torch.float64)
    weights = counts / counts.sum()
    loss_fn = loss_function(schema, stats)

    torch.manual_seed(seed)
    global_model = build_model(schema, encoder.n_inputs, **output_layer(schema, stats))
    local_models = [
        build_model(schema, encoder.n_inputs, **output_layer(schema, stats)) for _ in range(n)
    ]

    def evaluate() -> dict:
        global_model.eval()
        per_site = []
        with torch.no_grad():
            for _, _, x_test, y_test in data:
                output = predict_output(schema, global_model(x_test))
                per_site.append(
                    metric_statistics(
                        schema, y_test, output.numpy(), loss_scale=stats.loss_scale, bins=bins
                    )
                )
        hospital_metrics = [metrics_from_statistics(schema, s) for s in per_site]
        return {
            "global": metrics_from_statistics(schema, sum_statistics(per_site)),
            "hospitals": hospital_metrics,
        }

    steps = 0
    history = []
    round_seconds = []
    for server_round in range(1, rounds + 1):
        round_started = time.perf_counter()
        history.append(evaluate()["global"])
        state = global_model.state_dict()
        updates = []
        for index, (model, (x, y, _, _)) in enumerate(zip(local_models, data, strict=True)):
            model.load_state_dict(state)
            round_seed = _round_seed(seed, sites[index].name, server_round)
            torch.manual_seed(round_seed)
            loader = make_loader(x, y, batch_size=int(cfg["batch_size"]), seed=round_seed)
            result = train(
                model,
                loader,
                loss_fn,
                lr=float(cfg["lr"]),
                epochs=int(cfg["local_epochs"]),
                optimizer="sgd",
                momentum=float(cfg["momentum"]),
                weight_decay=float(cfg["weight_decay"]),
            )
            steps += int(result["steps"])
            updates.append(model.state_dict())
        with torch.no_grad():
            averaged = {
                key: sum(
                    float(w) * u[key].double() for w, u in zip(weights, updates, strict=True)
                ).to(state[key].dtype)
                for key in state
            }
        global_model.load_state_dict(averaged)
        round_seconds.append(round(time.perf_counter() - round_started, 5))
        print(f"plain: round {server_round}/{rounds}", file=sys.stderr)
    final = evaluate()
    history.append(final["global"])
    if save_weights:
        torch.save({k: v.clone() for k, v in global_model.state_dict().items()}, save_weights)
    return _clean(
        {
            "task": task,
            "hospitals": n,
            "rounds": rounds,
            "total_train_steps": steps,
            "parameters": sum(p.numel() for p in global_model.parameters()),
            "evaluations": len(history) * n,
            "global": final["global"],
            "seconds_after_imports": round(time.perf_counter() - started, 3),
            "round_seconds": round_seconds,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="diagnosis")
    parser.add_argument("--rounds", type=int, default=None, help="default: conf/config.yaml")
    parser.add_argument(
        "--hospitals", type=int, default=None, help="default: conf/federation/synthetic.yaml"
    )
    parser.add_argument("--save-weights", default=None, help="write the final state_dict here")
    args = parser.parse_args()
    print(json.dumps(run(args.task, args.rounds, args.hospitals, args.save_weights)))


if __name__ == "__main__":
    main()
