"""Client-level (central) DP: Flower's wrappers clip, average with equal weights and add noise
of the right size; epsilon is the RDP value of the Gaussian mechanism, recomputed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from medfed.strategies.central_dp import (
    CentralDPConfigError,
    ClientSideCentralDP,
    ServerSideCentralDP,
    check_central,
    epsilon_after,
    fedavg_family,
    plan_noise,
    wrap_central_dp,
)
from medfed.strategies.registry import build_strategy

NODES = [11, 12, 13, 14]


class Nodes:
    """The part of a Grid that FedAvg.configure_train uses: the connected node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


def _wrapper(
    noise: float,
    clip: float,
    *,
    n: int = 2,
    clipping: str = "server",
    seed: int = 0,
    secure_rng: bool = False,
) -> ServerSideCentralDP | ClientSideCentralDP:
    inner = build_strategy({"name": "fedavg", "min_nodes": 2}, n)
    cls = ClientSideCentralDP if clipping == "client" else ServerSideCentralDP
    return cls(
        inner, noise, clip, n, delta=1e-5, population=len(NODES), seed=seed, secure_rng=secure_rng
    )


def _round(
    task_identity,
    strategy,
    server_round: int,
    global_w: np.ndarray,
    updates: list[np.ndarray | None],
    examples: list[int],
) -> ArrayRecord | None:
    """Configure a round, answer each message with ``global_w + update`` (None: an error reply),
    aggregate, and return the new global weights."""
    task_identity.node_id = 0
    messages = list(
        strategy.configure_train(
            server_round, ArrayRecord([global_w]), ConfigRecord(), Nodes(NODES[: len(updates)])
        )
    )
    replies = []
    for message, update, count in zip(messages, updates, examples, strict=True):
        task_identity.node_id = message.metadata.dst_node_id
        if update is None:
            replies.append(Message(Error(code=0, reason="refused"), reply_to=message))
        else:
            replies.append(
                Message(
                    RecordDict(
                        {
                            "arrays": ArrayRecord([(global_w + update).astype(np.float32)]),
                            "metrics": MetricRecord({"num-examples": count}),
                        }
                    ),
                    reply_to=message,
                )
            )
    task_identity.node_id = 0
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return arrays


def _vector(arrays: ArrayRecord) -> np.ndarray:
    return arrays.to_numpy_ndarrays()[0].astype(np.float64)


def test_an_update_of_norm_10_is_clipped_to_norm_c_and_hospitals_weigh_the_same(task_identity):
    w = np.array([1.0, -1.0, 0.5, 2.0], np.float32)
    big = np.array([6.0, 8.0, 0.0, 0.0], np.float32)  # norm 10 -> clipped to norm 2
    small = np.array([0.0, 0.0, 0.1, 0.0], np.float32)  # norm 0.1 < 2: unchanged
    strategy = _wrapper(0.0, 2.0)

    new = _round(task_identity, strategy, 1, w, [big, small], examples=[1, 99])

    clipped = big * 2.0 / 10.0
    assert np.linalg.norm(clipped) == pytest.approx(2.0)
    # the unweighted mean of the clipped updates (not 1/100 and 99/100: weights are equal)
    np.testing.assert_allclose(_vector(new), w + (clipped + small) / 2, rtol=0, atol=1e-6)
    assert strategy.rounds == [{"round": 1, "released": True, "hospitals": 2, "epsilon": math.inf}]


def test_client_side_wrapper_sends_the_clipping_norm_and_does_not_clip_itself(task_identity):
    strategy = _wrapper(0.0, 2.0, clipping="client")
    task_identity.node_id = 0
    messages = list(
        strategy.configure_train(
            1, ArrayRecord([np.zeros(2, np.float32)]), ConfigRecord(), Nodes(NODES[:2])
        )
    )
    assert all(m.content.config_records["config"]["clipping_norm"] == 2.0 for m in messages)

    w = np.zeros(2, np.float32)
    strategy = _wrapper(0.0, 2.0, clipping="client")
    new = _round(
        task_identity,
        strategy,
        1,
        w,
        [np.array([6.0, 8.0], np.float32), np.array([0.0, 2.0], np.float32)],
        [5, 5],
    )
    np.testing.assert_allclose(_vector(new), [3.0, 5.0], atol=1e-6)  # the node clips, not it


def _cancelling(size: int) -> list[np.ndarray]:
    """Four updates below the clipping norm whose mean is exactly zero (Flower's clipping divides
    by the update's norm, so an all-zero update cannot be used)."""
    ups = [np.zeros(size, np.float32) for _ in range(4)]
    ups[0][0], ups[1][0], ups[2][1], ups[3][1] = 0.125, -0.125, 0.25, -0.25
    return ups


def test_the_noise_has_std_sigma_c_over_m(task_identity):
    sigma, clip, m, size = 2.0, 1.5, 4, 60_000
    w = np.zeros(size, np.float32)

    noise = _vector(
        _round(
            task_identity,
            _wrapper(sigma, clip, n=m, seed=7),
            1,
            w,
            _cancelling(size),
            [10, 20, 30, 40],
        )
    )

    # the sample std of 60000 normal draws has a standard error of std / sqrt(2 * 60000) = 0.29%
    assert noise.std() == pytest.approx(sigma * clip / m, rel=0.015)
    assert abs(noise.mean()) < 4 * sigma * clip / m / math.sqrt(size)
    again = _vector(
        _round(
            task_identity, _wrapper(sigma, clip, n=m, seed=7), 1, w, _cancelling(size), [1, 1, 1, 1]
        )
    )
    np.testing.assert_array_equal(noise, again)  # the study's seed reaches the noise
    drawn = _vector(
        _round(
            task_identity,
            _wrapper(sigma, clip, n=m, seed=7, secure_rng=True),
            1,
            w,
            _cancelling(size),
            [1, 1, 1, 1],
        )
    )
    assert not np.array_equal(noise, drawn)  # secure_rng: drawn from the OS, not the seed


def _independent_epsilon(sigma: float, rounds: int, delta: float, orders: list[float]) -> float:
    """Opacus' RDP analysis (q = 1: the plain Gaussian mechanism), not Flower's call path."""
    rdp = compute_rdp(q=1.0, noise_multiplier=sigma, steps=rounds, orders=orders)
    np.testing.assert_allclose(rdp, [rounds * a / (2 * sigma**2) for a in orders])  # by hand
    return float(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


def test_epsilon_after_each_round_is_the_rdp_epsilon_of_the_gaussian_mechanism(task_identity):
    sigma, rounds = 1.3, 5
    strategy = _wrapper(sigma, 1.0)
    w = np.zeros(3, np.float32)
    for server_round in range(1, rounds + 1):
        _round(task_identity, strategy, server_round, w, [np.ones(3, np.float32)] * 2, [1, 2])

    orders = strategy.accountant.state_dict()["orders"]
    expected = [_independent_epsilon(sigma, r, 1e-5, orders) for r in range(1, rounds + 1)]
    assert [r["epsilon"] for r in strategy.rounds] == pytest.approx(expected, rel=1e-9)
    assert strategy.epsilon == pytest.approx(expected[-1], rel=1e-9)


def test_golden_epsilon_of_the_default_study():
    # noise 1, 15 rounds, delta 1e-5: the summary of `medfed simulate privacy=central`
    assert epsilon_after(1.0, 15, 1e-5, 4) == pytest.approx(24.830920950267977, rel=1e-9)


def test_a_round_with_an_error_reply_is_not_released_and_costs_nothing(task_identity):
    strategy = _wrapper(1.0, 1.0)
    w = np.zeros(2, np.float32)
    _round(task_identity, strategy, 1, w, [np.ones(2, np.float32)] * 2, [1, 1])
    spent = strategy.epsilon

    new = _round(task_identity, strategy, 2, w, [np.ones(2, np.float32), None], [1, 1])

    assert new is None
    assert strategy.epsilon == spent
    assert strategy.rounds[-1]["released"] is False
    assert "1 of the 2 sampled hospitals" in strategy.rounds[-1]["reason"]


def test_fewer_hospitals_online_than_the_cohort_scales_the_noise_to_them(task_identity):
    strategy = _wrapper(1.0, 1.0, n=4)  # the study expects 4, only 3 are sampled
    new = _round(
        task_identity, strategy, 1, np.zeros(2, np.float32), [np.ones(2, np.float32)] * 3, [1, 1, 1]
    )
    assert new is not None
    assert strategy.num_sampled_clients == 3
    assert strategy.rounds[-1]["hospitals"] == 3


def test_state_dict_continues_the_accountant_and_the_noise(task_identity):
    w = np.zeros(50, np.float32)
    zeros = [np.ones(50, np.float32)] * 2
    first = _wrapper(1.0, 1.0, seed=3)
    _round(task_identity, first, 1, w, zeros, [1, 1])
    state = first.state_dict()
    resumed = _wrapper(1.0, 1.0, seed=3)
    resumed.load_state_dict(state)
    assert resumed.epsilon == first.epsilon and resumed.rounds == first.rounds

    np.testing.assert_array_equal(
        _vector(_round(task_identity, first, 2, w, zeros, [1, 1])),
        _vector(_round(task_identity, resumed, 2, w, zeros, [1, 1])),
    )
    assert resumed.epsilon == first.epsilon == pytest.approx(epsilon_after(1.0, 2, 1e-5, 4))


def test_planned_noise_spends_the_target_over_the_study():
    noise = plan_noise(2.0, 1e-5, 20, 4)
    assert epsilon_after(noise, 20, 1e-5, 4) <= 2.0
    assert epsilon_after(noise * 0.999, 20, 1e-5, 4) > 2.0


def _study(**privacy) -> dict:
    return {
        "privacy": {
            "name": "central",
            "noise_multiplier": 1.0,
            "target_epsilon": None,
            "clipping_norm": 1.0,
            "clipping": "server",
            "delta": 1e-5,
            "secure_rng": False,
            **privacy,
        },
        "strategy": {"name": "fedavg", "fraction_train": 1.0, "min_nodes": 2},
        "secure_aggregation": False,
        "rounds": 3,
        "seed": 0,
    }


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"noise_multiplier": -1}, "privacy.noise_multiplier must be a number >= 0"),
        ({"clipping": "other"}, "privacy.clipping must be server or client"),
        ({"clipping_norm": 0}, "privacy.clipping_norm must be a number > 0"),
        ({"delta": 0.3}, "privacy.delta=0.3 must be below 1/hospitals = 0.25"),
        ({"target_epsilon": -2}, "privacy.target_epsilon must be a number > 0"),
        ({"secure_rng": "yes"}, "privacy.secure_rng must be true or false"),
    ],
)
def test_bad_settings_are_one_sentence(change, words):
    with pytest.raises(CentralDPConfigError) as info:
        check_central(_study(**change), 4)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_strategies_that_change_the_sensitivity_and_secure_aggregation_are_refused():
    assert fedavg_family() == ["fedavg", "fedprox"]
    study = _study()
    study["strategy"]["name"] = "fedyogi"
    with pytest.raises(CentralDPConfigError, match="strategy=fedyogi"):
        check_central(study, 4)
    with pytest.raises(CentralDPConfigError, match="secure_aggregation"):
        check_central({**_study(), "secure_aggregation": True}, 4)


def test_wrap_builds_the_chosen_wrapper_with_the_study_cohort():
    inner = build_strategy({"name": "fedavg", "fraction_train": 0.5, "min_nodes": 2}, 6)
    assert wrap_central_dp(inner, {**_study(), "privacy": {"name": "none"}}, 6) is inner
    study = _study(clipping="client")
    study["strategy"]["fraction_train"] = 0.5
    client = wrap_central_dp(inner, study, 6)
    planned = wrap_central_dp(inner, _study(target_epsilon=3.0), 6)

    assert isinstance(client, ClientSideCentralDP) and client.num_sampled_clients == 3
    assert isinstance(planned, ServerSideCentralDP)
    assert planned.noise_multiplier == pytest.approx(plan_noise(3.0, 1e-5, 3, 6))
    with pytest.warns(RuntimeWarning, match="epsilon is infinite"):
        assert wrap_central_dp(inner, _study(noise_multiplier=0), 6).accountant is None
