"""Atomic writes and write errors as one sentence (medfed.infra.files)."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import pytest

from medfed.infra import files
from medfed.infra.files import WriteError, atomic_write, describe, make_folder


def test_atomic_write_writes_bytes_text_and_streams(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "sub" / "b.txt", "héllo")
    atomic_write(tmp_path / "c.bin", lambda handle: handle.write(b"streamed"))

    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "c.bin").read_bytes() == b"streamed"
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []  # no temporary file left


class _FullDisk(io.BufferedWriter):
    def write(self, data):  # type: ignore[override]
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_the_earlier_file_and_names_path_and_cause(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text('{"status": "finished"}')
    real_open = open
    monkeypatch.setattr(
        files, "open", lambda path, mode: _FullDisk(real_open(path, mode)), raising=False
    )

    with pytest.raises(WriteError) as info:
        atomic_write(target, b'{"status": "half"}')

    assert str(info.value) == (
        f"cannot write {target}: no space left on device (ENOSPC); "
        "free some space or choose another output_dir"
    )
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == '{"status": "finished"}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EROFS, "read-only file system (EROFS); choose a writable output_dir"),
        (errno.EACCES, "permission denied (EACCES); choose a folder you may write to"),
        (errno.EIO, "input/output error (EIO)"),
    ],
)
def test_each_errno_is_said_in_words(code: int, words: str) -> None:
    message = describe("/runs/a/model.pt", OSError(code, "x"))

    assert message.startswith(f"cannot write /runs/a/model.pt: {words}")
    assert "\n" not in message


def test_make_folder_refuses_a_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")

    with pytest.raises(
        WriteError,
        match=r"cannot write to .*taken/run: a part of the path is "
        r"not a folder \(ENOTDIR\)",
    ):
        make_folder(tmp_path / "taken" / "run")
