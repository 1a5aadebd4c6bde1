"""Early stopping through the real apps on the in-process engine."""

from __future__ import annotations

import torch


def test_model_is_the_best_round_and_the_test_split_is_scored_once(
    small_study, run_inprocess, tmp_path
):
    study = small_study(
        "task=treatment",
        "rounds=12",
        "train.lr=0.5",
        "early_stopping.patience=1",
        f"output_dir={tmp_path}",
    )
    result = run_inprocess(study)
    summary = result.early_stopping
    history = summary["validation_per_round"]
    values = [row["accuracy"] for row in history]
    assert summary["best_validation"] == max(values)
    best = summary["best_round"]
    assert values.index(max(values)) == [row["round"] for row in history].index(best)
    # patience 1: a round's model is validated when the next round starts, so the study stops
    # one round after the first round without improvement (or runs out of rounds)
    last = history[-1]["round"]
    assert last == result.final.server_round
    assert last <= best + 2 or last == 12
    # the test split: no per-round test metrics, one final evaluation
    assert all(not r.hospital_metrics for r in result.rounds[:-1])
    assert result.final.hospital_metrics and result.final.global_metrics
    # the final weights are the best round's, not the last round's (in checkpoint.pt)
    from medfed.models.flat import pack
    from medfed.server.study.checkpoint import FILENAME, load

    last_weights = load(tmp_path / FILENAME, None)["state"]["float32"]
    chosen = pack(result.final_state)["float32"]
    assert best < last  # this seed: the best round is not the last (so the check below bites)
    assert not torch.equal(chosen, last_weights)


def test_without_patience_nothing_changes(small_study, run_inprocess):
    result = run_inprocess(small_study("rounds=2"))
    assert result.early_stopping == {}
    assert result.rounds[1].hospital_metrics  # per-round test metrics as before


def test_the_threshold_is_f1_optimal_on_the_nodes_validation_rows(run_inprocess, tmp_path):
    """The threshold the coordinator records is the one the nodes' own validation rows give
    the kept model, recomputed here from each node's split, coarsened as the node sends it
    (the default policy's min_cell_count 5)."""
    import json

    from medfed.client import validation
    from medfed.client.disclosure import coarsen_histograms
    from medfed.models.calibration import f1_optimal_threshold
    from medfed.models.pipeline import n_inputs, new_model, test_statistics
    from medfed.server.study.config import compose_study

    study = compose_study(
        [
            "federation.hospitals=3",
            "federation.min_size=250",
            "federation.max_size=300",
            "rounds=3",
            "early_stopping.patience=2",
            "quiet=true",
            f"output_dir={tmp_path}",
        ]
    )
    result = run_inprocess(study)
    chosen = result.early_stopping["threshold"]

    model = new_model(
        result.schema, result.statistics, n_inputs(result.schema, result.statistics, study)
    )
    model.load_state_dict(result.final_state)  # the best round's model
    config_json, stats_json = json.dumps(study), json.dumps(result.statistics.to_dict())
    pos, neg = [0.0] * 100, [0.0] * 100
    for index in range(3):
        _, x_val, y_val = validation.split(config_json, stats_json, index)
        sums = test_statistics(model, x_val, y_val, result.schema, result.statistics, 100)
        site_pos, site_neg = coarsen_histograms(sums["hist_pos"], sums["hist_neg"], 5)
        assert (site_pos, site_neg) != (sums["hist_pos"], sums["hist_neg"])  # it coarsens
        pos = [a + b for a, b in zip(pos, site_pos, strict=True)]
        neg = [a + b for a, b in zip(neg, site_neg, strict=True)]
    value, f1 = f1_optimal_threshold(pos, neg)
    assert (chosen["value"], chosen["f1"]) == (value, f1)
    assert chosen["rows"] == sum(pos) + sum(neg) and chosen["value"] != 0.5  # it bites here


def test_a_yes_no_study_without_validation_split_keeps_half(small_study, run_inprocess):
    from medfed.server.outputs.bundle import NO_VALIDATION, _decision

    result = run_inprocess(small_study("rounds=1"))
    assert result.early_stopping == {}
    decision = _decision(result)
    assert decision["threshold"] == 0.5 and decision["threshold_source"] == NO_VALIDATION
