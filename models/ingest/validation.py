"""The validation report of a hospital's export, and the row flags it is built from.

:class:`ValidationReport` holds only aggregates -- counts, shares, class counts, a target range --
plus one message per problem. A message names the file and, where it applies, the column and the
row numbers (1-based, as a spreadsheet user counts, the header being row 1), never a cell's
content. The offending cells themselves are kept apart in :attr:`ValidationReport.cell_values`,
which only ``node check --show-values`` prints, on the hospital's own machine.

A file is read in chunks (:class:`~medfed.models.tables.TableReader`); :class:`RowFlags` works
on one chunk and merges its problems into the report, so a problem spread over many chunks is
still one message with the total count and the first rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from medfed.models.ingest.tables import RawTable

Level = Literal["note", "warning", "error"]
REASONS = (
    "wrong number of fields",
    "text in a numeric column",
    "non-finite number",
    "out of range",
    "not 0 or 1",
    "unknown category",
    "missing target",
    "invalid target",
)
QUOTE = "stray or unbalanced quote"
_SHOWN_ROWS = 5
_SHOWN_VALUES = 5


@dataclass
class _Merged:
    """One problem over all chunks of a file: total count, first rows, a few cells, message."""

    count: int = 0
    rows: list[int] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    message: str | None = None


@dataclass
class ValidationReport:
    """What ``node check`` prints about one card (aggregates only).

    ``dropped`` counts the invalid rows by their first reason (in :data:`REASONS` order, after
    :data:`QUOTE`), so ``rows_kept + sum(dropped)`` is ``rows_read``; ``dropped_rows`` lists
    ``(file, row number)`` per reason (a row may appear under several). ``lines_read`` counts the
    physical lines after each file's header: ``rows_kept + sum(dropped) + blank_lines +
    continuation_lines`` (the extra lines of rows whose quoted text holds a line break) must equal
    it, or the report has an error. ``cell_values`` maps a message to a few of the cells it is
    about: local only, never part of anything sent. ``missing`` is the share of missing values per
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
    lines_read: int = 0
    blank_lines: int = 0
    continuation_lines: int = 0
    cell_values: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _merged: dict[tuple, _Merged] = field(default_factory=dict, repr=False)
    _hashes: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(
        default_factory=dict, repr=False
    )
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

    def add(self, level: Level, message: str, replaces: str | None = None) -> None:
        """Record ``message`` once under ``level`` (in place of ``replaces`` when given)."""
        bucket = {"note": self.notes, "warning": self.warnings, "error": self.errors}[level]
        if replaces in bucket:
            bucket[bucket.index(replaces)] = message
            self.cell_values[message] = self.cell_values.pop(replaces, [])
        elif message not in bucket:
            bucket.append(message)

    def unaccounted(self) -> int:
        """Lines read that are neither kept, dropped, blank nor continuation lines (0)."""
        return (
            self.lines_read
            - self.rows_kept
            - sum(self.dropped.values())
            - self.blank_lines
            - self.continuation_lines
        )


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


def _sample(table: RawTable, column: str | None, mask: np.ndarray) -> list[str]:
    """A few distinct offending cells, shortened (local use only: ``--show-values``)."""
    if column is None or column not in table.frame.columns:
        return []
    cells = table.frame[column].to_numpy()[mask][:200]
    return list(dict.fromkeys(str(c)[:40] for c in cells))[:_SHOWN_VALUES]


class RowFlags:
    """The invalid rows of one chunk: a mask per reason and one problem per (reason, column)."""

    def __init__(self, table: RawTable) -> None:
        self.table = table
        self.n = len(table.frame)
        self.masks: dict[str, np.ndarray] = {}
        self.problems: list[_Problem] = []
        self.misread = np.zeros(self.n, bool)

    def flag(self, reason: str, column: str | None, mask: np.ndarray, detail: str) -> int:
        """Mark the rows of ``mask`` invalid for ``reason``; return how many there are.

        Rows with the wrong number of fields are flagged for that alone: their cells are
        misplaced, so other problems in them would only be noise. ``detail`` must not quote a
        cell: it travels to the coordinator when the data is unusable.
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

    def record(self, report: ValidationReport, drop: bool) -> None:
        """Add counts, row numbers and one message per problem (merged over chunks) to
        ``report``."""
        name = str(self.table.path)
        taken = np.zeros(self.n, bool)
        for reason in REASONS:
            mask = self.masks.get(reason)
            if mask is None:
                continue
            first = int((mask & ~taken).sum())
            taken |= mask
            if first:
                report.dropped[reason] = report.dropped.get(reason, 0) + first
            report.dropped_rows.setdefault(reason, []).extend(
                (name, int(r)) for r in self.table.rows[mask]
            )
        for problem in self.problems:
            merge_problem(
                report,
                self.table.path,
                problem.reason,
                problem.column,
                problem.detail,
                self.table.rows[problem.mask],
                drop,
                _sample(self.table, problem.column, problem.mask),
            )


def merge_problem(
    report: ValidationReport,
    path: Path,
    reason: str,
    column: str | None,
    detail: str,
    rows: np.ndarray,
    drop: bool,
    values: list[str],
) -> None:
    """Fold ``rows`` into the report's message for (file, reason, column, detail)."""
    merged = report._merged.setdefault((str(path), reason, column, detail), _Merged())
    merged.count += len(rows)
    merged.rows += [int(r) for r in rows[: _SHOWN_ROWS + 1 - len(merged.rows)]]
    merged.values = list(dict.fromkeys(merged.values + values))[:_SHOWN_VALUES]
    where = f"column '{column}'" if column else ""
    if merged.count == 1:
        head = f"{path} row {merged.rows[0]}{', ' + where if where else ''}"
    else:
        head = (
            f"{path} {where + ', ' if where else ''}{merged.count} rows "
            f"({row_list(np.asarray(merged.rows))})"
        )
    action = (
        ("row dropped" if merged.count == 1 else "rows dropped")
        if drop
        else "fix the data or set on_invalid_row: drop in the card"
    )
    message = f"{head}: {detail}; {action}"
    report.add("warning" if drop else "error", message, replaces=merged.message)
    report.cell_values[message] = merged.values
    merged.message = message


def row_hashes(table: RawTable) -> np.ndarray | None:
    """A 64-bit hash of each row's raw cells, columns in name order (None: unhashable cells)."""
    frame = table.frame[sorted(table.frame.columns)]
    try:
        return pd.util.hash_pandas_object(frame, index=False).to_numpy()
    except TypeError:  # unhashable cells (Parquet lists): nothing to compare
        return None


def record_duplicates(table: RawTable, report: ValidationReport) -> None:
    """Keep the chunk's row hashes; :func:`file_done` warns about rows repeated in the file."""
    hashes = row_hashes(table)
    if hashes is not None:
        report._hashes.setdefault(str(table.path), []).append((hashes, table.rows))


def _file_hashes(report: ValidationReport, path: str) -> tuple[np.ndarray, np.ndarray]:
    parts = report._hashes.get(path, [])
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate([h for h, _ in parts]), np.concatenate([r for _, r in parts])


def file_done(report: ValidationReport, path: Path, role: str = "train") -> None:
    """Warn about rows that repeat an earlier row of ``path`` exactly (they are kept); keep the
    file's row hashes under ``role`` for :func:`record_overlap`."""
    hashes, rows = _file_hashes(report, str(path))
    report._hashes.pop(str(path), None)
    report._hashes[role] = [(hashes, rows)]
    if not len(hashes):
        return
    order = np.argsort(hashes, kind="stable")
    repeat = np.zeros(len(hashes), bool)
    repeat[order[1:]] = hashes[order[1:]] == hashes[order[:-1]]
    if not repeat.any():
        return
    first = int(np.flatnonzero(repeat)[0])
    original = int(np.flatnonzero(hashes == hashes[first])[0])
    report.add(
        "warning",
        f"{path}: {int(repeat.sum())} row(s) repeat an earlier row exactly "
        f"(e.g. row {int(rows[first])} repeats row {int(rows[original])}); "
        "they are kept: remove them if a patient was exported twice",
    )


def record_overlap(report: ValidationReport, train: Path, test: Path) -> None:
    """Warn when rows of the test file also appear in the training file (same raw cells)."""
    train_hashes, _ = _file_hashes(report, "train")
    test_hashes, rows = _file_hashes(report, "test")
    if not len(train_hashes) or not len(test_hashes):
        return
    shared = np.isin(test_hashes, train_hashes)
    count = int(shared.sum())
    if not count:
        return
    same = count == len(test_hashes) == len(train_hashes)
    what = (
        "holds the same rows as" if same else f"shares {count} of its {len(test_hashes)} rows with"
    )
    report.add(
        "warning",
        f"{test} {what} the training file {train} (e.g. row "
        f"{int(rows[shared][0])}); a test row "
        "seen in training makes the test metrics look better than they are: "
        "remove the shared rows from one of the files",
    )
