"""A hospital export read in chunks of rows, for scoring files too large to hold as text cells.

:func:`iter_tables` yields the :class:`~medfed.models.ingest.tables.RawTable` chunks of
:class:`~medfed.models.ingest.tables.TableReader`, the reader every training file goes through
(the same sniffing, decoding, delimiter check, header rules, line accounting and row numbers), so
:func:`~medfed.models.ingest.conversion.convert_table` treats each chunk as it treats a training
file and ``medfed predict`` scores a million rows in flat memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medfed.models.ingest.cardspec import CsvSpec
from medfed.models.ingest.tables import RawTable, TableReader

CHUNK_ROWS = 100_000


def iter_tables(
    path: Path, spec: CsvSpec, columns: tuple[str, ...] | None, chunk_rows: int = CHUNK_ROWS
) -> Iterator[RawTable]:
    """The file's rows as :class:`RawTable` chunks of at most ``chunk_rows`` rows.

    Raises
    ------
    CardError
        When the file is missing, not what its name says, unreadable, empty or looks split with
        the wrong delimiter (one line naming the file and, where it applies, the row).
    """
    yield from TableReader(path, spec, columns, chunk_rows=chunk_rows).chunks()
