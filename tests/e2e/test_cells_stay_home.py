"""No cell of a hospital's export leaves its node: through the real CLI (issue 11, section 1)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medfed.infra.loopback import LoopbackFederation

MEDFED = str(Path(sys.executable).with_name("medfed"))
_SPEC = importlib.util.spec_from_file_location(
    "leaky_exports", Path(__file__).with_name("leaky_exports.py")
)
leaky = importlib.util.module_from_spec(_SPEC)  # type: ignore[arg-type]
_SPEC.loader.exec_module(leaky)  # type: ignore[union-attr]
NAME, leaky_sites, places_holding = leaky.NAME, leaky.leaky_sites, leaky.places_holding
STRICT = (
    "max_epsilon_total: 0.01\nmax_epsilon_per_study: 0.01\nmin_noise_multiplier: 0.5\n"
    "require_approval: false\n"  # approvals are issue 15's test; this one is about cells
)


def _medfed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MEDFED, *args],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_node_check_shows_cells_only_when_asked(tmp_path: Path) -> None:
    card = leaky_sites(tmp_path, hospitals=1)[0]
    quiet = _medfed("node", "check", "--dataset", str(card), cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert places_holding(NAME, [], [quiet.stdout, quiet.stderr]) == []
    assert "column 'cholesterol', 3 rows (4, 8, 10): text where a number" in quiet.stdout
    assert "--show-values" in quiet.stdout
    shown = _medfed("node", "check", "--dataset", str(card), "--show-values", cwd=tmp_path)
    assert shown.returncode == 0
    assert f"    cells: '{NAME}'" in shown.stdout


@pytest.mark.slow
def test_a_simulated_study_carries_no_cell_to_the_coordinator(tmp_path: Path) -> None:
    cards = leaky_sites(tmp_path / "sites", hospitals=3, failing=2)
    out = tmp_path / "run"
    listed = ",".join(map(str, cards))
    run = _medfed(
        "simulate",
        "federation=sites",
        f"federation.cards=[{listed}]",
        "rounds=2",
        "federation.allow_missing_sites=true",  # else the coordinator refuses it before round 1
        f"output_dir={out}",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    reason = json.dumps(summary["missing_sites"])
    assert "not usable" in reason and "hospital-2" in reason
    assert [h["name"] for h in summary["hospitals"]] == ["hospital-0", "hospital-1"]
    assert places_holding(NAME, [out], [run.stdout, run.stderr]) == []


class LeakyFederation(LoopbackFederation):
    """The loopback federation with ``NAME`` typed into every hospital's export; hospital-2's
    policy refuses every DP round (its refusal reason passes the reply guard)."""

    def _prepare(self) -> None:
        super()._prepare()
        for card in sorted((self.workdir / "cards").glob("hospital-*.yaml")):
            leaky.poison(card)
        (self.workdir / "strict.yaml").write_text(STRICT, encoding="utf-8")


@pytest.mark.slow
@pytest.mark.serial
def test_a_deployed_study_carries_no_cell_to_the_coordinator(tmp_path: Path) -> None:
    work = tmp_path / "fed"
    strict = ["--policy", str(work / "strict.yaml")]
    with LeakyFederation(work, node_args={"hospital-2": strict}) as fed:
        run = fed.run(
            "rounds=2",
            "privacy=dpsgd",
            "strategy.min_nodes=2",
            "timeout=120",
            f"output_dir={tmp_path / 'run'}",
            timeout=400,
        )
        streams = [run.stdout, run.stderr, fed.log("coordinator")]
    assert run.returncode == 0, run.stderr[-2000:] + fed.tails()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert "budget" in json.dumps(summary["refusals"])
    assert places_holding(NAME, [tmp_path / "run", work / "coord"], streams) == []
    assert {"hospital-0", "hospital-1"} <= {h["name"] for h in summary["hospitals"]}
    assert "withheld" not in json.dumps(summary)  # a reason without a cell passes unchanged
