"""The node policy's keys and values, validated: shared by the node and the coordinator.

A node policy (see :mod:`medfed.client.policy` for each key and how a round is checked against
it) is parsed here, without Flower and without the node's code, so the coordinator validates a
study's ``policy`` section with the very function the node uses (:func:`policy_for_site`), and
a policy that cannot work (``max_epsilon_total: -3``) ends the study before anyone trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

OVERRIDES = "hospitals"
BOOLEANS = (
    "require_dp",
    "require_secure_aggregation",
    "require_approval",
    "share_local_model",
    "evaluate_other_models",
)


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
    share_local_model: bool = False
    evaluate_other_models: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "<policy>") -> Policy:
        """Validate ``data``; unknown keys and bad values raise :class:`PolicyError`."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(
                f"{source}: unknown policy key(s) {unknown}; allowed: {sorted(known)}."
            )
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
    if name in BOOLEANS:
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
            raise PolicyError(f"{source}: allowed_tasks must be a list of task names, got {raw!r}.")
        return tuple(raw)
    value = _positive(source, name, raw)
    if name == "delta" and value >= 1:
        raise PolicyError(f"{source}: delta must lie strictly between 0 and 1, got {raw!r}.")
    return value


def policy_for_site(
    section: Mapping[str, Any] | None, hospital: str | None = None, source: str = "policy"
) -> Policy:
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
