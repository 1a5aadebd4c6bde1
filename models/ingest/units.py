"""Unit conversions from a hospital's units into a task schema's units.

A small, explicit table: a conversion the table does not know is an error that names the column
and both units, never a silent pass-through. ``mmol/L -> mg/dL`` depends on the substance, so it is
looked up by the feature's name (cholesterol, glucose, triglycerides). Currencies are never
converted: exchange rates change, so costs must be exported in the schema's currency.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Converter = Callable[[np.ndarray], np.ndarray]

_ALIASES = {
    "mg/dl": "mg/dL",
    "mmol/l": "mmol/L",
    "mmhg": "mmHg",
    "kpa": "kPa",
    "c": "degC",
    "°c": "degC",
    "degc": "degC",
    "celsius": "degC",
    "f": "degF",
    "°f": "degF",
    "degf": "degF",
    "fahrenheit": "degF",
    "kg": "kg",
    "g": "g",
    "lb": "lb",
    "lbs": "lb",
    "pound": "lb",
    "pounds": "lb",
    "cm": "cm",
    "m": "m",
    "mm": "mm",
    "in": "in",
    "inch": "in",
    "inches": "in",
    "years": "years",
    "year": "years",
    "y": "years",
    "months": "months",
    "month": "months",
    "days": "days",
    "day": "days",
    "weeks": "weeks",
    "week": "weeks",
    "bpm": "bpm",
    "kg/m2": "kg/m2",
    "count": "count",
}

# (from, to) -> (scale, offset): schema value = local value * scale + offset
_LINEAR: dict[tuple[str, str], tuple[float, float]] = {
    ("lb", "kg"): (0.45359237, 0.0),
    ("g", "kg"): (0.001, 0.0),
    ("kg", "g"): (1000.0, 0.0),
    ("in", "cm"): (2.54, 0.0),
    ("m", "cm"): (100.0, 0.0),
    ("mm", "cm"): (0.1, 0.0),
    ("cm", "m"): (0.01, 0.0),
    ("in", "m"): (0.0254, 0.0),
    ("degF", "degC"): (5.0 / 9.0, -32.0 * 5.0 / 9.0),
    ("degC", "degF"): (1.8, 32.0),
    ("kPa", "mmHg"): (7.500617, 0.0),
    ("mmHg", "kPa"): (0.133322, 0.0),
    ("months", "years"): (1.0 / 12.0, 0.0),
    ("weeks", "days"): (7.0, 0.0),
    ("days", "years"): (1.0 / 365.25, 0.0),
}

# mmol/L -> mg/dL by substance (molar mass / 10), matched on the feature's name
_MOLAR: dict[str, float] = {
    "chol": 38.67,
    "glu": 18.016,
    "trig": 88.57,
    "creat": 11.312,
    "urea": 6.006,
}


def normalise_unit(unit: str) -> str:
    """The table's spelling of ``unit`` (case and symbol variants folded), else ``unit`` itself."""
    text = unit.strip()
    return _ALIASES.get(text.lower(), text)


def _factor(feature: str, source: str, target: str) -> tuple[float, float] | None:
    if source == target:
        return 1.0, 0.0
    if (source, target) in _LINEAR:
        return _LINEAR[source, target]
    molar = next((f for key, f in _MOLAR.items() if key in feature.lower()), None)
    if molar is not None and (source, target) == ("mmol/L", "mg/dL"):
        return molar, 0.0
    if molar is not None and (source, target) == ("mg/dL", "mmol/L"):
        return 1.0 / molar, 0.0
    return None


def converter(
    feature: str, column: str, local_unit: str, schema_unit: str | None, where: str
) -> Converter:
    """A function converting ``column``'s values from ``local_unit`` into the schema's unit.

    Raises
    ------
    ValueError
        When the schema gives the feature no unit, or the table has no such conversion; the
        message names ``where`` (the card), the column and both units.
    """
    if schema_unit is None:
        raise ValueError(
            f"{where}: units gives column '{column}' the unit {local_unit!r}, but "
            f"feature '{feature}' has no unit in the task schema; remove it"
        )
    factor = _factor(feature, normalise_unit(local_unit), normalise_unit(schema_unit))
    if factor is None:
        raise ValueError(
            f"{where}: cannot convert column '{column}' from {local_unit!r} to "
            f"{schema_unit!r} (feature '{feature}'); convert it in the export "
            "or use a supported unit"
        )
    scale, offset = factor
    if (scale, offset) == (1.0, 0.0):
        return lambda values: values
    return lambda values: values * scale + offset
