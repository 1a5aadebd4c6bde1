"""The node's validation split for early stopping (:mod:`medfed.models.holdout`): carved
once per study from its training rows; the received model's statistics on it (``val-...``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from medfed.client import node
from medfed.models.holdout import carve, settings
from medfed.models.pipeline import PreparedSite, site_key, test_statistics


@lru_cache(maxsize=16)
def split(
    config_json: str, statistics_json: str, index: int
) -> tuple[PreparedSite, np.ndarray | None, np.ndarray | None]:
    """The site to train on and its validation rows (``None`` without early stopping)."""
    study, _, _ = node.study_parts(config_json, statistics_json)
    site = node.prepared_site(config_json, statistics_json, index)
    patience, _, fraction = settings(study)
    if patience is None:
        return site, None, None
    key = site_key(site.name)  # the same split simulated or deployed
    return carve(site, fraction, seed=int(study["seed"]) + 104729 * (key + 1))


def statistics(model: torch.nn.Module, context: Any, index: int) -> dict[str, Any]:
    """``val-`` statistics of ``model`` on this node's validation rows ({} when off)."""
    config_json, statistics_json = node.received_study(context)
    _, x_val, y_val = split(config_json, statistics_json, index)
    if x_val is None or y_val is None:
        return {}
    study, schema, stats = node.study_parts(config_json, statistics_json)
    sums = test_statistics(model, x_val, y_val, schema, stats, int(study["evaluate"]["auroc_bins"]))
    return {f"val-{key}": value for key, value in sums.items()}
