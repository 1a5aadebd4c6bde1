"""The study manifest: the code hash by hand, every setting in the hash, YAML round trip."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from medfed.models.manifest import (
    build_manifest,
    describe,
    hash_code,
    installed_code_hash,
    manifest_hash,
    to_yaml,
)
from medfed.server.study.config import compose_study


def _tree(root, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_code_hash_is_sorted_paths_sizes_and_bytes(tmp_path):
    _tree(
        tmp_path,
        {
            "models/b.py": b"B",
            "client/a.py": b"AA",
            "client/x/__pycache__/c.py": b"",
            "server/s.py": b"not hashed",
            "client/notes.txt": b"not code",
        },
    )
    expected = hashlib.sha256(b"client/a.py\x002\x00AA" + b"models/b.py\x001\x00B").hexdigest()
    assert hash_code(tmp_path) == (expected, 2)


def test_moving_bytes_between_files_changes_the_code_hash(tmp_path):
    _tree(tmp_path / "one", {"client/a.py": b"AB", "client/b.py": b""})
    _tree(tmp_path / "two", {"client/a.py": b"A", "client/b.py": b"B"})
    assert hash_code(tmp_path / "one")[0] != hash_code(tmp_path / "two")[0]


def test_installed_code_is_the_client_and_models_packages():
    digest, files = installed_code_hash()
    assert len(digest) == 64 and files > 20


@pytest.fixture(scope="module")
def study():
    return compose_study(["federation.hospitals=3", "rounds=2"])


@pytest.mark.parametrize(
    "override",
    [
        "train.lr=0.11",
        "rounds=3",
        "seed=1",
        "privacy=dpsgd",
        "strategy=fedprox",
        "federation.hospitals=4",
        "task=pricing",
        "preprocessing.min_cell=6",
        "secure_aggregation=true",
    ],
)
def test_every_setting_a_node_runs_is_in_the_hash(study, override):
    other = compose_study(["federation.hospitals=3", "rounds=2", override])
    assert manifest_hash(build_manifest(other)) != manifest_hash(build_manifest(study))


@pytest.mark.parametrize(
    "override",
    ["timeout=30", "quiet=true", "output_dir=/tmp/x", "privacy.ledger_dir=/tmp/l", "threads=2"],
)
def test_how_a_study_runs_is_not_in_the_hash(study, override):
    other = compose_study(["federation.hospitals=3", "rounds=2", override])
    assert manifest_hash(build_manifest(other)) == manifest_hash(build_manifest(study))


def test_sites_and_coordinator_are_in_the_manifest(study):
    manifest = build_manifest(study)
    assert manifest["sites"] == ["hospital-0", "hospital-1", "hospital-2"]
    assert manifest["coordinator"] == "unsigned"
    named = {**study, "governance": {"sites": ["b", "a"], "coordinator": "ssh-ed25519 AAAA"}}
    other = build_manifest(named)
    assert other["sites"] == ["a", "b"] and other["coordinator"] == "ssh-ed25519 AAAA"
    assert manifest_hash(other) != manifest_hash(manifest)


def test_yaml_round_trip_keeps_the_hash(study):
    manifest = build_manifest(compose_study(["privacy=dpsgd", "privacy.delta=1e-5"]))
    assert manifest_hash(yaml.safe_load(to_yaml(manifest))) == manifest_hash(manifest)
    top = [line.split(":")[0] for line in to_yaml(manifest).splitlines() if line[:1].isalpha()]
    assert top == sorted(top)


def test_plain_words_name_columns_rounds_privacy_and_sites(study):
    lines = "\n".join(describe(build_manifest(compose_study(["privacy=dpsgd", "rounds=7"]))))
    assert "chest_pain" in lines and "7 rounds" in lines and "DP-SGD" in lines
    assert "hospital-3" in lines
    assert "schedule" not in lines  # constant: nothing to say
    pricing = describe(build_manifest(compose_study(["task=pricing", "privacy=dpsgd"])))
    assert "60 rounds of 1 local epoch(s) (lr 1.0 on a cosine schedule, batch 64)" in "\n".join(
        pricing
    )  # the task's DP-SGD block: what the hospital approves says how it will train


def test_a_nan_setting_hashes_and_round_trips():
    manifest = build_manifest(compose_study(["attack.kind=nan"]))  # Hydra reads nan as a float
    assert manifest_hash(yaml.safe_load(to_yaml(manifest))) == manifest_hash(manifest)
