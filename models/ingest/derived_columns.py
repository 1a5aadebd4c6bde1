"""A card's ``drop``, ``column_missing`` and ``derive`` applied to a raw export table.

:func:`prepare_table` runs before the columns are planned (:mod:`medfed.models.ingest.columns`): it
removes the dropped columns, checks that every ``column_missing`` key is a column of the file, and
adds one column ``derive.<feature>`` per derived feature, computed on whole columns with
:mod:`medfed.models.ingest.derive` from the export's cells after the missing-value markers
(file-wide and
per column) are applied. Cells an expression cannot read (text where a number or a date is
expected) are returned as row problems, flagged once the row flags exist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from medfed.models.ingest.cardspec import CardError, DatasetCard, canonical_code
from medfed.models.ingest.derive import DATE, as_days, evaluate, inputs
from medfed.models.ingest.tables import RawTable
from medfed.models.ingest.validation import ValidationReport

PREFIX = "derive."


@dataclass(frozen=True)
class InputProblem:
    """Rows whose cells in ``column`` an expression cannot read."""

    column: str
    mask: np.ndarray
    detail: str


def column_markers(card: DatasetCard, column: str | None) -> frozenset[str]:
    """The missing-value markers of one export column: ``csv.missing`` plus its
    ``column_missing`` codes, as written and as canonical codes."""
    written = set(card.csv.missing)
    base = frozenset(written | {canonical_code(m) or "" for m in written}) - {""}
    return base | card.column_missing.get(column or "", frozenset())


def _missing(value: object, markers: frozenset[str]) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return True
    text = value.strip() if isinstance(value, str) else str(value)
    return not text or text in markers or canonical_code(value) in markers


def _present(series: pd.Series, markers: frozenset[str]) -> pd.Series:
    """The cells with missing markers replaced by None (object dtype)."""
    out = series.astype(object).copy()
    out[[_missing(v, markers) for v in out.tolist()]] = None
    return out


def _input(
    card: DatasetCard,
    table: RawTable,
    column: str,
    kind: str,
    fill: float | None,
    problems: list[InputProblem],
    feature: str,
) -> np.ndarray:
    cells = _present(table.frame[column], column_markers(card, column))
    present = cells.notna().to_numpy()
    if kind == DATE:
        values = as_days(cells.to_numpy())
        expected = "a date"
    else:
        values = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64)
        expected = "a number"
    bad = present & np.isnan(values)
    if bad.any():
        problems.append(
            InputProblem(
                column,
                bad,
                f"text where {expected} is expected (an input "
                f"of derived feature '{feature}'; list "
                "missing-value markers under column_missing)",
            )
        )
    if fill is not None and kind != DATE:
        values = np.where(present, values, fill)
    return values


def _derive(
    card: DatasetCard, table: RawTable, feature: str, problems: list[InputProblem]
) -> np.ndarray:
    """The derived feature's values per row (NaN where missing).

    Raises
    ------
    CardError
        When the expression names a column the file does not have.
    """
    spec = card.derive[feature]
    wanted = inputs(spec.tree)
    local = [str(c) for c in table.frame.columns]
    unknown = [name for name in wanted if name not in local]
    if unknown:  # a card error (like a type error): one line, the study does not start
        raise CardError(
            f"{card.path}: derive.{feature}: expression {spec.expr!r} uses "
            f"unknown column(s) {unknown}; {table.path} has: {', '.join(local)}"
        )
    columns = {
        name: _input(card, table, name, kind, spec.fill, problems, feature)
        for name, kind in wanted.items()
    }
    values = np.broadcast_to(evaluate(spec.tree, columns), (len(table.frame),))
    return np.array(values, dtype=np.float64)


def derived_inputs(card: DatasetCard) -> set[str]:
    """Every export column some ``derive`` expression reads."""
    return {name for spec in card.derive.values() for name in inputs(spec.tree)}


def prepare_table(
    table: RawTable, card: DatasetCard, report: ValidationReport
) -> tuple[RawTable, list[InputProblem]]:
    """``table`` without the dropped columns and with the derived ones (see the module doc)."""
    local = [str(c) for c in table.frame.columns]
    for key, what in ((card.drop, "drop"), (card.column_missing, "column_missing")):
        absent = [name for name in key if name not in local]
        if absent:
            report.add(
                "error",
                f"{card.path}: {what} names column(s) {absent}, which "
                f"{table.path} does not have (columns: {', '.join(local)})",
            )
    frame = table.frame.drop(columns=[c for c in card.drop if c in local])
    table = replace(table, frame=frame)
    problems: list[InputProblem] = []
    for feature in card.derive:
        values = _derive(card, table, feature, problems)
        frame[PREFIX + feature] = pd.Series(values, dtype=object).where(~np.isnan(values), None)
    return table, problems
