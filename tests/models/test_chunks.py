"""Chunks of a CSV file are exactly the slices of the table ``read_table`` builds at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medfed.models.ingest.cardspec import CardError, CsvSpec
from medfed.models.ingest.chunks import iter_tables
from medfed.models.ingest.tables import read_table

CELL = st.sampled_from(["1", "2.5", "", " x ", "NA", '"a,b"', '"two\nlines"', "?"])
# full-width rows and blank lines: a file whose first chunk holds no full-width row is refused as a
# whole (the delimiter check, tests/models/test_tables.py), so it has no chunks to compare
LINE = st.one_of(st.lists(CELL, min_size=3, max_size=3), st.just([]))


def _write(path: Path, lines: list[list[str]]) -> None:
    path.write_text("a,b,c\n" + "".join(",".join(line) + "\n" for line in lines))


@given(st.lists(LINE, min_size=1, max_size=25), st.integers(1, 6))
def test_chunks_concatenate_to_the_whole_table(tmp_path_factory, lines, chunk_rows) -> None:
    path = tmp_path_factory.mktemp("chunks") / "data.csv"
    _write(path, lines)
    try:
        whole = read_table(path, CsvSpec(), None)
    except CardError as exc:
        if "no data row has" in str(exc):  # a whole-file judgement: chunks flag every row
            chunks = list(iter_tables(path, CsvSpec(), None, chunk_rows))
            assert all(set(c.widths) == set(c.rows.tolist()) for c in chunks)
        else:
            with pytest.raises(CardError):
                list(iter_tables(path, CsvSpec(), None, chunk_rows))
        return
    chunks = list(iter_tables(path, CsvSpec(), None, chunk_rows))
    assert all(len(c.frame) <= chunk_rows for c in chunks)
    frame = pd.concat([c.frame for c in chunks], ignore_index=True)
    pd.testing.assert_frame_equal(frame, whole.frame)
    np.testing.assert_array_equal(np.concatenate([c.rows for c in chunks]), whole.rows)
    assert {k: v for c in chunks for k, v in c.widths.items()} == whole.widths


def test_an_empty_or_header_only_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(CardError, match="is empty: it has no rows"):
        list(iter_tables(tmp_path / "empty.csv", CsvSpec(), None))
    (tmp_path / "header.csv").write_text("a,b\n\n")
    with pytest.raises(CardError, match="has a header row but no data rows"):
        list(iter_tables(tmp_path / "header.csv", CsvSpec(), None))
    with pytest.raises(CardError, match="does not exist"):
        list(iter_tables(tmp_path / "missing.csv", CsvSpec(), None))
