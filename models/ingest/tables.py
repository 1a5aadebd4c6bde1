"""Reading a hospital's export file as it is: bytes to tables of raw cells, nothing converted.

:class:`TableReader` reads a file in chunks. CSV files are decoded with the card's encoding (or
the one a byte-order mark or the bytes show; gzip is unpacked on the fly), split with the card's
delimiter line by line, and kept as text; Parquet files keep their column types. Each row
remembers its row number: the physical line it starts on, as an editor or a spreadsheet user
counts it (1-based, the header is row 1), so every later message can point at it. Problems with
the file as a whole raise :class:`~medfed.models.cardspec.CardError`; problems of single rows
are left to the validation.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medfed.models.ingest.cardspec import CardError, CsvSpec
from medfed.models.ingest.csvlines import LineCounts, LineReader
from medfed.models.ingest.heap import fix_mmap_threshold
from medfed.models.ingest.sniff import HEAD, Sniffed, not_csv, sniff

PARQUET_SUFFIXES = (".parquet", ".pq")
CHUNK_ROWS = 50_000
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


def _check_delimiter(
    path: Path, row: int, first: list[str], delimiter: str, expected: int | None
) -> None:
    """A record of one field where more are expected means the delimiter is wrong."""
    if len(first) != 1 or expected == 1:
        return
    guess = next((d for d in _CANDIDATES if d != delimiter and len(first[0].split(d)) > 1), None)
    hint = (
        f"the file seems to be separated by {guess!r}: set csv.delimiter: {guess!r}"
        if guess
        else "check csv.delimiter in the card"
    )
    raise CardError(
        f"{path} row {row}: found a single column where the card's delimiter "
        f"{delimiter!r} should split the row into several; {hint}"
    )


def _header(path: Path, row: int, record: list[str]) -> tuple[str, ...]:
    names = tuple(cell.strip() for cell in record)
    for index, name in enumerate(names):
        if not name:
            raise CardError(
                f"{path} row {row}: header column {index + 1} has no name; name it "
                "or read the file with csv.header: false and 'columns'"
            )
    repeated = [i + 1 for i, n in enumerate(names) if names.count(n) > 1]
    if repeated:  # positions, not names: a header that is really a patient's row is data
        raise CardError(
            f"{path} row {row}: the header repeats a column name (columns "
            f"{', '.join(map(str, repeated))}); give every column its own name, or "
            "set csv.header: false and list the columns if row 1 holds data"
        )
    return names


def _trim(cells: list[str], width: int) -> list[str]:
    """Drop empty fields past ``width`` (a trailing delimiter is not an extra column)."""
    if len(cells) > width and not any(c.strip() for c in cells[width:]):
        return cells[:width]
    return cells


def local_numbers(frame: pd.DataFrame, spec: CsvSpec) -> pd.DataFrame:
    """Cells written as numbers in the card's convention (``csv.decimal``, ``csv.thousands``:
    ``1.234,5``) rewritten as ``1234.5``; every other cell is left as it is."""
    group = re.escape(spec.thousands)
    digits = rf"(?:\d{{1,3}}(?:{group}\d{{3}})+|\d+)" if spec.thousands else r"\d+"
    pattern = re.compile(rf"^\s*[+-]?{digits}(?:{re.escape(spec.decimal)}\d+)?\s*$")

    def rewrite(cell: object) -> object:
        if not isinstance(cell, str) or not pattern.match(cell):
            return cell
        text = cell.replace(spec.thousands, "") if spec.thousands else cell
        return text.replace(spec.decimal, ".")

    out = {}
    for column in frame.columns:
        codes, uniques = pd.factorize(frame[column].to_numpy(dtype=object))
        table = np.array([rewrite(u) for u in uniques] + [None], dtype=object)
        out[column] = table[codes]
    return pd.DataFrame(out, columns=frame.columns)


def _decode_error(
    path: Path, sniffed: Sniffed, spec: CsvSpec, names: tuple[str, ...] | None
) -> str:
    """Where the first byte that is not valid in the encoding is: row and column, never text."""
    delimiter = spec.delimiter.encode("ascii", "replace")
    encoding = sniffed.encoding
    with sniffed.open() as handle:
        for row, line in enumerate(handle, 1):
            if row == 1 and spec.header and not names:
                first = line.decode(encoding, "replace").strip("\r\n\ufeff")
                names = tuple(n.strip() for n in first.split(spec.delimiter))
            try:
                line.decode(encoding)
            except UnicodeDecodeError as exc:
                index = line.count(delimiter, 0, exc.start)
                column = f", column '{names[index]}'" if names and index < len(names) else ""
                return (
                    f"{path} row {row}{column}: byte 0x{line[exc.start]:02x} is not valid "
                    f"{encoding} (the file is probably latin-1 or cp1252); re-export it as "
                    f"{encoding} or set csv.encoding: cp1252 in the card"
                )
    return (
        f"{path}: the text is not valid {encoding}; re-export it as UTF-8 or set "
        "csv.encoding in the card"
    )


class TableReader:
    """One data file read in chunks of at most ``chunk_rows`` rows, every line accounted for.

    CSV files go through :mod:`medfed.models.ingest.sniff` (what the file really is, its encoding)
    and
    :class:`~medfed.models.csvlines.LineReader` (records by physical line); Parquet files are
    read by row group with pyarrow. Only one chunk of raw cells is in memory at a time, so the
    peak memory of reading does not grow with the file.

    Raises
    ------
    CardError
        When the file is missing, not what the card says, undecodable, empty, has no data rows,
        or looks split with the wrong delimiter; the message names the file and, where it
        applies, the row.
    """

    def __init__(
        self,
        path: Path,
        spec: CsvSpec,
        columns: tuple[str, ...] | None,
        role: str = "data",
        chunk_rows: int | None = None,
    ) -> None:
        if path.is_dir():
            raise CardError(f"the {role} file {path} is a folder; name a CSV or Parquet file")
        if not path.is_file():
            raise CardError(
                f"the {role} file {path} does not exist; fix the path in the card "
                "(it is relative to the card's folder)"
            )
        fix_mmap_threshold()  # chunk arrays must not pin the heap (ingest.heap)
        self.path, self.spec, self.columns = path, spec, columns
        self.chunk_rows = chunk_rows or CHUNK_ROWS
        self.parquet = path.suffix.lower() in PARQUET_SUFFIXES
        self.notes: list[str] = []
        self.header_lines = 0
        self.rows = 0
        self.names: tuple[str, ...] = ()
        self._first: tuple[list[list[str]], list[int]] = ([], [])
        if self.parquet:
            self._file = open_parquet(path)
        else:
            self._open_csv()

    @property
    def counts(self) -> LineCounts:
        """The CSV reader's line counts (an empty count for Parquet)."""
        return self._lines.counts if not self.parquet else LineCounts()

    @property
    def data_lines(self) -> int:
        """Lines after the header (CSV), or rows (Parquet), read so far."""
        return self.counts.lines - self.header_lines if not self.parquet else self.rows

    def _read(self, limit: int) -> tuple[list[list[str]], list[int]]:
        try:
            return self._lines.read(limit)
        except UnicodeDecodeError:
            names = self.names or (None if self.spec.header else self.columns)
            raise CardError(_decode_error(self.path, self._sniffed, self.spec, names)) from None
        except (OSError, EOFError) as exc:
            raise CardError(
                f"{self.path} cannot be read to the end ({type(exc).__name__}); the "
                "file is damaged or was cut short: export it again"
            ) from None

    def _open_csv(self) -> None:
        self._sniffed = sniff(self.path, self.spec)
        self.notes += self._sniffed.notes
        stream = io.TextIOWrapper(
            self._sniffed.open(), encoding=self._sniffed.encoding, errors="strict", newline=""
        )
        self._lines = LineReader(stream, self.spec.delimiter)
        records, numbers = self._read(1)
        if not records:
            raise CardError(f"{self.path} is empty: it has no rows")
        expected = None if self.columns is None else len(self.columns)
        _check_delimiter(self.path, numbers[0], records[0], self.spec.delimiter, expected)
        if self.spec.header:
            records[0][0] = records[0][0].lstrip("\ufeff")
            self.names = _header(self.path, numbers[0], records[0])
            counts = self.counts
            self.header_lines = counts.lines - counts.blank - len(counts.quotes)
            records, numbers = self._read(self.chunk_rows)
            if not records and not counts.quotes:
                raise CardError(f"{self.path} has a header row but no data rows")
        else:
            self.names = self.columns or ()
        self._first = (records, numbers)

    def _table(self, records: list[list[str]], numbers: list[int]) -> RawTable:
        width = len(self.names)
        records = [cells if len(cells) <= width else _trim(cells, width) for cells in records]
        widths = {
            row: len(cells)
            for row, cells in zip(numbers, records, strict=True)
            if len(cells) != width
        }
        if widths and not self.rows and len(widths) == len(records):
            source = "header" if self.spec.header else "card's columns"
            raise CardError(
                f"{self.path}: no data row has the {width} fields the {source} name "
                f"(row {numbers[0]} has {len(records[0])}); check csv.delimiter and "
                f"{'the header' if self.spec.header else 'columns'}"
            )
        if widths:
            records = [
                cells if len(cells) == width else (cells + [""] * width)[:width]
                for cells in records
            ]
        frame = pd.DataFrame(records, columns=list(self.names), dtype=object)
        if self.spec.decimal != "." or self.spec.thousands:
            frame = local_numbers(frame, self.spec)
        self.rows += len(records)
        return RawTable(self.path, frame, np.asarray(numbers, dtype=np.int64), widths=widths)

    def chunks(self) -> Iterator[RawTable]:
        """The file's rows, ``chunk_rows`` at a time, in file order."""
        if self.parquet:
            yield from self._parquet_chunks()
            return
        records, numbers = self._first
        self._first = ([], [])
        while records:
            yield self._table(records, numbers)
            records, numbers = self._read(self.chunk_rows)

    def _parquet_chunks(self) -> Iterator[RawTable]:
        try:
            for batch in self._file.iter_batches(batch_size=self.chunk_rows):
                frame = batch.to_pandas()
                frame.columns = [str(c) for c in frame.columns]
                rows = np.arange(self.rows + 1, self.rows + len(frame) + 1)
                self.rows += len(frame)
                yield RawTable(self.path, frame, rows, parquet=True)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise CardError(
                f"{self.path} is a damaged Parquet file ({type(exc).__name__} after "
                f"{self.rows} rows); export it again"
            ) from None
        if not self.rows:
            raise CardError(f"{self.path} has no data rows")


def open_parquet(path: Path) -> pq.ParquetFile:
    """The Parquet file at ``path``, or a sentence saying what the file is instead."""
    with path.open("rb") as handle:
        head = handle.read(HEAD)
    if not head.startswith(b"PAR1"):
        problem = not_csv(path, head)
        if problem and "Parquet" not in problem:
            raise CardError(problem.replace("not CSV text", "not Parquet"))
        raise CardError(
            f"{path} is not a Parquet file (it lacks Parquet's signature); if it is "
            "CSV text, rename it to end in .csv"
        )
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise CardError(
            f"{path} is not a readable Parquet file ({type(exc).__name__}); export it again"
        ) from None


def read_table(
    path: Path, spec: CsvSpec, columns: tuple[str, ...] | None, role: str = "data"
) -> RawTable:
    """The whole file as one :class:`RawTable` (small files and tests; studies read chunks)."""
    reader = TableReader(path, spec, columns, role)
    parts = list(reader.chunks())
    frame = pd.concat([p.frame for p in parts], ignore_index=True)
    widths = {row: n for p in parts for row, n in p.widths.items()}
    return RawTable(
        path, frame, np.concatenate([p.rows for p in parts]), reader.parquet, widths, reader.notes
    )
