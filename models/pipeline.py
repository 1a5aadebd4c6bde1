"""One hospital's training pipeline, shared by the federated node and the baselines.

The federated ClientApp, the pooled baseline and the local-only baseline all call these functions,
so the three arms of a comparison differ only in *which rows* they train on and *how many steps*
they take -- never in encoding, model, loss or optimiser. No Flower here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from medfed.models.encoding import (
    Encoder,
    GlobalStats,
    encode_target,
    merge_statistics,
    site_statistics,
)
from medfed.models.imputation import statistics_options, wants_histograms
from medfed.models.metrics import metric_statistics
from medfed.models.nets import build_model, output_layer, predict_output
from medfed.models.schema import TaskSchema, task_from_dict
from medfed.models.training import loss_function, make_loader, make_optimizer, seed_torch, train


@dataclass(frozen=True)
class PreparedSite:
    """A hospital's rows encoded for training with the study's statistics."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def study_schema(study: dict[str, Any]) -> TaskSchema:
    """The task schema of a study configuration (its ``task`` section)."""
    return task_from_dict(study["task"], source=f"task '{study['task'].get('name')}'")


def own_statistics(
    train: pd.DataFrame, schema: TaskSchema, min_cell: int, study: dict[str, Any] | None = None
) -> GlobalStats:
    """A site's own statistics in global form (per-site normalisation, local-only baseline),
    imputed as ``study`` says (default: means and modes)."""
    if study is None:
        return merge_statistics([site_statistics(train, schema)], min_cell=min_cell)
    return merge_statistics(
        [site_statistics(train, schema, histograms=wants_histograms(study))],
        **statistics_options(study),
    )


def prepare_site(
    name: str,
    train_rows: pd.DataFrame,
    test_rows: pd.DataFrame,
    schema: TaskSchema,
    stats: GlobalStats,
    study: dict[str, Any],
) -> PreparedSite:
    """Encode a site's rows with ``stats`` (or with its own, when normalisation is per site)."""
    prep = study["preprocessing"]
    if prep["normalisation"] == "site":
        stats = own_statistics(train_rows, schema, int(prep["min_cell"]), study)
    encoder = Encoder(schema, stats, missing_indicators=bool(prep["missing_indicators"]))
    return PreparedSite(
        name,
        encoder.transform(train_rows),
        encode_target(train_rows, schema),
        encoder.transform(test_rows),
        encode_target(test_rows, schema),
    )


def n_inputs(schema: TaskSchema, stats: GlobalStats, study: dict[str, Any]) -> int:
    """Width of the encoded feature vector for this study."""
    return Encoder(
        schema, stats, missing_indicators=bool(study["preprocessing"]["missing_indicators"])
    ).n_inputs


def new_model(
    schema: TaskSchema, stats: GlobalStats, width: int, study: dict[str, Any] | None = None
) -> torch.nn.Module:
    """The study's model, its output layer initialised from the round-0 statistics
    (:func:`~medfed.models.nets.output_layer`), with local normalisation layers when the study
    personalises with ``fedbn``."""
    if study is not None and (study.get("personalise") or {}).get("method") == "fedbn":
        from medfed.models.personal import build_norm_mlp

        return build_norm_mlp(
            schema, width, target_offset=output_layer(schema, stats)["target_offset"]
        )
    return build_model(schema, width, **output_layer(schema, stats))


def site_key(name: str) -> int:
    """A hospital's identity in every seed it uses: the first 4 bytes of the SHA-256 of its site
    name (the card's ``name``; ``hospital-i`` for a synthetic hospital), as an integer.

    Why the name and not a position: the name is the one thing a site has that is the same in
    simulation (where Flower gives it a ``partition-id``) and in deployment (where its node knows
    only its own card, and the coordinator's node ids are random). A position assigned by the
    coordinator from the sorted names would change whenever a site joins late, drops out or is
    evaluation-only, and would need a per-node train config; the name needs nothing sent and is
    already unique in a study (two sites with one name are refused in round 0). So the same seed
    gives every site the same shuffling, validation split, initial local models and simulated
    DP noise on every engine (the promise of reproducibility).
    """
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big")


def round_seed(seed: int, key: int, server_round: int) -> int:
    """A seed for one hospital's work in one round, from the study seed and its
    :func:`site_key`."""
    return int(np.random.SeedSequence([seed, key, server_round]).generate_state(1)[0])


def test_statistics(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    schema: TaskSchema,
    stats: GlobalStats,
    bins: int,
) -> dict[str, float | list[float]]:
    """Additive test statistics of ``model`` on ``(x, y)`` (see :mod:`medfed.models.metrics`)."""
    model.eval()
    with torch.no_grad():
        output = predict_output(schema, model(torch.from_numpy(x)))
    return metric_statistics(schema, y, output.numpy(), loss_scale=stats.loss_scale, bins=bins)


def rows_test_statistics(
    model: torch.nn.Module,
    rows: pd.DataFrame,
    schema: TaskSchema,
    stats: GlobalStats,
    study: dict[str, Any],
) -> dict[str, float | list[float]]:
    """:func:`test_statistics` of ``model`` on raw ``rows``, encoded with ``stats`` as the study
    encodes (the cross-site matrix scores a hospital's model on another's rows this way, at the
    coordinator in simulation and at the scoring node in deployment)."""
    missing = bool(study["preprocessing"]["missing_indicators"])
    encoder = Encoder(schema, stats, missing_indicators=missing)
    x, y = encoder.transform(rows), encode_target(rows, schema)
    return test_statistics(model, x, y, schema, stats, int(study["evaluate"]["auroc_bins"]))


def local_only_model(
    train_rows: pd.DataFrame, schema: TaskSchema, study: dict[str, Any], key: int, steps: int
) -> tuple[torch.nn.Module, GlobalStats, Encoder]:
    """The local-only model of the hospital whose :func:`site_key` is ``key``: its own
    statistics, initial weights and shuffling seeded with ``seed + key + 1``, trained for the
    ``steps`` it took in the federation (the equal-work rule). The node's benefit table and the
    coordinator's cross-site matrix both build it here, so they score the very same model."""
    prep = study["preprocessing"]
    own = own_statistics(train_rows, schema, int(prep["min_cell"]), study)
    encoder = Encoder(schema, own, missing_indicators=bool(prep["missing_indicators"]))
    seed = int(study["seed"]) + key + 1
    seed_torch(seed)  # the initial weights too
    model = new_model(schema, own, encoder.n_inputs)
    x, y = encoder.transform(train_rows), encode_target(train_rows, schema)
    local_training(model, x, y, schema, study, own, seed=seed, steps=max(steps, 1))
    return model, own, encoder


def round_study(study: dict[str, Any], server_round: int) -> dict[str, Any]:
    """``study`` with ``train.lr`` at round ``server_round``'s value of ``train.lr_schedule``
    (:func:`medfed.models.training.lr_factor`): what a hospital trains that round with. One
    place sets it, so plain training, DP-SGD (whose step-noise cap then applies to it) and
    SCAFFOLD's control variates all use the same rate."""
    from medfed.models.settings import lr_schedule_of
    from medfed.models.training import lr_factor

    train = study["train"]
    factor = lr_factor(lr_schedule_of(train), server_round, int(study["rounds"]))
    if factor == 1.0:
        return study
    return {**study, "train": {**train, "lr": float(train["lr"]) * factor}}


def local_training(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    schema: TaskSchema,
    study: dict[str, Any],
    stats: GlobalStats,
    *,
    seed: int,
    steps: int | None = None,
    proximal_mu: float = 0.0,
    step_hook: Callable[[], None] | None = None,
    lr_factor: Callable[[int], float] | None = None,
) -> dict[str, float]:
    """Train ``model`` on ``(x, y)`` with the study's settings; return additive statistics.

    ``lr_factor(i)`` scales ``train.lr`` at step ``i`` (the baselines' share of the study's
    ``train.lr_schedule``; a federated round gets its rate from :func:`round_study` instead).

    ``steps`` overrides the study's ``local_steps``/``local_epochs`` (the baselines use it to do
    exactly the federation's number of SGD steps). ``step_hook`` runs before every optimiser
    step (a torch step pre-hook; SCAFFOLD's correction, :mod:`medfed.client.scaffold`).
    """
    cfg = study["train"]
    seed_torch(seed)
    loader = make_loader(x, y, batch_size=int(cfg["batch_size"]), seed=seed)
    if steps is None and cfg.get("local_steps") is not None:
        steps = int(cfg["local_steps"])
    optimizer = None
    if step_hook is not None:
        optimizer = make_optimizer(
            model,
            str(cfg["optimizer"]),
            lr=float(cfg["lr"]),
            momentum=float(cfg["momentum"]),
            weight_decay=float(cfg["weight_decay"]),
        )
        optimizer.register_step_pre_hook(lambda *_: step_hook())
    result = train(
        model,
        loader,
        loss_function(schema, stats),
        lr=float(cfg["lr"]),
        steps=steps,
        epochs=None if steps is not None else int(cfg["local_epochs"]),
        optimizer=str(cfg["optimizer"]),
        momentum=float(cfg["momentum"]),
        weight_decay=float(cfg["weight_decay"]),
        proximal_mu=proximal_mu,
        optimizer_obj=optimizer,
        lr_at=None if lr_factor is None else (lambda i: float(cfg["lr"]) * lr_factor(i)),
    )
    return {
        "train-loss-sum": float(result["loss"]) * float(result["examples"]),
        "train-examples": float(result["examples"]),
        "train-steps": float(result["steps"]),
    }
