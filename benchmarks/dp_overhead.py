"""DP-SGD overhead: one hospital's round with DP-SGD / the same round without, as JSON.

    .venv/bin/python benchmarks/dp_overhead.py [--repeats 9] [--steps 100] [--rows 400]
                                               [--batch-sizes 4,32,128] [--arms ...]

Models: diagnosis as logistic regression and as an MLP (hidden 32), pricing MLP (hidden 32,
Tweedie), each trained on one synthetic hospital's encoded rows. Every arm runs the same number of
optimizer steps from the same initial weights; a round's time includes its per-round set-up (the
privacy wrapper, the accountant), not the one-off Opacus import (reported separately). Arms:

- ``plain``: :func:`medfed.models.training.train` over the shuffling loader (DP off);
- ``medfed_vectorised``: :func:`medfed.models.privacy.dp_train`, vectorised clipping (default);
- ``medfed_opacus_hooks``: ``dp_train`` with Opacus' per-sample-gradient hooks;
- ``opacus_make_private``: the textbook Opacus path, ``PrivacyEngine.make_private`` (hooks,
  ``DPDataLoader``) then ``train``;
- ``opacus_ghost``: the same with ``grad_sample_mode="ghost"`` (Opacus' ghost clipping);
- ``medfed_functorch``: ``dp_train`` with Opacus' functorch (vmap) per-sample gradients.

Arms are interleaved (a fresh shuffled order per repeat); ``time_ratio`` is median(arm) /
median(plain) of process CPU time (torch runs on one thread, so this is the work done and is far
less disturbed by other load on a shared machine than wall time, whose ratio is reported too).
Peak memory is measured once per arm, each in a forked
child: the peak of live tensor storage created during the round (a dispatch mode that sees every
op, backward included) and the Python heap peak (``tracemalloc``); ``memory_ratio`` compares
their sum. The process's own peak RSS (dominated by torch itself, ~0.4 GiB) is reported once: a
round's working set is a few hundred KiB either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time
import tracemalloc
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from medfed.models.encoding import Encoder, encode_target
from medfed.models.ingest.synthetic import SkewConfig, generate_site
from medfed.models.pipeline import new_model, own_statistics
from medfed.models.privacy import dp_train
from medfed.models.schema import load_task
from medfed.models.training import loss_function, make_loader, make_optimizer, set_seed, train

ARMS = (
    "plain",
    "medfed_vectorised",
    "medfed_opacus_hooks",
    "opacus_make_private",
    "opacus_ghost",
    "medfed_functorch",
)
MODELS = {
    "diagnosis-logreg": ("diagnosis", "logreg"),
    "diagnosis-mlp": ("diagnosis", "mlp"),
    "pricing-mlp": ("pricing", "mlp"),
}
NOISE, CLIP, LR = 1.0, 1.0, 0.05


@dataclasses.dataclass
class Case:
    """One model on one hospital's encoded rows."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    make_model: Callable[[], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_case(name: str, rows: int) -> Case:
    task, family = MODELS[name]
    schema = load_task(task)
    schema = dataclasses.replace(schema, model=dataclasses.replace(schema.model, family=family))
    site = generate_site(schema, 0, 4, n_rows=rows, test_fraction=0.0, skew=SkewConfig(), seed=0)
    stats = own_statistics(site.train, schema, 5)
    x = torch.from_numpy(Encoder(schema, stats).transform(site.train))
    y = torch.as_tensor(encode_target(site.train, schema))

    def make_model() -> nn.Module:
        set_seed(0)
        return new_model(schema, stats, x.shape[1])

    return Case(name, x, y, make_model, loss_function(schema, stats))


class PerSampleLoss(nn.Module):
    """A batch-mean loss as the ``reduction``-aware criterion Opacus' ghost clipping wants."""

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.loss, self.reduction = loss, "mean"

    def forward(self, raw: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per_row = torch.vmap(lambda r, t: self.loss(r.unsqueeze(0), t.unsqueeze(0)))(raw, y)
        return per_row if self.reduction == "none" else per_row.mean()


def _opacus(case: Case, batch: int, steps: int, mode: str) -> None:
    from opacus import PrivacyEngine

    model = case.make_model()
    engine = PrivacyEngine(accountant="rdp")
    loader = make_loader(case.x, case.y, batch_size=batch, seed=0)
    opt = make_optimizer(model, lr=LR)
    if mode == "ghost":
        model, opt, crit, loader = engine.make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            criterion=PerSampleLoss(case.loss),
            noise_multiplier=NOISE,
            max_grad_norm=CLIP,
            grad_sample_mode="ghost",
        )
        train(model, loader, crit, lr=LR, steps=steps, optimizer_obj=opt)
        return
    model, opt, loader = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=NOISE, max_grad_norm=CLIP
    )
    train(model, loader, case.loss, lr=LR, steps=steps, optimizer_obj=opt)


def run_arm(arm: str, case: Case, batch: int, steps: int) -> None:
    """One round of ``arm``: ``steps`` optimizer steps from the same initial weights."""
    if arm == "plain":
        model = case.make_model()
        train(
            model,
            make_loader(case.x, case.y, batch_size=batch, seed=0),
            case.loss,
            lr=LR,
            steps=steps,
        )
    elif arm.startswith("medfed_"):
        mode = {
            "medfed_vectorised": "vectorised",
            "medfed_opacus_hooks": "hooks",
            "medfed_functorch": "functorch",
        }[arm]
        dp_train(
            case.make_model(),
            case.x,
            case.y,
            case.loss,
            lr=LR,
            batch_size=batch,
            steps=steps,
            noise_multiplier=NOISE,
            max_grad_norm=CLIP,
            seed=0,
            history=[],
            grad_sample_mode=mode,
        )
    else:
        _opacus(case, batch, steps, "ghost" if arm == "opacus_ghost" else "hooks")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


class TensorPeak(TorchDispatchMode):
    """Peak bytes of tensor storage created under the mode and still alive (views counted once).

    Every aten op's outputs are seen (backward included); a storage is freed when the last
    tensor seen on it is garbage collected.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, list[int]] = {}
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.refs[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in self.refs:
                self.refs[key] = [storage.nbytes(), 0]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self.refs[key][1] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def _in_child(fn: Callable[[], float]) -> float:
    """``fn()`` in a forked child (so one arm's allocations never shape another's); -1 on error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, repr(fn()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return float(text) if text else -1.0


def peak_memory(arm: str, case: Case, batch: int, steps: int) -> dict[str, float]:
    """Peak live tensor bytes and Python heap peak (KiB) of one round of ``arm``."""

    def tensors() -> float:
        with TensorPeak() as mode:
            run_arm(arm, case, batch, steps)
        return round(mode.peak / 1024, 1)

    def python_heap() -> float:
        tracemalloc.start()
        run_arm(arm, case, batch, steps)
        return round(tracemalloc.get_traced_memory()[1] / 1024, 1)

    return {"tensor_peak_kib": _in_child(tensors), "python_heap_peak_kib": _in_child(python_heap)}


def time_arms(
    case: Case, batch: int, steps: int, arms: list[str], repeats: int
) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per arm, interleaved in a fresh random order per repeat."""
    times: dict[str, dict[str, list[float]]] = {
        "wall": {a: [] for a in arms},
        "cpu": {a: [] for a in arms},
    }
    order = random.Random(batch)
    for arm in arms:
        run_arm(arm, case, batch, steps)
    for _ in range(repeats):
        for arm in order.sample(arms, len(arms)):
            wall, cpu = time.perf_counter(), time.process_time()
            run_arm(arm, case, batch, steps)
            times["cpu"][arm].append(time.process_time() - cpu)
            times["wall"][arm].append(time.perf_counter() - wall)
    return {
        kind: {arm: statistics.median(v) for arm, v in per_arm.items()}
        for kind, per_arm in times.items()
    }


def _ratios(values: dict[str, float], base: str = "plain") -> dict[str, float | None]:
    return {
        arm: round(v / values[base], 3) if values[base] > 0 else None for arm, v in values.items()
    }


def measure(case: Case, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    times = time_arms(case, batch, args.steps, args.arms, args.repeats)
    memory = {arm: peak_memory(arm, case, batch, args.steps) for arm in args.arms}
    tensor = {arm: m["tensor_peak_kib"] for arm, m in memory.items()}
    heap = {arm: m["python_heap_peak_kib"] for arm, m in memory.items()}
    both = {arm: tensor[arm] + heap[arm] for arm in args.arms}
    return {
        "model": case.name,
        "batch_size": batch,
        "rows": len(case.y),
        "steps": args.steps,
        "wall_s": {arm: round(t, 5) for arm, t in times["wall"].items()},
        "cpu_s": {arm: round(t, 5) for arm, t in times["cpu"].items()},
        "time_ratio": _ratios(times["cpu"]),
        "wall_time_ratio": _ratios(times["wall"]),
        "tensor_peak_kib": tensor,
        "python_heap_peak_kib": heap,
        "memory_ratio": _ratios(both),
    }


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per arm (>= 5)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per round")
    parser.add_argument("--rows", type=int, default=400, help="training rows of the hospital")
    parser.add_argument("--batch-sizes", default="4,32,128")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--arms", default=",".join(ARMS))
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.models = args.models.split(",")
    args.arms = ["plain"] + [a for a in args.arms.split(",") if a != "plain"]
    unknown = sorted(set(args.arms) - set(ARMS)) + sorted(set(args.models) - set(MODELS))
    if unknown or args.repeats < 5:
        parser.error(f"unknown arms/models {unknown} or --repeats < 5")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    import opacus  # noqa: F401

    import_s = time.perf_counter() - start
    results = [
        measure(make_case(name, args.rows), batch, args)
        for name in args.models
        for batch in args.batch_sizes
    ]
    dp_arms = [a for a in args.arms if a != "plain"]
    worst = {arm: max(r["time_ratio"][arm] for r in results) for arm in dp_arms}
    worst_memory = {arm: max(r["memory_ratio"][arm] for r in results) for arm in dp_arms}
    print(
        json.dumps(
            {
                "benchmark": "dp_overhead",
                "target_time_ratio": 1.5,
                "torch_threads": 1,
                "noise_multiplier": NOISE,
                "max_grad_norm": CLIP,
                "repeats": args.repeats,
                "startup_s": {"import_opacus": round(import_s, 3)},
                "worst_time_ratio": worst,
                "worst_memory_ratio": worst_memory,
                "process_peak_rss_mib": round(_status_kib("VmHWM") / 1024, 1),
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
