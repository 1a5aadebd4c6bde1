"""One check per setting, shared by the coordinator (before any hospital trains) and the node.

Each function takes plain values (no Hydra, no Flower) and returns the first problem as one
sentence naming the setting, or None. The coordinator runs them all in
:func:`medfed.server.study.config.validate_study` (``simulate``, ``run``) and in ``privacy
plan``; the node runs :func:`privacy_errors` and :func:`policy_errors` on the study it receives,
so a setting the coordinator accepts is never one the node refuses for its form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from medfed.models.policy_spec import Policy, PolicyError, policy_for_site

LR_SCHEDULES = ("constant", "cosine")
"""Values of ``train.lr_schedule`` (:func:`medfed.models.training.lr_factor`)."""


def lr_schedule_of(train: Mapping[str, Any]) -> str:
    """A study's ``train.lr_schedule``; ``constant`` for a study written before the setting."""
    return str(train.get("lr_schedule") or "constant")


def lr_schedule_error(train: Mapping[str, Any]) -> str | None:
    """One sentence when ``train.lr_schedule`` is not a known schedule."""
    schedule = lr_schedule_of(train)
    if schedule in LR_SCHEDULES:
        return None
    return f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}"


LIST_SETTINGS = ("federation.cards", "federation.sizes", "attack.hospitals", "policy.allowed_tasks")
"""Settings that hold a list (``federation.cards=[a.yaml,b.yaml]``), never a single string."""


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive(name: str, value: Any, *, allow_none: bool = False) -> str | None:
    """``name`` must be a finite number > 0 (a clipping norm, an epsilon)."""
    if value is None and allow_none:
        return None
    if not _number(value) or value <= 0:
        return f"{name} must be a number > 0, got {value!r}"
    return None


def delta_error(name: str, value: Any, *, allow_none: bool = True) -> str | None:
    """``name`` (a DP delta) must lie strictly between 0 and 1."""
    if value is None and allow_none:
        return None
    if not _number(value) or not 0 < value < 1:
        return f"{name} must lie strictly between 0 and 1, got {value!r}"
    return None


def privacy_errors(privacy: Mapping[str, Any]) -> str | None:
    """The first impossible DP setting of the ``privacy`` section (``dpsgd`` or ``central``)."""
    name = privacy.get("name")
    if name not in ("dpsgd", "central"):
        return None
    clip = "max_grad_norm" if name == "dpsgd" else "clipping_norm"
    noise = privacy.get("noise_multiplier")
    checks = [
        positive(f"privacy.{clip}", privacy.get(clip)),
        delta_error("privacy.delta", privacy.get("delta")),
        positive("privacy.target_epsilon", privacy.get("target_epsilon"), allow_none=True),
        positive("privacy.max_step_noise", privacy.get("max_step_noise"), allow_none=True),
    ]
    if privacy.get("target_epsilon") is None and (not _number(noise) or noise < 0):
        checks.append(f"privacy.noise_multiplier must be a number >= 0, got {noise!r}")
    if name == "dpsgd" and privacy.get("accountant") not in ("rdp", "prv"):
        checks.append(f"privacy.accountant must be rdp or prv, got {privacy.get('accountant')!r}")
    return next((c for c in checks if c), None)


def _named(where: str, key: str) -> str:
    """``policy.max_epsilon_total``, or ``max_epsilon_total in node-policy.yaml`` for a file."""
    return f"{key} in {where}" if where.endswith((".yaml", ".yml")) else f"{where}.{key}"


def cap_error(policy: Policy, where: str, privacy: Mapping[str, Any]) -> str | None:
    """A DP setting of the study that ``policy`` refuses in every round, naming the cap
    (``where``: the policy's section, ``policy.hospitals.site-b``, or its file)."""
    target, clip = privacy.get("target_epsilon"), privacy.get("max_grad_norm")
    for cap in ("max_epsilon_per_study", "max_epsilon_total"):
        limit = getattr(policy, cap)
        if target is not None and limit is not None and target > limit:
            return (
                f"privacy.target_epsilon={target:g} is above the node policy's cap "
                f"{_named(where, cap)}={limit:g}: every round would be refused; lower the target"
            )
    limit_clip = policy.max_grad_norm_limit
    if limit_clip is not None and _number(clip) and clip > limit_clip:
        return (
            f"privacy.max_grad_norm={clip:g} is above the node policy's cap "
            f"{_named(where, 'max_grad_norm_limit')}={policy.max_grad_norm_limit:g}"
        )
    noise, delta = privacy.get("noise_multiplier"), privacy.get("delta")
    if target is None and noise is not None and noise < policy.min_noise_multiplier:
        return (
            f"privacy.noise_multiplier={noise:g} is below the node policy's floor "
            f"{_named(where, 'min_noise_multiplier')}={policy.min_noise_multiplier:g}"
        )
    if delta is not None and policy.delta is not None and delta > policy.delta:
        cap = _named(where, "delta")
        return f"privacy.delta={delta:g} is above the node policy's cap {cap}={policy.delta:g}"
    return None


def policy_errors(
    section: Mapping[str, Any] | None, privacy: Mapping[str, Any], n_hospitals: int | None
) -> str | None:
    """The first policy value that cannot work, or a DP setting the policy refuses.

    Every hospital's policy is checked (the section plus its ``hospitals.<name>`` overrides):
    the values themselves (:func:`medfed.models.policy_spec.policy_for_site`), ``min_cohort``
    against the federation's size, and, with ``privacy=dpsgd``, the study's target epsilon,
    clipping norm, noise and delta against the policy's caps.
    """
    try:
        base = policy_for_site(section, None, "policy")
    except PolicyError as exc:
        return str(exc).rstrip(".")
    overrides = dict((section or {}).get("hospitals") or {})
    policies = [("policy", base)] + [
        (f"policy.hospitals.{name}", policy_for_site(section, name)) for name in overrides
    ]
    for where, policy in policies:
        if n_hospitals is not None and policy.min_cohort > n_hospitals:
            return (
                f"{where}.min_cohort={policy.min_cohort} but the federation has "
                f"{n_hospitals} hospital(s): every round would be refused"
            )
        if privacy.get("name") == "dpsgd" and (error := cap_error(policy, where, privacy)):
            return error
    return None


def list_errors(study: Mapping[str, Any]) -> str | None:
    """A list setting (:data:`LIST_SETTINGS`) given a single value instead of a list."""
    for dotted in LIST_SETTINGS:
        value: Any = study
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None and (isinstance(value, str) or not isinstance(value, Sequence)):
            return (
                f"{dotted} must be a list, got {value!r}; write it in brackets: {dotted}=[{value}]"
            )
    return None


def duplicates(kind: str, names: Sequence[str]) -> str | None:
    """``kind`` (``site name``, ``dataset card``) listed more than once."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return f"{kind} {name} is listed twice; each hospital may take part once"
        seen.add(name)
    return None


def card_duplicates(cards: Sequence[str]) -> str | None:
    """A dataset card listed twice in ``federation.cards`` (the same file, however spelt)."""
    return duplicates(
        "federation.cards: the dataset card", [str(Path(c).expanduser().resolve()) for c in cards]
    )


def robust_strategy_errors(strategy: Mapping[str, Any], n_hospitals: int | None) -> str | None:
    """Krum's settings for the number of hospitals; the trimmed fraction; the median's step."""
    name = strategy.get("name")
    if name == "trimmedmean":
        beta = strategy.get("beta")
        if not _number(beta) or not 0 <= beta < 0.5:
            return (
                f"strategy.beta={beta!r} must be in [0, 0.5): it trims that fraction from "
                "each end, so 0.5 or more leaves nothing to average"
            )
    if name == "fedmedian":
        eta = strategy.get("server_learning_rate", 1.0)
        if not _number(eta) or eta <= 0:
            return f"strategy.server_learning_rate must be a number > 0, got {eta!r}"
    if name == "krum":
        return _krum_errors(strategy, n_hospitals)
    return None


def krum_tolerance(n_hospitals: int) -> int:
    """The most malicious hospitals Krum tolerates among ``n_hospitals``: ``n >= 2f + 3``."""
    return max((n_hospitals - 3) // 2, 0)


def _krum_errors(strategy: Mapping[str, Any], n_hospitals: int | None) -> str | None:
    """``num_malicious_nodes`` (``auto`` or f with ``n >= 2f + 3``) and ``num_nodes_to_select``."""
    f = strategy.get("num_malicious_nodes")
    if f == "auto":
        f = krum_tolerance(n_hospitals) if n_hospitals is not None else 0
    elif isinstance(f, bool) or not isinstance(f, int) or f < 0:
        return f"strategy.num_malicious_nodes must be auto or a whole number >= 0, got {f!r}"
    if n_hospitals is not None and n_hospitals < 2 * f + 3:
        return (
            f"strategy.num_malicious_nodes={f} is too many for {n_hospitals} "
            f"hospitals: Krum needs hospitals >= 2 x num_malicious_nodes + 3 (here at "
            f"most {krum_tolerance(n_hospitals)})"
        )
    m = strategy.get("num_nodes_to_select")
    if m is None:
        return None
    most = n_hospitals - f if n_hospitals is not None else None
    if isinstance(m, bool) or not isinstance(m, int) or m < 1 or (most is not None and m > most):
        return (
            f"strategy.num_nodes_to_select={m!r} must be null (hospitals - num_malicious_nodes) "
            f"or a whole number from 1 (classic Krum) to {most if most is not None else 'n - f'}"
        )
    return None
