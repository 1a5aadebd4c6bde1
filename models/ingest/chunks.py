"""A hospital export read in chunks of rows, for scoring files too large to hold as text cells.

:func:`iter_tables` yields :class:`~medfed.models.tables.RawTable` chunks that are exactly the
slices :func:`~medfed.models.tables.read_table` would build for the whole file -- the same
decoding, delimiter check, header rules, field-count handling and spreadsheet row numbers (it
calls the same helpers) -- so :func:`~medfed.models.conversion.convert_table` treats each chunk as
it treats a training file. Only the loop is new: ``read_table`` decodes the whole file into memory
first, which for a million-row export costs gigabytes of Python strings.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd

from medfed.models.ingest.cardspec import CardError, CsvSpec
from medfed.models.ingest.tables import (
    PARQUET_SUFFIXES,
    RawTable,
    _check_delimiter,
    _header,
    _trim,
)

CHUNK_ROWS = 100_000


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise CardError(f"the data file {path} is a folder; name a CSV or Parquet file")
    if not path.is_file():
        raise CardError(
            f"the data file {path} does not exist; fix the path (a card's paths are "
            "relative to the card's folder)"
        )


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[RawTable]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)
        start = 0
        for batch in batches:
            frame = batch.to_pandas().reset_index(drop=True)
            frame.columns = [str(c) for c in frame.columns]
            yield RawTable(path, frame, np.arange(start + 1, start + len(frame) + 1), parquet=True)
            start += len(frame)
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CardError(f"{path} is not a readable Parquet file ({first})") from None


def _batches(
    path: Path, spec: CsvSpec, chunk_rows: int
) -> Iterator[tuple[np.ndarray, list[list[str]]]]:
    """Non-blank CSV records with their row numbers (blank records count as rows, as in a
    sheet), ``chunk_rows`` records at a time, decoded as the card says."""
    encoding = (
        "utf-8-sig"
        if spec.encoding.lower().replace("_", "-") in ("utf-8", "utf8")
        else spec.encoding
    )
    row = 0
    try:
        with path.open(encoding=encoding, newline="") as handle:
            reader = csv.reader(handle, delimiter=spec.delimiter)
            while batch := list(islice(reader, chunk_rows)):
                keep = [i for i, record in enumerate(batch) if "".join(record).strip()]
                yield np.asarray(keep, dtype=np.int64) + row + 1, [batch[i] for i in keep]
                row += len(batch)
    except UnicodeDecodeError:
        raise CardError(
            f"{path}: bytes after row {row} are not valid {spec.encoding} (the "
            f"file is probably latin-1 or cp1252); re-export it as {spec.encoding} "
            "or set csv.encoding: cp1252 in the card"
        ) from None
    except csv.Error as exc:
        raise CardError(f"{path} after row {row}: the CSV cannot be parsed ({exc})") from None


def _table(
    path: Path, names: tuple[str, ...], rows: np.ndarray, records: list[list[str]]
) -> RawTable:
    """The chunk as :func:`~medfed.models.tables.read_table` builds a file: records longer
    than the header lose trailing empty fields, the rest are padded or cut to its width, and
    ``widths`` keeps the field count of every record that did not fit."""
    width, widths = len(names), {}
    for i, record in enumerate(records):
        if len(record) != width:
            cells = record if len(record) <= width else _trim(record, width)
            if len(cells) != width:
                widths[int(rows[i])] = len(cells)
            records[i] = (cells + [""] * width)[:width]
    frame = pd.DataFrame(records, columns=list(names), dtype=object)
    return RawTable(path, frame, rows, widths=widths)


def _csv_chunks(
    path: Path, spec: CsvSpec, columns: tuple[str, ...] | None, chunk_rows: int
) -> Iterator[RawTable]:
    batches = _batches(path, spec, chunk_rows)
    first = next(batches, None)
    while first is not None and not len(first[0]):
        first = next(batches, None)
    if first is None:
        raise CardError(f"{path} is empty: it has no rows")
    rows, records = first
    _check_delimiter(
        path, int(rows[0]), records[0], spec.delimiter, None if columns is None else len(columns)
    )
    names = _header(path, int(rows[0]), records[0]) if spec.header else (columns or ())
    if spec.header:
        rows, records = rows[1:], records[1:]
    seen = len(rows) > 0
    if seen:
        yield _table(path, names, rows, records)
    for rows, records in batches:
        if len(rows):
            seen = True
            yield _table(path, names, rows, records)
    if not seen:
        raise CardError(f"{path} has a header row but no data rows")


def iter_tables(
    path: Path, spec: CsvSpec, columns: tuple[str, ...] | None, chunk_rows: int = CHUNK_ROWS
) -> Iterator[RawTable]:
    """The file's rows as :class:`RawTable` chunks of at most ``chunk_rows`` rows.

    Raises
    ------
    CardError
        When the file is missing, unreadable, empty or looks split with the wrong delimiter
        (one line naming the file and, where it applies, the row).
    """
    _check_file(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        yield from _parquet_chunks(path, chunk_rows)
    else:
        yield from _csv_chunks(path, spec, columns, chunk_rows)
