"""Single values of Flower records, whose values are typed as scalars or lists."""

from __future__ import annotations

from typing import Any

Scalar = int | float | str | bytes


def scalar(value: Scalar | list[Any]) -> Scalar:
    """``value``, which the protocol makes a single value; a TypeError (as ``int`` or ``float``
    of it would raise) when it is a list."""
    if isinstance(value, list):
        raise TypeError(f"a record value that must be a single value is a list of {len(value)}")
    return value
