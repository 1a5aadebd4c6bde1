"""The node policy: parsing, per-hospital overrides, and one clear reason per refused round."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medfed.client.policy import (
    Policy,
    PolicyError,
    check_round,
    load_policy,
    policy_for_site,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
STRICT = Policy(
    max_epsilon_total=1.0,
    max_epsilon_per_study=0.8,
    delta=1e-5,
    min_noise_multiplier=0.8,
    max_grad_norm_limit=2.0,
    allowed_tasks=("diagnosis",),
    min_cohort=3,
    require_dp=True,
    require_secure_aggregation=True,
)
GOOD = dict(
    task="diagnosis",
    dp=True,
    noise_multiplier=1.0,
    max_grad_norm=1.0,
    delta=1e-5,
    projected_epsilon_total=0.5,
    projected_epsilon_study=0.4,
    cohort_size=4,
    secure_aggregation=True,
)


def test_a_round_within_every_limit_goes_ahead():
    assert check_round(STRICT, **GOOD) is None


@pytest.mark.parametrize(
    "change,limit,reason",
    [
        ({"task": "pricing"}, "task", "task: 'pricing' is not in allowed_tasks ['diagnosis']"),
        (
            {"dp": False},
            "dp",
            "dp: this node requires DP-SGD (require_dp) but the study runs "
            "without it; use privacy=dpsgd",
        ),
        (
            {"secure_aggregation": False},
            "secure_aggregation",
            "secure aggregation: this node requires it (require_secure_aggregation) but the study "
            "runs without it",
        ),
        ({"cohort_size": 2}, "cohort", "cohort: 2 hospital(s) in this round < min_cohort 3"),
        (
            {"noise_multiplier": 0.5},
            "noise",
            "noise: noise multiplier 0.5 < min_noise_multiplier 0.8",
        ),
        ({"max_grad_norm": 5.0}, "clipping", "clipping: max_grad_norm 5 > max_grad_norm_limit 2.0"),
        ({"delta": 1e-4}, "delta", "delta: the study's delta 0.0001 > the policy's delta 1e-05"),
        (
            {"projected_epsilon_study": 0.93},
            "budget",
            "budget: this round would bring the study's epsilon to 0.93 > "
            "max_epsilon_per_study 0.8",
        ),
        (
            {"projected_epsilon_total": 1.31},
            "budget",
            "budget: this round would bring epsilon to 1.31 > max_epsilon_total 1.0",
        ),
    ],
)
def test_each_limit_refuses_with_one_reason(change, limit, reason):
    refusal = check_round(STRICT, **{**GOOD, **change})
    assert refusal is not None and refusal.limit == limit and str(refusal) == reason


def test_the_default_delta_rule_is_below_one_over_n():
    policy = Policy()
    args = {**GOOD, "delta": 1e-2}
    assert check_round(policy, **args, n_examples=50) is None
    refusal = check_round(policy, **args, n_examples=120)
    assert refusal.limit == "delta" and "not below 1/n = 0.00833" in refusal.reason


def test_without_dp_only_governance_applies():
    policy = Policy(max_epsilon_total=1.0, min_noise_multiplier=1.0, min_cohort=2)
    assert check_round(policy, task="pricing", dp=False, cohort_size=2) is None
    assert check_round(policy, task="pricing", dp=False, cohort_size=1).limit == "cohort"


def test_budget_limits_need_projections():
    with pytest.raises(ValueError, match="projected epsilon to apply max_epsilon_per_study"):
        check_round(STRICT, **{**GOOD, "projected_epsilon_study": None})
    with pytest.raises(ValueError, match="noise_multiplier"):
        check_round(Policy(), task="t", dp=True)


def test_unknown_keys_and_bad_values_are_errors_naming_the_file():
    with pytest.raises(PolicyError, match=r"node\.yaml: unknown policy key\(s\) \['max_eps'\]"):
        Policy.from_dict({"max_eps": 1.0}, "node.yaml")
    for raw, match in [
        ({"max_epsilon_total": -1}, "max_epsilon_total must be a number > 0"),
        ({"delta": 1.0}, "delta must lie strictly between 0 and 1"),
        ({"require_dp": "yes"}, "require_dp must be true or false"),
        ({"min_cohort": 0}, "min_cohort must be an integer >= 1"),
        ({"allowed_tasks": "diagnosis"}, "allowed_tasks must be a list"),
    ]:
        with pytest.raises(PolicyError, match=match):
            Policy.from_dict(raw, "node.yaml")


def test_policy_files_and_per_hospital_overrides(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "max_epsilon_total": 2.0,
                "allowed_tasks": ["diagnosis"],
                "hospitals": {"hospital-1": {"max_epsilon_total": 0.5}},
            }
        )
    )
    assert load_policy(path).max_epsilon_total == 2.0
    site = load_policy(path, "hospital-1")
    assert site.max_epsilon_total == 0.5 and site.allowed_tasks == ("diagnosis",)
    with pytest.raises(PolicyError, match=r"hospitals\.hospital-2: unknown policy key"):
        policy_for_site({"hospitals": {"hospital-2": {"typo": 1}}})
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_policy(empty) == Policy()
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "missing.yaml")


def test_shipped_config_groups_parse():
    default = load_policy(CONF / "policy" / "default.yaml")
    assert default.max_epsilon_total == 10.0 and not default.require_dp
    assert check_round(default, **{**GOOD, "cohort_size": 2}, n_examples=120) is None
    none, dpsgd = (
        yaml.safe_load((CONF / "privacy" / f"{n}.yaml").read_text()) for n in ("none", "dpsgd")
    )
    keys = {
        "name",
        "noise_multiplier",
        "target_epsilon",
        "max_grad_norm",
        "max_step_noise",
        "delta",
        "accountant",
        "secure_rng",
        "ledger_dir",
    }
    assert set(none) == set(dpsgd) == keys
    assert dpsgd["name"] == "dpsgd" and dpsgd["accountant"] in ("rdp", "prv")


def _compose(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return OmegaConf.to_container(compose("config", overrides=overrides))
    finally:
        GlobalHydra.instance().clear()


def test_groups_compose_with_the_study_config():
    wanted = [
        "privacy=dpsgd",
        "policy=default",
        "privacy.target_epsilon=1.0",
        "policy.hospitals={hospital-1: {max_epsilon_total: 0.5}}",
    ]
    study = _compose(wanted)
    assert study["privacy"]["name"] == "dpsgd" and study["privacy"]["target_epsilon"] == 1.0
    assert policy_for_site(study["policy"], "hospital-1").max_epsilon_total == 0.5
    assert policy_for_site(study["policy"], "hospital-0").max_epsilon_total == 10.0
