"""DP-SGD's own training defaults: the per-step noise cap on the learning rate, and its wiring."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medfed.models.privacy import dp_train, step_noise_lr


def test_step_noise_lr_by_hand():
    # std of the noise a step adds to a weight: lr * noise * clip / batch
    assert step_noise_lr(1.0, 0.03, noise=2.0, clip=1.0, batch=64) == pytest.approx(0.96)
    assert step_noise_lr(1.0, 0.03, noise=8.0, clip=1.0, batch=64) == pytest.approx(0.24)
    assert step_noise_lr(0.5, 0.03, noise=1.0, clip=1.0, batch=64) == 0.5  # never raised
    assert step_noise_lr(0.02, 0.01, noise=4.0, clip=3.0, batch=16) == pytest.approx(0.02 * 2 / 3)
    assert step_noise_lr(1.0, None, noise=8.0, clip=1.0, batch=64) == 1.0  # no cap
    assert step_noise_lr(1.0, 0.03, noise=0.0, clip=1.0, batch=64) == 1.0  # no noise
    with pytest.raises(ValueError, match="privacy.max_step_noise must be positive"):
        step_noise_lr(1.0, 0.0, noise=1.0, clip=1.0, batch=64)


@pytest.mark.parametrize("noise", [0.5, 3.0])
def test_capped_step_noise_never_exceeds_the_cap_and_only_lowers_lr(noise: float):
    for batch in (4.0, 16.0, 200.0):
        lr = step_noise_lr(0.7, 0.02, noise=noise, clip=2.0, batch=batch)
        assert 0 < lr <= 0.7
        assert lr * noise * 2.0 / batch <= 0.02 + 1e-12 or lr == 0.7


def _train(**kw):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 1), nn.Flatten(0))
    args = dict(batch_size=20, steps=6, noise_multiplier=2.0, max_grad_norm=1.0, seed=5, history=[])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dp_train(model, x, y, F.binary_cross_entropy_with_logits, **(args | kw))


def test_dp_train_uses_the_capped_rate_and_reports_it():
    # expected batch 20 (q = 20/120), noise 2, C 1: a cap of 0.05 allows lr 0.05 * 20 / 2 = 0.5
    capped, report = _train(lr=1.0, max_step_noise=0.05)
    plain, plain_report = _train(lr=0.5)
    assert report["lr"] == pytest.approx(0.5) and plain_report["lr"] == 0.5
    for key in plain:
        torch.testing.assert_close(capped[key], plain[key])
    _, uncapped = _train(lr=1.0)
    assert uncapped["lr"] == 1.0


def test_each_dp_study_plans_the_capped_lr_from_the_task_block(small_study):
    study = small_study("task=pricing", "privacy=dpsgd", "privacy.target_epsilon=1")
    dp = study["task"]["training"]["dpsgd"]
    assert study["privacy"]["max_step_noise"] == dp["max_step_noise"]
    assert study["train"]["lr"] == dp["lr"] and study["rounds"] == dp["rounds"]
    plain = small_study("task=pricing")
    assert plain["train"]["lr"] == study["task"]["training"]["lr"]
    assert plain["privacy"]["max_step_noise"] is None


def test_config_records_the_lr_each_hospital_plans(small_study):
    from medfed.models.dp_plan import planned_lr, planned_noise

    study = small_study("task=pricing", "privacy=dpsgd", "privacy.target_epsilon=1")
    sizes = {"small": 40, "large": 900}
    noise = planned_noise(study, sizes)
    lrs = planned_lr(study, sizes, noise)
    assert noise is not None and lrs is not None
    cap, clip = (study["privacy"][k] for k in ("max_step_noise", "max_grad_norm"))
    batch = study["train"]["batch_size"]
    for name, n in sizes.items():
        expected = step_noise_lr(study["train"]["lr"], cap, noise[name], clip, min(batch, n))
        assert lrs[name] == pytest.approx(expected, abs=1e-4)
    assert lrs["small"] < lrs["large"] <= study["train"]["lr"]  # the noisier site steps less
    study["privacy"]["max_step_noise"] = None
    assert planned_lr(study, sizes, noise) is None
