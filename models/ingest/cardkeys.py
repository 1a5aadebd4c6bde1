"""The dataset-card keys for real multi-centre exports: ``column_missing``, ``derive``, ``drop``,
``role`` (see :mod:`medfed.models.ingest.cardspec` for the card and
:mod:`medfed.models.ingest.derive` for the
expression language).

* ``column_missing: {chol: [0], thal: ["?", "-9"]}``: per export column, the codes that mean "not
  measured" there (beside the file-wide ``csv.missing``), applied before ranges are checked;
* ``derive: {feature: "expression"}`` or ``{feature: {expr: ..., fill: 0}}``: a schema feature
  computed from export columns;
* ``drop: [column, ...]``: export columns left out on purpose (never read, never reported);
* ``role: train`` (default) or ``evaluate``: an evaluation-only site receives the global model and
  reports test metrics, but never trains, sends no update and spends no privacy budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from medfed.models.ingest.cardvalues import CardError, canonical_code
from medfed.models.ingest.cardvalues import keys as _keys
from medfed.models.ingest.cardvalues import names as _names
from medfed.models.ingest.cardvalues import text as _text
from medfed.models.ingest.derive import DeriveError, Node, parse

EVALUATE_ADVICE = "; to use its test rows for evaluation only, set role: evaluate in the card"


@dataclass(frozen=True)
class DerivedColumn:
    """A feature computed from export columns (:mod:`medfed.models.ingest.derive`); ``fill``
    replaces a
    missing input (``None``: the derived value is missing then)."""

    expr: str
    tree: Node
    fill: float | None = None


def _column_missing(where: str, raw: Any) -> Mapping[str, frozenset[str]]:
    """Export column -> its missing codes, as written and as canonical codes."""
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, dict):
        raise CardError(
            f"{where}: column_missing must map export column names to lists of "
            "codes, e.g. {chol: [0]}"
        )
    out: dict[str, frozenset[str]] = {}
    for column, codes in raw.items():
        codes = codes if isinstance(codes, list) else [codes]
        if not codes or any(c is None or isinstance(c, list | dict) for c in codes):
            raise CardError(
                f"{where}: column_missing.{column} must be a code or a non-empty "
                f"list of codes, got {raw[column]!r}"
            )
        written = {str(c).strip() for c in codes}
        out[_text(f"{where}: column_missing key", column)] = frozenset(
            written | {canonical_code(c) or "" for c in codes}
        ) - {""}
    return MappingProxyType(out)


def _derived(where: str, name: str, raw: Any) -> DerivedColumn:
    spec = raw if isinstance(raw, dict) else {"expr": raw}
    _keys(f"{where}: derive.{name}", spec, {"expr", "fill"})
    expr, fill = spec.get("expr"), spec.get("fill")
    if not isinstance(expr, str):
        raise CardError(
            f"{where}: derive.{name} must be an expression (text) or "
            f"{{expr: ..., fill: ...}}, got {expr!r}"
        )
    if fill is not None and (isinstance(fill, bool) or not isinstance(fill, int | float)):
        raise CardError(f"{where}: derive.{name}.fill must be a number or null, got {fill!r}")
    try:
        tree = parse(expr)
    except DeriveError as exc:
        raise CardError(f"{where}: derive.{name}: {exc}") from None
    return DerivedColumn(expr, tree, None if fill is None else float(fill))


def card_extensions(where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Parse the multi-centre keys: ``column_missing``, ``derive``, ``drop`` and ``role``."""
    derive = raw.get("derive") or {}
    if not isinstance(derive, dict):
        raise CardError(f"{where}: derive must map feature names to expressions")
    role = raw.get("role", "train")
    if role not in ("train", "evaluate"):
        raise CardError(f"{where}: role must be train or evaluate, got {role!r}")
    drop = _names(f"{where}: drop", raw.get("drop")) if raw.get("drop") != [] else None
    return {
        "column_missing": _column_missing(where, raw.get("column_missing")),
        "derive": MappingProxyType(
            {_text(f"{where}: derive key", k): _derived(where, k, v) for k, v in derive.items()}
        ),
        "drop": drop or (),
        "role": role,
    }
