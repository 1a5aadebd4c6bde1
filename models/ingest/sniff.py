"""What a data file really is, from its first bytes: text in which encoding, compressed, or not
CSV at all.

Hospital exports are often not what their name says: an Excel workbook saved as ``.csv``, a
UTF-16 file from a Windows tool, a gzip archive, a Parquet file with the wrong suffix.
:func:`sniff` looks at the leading bytes (magic numbers, byte-order marks, the pattern of NUL
bytes) and returns how to open the file, or raises :class:`CardError` with one sentence that says
what the file is and what to do. It never echoes the file's bytes: they may be patient data.
The standard library's ``gzip`` and ``zipfile`` are used to open and recognise archives.
"""

from __future__ import annotations

import codecs
import gzip
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from medfed.models.ingest.cardspec import CardError, CsvSpec

HEAD = 1 << 16
_GZIP, _ZIP, _PARQUET = b"\x1f\x8b", b"PK\x03\x04", b"PAR1"
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OTHER = (
    (b"%PDF", "a PDF document"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
)
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_EXPORT = "export it from the spreadsheet as CSV (UTF-8) or Parquet and name that file in the card"


@dataclass
class Sniffed:
    """How to open a CSV file: a binary opener (gzip or plain), the encoding, notes on both."""

    open: Callable[[], BinaryIO]
    encoding: str
    notes: list[str] = field(default_factory=list)


def _plain(path: Path) -> Callable[[], BinaryIO]:
    return lambda: path.open("rb")


def _gzipped(path: Path) -> Callable[[], BinaryIO]:
    return lambda: gzip.open(path, "rb")  # type: ignore[return-value]


def _head(opener: Callable[[], BinaryIO], path: Path) -> bytes:
    try:
        with opener() as handle:
            return handle.read(HEAD)
    except (OSError, EOFError) as exc:
        what = (
            "a damaged gzip file"
            if isinstance(exc, gzip.BadGzipFile | EOFError)
            else f"unreadable ({getattr(exc, 'strerror', None) or type(exc).__name__})"
        )
        raise CardError(f"{path} is {what}; export it again") from None


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "a damaged ZIP archive"
    if any(name.startswith("xl/") for name in names):
        return "an Excel workbook (.xlsx)"
    if "content.xml" in names:
        return "an OpenDocument spreadsheet (.ods)"
    return "a ZIP archive"


def not_csv(path: Path, head: bytes) -> str | None:
    """A sentence when ``head`` shows a format other than CSV text (None when it may be text)."""
    if head.startswith(_ZIP):
        kind = _zip_kind(path)
        fix = (
            _EXPORT
            if "Excel" in kind or "spreadsheet" in kind
            else "unpack it and name the CSV or Parquet file inside in the card"
        )
        return f"{path} is {kind}, not CSV text; {fix}"
    if head.startswith(_OLE2):
        return f"{path} is an Excel 97-2003 workbook (.xls), not CSV text; {_EXPORT}"
    if head.startswith(_PARQUET):
        return (
            f"{path} is a Parquet file, not CSV text; rename it to end in .parquet (the card "
            "then reads it as Parquet)"
        )
    for magic, kind in _OTHER:
        if head.startswith(magic):
            return f"{path} is {kind}, not CSV text; export the data as CSV or Parquet"
    return None


def _utf16_without_bom(head: bytes) -> str | None:
    """``utf-16-le``/``-be`` when every other byte of the head is NUL (ASCII text in UTF-16)."""
    pairs = len(head) // 2
    if pairs < 4:
        return None
    even, odd = head[0 : 2 * pairs : 2].count(0), head[1 : 2 * pairs : 2].count(0)
    if odd >= 0.9 * pairs and even < 0.1 * pairs:
        return "utf-16-le"
    if even >= 0.9 * pairs and odd < 0.1 * pairs:
        return "utf-16-be"
    return None


def _encoding(path: Path, head: bytes, spec: CsvSpec, notes: list[str]) -> str:
    """The encoding to read with: the card's, unless a byte-order mark or NUL pattern says
    otherwise (then a note says which ``csv.encoding`` states it)."""
    declared = codecs.lookup(spec.encoding).name
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            if encoding == "utf-8-sig":
                notes.append(f"{path}: removed the byte-order mark at the start of the file")
                return "utf-8-sig" if declared == "utf-8" else spec.encoding
            if not declared.startswith(encoding):
                notes.append(
                    f"{path}: read as {encoding.upper()} text (it starts with a "
                    f"{encoding.upper()} byte-order mark); set csv.encoding: {encoding} "
                    "in the card to say so"
                )
            return encoding
    guess = _utf16_without_bom(head)
    if guess and not declared.startswith("utf-16"):
        notes.append(
            f"{path}: read as {guess.upper()} text (every other byte is zero and there "
            f"is no byte-order mark); set csv.encoding: {guess} in the card to say so"
        )
        return guess
    if guess is None and b"\x00" in head:
        raise CardError(
            f"{path} holds binary data (zero bytes), not CSV text; export the data "
            "as CSV or Parquet"
        )
    return spec.encoding


def sniff(path: Path, spec: CsvSpec) -> Sniffed:
    """How to read the CSV file ``path``: opener, encoding and notes.

    Raises
    ------
    CardError
        When the file is an Excel workbook, a Parquet or another binary file, or a damaged gzip
        file: one sentence naming the file, what it is and what to do.
    """
    opener, notes = _plain(path), []
    head = _head(opener, path)
    if head.startswith(_GZIP):
        opener = _gzipped(path)
        head = _head(opener, path)
        notes.append(f"{path}: read gzip-compressed data")
    problem = not_csv(path, head)
    if problem:
        raise CardError(problem)
    return Sniffed(opener, _encoding(path, head, spec, notes), notes)
