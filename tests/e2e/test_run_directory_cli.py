"""Issue 11 section 3 through the real CLI: nothing overwritten, nothing half-written looks done.

A second study into a run directory is refused (exit 2) and the first run stays byte-for-byte
as it was; ``overwrite=true`` replaces it; ``synth export`` refuses to replace files without
``--force``; a disk that fills up mid-run ends in one sentence naming the file and ENOSPC, exit
1, with every file written before still readable and no summary claiming the study finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

MEDFED = str(Path(sys.executable).with_name("medfed"))
SMALL = [
    "rounds=2",
    "quiet=true",
    "federation.hospitals=3",
    "federation.min_size=60",
    "federation.max_size=80",
]


def _medfed(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run(
        [*prefix, MEDFED, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_a_run_directory_is_never_replaced_without_overwrite(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _medfed("simulate", *SMALL, f"output_dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    before = _hashes(run)

    again = _medfed("simulate", *SMALL, "seed=1", f"output_dir={run}", cwd=tmp_path)

    assert again.returncode == 2
    assert again.stderr.strip() == (
        f"medfed: error: output_dir {run} already holds a run (finished); give resume={run} "
        "to continue it, overwrite=true to replace it, or another output_dir"
    )
    assert _hashes(run) == before

    interrupted = tmp_path / "interrupted"  # a run that never wrote its summary
    shutil.copytree(run, interrupted)
    (interrupted / "summary.json").unlink()
    refused = _medfed("simulate", *SMALL, f"output_dir={interrupted}", cwd=tmp_path)
    assert refused.returncode == 2 and "already holds a run (interrupted)" in refused.stderr

    replaced = _medfed(
        "simulate", *SMALL, "seed=1", "overwrite=true", f"output_dir={run}", cwd=tmp_path
    )
    assert replaced.returncode == 0, replaced.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["seed"] == 1
    assert _hashes(run)["model.pt"] != before["model.pt"]


def test_synth_export_refuses_to_replace_files_without_force(tmp_path: Path) -> None:
    out = tmp_path / "cards"
    assert _medfed("synth", "export", "--hospitals", "2", str(out), cwd=tmp_path).returncode == 0
    before = _hashes(out)

    again = _medfed("synth", "export", "--hospitals", "2", "--seed", "1", str(out), cwd=tmp_path)

    assert again.returncode == 1
    assert again.stderr.startswith(f"medfed: error: {out}/")
    assert "already exist(s); nothing was written (give --force" in again.stderr
    assert _hashes(out) == before
    forced = _medfed(
        "synth", "export", "--hospitals", "2", "--seed", "1", "--force", str(out), cwd=tmp_path
    )
    assert forced.returncode == 0, forced.stderr
    assert _hashes(out) != before


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(
    not _can_mount_tmpfs(),
    reason="needs root and mount namespaces (unshare -m) to give the run a small disk of its own",
)
def test_a_full_disk_ends_in_one_sentence_and_leaves_what_was_written_readable(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    run = disk / "run"
    # A 48 KB tmpfs in a private mount namespace: it vanishes with the process, and fills up
    # while the run directory is written (the plots alone are larger).
    script = (
        f'mount -t tmpfs -o size=48k tmpfs {disk} && "$0" "$@"; status=$?; '
        f"cp -r {disk}/. {tmp_path}/after 2>/dev/null; exit $status"
    )
    done = _medfed(
        "simulate",
        *SMALL,
        f"output_dir={run}",
        cwd=tmp_path,
        prefix=("unshare", "-m", "sh", "-c", script),
    )

    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"medfed: error: cannot write {run}/")
    assert "no space left on device (ENOSPC)" in lines[0]
    after = tmp_path / "after" / "run"
    assert yaml.safe_load((after / "config.yaml").read_text())["rounds"] == 2
    assert not list(after.glob(".*.tmp"))  # no half-written temporary file
    summary = after / "summary.json"
    if summary.exists():
        assert json.loads(summary.read_text())["status"] != "finished"


@pytest.mark.skipif(
    not _can_mount_tmpfs(),
    reason="needs root and mount namespaces (unshare -m) "
    "for a read-only file system (root ignores chmod)",
)
def test_a_read_only_folder_ends_in_one_sentence_before_any_work(tmp_path: Path) -> None:
    disk = tmp_path / "ro"
    disk.mkdir()
    script = f'mount -t tmpfs -o ro,size=64k tmpfs {disk} && exec "$0" "$@"'
    done = _medfed(
        "simulate",
        *SMALL,
        f"output_dir={disk / 'run'}",
        cwd=tmp_path,
        prefix=("unshare", "-m", "sh", "-c", script),
    )

    assert done.returncode == 1
    assert done.stderr == (
        f"medfed: error: cannot write to {disk / 'run'}: read-only file "
        "system (EROFS); choose a writable output_dir\n"
    )
