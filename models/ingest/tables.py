"""Reading a hospital's export file as it is: bytes to a table of raw cells, nothing converted.

CSV files are decoded with the card's encoding (a UTF-8 byte-order mark is removed, Windows line
endings are read), split with the card's delimiter, and kept as text; Parquet files keep their
column types. Each row remembers its row number as a spreadsheet user counts it (1-based, the
header is row 1), so every later message can point at it. Problems with the file as a whole raise
:class:`~medfed.models.ingest.cardspec.CardError`; problems of single rows are left to the
validation.
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medfed.models.ingest.cardspec import CardError, CsvSpec

PARQUET_SUFFIXES = (".parquet", ".pq")
_CANDIDATES = (",", ";", "\t", "|")


@dataclass
class RawTable:
    """One file's cells (object columns named as in the file) and each row's row number.

    ``widths`` holds, for rows whose field count differs from the header's, that count.
    """

    path: Path
    frame: pd.DataFrame
    rows: np.ndarray
    parquet: bool = False
    widths: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_table(path: Path, spec: CsvSpec, columns: tuple[str, ...] | None,
               role: str = "data") -> RawTable:
    """Read ``path`` (Parquet by extension, else CSV as ``spec`` says).

    Raises
    ------
    CardError
        When the file is missing, unreadable, empty, has no data rows, or looks split with the
        wrong delimiter; the message names the file and, where it applies, the row.
    """
    if path.is_dir():
        raise CardError(f"the {role} file {path} is a folder; name a CSV or Parquet file")
    if not path.is_file():
        raise CardError(f"the {role} file {path} does not exist; fix the path in the card "
                        "(it is relative to the card's folder)")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path)
    return _read_csv(path, spec, columns)


def _read_parquet(path: Path) -> RawTable:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a damaged file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CardError(f"{path} is not a readable Parquet file ({first})") from None
    if frame.shape[0] == 0:
        raise CardError(f"{path} has no data rows")
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    return RawTable(path, frame, np.arange(1, len(frame) + 1), parquet=True)


def _decode(raw: bytes, path: Path, spec: CsvSpec, columns: tuple[str, ...] | None,
            notes: list[str]) -> str:
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
        notes.append(f"{path}: removed the byte-order mark at the start of the file")
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) \
            and "16" not in spec.encoding:
        raise CardError(f"{path} is UTF-16 text; re-export it as UTF-8 or set csv.encoding: "
                        "utf-16 in the card")
    try:
        text = raw.decode(spec.encoding)
    except UnicodeDecodeError as exc:
        raise CardError(_decode_message(raw, exc, path, spec, columns)) from None
    if "\r\n" in text:
        notes.append(f"{path}: read Windows (CRLF) line endings")
    return text


def _decode_message(raw: bytes, exc: UnicodeDecodeError, path: Path, spec: CsvSpec,
                    columns: tuple[str, ...] | None) -> str:
    row = raw.count(b"\n", 0, exc.start) + 1
    start = raw.rfind(b"\n", 0, exc.start) + 1
    index = raw.count(spec.delimiter.encode("ascii", "replace"), start, exc.start)
    names = columns
    if spec.header:
        first = raw.split(b"\n", 1)[0].decode(spec.encoding, "replace").strip("\r\ufeff")
        names = tuple(n.strip() for n in first.split(spec.delimiter))
    column = f", column '{names[index]}'" if names and index < len(names) else ""
    return (f"{path} row {row}{column}: byte 0x{raw[exc.start]:02x} is not valid "
            f"{spec.encoding} (the file is probably latin-1 or cp1252); re-export it as "
            f"{spec.encoding} or set csv.encoding: cp1252 in the card")


def _records(text: str, path: Path, delimiter: str) -> list[tuple[int, list[str]]]:
    """Non-blank records with their row numbers (blank lines count as rows, as in a sheet)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    out: list[tuple[int, list[str]]] = []
    row = 0
    try:
        for record in reader:
            row += 1
            if "".join(record).strip():
                out.append((row, record))
    except csv.Error as exc:
        raise CardError(f"{path} row {row + 1}: the CSV cannot be parsed ({exc})") from None
    return out


def _check_delimiter(path: Path, row: int, first: list[str], delimiter: str,
                     expected: int | None) -> None:
    """A record of one field where more are expected means the delimiter is wrong."""
    if len(first) != 1 or expected == 1:
        return
    guess = next((d for d in _CANDIDATES if d != delimiter and len(first[0].split(d)) > 1), None)
    hint = (f"the file seems to be separated by {guess!r}: set csv.delimiter: {guess!r}"
            if guess else "check csv.delimiter in the card")
    raise CardError(f"{path} row {row}: found a single column where the card's delimiter "
                    f"{delimiter!r} should split the row into several; {hint}")


def _header(path: Path, row: int, record: list[str]) -> tuple[str, ...]:
    names = tuple(cell.strip() for cell in record)
    for index, name in enumerate(names):
        if not name:
            raise CardError(f"{path} row {row}: header column {index + 1} has no name; name it "
                            "or read the file with csv.header: false and 'columns'")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CardError(f"{path} row {row}: the header repeats column name(s) {dupes}")
    return names


def _trim(cells: list[str], width: int) -> list[str]:
    """Drop empty fields past ``width`` (a trailing delimiter is not an extra column)."""
    if len(cells) > width and not any(c.strip() for c in cells[width:]):
        return cells[:width]
    return cells


def _read_csv(path: Path, spec: CsvSpec, columns: tuple[str, ...] | None) -> RawTable:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CardError(f"{path} cannot be read ({exc.strerror})") from None
    notes: list[str] = []
    records = _records(_decode(raw, path, spec, columns, notes), path, spec.delimiter)
    if not records:
        raise CardError(f"{path} is empty: it has no rows")
    _check_delimiter(path, *records[0], spec.delimiter, None if columns is None else len(columns))
    if spec.header:
        names, body = _header(path, *records[0]), records[1:]
        if not body:
            raise CardError(f"{path} has a header row but no data rows")
    else:
        names, body = columns or (), records
    width = len(names)
    body = [(row, cells if len(cells) <= width else _trim(cells, width)) for row, cells in body]
    widths = {row: len(cells) for row, cells in body if len(cells) != width}
    if len(widths) == len(body):
        source = "header" if spec.header else "card's columns"
        raise CardError(f"{path}: no data row has the {width} fields the {source} name (row "
                        f"{body[0][0]} has {len(body[0][1])}); check csv.delimiter and "
                        f"{'the header' if spec.header else 'columns'}")
    cells = [rec if len(rec) == width else (rec + [""] * width)[:width] for _, rec in body]
    frame = pd.DataFrame(cells, columns=list(names), dtype=object)
    rows = np.array([row for row, _ in body], dtype=np.int64)
    return RawTable(path, frame, rows, widths=widths, notes=notes)
