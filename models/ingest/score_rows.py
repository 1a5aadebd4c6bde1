"""New patients' rows through the training card machinery, chunk by chunk, ready to score.

Scoring reads a hospital's export exactly as training did (:mod:`medfed.models.ingest.conversion`:
the
card's mapping, codes, units and missing-value markers, the schema's valid ranges), with two
differences made on a copy of the card, never in the conversion code: the target is not needed
(new patients have no outcome yet: a stand-in target column of one valid value replaces whatever
the file holds), and invalid rows are always set aside, never fatal, so each is listed with its
reason. Reasons name the problem, never a cell's value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medfed.models.ingest.cardspec import CardError, DatasetCard, TargetSpec, canonical_code
from medfed.models.ingest.chunks import CHUNK_ROWS, iter_tables
from medfed.models.ingest.columns import markers
from medfed.models.ingest.conversion import convert_table
from medfed.models.ingest.validation import REASONS, ValidationReport
from medfed.models.schema import TaskSchema

STUB = "__medfed_scoring_target__"


@dataclass
class Chunk:
    """One chunk's scorable rows (``frame``), their row numbers and ids, and the rows set aside
    with their reasons."""

    frame: pd.DataFrame
    rows: np.ndarray
    ids: np.ndarray | None
    unscorable: list[tuple[int, str]]
    report: ValidationReport


def _is_target(card: DatasetCard, schema: TaskSchema, key: str) -> bool:
    name = schema.target.name
    return key in (card.target.column, name) or card.rename.get(key) == name


def scoring_card(card: DatasetCard, schema: TaskSchema) -> DatasetCard:
    """``card`` with the target replaced by :data:`STUB` and invalid rows set aside."""
    return dataclasses.replace(
        card,
        target=TargetSpec(column=STUB),
        on_invalid_row="drop",
        rename={k: v for k, v in card.rename.items() if v != schema.target.name},
        values={k: v for k, v in card.values.items() if not _is_target(card, schema, k)},
        units={k: v for k, v in card.units.items() if not _is_target(card, schema, k)},
    )


def stub_value(schema: TaskSchema, card: DatasetCard) -> str:
    """A target value the conversion accepts, that is none of the card's missing markers."""
    target = schema.target
    candidates: list[object]
    if target.kind == "continuous":
        low = 0.0 if target.low is None else target.low
        candidates = [low, low + 1.0, 1.0 if target.high is None else target.high]
    else:
        candidates = [*target.classes, "0", "1", "false", "true"]
    skip = markers(card)
    return next(str(c) for c in candidates if str(c) not in skip and canonical_code(c) not in skip)


def _reasons(report: ValidationReport, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Which of ``rows`` were set aside, and for each one its reasons (in a fixed order)."""
    reasons: dict[int, list[str]] = {}
    for reason in REASONS:
        for _, row in report.dropped_rows.get(reason, []):
            reasons.setdefault(row, []).append(reason)
    bad = np.isin(rows, np.fromiter(reasons, dtype=np.int64, count=len(reasons)))
    return bad, ["; ".join(reasons[int(r)]) for r in rows[bad]]


def _ids(table_frame: pd.DataFrame, id_column: str | None, path: str) -> np.ndarray | None:
    if id_column is None:
        return None
    if id_column not in table_frame.columns:
        raise CardError(
            f"{path}: the id column '{id_column}' is not a column of the file "
            f"(columns: {', '.join(map(str, table_frame.columns))}); fix id_column"
        )
    return table_frame[id_column].astype(str).str.strip().to_numpy(dtype=object)


def scoring_chunks(
    card: DatasetCard, schema: TaskSchema, chunk_rows: int = CHUNK_ROWS
) -> Iterator[Chunk]:
    """The card's data file (its ``train`` file) as :class:`Chunk` s ready to score.

    Raises
    ------
    CardError
        When the file cannot be read, or its columns do not fit the task (the conversion's own
        one-line message, e.g. a required column that is missing).
    """
    scoring = scoring_card(card, schema)
    stub = stub_value(schema, card)
    for table in iter_tables(card.train, card.csv, card.columns, chunk_rows):
        ids = _ids(table.frame, card.id_column, str(card.train))
        table.frame[STUB] = stub
        report = ValidationReport(
            card=str(card.path), site=card.name, task=schema.name, target=schema.target.name
        )
        frame = convert_table(table, scoring, schema, report, duplicates=False)
        if frame is None:
            raise CardError(report.errors[0])
        bad, reasons = _reasons(report, table.rows)
        rows = table.rows[~bad]
        yield Chunk(
            frame.drop(columns=[schema.target.name]),
            rows,
            None if ids is None else ids[~bad],
            list(zip(table.rows[bad].tolist(), reasons, strict=True)),
            report,
        )
