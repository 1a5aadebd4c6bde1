"""Resume in a real federation: what the hospitals keep between rounds stays at the hospitals.

Three loopback hospitals run a SCAFFOLD study (every node keeps its control variate ``c_i``
between rounds). It is stopped with ``flwr stop`` after round 2 and finished with ``medfed run
--resume``: each node reloads ``c_i`` from beside its own dataset card (never from the
coordinator's run directory), a node whose file is gone stops the resume in one line naming the
file (through Flower's wrapping of the node's error), and with the file back the study ends on
the weights of the same study run without a stop.

Not bit for bit: two deployed runs of one study differ in the last bits from round 1 on, stop or
no stop. The nodes train identically, but the strategy's ``random.sample`` of the nodes (hence
the order FedAvg sums the replies in) draws from Python's global ``random``, which Flower's
heartbeat and retry threads in the ServerApp process also draw from at times that vary
(measured: round 1's loss 0.5853269023 against 0.5853268989). The tolerance below is far below
what a lost ``c_i`` changes: 0.59 in the largest weight, this study simulated with every node's
``c_i`` dropped at the resume.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from medfed.infra.loopback import MEDFED, LoopbackFederation

pytestmark = [pytest.mark.slow, pytest.mark.serial]

STUDY = ("rounds=6", "strategy=scaffold", "privacy=none", "timeout=60", "strategy.min_nodes=3")


def _checkpointed(run: Path) -> int:
    from medfed.server.study.checkpoint import FILENAME, load

    return int(load(run / FILENAME, None)["server_round"]) if (run / FILENAME).exists() else 0


def _stop_after_round_2(fed: LoopbackFederation, run: Path) -> int:
    """Start the study, ``flwr stop`` it once round 2 is checkpointed; the round it reached."""
    from medfed.server.deploy.connection import connection_for, load_config

    args = ["--superlink", fed.superlink, "--ca", str(fed.coord / "ca.crt")]
    study = fed.start("cut", [MEDFED, "run", *args, *STUDY, f"output_dir={run}"])
    deadline = time.monotonic() + 180
    while _checkpointed(run) < 2:
        assert study.poll() is None and time.monotonic() < deadline, fed.log("cut")[-3000:]
        time.sleep(0.1)
    run_id = re.findall(r"Successfully started run (\d+)", fed.log("cut"))[0]
    connection_for(fed.coord, load_config(fed.coord)).call("stop", run_id)
    assert study.wait(timeout=60) != 0
    return _checkpointed(run)


def test_a_stopped_scaffold_study_resumes_with_the_nodes_own_state(tmp_path):
    with LoopbackFederation(tmp_path) as fed:
        whole = fed.run(*STUDY, f"output_dir={tmp_path / 'whole'}", timeout=300)
        assert whole.returncode == 0, whole.stderr + fed.tails()
        run = tmp_path / "cut"
        reached = _stop_after_round_2(fed, run)
        assert 2 <= reached < 6, f"the stop took effect after round {reached}"
        assert not (run / "node_state").exists()  # the coordinator holds none of it
        study_id = yaml.safe_load((run / "config.yaml").read_text())["study_id"]
        kept = tmp_path / "cards" / "node_state" / study_id  # beside the cards, one per site
        assert sorted(p.name for p in kept.iterdir()) == ["hospital-0", "hospital-1", "hospital-2"]
        path = kept / "hospital-1" / f"round-{reached}.pt"
        shutil.move(path, tmp_path / "kept.pt")
        refused = fed.run("--resume", str(run), timeout=300)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"hospital-1: cannot resume: this node's state after round {reached}" in (
            refused.stderr
        )
        assert str(path) in refused.stderr and "<class" not in refused.stderr
        assert refused.stderr.rstrip().endswith("restore it from a backup, or start the study anew")
        print(refused.stderr)
        shutil.move(tmp_path / "kept.pt", path)
        done = fed.run("--resume", str(run), timeout=300)
        assert done.returncode == 0, done.stderr + fed.tails()
    final = [torch.load(r / "model.pt")["state_dict"] for r in (tmp_path / "whole", run)]
    for key, tensor in final[0].items():
        assert torch.allclose(final[1][key], tensor, rtol=1e-5, atol=1e-6), key
