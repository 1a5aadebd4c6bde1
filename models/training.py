"""Plain PyTorch training and evaluation, shared by every engine and the pooled/local baselines.

Nothing here knows about Flower: a federated round, a pooled run and a hospital training alone all
call :func:`train` and :func:`evaluate` with the same arguments, which is what makes them
comparable (and the equal-work benchmark meaningful).
"""

from __future__ import annotations

import itertools
import math
import numbers
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from medfed.models.encoding import GlobalStats
from medfed.models.metrics import metric_statistics, metrics_from_statistics
from medfed.models.nets import predict_output
from medfed.models.schema import TaskSchema
from medfed.models.settings import LR_SCHEDULES

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OPTIMIZERS = ("sgd", "adam", "adamw")


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch's global generator."""
    random.seed(seed)
    np.random.seed(seed)
    seed_torch(seed)


def seed_torch(seed: int) -> None:
    """Seed torch's CPU generator, the only one medfed's models use.

    ``torch.manual_seed`` also queues a lazy seeding call for every accelerator backend (CUDA,
    XPU, ...) and records a stack trace for each, about 3 ms per call on these machines even
    without an accelerator; a node seeds once per round, so that cost showed up in every round.
    """
    torch.random.default_generator.manual_seed(int(seed))


def _tweedie(raw: torch.Tensor, y: torch.Tensor, *, power: float, log_scale: float) -> torch.Tensor:
    shifted, target = raw - log_scale, y / math.exp(log_scale)
    one, two = 1.0 - power, 2.0 - power
    deviance = (
        target.pow(two) / (one * two)
        - target * torch.exp(one * shifted) / one
        + torch.exp(two * shifted) / two
    )
    return 2.0 * deviance.mean()


def _mse_log(raw: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(raw, torch.log1p(y))


def loss_function(schema: TaskSchema, stats: GlobalStats | None = None) -> LossFn:
    """The task's loss as ``loss(raw_output, y) -> mean over the batch``.

    ``bce``: binary cross-entropy with logits; ``cross_entropy``: softmax cross-entropy;
    ``mse_log``: squared error between the raw output (log of the mean) and ``log1p(y)``;
    ``tweedie``: Tweedie deviance (power ``schema.model.tweedie_power``) with log link, of
    ``y / s`` against ``exp(raw) / s`` where ``s = stats.loss_scale`` is the global mean target,
    so the loss and its gradients are O(1) whatever the currency (``s = 1`` without ``stats``).
    """
    loss = schema.model.loss
    if loss == "bce":
        return F.binary_cross_entropy_with_logits
    if loss == "cross_entropy":
        return F.cross_entropy
    if loss == "mse_log":
        return _mse_log
    if loss == "tweedie":
        scale = stats.loss_scale if stats is not None else 1.0
        return partial(_tweedie, power=schema.model.tweedie_power, log_scale=math.log(scale))
    raise ValueError(f"Unknown loss '{loss}' in task '{schema.name}'.")


class ArrayDataset(Dataset):
    """In-memory ``(X, y)`` whose batches are gathered with one indexing operation.

    ``__getitems__`` lets a DataLoader (including Opacus' ``DPDataLoader``) fetch a whole batch at
    once instead of one row at a time and a collate; use :func:`collate_batch` with it.
    """

    def __init__(self, X: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> None:
        self.X, self.y = torch.as_tensor(X), torch.as_tensor(y)
        if len(self.X) != len(self.y):
            raise ValueError(f"X has {len(self.X)} rows but y has {len(self.y)}.")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X[index], self.y[index]

    def __getitems__(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.X[index], self.y[index]


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for :class:`ArrayDataset`: its batches arrive already stacked."""
    return batch


class ShuffledBatches(BatchSampler):
    """Batches of a fresh seeded permutation per pass, yielded as index tensors.

    Same order semantics as ``BatchSampler(RandomSampler(...))`` (and Opacus can swap its
    ``sampler.generator``), without turning every index into a Python int.
    """

    sampler: RandomSampler  # the one __init__ passes (BatchSampler types it as any sampler)

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        super().__init__(RandomSampler(range(n), generator=generator), batch_size, drop_last=False)

    def __iter__(self) -> Iterator[torch.Tensor]:  # type: ignore[override]
        order = torch.randperm(len(self.sampler), generator=self.sampler.generator)
        return iter(order.split(self.batch_size))


def make_loader(
    X: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, *, batch_size: int, seed: int
) -> DataLoader:
    """Shuffling DataLoader over in-memory arrays; the order depends on ``seed`` only.

    Every pass draws a new permutation from one generator seeded with ``seed``; the last batch may
    be smaller. Opacus' ``DPDataLoader.from_data_loader`` (Poisson sampling) accepts it.
    """
    if batch_size < 1:
        raise ValueError(f"The batch size must be a positive integer, got {batch_size}.")
    dataset = ArrayDataset(X, y)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_sampler=ShuffledBatches(len(dataset), batch_size, generator),
        generator=generator,
        collate_fn=collate_batch,  # type: ignore[arg-type]  # __getitems__' tuple
    )


def lr_factor(schedule: str, server_round: int, rounds: int) -> float:
    """The multiple of ``train.lr`` that round ``server_round`` of ``rounds`` trains at.

    ``constant``: 1. ``cosine`` (Loshchilov & Hutter 2017, SGDR, without restarts, one value per
    round): ``(1 + cos(pi * (server_round - 1) / rounds)) / 2``, from 1 in round 1 down to
    ``(1 + cos(pi * (rounds - 1) / rounds)) / 2 > 0`` in the last. Late rounds then take small
    steps: under DP-SGD each step adds noise to the weights in proportion to the learning rate,
    so the released model carries less of the last rounds' noise without the lag of averaging
    past rounds (measured in benchmarks/README.md). A function of the round alone: a resumed or
    deployed study trains each round at the same rate.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / rounds))
    raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


def step_lr_factor(
    schedule: str, rounds: int, rounds_run: int, total_steps: int
) -> Callable[[int], float] | None:
    """``lr_factor`` for a baseline that takes ``total_steps`` steps in one go (None when the
    schedule is constant): step ``i`` trains at the factor of the round it stands for, the
    steps being cut into ``rounds_run`` equal shares (the rounds the federation trained, of
    ``rounds`` planned), so the pooled and local-only baselines follow the federation's
    schedule."""
    if schedule == "constant":
        return None
    share = max(total_steps, 1)
    return lambda step: lr_factor(
        schedule, min(step * rounds_run // share, rounds_run - 1) + 1, rounds
    )


def make_optimizer(
    model: nn.Module,
    name: str = "sgd",
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """``sgd`` (with optional momentum), ``adam`` or ``adamw`` over the trainable parameters."""
    if not lr > 0:
        raise ValueError(f"The learning rate must be positive, got {lr}.")
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer '{name}'; choose one of {OPTIMIZERS}.")


class _Proximal:
    """FedProx pull ``mu/2 * ||w - w_global||^2``, applied as a decoupled step.

    Just before each optimizer step, ``w <- w - lr * mu * (w - w_global)`` (one in-place lerp per
    parameter group). For plain SGD this is exactly the gradient of the term added to the loss,
    and, unlike a loss term, it survives DP-SGD, whose optimizer rebuilds the gradient from
    per-sample gradients of the data loss only (the term involves no data, so it costs no privacy).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, mu: float) -> None:
        self.optimizer, self.mu = optimizer, mu
        self.anchors = [
            [p.detach().clone() for p in group["params"]] for group in optimizer.param_groups
        ]

    @torch.no_grad()
    def pull(self) -> None:
        for group, anchors in zip(self.optimizer.param_groups, self.anchors, strict=True):
            torch._foreach_lerp_(group["params"], anchors, group["lr"] * self.mu)


def _check_budget(steps: int | None, epochs: int | None) -> None:
    if (steps is None) == (epochs is None):
        raise ValueError("Give exactly one of steps or epochs to train().")
    budget = steps if steps is not None else epochs
    if not isinstance(budget, numbers.Integral) or budget < 1:
        raise ValueError(f"steps/epochs must be a positive integer, got {budget!r}.")


def _run_pass(
    model: nn.Module,
    loader: Iterable,
    loss_fn: LossFn,
    opt: torch.optim.Optimizer,
    proximal: _Proximal | None,
    losses: list[torch.Tensor],
    sizes: list[int],
    limit: float,
    lr_at: Callable[[int], float] | None = None,
) -> int:
    """One pass over ``loader``, stopping once ``limit`` steps are taken in all; batches seen."""
    seen = 0
    for xb, yb in loader:
        seen += 1
        if yb.shape[0] == 0:
            continue
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(len(sizes))
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        if proximal is not None:
            proximal.pull()
        opt.step()
        losses.append(loss.detach())
        sizes.append(yb.shape[0])
        if len(sizes) >= limit:
            break
    return seen


def train(
    model: nn.Module,
    loader: Iterable,
    loss_fn: LossFn,
    *,
    lr: float,
    steps: int | None = None,
    epochs: int | None = None,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
    optimizer_obj: torch.optim.Optimizer | None = None,
    lr_at: Callable[[int], float] | None = None,
) -> dict[str, float | int]:
    """Train ``model`` in place for exactly ``steps`` optimizer steps or ``epochs`` passes.

    ``lr_at(i)``, when given, is the learning rate of step ``i`` (0-based; the baselines'
    schedule, :func:`step_lr_factor`); otherwise every step trains at ``lr``.

    ``steps`` cycles the loader as often as needed. Empty batches (Poisson sampling in Opacus'
    ``DPDataLoader``) are skipped and not counted. ``optimizer_obj`` (e.g. an Opacus
    ``DPOptimizer``) replaces the optimizer built from ``optimizer``/``lr``/``momentum``/
    ``weight_decay``. ``proximal_mu > 0`` adds the FedProx term towards the weights at the start.

    Returns
    -------
    dict
        ``loss``: example-weighted mean training loss (without the proximal term), ``steps``:
        optimizer steps taken, ``examples``: training examples seen (with repeats).
    """
    _check_budget(steps, epochs)
    opt = optimizer_obj or make_optimizer(
        model, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    proximal = _Proximal(opt, proximal_mu) if proximal_mu > 0 else None
    limit = steps if steps is not None else math.inf
    losses: list[torch.Tensor] = []
    sizes: list[int] = []
    model.train()
    for _ in range(epochs) if epochs is not None else itertools.count():
        if not _run_pass(model, loader, loss_fn, opt, proximal, losses, sizes, limit, lr_at):
            raise ValueError("The training loader yielded no batch; is the training set empty?")
        if len(sizes) >= limit:
            break
    examples = sum(sizes)
    if not examples:
        return {"loss": math.nan, "steps": 0, "examples": 0}
    weighted = torch.stack(losses).double() @ torch.tensor(sizes, dtype=torch.float64)
    return {"loss": weighted.item() / examples, "steps": len(sizes), "examples": examples}


def evaluate(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    schema: TaskSchema,
    *,
    stats: GlobalStats | None = None,
    batch_size: int = 65536,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of ``model`` on ``(X, y)`` and the additive statistics they come from.

    Runs in eval mode under ``torch.no_grad`` (the previous mode is restored). Give the same
    ``stats`` as to :func:`loss_function` so the reported loss is the training loss. Send the
    statistics, not the metrics, when results from several hospitals are to be combined.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        inputs = torch.as_tensor(X, dtype=torch.float32)
        output = torch.cat(
            [predict_output(schema, model(chunk)) for chunk in torch.split(inputs, batch_size)]
        )
    model.train(was_training)
    scale = stats.loss_scale if stats is not None else 1.0
    sums = metric_statistics(schema, y, output, loss_scale=scale)
    return metrics_from_statistics(schema, sums), sums


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Copies of the model's tensors as numpy arrays, in ``state_dict`` order."""
    return [value.detach().cpu().numpy().copy() for value in model.state_dict().values()]


def set_weights(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load arrays from :func:`get_weights` into ``model`` in place, in ``state_dict`` order.

    Order, not names, is matched, so weights of an Opacus ``GradSampleModule`` (``_module.``
    prefix) load into the plain model and back.
    """
    state = model.state_dict()
    if len(arrays) != len(state):
        raise ValueError(f"Got {len(arrays)} weight arrays for a model with {len(state)} tensors.")
    new_state = OrderedDict()
    for (name, current), array in zip(state.items(), arrays, strict=True):
        tensor = torch.as_tensor(np.asarray(array), dtype=current.dtype)
        if tensor.shape != current.shape:
            raise ValueError(
                f"Weight array for '{name}' has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(current.shape)}."
            )
        new_state[name] = tensor
    model.load_state_dict(new_state)
