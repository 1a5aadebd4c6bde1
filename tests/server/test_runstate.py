"""How a run directory's study ended (medfed.server.study.runstate), by hand-written folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfed.server.study.runstate import (
    RunDirectoryTaken,
    clear_for_overwrite,
    record_failure,
    refuse_existing_run,
    run_state,
)


def _summary(folder: Path, **fields) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(fields))


def test_run_state_reads_the_status_field(tmp_path: Path) -> None:
    assert run_state(tmp_path) is None  # an empty folder holds no run
    _summary(tmp_path / "a", status="finished")
    _summary(tmp_path / "b", status="stopped", reason="round 3: no hospital trained")
    _summary(tmp_path / "c", stopped="round 2: too few")  # written before statuses existed
    _summary(tmp_path / "d", rounds=3)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "config.yaml").write_text("rounds: 3\n")

    assert run_state(tmp_path / "a") == ("finished", "")
    assert run_state(tmp_path / "b") == ("stopped", "round 3: no hospital trained")
    assert run_state(tmp_path / "c") == ("stopped", "round 2: too few")
    assert run_state(tmp_path / "d") == ("finished", "")
    assert run_state(tmp_path / "e") == ("interrupted", "no summary.json: the study never ended")


def test_a_taken_output_dir_is_refused_unless_resumed_or_overwritten(tmp_path: Path) -> None:
    _summary(tmp_path, status="failed", reason="OSError: x")

    with pytest.raises(RunDirectoryTaken, match=r"already holds a run \(failed\)"):
        refuse_existing_run({"output_dir": str(tmp_path)})
    refuse_existing_run({"output_dir": str(tmp_path), "resume": str(tmp_path)})
    refuse_existing_run({"output_dir": str(tmp_path), "overwrite": True})
    refuse_existing_run({"output_dir": str(tmp_path / "new")})


def test_overwrite_clears_the_earlier_run_and_a_failure_is_recorded(tmp_path: Path) -> None:
    _summary(tmp_path, status="finished")
    (tmp_path / "model.pt").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("the user's own file stays")
    study = {"output_dir": str(tmp_path), "overwrite": True, "study_id": "s-1"}

    clear_for_overwrite(study)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]

    record_failure(study, ValueError("bad thing\nsecond line"))
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "status": "failed",
        "reason": "ValueError: bad thing",
        "stopped": "ValueError: bad thing",
        "study_id": "s-1",
    }
    record_failure(study, KeyboardInterrupt())
    assert run_state(tmp_path) == ("stopped", "interrupted (Ctrl-C or SIGTERM)")
