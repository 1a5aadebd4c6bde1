"""Membership inference against the diagnosis model: DP-SGD at epsilon 1 stops the leak.

The loss-threshold attack (:mod:`medfed.models.membership`) runs against three models trained
with one setting that overfits on purpose: a one-hidden-layer MLP of width 256 on ~2,000 rows of
one synthetic diagnosis hospital, Adam at lr 0.02, batch 100, 1,200 steps (60 epochs). The
non-members are ~2,000 other rows of the same hospital with the same label mix
(:func:`balanced_split`). The models:

- non-private (plain SGD loop): the attack must succeed, ``held_out >= 0.1`` in every seed
  (measured 0.24-0.28). ``held_out`` is unbiased, so this is a conservative claim of leakage,
  and 0.1 is five times the estimator's noise level at this size (0.02).
- DP-SGD at epsilon <= 1 (RDP accountant, delta 1e-5, clipping norm 1, noise multiplier 7.11
  planned by ``noise_for_target`` for all 1,200 steps): the attack must fail, mean
  ``optimal <= 0.05`` over seeds (measured 0.025-0.035, mean 0.031; noise alone gives 0.020 on
  average) and ``held_out <= 0.05`` in every seed (measured 0.009-0.027). ``optimal`` is biased
  up, so this is a conservative claim of no leakage.
- the same DP-SGD code with noise 0 (clipping only, epsilon infinite): the attack succeeds again
  (measured 0.27-0.28), so the DP assertion would fail if the noise were turned off; the
  protection comes from the noise, not from the clipping or the sampling.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from medfed.models.encoding import Encoder, encode_target
from medfed.models.ingest.synthetic import SkewConfig, generate_site
from medfed.models.membership import AttackResult, balanced_split, loss_threshold_attack
from medfed.models.nets import build_model
from medfed.models.pipeline import own_statistics
from medfed.models.privacy import default_delta, dp_train, noise_for_target, sample_rate
from medfed.models.schema import load_task
from medfed.models.training import loss_function, make_loader, set_seed, train

SEEDS = (0, 1, 2)
ROWS = 4000  # split into ~2,000 members and ~2,000 non-members
SETTING = {"lr": 0.02, "batch_size": 100, "steps": 1200, "optimizer": "adam"}
CLIP, TARGET_EPSILON = 1.0, 1.0
LEAK, NO_LEAK = 0.1, 0.05

BASE = load_task("diagnosis")
SCHEMA = dataclasses.replace(
    BASE, model=dataclasses.replace(BASE.model, family="mlp", hidden=(256,))
)
LOSS = loss_function(SCHEMA)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: faster for a model this small, and bit-for-bit repeatable."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def hospital(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Members and non-members of one synthetic hospital, encoded with the members' statistics."""
    rows = generate_site(
        SCHEMA, 0, 1, n_rows=ROWS, test_fraction=0.0, skew=SkewConfig(), seed=seed
    ).train
    inside, outside = balanced_split(encode_target(rows, SCHEMA), seed=seed)
    members, nonmembers = rows.iloc[inside], rows.iloc[outside]
    encoder = Encoder(SCHEMA, own_statistics(members, SCHEMA, min_cell=5))
    return (
        (encoder.transform(members), encode_target(members, SCHEMA)),
        (encoder.transform(nonmembers), encode_target(nonmembers, SCHEMA)),
    )


def fresh_model(seed: int, n_inputs: int) -> torch.nn.Module:
    set_seed(seed)
    return build_model(SCHEMA, n_inputs)


def non_private(seed: int, x: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    model = fresh_model(seed, x.shape[1])
    train(
        model,
        make_loader(x, y, batch_size=SETTING["batch_size"], seed=seed),
        LOSS,
        lr=SETTING["lr"],
        steps=SETTING["steps"],
        optimizer=SETTING["optimizer"],
    )
    return model


def private(seed: int, x: np.ndarray, y: np.ndarray, noise: float) -> tuple[torch.nn.Module, float]:
    model = fresh_model(seed, x.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noise 0 warns; the RDP accountant warns on alphas
        _, report = dp_train(
            model,
            x,
            y,
            LOSS,
            lr=SETTING["lr"],
            batch_size=SETTING["batch_size"],
            noise_multiplier=noise,
            max_grad_norm=CLIP,
            seed=seed,
            history=[],
            steps=SETTING["steps"],
            optimizer=SETTING["optimizer"],
            accountant="rdp",
            delta=default_delta(len(y)),
        )
    return model, report["epsilon"]


@pytest.fixture(scope="module")
def attacks() -> dict[str, list[AttackResult]]:
    """The attack against each model of each seed; the DP models' epsilons under ``epsilon``."""
    results: dict[str, list] = {"non-private": [], "dp": [], "clip-only": [], "epsilon": []}
    for seed in SEEDS:
        members, nonmembers = hospital(seed)
        x, y = members
        noise = noise_for_target(
            TARGET_EPSILON,
            default_delta(len(y)),
            sample_rate(len(y), SETTING["batch_size"]),
            SETTING["steps"],
        )
        dp_model, epsilon = private(seed, x, y, noise)
        results["epsilon"].append(epsilon)
        for name, model in (
            ("non-private", non_private(seed, x, y)),
            ("dp", dp_model),
            ("clip-only", private(seed, x, y, 0.0)[0]),
        ):
            results[name].append(loss_threshold_attack(model, LOSS, members, nonmembers, seed=seed))
    return results


def test_the_attack_sees_the_non_private_model_leak(attacks):
    held_out = [r.held_out for r in attacks["non-private"]]
    noise = max(r.noise_level for r in attacks["non-private"])
    assert min(held_out) >= LEAK >= 4 * noise, (held_out, noise)
    assert all(r.n_members == r.n_nonmembers >= 1950 for r in attacks["non-private"])


def test_dp_sgd_at_epsilon_one_brings_the_advantage_under_five_points(attacks):
    assert all(eps <= TARGET_EPSILON for eps in attacks["epsilon"]), attacks["epsilon"]
    optimal = [r.optimal for r in attacks["dp"]]
    held_out = [r.held_out for r in attacks["dp"]]
    assert float(np.mean(optimal)) <= NO_LEAK, optimal
    assert max(held_out) <= NO_LEAK, held_out


def test_without_noise_the_same_dp_sgd_code_leaks_again(attacks):
    held_out = [r.held_out for r in attacks["clip-only"]]
    assert min(held_out) >= LEAK, held_out
