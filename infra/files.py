"""Files that are either whole or absent: atomic writes, and write errors as one sentence.

Every file of a run (config, metrics, summary, model, report, checkpoint, plots) is written to a
temporary name in the same folder, flushed to disk, then renamed over the target with
``os.replace`` (atomic on POSIX): a reader sees the old file or the new one, never half of one. A
write that fails (disk full, read-only folder, no permission) removes its temporary file, leaves
the target as it was and raises :class:`WriteError`, whose message names the path and what the
errno means (``cannot write /runs/a/summary.json: no space left on device (ENOSPC)``).

Written here rather than taken from a library: the standard library has no atomic write, and
the small packages that offer one (``atomicwrites``) are unmaintained; the logic is ten lines.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

_MEANING = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "is a folder",
    errno.EIO: "input/output error",
}
_WHAT_TO_DO = {
    errno.ENOSPC: "free some space or choose another output_dir",
    errno.EDQUOT: "free some space or choose another output_dir",
    errno.EROFS: "choose a writable output_dir",
    errno.EACCES: "choose a folder you may write to, or fix its permissions",
    errno.EPERM: "choose a folder you may write to, or fix its permissions",
}


class WriteError(OSError):
    """A file could not be written; ``str()`` is one sentence naming the path and the cause."""

    def __init__(self, path: str | os.PathLike[str], error: OSError, action: str = "write") -> None:
        super().__init__(error.errno, describe(path, error, action))
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.strerror)


def describe(path: str | os.PathLike[str], error: OSError, action: str = "write") -> str:
    """``cannot write PATH: no space left on device (ENOSPC); free some space ...``."""
    code = error.errno
    name = errno.errorcode.get(code, "") if code is not None else ""
    meaning = _MEANING.get(code or -1) or (error.strerror or type(error).__name__).lower()
    tail = f"; {_WHAT_TO_DO[code]}" if code in _WHAT_TO_DO else ""
    return f"cannot {action} {path}: {meaning}{f' ({name})' if name else ''}{tail}"


def atomic_write(
    path: str | os.PathLike[str], data: bytes | str | Callable[[BinaryIO], object]
) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function writing to a binary handle) to
    ``path`` atomically; return the path.

    Raises
    ------
    WriteError
        When the folder cannot be created or the file cannot be written or renamed; the target
        is then left exactly as it was.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, WriteError):
            raise
        raise WriteError(target, exc) from None
    return target


def make_folder(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and its parents) and check a file can be created in it.

    Raises
    ------
    WriteError
        When the folder cannot be created or written to (read-only, no permission, disk full).
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".medfed-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise WriteError(folder, exc, "write to") from None
    return folder


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null (JSON has no NaN), in nested dicts and lists:
    what every JSON file of a run directory holds."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
