"""One check per setting (medfed.models.settings), hand-picked good and bad values."""

from __future__ import annotations

import pytest

from medfed.models import settings

DPSGD = {
    "name": "dpsgd",
    "noise_multiplier": 1.0,
    "target_epsilon": None,
    "max_grad_norm": 1.0,
    "delta": None,
    "accountant": "rdp",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_grad_norm": 0}, "privacy.max_grad_norm must be a number > 0, got 0"),
        ({"max_grad_norm": -1.5}, "privacy.max_grad_norm must be a number > 0, got -1.5"),
        ({"delta": 1.0}, "privacy.delta must lie strictly between 0 and 1, got 1.0"),
        ({"delta": 0}, "privacy.delta must lie strictly between 0 and 1, got 0"),
        ({"target_epsilon": 0}, "privacy.target_epsilon must be a number > 0, got 0"),
        ({"target_epsilon": -2.0}, "privacy.target_epsilon must be a number > 0, got -2.0"),
        ({"noise_multiplier": -1}, "privacy.noise_multiplier must be a number >= 0, got -1"),
        ({"accountant": "gdp"}, "privacy.accountant must be rdp or prv, got 'gdp'"),
    ],
)
def test_impossible_dp_settings_are_named(change: dict, message: str) -> None:
    assert settings.privacy_errors({**DPSGD, **change}) == message


def test_possible_dp_settings_and_no_dp_pass() -> None:
    assert settings.privacy_errors(DPSGD) is None
    assert (
        settings.privacy_errors(
            {**DPSGD, "target_epsilon": 3.0, "noise_multiplier": None, "delta": 1e-5}
        )
        is None
    )
    assert settings.privacy_errors({"name": "none", "max_grad_norm": None}) is None
    central = {"name": "central", "clipping_norm": 0.0, "noise_multiplier": 1.0, "delta": 1e-5}
    assert settings.privacy_errors(central) == "privacy.clipping_norm must be a number > 0, got 0.0"


def test_a_target_above_a_policy_cap_names_the_cap() -> None:
    policy = {
        "max_epsilon_total": 10.0,
        "max_epsilon_per_study": 4.0,
        "hospitals": {"site-b": {"max_epsilon_total": 2.0}},
    }
    target = {**DPSGD, "target_epsilon": 3.0}

    assert settings.policy_errors(policy, target, 3) == (
        "privacy.target_epsilon=3 is above the node policy's cap "
        "policy.hospitals.site-b.max_epsilon_total=2: every round would be refused; lower the "
        "target"
    )
    assert settings.policy_errors({"max_epsilon_per_study": 4.0}, target, 3) is None
    assert settings.policy_errors({"max_grad_norm_limit": 0.5}, DPSGD, 3) == (
        "privacy.max_grad_norm=1 is above the node policy's cap policy.max_grad_norm_limit=0.5"
    )


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"max_epsilon_total": -3}, "policy: max_epsilon_total must be a number > 0, got -3"),
        (
            {"min_cohort": 5},
            "policy.min_cohort=5 but the federation has 4 hospital(s): every round "
            "would be refused",
        ),
        ({"delta": 2}, "policy: delta must lie strictly between 0 and 1, got 2"),
    ],
)
def test_policies_that_cannot_work(policy: dict, message: str) -> None:
    assert settings.policy_errors(policy, {"name": "none"}, 4) == message


def test_robust_strategies_need_enough_hospitals() -> None:
    krum = {"name": "krum", "num_malicious_nodes": 1}
    assert settings.robust_strategy_errors(krum, 5) is None  # 5 >= 2 x 1 + 3
    assert settings.robust_strategy_errors(krum, 4) == (
        "strategy.num_malicious_nodes=1 is too many for 4 hospitals: Krum needs hospitals >= "
        "2 x num_malicious_nodes + 3 (here at most 0)"
    )
    assert "must be in [0, 0.5)" in settings.robust_strategy_errors(
        {"name": "trimmedmean", "beta": 0.5}, 10
    )
    assert settings.robust_strategy_errors({"name": "trimmedmean", "beta": 0.49}, 10) is None


def test_lists_duplicates_and_cards(tmp_path) -> None:
    assert settings.list_errors({"federation": {"cards": "a.yaml"}}) == (
        "federation.cards must be a list, got 'a.yaml'; write it in brackets: "
        "federation.cards=[a.yaml]"
    )
    assert settings.list_errors({"federation": {"cards": ["a.yaml"]}, "attack": {}}) is None
    assert settings.duplicates("site name", ["a", "b", "a"]) == (
        "site name a is listed twice; each hospital may take part once"
    )
    card = tmp_path / "a.yaml"
    assert str(card) in settings.card_duplicates([str(card), f"{tmp_path}/./a.yaml"])
