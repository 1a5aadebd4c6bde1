"""Membership inference by loss threshold (Yeom et al., CSF 2018): how much a model leaks.

A model fits its training rows (*members*) better than unseen rows from the same distribution
(*non-members*), so an attacker who sees a row's loss guesses "member" when the loss is at most a
threshold ``t``. The attack's **advantage** is the true-positive rate minus the false-positive rate,

    advantage(t) = P[loss <= t | member] - P[loss <= t | non-member] = TPR(t) - FPR(t),

which equals ``2 * balanced_accuracy - 1`` of the guess (and ``2 * accuracy - 1`` when members and
non-members are equally many). 0 means the losses tell nothing; 1 means they separate perfectly.
An (epsilon, delta)-DP training bounds it by ``(e^epsilon - 1 + 2 delta) / (e^epsilon + 1)``.

Two estimates are reported, each biased in a known direction:

- ``optimal``: the best threshold chosen on the very rows it is scored on, ``max_t TPR - FPR``.
  It is biased *up* by sampling noise: when nothing leaks it is a one-sided Kolmogorov-Smirnov
  statistic, about ``0.63 * sqrt(1/m + 1/n)`` on average for ``m`` members and ``n`` non-members
  and above ``a`` with probability ``exp(-2 a^2 m n / (m + n))``. So "optimal <= a" is a
  conservative claim of no leakage.
- ``held_out``: two-fold cross-fitting; the threshold chosen on one half of each set is scored on
  the other half, and the two folds are averaged. Unbiased for a threshold the attacker could
  really pick, so "held_out >= a" is a conservative claim of leakage.

No Flower here: the same attack runs on a pooled, local-only or federated model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _losses(values: np.ndarray | list[float], which: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"The {which} losses are empty: the attack needs rows of both kinds.")
    if not np.isfinite(array).all():
        raise ValueError(f"The {which} losses contain NaN or infinite values.")
    return array


def advantage_at(
    threshold: float,
    member_losses: np.ndarray | list[float],
    nonmember_losses: np.ndarray | list[float],
) -> float:
    """``TPR - FPR`` of guessing "member" when the loss is at most ``threshold``."""
    members = _losses(member_losses, "member")
    nonmembers = _losses(nonmember_losses, "non-member")
    return float(np.mean(members <= threshold) - np.mean(nonmembers <= threshold))


def best_threshold(
    member_losses: np.ndarray | list[float], nonmember_losses: np.ndarray | list[float]
) -> tuple[float, float]:
    """``(advantage, threshold)`` maximising ``TPR - FPR`` over every threshold.

    The rates change only at observed losses, so those (and ``-inf``: every row guessed
    "non-member", advantage 0) are tried, in exact integer arithmetic. Of equally good ones the
    smallest wins, and the threshold returned is the midpoint between it and the next observed
    loss, so that it also classifies unseen rows between the two sensibly (cross-fitting).
    """
    members = np.sort(_losses(member_losses, "member"))
    nonmembers = np.sort(_losses(nonmember_losses, "non-member"))
    candidates = np.unique(np.concatenate([members, nonmembers]))
    true_pos = np.searchsorted(members, candidates, side="right")
    false_pos = np.searchsorted(nonmembers, candidates, side="right")
    gains = true_pos * nonmembers.size - false_pos * members.size
    best = int(np.argmax(gains))
    if gains[best] <= 0:
        return 0.0, -np.inf
    above = candidates[best + 1] if best + 1 < candidates.size else candidates[best]
    return (
        float(gains[best] / (members.size * nonmembers.size)),
        float((candidates[best] + above) / 2),
    )


def cross_fitted_advantage(
    member_losses: np.ndarray | list[float],
    nonmember_losses: np.ndarray | list[float],
    *,
    seed: int,
) -> float:
    """Advantage of a threshold chosen on held-out rows: two folds, each scored on the other.

    Each set is shuffled (``seed``) and halved; the threshold :func:`best_threshold` picks on
    fold A (members and non-members) is scored on fold B and vice versa; the mean is returned.
    Needs at least two losses of each kind.
    """
    members = _losses(member_losses, "member")
    nonmembers = _losses(nonmember_losses, "non-member")
    if members.size < 2 or nonmembers.size < 2:
        raise ValueError("Cross-fitting needs at least two member and two non-member losses.")
    rng = np.random.default_rng(seed)
    m_folds = np.array_split(rng.permutation(members), 2)
    n_folds = np.array_split(rng.permutation(nonmembers), 2)
    scores = []
    for fit, score in ((0, 1), (1, 0)):
        _, threshold = best_threshold(m_folds[fit], n_folds[fit])
        scores.append(advantage_at(threshold, m_folds[score], n_folds[score]))
    return float(np.mean(scores))


def per_example_losses(
    model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, loss_fn: LossFn
) -> np.ndarray:
    """The loss of every row, ``loss_fn`` applied to one row at a time (vectorised with vmap).

    ``loss_fn`` is the task loss, a mean over the batch (:func:`medfed.models.training.
    loss_function`); on a batch of one it is that row's loss. Runs in eval mode, without grad.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model(torch.as_tensor(x, dtype=torch.float32))
        losses = torch.func.vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(
            output, torch.as_tensor(y).to(output.dtype if output.dim() == 1 else torch.long)
        )
    model.train(was_training)
    return losses.double().numpy()


@dataclass(frozen=True)
class AttackResult:
    """What the loss-threshold attack achieved against one model (see the module docstring)."""

    optimal: float  # max over thresholds of TPR - FPR on all rows (biased up)
    held_out: float  # two-fold cross-fitted TPR - FPR (unbiased for a chosen threshold)
    threshold: float  # the loss threshold of ``optimal``
    n_members: int
    n_nonmembers: int
    member_loss: float  # mean loss of the members (training rows)
    nonmember_loss: float  # mean loss of the non-members

    @property
    def noise_level(self) -> float:
        """Mean ``optimal`` when nothing leaks: ``sqrt(pi / 8) * sqrt(1/m + 1/n)``."""
        return float(np.sqrt(np.pi / 8 * (1 / self.n_members + 1 / self.n_nonmembers)))


def loss_threshold_attack(
    model: nn.Module,
    loss_fn: LossFn,
    members: tuple[np.ndarray, np.ndarray],
    nonmembers: tuple[np.ndarray, np.ndarray],
    *,
    seed: int = 0,
) -> AttackResult:
    """Run the loss-threshold attack on ``model``: ``members``/``nonmembers`` are ``(x, y)``.

    ``members`` are rows the model trained on; ``nonmembers`` rows from the same distribution it
    never saw (use as many as members, so neither side's noise dominates). ``seed`` shuffles the
    cross-fitting folds.
    """
    inside = per_example_losses(model, *members, loss_fn)
    outside = per_example_losses(model, *nonmembers, loss_fn)
    optimal, threshold = best_threshold(inside, outside)
    return AttackResult(
        optimal=optimal,
        held_out=cross_fitted_advantage(inside, outside, seed=seed),
        threshold=threshold,
        n_members=inside.size,
        n_nonmembers=outside.size,
        member_loss=float(inside.mean()),
        nonmember_loss=float(outside.mean()),
    )


def balanced_split(y: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two halves of ``y``'s rows with the same size and the same label mix.

    Use one half to train (members) and the other as non-members. Balancing the labels matters:
    a chance difference in prevalence between the halves changes the mean loss of either (the
    minority class has the larger loss) and would pass for membership leakage. Per label, the
    rows are shuffled (``seed``) and dealt alternately; an odd row out is dropped, so the halves
    are exactly equal in size and in every label's count.
    """
    labels = np.asarray(y).reshape(-1)
    rng = np.random.default_rng(seed)
    first: list[np.ndarray] = []
    second: list[np.ndarray] = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        pairs = rows[: rows.size - rows.size % 2]
        first.append(pairs[0::2])
        second.append(pairs[1::2])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))
