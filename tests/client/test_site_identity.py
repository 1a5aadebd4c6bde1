"""A hospital's seeds come from its site name, not from its position: the same card trains to the
same weights whether its node is simulated (Flower's ``partition-id``) or deployed (a node that
knows only its own card), whatever node ids the hospitals get and in whatever order they answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medfed.models.ingest.export import synth_main
from medfed.models.pipeline import round_seed, site_key


def test_site_key_is_the_first_four_bytes_of_the_names_sha256():
    # sha256(b"hospital-0") = dfe1fa70...; sha256(b"cleveland") = 205556f1...
    assert site_key("hospital-0") == 0xDFE1FA70 == 3756128880
    assert site_key("cleveland") == 0x205556F1
    assert round_seed(7, site_key("cleveland"), 2) != round_seed(7, site_key("hospital-0"), 2)


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("identity")
    assert synth_main(["export", "--task", "diagnosis", "--hospitals", "3", str(folder)]) == 0
    (folder / "policy.yaml").write_text("require_approval: false\n")
    return folder


def _study(cards: Path, out: str) -> dict:
    """Two rounds over the three cards, early stopping on (so a validation split is carved)."""
    from medfed.server.study.config import compose_study

    listed = ",".join(str(cards / f"hospital-{i}.yaml") for i in range(3))
    return compose_study(
        [
            "federation=sites",
            f"federation.cards=[{listed}]",
            "rounds=2",
            "early_stopping.patience=5",
            "quiet=true",
            f"output_dir={cards / out}",
        ]
    )


def _deployed(cards: Path, order: list[int]) -> list[dict]:
    return [
        {"dataset": str(cards / f"hospital-{i}.yaml"), "policy": str(cards / "policy.yaml")}
        for i in order
    ]


def test_simulated_and_deployed_nodes_reach_the_same_bits(cards, run_inprocess):
    """The deployed nodes (node config ``dataset``, each at index 0 of its own one-card study)
    get node ids in the reverse order of their names, so their replies also arrive reversed."""
    from medfed.client.app import app
    from medfed.server.simulation.engine import InProcessGrid
    from medfed.server.study.loop import run_study

    simulated = run_inprocess(_study(cards, "simulated"))
    grid = InProcessGrid(app, _deployed(cards, [2, 1, 0]), run_config={})
    deployed = run_study(grid, _study(cards, "deployed"))

    names = ["hospital-0", "hospital-1", "hospital-2"]
    assert [h["name"] for h in deployed.hospitals.values()] == names
    assert deployed.hospitals[min(deployed.hospitals)]["name"] == "hospital-2"
    assert simulated.final_state.keys() == deployed.final_state.keys()
    for key, tensor in simulated.final_state.items():
        assert torch.equal(tensor, deployed.final_state[key]), key
