"""The model card's aggregates: small cells suppressed, privacy stated in plain words."""

from __future__ import annotations

from medfed.models.release.model_card import class_balance, privacy_guarantee, suppressed
from medfed.models.schema import load_task


def test_small_class_counts_are_suppressed_but_zero_and_large_ones_are_shown() -> None:
    assert [suppressed(n, 5) for n in (0, 1, 4, 5, 17)] == [0, "<5", "<5", 5, 17]
    schema = load_task("diagnosis")
    balance = class_balance(
        schema,
        {"kind": "binary", "classes": [3, 40]},
        {"tp": 2.0, "fn": 1.0, "tn": 10.0, "fp": 0.0},
        min_cell=5,
    )
    assert balance == {"train": {"no": "<5", "yes": 40}, "test": {"no": 10, "yes": "<5"}}


def test_multiclass_test_counts_are_the_confusion_rows_and_costs_give_means() -> None:
    treatment = load_task("treatment")
    n = len(treatment.target.classes)
    confusion = [0.0] * (n * n)
    confusion[0], confusion[1], confusion[n + 1] = 6.0, 2.0, 9.0  # row 0: 8, row 1: 9
    balance = class_balance(treatment, None, {"confusion": confusion}, min_cell=5)
    assert list(balance["test"].values())[:2] == [8, 9]
    pricing = load_task("pricing")
    assert class_balance(pricing, {"count": 4, "sum_y": 100.0}, {"n": 2, "sum_y": 30.0}, 5) == {
        "train_mean": 25.0,
        "test_mean": 15.0,
    }


def test_privacy_is_stated_per_mechanism_or_as_none() -> None:
    assert privacy_guarantee({"name": "none"}, {}, False) == {
        "mechanism": "no differential privacy",
        "secure_aggregation": False,
    }
    dp = privacy_guarantee(
        {
            "name": "dpsgd",
            "noise_multiplier": 1.1,
            "max_grad_norm": 1.0,
            "accountant": "rdp",
            "target_epsilon": None,
        },
        {"epsilon": 2.5, "delta": 1e-5},
        True,
    )
    assert dp == {
        "mechanism": "sample-level DP-SGD (Opacus) at the site",
        "epsilon": 2.5,
        "delta": 1e-5,
        "accountant": "rdp",
        "clip_norm": 1.0,
        "noise_multiplier": 1.1,
        "secure_aggregation": True,
    }
