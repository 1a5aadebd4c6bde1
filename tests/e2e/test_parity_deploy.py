"""Promise 5 across engines: the same three cards and seed give bit-identical weights (and the
same decision threshold) whether the study is simulated (``medfed simulate federation=sites``)
or deployed (``medfed run`` on a coordinator and three real nodes on loopback, TLS and node
keys, random node ids).

Without DP: a deployed node draws DP-SGD noise from the operating system (``secure_rng``, which
its own settings force), so a DP study cannot be reproduced there by design.
"""

from __future__ import annotations

import json

import pytest
import torch

from medfed.infra.loopback import MEDFED, LoopbackFederation

pytestmark = [pytest.mark.slow, pytest.mark.serial]

# early stopping: every node also carves a validation split (seeded by its site name), the kept
# model is the best round's and the decision threshold is chosen on the split
ROUNDS = ["rounds=2", "seed=11", "early_stopping.patience=5", "quiet=true"]


def test_simulated_and_deployed_studies_reach_the_same_weights(tmp_path):
    with LoopbackFederation(tmp_path) as fed:
        cards = ",".join(str(tmp_path / "cards" / f"hospital-{i}.yaml") for i in range(3))
        simulate = fed.start(
            "simulate",
            [
                MEDFED,
                "simulate",
                "federation=sites",
                f"federation.cards=[{cards}]",
                *ROUNDS,
                f"output_dir={tmp_path / 'sim'}",
            ],
        )
        deployed = fed.run(
            *ROUNDS, "strategy.min_nodes=3", f"output_dir={tmp_path / 'run'}", timeout=300
        )
        assert simulate.wait(timeout=300) == 0, fed.log("simulate")[-3000:]
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]

    simulated = torch.load(tmp_path / "sim" / "model.pt", weights_only=False)["state_dict"]
    on_nodes = torch.load(tmp_path / "run" / "model.pt", weights_only=False)["state_dict"]
    assert simulated.keys() == on_nodes.keys()
    for key, tensor in simulated.items():
        assert torch.equal(tensor, on_nodes[key]), key  # bit for bit
    thresholds = [
        json.loads((tmp_path / run / "model" / "preprocessing.json").read_text())["threshold"]
        for run in ("sim", "run")
    ]
    assert thresholds[0] == thresholds[1]
