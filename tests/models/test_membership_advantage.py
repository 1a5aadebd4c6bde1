"""The loss-threshold attack's arithmetic: hand-computed advantages on tiny loss vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medfed.models.membership import (
    advantage_at,
    best_threshold,
    cross_fitted_advantage,
    loss_threshold_attack,
    per_example_losses,
)


def test_best_threshold_by_hand():
    # t = 0.2: TPR 2/3, FPR 0; t = 0.5: TPR 1, FPR 1/3; both 2/3, the smaller one wins and the
    # threshold is the midpoint to the next loss, 0.3.
    adv, t = best_threshold([0.1, 0.2, 0.5], [0.3, 0.6, 0.7])
    assert adv == pytest.approx(2 / 3) and t == pytest.approx(0.25)
    assert advantage_at(0.5, [0.1, 0.2, 0.5], [0.3, 0.6, 0.7]) == pytest.approx(2 / 3)
    assert advantage_at(0.65, [0.1, 0.2, 0.5], [0.3, 0.6, 0.7]) == pytest.approx(1 / 3)


def test_ties_count_on_both_sides_and_unequal_sizes():
    # t = 0.5 takes both members and the tied non-member: TPR 1 - FPR 1/2.
    assert best_threshold([0.5, 0.5], [0.5, 1.0]) == (0.5, 0.75)
    # 4 members, 2 non-members: t = 0.2 gives 3/4 - 0 (2 * balanced accuracy - 1).
    assert best_threshold([0.1, 0.1, 0.2, 0.9], [0.4, 0.8])[0] == pytest.approx(0.75)


def test_perfect_separation_and_no_signal():
    assert best_threshold([0.0, 0.1], [0.2, 0.3]) == (1.0, pytest.approx(0.15))
    # Members fit worse than non-members: no threshold helps, the attack says "non-member".
    assert best_threshold([0.9, 0.8], [0.1, 0.2]) == (0.0, -math.inf)
    assert advantage_at(-math.inf, [0.9], [0.1]) == 0.0


def test_cross_fitting_by_hand():
    # Sizes 4 and 4 split 2 + 2; members always below non-members, so each fold's threshold
    # separates the other fold perfectly.
    assert cross_fitted_advantage([0.1, 0.2, 0.3, 0.4], [1.1, 1.2, 1.3, 1.4], seed=0) == 1.0
    assert cross_fitted_advantage([1.1, 1.2, 1.3, 1.4], [0.1, 0.2, 0.3, 0.4], seed=0) == 0.0


def test_optimal_is_biased_up_and_held_out_is_not_when_nothing_leaks():
    rng = np.random.default_rng(0)
    n, draws = 400, 300
    pairs = [(rng.exponential(size=n), rng.exponential(size=n)) for _ in range(draws)]
    optimal = np.mean([best_threshold(a, b)[0] for a, b in pairs])
    held_out = np.mean([cross_fitted_advantage(a, b, seed=i) for i, (a, b) in enumerate(pairs)])
    expected = math.sqrt(math.pi / 8 * 2 / n)  # one-sided Kolmogorov-Smirnov mean: 0.044
    assert optimal == pytest.approx(expected, rel=0.15)
    assert abs(held_out) < 0.01


def test_bad_losses_are_refused_with_a_sentence():
    with pytest.raises(ValueError, match="non-member losses are empty"):
        best_threshold([0.1], [])
    with pytest.raises(ValueError, match="member losses contain NaN"):
        advantage_at(0.1, [math.nan], [0.1])


def test_per_example_losses_match_the_task_losses_row_by_row():
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    binary = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    expected = F.binary_cross_entropy_with_logits(binary(x), y, reduction="none")
    got = per_example_losses(binary, x.numpy(), y.numpy(), F.binary_cross_entropy_with_logits)
    np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-6)
    multi = nn.Linear(3, 4)
    labels = np.array([0, 3, 2, 1, 3])
    expected = F.cross_entropy(multi(x), torch.as_tensor(labels), reduction="none")
    np.testing.assert_allclose(
        per_example_losses(multi, x, labels, F.cross_entropy), expected.detach().numpy(), rtol=1e-6
    )


def test_attack_on_a_memorised_row():
    # A model that outputs +10 for members' labels and 0 elsewhere: losses ~4.5e-5 vs log 2.
    model = nn.Sequential(nn.Linear(1, 1), nn.Flatten(0))
    with torch.no_grad():
        model[0].weight.fill_(10.0)
        model[0].bias.zero_()
    members = (np.ones((4, 1), np.float32), np.ones(4, np.float32))
    nonmembers = (np.zeros((4, 1), np.float32), np.ones(4, np.float32))
    result = loss_threshold_attack(model, F.binary_cross_entropy_with_logits, members, nonmembers)
    assert result.optimal == 1.0 and result.held_out == 1.0
    assert result.nonmember_loss == pytest.approx(math.log(2))
    assert result.noise_level == pytest.approx(math.sqrt(math.pi / 8 * 0.5))
