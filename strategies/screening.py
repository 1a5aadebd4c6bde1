"""Update screening: the server's check of every hospital's reply before it reaches aggregation.

A hospital's update can be garbage for honest reasons (a diverged optimiser, a bug, a corrupted
transfer) or dishonest ones (a poisoned model). Every robust aggregator has a breaking point and
FedAvg has none, so medfed first rejects what no honest update looks like:

* **wrong form**: array names, shapes or dtypes other than those of the global model sent;
* **non-finite values**: any NaN or infinity;
* **an inflated example count**: more training examples than the hospital declared in round 0
  (FedAvg weights by that count, so a node claiming a billion rows would own the model);
* **absurd norms**: an update ``||w_k - w||`` above ``screening.max_update_norm``, or more than
  ``screening.max_norm_ratio`` times the median norm of the other hospitals' updates that round.

A rejected reply is dropped from aggregation, logged with the hospital's name and recorded in the
round (``summary.json`` lists it under ``rejected``); the hospital still counts as having missed
the round. Screening needs each update in the clear, so it cannot run under secure aggregation
(the server only ever holds the masked sum there).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.app.typing import MetricRecordValues

from medfed.infra.records import scalar

LOG = logging.getLogger("medfed")


@dataclass(frozen=True)
class ScreeningConfig:
    """The ``screening`` section of a study (``null`` turns a check off)."""

    max_norm_ratio: float | None = 10.0
    max_update_norm: float | None = None

    @classmethod
    def from_study(cls, study: Mapping[str, Any]) -> ScreeningConfig:
        section = study.get("screening") or {}
        values = {}
        for key in ("max_norm_ratio", "max_update_norm"):
            raw = section.get(key, getattr(cls, key))
            values[key] = None if raw is None else float(raw)
        return cls(**values)


def _form_problem(received: ArrayRecord, sent: ArrayRecord) -> str | None:
    if list(received) != list(sent):
        return f"its arrays {sorted(received)} are not the model's layers {sorted(sent)}"
    for key in sent:
        a, b = sent[key], received[key]
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            return (
                f"array '{key}' has shape {tuple(b.shape)} {b.dtype}, the model's is "
                f"{tuple(a.shape)} {a.dtype}"
            )
    return None


def update_norm(received: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]) -> float:
    """L2 norm of the whole update ``w_k - w`` over every array (float64 accumulation)."""
    total = 0.0
    for key, value in sent.items():
        diff = received[key].astype(np.float64) - value.astype(np.float64)
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return math.sqrt(total)


def screen_replies(
    replies: list[Message],
    sent: ArrayRecord,
    declared: Mapping[int, int],
    config: ScreeningConfig,
    name: Callable[[Message], str],
) -> tuple[list[Message], dict[str, str]]:
    """Split train ``replies`` into the ones fit to aggregate and the rejected ones.

    Parameters
    ----------
    replies
        The round's train replies; error replies pass through untouched (they are not updates).
    sent
        The global weights the hospitals received this round.
    declared
        Training rows each node declared in round 0, by node id.
    config
        The thresholds.
    name
        The hospital's name for a reply (for the log and the reasons).

    Returns
    -------
    The replies to aggregate, and ``{hospital: reason}`` for every rejected one.
    """
    rejected: dict[str, str] = {}
    candidates: list[tuple[Message, float]] = []
    base = {key: array.numpy() for key, array in sent.items()}
    passed: list[Message] = []
    for reply in replies:
        if reply.has_error():
            passed.append(reply)
            continue
        reason, norm = _check(reply, sent, base, declared, config)
        if reason is None:
            candidates.append((reply, norm))
        else:
            rejected[name(reply)] = reason
    norms = [norm for _, norm in candidates]
    for i, (reply, norm) in enumerate(candidates):
        others = norms[:i] + norms[i + 1 :]
        median = float(np.median(others)) if others else 0.0
        limit = (
            config.max_norm_ratio * median if config.max_norm_ratio is not None and others else None
        )
        if limit is not None and norm > limit:
            rejected[name(reply)] = (
                f"update norm {norm:.4g} is more than "
                f"screening.max_norm_ratio={config.max_norm_ratio:g} times "
                f"the median norm of the others ({median:.4g}; limit {limit:.4g})"
            )
        else:
            passed.append(reply)
    for hospital, reason in rejected.items():
        LOG.warning("rejected the update of %s: %s", hospital, reason)
    return passed, {h: f"update rejected: {r}" for h, r in rejected.items()}


def _check(
    reply: Message,
    sent: ArrayRecord,
    base: Mapping[str, np.ndarray],
    declared: Mapping[int, int],
    config: ScreeningConfig,
) -> tuple[str | None, float]:
    """The first problem of one reply (or ``None``) and its update norm."""
    records = reply.content.array_records
    if len(records) != 1:
        return f"it carries {len(records)} array records instead of 1", math.nan
    received = next(iter(records.values()))
    problem = _form_problem(received, sent)
    if problem is not None:
        return problem, math.nan
    arrays = {key: array.numpy() for key, array in received.items()}
    for key, value in arrays.items():
        if not np.all(np.isfinite(value)):
            return f"array '{key}' holds NaN or infinite values", math.nan
    metrics: Mapping[str, MetricRecordValues] = next(
        iter(reply.content.metric_records.values()), {}
    )
    examples = float(scalar(metrics.get("num-examples", math.nan)))
    limit = declared.get(reply.metadata.src_node_id)
    if not math.isfinite(examples) or examples <= 0:
        return f"num-examples={examples:g} is not a positive count", math.nan
    if limit is not None and examples > limit:
        return (
            f"it claims {examples:g} training examples but declared {limit} in round 0",
            math.nan,
        )
    norm = update_norm(arrays, base)
    if config.max_update_norm is not None and norm > config.max_update_norm:
        return (
            f"update norm {norm:.4g} exceeds screening.max_update_norm={config.max_update_norm:g}"
        ), norm
    return None, norm
