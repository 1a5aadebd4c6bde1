"""train.lr_schedule: one learning rate per round, the same for a federated round, a DP-SGD round
(under its step-noise cap) and the baselines' share of the steps (hand-computed values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from medfed.models.pipeline import round_study
from medfed.models.privacy import dp_train, step_noise_lr
from medfed.models.training import lr_factor, step_lr_factor, train


def test_cosine_runs_from_the_full_rate_to_a_small_positive_one() -> None:
    # 4 rounds: (1 + cos(pi * k / 4)) / 2 for k = 0..3
    expected = [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2]
    got = [lr_factor("cosine", r, 4) for r in (1, 2, 3, 4)]
    assert got == pytest.approx(expected)
    assert min(got) > 0.14  # the last round still trains
    assert [lr_factor("constant", r, 4) for r in (1, 4)] == [1.0, 1.0]
    with pytest.raises(ValueError, match="train.lr_schedule"):
        lr_factor("step", 1, 4)


def test_a_round_trains_at_its_scheduled_rate_and_nothing_else_changes() -> None:
    study = {"rounds": 4, "train": {"lr": 0.2, "lr_schedule": "cosine", "batch_size": 8}}
    third = round_study(study, 3)
    assert third["train"]["lr"] == pytest.approx(0.1) and third["train"]["batch_size"] == 8
    assert study["train"]["lr"] == 0.2  # the study itself is untouched
    assert round_study(study, 1) is study  # round 1: the full rate
    assert round_study({**study, "train": {"lr": 0.2}}, 3)["train"]["lr"] == 0.2  # constant


def test_a_baseline_steps_through_the_rounds_it_stands_for() -> None:
    factor = step_lr_factor("cosine", rounds=4, rounds_run=4, total_steps=8)
    assert factor is not None
    assert [factor(i) for i in range(8)] == pytest.approx(
        [lr_factor("cosine", r, 4) for r in (1, 1, 2, 2, 3, 3, 4, 4)]
    )
    stopped = step_lr_factor("cosine", rounds=4, rounds_run=2, total_steps=8)  # early stop
    assert stopped is not None and stopped(7) == pytest.approx(lr_factor("cosine", 2, 4))
    assert step_lr_factor("constant", 4, 4, 8) is None


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(2, 1)


def test_train_uses_the_rate_of_each_step() -> None:
    """Plain SGD on loss = sum(w): every step moves each weight by exactly its learning rate."""
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    loader = [(torch.ones(1, 1), torch.zeros(1))] * 3

    def loss(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        return out.sum()

    rates = [0.5, 0.25, 0.125]
    train(model, loader, loss, lr=1.0, steps=3, lr_at=lambda i: rates[i])
    assert model.weight.item() == pytest.approx(-sum(rates))


def test_dp_sgd_caps_the_scheduled_rate_step_by_step() -> None:
    """The step-noise cap applies to lr * factor, step by step, as in a federated round."""
    x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), target)

    rates: list[float] = []  # the rate of every optimiser step actually taken
    hook = register_optimizer_step_pre_hook(lambda opt, *_: rates.append(opt.param_groups[0]["lr"]))
    try:
        _, report = dp_train(
            _linear(),
            x,
            y,
            loss,
            lr=1.0,
            batch_size=16,
            noise_multiplier=2.0,
            max_grad_norm=1.0,
            seed=0,
            history=[],
            steps=4,
            max_step_noise=0.05,
            lr_factor=lambda i: 1.0 if i < 2 else 0.01,
        )
    finally:
        hook.remove()
    cap = 0.05 * 16 / (2.0 * 1.0)  # max_step_noise * batch / (noise * clip)
    assert step_noise_lr(1.0, 0.05, 2.0, 1.0, 16.0) == pytest.approx(cap) == report["lr"]
    assert rates == pytest.approx([cap, cap, 0.01, 0.01])  # capped, then under the cap
