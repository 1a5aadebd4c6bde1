"""Personalisation methods: which weights stay local, the LayerNorm MLP, settings checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medfed.models import dp_clip
from medfed.models.personal import build_norm_mlp, config_problem, fine_tune, local_keys
from medfed.models.pipeline import study_schema


def _study(small_study, *overrides: str) -> dict:
    return small_study("task=treatment", "task.model.family=mlp", *overrides)


def test_fedper_keeps_exactly_the_output_layer(small_study):
    schema = study_schema(_study(small_study))
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, schema.target.n_outputs))
    assert local_keys(model, "fedper") == ["2.weight", "2.bias"]
    assert local_keys(model, "finetune") == [] and local_keys(model, "none") == []


def test_fedbn_mlp_has_local_layernorm_and_same_outputs_as_the_plain_mlp(small_study):
    schema = study_schema(_study(small_study))  # mlp, hidden [32], 4 classes
    model = build_norm_mlp(schema, 7, target_offset=0.5)
    assert [type(m) for m in model] == [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear]
    assert local_keys(model, "fedbn") == ["1.weight", "1.bias"]
    assert model(torch.zeros(3, 7)).shape == (3, 4)
    assert torch.all(model[-1].bias == 0.5)
    # Not in dp_clip's scope: DP-SGD clips it with Opacus' hooks (privacy._resolve_mode, logged).
    assert not dp_clip.supports(model)


def test_layernorm_mlp_trains_under_dp_sgd_via_opacus(small_study):
    from medfed.models.privacy import dp_train
    from medfed.models.training import loss_function

    schema = study_schema(_study(small_study))
    torch.manual_seed(0)
    model = build_norm_mlp(schema, 6)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = rng.integers(0, 4, size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights, report = dp_train(
        model,
        x,
        y,
        loss_function(schema),
        lr=0.1,
        batch_size=16,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        seed=1,
        history=[],
        steps=3,
        delta=1e-5,
    )
    assert report["steps"] == 3 and report["epsilon"] > 0
    assert set(weights) == set(before)  # plain keys, LayerNorm included, no Opacus prefix
    assert any(not torch.equal(weights[k], before[k]) for k in ("1.weight", "1.bias"))


def test_fine_tune_keeps_the_best_epoch_on_held_out_rows(small_study):
    study = _study(small_study)
    schema = study_schema(study)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0).astype(np.int64)
    torch.manual_seed(0)
    model = build_norm_mlp(schema, 3)
    short = fine_tune(model, x, y, schema, study, None, epochs=1, seed=0)
    longer = fine_tune(model, x, y, schema, study, None, epochs=5, seed=0)
    assert short["epochs"] == 1 and longer["validation_loss"] < short["validation_loss"]
    assert fine_tune(model, x, y, schema, study, None, epochs=0, seed=0)["epochs"] == 0
    # A learning rate that diverges: every epoch is worse, the received weights are kept.
    study["train"] = {**study["train"], "lr": 1e4}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fine_tune(model, x, y, schema, study, None, epochs=3, seed=0)
    assert result["epochs"] == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["personalise.method=ditto"], "personalise.method must be one of"),
        (["personalise.method=finetune", "personalise.epochs=-1"], "personalise.epochs"),
        (["task=diagnosis", "personalise.method=fedbn"], "needs an MLP"),
    ],
)
def test_bad_settings_name_the_setting(small_study, overrides, message):
    from medfed.server.study.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        small_study(*overrides)


def test_fine_tuning_is_refused_under_dp_but_local_layers_are_not(small_study):
    study = _study(small_study)
    study["privacy"]["name"] = "dpsgd"
    study["personalise"] = {"method": "fedper", "epochs": 2}
    assert "privacy ledger" in config_problem(study)
    study["personalise"]["epochs"] = 0
    assert config_problem(study) is None


def test_opacus_fallback_is_logged_with_its_reason(small_study, caplog):
    from medfed.models.privacy import _resolve_mode

    schema = study_schema(_study(small_study))
    with caplog.at_level("INFO", logger="medfed.models.privacy"):
        assert _resolve_mode(build_norm_mlp(schema, 4), "auto") == "hooks"
    assert "dp_clip covers Sequential MLPs of Linear and element-wise layers only" in caplog.text
