"""Personalised federated learning: which weights stay at a hospital, and local fine-tuning.

Three methods (``personalise.method``), each ending with ``personalise.epochs`` passes of local
fine-tuning of the whole model on the hospital's own training rows (0: none):

* ``finetune``: plain local fine-tuning of the final global model (Wang et al., "Federated
  Evaluation of On-device Personalization", arXiv:1910.10252, 2019). Every weight is shared during
  the federation; the personal model is the global one adapted for a few epochs.
* ``fedper``: a shared body with a local head (Arivazhagan et al., "Federated Learning with
  Personalization Layers", arXiv:1912.00818, 2019). The output layer of the MLP is the hospital's
  own: it is trained at the node every round but never sent, so the server aggregates only the
  body and each hospital keeps a head fitted to its own case mix.
* ``fedbn``: local normalisation layers (Li et al., "FedBN: Federated Learning on Non-IID
  Features via Local Batch Normalization", ICLR 2021). The MLP gets a normalisation layer after
  every hidden Linear; its scale and shift stay at the node. BatchNorm is not Opacus-compatible
  (it mixes rows), so the layer is ``LayerNorm``: the same local-affine idea on per-row
  statistics. DP-SGD clips such models with Opacus' hooks (``dp_clip`` covers Linear and
  element-wise layers only): :func:`medfed.models.privacy.dp_train` chooses that itself.

No Flower here: the node (:mod:`medfed.client.personal`) keeps the local weights between rounds.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from medfed.models.schema import TaskSchema
from medfed.models.training import loss_function, make_loader, seed_torch, train

METHODS = ("none", "finetune", "fedper", "fedbn")
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm)


def settings(study: dict[str, Any]) -> tuple[str, int]:
    """The study's ``personalise.method`` and ``personalise.epochs`` (``none``, 0 if absent)."""
    section = study.get("personalise") or {}
    return str(section.get("method", "none")), int(section.get("epochs", 0) or 0)


def config_problem(study: dict[str, Any]) -> str | None:
    """One line naming a bad ``personalise.*`` setting, or ``None`` when they are usable."""
    section = study.get("personalise") or {}
    method, epochs = section.get("method", "none"), section.get("epochs", 0)
    if method not in METHODS:
        return f"personalise.method must be one of {', '.join(METHODS)}, got {method!r}"
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        return f"personalise.epochs must be a whole number of epochs (0: none), got {epochs!r}"
    if method in ("fedper", "fedbn") and study["task"]["model"]["family"] != "mlp":
        return (
            f"personalise.method={method} needs an MLP with a shared body "
            f"(task.model.family=mlp), task '{study['task']['name']}' has "
            f"{study['task']['model']['family']!r}"
        )
    if method != "none" and epochs and study["privacy"]["name"] == "dpsgd":
        return (
            "personalise.epochs must be 0 with privacy=dpsgd: local fine-tuning outside "
            "DP-SGD would not be accounted in the node's privacy ledger"
        )
    return None


def build_norm_mlp(
    schema: TaskSchema, n_inputs: int, *, target_offset: float = 0.0
) -> nn.Sequential:
    """The task's MLP with a ``LayerNorm`` after every hidden ``Linear`` (for ``fedbn``).

    Same outputs as :func:`medfed.models.nets.build_model`; weights from torch's global generator.
    """
    layers: list[nn.Module] = []
    width = n_inputs
    for hidden in schema.model.hidden:
        layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU()]
        width = hidden
    head = nn.Linear(width, schema.target.n_outputs)
    with torch.no_grad():
        head.bias.fill_(target_offset)
    layers.append(head)
    if schema.target.n_outputs == 1:
        layers.append(nn.Flatten(start_dim=0))
    return nn.Sequential(*layers)


def local_keys(model: nn.Module, method: str) -> list[str]:
    """The ``state_dict`` keys that stay at the hospital under ``method`` (none for ``finetune``).

    ``fedper``: the parameters of the last ``Linear`` (the head); ``fedbn``: those of every
    ``LayerNorm``/``GroupNorm``.
    """
    if method == "fedper":
        heads = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        chosen = heads[-1:]
    elif method == "fedbn":
        chosen = [name for name, module in model.named_modules() if isinstance(module, NORM_LAYERS)]
    else:
        return []
    return [key for key in model.state_dict() if key.rsplit(".", 1)[0] in chosen]


def _held_out_loss(model: nn.Module, loss_fn: Any, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        model.eval()
        return float(loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y)))


def fine_tune(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    schema: TaskSchema,
    study: dict[str, Any],
    loss_scale_stats: Any,
    *,
    epochs: int,
    seed: int,
    validation: float = 0.2,
) -> dict[str, float]:
    """Up to ``epochs`` passes of the study's optimiser over ``(x, y)``, keeping the best epoch.

    A seeded ``validation`` fraction of the rows (at least one) is held out; after every epoch the
    loss on it is compared with the best so far (epoch 0: the model as received) and ``model``
    ends with the best weights, so fine-tuning never leaves a site with a model worse on its
    held-out rows than the federated one (a small site with the federation's learning rate can
    diverge otherwise). The test rows are not touched. Returns the epochs kept and that loss.
    """
    if epochs < 1 or len(y) < 2:
        return {"epochs": 0, "validation_loss": math.nan}
    cfg = study["train"]
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, int(round(validation * len(y))))
    val, fit = order[:n_val], order[n_val:]
    loss_fn = loss_function(schema, loss_scale_stats)
    seed_torch(seed)
    loader = make_loader(x[fit], y[fit], batch_size=int(cfg["batch_size"]), seed=seed)
    chosen, best = 0, _held_out_loss(model, loss_fn, x[val], y[val])
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, epochs + 1):
        train(
            model,
            loader,
            loss_fn,
            lr=float(cfg["lr"]),
            epochs=1,
            optimizer=str(cfg["optimizer"]),
            momentum=float(cfg["momentum"]),
            weight_decay=float(cfg["weight_decay"]),
        )
        if (current := _held_out_loss(model, loss_fn, x[val], y[val])) < best:
            chosen, best, best_state = epoch, current, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {"epochs": chosen, "validation_loss": best}
