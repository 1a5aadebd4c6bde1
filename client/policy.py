"""The node policy: what one hospital lets a study do with its data, checked before every round.

A YAML mapping per node (in simulation the ``policy`` config group, with per-hospital overrides
under ``hospitals: {<hospital name>: {<key>: <value>}}``). Keys, all optional:

=============================  =================================================================
``max_epsilon_total``          epsilon this dataset may ever spend, all studies composed (null:
                               no limit)
``max_epsilon_per_study``      epsilon one study may spend (null: no limit)
``delta``                      the largest delta a study may use (null: below 1/n of the dataset)
``min_noise_multiplier``       smallest DP-SGD noise multiplier accepted
``max_grad_norm_limit``        largest clipping norm accepted (null: no limit)
``allowed_tasks``              task names this node trains (null: any)
``min_cohort``                 fewest hospitals in a round's cohort (a lone update is the model)
``require_dp``                 refuse rounds without sample-level DP (``privacy=dpsgd``).
                               Client-level DP (``privacy=central``) does not satisfy it: the
                               noise is added by the coordinator, which receives this node's
                               update unnoised (raw with ``clipping: server``, clipped but
                               unnoised with ``clipping: client``), so it protects the hospital
                               from the model's users, not its patients from the coordinator
``require_secure_aggregation`` refuse rounds without SecAgg+
``require_approval``           refuse any study whose manifest hash the node has not approved
                               (``medfed node approve``); default false here and in simulation,
                               true for ``medfed node start`` unless its policy file says false
``approvals_dir``              the folder of the audit logs holding the approvals
                               (``<site>.audit.jsonl``; null: beside a deployed node's card, or
                               ``<output_dir>/audit`` in simulation)
``min_cell_count``             smallest count a node discloses exactly (round-0 category counts,
                               per-class test cases behind its metrics; default 5)
=============================  =================================================================

:func:`check_round` returns the first limit a round would pass as a :class:`Refusal` with one
sentence (``budget: this round would bring epsilon to 1.31 > max_epsilon_total 1.0``), or None.
No Flower here: the ClientApp turns a refusal into a reply the server logs as a dropout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

OVERRIDES = "hospitals"


class PolicyError(ValueError):
    """A policy file or section is malformed; the message names it and the key."""


@dataclass(frozen=True)
class Policy:
    """A validated node policy (see the module docstring for each key)."""

    max_epsilon_total: float | None = None
    max_epsilon_per_study: float | None = None
    delta: float | None = None
    min_noise_multiplier: float = 0.0
    max_grad_norm_limit: float | None = None
    allowed_tasks: tuple[str, ...] | None = None
    min_cohort: int = 1
    require_dp: bool = False
    require_secure_aggregation: bool = False
    require_approval: bool = False
    approvals_dir: str | None = None
    min_cell_count: int = 5

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "<policy>") -> Policy:
        """Validate ``data``; unknown keys and bad values raise :class:`PolicyError`."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"{source}: unknown policy key(s) {unknown}; allowed: "
                              f"{sorted(known)}.")
        values = {name: _value(source, name, raw) for name, raw in data.items()}
        return cls(**values)


def _positive(source: str, name: str, raw: Any, *, allow_zero: bool = False) -> float:
    ok = isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw)
    if not ok or raw < 0 or (raw == 0 and not allow_zero):
        low = ">= 0" if allow_zero else "> 0"
        raise PolicyError(f"{source}: {name} must be a number {low}, got {raw!r}.")
    return float(raw)


def _value(source: str, name: str, raw: Any) -> Any:
    """One policy value, checked against its key's type and range."""
    if name in ("require_dp", "require_secure_aggregation", "require_approval"):
        if not isinstance(raw, bool):
            raise PolicyError(f"{source}: {name} must be true or false, got {raw!r}.")
        return raw
    if name in ("min_cohort", "min_cell_count"):
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
            raise PolicyError(f"{source}: {name} must be an integer >= 1, got {raw!r}.")
        return raw
    if name == "approvals_dir":
        if raw is not None and not isinstance(raw, str):
            raise PolicyError(f"{source}: approvals_dir must be a folder path, got {raw!r}.")
        return raw
    if name == "min_noise_multiplier":
        return _positive(source, name, raw, allow_zero=True)
    if raw is None:
        return None
    if name == "allowed_tasks":
        if isinstance(raw, str) or not all(isinstance(t, str) for t in raw):
            raise PolicyError(f"{source}: allowed_tasks must be a list of task names, "
                              f"got {raw!r}.")
        return tuple(raw)
    value = _positive(source, name, raw)
    if name == "delta" and value >= 1:
        raise PolicyError(f"{source}: delta must lie strictly between 0 and 1, got {raw!r}.")
    return value


def policy_for_site(section: Mapping[str, Any] | None, hospital: str | None = None,
                    source: str = "policy") -> Policy:
    """The policy of ``hospital``: the section's keys, then its ``hospitals.<name>`` overrides."""
    base = dict(section or {})
    overrides = base.pop(OVERRIDES, None) or {}
    if not isinstance(overrides, Mapping):
        raise PolicyError(f"{source}: {OVERRIDES} must map hospital names to policy keys.")
    Policy.from_dict(base, source)
    for name, keys in overrides.items():
        Policy.from_dict({**base, **dict(keys or {})}, f"{source}, {OVERRIDES}.{name}")
    if hospital is not None and hospital in overrides:
        base.update(dict(overrides[hospital] or {}))
    return Policy.from_dict(base, source)


def load_policy(path: str | Path, hospital: str | None = None) -> Policy:
    """Read a node policy YAML file (an empty file is the permissive default policy)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else None
    except yaml.YAMLError as error:
        raise PolicyError(f"{path}: not valid YAML ({error}).") from error
    if not path.exists():
        raise PolicyError(f"{path}: no such policy file; create it or drop the policy setting.")
    if data is not None and not isinstance(data, Mapping):
        raise PolicyError(f"{path}: a policy must be a mapping of keys to values.")
    return policy_for_site(data, hospital, str(path))


@dataclass(frozen=True)
class Refusal:
    """Why a node refuses a round: the ``limit`` passed and one sentence for the logs."""

    limit: str
    reason: str

    def __str__(self) -> str:
        return self.reason


def _governance(policy: Policy, task: str, dp: bool, cohort_size: int | None,
                secure_aggregation: bool) -> Refusal | None:
    if policy.allowed_tasks is not None and task not in policy.allowed_tasks:
        return Refusal("task", f"task: '{task}' is not in allowed_tasks "
                               f"{list(policy.allowed_tasks)}")
    if policy.require_dp and not dp:
        return Refusal("dp", "dp: this node requires DP-SGD (require_dp) but the study runs "
                             "without it; use privacy=dpsgd")
    if policy.require_secure_aggregation and not secure_aggregation:
        return Refusal("secure_aggregation", "secure aggregation: this node requires it "
                       "(require_secure_aggregation) but the study runs without it")
    if cohort_size is not None and cohort_size < policy.min_cohort:
        return Refusal("cohort", f"cohort: {cohort_size} hospital(s) in this round < "
                                 f"min_cohort {policy.min_cohort}")
    return None


def _mechanism(policy: Policy, noise: float, clip: float, delta: float,
               n_examples: int | None) -> Refusal | None:
    if noise < policy.min_noise_multiplier:
        return Refusal("noise", f"noise: noise multiplier {noise:.3g} < min_noise_multiplier "
                                f"{policy.min_noise_multiplier}")
    if policy.max_grad_norm_limit is not None and clip > policy.max_grad_norm_limit:
        return Refusal("clipping", f"clipping: max_grad_norm {clip:g} > max_grad_norm_limit "
                                   f"{policy.max_grad_norm_limit}")
    if policy.delta is not None and delta > policy.delta:
        return Refusal("delta", f"delta: the study's delta {delta:g} > the policy's delta "
                                f"{policy.delta:g}")
    if policy.delta is None and n_examples and delta >= 1 / n_examples:
        return Refusal("delta", f"delta: the study's delta {delta:g} is not below 1/n = "
                                f"{1 / n_examples:.3g} for this dataset's {n_examples} rows")
    return None


def _budget(policy: Policy, total: float | None, study: float | None) -> Refusal | None:
    limits = (("max_epsilon_per_study", policy.max_epsilon_per_study, study, "the study's "),
              ("max_epsilon_total", policy.max_epsilon_total, total, ""))
    for name, limit, projected, whose in limits:
        if limit is None:
            continue
        if projected is None:
            raise ValueError(f"check_round needs the projected epsilon to apply {name}.")
        if projected > limit:
            return Refusal("budget", f"budget: this round would bring {whose}epsilon to "
                                     f"{projected:.2f} > {name} {limit}")
    return None


def check_round(policy: Policy, *, task: str, dp: bool, noise_multiplier: float | None = None,
                max_grad_norm: float | None = None, delta: float | None = None,
                projected_epsilon_total: float | None = None,
                projected_epsilon_study: float | None = None, cohort_size: int | None = None,
                secure_aggregation: bool = False,
                n_examples: int | None = None) -> Refusal | None:
    """The first limit of ``policy`` this round would pass, or None to go ahead.

    Checked in order: allowed task, required DP, required secure aggregation, cohort size, then
    with DP on the noise multiplier, clipping norm, delta (``n_examples`` is the dataset's row
    count, for the default 1/n rule) and the budgets. Projected epsilons are the ledger's history
    plus this round, composed (total) and for this study alone, at the study's ``delta``.
    """
    refusal = _governance(policy, task, dp, cohort_size, secure_aggregation)
    if refusal is not None or not dp:
        return refusal
    if noise_multiplier is None or max_grad_norm is None or delta is None:
        raise ValueError("check_round needs noise_multiplier, max_grad_norm and delta with DP on.")
    return (_mechanism(policy, noise_multiplier, max_grad_norm, delta, n_examples)
            or _budget(policy, projected_epsilon_total, projected_epsilon_study))
