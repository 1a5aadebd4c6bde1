"""The coordinator writes a signed, verifiable model/ bundle and a calibration section at the end
of every study: its model card agrees with summary.json and holds only aggregates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medfed.models.release.bundle import verify_bundle
from medfed.models.release.signing import SIGNING_KEY_ENV, write_key_pair
from medfed.server.outputs.rundir import write_run


@pytest.fixture(scope="module")
def dp_run(small_study, run_inprocess, tmp_path_factory) -> Path:
    """A finished 2-round DP-SGD diagnosis study, signed with a coordinator key."""
    root = tmp_path_factory.mktemp("bundle")
    private, _ = write_key_pair(root)
    study = small_study(
        "rounds=2",
        "privacy=dpsgd",
        f"privacy.ledger_dir={root / 'ledgers'}",
        f"output_dir={root / 'run'}",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SIGNING_KEY_ENV, str(private))
        write_run(run_inprocess(study))
    return root


def test_the_bundle_verifies_with_the_coordinators_public_key(dp_run: Path) -> None:
    verified = verify_bundle(dp_run / "run" / "model", dp_run / "signing.pub")
    assert verified.signer_kind == "coordinator" and verified.pinned
    weights = torch.load(dp_run / "run" / "model" / "weights.pt", weights_only=True)
    model_pt = torch.load(dp_run / "run" / "model.pt")
    assert all(torch.equal(weights["state_dict"][k], v) for k, v in model_pt["state_dict"].items())


def test_the_card_carries_each_sites_privacy_spend_and_counts(dp_run: Path) -> None:
    card = json.loads((dp_run / "run" / "model" / "model_card.json").read_text())
    summary = json.loads((dp_run / "run" / "summary.json").read_text())
    assert [s["name"] for s in card["sites"]] == [h["name"] for h in summary["hospitals"]]
    for site, hospital in zip(card["sites"], summary["hospitals"], strict=True):
        assert site["privacy"]["epsilon"] == hospital["epsilon"] > 0
        assert site["privacy"]["mechanism"].startswith("sample-level DP-SGD")
        assert (site["n_train"], site["n_test"]) == (hospital["n_train"], hospital["n_test"])
        assert (
            sum(v for v in site["balance"]["test"].values() if isinstance(v, int))
            <= hospital["n_test"]
        )
    assert card["training"]["rounds"] == 2 and card["config"]["seed"] == summary["seed"]
    assert set(card["versions"]) == {"medfed", "torch", "flwr", "opacus"}
    assert card["source"].startswith(("git commit ", "package sha256:"))
    markdown = (dp_run / "run" / "model" / "model_card.md").read_text()
    assert "sample-level DP-SGD (Opacus) at the site: epsilon" in markdown


def test_the_report_has_a_reliability_diagram_and_one_calibration_sentence(dp_run) -> None:
    report = (dp_run / "run" / "report.md").read_text()
    section = report[report.index("## Calibration") :]
    verdict = section.splitlines()[2]
    assert verdict.startswith("The model is ") and verdict.count(". ") == 0
    assert "Brier score" in verdict and (dp_run / "run" / "calibration.png").stat().st_size > 0
    card = json.loads((dp_run / "run" / "model" / "model_card.json").read_text())
    assert card["decision"]["calibration"] == verdict
    assert card["decision"]["threshold"] == 0.5
    assert "no validation split" in card["decision"]["threshold_source"]


def test_a_simulated_study_signs_with_a_key_of_its_own(
    small_study, run_inprocess, tmp_path
) -> None:
    write_run(
        run_inprocess(small_study("rounds=1", "task=pricing", f"output_dir={tmp_path / 'run'}"))
    )
    verified = verify_bundle(tmp_path / "run" / "model")
    assert verified.signer_kind == "run" and not verified.pinned
    assert not list((tmp_path / "run").rglob("*.key"))  # the private half is not kept
    assert not (tmp_path / "run" / "calibration.png").exists()  # yes/no models only


def test_the_same_seed_gives_the_same_bundle_content(small_study, run_inprocess, tmp_path):
    """What a bundle scores with depends on the study alone, not on the run (nor its key): the
    basis of parity between engines (a deployed run compares the same two files)."""
    contents = []
    for name in ("a", "b"):
        write_run(run_inprocess(small_study("rounds=1", f"output_dir={tmp_path / name}")))
        model = tmp_path / name / "model"
        weights = torch.load(model / "weights.pt", weights_only=True)["state_dict"]
        contents.append((weights, json.loads((model / "preprocessing.json").read_text())))
    (weights_a, prep_a), (weights_b, prep_b) = contents
    assert prep_a == prep_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    signers = {(tmp_path / n / "model" / "signer.pub").read_bytes() for n in ("a", "b")}
    assert len(signers) == 2  # each simulated run signs with a key of its own
