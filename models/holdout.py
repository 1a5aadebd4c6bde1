"""Early stopping without touching the test split: a validation split carved from each site's
training rows, and the bookkeeping of the best round.

With ``early_stopping.patience`` set, every node holds out a seeded ``early_stopping.validation``
fraction of its *training* rows (:func:`carve`), trains on the rest, and reports additive
statistics of the received global model on the held-out rows (keys ``val-...``). The server sums
them into the federation's validation metric per round (:class:`BestRound`), stops after
``patience`` rounds without improvement, and keeps the best round's weights: ``model.pt`` is that
model and the test split is scored once, on it. No Flower here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medfed.models.pipeline import PreparedSite

LOWER_IS_BETTER = ("mae", "rmse", "loss")


def settings(study: dict[str, Any]) -> tuple[int | None, str | None, float]:
    """``patience`` (None: off), ``metric`` (None: the task's primary) and ``validation``."""
    section = study.get("early_stopping") or {}
    patience = section.get("patience")
    return patience, section.get("metric"), float(section.get("validation", 0.2))


def config_problem(study: dict[str, Any]) -> str | None:
    """One line naming a bad ``early_stopping.*`` setting, or ``None``."""
    patience, metric, fraction = settings(study)
    if patience is None:
        return None
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
        return f"early_stopping.patience must be a whole number of rounds >= 1, got {patience!r}"
    metrics = [*study["task"].get("metrics", []), "loss"]
    if metric is not None and metric not in metrics:
        return f"early_stopping.metric must be one of {', '.join(metrics)}, got {metric!r}"
    if not 0.0 < fraction < 1.0:
        return f"early_stopping.validation must be a fraction in (0, 1), got {fraction!r}"
    if study.get("secure_aggregation"):
        return "early_stopping cannot run with secure_aggregation=true (no per-node statistics)"
    return None


def carve(
    site: PreparedSite, fraction: float, seed: int
) -> tuple[PreparedSite, np.ndarray, np.ndarray]:
    """The site without its validation rows, and those rows ``(x_val, y_val)`` (seeded; at
    least one row each side)."""
    n = len(site.y_train)
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(fraction * n))), n - 1)
    val, fit = np.sort(order[:n_val]), np.sort(order[n_val:])
    rest = replace(site, x_train=site.x_train[fit], y_train=site.y_train[fit])
    return rest, site.x_train[val], site.y_train[val]


@dataclass
class BestRound:
    """The best round so far by the federation's validation metric."""

    metric: str
    patience: int
    history: list[tuple[int, float]] = field(default_factory=list)
    best_round: int | None = None
    best_value: float = math.nan

    def observe(self, server_round: int, value: float) -> bool:
        """Record the validation metric of the model after ``server_round``; ``True`` when it
        is the best so far (ties keep the earlier round)."""
        self.history.append((server_round, value))
        if not math.isfinite(value):
            return False
        better = (
            value < self.best_value if self.metric in LOWER_IS_BETTER else value > self.best_value
        )
        if self.best_round is None or better:
            self.best_round, self.best_value = server_round, value
            return True
        return False

    def should_stop(self) -> bool:
        """``patience`` rounds observed since the best one."""
        if self.best_round is None or not self.history:
            return False
        return self.history[-1][0] - self.best_round >= self.patience

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` records under ``early_stopping``."""
        return {
            "metric": self.metric,
            "patience": self.patience,
            "best_round": self.best_round,
            "best_validation": self.best_value,
            "validation_per_round": [{"round": r, self.metric: v} for r, v in self.history],
        }
