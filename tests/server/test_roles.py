"""Site roles on the in-process engine: an evaluation-only hospital never trains, is evaluated
every round, is left out of the global statistics, and the study refuses to start without enough
hospitals that can train. Baselines that cannot run are reported, never raised."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from flwr.app import Message

from medfed.client.app import app as medfed_client
from medfed.models.ingest.export import export_synthetic
from medfed.server.study.baselines import run_baselines
from medfed.server.study.config import compose_study
from medfed.server.study.loop import StudyError
from medfed.server.study.roles import EVALUATION_ONLY, training_problem, training_view

ROUNDS = 2


class Recorder:
    """medfed's ClientApp, counting the message types each hospital was sent."""

    def __init__(self, forge_train_for: int | None = None) -> None:
        self.sent: Counter[tuple[int, str]] = Counter()
        self.forge = forge_train_for
        self.forged: list[str] = []

    def __call__(self, message: Message, context):
        index = int(context.node_config["partition-id"])
        self.sent[index, message.metadata.message_type] += 1
        reply = medfed_client(message, context)
        if self.forge == index and message.metadata.message_type == "evaluate":
            # a coordinator that asks the evaluation-only node to train anyway
            message.metadata.__dict__["_message_type"] = "train"
            try:
                medfed_client(message, context)
                self.forged.append("trained")
            except RuntimeError as exc:  # the engine turns it into an error reply
                self.forged.append(str(exc))
        return reply


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    paths = export_synthetic("diagnosis", 3, tmp_path_factory.mktemp("cards"))
    paths[2].write_text(paths[2].read_text() + "role: evaluate\n")
    return paths


def sites_study(cards: list[Path], *overrides: str) -> dict:
    return compose_study(
        [
            "quiet=true",
            "federation=sites",
            "strategy.min_nodes=2",
            f"federation.cards=[{','.join(map(str, cards))}]",
            *overrides,
        ]
    )


@pytest.fixture(scope="module")
def studied(cards, run_inprocess):
    study = sites_study(cards, f"rounds={ROUNDS}")
    recorder = Recorder()
    return run_inprocess(study, recorder), recorder


def test_the_evaluation_only_hospital_is_never_sent_a_train_message(studied) -> None:
    result, recorder = studied
    assert recorder.sent[2, "train"] == 0
    assert recorder.sent[0, "train"] == recorder.sent[1, "train"] == ROUNDS
    assert recorder.sent[2, "evaluate"] == ROUNDS + 1  # every round (evaluate.every=1) + final
    roles = {h["name"]: h["role"] for h in result.hospitals.values()}
    assert roles == {"hospital-0": "train", "hospital-1": "train", "hospital-2": "evaluate"}


def test_the_evaluation_only_hospital_is_scored_every_round_and_trains_nowhere(studied) -> None:
    result, _ = studied
    for record in result.rounds:
        assert "hospital-2" in record.hospital_metrics
        assert "hospital-2" not in record.train
    assert all(set(r.train) == {"hospital-0", "hospital-1"} for r in result.rounds[1:])


def test_the_global_statistics_come_from_the_training_hospitals_only(studied) -> None:
    result, _ = studied
    trainers = [h["n_train"] for h in result.hospitals.values() if h["role"] == "train"]
    assert result.statistics.rows == sum(trainers)


def test_the_node_refuses_to_train_when_it_is_evaluation_only(cards, run_inprocess) -> None:
    study = sites_study(cards, "rounds=1")
    recorder = Recorder(forge_train_for=2)
    run_inprocess(study, recorder)
    assert len(recorder.forged) == 2  # round 1 and the final evaluation
    assert all(
        "this site is evaluation-only (role: evaluate in its dataset card): it does not "
        "train" in reason
        for reason in recorder.forged
    )


def test_the_study_refuses_to_start_naming_every_site_that_cannot_train(
    cards, run_inprocess
) -> None:
    study = sites_study(cards, "rounds=1", "strategy.min_nodes=3")
    with pytest.raises(StudyError) as info:
        run_inprocess(study)
    assert str(info.value) == (
        f"the study cannot start: only 2 hospital(s) can train, "
        f"strategy.min_nodes=3; cannot train: hospital-2: {EVALUATION_ONLY}"
    )


def test_training_problem_lists_evaluators_and_failures_by_name() -> None:
    hospitals = {1: {"name": "a", "role": "train"}, 2: {"name": "b", "role": "evaluate"}}
    study = {"strategy": {"min_nodes": 2}}
    assert training_problem(study, hospitals, {"c": "no reply"}) == (
        f"only 1 hospital(s) can train, strategy.min_nodes=2; cannot train: b: {EVALUATION_ONLY}; "
        "c: no reply"
    )
    assert training_problem({"strategy": {"min_nodes": 1}}, hospitals, {}) is None


def test_baselines_report_what_cannot_run_and_skip_evaluation_sites(studied, monkeypatch) -> None:
    result, _ = studied
    base = run_baselines(result)
    assert base["not_run"] == {}
    assert base["local"]["hospitals"]["hospital-2"]["role"] == "evaluate"
    assert set(base["pooled"]["hospitals"]) == {"hospital-0", "hospital-1", "hospital-2"}

    import medfed.server.study.baselines as baselines

    real = baselines.load_site

    def broken(schema, federation, index, seed):
        if index == 1:
            raise ValueError("the export moved")
        return real(schema, federation, index, seed)

    monkeypatch.setattr(baselines, "load_site", broken)
    monkeypatch.setattr(baselines, "local_training", _fail_once())
    base = run_baselines(result)
    assert base["not_run"] == {
        "hospital 1": "its rows could not be loaded: the export moved",
        "pooled": "could not run: out of memory",
    }
    assert "all_test_rows" in base["local"]["hospitals"]["hospital-0"]


def _fail_once():
    from medfed.models.pipeline import local_training

    calls = []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("out of memory")
        return local_training(*args, **kwargs)

    return train


class _View:
    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def test_a_round_stops_when_the_ready_trainers_are_too_few() -> None:
    hospitals = {1: {"name": "a"}, 2: {"name": "b", "role": "evaluate"}, 3: {"name": "c"}}
    study = {"strategy": {"min_nodes": 2}}
    view, ready, reason = training_view(None, study, hospitals, _View([1, 2, 3]), "")
    assert view.get_node_ids() == [1, 3] and ready == [1, 2, 3] and reason == ""
    view, ready, reason = training_view(None, study, hospitals, _View([1, 2]), "")
    assert view is None and ready == [1, 2]
    assert reason == (
        "only 1 of the strategy.min_nodes=2 hospitals needed to train were ready "
        "(the others are evaluation-only or offline)"
    )
