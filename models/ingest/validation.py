"""The validation report of a hospital's export, and the row flags it is built from.

:class:`ValidationReport` holds only aggregates -- counts, shares, class counts, a target range --
plus one message per problem. A message names the file and, where it applies, the column and the
row numbers (1-based, as a spreadsheet user counts, the header being row 1), never a cell's
content, except the unknown codes of a categorical column (what the card's ``values`` must map).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from medfed.models.ingest.tables import RawTable

Level = Literal["note", "warning", "error"]
REASONS = ("wrong number of fields", "text in a numeric column", "non-finite number",
           "out of range", "not 0 or 1", "unknown category", "missing target", "invalid target")
_SHOWN_ROWS = 5


@dataclass
class ValidationReport:
    """What ``node check`` prints about one card (aggregates only).

    ``dropped`` counts the invalid rows per reason (a row may have several); ``dropped_rows``
    lists ``(file, row number)`` per reason. ``missing`` is the share of missing values per
    feature over the kept rows (``absent`` lists the optional features the file lacks),
    ``out_of_range`` the count of out-of-range values per feature.
    ``classes`` maps ``train``/``test`` to counts per class; ``target_range`` holds min, mean and
    max of a continuous target over the training rows.
    """

    card: str
    site: str = ""
    task: str = ""
    target: str = ""
    on_invalid_row: str = "drop"
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_rows: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    missing: dict[str, float] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # export columns the task does not use
    out_of_range: dict[str, int] = field(default_factory=dict)
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    target_range: dict[str, float] = field(default_factory=dict)
    train_size: int = 0
    test_size: int = 0
    split: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rows_dropped(self) -> int:
        """Rows read but not kept."""
        return self.rows_read - self.rows_kept

    @property
    def usable(self) -> bool:
        """Whether the data can be used for training (no errors)."""
        return not self.errors

    def add(self, level: Level, message: str) -> None:
        """Record ``message`` once under ``level``."""
        bucket = {"note": self.notes, "warning": self.warnings, "error": self.errors}[level]
        if message not in bucket:
            bucket.append(message)


def row_list(rows: np.ndarray) -> str:
    """``"5, 9, 12"`` or ``"5, 9, 12, 14, 20, ..."`` for more than a few rows."""
    shown = ", ".join(str(int(r)) for r in rows[:_SHOWN_ROWS])
    return shown + (", ..." if len(rows) > _SHOWN_ROWS else "")


@dataclass
class _Problem:
    reason: str
    column: str | None
    mask: np.ndarray
    detail: str


class RowFlags:
    """The invalid rows of one file: a mask per reason and one problem per (reason, column)."""

    def __init__(self, table: RawTable) -> None:
        self.table = table
        self.n = len(table.frame)
        self.masks: dict[str, np.ndarray] = {}
        self.problems: list[_Problem] = []
        self.misread = np.zeros(self.n, bool)

    def flag(self, reason: str, column: str | None, mask: np.ndarray, detail: str) -> int:
        """Mark the rows of ``mask`` invalid for ``reason``; return how many there are.

        Rows with the wrong number of fields are flagged for that alone: their cells are
        misplaced, so other problems in them would only be noise.
        """
        if reason == REASONS[0]:
            self.misread |= mask
        else:
            mask = mask & ~self.misread
        count = int(mask.sum())
        if count:
            self.masks[reason] = self.masks.get(reason, np.zeros(self.n, bool)) | mask
            self.problems.append(_Problem(reason, column, mask.copy(), detail))
        return count

    def invalid(self) -> np.ndarray:
        """Rows with any problem."""
        out = np.zeros(self.n, bool)
        for mask in self.masks.values():
            out |= mask
        return out

    def message(self, problem: _Problem, drop: bool) -> str:
        """One line: file, row(s), column, what is wrong, and what happens or what to do."""
        rows = self.table.rows[problem.mask]
        column = f"column '{problem.column}'" if problem.column else ""
        if len(rows) == 1:
            where = f"{self.table.path} row {int(rows[0])}{', ' + column if column else ''}"
        else:
            where = f"{self.table.path} {column + ', ' if column else ''}{len(rows)} rows " \
                    f"({row_list(rows)})"
        action = ("row dropped" if len(rows) == 1 else "rows dropped") if drop else \
            "fix the data or set on_invalid_row: drop in the card"
        return f"{where}: {problem.detail}; {action}"

    def record(self, report: ValidationReport, drop: bool) -> None:
        """Add counts, row numbers and one message per problem to ``report``."""
        name = str(self.table.path)
        for reason in REASONS:
            mask = self.masks.get(reason)
            if mask is None:
                continue
            report.dropped[reason] = report.dropped.get(reason, 0) + int(mask.sum())
            report.dropped_rows.setdefault(reason, []).extend(
                (name, int(r)) for r in self.table.rows[mask])
        for problem in self.problems:
            report.add("warning" if drop else "error", self.message(problem, drop))


def record_duplicates(table: RawTable, report: ValidationReport) -> None:
    """Warn about rows that repeat an earlier row exactly (they are kept)."""
    try:
        duplicated = table.frame.duplicated().to_numpy()
    except TypeError:  # unhashable cells (Parquet lists): nothing to compare
        return
    if not duplicated.any():
        return
    hashes = table.frame.apply(lambda row: hash(tuple(map(str, row))), axis=1).to_numpy()
    first = int(np.flatnonzero(duplicated)[0])
    original = int(np.flatnonzero(hashes == hashes[first])[0])
    count = int(duplicated.sum())
    report.add("warning", f"{table.path}: {count} row(s) repeat an earlier row exactly (e.g. row "
                          f"{int(table.rows[first])} repeats row {int(table.rows[original])}); "
                          "they are kept: remove them if a patient was exported twice")
