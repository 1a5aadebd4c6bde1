"""Whole in-process studies with ``privacy=central``: both clipping modes finish, the run directory
reports the client-level epsilon, the node clips when asked to, a refusing hospital stops the
release (not the study), and without noise the wrappers reproduce uniform-weight FedAvg."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from medfed.client.app import app as medfed_client
from medfed.server.outputs.rundir import write_run
from medfed.strategies.central_dp import epsilon_after

ROUNDS = 3
FOUR = ["federation.hospitals=4", "privacy=central", f"rounds={ROUNDS}"]


class UpdateNorms:
    """Wraps medfed's ClientApp and keeps the L2 norm of every update a hospital sends."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def __call__(self, message, context):
        reply = medfed_client(message, context)
        if message.metadata.message_type == "train" and not reply.has_error():
            sent = message.content.array_records["arrays"].to_numpy_ndarrays()
            got = reply.content.array_records["arrays"].to_numpy_ndarrays()
            self.norms.append(
                math.sqrt(
                    sum(
                        float(((g.astype(np.float64) - s) ** 2).sum())
                        for g, s in zip(got, sent, strict=True)
                    )
                )
            )
        return reply


@pytest.fixture(scope="module", params=["server", "client"])
def clipped(request, small_study, run_inprocess, tmp_path_factory):
    """A 4-hospital study clipped at 0.05 (below every update of these hospitals) on one side."""
    out = tmp_path_factory.mktemp(f"central-{request.param}")
    study = small_study(
        *FOUR,
        f"privacy.clipping={request.param}",
        "privacy.clipping_norm=0.05",
        f"output_dir={out}",
    )
    spy = UpdateNorms()
    result = run_inprocess(study, spy)
    write_run(result)
    return request.param, result, spy, out


def test_the_study_finishes_and_summary_json_has_the_client_level_epsilon(clipped):
    clipping, result, _, out = clipped
    summary = json.loads((out / "summary.json").read_text())

    dp = summary["central_dp"]
    assert (dp["clipping"], dp["clipping_norm"], dp["noise_multiplier"], dp["delta"]) == (
        clipping,
        0.05,
        1.0,
        1e-5,
    )
    assert dp["released_rounds"] == ROUNDS and summary["stopped"] is None
    assert dp["epsilon"] == pytest.approx(epsilon_after(1.0, ROUNDS, 1e-5, 4), rel=1e-9)
    assert [r["hospitals"] for r in dp["rounds"]] == [4] * ROUNDS
    assert len(result.final.hospital_metrics) == 4


def test_metrics_csv_and_the_report_show_epsilon_per_round(clipped):
    _, _, _, out = clipped
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    by_round = {int(r["round"]): r["central_epsilon"] for r in rows}

    assert by_round[0] == ""
    for server_round in range(1, ROUNDS + 1):
        assert float(by_round[server_round]) == pytest.approx(
            epsilon_after(1.0, server_round, 1e-5, 4), rel=1e-9
        )
    report = (out / "report.md").read_text()
    assert "## Client-level (central) DP" in report and "3 of 3 rounds released" in report


def test_the_node_clips_exactly_when_the_study_asks_it_to(clipped):
    clipping, _, spy, _ = clipped
    assert len(spy.norms) == 4 * ROUNDS
    if clipping == "client":  # every update was larger than 0.05: each leaves the node at 0.05
        assert spy.norms == pytest.approx([0.05] * len(spy.norms), rel=1e-4)
    else:  # the coordinator clips: the raw updates leave the nodes
        assert min(spy.norms) > 0.05


def test_a_refusing_hospital_stops_the_release_not_the_study(small_study, run_inprocess):
    def refusing(message, context):
        if message.metadata.message_type == "train" and context.node_config["partition-id"] == 1:
            raise RuntimeError("refused by the node's policy: dp: this node requires DP-SGD")
        return medfed_client(message, context)

    result = run_inprocess(small_study(*FOUR), refusing)

    assert len(result.rounds) == ROUNDS + 1 and not result.stopped
    assert all("hospital-1" in r.refusals for r in result.rounds[1:])
    dp = result.central_dp
    assert dp["released_rounds"] == 0 and dp["epsilon"] == 0
    assert all("3 of the 4 sampled hospitals" in r["reason"] for r in dp["rounds"])


def test_without_noise_and_clipping_it_is_fedavg_with_equal_weights(small_study, run_inprocess):
    # equal training sizes: FedAvg's example weights are then equal weights too
    equal = ["federation.hospitals=3", "federation.sizes=[100,100,100]", f"rounds={ROUNDS}"]
    plain = run_inprocess(small_study(*equal))
    with pytest.warns(RuntimeWarning, match="epsilon is infinite"):
        central = run_inprocess(
            small_study(
                *equal,
                "privacy=central",
                "privacy.noise_multiplier=0",
                "privacy.clipping_norm=1000",
            )
        )

    assert len({h["n_train"] for h in plain.hospitals.values()}) == 1
    assert central.central_dp["epsilon"] == math.inf
    for key, value in plain.final_state.items():
        torch.testing.assert_close(central.final_state[key], value, rtol=0, atol=1e-5)


def test_a_resumed_study_continues_the_accountant_and_the_noise(small_study, tmp_path, crash_after):
    from medfed.server.simulation.engine import InProcessGrid
    from medfed.server.study.config import compose_study
    from medfed.server.study.loop import run_study

    def run(study, observer=None):
        grid = InProcessGrid(
            medfed_client,
            [{"partition-id": i, "num-partitions": 3} for i in range(3)],
            run_config={},
        )
        return run_study(grid, study, observer)

    central = ["privacy=central", "rounds=4"]
    whole = run(small_study(*central, f"output_dir={tmp_path / 'whole'}"))
    with pytest.raises(crash_after.Crash):
        run(small_study(*central, f"output_dir={tmp_path / 'cut'}"), crash_after(2))
    resumed = run(compose_study([f"resume={tmp_path / 'cut'}"]))

    assert resumed.central_dp == whole.central_dp
    assert resumed.central_dp["epsilon"] == pytest.approx(epsilon_after(1.0, 4, 1e-5, 3))
    for key, tensor in whole.final_state.items():
        assert torch.equal(resumed.final_state[key], tensor), key
