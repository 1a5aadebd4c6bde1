"""DP-SGD and privacy accounting: golden epsilon, composition, seeding, clipping and noise."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medfed.models import dp_clip
from medfed.models.dp_plan import planned_noise
from medfed.models.privacy import (
    PoissonBatches,
    compact_history,
    default_delta,
    dp_steps,
    dp_train,
    epsilon_from_history,
    noise_for_target,
    sample_rate,
)

GOLDEN = 7.32911117143
BCE = F.binary_cross_entropy_with_logits


def data(n: int = 200, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x[:, 0] - x[:, 1] > 0).astype(np.float32)


def mlp(d: int = 6, hidden: int = 8, out: int = 1, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, out)]
    return nn.Sequential(*layers, nn.Flatten(0)) if out == 1 else nn.Sequential(*layers)


def run(model: nn.Module, x, y, loss=BCE, **kw):
    args = dict(
        lr=0.5, batch_size=16, steps=15, noise_multiplier=1.0, max_grad_norm=1.0, seed=7, history=[]
    )
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dp_train(model, x, y, loss, **args)


def test_golden_epsilon_through_medfed_accounting():
    epsilon = epsilon_from_history([(1.5, 0.04, 2250)], 1e-5, "rdp")
    assert abs(epsilon - GOLDEN) < 1e-6


def test_history_order_and_run_length_do_not_change_epsilon():
    split = [(1.5, 0.04, 1000), (2.0, 0.04, 10), (1.5, 0.04, 1250)]
    assert compact_history(split) == [(1.5, 0.04, 2250), (2.0, 0.04, 10)]
    assert epsilon_from_history(split, 1e-5) == pytest.approx(
        epsilon_from_history([(2.0, 0.04, 10), (1.5, 0.04, 2250)], 1e-5), rel=1e-12
    )


def test_prv_is_a_tighter_bound_than_rdp():
    prv = epsilon_from_history([(1.5, 0.04, 2250)], 1e-5, "prv")
    assert 0.8 * GOLDEN < prv < GOLDEN


def test_edge_cases_of_accounting():
    assert epsilon_from_history([], 1e-5) == 0.0
    assert epsilon_from_history([(1.0, 0.1, 0)], 1e-5) == 0.0
    assert epsilon_from_history([(0.0, 0.1, 3)], 1e-5) == math.inf
    with pytest.raises(ValueError, match="privacy.delta"):
        epsilon_from_history([(1.0, 0.1, 3)], 0.0)
    with pytest.raises(ValueError, match="privacy.accountant"):
        epsilon_from_history([(1.0, 0.1, 3)], 1e-5, "moments")
    with pytest.raises(ValueError, match="history entry"):
        epsilon_from_history([(1.0, 1.5, 3)], 1e-5)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_noise_for_target_hits_the_target_from_below():
    noise = noise_for_target(1.0, 1e-5, 0.04, 500)
    assert 0.99 <= epsilon_from_history([(noise, 0.04, 500)], 1e-5) <= 1.0


def test_sampling_and_step_helpers():
    assert sample_rate(400, 32) == 0.08 and sample_rate(10, 32) == 1.0
    assert dp_steps(400, 32, epochs=2) == 24 and dp_steps(400, 32, steps=5) == 5
    assert default_delta(120) == 1e-4 and default_delta(1000) == 1e-4
    assert default_delta(1001) == 1e-5
    assert default_delta(120) < 1 / 120


def test_epsilon_composes_across_two_calls_with_restored_history():
    x, y = data()
    model = mlp()
    _, first = run(model, x, y, steps=12, delta=1e-5)
    _, second = run(model, x, y, steps=8, seed=8, history=first["history"], delta=1e-5)
    q = 16 / 200
    assert first["history"] == [(1.0, q, 12)] and second["history"] == [(1.0, q, 20)]
    assert second["epsilon"] == pytest.approx(epsilon_from_history([(1.0, q, 20)], 1e-5))
    assert second["epsilon"] > first["epsilon"]


def test_same_seed_same_weights_other_seed_or_secure_rng_differs():
    x, y = data()
    a, _ = run(mlp(), x, y, seed=3)
    b, _ = run(mlp(), x, y, seed=3)
    c, _ = run(mlp(), x, y, seed=4)
    d, _ = run(mlp(), x, y, seed=3, secure_rng=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])
    assert not torch.equal(a["0.weight"], d["0.weight"])


def test_secure_rng_without_torchcsprng_warns():
    x, y = data()
    with pytest.warns(UserWarning, match="secure_rng"):
        dp_train(
            mlp(),
            x,
            y,
            BCE,
            lr=0.1,
            batch_size=16,
            steps=2,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            seed=0,
            history=[],
            secure_rng=True,
        )


@pytest.mark.parametrize(
    "make,loss,target",
    [
        (lambda: mlp(), BCE, "binary"),
        (lambda: nn.Sequential(nn.Linear(6, 1), nn.Flatten(0)), BCE, "binary"),
        (lambda: mlp(out=3), F.cross_entropy, "multiclass"),
        # treatment's default: multinomial logistic regression (one Linear, one logit per class)
        (lambda: nn.Sequential(nn.Linear(6, 3)), F.cross_entropy, "multiclass"),
        (
            lambda: nn.Sequential(
                nn.Linear(6, 8),
                nn.Tanh(),
                nn.Linear(8, 8, bias=False),
                nn.ReLU(),
                nn.Linear(8, 1),
                nn.Flatten(0),
            ),
            lambda raw, y: F.mse_loss(raw, y),
            "continuous",
        ),
        # the pricing MLP's bounded log-link output (medfed.models.nets.output_layer): rows beyond
        # the Hardtanh bounds have zero output gradient, rows inside the identity
        (
            lambda: nn.Sequential(
                nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1), nn.Hardtanh(-0.3, 0.3), nn.Flatten(0)
            ),
            lambda raw, y: F.mse_loss(raw, y),
            "continuous",
        ),
    ],
)
def test_vectorised_clipping_matches_opacus_per_sample_gradients(make, loss, target):
    x, y = data()
    if target == "multiclass":
        y = (np.abs(x[:, 0]) * 2).astype(np.int64).clip(0, 2)
    kw = dict(noise_multiplier=0.0, max_grad_norm=0.3, lr=1.0, steps=10)
    torch.manual_seed(1)
    fast, r_fast = run(make(), x, y, loss, grad_sample_mode="vectorised", **kw)
    torch.manual_seed(1)
    hooks, r_hooks = run(make(), x, y, loss, grad_sample_mode="hooks", **kw)
    assert r_fast["examples"] == r_hooks["examples"]
    for key in hooks:
        torch.testing.assert_close(fast[key], hooks[key], atol=1e-5, rtol=1e-5)


def test_both_implementations_agree_through_empty_draws():
    x, y = data(n=300)
    # q = 1/300: about a third of the 40 draws are empty, many right after a non-empty one
    kw = dict(noise_multiplier=0.0, batch_size=1, steps=40, lr=1.0)
    fast, _ = run(mlp(), x, y, grad_sample_mode="vectorised", **kw)
    hooks, _ = run(mlp(), x, y, grad_sample_mode="hooks", **kw)
    for key in hooks:
        torch.testing.assert_close(fast[key], hooks[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["vectorised", "hooks"])
def test_one_step_moves_at_most_lr_clip_examples_over_batch(mode):
    x, y = data()
    x = x * 100
    model = mlp()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    _, report = run(
        model, x, y, noise_multiplier=0.0, max_grad_norm=0.5, lr=1.0, steps=1, grad_sample_mode=mode
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    bound = 1.0 * 0.5 * report["examples"] / 16
    assert 0 < (after - before).norm().item() <= bound * (1 + 1e-5)


@pytest.mark.parametrize("mode", ["vectorised", "hooks"])
def test_noise_has_std_noise_times_clip_over_batch(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Flatten(1))
    before = model[0].weight.detach().clone()
    x = np.zeros((50, 100), np.float32)
    weights, _ = run(
        model,
        x,
        np.zeros((50, 100), np.float32),
        lambda raw, y: (raw * 0).mean(),
        lr=1.0,
        steps=1,
        batch_size=10,
        noise_multiplier=2.0,
        max_grad_norm=0.5,
        grad_sample_mode=mode,
    )
    std = (weights["0.weight"] - before).std().item()
    assert std == pytest.approx(2.0 * 0.5 / 10, rel=0.05)


def test_poisson_batches_draw_every_step_and_report_the_empty_ones():
    x, y = torch.arange(100.0).unsqueeze(1), torch.arange(100.0)
    empty = []
    batches = PoissonBatches(
        x, y, 0.01, 50, torch.Generator().manual_seed(0), lambda: empty.append(1)
    )
    drawn = list(batches)
    assert len(drawn) + len(empty) == 50 and len(empty) > 10
    assert all(len(xb) == len(yb) > 0 and torch.equal(xb[:, 0], yb) for xb, yb in drawn)


@pytest.mark.parametrize("mode", ["vectorised", "hooks"])
def test_an_empty_draw_is_a_counted_noise_step(mode):
    x, y = data(n=300)
    for seed in range(50):
        model = mlp()
        before = model[0].weight.detach().clone()
        _, report = run(model, x, y, batch_size=1, steps=1, seed=seed, grad_sample_mode=mode)
        if report["examples"] == 0:
            break
    assert report["examples"] == 0 and math.isnan(report["loss"])
    assert report["steps"] == 1 and report["history"] == [(1.0, 1 / 300, 1)]
    assert not torch.equal(model[0].weight, before)


def test_weights_have_no_prefix_and_model_is_left_clean():
    x, y = data()
    for mode in ("vectorised", "hooks"):
        model = mlp()
        weights, _ = run(model, x, y, grad_sample_mode=mode)
        assert list(weights) == list(model.state_dict())
        assert all(
            p.requires_grad and p.grad is None or mode == "hooks" for p in model.parameters()
        )
        assert not any(hasattr(p, "grad_sample") for p in model.parameters())
        assert all(not m._forward_hooks for m in model.modules())


def test_auto_mode_falls_back_to_opacus_for_other_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 1), nn.Flatten(0))
    assert not dp_clip.supports(model) and dp_clip.supports(mlp())
    assert not dp_clip.supports(nn.Sequential(nn.Linear(6, 3), nn.Flatten(0)))
    assert not dp_clip.supports(nn.Sequential(nn.Linear(6, 3), nn.Dropout(), nn.Linear(3, 1)))
    x, y = data()
    _, report = run(model, x, y)
    assert report["steps"] == 15
    with pytest.raises(ValueError, match="vectorised"):
        run(model, x, y, grad_sample_mode="vectorised")


def test_proximal_pull_survives_dp():
    x, y = data()
    pulled, _ = run(mlp(), x, y, proximal_mu=5.0, lr=0.1)
    free, _ = run(mlp(), x, y, lr=0.1)
    start = mlp().state_dict()
    assert (pulled["0.weight"] - start["0.weight"]).norm() < (
        free["0.weight"] - start["0.weight"]
    ).norm()


def test_bad_settings_are_sentences():
    x, y = data()
    with pytest.raises(ValueError, match="privacy.max_grad_norm"):
        run(mlp(), x, y, max_grad_norm=0.0)
    with pytest.raises(ValueError, match="grad_sample_mode"):
        run(mlp(), x, y, grad_sample_mode="ghost")
    with pytest.warns(UserWarning, match="epsilon is infinite"):
        dp_train(
            mlp(),
            x,
            y,
            BCE,
            lr=0.1,
            batch_size=16,
            steps=1,
            noise_multiplier=0.0,
            max_grad_norm=1.0,
            seed=0,
            history=[],
        )


def test_importing_privacy_loads_neither_opacus_nor_flower():
    code = (
        "import sys, medfed.models.privacy, medfed.models.dp_clip; "
        "print('opacus' in sys.modules, any(m.startswith('flwr') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _study(privacy: dict, **train) -> dict:
    return {
        "rounds": 10,
        "privacy": {"accountant": "rdp", "delta": None, **privacy},
        "train": {"batch_size": 32, "local_steps": None, "local_epochs": 1, **train},
    }


def test_planned_noise_is_what_each_node_plans():
    sites = {"a": 100, "b": 400}
    planned = planned_noise(_study({"name": "dpsgd", "target_epsilon": 2.0}), sites)
    delta = default_delta(100)  # 1e-4: below 1/n of the smallest site
    assert planned == {  # 10 rounds x n // 32 steps at rate 32 / n, rounded to 4 decimals
        "a": round(noise_for_target(2.0, delta, 0.32, 30), 4),
        "b": round(noise_for_target(2.0, delta, 0.08, 120), 4),
    }
    assert planned["a"] > planned["b"] > 0  # a smaller site samples more of its rows per step
    fixed = _study({"name": "dpsgd", "target_epsilon": None, "noise_multiplier": 1.3})
    assert planned_noise(fixed, sites) == {"a": 1.3, "b": 1.3}
    assert planned_noise(_study({"name": "none"}), sites) is None
    steps = _study({"name": "dpsgd", "target_epsilon": 2.0, "delta": 1e-3}, local_steps=5)
    assert planned_noise(steps, {"a": 100}) == {
        "a": round(noise_for_target(2.0, 1e-3, 0.32, 50), 4)
    }
