"""The value checks every dataset-card key uses, and the one error a card can raise.

Shared by :mod:`.cardspec` (the card's core keys) and :mod:`.cardkeys` (the multi-centre keys):
each check names the key it reads (``where``) in its one-line :class:`CardError`.
"""

from __future__ import annotations

import math
import re
from typing import Any

NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


_INTEGER = re.compile(r"^[+-]?\d+$")


class CardError(ValueError):
    """A card or its data file cannot be used; the one-line message names the file."""


def canonical_code(value: Any) -> str | None:
    """A cell or a YAML code as comparable text; ``None`` for an empty or NaN cell.

    Integral numbers lose their decimals (``1.0`` and ``"1.0"`` become ``"1"``), other numbers take
    their shortest form, booleans become ``"true"``/``"false"``, text is stripped.
    """
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    text = str(value).strip()
    if _INTEGER.match(text):
        return str(int(text))
    if NUMBER.match(text):
        return canonical_code(float(text))
    return text


def keys(where: str, raw: Any, allowed: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CardError(f"{where} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in set(raw) - allowed)
    if unknown:
        raise CardError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return raw


def text(where: str, value: Any, *, empty: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise CardError(f"{where} must be text, got {value!r}")
    if not empty and not str(value).strip():
        raise CardError(f"{where} must not be empty")
    return str(value)


def names(where: str, raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise CardError(f"{where} must be a non-empty list of column names")
    names = tuple(text(f"{where} entry", n).strip() for n in raw)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CardError(f"{where} names column(s) {dupes} more than once")
    return names
