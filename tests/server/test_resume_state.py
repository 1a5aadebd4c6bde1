"""Resume restores what a study keeps between rounds besides the global weights: early stopping's
best round and weights (checkpoint), FedPer heads / FedBN norms and SCAFFOLD's control variates
(the node's own ``c_i`` on its disk, the server's ``c`` in the checkpoint). For each, a 4-round
study interrupted after round 2 and resumed ends bit-identical to the uninterrupted one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import RecordDict

from medfed.client.app import app as medfed_client
from medfed.client.scaffold import STATE as SCAFFOLD_STATE
from medfed.server.simulation.engine import FIRST_NODE_ID, InProcessGrid
from medfed.server.study import checkpoint as ckpt
from medfed.server.study.config import compose_study
from medfed.server.study.loop import StudyResult, run_study
from medfed.server.study.resume import ResumeError

SMALL = [
    "federation.hospitals=3",
    "federation.min_size=60",
    "federation.max_size=120",
    "policy.min_cell_count=1",
    "quiet=true",
    "rounds=4",
]


def _run(study: dict[str, Any], observer: Any = None) -> StudyResult:
    grid = InProcessGrid(
        medfed_client, [{"partition-id": i, "num-partitions": 3} for i in range(3)], run_config={}
    )
    return run_study(grid, study, observer)


def _whole_and_resumed(tmp_path: Path, crash_after: Any, *overrides: str):
    """The uninterrupted study, the same study killed after round 2 and resumed, and the
    checkpoint the resume started from."""
    whole = _run(compose_study([*SMALL, *overrides, f"output_dir={tmp_path / 'whole'}"]))
    cut = tmp_path / "cut"
    with pytest.raises(crash_after.Crash):
        _run(compose_study([*SMALL, *overrides, f"output_dir={cut}"]), crash_after(2))
    saved = ckpt.load(cut / ckpt.FILENAME, None)
    assert saved["server_round"] == 2
    return whole, _run(compose_study([f"resume={cut}"])), saved


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, tensor in a.items():
        assert torch.equal(b[key], tensor), key


def test_early_stopping_keeps_its_best_round_across_a_resume(tmp_path, crash_after):
    """The best round's weights and its summed validation statistics (the decision threshold is
    chosen from them) come back: a resume that kept only the round number would fall back to
    the last weights and a threshold of 0.5."""
    whole, resumed, saved = _whole_and_resumed(
        tmp_path,
        crash_after,
        "task=diagnosis",
        "train.lr=2.0",
        "early_stopping.patience=3",
    )
    assert saved["early_stopping"]["best_round"] == 1 and saved["early_stopping"]["arrays"]
    assert whole.early_stopping["best_round"] == 1  # this seed: a model the resume never saw
    assert whole.early_stopping["threshold"]["value"] != 0.5
    assert resumed.early_stopping == whole.early_stopping  # history, best round, threshold
    _same_weights(whole.final_state, resumed.final_state)


@pytest.mark.parametrize(
    ("method", "task", "local"),
    [("fedper", "pricing", "2.weight"), ("fedbn", "treatment", "1.weight")],
)
def test_local_layers_survive_a_resume(tmp_path, crash_after, method, task, local):
    whole, resumed, _ = _whole_and_resumed(
        tmp_path,
        crash_after,
        f"task={task}",
        "task.model.family=mlp",  # local heads and norms need the MLP (treatment is logreg)
        f"personalise.method={method}",
        "personalise.epochs=0",  # the personalised model is the final one with the local layers
    )
    _same_weights(whole.final_state, resumed.final_state)
    cut, study_id = tmp_path / "cut", resumed.study["study_id"]
    for name in resumed.personalised["hospitals"]:
        assert (cut / "node_state" / study_id / name / "round-4.pt").exists()
        kept = [
            torch.load(run / "personalised" / f"{name}.pt", weights_only=False)["state_dict"]
            for run in (tmp_path / "whole", cut)
        ]
        _same_weights(*kept)
        assert not torch.equal(kept[0][local], whole.final_state[local])  # trained at the node
    assert resumed.personalised["hospitals"] == whole.personalised["hospitals"]


def test_scaffold_control_variates_survive_a_resume(tmp_path, crash_after):
    whole, resumed, saved = _whole_and_resumed(
        tmp_path, crash_after, "task=treatment", "strategy=scaffold"
    )
    assert saved["strategy"][0]["__own__"] != '{"control": null}'  # the server's c
    _same_weights(whole.final_state, resumed.final_state)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_node_state_stops_the_resume_naming_the_file(
    tmp_path, crash_after, damage
):
    cut = tmp_path / "cut"
    with pytest.raises(crash_after.Crash):
        _run(
            compose_study([*SMALL, "task=treatment", "strategy=scaffold", f"output_dir={cut}"]),
            crash_after(2),
        )
    study_id = compose_study([f"resume={cut}"])["study_id"]
    (site,) = [p for p in (cut / "node_state" / study_id).iterdir() if p.name.endswith("1")]
    path = site / "round-2.pt"
    if damage == "missing":
        path.unlink()
        expected = f"{site.name}: cannot resume: this node's state after round 2 ({path}) is"
    else:
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0x01
        path.write_bytes(bytes(raw))
        expected = f"{site.name}: cannot resume: node state {path} is corrupted"
    checkpoint = (cut / ckpt.FILENAME).read_bytes()
    with pytest.raises(ResumeError) as caught:
        _run(compose_study([f"resume={cut}"]))
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
    assert (cut / ckpt.FILENAME).read_bytes() == checkpoint  # no round ran
    assert not (site / "round-3.pt").exists()


@pytest.mark.slow
def test_medfed_simulate_refuses_a_lost_head_in_one_line_and_resumes_once_it_is_back(
    tmp_path, crash_after, load_model
):
    """The researcher's command: a FedPer study whose node file is damaged ends in one line
    naming the file (exit 1, the run stays resumable); with the file back it finishes to the
    uninterrupted study's ``model.pt``."""
    import shutil
    import subprocess
    import sys

    overrides = ["task=pricing", "personalise.method=fedper"]
    whole = _run(compose_study([*SMALL, *overrides, f"output_dir={tmp_path / 'whole'}"]))
    cut = tmp_path / "cut"
    with pytest.raises(crash_after.Crash):
        _run(compose_study([*SMALL, *overrides, f"output_dir={cut}"]), crash_after(2))
    (path,) = cut.glob("node_state/*/hospital-0/round-2.pt")
    shutil.copy(path, tmp_path / "backup.pt")
    path.write_bytes(path.read_bytes()[:-1])  # a torn copy
    medfed = [str(Path(sys.executable).with_name("medfed")), "simulate", f"resume={cut}"]
    refused = subprocess.run(medfed, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"hospital-0: cannot resume: node state {path} is corrupted" in refused.stderr
    shutil.copy(tmp_path / "backup.pt", path)
    done = subprocess.run(medfed, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _same_weights(whole.final_state, load_model(cut))


class _Restart:
    """A ClientApp spy and study observer: after round 2 the second node restarts (its run state is
    gone, and with ``lose_file`` its round-2 state file too); records the SCAFFOLD ``c_i`` it held
    then, and the one it holds after each ``query.restore``."""

    def __init__(self, run_dir: Path, lose_file: bool) -> None:
        self.run_dir, self.lose_file = run_dir, lose_file
        self.grid = InProcessGrid(
            self, [{"partition-id": i, "num-partitions": 3} for i in range(3)], run_config={}
        )
        self.before: torch.Tensor | None = None
        self.restored: list[torch.Tensor | None] = []

    def __call__(self, message: Any, context: Any) -> Any:
        try:
            return medfed_client(message, context)
        finally:
            if message.metadata.message_type == "query.restore":
                record = context.state.array_records.get(SCAFFOLD_STATE)
                self.restored.append(None if record is None else record.to_torch_state_dict()["c"])

    def on_start(self, study: dict[str, Any], hospitals: list[str]) -> None:
        pass

    def on_round(self, server_round: int, record: Any) -> None:
        if server_round + 1 != 2:  # the loop reports round r - 1 at the end of round r
            return
        context = self.grid._contexts[FIRST_NODE_ID + 1]
        self.before = context.state.array_records[SCAFFOLD_STATE].to_torch_state_dict()["c"]
        context.state = RecordDict()
        if self.lose_file:
            next(self.run_dir.glob("node_state/*/hospital-1/round-2.pt")).unlink()


@pytest.mark.parametrize("lose_file", [False, True])
def test_a_node_restarted_mid_study_gets_its_state_back_or_sits_out(tmp_path, lose_file):
    """A deployed node whose SuperNode restarts loses ``context.state``; the cohort catches it up
    (round 0 again) and gives it back its ``c_i``, or keeps it out of training, naming the file."""
    study = compose_study([*SMALL, "task=treatment", "strategy=scaffold", f"output_dir={tmp_path}"])
    restart = _Restart(tmp_path, lose_file)
    result = run_study(restart.grid, study, restart)
    trained = {r.server_round: sorted(r.train) for r in result.rounds[1:]}
    assert "no study configuration" in result.rounds[3].failures["hospital-1"]  # it restarted
    assert len(restart.restored) == 1  # asked once, as it caught up before round 4
    if not lose_file:
        assert torch.equal(restart.restored[0], restart.before)
        assert trained[4] == ["hospital-0", "hospital-1", "hospital-2"]
        return
    assert restart.restored[0] is None and trained[4] == ["hospital-0", "hospital-2"]
    assert (
        result.rounds[4]
        .failures["hospital-1"]
        .startswith("cannot resume: this node's state after round 2 (")
    )


def test_a_checkpoint_without_early_stopping_state_is_refused_in_one_line(tmp_path):
    from medfed.models.pipeline import study_schema
    from medfed.server.study import early

    study = {**compose_study([*SMALL, "early_stopping.patience=2"]), "resume": str(tmp_path)}
    with pytest.raises(ckpt.CheckpointError) as caught:
        early.tracker(study, study_schema(study), {"server_round": 2})
    assert str(caught.value) == (
        f"the checkpoint in {tmp_path} holds no early-stopping state (written by an older "
        "medfed): the best round cannot be continued; start the study anew"
    )


def test_a_cosine_schedule_resumes_at_the_rate_of_the_round(tmp_path, crash_after):
    """The rate is a function of the round: rounds 3-4 of a resumed study train at the rates of
    the uninterrupted one (and the schedule really changed the training)."""
    whole, resumed, _ = _whole_and_resumed(tmp_path, crash_after, "train.lr_schedule=cosine")
    _same_weights(whole.final_state, resumed.final_state)
    constant = _run(compose_study([*SMALL, f"output_dir={tmp_path / 'constant'}"]))
    assert any(not torch.equal(constant.final_state[k], t) for k, t in whole.final_state.items())
