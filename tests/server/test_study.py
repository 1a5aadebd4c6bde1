"""The study loop on the in-process engine: rounds, metrics from summed statistics, determinism,
strategies, and a hospital that fails."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from medfed.client.app import app as medfed_client
from medfed.models.metrics import metrics_from_statistics, sum_statistics
from medfed.server.simulation.engine import FIRST_NODE_ID
from medfed.server.study.config import config_dir
from medfed.server.study.loop import GLOBAL, StudyError

ROUNDS = 3


class Spy:
    """Wraps medfed's ClientApp and keeps what each hospital was sent and what it replied."""

    def __init__(self) -> None:
        self.evaluations: dict[int, dict[str, dict]] = defaultdict(dict)
        self.train_configs: list[dict] = []

    def __call__(self, message, context):
        reply = medfed_client(message, context)
        kind = message.metadata.message_type
        if kind not in ("train", "evaluate"):
            return reply
        config = dict(message.content.config_records["config"])
        if kind == "train":
            self.train_configs.append(config)
        metrics = next(iter(reply.content.metric_records.values()))
        evaluation = {k[5:]: v for k, v in metrics.items() if k.startswith("eval-")}
        if evaluation:
            # a train reply scores the model it received: the global model of the round before
            model_round = int(config["server-round"]) - (kind == "train")
            index = int(context.node_config["partition-id"])
            self.evaluations[model_round][f"hospital-{index}"] = evaluation
        return reply


@pytest.fixture(scope="module")
def spied(small_study, run_inprocess):
    spy = Spy()
    study = small_study(f"rounds={ROUNDS}")
    return study, run_inprocess(study, spy), spy


@pytest.fixture(scope="module")
def base(spied):
    return spied[1]


def test_rounds_are_recorded_from_zero_to_r(base):
    assert [r.server_round for r in base.rounds] == list(range(ROUNDS + 1))
    assert base.final is base.rounds[-1]


def test_hospitals_are_known_after_round_zero(base):
    names = [h["name"] for h in base.hospitals.values()]
    assert names == ["hospital-0", "hospital-1", "hospital-2"]
    assert set(base.hospitals) == {FIRST_NODE_ID, FIRST_NODE_ID + 1, FIRST_NODE_ID + 2}
    for h in base.hospitals.values():
        assert h["n_train"] > 0 and h["n_test"] > 0
        assert 60 <= h["n_train"] + h["n_test"] <= 120


def test_every_round_has_metrics_for_every_hospital(base):
    for record in base.rounds:
        assert set(record.hospital_metrics) == {"hospital-0", "hospital-1", "hospital-2"}
        for metrics in record.hospital_metrics.values():
            assert set(metrics) >= {"accuracy", "auroc", "sensitivity", "specificity", "loss"}
            assert 0.0 <= metrics["accuracy"] <= 1.0
        assert set(record.global_metrics) >= {"accuracy", "auroc", "loss"}
        assert not record.failures


def test_every_training_round_trained_every_hospital(base):
    assert base.rounds[0].train == {}
    for record in base.rounds[1:]:
        assert set(record.train) == {"hospital-0", "hospital-1", "hospital-2"}
        for train in record.train.values():
            assert train["steps"] >= 1
            assert math.isfinite(train["loss"]) and train["loss"] > 0
        assert record.seconds > 0
        assert record.wire_bytes and record.wire_bytes > 0


def test_global_metrics_come_from_the_summed_statistics(spied):
    study, result, spy = spied
    assert sorted(spy.evaluations) == list(range(ROUNDS + 1))
    for record in result.rounds:
        per_site = spy.evaluations[record.server_round]
        assert set(per_site) == set(record.hospital_metrics)
        expected = metrics_from_statistics(result.schema, sum_statistics(per_site.values()))
        assert record.global_metrics == pytest.approx(expected, nan_ok=True)
        for name, stats in per_site.items():
            assert record.hospital_metrics[name] == pytest.approx(
                metrics_from_statistics(result.schema, stats), nan_ok=True
            )


def test_global_accuracy_is_the_test_row_weighted_accuracy(base):
    sizes = {h["name"]: h["n_test"] for h in base.hospitals.values()}
    for record in base.rounds:
        weighted = sum(record.hospital_metrics[n]["accuracy"] * sizes[n] for n in sizes)
        assert record.global_metrics["accuracy"] == pytest.approx(weighted / sum(sizes.values()))


def test_total_train_steps_is_the_sum_of_the_rounds(base):
    per_round = [sum(int(t["steps"]) for t in r.train.values()) for r in base.rounds]
    assert base.total_train_steps == sum(per_round) > 0
    # one local epoch per round at batch size 32: ceil(n_train / 32) steps per hospital
    epoch = sum(math.ceil(h["n_train"] / 32) for h in base.hospitals.values())
    assert per_round[1:] == [epoch] * ROUNDS


def test_the_final_state_is_the_model_of_the_task(base):
    from medfed.models.pipeline import n_inputs, new_model

    model = new_model(
        base.schema, base.statistics, n_inputs(base.schema, base.statistics, base.study)
    )
    model.load_state_dict(base.final_state)
    assert all(torch.isfinite(t).all() for t in base.final_state.values())


def test_the_hospitals_receive_the_round_config(spied):
    _, _, spy = spied
    rounds = sorted(int(c["server-round"]) for c in spy.train_configs)
    assert rounds == sorted(list(range(1, ROUNDS + 1)) * 3)


def test_same_seed_gives_identical_weights(small_study, run_inprocess, base):
    again = run_inprocess(small_study(f"rounds={ROUNDS}"))
    assert base.final_state.keys() == again.final_state.keys()
    for key, value in base.final_state.items():
        assert torch.equal(value, again.final_state[key]), key
    assert again.final.global_metrics == pytest.approx(base.final.global_metrics, nan_ok=True)


def test_different_seed_gives_different_weights(small_study, run_inprocess, base):
    other = run_inprocess(small_study(f"rounds={ROUNDS}", "seed=1"))
    assert any(
        not torch.equal(value, other.final_state[key]) for key, value in base.final_state.items()
    )


@pytest.mark.parametrize("strategy", ["fedprox", "fedyogi"])
def test_other_strategies_run(small_study, run_inprocess, base, strategy):
    spy = Spy()
    result = run_inprocess(small_study(f"rounds={ROUNDS}", f"strategy={strategy}"), spy)

    assert [r.server_round for r in result.rounds] == list(range(ROUNDS + 1))
    assert set(result.final.hospital_metrics) == set(base.final.hospital_metrics)
    assert all(torch.isfinite(t).all() for t in result.final_state.values())
    assert any(
        not torch.equal(value, result.final_state[key]) for key, value in base.final_state.items()
    )
    mu = {c.get("proximal-mu") for c in spy.train_configs}
    assert mu == ({0.1} if strategy == "fedprox" else {None})


def test_multiclass_and_continuous_tasks_run(small_study, run_inprocess):
    for task, metric in (("treatment", "macro_f1"), ("pricing", "rmse")):
        result = run_inprocess(small_study("rounds=2", f"task={task}"))
        assert metric in result.final.global_metrics
        assert math.isfinite(result.final.global_metrics[metric])


STRATEGIES = sorted(p.stem for p in (config_dir() / "strategy").glob("*.yaml"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_every_hospital_every_round(small_study, run_inprocess, strategy):
    """Regression: FedAdam's float64 aggregate made every node's reply guard refuse round 2+."""
    result = run_inprocess(small_study(f"rounds={ROUNDS}", f"strategy={strategy}"))

    assert {r.server_round: r.failures for r in result.rounds if r.failures} == {}
    for record in result.rounds:
        assert len(record.hospital_metrics) == 3, record.server_round
        assert len(record.train) == (3 if record.server_round else 0)
    assert {str(t.dtype) for t in result.final_state.values()} == {"torch.float32"}


class FailingTrain:
    """medfed's ClientApp, except that one hospital raises in every ``train`` message."""

    def __init__(self, partition: int) -> None:
        self.partition = partition

    def __call__(self, message, context):
        if (
            message.metadata.message_type == "train"
            and int(context.node_config["partition-id"]) == self.partition
        ):
            raise OSError("disk full while training")
        return medfed_client(message, context)


def test_a_failing_hospital_is_recorded_and_the_study_finishes(small_study, run_inprocess, base):
    result = run_inprocess(small_study(f"rounds={ROUNDS}"), FailingTrain(1))

    for record in result.rounds[1:]:
        assert set(record.failures) == {"hospital-1"}
        assert "OSError" in record.failures["hospital-1"]
        assert "disk full" in record.failures["hospital-1"]
        assert set(record.train) == {"hospital-0", "hospital-2"}
    # it still answers the final evaluation (only its training fails)
    assert set(result.final.hospital_metrics) == {"hospital-0", "hospital-1", "hospital-2"}
    healthy = sum(
        math.ceil(h["n_train"] / 32) for h in result.hospitals.values() if h["name"] != "hospital-1"
    )
    assert result.total_train_steps == healthy * ROUNDS
    assert any(not torch.equal(v, base.final_state[k]) for k, v in result.final_state.items())


def test_an_offline_hospital_is_left_out(small_study, run_inprocess):
    result = run_inprocess(small_study("rounds=2"), offline=(FIRST_NODE_ID + 2,))

    assert [h["name"] for h in result.hospitals.values()] == ["hospital-0", "hospital-1"]
    assert set(result.final.hospital_metrics) == {"hospital-0", "hospital-1"}


def test_too_few_hospitals_is_a_study_error(small_study, run_inprocess):
    study = small_study("rounds=1", "strategy.min_nodes=3", "timeout=1")
    with pytest.raises(StudyError, match="2 of the 3"):
        run_inprocess(study, offline=(FIRST_NODE_ID,))


def _broken_in_round_zero(message, context):
    if context.node_config["partition-id"] == 0:
        raise ValueError("cannot read the dataset card")
    return medfed_client(message, context)


def test_a_hospital_failing_in_round_zero_is_left_out(small_study, run_inprocess):
    result = run_inprocess(small_study("rounds=2"), _broken_in_round_zero)
    assert sorted(h["name"] for h in result.hospitals.values()) == ["hospital-1", "hospital-2"]
    assert "cannot read the dataset card" in result.rounds[0].failures[f"node-{FIRST_NODE_ID}"]
    assert set(result.rounds[2].train) == {"hospital-1", "hospital-2"}


def test_too_few_hospitals_after_round_zero_is_a_study_error(small_study, run_inprocess):
    with pytest.raises(StudyError, match="only 2 hospital.*min_nodes=3.*cannot read the dataset"):
        run_inprocess(small_study("rounds=1", "strategy.min_nodes=3"), _broken_in_round_zero)


def test_evaluate_every_two_rounds(small_study, run_inprocess):
    result = run_inprocess(small_study("rounds=4", "evaluate.every=2"))
    evaluated = [r.server_round for r in result.rounds if r.global_metrics]
    assert evaluated == [0, 2, 4]
    assert GLOBAL == "all hospitals"
