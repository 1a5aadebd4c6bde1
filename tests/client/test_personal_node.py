"""Personalisation through the real ClientApp on the in-process engine: local layers never leave
the node, the personalised model is stored at the node, only intervals come back."""

from __future__ import annotations

import torch

from medfed.models.benefit import BENEFIT_KEYS


def test_fedbn_norms_stay_local_and_personalised_models_are_stored(
    small_study, run_inprocess, tmp_path
):
    study = small_study(
        "task=treatment",
        "task.model.family=mlp",
        "rounds=2",
        "personalise.method=fedbn",
        "personalise.epochs=1",
        "preprocessing.normalisation=site",
        f"output_dir={tmp_path}",
    )
    result = run_inprocess(study)
    # Every node replied with the *received* LayerNorm values, so the aggregate never moved from
    # LayerNorm's initialisation (weight 1, bias 0): no local norm reached the server.
    ones, zeros = torch.ones(32), torch.zeros(32)
    assert torch.allclose(result.final_state["1.weight"], ones, rtol=0, atol=1e-6)
    assert torch.allclose(result.final_state["1.bias"], zeros, rtol=0, atol=1e-6)
    table = result.personalised
    assert table["method"] == "fedbn" and not table["failures"]
    names = [h["name"] for h in result.hospitals.values()]
    assert sorted(table["hospitals"]) == sorted(names)
    for name, row in table["hospitals"].items():
        point, low, high = row["personalised-minus-local"]
        assert low <= point <= high and name in row["sentence"]
        saved = torch.load(tmp_path / "personalised" / f"{name}.pt", weights_only=False)
        assert saved["site"] == name and saved["normalisation"] == "site"
        assert not torch.equal(saved["state_dict"]["1.weight"], torch.ones(32))  # trained here
        # Per-site normalisation: the file carries this site's own statistics, not the global.
        assert saved["statistics"] != result.statistics.to_dict()
    assert not list(tmp_path.glob("personalised/*.partial"))
    _model_pt_carries_each_sites_statistics(result, tmp_path)


def _model_pt_carries_each_sites_statistics(result, tmp_path) -> None:
    """model.pt under per-site normalisation: the server's copy of each site's statistics (from
    its round-0 aggregates) equals what the node encoded with; scoring refuses to guess."""
    import pytest

    from medfed.models.scoring import encoder_for
    from medfed.server.outputs.rundir import write_run

    write_run(result)
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    assert saved["normalisation"] == "site"
    for name, stats in saved["site_statistics"].items():
        node_side = torch.load(tmp_path / "personalised" / f"{name}.pt", weights_only=False)
        assert stats == node_side["statistics"]
        assert encoder_for(saved, result.schema, name).stats.to_dict() == stats
    with pytest.raises(ValueError, match="normalisation=site: name the site"):
        encoder_for(saved, result.schema)
    with pytest.raises(ValueError, match="no statistics for site 'elsewhere'"):
        encoder_for(saved, result.schema, "elsewhere")
    assert (tmp_path / "cross_site.csv").exists() is False  # only the ServerApp computes it


def test_fedper_head_is_never_aggregated(small_study, run_inprocess, tmp_path):
    study = small_study(
        "task=pricing",
        "rounds=2",
        "personalise.method=fedper",
        "personalise.epochs=0",
        f"output_dir={tmp_path}",
    )
    from medfed.models.pipeline import n_inputs, new_model, study_schema

    result = run_inprocess(study)
    schema = study_schema(study)
    torch.manual_seed(int(study["seed"]))
    initial = new_model(
        schema, result.statistics, n_inputs(schema, result.statistics, study), study
    ).state_dict()
    # the head: a weighted mean of identical values (float rounding only); the body learnt
    assert torch.allclose(result.final_state["2.weight"], initial["2.weight"], rtol=0, atol=1e-6)
    assert (result.final_state["0.weight"] - initial["0.weight"]).abs().max() > 1e-3
    for row in result.personalised["hospitals"].values():
        # 0 fine-tuning epochs: the personalised model is the federated one with its own head.
        assert row["personalised-minus-federated"][0] == 0.0


def test_reply_guard_admits_the_benefit_keys_only():
    from medfed.client.guard import ALLOWED_METRICS

    assert BENEFIT_KEYS <= ALLOWED_METRICS
    assert not any("state" in key or "weight" in key for key in BENEFIT_KEYS)
