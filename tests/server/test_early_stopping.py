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
