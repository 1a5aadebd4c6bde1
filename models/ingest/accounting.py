"""Every physical line of an export accounted for: kept, dropped by reason, blank, or continuing
a row whose quoted text holds a line break (:class:`~medfed.models.csvlines.LineCounts`).

:func:`record_lines` adds what the reader set aside to the report (a line with a stray or
unbalanced quote is a dropped row, reported with its line number); :func:`check_lines` makes a
line that is none of these an error, so no row can vanish between reading and training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfed.models.ingest.csvlines import LineCounts
from medfed.models.ingest.validation import QUOTE, ValidationReport, merge_problem, row_list


def record_lines(
    report: ValidationReport, path: Path, counts: LineCounts, data_lines: int, drop: bool
) -> None:
    """Account for the lines the reader did not turn into rows (blank, continued, bad quotes)."""
    report.lines_read += data_lines
    report.blank_lines += counts.blank
    report.continuation_lines += counts.continued
    if counts.multiline:
        rows = np.asarray(counts.multiline)
        report.add(
            "note",
            f"{path}: {len(rows)} row(s) ({row_list(rows)}) hold a line break "
            "inside a quoted field; each was read as one row over several lines",
        )
    if counts.quotes:
        rows = np.asarray(counts.quotes)
        report.rows_read += len(rows)
        report.dropped[QUOTE] = report.dropped.get(QUOTE, 0) + len(rows)
        report.dropped_rows.setdefault(QUOTE, []).extend((str(path), int(r)) for r in rows)
        merge_problem(
            report,
            path,
            QUOTE,
            None,
            "a stray or unbalanced quote (the line was read on its own, so no later row is lost)",
            rows,
            drop,
            [],
        )
    if counts.blank:
        report.add("note", f"{path}: skipped {counts.blank} blank line(s)")


def check_lines(report: ValidationReport) -> None:
    """An error when some line read is not accounted for (a bug: it must never happen)."""
    missing = report.unaccounted()
    if missing:
        report.add(
            "error",
            f"{report.card}: {missing} of {report.lines_read} data lines are "
            "neither kept, dropped, blank nor part of a multi-line row; the data "
            "cannot be trusted: please report it",
        )
