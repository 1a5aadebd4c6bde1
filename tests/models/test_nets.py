"""Model families: shapes, initialisation, output mapping, Opacus compatibility."""

from __future__ import annotations

import math

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from medfed.models.encoding import GlobalStats
from medfed.models.nets import build_model, output_layer, predict_output
from medfed.models.schema import task_from_dict

FEATURES = [{"name": "x", "type": "numeric"}]


def schema(target: dict, model: dict):
    return task_from_dict({"name": "t", "features": FEATURES, "target": target, "model": model})


BINARY = {"name": "y", "type": "binary"}
MULTI = {"name": "y", "type": "multiclass", "classes": ["a", "b", "c", "d"]}
COST = {"name": "y", "type": "continuous"}


def test_logreg_is_one_linear_layer_with_squeezed_binary_output():
    model = build_model(schema(BINARY, {"family": "logreg"}), 5)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 1)]
    assert model(torch.zeros(7, 5)).shape == (7,)
    assert model(torch.zeros(0, 5)).shape == (0,)


def test_multiclass_outputs_one_logit_per_class():
    model = build_model(schema(MULTI, {"family": "logreg"}), 3)
    assert model(torch.zeros(2, 3)).shape == (2, 4)


def test_mlp_layers_follow_the_hidden_widths():
    model = build_model(schema(MULTI, {"family": "mlp", "hidden": [8, 6]}), 3)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [8, 6, 4]


def test_continuous_output_starts_at_the_target_offset():
    task = schema(COST, {"family": "glm", "loss": "tweedie"})
    model = build_model(task, 4, target_offset=9.0)
    with torch.no_grad():
        model[0].weight.zero_()
        raw = model(torch.randn(3, 4))
    torch.testing.assert_close(raw, torch.full((3,), 9.0))
    torch.testing.assert_close(predict_output(task, raw), torch.full((3,), math.exp(9.0)))
    mlp = build_model(schema(COST, {"family": "mlp", "loss": "mse_log"}), 4, target_offset=2.5)
    assert mlp[-2].bias.item() == 2.5


def test_predict_output_leaves_logits_alone():
    task = schema(BINARY, {"family": "logreg"})
    logits = torch.tensor([-1.0, 3.0])
    assert predict_output(task, logits) is logits


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize(
    "target,model",
    [
        (BINARY, {"family": "mlp", "hidden": [4]}),
        (MULTI, {"family": "mlp", "hidden": [4, 4]}),
        (COST, {"family": "glm"}),
    ],
)
def test_models_are_opacus_compatible(target, model):
    net = build_model(schema(target, model), 3)
    assert ModuleValidator.validate(net, strict=False) == []
    wrapped = GradSampleModule(net)
    wrapped(torch.randn(5, 3)).sum().backward()
    assert all(p.grad_sample.shape[0] == 5 for p in wrapped.parameters())


def test_same_seed_same_initial_weights():
    task = schema(BINARY, {"family": "mlp", "hidden": [8]})
    torch.manual_seed(3)
    a = build_model(task, 4)
    torch.manual_seed(3)
    b = build_model(task, 4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_zero_inputs_is_an_error():
    with pytest.raises(ValueError, match="n_inputs=0"):
        build_model(schema(BINARY, {"family": "logreg"}), 0)


def _stats(kind: str) -> GlobalStats:
    return GlobalStats(
        target_kind=kind, rows=10, target_log_mean=5.0, target_log_std=0.5, target_mean=200.0
    )


def test_output_layer_starts_each_loss_at_its_best_constant():
    tweedie = schema(COST, {"family": "mlp", "hidden": [4], "loss": "tweedie"})
    mse_log = schema(COST, {"family": "mlp", "hidden": [4], "loss": "mse_log"})
    # Tweedie predicts the mean through a log link: log(mean y) = log 200, not mean log1p(y) = 5
    assert output_layer(tweedie, _stats("continuous")) == {
        "target_offset": pytest.approx(math.log(200.0)),
        "output_range": (3.0, 7.0),
    }
    assert output_layer(mse_log, _stats("continuous"))["target_offset"] == 5.0
    assert output_layer(schema(BINARY, {"family": "logreg"}), _stats("binary")) == {
        "target_offset": 0.0
    }


def test_the_log_output_is_bounded_to_mean_plus_minus_four_sds():
    task = schema(COST, {"family": "glm", "loss": "tweedie"})
    model = build_model(task, 1, **output_layer(task, _stats("continuous")))
    assert isinstance(model[-2], nn.Hardtanh) and isinstance(model[0], nn.Linear)
    with torch.no_grad():
        model[0].weight.fill_(100.0)
        raw = model(torch.tensor([[-1.0], [0.0], [1.0]]))
    torch.testing.assert_close(raw, torch.tensor([3.0, math.log(200.0), 7.0]))
    assert list(build_model(task, 1).state_dict()) == list(model.state_dict())  # same weights
