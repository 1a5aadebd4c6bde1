"""Training loop, losses, loaders, evaluation and weight transfer."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from medfed.models.encoding import GlobalStats
from medfed.models.metrics import metric_statistics
from medfed.models.nets import build_model, predict_output
from medfed.models.schema import task_from_dict
from medfed.models.training import (
    evaluate,
    get_weights,
    loss_function,
    make_loader,
    set_seed,
    set_weights,
    train,
)

FEATURES = [{"name": "x", "type": "numeric"}]


def task(target: dict, model: dict):
    return task_from_dict({"name": "t", "features": FEATURES, "target": target, "model": model})


BINARY = task({"name": "y", "type": "binary"}, {"family": "logreg"})
MULTI = task({"name": "y", "type": "multiclass", "classes": ["a", "b", "c"]}, {"family": "logreg"})
MSE_LOG = task({"name": "y", "type": "continuous"}, {"family": "glm", "loss": "mse_log"})
TWEEDIE = task({"name": "y", "type": "continuous"}, {"family": "glm", "loss": "tweedie"})
COST_STATS = GlobalStats(target_kind="continuous", rows=2, target_mean=200.0)


def separable(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.float32)


def test_tweedie_loss_is_zero_at_the_truth_and_scale_free():
    y = torch.tensor([100.0, 400.0])
    scaled, plain = loss_function(TWEEDIE, COST_STATS), loss_function(TWEEDIE)
    assert scaled(torch.log(y), y).item() == pytest.approx(0.0, abs=1e-6)
    # the scaled loss of (y, mean 2y) is the plain deviance of (y/200, 2y/200), an O(1) number
    expected = plain(torch.log(2 * y / 200.0), y / 200.0).item()
    assert scaled(torch.log(2 * y), y).item() == pytest.approx(expected)
    assert 0.1 < expected < 10


@pytest.mark.parametrize(
    "schema,y,raw",
    [
        (BINARY, [1.0, 0.0, 1.0], [0.3, -2.0, 4.0]),
        (MULTI, [2, 0, 1], [[0.1, 0.2, 3.0], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]),
        (MSE_LOG, [0.0, 120.0, 5000.0], [0.5, 4.0, 8.0]),
        (TWEEDIE, [0.0, 120.0, 5000.0], [0.5, 4.0, 8.0]),
    ],
)
def test_training_loss_matches_the_reported_loss(schema, y, raw):
    y_t = torch.tensor(y, dtype=torch.int64 if schema is MULTI else torch.float32)
    raw_t = torch.tensor(raw)
    loss = loss_function(schema, COST_STATS)(raw_t, y_t).item()
    stats = metric_statistics(schema, y, predict_output(schema, raw_t), loss_scale=200.0)
    assert stats["loss_sum"] / 3 == pytest.approx(loss, rel=1e-5)


def test_loader_order_depends_on_the_seed_only():
    X, y = np.arange(10, dtype=np.float32)[:, None], np.arange(10, dtype=np.float32)

    def order(seed: int) -> list[float]:
        return [v for _, yb in make_loader(X, y, batch_size=4, seed=seed) for v in yb.tolist()]

    assert order(1) == order(1) != order(2)
    assert sorted(order(1)) == list(range(10))
    assert [len(yb) for _, yb in make_loader(X, y, batch_size=4, seed=0)] == [4, 4, 2]


def test_steps_and_epochs_are_counted_exactly():
    X, y = separable(10)
    model = build_model(BINARY, 2)
    loader = make_loader(X, y, batch_size=4, seed=0)
    result = train(model, loader, loss_function(BINARY), lr=0.1, steps=7)
    assert (result["steps"], result["examples"]) == (7, 10 + 10 + 4)  # batches of 4, 4, 2
    result = train(model, loader, loss_function(BINARY), lr=0.1, epochs=2)
    assert (result["steps"], result["examples"]) == (6, 20)
    with pytest.raises(ValueError, match="exactly one of steps or epochs"):
        train(model, loader, loss_function(BINARY), lr=0.1)
    with pytest.raises(ValueError, match="positive integer"):
        train(model, loader, loss_function(BINARY), lr=0.1, steps=0)


def test_empty_batches_are_skipped_and_not_counted():
    X, y = (torch.from_numpy(a) for a in separable(4))
    loader = [(X[:0], y[:0]), (X, y), (X[:0], y[:0])]
    result = train(build_model(BINARY, 2), loader, loss_function(BINARY), lr=0.1, steps=3)
    assert (result["steps"], result["examples"]) == (3, 12)


def test_logistic_regression_separates_a_toy_set():
    set_seed(0)
    X, y = separable()
    model = build_model(BINARY, 2)
    result = train(
        model, make_loader(X, y, batch_size=32, seed=0), loss_function(BINARY), lr=0.5, steps=100
    )
    metrics, stats = evaluate(model, X, y, BINARY)
    assert metrics["accuracy"] >= 0.97 and metrics["auroc"] >= 0.99
    assert result["loss"] < 0.5 and stats["n"] == 200


def test_same_seed_gives_identical_weights():
    def run(seed: int) -> list[np.ndarray]:
        set_seed(seed)
        model = build_model(
            task({"name": "y", "type": "binary"}, {"family": "mlp", "hidden": [8]}), 2
        )
        X, y = separable(64)
        train(
            model,
            make_loader(X, y, batch_size=8, seed=seed),
            loss_function(BINARY),
            lr=0.1,
            epochs=2,
            optimizer="adam",
        )
        return get_weights(model)

    a, b, c = run(5), run(5), run(6)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))


def test_proximal_term_equals_adding_it_to_the_loss_for_sgd():
    """Six steps over a 4-batch loader (cycling it), replayed with the term in the loss."""
    X, y = separable(32)
    set_seed(1)
    ours, reference = build_model(BINARY, 2), build_model(BINARY, 2)
    set_weights(reference, get_weights(ours))
    start = [p.detach().clone() for p in reference.parameters()]
    mu, lr = 0.5, 0.2
    train(
        ours,
        make_loader(X, y, batch_size=8, seed=0),
        loss_function(BINARY),
        lr=lr,
        steps=6,
        proximal_mu=mu,
    )
    opt = torch.optim.SGD(reference.parameters(), lr=lr)
    loader = make_loader(X, y, batch_size=8, seed=0)
    for xb, yb in itertools.islice(itertools.chain(loader, loader), 6):
        opt.zero_grad()
        pull = sum(((p - s) ** 2).sum() for p, s in zip(reference.parameters(), start, strict=True))
        loss = nn.functional.binary_cross_entropy_with_logits(reference(xb), yb) + mu / 2 * pull
        loss.backward()
        opt.step()
    for a, b in zip(get_weights(ours), get_weights(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_proximal_term_pulls_towards_the_start():
    X, y = separable(64)

    def distance(mu: float) -> float:
        set_seed(2)
        model = build_model(BINARY, 2)
        start = get_weights(model)
        train(
            model,
            make_loader(X, y, batch_size=16, seed=0),
            loss_function(BINARY),
            lr=0.5,
            steps=40,
            proximal_mu=mu,
        )
        return math.sqrt(
            sum(((w - s) ** 2).sum() for w, s in zip(get_weights(model), start, strict=True))
        )

    assert distance(1.0) < 0.6 * distance(0.0)


def test_evaluate_restores_the_mode_and_reports_continuous_metrics():
    model = build_model(TWEEDIE, 1, target_offset=math.log(200.0))
    model.train()
    X, y = np.zeros((3, 1), np.float32), np.array([100.0, 200.0, 300.0], np.float32)
    metrics, stats = evaluate(model, X, y, TWEEDIE, stats=COST_STATS, batch_size=2)
    assert model.training
    assert metrics["calibration"] == pytest.approx(1.0, rel=1e-5)
    assert stats["sum_pred"] == pytest.approx(600.0, rel=1e-5)


def test_weights_round_trip_and_cross_the_opacus_prefix():
    from opacus import GradSampleModule

    set_seed(0)
    plain = build_model(MULTI, 3)
    wrapped = GradSampleModule(build_model(MULTI, 3))
    assert next(iter(wrapped.state_dict())).startswith("_module.")
    set_weights(wrapped, get_weights(plain))
    assert all(
        np.array_equal(a, b) for a, b in zip(get_weights(wrapped), get_weights(plain), strict=True)
    )
    weights = get_weights(plain)
    weights[0] += 1.0
    assert not np.array_equal(weights[0], get_weights(plain)[0])  # copies, not views
    with pytest.raises(ValueError, match="2 tensors"):
        set_weights(plain, weights[:1])
    with pytest.raises(ValueError, match="shape"):
        set_weights(plain, [weights[0][:, :2], weights[1]])


@pytest.mark.filterwarnings(
    "ignore:Full backward hook", "ignore:Secure RNG", "ignore:Optimal order"
)
def test_opacus_private_training_counts_steps_and_keeps_the_proximal_pull():
    from opacus import PrivacyEngine

    X, y = separable(64)

    def run(mu: float) -> tuple[dict, list[np.ndarray], list]:
        set_seed(3)
        model = build_model(BINARY, 2)
        engine = PrivacyEngine()
        private, opt, loader = engine.make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
            data_loader=make_loader(X, y, batch_size=16, seed=0),
            noise_multiplier=0.0,
            max_grad_norm=1.0,
            poisson_sampling=True,
        )
        result = train(
            private,
            loader,
            loss_function(BINARY),
            lr=0.5,
            steps=9,
            optimizer_obj=opt,
            proximal_mu=mu,
        )
        return result, get_weights(private), engine.accountant.history

    free, free_w, history = run(0.0)
    pulled, pulled_w, _ = run(1.0)
    assert free["steps"] == 9 and history == [(0.0, 0.25, 9)]
    start = get_weights((set_seed(3), build_model(BINARY, 2))[1])

    def moved(w):
        return sum(float(((a - s) ** 2).sum()) for a, s in zip(w, start, strict=True))

    assert moved(pulled_w) < moved(free_w)
