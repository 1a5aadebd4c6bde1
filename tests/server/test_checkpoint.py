"""Checkpoints: the file format's checks, and a study interrupted after round 2 that resumes to the
same final weights as an uninterrupted one (FedAdam, so the server's moments must survive)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medfed.client.app import app as medfed_client
from medfed.server.simulation.engine import InProcessGrid
from medfed.server.study import checkpoint as ckpt
from medfed.server.study.config import ConfigError, compose_study
from medfed.server.study.loop import run_study

SMALL = [
    "federation.hospitals=3",
    "federation.min_size=60",
    "federation.max_size=120",
    "quiet=true",
    "strategy=fedadam",
    "rounds=4",
    "policy.min_cell_count=1",
]


def _run(study, observer=None):
    grid = InProcessGrid(
        medfed_client, [{"partition-id": i, "num-partitions": 3} for i in range(3)], run_config={}
    )
    return run_study(grid, study, observer)


@pytest.fixture
def key(tmp_path) -> Path:
    return ckpt.new_key(tmp_path / "checkpoint.key")


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_checkpoint_round_trips(tmp_path, key, encrypted):
    secret = ckpt.read_key(key) if encrypted else None
    data = {"state": {"w": torch.arange(6.0).reshape(2, 3)}, "server_round": 3, "study": "{}"}
    ckpt.save(tmp_path / "c.pt", data, secret)
    loaded = ckpt.load(tmp_path / "c.pt", secret)
    assert loaded["server_round"] == 3 and torch.equal(loaded["state"]["w"], data["state"]["w"])
    assert (b"MEDFED-CKPT1F" if encrypted else b"MEDFED-CKPT1P") == (
        tmp_path / "c.pt"
    ).read_bytes()[:13]
    assert not list(tmp_path.glob(".*.tmp"))


def test_damaged_or_wrongly_keyed_checkpoints_are_refused_and_left_untouched(tmp_path, key):
    path = tmp_path / "c.pt"
    ckpt.save(path, {"server_round": 1}, ckpt.read_key(key))
    other = ckpt.read_key(ckpt.new_key(tmp_path / "other.key"))
    original = path.read_bytes()
    with pytest.raises(ckpt.CheckpointError, match="encrypted: give the key"):
        ckpt.load(path, None)
    with pytest.raises(ckpt.CheckpointError, match="cannot be decrypted.*wrong key"):
        ckpt.load(path, other)
    assert path.read_bytes() == original
    plain = tmp_path / "p.pt"
    ckpt.save(plain, {"server_round": 1}, None)
    raw = bytearray(plain.read_bytes())
    raw[-10] ^= 0xFF
    plain.write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match="corrupted"):
        ckpt.load(plain, None)
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ckpt.CheckpointError, match="not a medfed checkpoint"):
        ckpt.load(tmp_path / "x.pt", None)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load(tmp_path / "missing.pt", None)


def test_keys_are_never_overwritten_and_must_be_fernet_keys(tmp_path, key):
    with pytest.raises(ckpt.CheckpointError, match="never overwritten"):
        ckpt.new_key(key)
    assert key.stat().st_mode & 0o777 == 0o600
    (tmp_path / "bad.key").write_text("hunter2")
    with pytest.raises(ckpt.CheckpointError, match="does not hold a Fernet key"):
        ckpt.read_key(tmp_path / "bad.key")


@pytest.mark.parametrize("encrypted", [False, True])
def test_an_interrupted_study_resumes_to_the_same_final_weights(
    tmp_path, key, encrypted, crash_after
):
    extra = [f"checkpoint.key_file={key}"] if encrypted else []
    whole = _run(compose_study([*SMALL, *extra, f"output_dir={tmp_path / 'whole'}"]))
    interrupted = tmp_path / "interrupted"
    with pytest.raises(crash_after.Crash):
        _run(compose_study([*SMALL, *extra, f"output_dir={interrupted}"]), crash_after(2))
    saved = ckpt.load(interrupted / ckpt.FILENAME, ckpt.read_key(key) if encrypted else None)
    assert saved["server_round"] == 2
    assert saved["strategy"][0]["m_t"] and saved["strategy"][0]["v_t"]  # FedAdam's moments
    resumed = _run(compose_study([f"resume={interrupted}", *extra]))
    assert [r.server_round for r in resumed.rounds] == [0, 1, 2, 3, 4]
    for key_name, tensor in whole.final_state.items():
        assert torch.equal(resumed.final_state[key_name], tensor), key_name
    assert resumed.final.global_metrics == pytest.approx(whole.final.global_metrics)
    assert resumed.rounds[1].train == whole.rounds[1].train  # restored from the checkpoint


def test_resume_keeps_the_study_id_and_refuses_changes(tmp_path, crash_after):
    run_dir = tmp_path / "run"
    with pytest.raises(crash_after.Crash):
        _run(compose_study([*SMALL, f"output_dir={run_dir}"]), crash_after(1))
    saved = json.loads(ckpt.load(run_dir / ckpt.FILENAME, None)["study"])
    assert compose_study([f"resume={run_dir}"])["study_id"] == saved["study_id"]
    with pytest.raises(ConfigError, match="drop the override rounds=9"):
        compose_study([f"resume={run_dir}", "rounds=9"])
    with pytest.raises(ConfigError, match="no config.yaml there"):
        compose_study([f"resume={tmp_path / 'nowhere'}"])
    resumed = compose_study([f"resume={run_dir}", "quiet=true", "timeout=30"])
    assert resumed["output_dir"] == str(run_dir) and resumed["timeout"] == 30


def test_a_corrupt_checkpoint_stops_the_resume_before_anything_is_written(tmp_path, crash_after):
    run_dir = tmp_path / "run"
    with pytest.raises(crash_after.Crash):
        _run(compose_study([*SMALL, f"output_dir={run_dir}"]), crash_after(2))
    path = run_dir / ckpt.FILENAME
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x01
    path.write_bytes(bytes(raw))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(ckpt.CheckpointError, match="corrupted"):
        _run(compose_study([f"resume={run_dir}"]))
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_medfed_simulate_resumes_a_run_directory(tmp_path, key, load_model, crash_after):
    """The researcher's command: ``medfed simulate resume=RUN_DIR`` finishes the study."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    extra = [f"checkpoint.key_file={key}"]
    whole = _run(compose_study([*SMALL, *extra, f"output_dir={tmp_path / 'whole'}"]))
    with pytest.raises(crash_after.Crash):
        _run(compose_study([*SMALL, *extra, f"output_dir={run_dir}"]), crash_after(3))
    medfed = Path(sys.executable).with_name("medfed")
    wrong = subprocess.run(
        [str(medfed), "simulate", f"resume={run_dir}", "quiet=true"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert wrong.returncode == 1 and "encrypted: give the key" in wrong.stderr
    assert wrong.stderr.count("\n") == 1
    done = subprocess.run(
        [str(medfed), "simulate", f"resume={run_dir}", "quiet=true", *extra],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 4 and summary["study_id"]
    for name, tensor in load_model(run_dir).items():
        assert torch.equal(tensor, whole.final_state[name]), name
