"""Early stopping's rules: the carved validation split and the best-round bookkeeping."""

from __future__ import annotations

import numpy as np

from medfed.models.holdout import BestRound, carve, config_problem
from medfed.models.pipeline import PreparedSite


def _site(n: int) -> PreparedSite:
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    return PreparedSite("h", x, np.arange(n).astype(np.float32), x[:2], np.zeros(2, np.float32))


def test_carve_is_seeded_disjoint_and_keeps_the_test_rows():
    rest, x_val, y_val = carve(_site(50), 0.2, seed=3)
    assert len(y_val) == 10 and len(rest.y_train) == 40
    assert set(y_val.tolist()).isdisjoint(rest.y_train.tolist())
    assert sorted([*y_val.tolist(), *rest.y_train.tolist()]) == list(range(50))
    assert np.array_equal(rest.x_test, _site(50).x_test)
    again = carve(_site(50), 0.2, seed=3)[2]
    assert np.array_equal(again, y_val)
    assert len(carve(_site(2), 0.9, seed=0)[2]) == 1  # never every row


def test_best_round_by_hand_for_both_directions():
    acc = BestRound("accuracy", patience=2)
    for server_round, value in enumerate([0.5, 0.7, 0.6, 0.7]):
        acc.observe(server_round, value)
    assert acc.best_round == 1 and acc.best_value == 0.7  # a tie keeps the earlier round
    assert acc.should_stop()  # rounds 2 and 3 without improvement
    acc.observe(4, 0.8)
    assert acc.best_round == 4 and not acc.should_stop()
    rmse = BestRound("rmse", patience=3)
    for server_round, value in enumerate([9.0, 7.0, float("nan"), 8.0]):
        rmse.observe(server_round, value)
    assert rmse.best_round == 1 and not rmse.should_stop()


def test_bad_settings_are_one_line(small_study):
    study = small_study()
    study["early_stopping"] = {"patience": 0, "metric": None, "validation": 0.2}
    assert config_problem(study).startswith("early_stopping.patience must be")
    study["early_stopping"] = {"patience": 2, "metric": "auc", "validation": 0.2}
    assert config_problem(study).startswith("early_stopping.metric must be one of accuracy")
    study["early_stopping"] = {"patience": 2, "metric": None, "validation": 1.0}
    assert "early_stopping.validation" in config_problem(study)
