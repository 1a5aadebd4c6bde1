"""An append-only, hash-chained JSON-Lines file: the one mechanism behind the privacy ledger
(:mod:`medfed.client.ledger`) and the node's audit log (:mod:`medfed.client.audit`).

Each entry carries ``seq``, the previous entry's hash (``prev_hash``) and its own ``hash``,
SHA-256 of its canonical JSON (sorted keys, no spaces) or HMAC-SHA256 with a key when one is
given. A sidecar ``<file>.head`` (written atomically after each append) records the entry count
and the last hash, so deleting or cutting trailing entries is detected too. Edited, reordered,
removed or truncated entries raise :class:`ChainTampered` (or the subclass's ``Tampered``).

Writers hold an exclusive ``fcntl.flock`` on ``<file>.lock``; appends are single ``write`` calls
followed by ``fsync``. A head that lags the file by whole entries (a crash between the two
writes) and a torn last line beyond the head (a crash mid-append) are repaired on the next write.

Written here rather than taken from a library: no maintained package offers a locked, fsynced,
head-checked JSON-Lines hash chain; the primitives are :mod:`hashlib` and :mod:`hmac`.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


class ChainTampered(RuntimeError):
    """The chained file or its head was edited, reordered or truncated; the message says where."""


class HashChain:
    """The chained file at ``path`` (created on the first append); ``key`` turns on HMAC.

    Subclasses name what they hold (``noun``), their tamper exception (``Tampered``), the fields
    every entry must have (``fields``, None: any) and may check the entries as a whole
    (:meth:`_check_entries`). One instance per process and file: the lock is re-entrant within an
    instance only.
    """

    noun = "chain"
    Tampered: type[RuntimeError] = ChainTampered
    fields: frozenset[str] | None = None

    def __init__(self, path: str | Path, *, key: bytes | None = None) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.key = key
        self._depth = 0
        self._lock_file: Any = None

    def _digest(self, entry: dict[str, Any]) -> str:
        body = {k: v for k, v in entry.items() if k != "hash"}
        text = json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
        if self.key is None:
            return hashlib.sha256(text).hexdigest()
        return hmac.new(self.key, text, hashlib.sha256).hexdigest()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file's exclusive lock (re-entrant): check and append inside one block."""
        if self._depth == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.lock_path, "a+b")
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
                self._lock_file.close()
                self._lock_file = None

    def _head(self) -> tuple[int, str] | None:
        if not self.head_path.exists():
            return None
        try:
            head = json.loads(self.head_path.read_text())
            return int(head["count"]), str(head["hash"])
        except (ValueError, KeyError, TypeError) as error:
            raise self.Tampered(
                f"{self.head_path}: the head file is unreadable ({error}); "
                "restore it from a backup."
            ) from error

    def _parse(self, number: int, line: bytes, prev: str) -> dict[str, Any]:
        where = f"{self.path}, line {number + 1}"
        try:
            entry = json.loads(line)
        except ValueError as error:
            raise self.Tampered(f"{where}: not valid JSON; the {self.noun} was edited.") from error
        if not isinstance(entry, dict) or (self.fields is not None and set(entry) != self.fields):
            raise self.Tampered(f"{where}: the entry's fields were changed.")
        if entry.get("seq") != number or entry.get("prev_hash") != prev:
            raise self.Tampered(f"{where}: out of sequence; entries were removed or reordered.")
        if not hmac.compare_digest(str(entry.get("hash")), self._digest(entry)):
            raise self.Tampered(f"{where}: its hash does not match; the entry was edited.")
        return entry

    def _check_entries(self, entries: list[dict[str, Any]]) -> None:
        """Raise ``Tampered`` when the entries together break a rule of the subclass."""

    def _read(self) -> tuple[list[dict[str, Any]], int]:
        """Verified entries and the byte length they span (a torn last line is excluded)."""
        data = self.path.read_bytes() if self.path.exists() else b""
        *lines, torn = data.split(b"\n")
        entries, prev = [], GENESIS
        for number, line in enumerate(lines):
            entries.append(self._parse(number, line, prev))
            prev = entries[-1]["hash"]
        self._check_entries(entries)
        head = self._head()
        count, last = head if head is not None else (0, GENESIS)
        if head is None and entries:
            raise self.Tampered(f"{self.head_path} is missing; the {self.noun} cannot be trusted.")
        if len(entries) < count or (count and entries[count - 1]["hash"] != last):
            raise self.Tampered(
                f"{self.path} holds {len(entries)} entries but its head records "
                f"{count}; entries were removed or truncated."
            )
        return entries, len(data) - len(torn)

    def verify(self) -> list[dict[str, Any]]:
        """All entries after checking the chain and the head; raise ``Tampered``."""
        if not (self.path.exists() or self.head_path.exists() or self.lock_path.exists()):
            return []
        with self.locked():
            return self._read()[0]

    def _write_head(self, count: int, last: str) -> None:
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        with open(tmp, "w") as out:
            out.write(json.dumps({"count": count, "hash": last}))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.head_path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _append(
        self, fields: dict[str, Any], *, defaults: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Verify, repair a crash's leftovers, append one entry, fsync, move the head."""
        with self.locked():
            entries, length = self._read()
            return self._append_after(entries, length, {**(defaults or {}), **fields})

    def _append_after(
        self, entries: list[dict[str, Any]], length: int, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """Append ``fields`` after the verified ``entries`` (the lock must be held)."""
        if self.path.exists() and self.path.stat().st_size != length:
            os.truncate(self.path, length)
        last = entries[-1]["hash"] if entries else GENESIS
        entry = {
            "seq": len(entries),
            "prev_hash": last,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            **fields,
        }
        entry["hash"] = self._digest(entry)
        line = (
            json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            + b"\n"
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._write_head(len(entries) + 1, entry["hash"])
        return entry
