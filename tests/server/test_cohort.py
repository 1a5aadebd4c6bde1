"""Dropouts on the in-process engine: a hospital leaves mid-study, comes back (restarted, or under a
new node id), the study never waits without a bound, and missed rounds are recorded."""

from __future__ import annotations

from flwr.app import RecordDict

from medfed.client.app import app as medfed_client
from medfed.server.outputs.rundir import summary
from medfed.server.simulation.engine import FIRST_NODE_ID, InProcessGrid
from medfed.server.study.loop import run_study


class Schedule:
    """An observer that runs ``actions[r](grid)`` once round ``r`` has finished."""

    def __init__(self, grid: InProcessGrid, actions: dict) -> None:
        self.grid, self.actions = grid, actions

    def on_start(self, study, hospitals) -> None:
        pass

    def on_round(self, server_round, record) -> None:
        finished = server_round + 1  # the loop reports round r - 1 at the end of round r
        if finished in self.actions:
            self.actions.pop(finished)(self.grid)


def _grid(partitions: list[int]) -> InProcessGrid:
    return InProcessGrid(
        medfed_client, [{"partition-id": p, "num-partitions": 3} for p in partitions], run_config={}
    )


def _restart(node_id: int):
    def action(grid: InProcessGrid) -> None:
        grid._contexts[node_id].state = RecordDict()  # a restarted node has lost its state
        grid.set_online(node_id, True)

    return action


def test_a_hospital_that_drops_out_misses_rounds_and_rejoins_after_a_restart(small_study):
    study = small_study("rounds=6")
    grid = _grid([0, 1, 2])
    node = FIRST_NODE_ID + 1
    result = run_study(
        grid, study, Schedule(grid, {2: lambda g: g.set_online(node, False), 4: _restart(node)})
    )
    assert result.stopped == ""
    trained = {r.server_round: sorted(r.train) for r in result.rounds[1:]}
    assert trained[3] == trained[4] == ["hospital-0", "hospital-2"]
    assert all(len(trained[r]) == 3 for r in (1, 2, 5, 6))
    assert "offline" in result.rounds[3].failures["hospital-1"]
    missed = {h["name"]: h["rounds_missed"] for h in summary(result)["hospitals"]}
    assert missed == {"hospital-0": [], "hospital-1": [3, 4], "hospital-2": []}
    assert "hospital-1" in result.final.hospital_metrics  # back for the final evaluation


def test_a_hospital_rejoining_under_a_new_node_id_keeps_its_name(small_study):
    study = small_study("rounds=4")
    grid = _grid([0, 1, 2, 1])  # the fourth node is hospital-1 again, not yet connected
    old, new = FIRST_NODE_ID + 1, FIRST_NODE_ID + 3
    grid.set_online(new, False)

    def swap(g: InProcessGrid) -> None:
        g.set_online(old, False)
        g.set_online(new, True)

    result = run_study(grid, study, Schedule(grid, {2: swap}))
    assert sorted(h["name"] for h in result.hospitals.values()) == [
        "hospital-0",
        "hospital-1",
        "hospital-2",
    ]
    assert new in result.hospitals and old not in result.hospitals
    assert all(len(r.train) == 3 for r in result.rounds[1:]), [r.train for r in result.rounds]


def test_too_few_hospitals_stops_the_study_after_a_bounded_wait(small_study, tmp_path):
    study = small_study("rounds=5", "strategy.min_nodes=3", "timeout=1", f"output_dir={tmp_path}")
    grid = _grid([0, 1, 2])
    result = run_study(
        grid, study, Schedule(grid, {2: lambda g: g.set_online(FIRST_NODE_ID, False)})
    )
    assert result.stopped.startswith("round 3: only 2 of the strategy.min_nodes=3 hospitals")
    assert "within 1 s" in result.stopped
    assert [r.server_round for r in result.rounds] == [0, 1, 2]
    assert sorted(result.final.hospital_metrics) == ["hospital-1", "hospital-2"]


def test_a_duplicate_hospital_name_is_not_admitted(small_study):
    """Two nodes serving one dataset would count its rows twice: the second is left out."""
    study = small_study("rounds=2")
    grid = _grid([0, 1, 2, 2])  # node 4 claims to be hospital-2 while hospital-2 is connected
    result = run_study(grid, study)
    names = [h["name"] for h in result.hospitals.values()]
    assert sorted(names) == ["hospital-0", "hospital-1", "hospital-2"]
    assert (
        "claims to be hospital-2 like node"
        in result.rounds[0].failures[f"node-{FIRST_NODE_ID + 3}"]
    )
    assert all(len(r.train) == 3 for r in result.rounds[1:])


def test_metrics_csv_keeps_the_training_row_of_a_hospital_that_then_dropped_out(small_study):
    from medfed.server.outputs.rundir import metric_rows

    study = small_study("rounds=4")
    grid = _grid([0, 1, 2])
    result = run_study(
        grid, study, Schedule(grid, {2: lambda g: g.set_online(FIRST_NODE_ID + 1, False)})
    )
    rows = {(r["round"], r["hospital"]): r for r in metric_rows(result)}
    assert rows[(2, "hospital-1")]["train_steps"] >= 1  # trained in round 2, never scored after
    assert (3, "hospital-1") not in rows
