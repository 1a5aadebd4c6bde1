"""CSV records from a text stream, one physical line at a time, every line accounted for.

Python's ``csv.reader`` over a whole file lets an unbalanced quote swallow every row after it
(the field runs on to the next quote, possibly thousands of lines later), and numbers rows by
records rather than by the lines an editor shows. :class:`LineReader` parses each physical line
on its own (lines without a quote are split directly; the others go through ``csv`` in strict
mode). A line that opens a quoted field without closing it is joined with the lines that follow
only when they close it within :data:`MAX_SPAN` lines and the result parses: a text field that
really holds a line break. Otherwise the line is set aside as a stray or unbalanced quote and
reading goes on with the next line, so no later row is lost. Every line consumed is counted:
records (with the line they start on), blank lines, continuation lines, set-aside lines.
"""

from __future__ import annotations

import csv
import gc
from dataclasses import dataclass, field
from typing import TextIO

MAX_SPAN = 20
_READ_HINT = 1 << 20


@dataclass
class LineCounts:
    """What became of the lines read so far (line numbers are 1-based physical lines)."""

    lines: int = 0
    blank: int = 0
    continued: int = 0
    multiline: list[int] = field(default_factory=list)
    quotes: list[int] = field(default_factory=list)
    crlf: bool = False


class LineReader:
    """Records of ``stream`` split by ``delimiter``; see the module docstring."""

    def __init__(self, stream: TextIO, delimiter: str) -> None:
        self.stream = stream
        self.delimiter = delimiter
        self.counts = LineCounts()
        self._buffer: list[str] = []
        self._pos = 0

    def _peek(self, ahead: int) -> str | None:
        """The line ``ahead`` lines after the next one (0: the next), read ahead as needed."""
        while self._pos + ahead >= len(self._buffer):
            more = self.stream.readlines(_READ_HINT)
            if not more:
                return None
            self._buffer = self._buffer[self._pos :] + more
            self._pos = 0
        return self._buffer[self._pos + ahead]

    def _strip(self, line: str) -> str:
        if line.endswith("\r\n"):
            self.counts.crlf = True
            return line[:-2]
        return line.rstrip("\r\n")

    def _parse(self, text: str) -> list[str]:
        return next(csv.reader([text], delimiter=self.delimiter, strict=True))

    def _quoted(self, line: str, number: int) -> tuple[list[str] | None, int]:
        """Cells of a line holding quotes, and how many more lines the record took."""
        try:
            return self._parse(line), 0
        except csv.Error as exc:
            if "unexpected end of data" not in str(exc):
                return None, 0
        text = line
        for ahead in range(MAX_SPAN):
            following = self._peek(ahead)
            if following is None:
                break
            text += "\n" + self._strip(following)
            if '"' not in following:
                continue
            try:
                cells = self._parse(text)
            except csv.Error as exc:
                if "unexpected end of data" in str(exc):
                    continue
                break
            self._pos += ahead + 1
            self.counts.lines += ahead + 1
            self.counts.continued += ahead + 1
            self.counts.multiline.append(number)
            return cells, ahead + 1
        return None, 0

    def _fast(self, take: list[str], records: list[list[str]], numbers: list[int]) -> bool:
        """Split a block of lines without any quote at once; False when the block has quotes."""
        text = "".join(take)
        if '"' in text:
            return False
        counts, delimiter, blank = self.counts, self.delimiter, " \t" + self.delimiter
        counts.crlf = counts.crlf or "\r\n" in text
        lines = [line.rstrip("\r\n") for line in take]
        first = counts.lines + 1
        kept = [i for i, line in enumerate(lines) if line.strip(blank)]
        if len(kept) < len(lines):
            counts.blank += len(lines) - len(kept)
            lines = [lines[i] for i in kept]
        records.extend(line.split(delimiter) for line in lines)
        numbers.extend(first + i for i in kept)
        counts.lines += len(take)
        self._pos += len(take)
        return True

    def _slow(self, records: list[list[str]], numbers: list[int]) -> None:
        """One line that may hold quotes (and the lines a quoted field spans)."""
        raw = self._buffer[self._pos]
        self._pos += 1
        self.counts.lines += 1
        number = self.counts.lines
        line = self._strip(raw)
        cells, _ = self._quoted(line, number) if '"' in line else (line.split(self.delimiter), 0)
        if cells is None:
            self.counts.quotes.append(number)
        elif "".join(cells).strip():
            records.append(cells)
            numbers.append(number)
        else:
            self.counts.blank += 1

    def read(self, limit: int) -> tuple[list[list[str]], list[int]]:
        """Up to ``limit`` records and the line each starts on (fewer at the end of the file).

        A blank line (nothing but spaces and delimiters) is counted, not returned.
        """
        records: list[list[str]] = []
        numbers: list[int] = []
        collecting = gc.isenabled()
        gc.disable()  # millions of small lists: the cyclic collector would rescan them all
        try:
            self._fill(limit, records, numbers)
        finally:
            if collecting:
                gc.enable()
        return records, numbers

    def _fill(self, limit: int, records: list[list[str]], numbers: list[int]) -> None:
        while len(records) < limit and self._peek(0) is not None:
            take = self._buffer[self._pos : self._pos + min(limit - len(records), 4096)]
            if not self._fast(take, records, numbers):
                for _ in range(len(take)):
                    if len(records) >= limit or self._peek(0) is None:
                        break
                    self._slow(records, numbers)
