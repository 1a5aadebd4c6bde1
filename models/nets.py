"""Model families of a task schema, built from plain, Opacus-compatible PyTorch layers.

Every model maps a float32 input matrix ``(n, n_inputs)`` to a raw output: one logit ``(n,)`` for a
binary target, one logit per class ``(n, C)`` for a multiclass target, and the log of the predicted
mean ``(n,)`` for a continuous target (log link, whatever the loss). No BatchNorm, so DP-SGD's
per-sample gradients stay per sample.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medfed.models.encoding import GlobalStats
from medfed.models.schema import TaskSchema

LOG_RANGE_SDS = 4.0


def _layers(schema: TaskSchema, n_inputs: int) -> list[nn.Module]:
    family, n_outputs = schema.model.family, schema.target.n_outputs
    if family in ("logreg", "glm"):
        return [nn.Linear(n_inputs, n_outputs)]
    if family != "mlp":
        raise ValueError(f"Unknown model family '{family}' in task '{schema.name}'.")
    layers: list[nn.Module] = []
    width = n_inputs
    for hidden in schema.model.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return [*layers, nn.Linear(width, n_outputs)]


def build_model(
    schema: TaskSchema,
    n_inputs: int,
    *,
    target_offset: float = 0.0,
    output_range: tuple[float, float] | None = None,
) -> nn.Module:
    """The task's model: ``logreg``/``glm`` (one Linear) or ``mlp`` (Linear + ReLU per width).

    Parameters
    ----------
    schema
        Gives the family, the hidden widths and the number of outputs.
    n_inputs
        Width of the encoded input (``Encoder.n_inputs``).
    target_offset
        Initial bias of the output layer. For a continuous target pass the global mean of
        ``log1p(y)`` (``GlobalStats.target_offset``), so training starts at a sensible cost level
        instead of ``exp(0) = 1``.
    output_range
        ``(low, high)`` bounds of the raw output (a ``Hardtanh`` after the last layer), or None.
        For a log-link target (:func:`output_layer`) it keeps a few noisy weights from turning a
        prediction into ``exp(50)``.

    Weights are initialised from torch's global generator: call ``set_seed`` first.
    """
    if n_inputs <= 0:
        raise ValueError(f"A model needs at least one input column, got n_inputs={n_inputs}.")
    layers = _layers(schema, n_inputs)
    with torch.no_grad():
        if isinstance(layers[-1], nn.Linear):  # always: the output layer
            layers[-1].bias.fill_(target_offset)
    if output_range is not None:
        layers.append(nn.Hardtanh(*output_range))
    if schema.target.n_outputs == 1:
        layers.append(nn.Flatten(start_dim=0))
    return nn.Sequential(*layers)


def output_offset(schema: TaskSchema, stats: GlobalStats) -> float:
    """The initial output bias: the best constant prediction for the task's loss, on the raw scale.

    A Tweedie model predicts the *mean* cost through a log link, so its best constant is
    ``log(mean y)``; ``mse_log`` fits ``log1p(y)``, whose best constant is the mean of
    ``log1p(y)``; a class target starts at 0. Why it matters: for right-skewed costs
    ``mean log1p(y)`` lies well below ``log(mean y)`` (about ``sd^2 / 2``: calibration 0.64 on the
    built-in pricing hospitals), and under DP-SGD clipping and noise slow the climb back so much
    that a 15-round study ended near its starting point (R^2 0.2 at any epsilon). Both values come
    from round-0 federated statistics (``GlobalStats``), so no row is needed.
    """
    if schema.target.kind != "continuous":
        return 0.0
    if schema.model.loss == "tweedie":
        return math.log(max(stats.target_mean, 1e-12))
    return stats.target_offset


def output_layer(schema: TaskSchema, stats: GlobalStats) -> dict[str, Any]:
    """``build_model`` keywords for the output layer: its initial bias and, for a continuous
    target, the range of its raw output (the log of the predicted cost).

    The range is the global mean of ``log1p(y)`` plus or minus ``LOG_RANGE_SDS`` standard
    deviations (round-0 statistics): for the built-in pricing task about 1/40 to 40 times the
    typical cost, beyond any row a sound model predicts. Under DP-SGD it matters: each
    hospital's update carries Gaussian noise, and through the exponential link a few noisy
    weights can give single rows predictions of millions.
    """
    out: dict[str, Any] = {"target_offset": output_offset(schema, stats)}
    if schema.target.kind == "continuous":
        spread = LOG_RANGE_SDS * max(stats.target_log_std, 1e-6)
        out["output_range"] = (stats.target_log_mean - spread, stats.target_log_mean + spread)
    return out


def predict_output(schema: TaskSchema, raw: torch.Tensor) -> torch.Tensor:
    """Map a raw model output to what :func:`metric_statistics` expects.

    Continuous: ``exp(raw)``, the predicted mean in the target's unit; classification: the logits
    unchanged.
    """
    return torch.exp(raw) if schema.target.kind == "continuous" else raw
