"""Sample-level differential privacy at one hospital: DP-SGD training and its privacy accounting.

State is separated from math (as in Opacus): a hospital's privacy state is a run-length history
``[(noise_multiplier, sample_rate, steps), ...]`` of every Poisson-subsampled Gaussian mechanism it
ran on one dataset; :func:`epsilon_from_history` turns any history into epsilon with Opacus' RDP or
PRV accountant. :func:`dp_train` restores the history into a fresh accountant before training, so
epsilon composes across rounds, studies and restarts as long as the caller persists the history
(the node's privacy ledger does). Opacus is imported lazily: it costs about 1.3 s.

One DP-SGD step samples each row with probability ``q = batch_size / n`` (Poisson sampling),
clips every per-sample gradient to L2 norm ``max_grad_norm`` (C), sums, adds N(0, (sigma C)^2)
per coordinate and divides by ``batch_size``. An empty draw still takes a noise-only step and is
counted, so a round's mechanism steps are exactly what was planned and reserved. Two backends
compute the clipped sum (:mod:`medfed.models.dp_clip`): ``vectorised`` for Sequential MLPs of
Linear and element-wise layers (one backward pass; 1.15-1.4x the CPU time of plain SGD in
``benchmarks/dp_overhead.py``) and Opacus' ``hooks``/``functorch`` grad samplers for any
Opacus-compatible model (3-6x there).
No Flower here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import secrets
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medfed.models import dp_clip
from medfed.models.training import LossFn, make_optimizer, train

History = list[tuple[float, float, int]]
ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("auto", "vectorised", "hooks", "functorch")


def compact_history(history: Sequence[Sequence[float]]) -> History:
    """Validate a history and merge entries with the same noise and sample rate.

    Composition is commutative, so ``[(1.0, 0.1, 5), (2.0, 0.1, 3), (1.0, 0.1, 5)]`` and
    ``[(1.0, 0.1, 10), (2.0, 0.1, 3)]`` have the same epsilon; merging keeps the PRV accountant
    fast after hundreds of rounds. Entries with zero steps are dropped.
    """
    merged: dict[tuple[float, float], int] = {}
    for entry in history:
        noise, rate, steps = float(entry[0]), float(entry[1]), int(entry[2])
        if noise < 0 or not 0 < rate <= 1 or steps < 0:
            raise ValueError(
                f"The privacy history entry {tuple(entry)} is invalid: it needs "
                "noise >= 0, 0 < sample rate <= 1 and steps >= 0."
            )
        if steps:
            merged[(noise, rate)] = merged.get((noise, rate), 0) + steps
    return [(noise, rate, steps) for (noise, rate), steps in merged.items()]


def _check_accountant(name: str) -> None:
    if name not in ACCOUNTANTS:
        raise ValueError(f"privacy.accountant must be one of {ACCOUNTANTS}, got {name!r}.")


def _accountant(name: str, history: Sequence[Sequence[float]]) -> Any:
    """An Opacus accountant of mechanism ``name`` holding ``history``."""
    _check_accountant(name)
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=name)
    accountant.history = compact_history(history)
    return accountant


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"privacy.delta must lie strictly between 0 and 1, got {delta}.")


def epsilon_from_history(
    history: Sequence[Sequence[float]], delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon at ``delta`` of every mechanism in ``history`` composed (0 for no history).

    ``accountant`` is ``rdp`` (Renyi DP, Opacus' default orders) or ``prv`` (privacy random
    variables, tighter; its upper bound is returned). A step with zero noise gives ``inf``.
    """
    _check_delta(delta)
    _check_accountant(accountant)
    entries = compact_history(history)
    if not entries:
        return 0.0
    if any(noise == 0 for noise, _, _ in entries):
        return math.inf
    if accountant == "rdp":
        return _rdp_epsilon(entries, delta)
    return _prv_epsilon(tuple(tuple(e) for e in entries), delta)


@functools.lru_cache(maxsize=256)
def _prv_epsilon(entries: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Opacus' PRV epsilon of ``entries`` (its upper bound), cached.

    One evaluation takes about 50 ms (a discretised convolution), and a node asks three times a
    round for the same history when its ledger holds only the running study: the projected
    total, the projected study spend, and the spend after training. Measured on
    ``medfed simulate task=treatment privacy=dpsgd privacy.target_epsilon=1`` (fresh ledgers,
    quiet machine): 26.8 s without this cache, 16.7 s with it (RDP: 8.1 s).
    """
    with _quiet_accounting():
        return float(_accountant("prv", list(entries)).get_epsilon(delta))


@contextlib.contextmanager
def _quiet_accounting() -> Iterator[None]:
    """Opacus' PRV accounting without its internal noise on stderr: it takes ``log(1 - q)``,
    -inf at sample rate 1, and masks it (numpy warns); and it sizes its domain with an RDP bound
    that warns "Optimal order is the largest alpha", advice about RDP that does not apply to the
    PRV result returned."""
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(noise: float, rate: float) -> np.ndarray:
    """RDP of one subsampled Gaussian step at Opacus' default orders (read-only array).

    Cached: a node composes the same mechanism every round, and each curve costs 0.05-0.3 s.
    """
    from opacus.accountants.analysis.rdp import compute_rdp
    from opacus.accountants.rdp import RDPAccountant

    curve = np.asarray(
        compute_rdp(q=rate, noise_multiplier=noise, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)
    )
    curve.setflags(write=False)
    return curve


def _rdp_epsilon(entries: History, delta: float) -> float:
    """Opacus' ``RDPAccountant.get_epsilon`` of ``entries``, from the cached per-step curves."""
    from opacus.accountants.analysis.rdp import get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    rdp = sum([_rdp_per_step(noise, rate) * steps for noise, rate, steps in entries])
    epsilon, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(epsilon)


@functools.lru_cache(maxsize=256)
def noise_for_target(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier (to 0.01 in epsilon) whose ``steps`` steps stay within target.

    Plan a whole study at once: ``steps = rounds * local steps``; the result is Opacus'
    ``get_noise_multiplier``, so the planned epsilon lies in ``[target - 0.01, target]``.
    Cached: a node re-plans the same study every round, and the search takes 0.1-5 s.
    """
    if not target_epsilon > 0:
        raise ValueError(f"privacy.target_epsilon must be positive, got {target_epsilon}.")
    _check_delta(delta)
    _check_accountant(accountant)
    from opacus.accountants.utils import get_noise_multiplier

    with _quiet_accounting():
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=int(steps),
                accountant=accountant,
            )
        )


def default_delta(smallest_site: int) -> float:
    """A delta below 1/n of the smallest site: the power of ten at or below ``1 / (10 n)``."""
    if smallest_site < 1:
        raise ValueError(f"A site needs at least one training row, got {smallest_site}.")
    return 10.0 ** math.floor(math.log10(1.0 / (10 * smallest_site)))


def sample_rate(n: int, batch_size: int) -> float:
    """Poisson sampling probability ``batch_size / n`` (capped at 1)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"DP-SGD needs n >= 1 rows and batch_size >= 1, got {n} and {batch_size}.")
    return min(1.0, batch_size / n)


def dp_steps(
    n: int, batch_size: int, *, steps: int | None = None, epochs: int | None = None
) -> int:
    """Mechanism steps of one round: ``steps``, or ``epochs * max(1, n // batch_size)``.

    That is Opacus' ``1 / q`` steps per epoch, without its floating-point rounding.
    """
    if steps is not None and epochs is None:
        return int(steps)
    if steps is not None or epochs is None:
        raise ValueError("Give exactly one of steps or epochs to DP-SGD.")
    sample_rate(n, batch_size)
    return int(epochs) * max(1, n // batch_size)


def step_noise_lr(
    lr: float, max_step_noise: float | None, noise: float, clip: float, batch: float
) -> float:
    """The learning rate of one hospital's DP-SGD: ``lr``, lowered so that the Gaussian noise one
    step adds to each weight has a standard deviation of at most ``max_step_noise``.

    A DP-SGD step moves every weight by ``lr`` times the noisy mean gradient, whose noise has
    std ``noise * clip / batch`` (``batch``: the expected batch ``q n``), so the weights
    random-walk by ``lr * noise * clip / batch`` per step. One learning rate cannot serve every
    budget: measured on pricing, lr 1.0 met the epsilon-8 target (noise 1.2-2) but diverged at
    epsilon 1 (noise 6-11), where lr 0.3 was needed. Capping the per-step noise instead keeps a
    large step where the noise is small and a small one where it is large, and, since each
    hospital plans its own noise, hospitals whose updates are mostly noise move less. No data is
    involved (the noise is planned from the settings), so this costs no privacy.
    """
    if max_step_noise is None or noise == 0:
        return lr
    if not max_step_noise > 0:
        raise ValueError(f"privacy.max_step_noise must be positive, got {max_step_noise}.")
    return min(lr, max_step_noise * batch / (noise * clip))


def _generators(seed: int, secure: bool) -> tuple[torch.Generator, torch.Generator]:
    """Sampling and noise streams: two independent ones derived from ``seed``, or from the OS.

    Separate streams keep the batches identical whichever clipping implementation draws the
    noise (and however many numbers it draws).
    """
    if secure:
        try:
            import torchcsprng  # type: ignore[import-not-found]

            return (
                torchcsprng.create_random_device_generator("/dev/urandom"),
                torchcsprng.create_random_device_generator("/dev/urandom"),
            )
        except ImportError:
            warnings.warn(
                "privacy.secure_rng: torchcsprng is not installed, so sampling and "
                "noise use torch generators seeded from the OS entropy pool "
                "(unpredictable, not reproducible, not a cryptographic stream).",
                stacklevel=3,
            )
            seeds = [secrets.randbits(63), secrets.randbits(63)]
    else:
        seeds = [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(2, np.uint64)]
    return (
        torch.Generator().manual_seed(seeds[0] % 2**63),
        torch.Generator().manual_seed(seeds[1] % 2**63),
    )


class PoissonBatches:
    """Exactly ``steps`` Poisson draws; yields the non-empty batches, ``on_empty()`` for the rest.

    Every row joins a draw with probability ``rate``, independently, as in Opacus'
    ``UniformWithReplacementSampler`` (one uniform per row and step, one gather: cheaper than a
    DataLoader's per-batch overhead, one batch in memory). ``yielded`` counts the non-empty
    batches of the last pass.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rate: float,
        steps: int,
        generator: torch.Generator,
        on_empty: Callable[[], None],
    ) -> None:
        self.x, self.y, self.rate, self.steps = x, y, rate, steps
        self.generator, self.on_empty = generator, on_empty
        self.yielded = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        self.yielded = 0
        for _ in range(self.steps):
            rows = (torch.rand(n, generator=self.generator) < self.rate).nonzero().view(-1)
            if len(rows):
                self.yielded += 1
                yield self.x.index_select(0, rows), self.y.index_select(0, rows)
            else:
                self.on_empty()


def _resolve_mode(model: nn.Module, mode: str) -> str:
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {mode!r}.")
    if mode == "auto":
        if dp_clip.supports(model):
            return "vectorised"
        logging.getLogger(__name__).info(
            "DP-SGD clips this model with Opacus' hooks: dp_clip covers Sequential MLPs of "
            "Linear and element-wise layers only (e.g. not LayerNorm)"
        )
        return "hooks"
    if mode == "vectorised" and not dp_clip.supports(model):
        raise ValueError(
            "grad_sample_mode='vectorised' needs an nn.Sequential of Linear and "
            "element-wise layers; use 'auto' or 'hooks' for this model."
        )
    return mode


def _check_dp_args(noise: float, clip: float, accountant: str) -> None:
    if noise < 0 or not clip > 0:
        raise ValueError(
            f"privacy.noise_multiplier must be >= 0 and privacy.max_grad_norm > 0, "
            f"got {noise} and {clip}."
        )
    if noise == 0:
        warnings.warn(
            "privacy.noise_multiplier is 0: DP-SGD only clips; epsilon is infinite.", stacklevel=3
        )
    _check_accountant(accountant)


def _private(
    model: nn.Module, opt: torch.optim.Optimizer, mode: str, **settings: Any
) -> tuple[nn.Module, Any, Callable[[], None], Callable[[], None]]:
    """(model to call, DP optimizer, noise-only step, cleanup) for ``mode``."""
    if mode == "vectorised":
        wrapped, dp_opt = dp_clip.attach(model, opt, **settings)
        return wrapped, dp_opt, dp_opt.noise_step, dp_opt.detach
    return dp_clip.attach_opacus(model, opt, mode, **settings)


def _run(
    wrapped: nn.Module,
    batches: PoissonBatches,
    loss_fn: LossFn,
    dp_opt: Any,
    *,
    lr: float,
    proximal_mu: float,
    cleanup: Callable[[], None],
    lr_at: Callable[[int], float] | None = None,
) -> dict[str, float | int]:
    """:func:`medfed.models.training.train` over every draw, then ``cleanup`` whatever happens.

    ``train`` refuses a loader without a batch; here that is a round whose every draw was empty
    (each already took its noise step), so it reports no examples instead.
    """
    try:
        return train(
            wrapped,
            batches,
            loss_fn,
            lr=lr,
            epochs=1,
            optimizer_obj=dp_opt,
            proximal_mu=proximal_mu,
            lr_at=lr_at,
        )
    except ValueError:
        if batches.yielded:
            raise
        return {"loss": math.nan, "steps": 0, "examples": 0}
    finally:
        cleanup()


def study_dp_settings(study: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`dp_train` that a study's ``train`` and ``privacy``
    sections set, so the node's round and the pooled DP baseline train alike."""
    cfg, priv = study["train"], study["privacy"]
    return {
        "lr": float(cfg["lr"]),
        "batch_size": int(cfg["batch_size"]),
        "max_grad_norm": float(priv["max_grad_norm"]),
        "optimizer": str(cfg["optimizer"]),
        "momentum": float(cfg["momentum"]),
        "weight_decay": float(cfg["weight_decay"]),
        "accountant": str(priv["accountant"]),
        "max_step_noise": priv.get("max_step_noise"),
    }


def dp_train(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    loss_fn: LossFn,
    *,
    lr: float,
    batch_size: int,
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int,
    history: Sequence[Sequence[float]],
    steps: int | None = None,
    epochs: int | None = None,
    secure_rng: bool = False,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
    accountant: str = "rdp",
    delta: float | None = None,
    grad_sample_mode: str = "auto",
    max_step_noise: float | None = None,
    lr_factor: Callable[[int], float] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train ``model`` in place with DP-SGD for one round; return its weights and a report.

    ``loss_fn`` must be a mean over the batch of per-sample losses (every task loss is). One
    ``seed`` fixes sampling and noise, so a simulation is reproducible; but whoever knows the
    seed (a coordinator that sent it) can regenerate the noise and subtract it, so outside
    simulation use ``secure_rng=True`` (OS entropy) or a seed only the node knows. ``history``
    is the dataset's spend so far, restored into the accountant. The proximal pull
    (``proximal_mu``) involves no data and costs no privacy. ``grad_sample_mode``: ``auto``
    (``vectorised`` when the model allows, else Opacus ``hooks``) or one of those, or
    ``functorch``. ``max_step_noise`` lowers ``lr`` for this hospital (:func:`step_noise_lr`).
    ``lr_factor(i)`` scales ``lr`` at step ``i`` before that cap (a baseline's share of the
    study's ``train.lr_schedule``).

    Returns
    -------
    weights, report
        ``weights``: ``model.state_dict()`` copies, without Opacus' ``_module.`` prefix.
        ``report``: ``loss`` (mean training loss over sampled rows), ``steps`` (mechanism steps,
        empty draws included), ``examples``, ``sample_rate``, ``noise_multiplier``, ``history``
        (the composed history to persist), ``epsilon`` (at ``delta``; NaN without ``delta``)
        and ``lr`` (the learning rate used).
    """
    _check_dp_args(noise_multiplier, max_grad_norm, accountant)
    xs, ys = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    rate = sample_rate(len(ys), batch_size)
    total = dp_steps(len(ys), batch_size, steps=steps, epochs=epochs)
    acct = _accountant(accountant, history)
    start = sum(s for _, _, s in acct.history)
    sampling, noise_gen = _generators(seed, secure_rng)
    base = lr
    lr = step_noise_lr(base, max_step_noise, noise_multiplier, max_grad_norm, rate * len(ys))
    lr_at = (
        None
        if lr_factor is None
        else lambda i: step_noise_lr(
            base * lr_factor(i), max_step_noise, noise_multiplier, max_grad_norm, rate * len(ys)
        )
    )
    opt = make_optimizer(model, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
    wrapped, dp_opt, empty_step, cleanup = _private(
        model,
        opt,
        _resolve_mode(model, grad_sample_mode),
        noise=noise_multiplier,
        clip=max_grad_norm,
        batch=rate * len(ys),
        generator=noise_gen,
        secure=secure_rng,
    )
    dp_opt.attach_step_hook(
        lambda _: acct.step(noise_multiplier=noise_multiplier, sample_rate=rate)
    )
    result = _run(
        wrapped,
        PoissonBatches(xs, ys, rate, total, sampling, empty_step),
        loss_fn,
        dp_opt,
        lr=lr,
        proximal_mu=proximal_mu,
        cleanup=cleanup,
        lr_at=lr_at,
    )
    if sum(s for _, _, s in acct.history) - start != total:
        raise RuntimeError(
            f"DP-SGD accounted a different number of steps than the {total} it "
            "ran; please report this bug."
        )
    epsilon = math.nan if delta is None else epsilon_from_history(acct.history, delta, accountant)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return weights, {
        "loss": float(result["loss"]),
        "steps": total,
        "examples": int(result["examples"]),
        "sample_rate": rate,
        "noise_multiplier": float(noise_multiplier),
        "history": [tuple(e) for e in acct.history],
        "epsilon": epsilon,
        "lr": lr,
    }
