"""The cross-site switches of the node policy, the round-0 declaration, and the guard's check of
the one reply that carries a local-only model (no Flower runtime: hand-built messages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from medfed.client.crosssite import declared, for_scoring
from medfed.client.crosssite_guard import LOCAL, SHARE, shared_reply_problem
from medfed.client.policy import (
    Policy,
    PolicyError,
    check_evaluate_other,
    check_share,
    policy_for_site,
)
from medfed.models.encoding import GlobalStats, merge_statistics, site_statistics
from medfed.models.flat import pack
from medfed.models.ingest.sources import load_site
from medfed.models.pipeline import n_inputs, new_model, study_schema
from medfed.server.simulation.engine import _use_identity

CONF = Path(__file__).resolve().parents[2] / "conf"
BOTH = Policy(share_local_model=True, evaluate_other_models=True)


def test_both_switches_are_off_by_default_here_and_in_the_shipped_policy():
    shipped = yaml.safe_load((CONF / "policy" / "default.yaml").read_text())
    assert shipped["share_local_model"] is False and shipped["evaluate_other_models"] is False
    for policy in (Policy(), policy_for_site(shipped)):
        assert check_share(policy).limit == "share_local_model"
        assert check_evaluate_other(policy, own="a", owner="b").limit == "evaluate_other_models"


def test_each_refusal_is_one_sentence_naming_the_switch():
    assert str(check_share(Policy())) == (
        "share_local_model: this node does not let its local-only model leave it "
        "(share_local_model: false in its policy)"
    )
    assert str(check_evaluate_other(Policy(), own="a", owner="b")) == (
        "evaluate_other_models: this node does not score other hospitals' models "
        "(evaluate_other_models: false in its policy)"
    )


@pytest.mark.parametrize(
    ("policy", "role", "refused"),
    [
        (BOTH, "train", None),
        (Policy(share_local_model=True), "train", None),  # sharing needs no evaluation switch
        (Policy(evaluate_other_models=True), "train", "does not let"),
        (Policy(share_local_model=True, require_dp=True), "train", "without DP-SGD"),
        (BOTH, "evaluate", "evaluation-only"),
    ],
)
def test_share_needs_the_switch_no_require_dp_and_a_trained_model(policy, role, refused):
    refusal = check_share(policy, role=role)
    assert (refusal is None) == (refused is None)
    if refused:
        assert refused in refusal.reason


def test_a_node_never_scores_its_own_model_as_another_hospitals():
    assert check_evaluate_other(BOTH, own="a", owner="b") is None
    assert "this hospital's own (a)" in check_evaluate_other(BOTH, own="a", owner="a").reason


@pytest.mark.parametrize("key", ["share_local_model", "evaluate_other_models"])
def test_a_switch_must_be_true_or_false(key):
    with pytest.raises(PolicyError, match=f"{key} must be true or false, got 'yes'"):
        Policy.from_dict({key: "yes"}, "policy.yaml")


def test_round_0_declares_what_the_node_would_answer():
    def study(policy: dict) -> str:
        return json.dumps({"policy": policy})

    both = {"share_local_model": True, "evaluate_other_models": True}
    assert declared(study({}), "h", "train") == {
        "share-local-model": 0,
        "evaluate-other-models": 0,
    }
    assert declared(study(both), "h", "train") == {
        "share-local-model": 1,
        "evaluate-other-models": 1,
    }
    assert declared(study({**both, "require_dp": True}), "h", "train")["share-local-model"] == 0
    assert declared(study(both), "h", "evaluate")["share-local-model"] == 0
    overrides = study({"hospitals": {"h": both}})  # a simulated hospital's own override
    assert declared(overrides, "h", "train")["share-local-model"] == 1
    assert declared(overrides, "other", "train")["share-local-model"] == 0


def test_shared_statistics_carry_no_count_and_no_small_cell():
    own = GlobalStats(
        target_kind="binary",
        rows=100,
        means={"age": 61.5},
        stds={"age": 9.0},
        rates={"few_ones": 3 / 90, "few_zeros": 87 / 90, "even": 0.5, "five": 5 / 100},
        missing_rates={"few_ones": 0.1, "few_zeros": 0.1},
        class_priors=(0.97, 0.03),
    )
    shared = for_scoring(own, min_cell=5)
    assert dict(shared.rates) == {"few_ones": 0.0, "few_zeros": 1.0, "even": 0.5, "five": 0.05}
    assert shared.rows == 0 and shared.class_priors == () and dict(shared.missing_rates) == {}
    assert dict(shared.means) == {"age": 61.5} and dict(shared.stds) == {"age": 9.0}
    assert dict(for_scoring(own, min_cell=1).rates) == dict(own.rates)  # nothing is small


@pytest.fixture(scope="module")
def shared(small_study):
    """A proper share reply: a local-only model's packed weights and its own statistics."""
    study = small_study("task=diagnosis")
    schema = study_schema(study)
    site = load_site(schema, study["federation"], 0, int(study["seed"]))
    stats = for_scoring(merge_statistics([site_statistics(site.train, schema)]), 5)
    model = new_model(schema, stats, n_inputs(schema, stats, study))
    _use_identity(1, 1)
    request = Message(
        RecordDict({"config": ConfigRecord({"local-steps": 1})}),
        dst_node_id=5,
        message_type=SHARE,
        group_id="cross-site",
    )
    return study, request, pack(model.state_dict()), stats.to_dict()


def _reply(request: Message, records: dict) -> Message:
    _use_identity(1, 5)
    return Message(RecordDict(records), reply_to=request)


def _problem(shared, arrays=None, stats=None, **extra) -> str | None:
    study, request, packed, raw = shared
    records = {
        "arrays": ArrayRecord(arrays if arrays is not None else packed),
        LOCAL: ConfigRecord({"statistics-json": json.dumps(stats if stats is not None else raw)}),
        **extra,
    }
    return shared_reply_problem(_reply(request, records), json.dumps(study))


def test_the_guard_lets_a_local_model_and_its_statistics_go(shared):
    assert _problem(shared) is None


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"extra": {"metrics": MetricRecord({"num-examples": 3})}}, "only the records"),
        ({"stats": {"means": {"age": "63"}}}, "means.age is not a number"),
        ({"stats": {"modes": {"sex": "Mrs Smith"}}}, "not a category of the task schema"),
        ({"stats": {"imputation": "row 12"}}, "imputation is not one of"),
        ({"stats": {"target_kind": "continuous"}}, "target_kind is not the task's"),
        ({"stats": {"notes": "free text"}}, "do not parse"),
        ({"stats": {"rows": 97}}, "may not carry the row count"),
        ({"stats": {"class_priors": [0.6, 0.4]}}, "may not carry the row count"),
        ({"stats": {"missing_rates": {"thal": 0.02}}}, "may not carry the row count"),
        ({"arrays": "shorter"}, "not the layout of the local-only model"),
    ],
)
def test_the_guard_refuses_anything_more(shared, change, phrase):
    _, _, packed, raw = shared
    kwargs = dict(change.get("extra") or {})
    stats = {**raw, **change["stats"]} if "stats" in change else None
    arrays = {k: v[:-1] for k, v in packed.items()} if "arrays" in change else None
    problem = _problem(shared, arrays=arrays, stats=stats, **kwargs)
    assert problem is not None and phrase in problem
