"""A hospital's real export, read through its dataset card into validated train and test frames.

:func:`load_card` reads the card (see :mod:`medfed.models.ingest.cardspec` for its keys);
:func:`read_card_data` reads the file(s) it names, converts them into the data conventions of
:mod:`medfed.models` (the frames :func:`medfed.models.ingest.sources.load_site` returns), splits
them when
the card names no test file, and returns a :class:`ValidationReport` of aggregates with one
message per problem. Nothing here raises a traceback for bad input: problems with the card or a
file as a whole raise :class:`CardError` (one line), everything else is a report entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfed.models.ingest.accounting import check_lines, record_lines
from medfed.models.ingest.cardkeys import EVALUATE_ADVICE
from medfed.models.ingest.cardspec import CardError, DatasetCard, canonical_code, load_card
from medfed.models.ingest.conversion import convert_table
from medfed.models.ingest.tables import RawTable, TableReader
from medfed.models.ingest.validation import Level, ValidationReport, file_done, record_overlap
from medfed.models.schema import SchemaError, TaskSchema, load_task

__all__ = [
    "DEFAULT_MIN_COHORT",
    "CardData",
    "CardError",
    "DatasetCard",
    "ValidationReport",
    "canonical_code",
    "card_schema",
    "check_task",
    "load_card",
    "read_card_data",
    "split_rows",
]

DEFAULT_MIN_COHORT = 20


@dataclass
class CardData:
    """A site's validated rows: name, train and test frames, and the report on them."""

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    report: ValidationReport


def card_schema(card: DatasetCard) -> TaskSchema:
    """The task schema the card names (a shipped task, or a schema path relative to the card).

    Raises
    ------
    CardError
        When the task is unknown or its schema is invalid; the message names the card.
    """
    task = card.task
    if task.endswith((".yaml", ".yml")) and not Path(task).is_absolute():
        task = str(card.path.parent / task)
    try:
        return load_task(task)
    except SchemaError as exc:
        raise CardError(f"{card.path}: task '{card.task}' cannot be used: {exc}") from None


def check_task(card: DatasetCard, schema: TaskSchema) -> None:
    """Raise :class:`CardError` unless the card's task is ``schema``'s task."""
    declared = card_schema(card).name
    if declared != schema.name:
        raise CardError(
            f"{card.path} describes data for task '{declared}', but the study's task "
            f"is '{schema.name}'; use a card written for '{schema.name}'"
        )


def split_rows(
    y: np.ndarray | None, n: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test row indices; stratified by class when ``y`` (class labels) is given.

    Each class sends ``round(count * test_fraction)`` rows to the test split (half rounds up).
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if y is None else [np.flatnonzero(y == c) for c in np.unique(y)]
    test = [
        rng.permutation(group)[: int(np.floor(len(group) * test_fraction + 0.5))]
        for group in groups
    ]
    test_rows = np.sort(np.concatenate(test)) if test else np.array([], dtype=np.int64)
    return np.setdiff1d(np.arange(n), test_rows), test_rows


Columns = dict[str, np.ndarray]


def _read(
    card: DatasetCard, path: Path, schema: TaskSchema, role: str, report: ValidationReport
) -> list[Columns] | None:
    """The file's valid rows, converted chunk by chunk, as column arrays per chunk (None when
    its columns do not fit)."""
    reader = TableReader(path, card.csv, card.columns, role=role)
    _check_header(card, reader, schema)
    report.files.append(str(path))
    for note in reader.notes:
        report.add("note", note)
    parts: list[Columns] = []
    for chunk in reader.chunks():
        frame = convert_table(chunk, card, schema, report)
        if frame is None:
            return None
        parts.append({name: frame[name].to_numpy(copy=True) for name in frame.columns})
    if reader.counts.crlf:
        report.add("note", f"{path}: read Windows (CRLF) line endings")
    record_lines(report, path, reader.counts, reader.data_lines, card.on_invalid_row == "drop")
    file_done(report, path, role)
    if not parts:
        frame = convert_table(_empty_chunk(reader), card, schema, report)
        return None if frame is None else [{n: frame[n].to_numpy() for n in frame.columns}]
    return parts


def stack(parts: list[Columns], selections: list[np.ndarray | None]) -> list[pd.DataFrame]:
    """One frame per selection of rows (None: all) from the chunks' columns, in order.

    Built column by column, releasing each chunk's column as soon as it is copied, so a big
    export is never held twice (``pd.concat`` and a split would hold it three times).
    """
    names = list(parts[0])
    out: list[dict[str, pd.Series]] = [{} for _ in selections]
    for name in names:
        pieces = [part.pop(name) for part in parts]
        whole = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        del pieces
        for columns, rows in zip(out, selections, strict=True):
            values = whole if rows is None else whole[rows]
            columns[name] = pd.Series(values, dtype=values.dtype, copy=False)
    return [pd.DataFrame(columns, copy=False) for columns in out]


def _check_header(card: DatasetCard, reader: TableReader, schema: TaskSchema) -> None:
    """Refuse a header none of whose names the card or task knows: most likely row 1 is data
    (a patient's cells), which must then not be echoed as column names."""
    if not card.csv.header or reader.parquet:
        return
    known = {
        *schema.feature_names,
        schema.target.name,
        *card.rename,
        *card.values,
        *card.units,
        card.target.column,
    }
    if not known & set(reader.names):
        raise CardError(
            f"{reader.path} row 1: none of the header's {len(reader.names)} names "
            f"is a column of task '{schema.name}' or of the card; if row 1 holds "
            "data, set csv.header: false and list the columns under 'columns', else "
            "map the names under rename"
        )


def _empty_chunk(reader: TableReader) -> RawTable:
    """No row survived the reader (every line a bad quote): an empty table of its columns."""
    frame = pd.DataFrame({name: pd.Series([], dtype=object) for name in reader.names})
    return RawTable(reader.path, frame, np.zeros(0, np.int64))


def _split(
    card: DatasetCard, parts: list[Columns], schema: TaskSchema, report: ValidationReport
) -> tuple[pd.DataFrame, pd.DataFrame]:
    spec = card.split
    stratify = spec.stratify and schema.target.kind != "continuous"
    n = sum(len(part[schema.target.name]) for part in parts)
    y = np.concatenate([part[schema.target.name] for part in parts]) if stratify else None
    train, test = split_rows(y, n, spec.test_fraction, spec.seed)
    report.split = (
        f"{'stratified ' if stratify else ''}seeded split of {card.train.name}: "
        f"test_fraction {spec.test_fraction:g}, seed {spec.seed}"
    )
    train_frame, test_frame = stack(parts, [train, test])
    return train_frame, test_frame


def _target_summary(
    train: pd.DataFrame, test: pd.DataFrame, schema: TaskSchema, report: ValidationReport
) -> None:
    target = schema.target
    if target.kind == "continuous":
        y = train[target.name].to_numpy(dtype=float)
        if len(y):
            report.target_range = {
                "min": float(y.min()),
                "mean": float(y.mean()),
                "max": float(y.max()),
            }
        return
    labels = target.classes or ("0", "1")
    for part, frame in (("train", train), ("test", test)):
        counts = np.bincount(frame[target.name].to_numpy(dtype=np.int64), minlength=len(labels))
        report.classes[part] = {label: int(n) for label, n in zip(labels, counts, strict=False)}
    present = [label for label, n in report.classes["train"].items() if n > 0]
    if len(train) and len(present) < 2:
        report.add(
            "error",
            f"{card_file(report)}: the training split has a single class "
            f"({present[0]!r}) of '{target.name}'; a model cannot learn from "
            "it: export rows of every class",
        )


def card_file(report: ValidationReport) -> str:
    """The training file a report is about (the card when no file was read)."""
    return report.files[0] if report.files else report.card


def _feature_summary(
    parts: tuple[pd.DataFrame, ...], schema: TaskSchema, report: ValidationReport
) -> None:
    """Missing shares over all kept rows (the parts are not concatenated: a big export's
    frames are not copied once more)."""
    rows = sum(len(part) for part in parts)
    if not rows:
        return
    for feat in schema.features:
        share = sum(int(part[feat.name].isna().sum()) for part in parts) / rows
        report.missing[feat.name] = share
        if share == 1.0 and feat.name not in report.absent:
            level: Level = "error" if feat.required else "warning"
            fix = "fix the export" if feat.required else "it adds nothing"
            report.add(
                level,
                f"{card_file(report)}: column '{feat.name}' is missing in every kept row; {fix}",
            )


def _cohort(report: ValidationReport, min_cohort: int) -> None:
    if report.train_size < min_cohort:
        rows = f"{report.train_size} valid row{'' if report.train_size == 1 else 's'}"
        report.add(
            "error",
            f"{card_file(report)}: the training split has {rows}, fewer than "
            f"the minimum cohort of {min_cohort}; add rows or lower the minimum "
            "(--min-cohort)",
        )


def read_card_data(
    card: DatasetCard, schema: TaskSchema, *, min_cohort: int | None = None
) -> CardData:
    """Read, validate and split the data a card describes, against ``schema``.

    ``min_cohort`` (default: the card's ``min_cohort``, else 20) is the fewest valid training rows
    accepted. The frames hold only valid rows: numeric and binary features as float with NaN for
    missing, categorical ones as category strings with None, the target as int (0/1 or class
    index) or float. ``report.usable`` says whether they can be trained on.

    Raises
    ------
    CardError
        When a data file is missing, unreadable, empty or has no data rows.
    """
    report = ValidationReport(
        card=str(card.path),
        site=card.name,
        task=schema.name,
        target=schema.target.name,
        on_invalid_row=card.on_invalid_row,
    )
    parts = _read(card, card.train, schema, "train", report)
    tested = None if card.test is None else _read(card, card.test, schema, "test", report)
    empty = pd.DataFrame(columns=[*schema.feature_names, schema.target.name])
    if parts is None or (card.test is not None and tested is None):
        return CardData(card.name, empty, empty.copy(), report)
    if tested is None or card.test is None:  # a test file is read only from card.test
        train, test = _split(card, parts, schema, report)
    else:
        (train,), (test,) = stack(parts, [None]), stack(tested, [None])
        report.split = f"explicit test file {card.test.name}"
        record_overlap(report, card.train, card.test)
    report._hashes.clear()
    check_lines(report)
    report.train_size, report.test_size = len(train), len(test)
    if not report.rows_kept:
        report.add("error", f"{card_file(report)}: no valid rows are left; see the problems above")
    elif not len(test) and (card.test is not None or card.split.test_fraction > 0):
        report.add(
            "warning",
            f"{card.test or card.train}: the test split is empty, so this "
            "site reports no test metrics",
        )
    _feature_summary((train, test), schema, report)
    errors = len(report.errors)
    _target_summary(train, test, schema, report)
    _cohort(report, min_cohort or card.min_cohort or DEFAULT_MIN_COHORT)
    training_problems(card, report, errors)
    return CardData(card.name, train, test, report)


def training_problems(card: Any, report: ValidationReport, first: int) -> None:
    """Reword the errors from ``report.errors[first:]`` (why the training split cannot train).

    For a ``role: train`` card each gets the advice to use ``role: evaluate``; an evaluation-only
    site never trains, so for it they become one note each (the site stays usable).
    """
    problems = report.errors[first:]
    del report.errors[first:]
    for message in problems:
        if card.role == "evaluate":
            report.add(
                "note",
                f"{message.split(';')[0]}; fine for an evaluation-only site "
                "(role: evaluate), which does not train",
            )
        else:
            report.add("error", message + EVALUATE_ADVICE)
