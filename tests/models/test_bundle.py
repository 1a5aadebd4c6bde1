"""The signed model bundle: every byte is covered by the manifest, the manifest by the signature."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from medfed.models.release.bundle import (
    CARD_JSON,
    CARD_MD,
    MANIFEST,
    PREPROCESSING,
    SIGNATURE,
    SIGNER,
    WEIGHTS,
    BundleError,
    sha256,
    verify_bundle,
    write_bundle,
)
from medfed.models.release.signing import (
    SigningKeyError,
    fingerprint,
    load_private,
    new_key,
    public_pem,
    sign,
    write_key_pair,
)

FILES = {
    WEIGHTS: b"\x80weights" * 50,
    PREPROCESSING: b'{"task": {}}',
    CARD_JSON: b'{"card": 1}',
    CARD_MD: b"# Model card\n",
}


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, object]:
    key = new_key()
    return write_bundle(tmp_path / "model", FILES, key, "run"), key


def test_a_written_bundle_verifies_and_lists_every_file(bundle) -> None:
    path, key = bundle
    verified = verify_bundle(path)
    assert verified.files == tuple(sorted([*FILES, SIGNER]))
    assert verified.signer == fingerprint(public_pem(key)) and not verified.pinned
    assert verified.line().startswith(f"OK: {path} verifies: 5 files")
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["files"][WEIGHTS] == sha256(FILES[WEIGHTS])
    assert sorted(p.name for p in path.parent.iterdir()) == ["model"]  # no temporary folder


@pytest.mark.parametrize("name", [WEIGHTS, CARD_MD, CARD_JSON, PREPROCESSING])
def test_one_changed_byte_in_any_file_is_refused_naming_the_file(bundle, name: str) -> None:
    path, _ = bundle
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(
        BundleError,
        match=rf"{name}: its SHA-256 does not match the signed "
        "manifest; the file was changed after signing",
    ):
        verify_bundle(path)


def test_a_manifest_rewritten_for_a_changed_file_fails_the_signature(bundle) -> None:
    path, _ = bundle
    (path / WEIGHTS).write_bytes(b"other weights")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][WEIGHTS] = sha256(b"other weights")
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(BundleError, match="signature of manifest.json does not verify"):
        verify_bundle(path)


def test_a_bundle_re_signed_by_another_key_fails_against_the_coordinators_key(
    bundle, tmp_path: Path
) -> None:
    path, key = bundle
    coordinator_pub = tmp_path / "coordinator.pub"
    coordinator_pub.write_bytes(public_pem(key))
    forger = new_key()
    (path / SIGNER).write_bytes(public_pem(forger))
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][SIGNER] = sha256(public_pem(forger))
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (path / MANIFEST).write_bytes(data)
    (path / SIGNATURE).write_bytes(sign(forger, data))
    assert not verify_bundle(path).pinned  # consistent in itself: only a pinned key tells
    with pytest.raises(BundleError, match=f"does not verify with the key {coordinator_pub}"):
        verify_bundle(path, coordinator_pub)


def test_the_right_pinned_key_verifies(bundle, tmp_path: Path) -> None:
    path, key = bundle
    pub = tmp_path / "signing.pub"
    pub.write_bytes(public_pem(key))
    verified = verify_bundle(path, pub)
    assert verified.pinned and "checked against the key given" in verified.line()


def test_an_extra_or_a_missing_file_is_refused(bundle) -> None:
    path, _ = bundle
    (path / "notes.txt").write_text("added later")
    with pytest.raises(BundleError, match=r"file\(s\) \['notes.txt'\] that the signed manifest"):
        verify_bundle(path)
    (path / "notes.txt").unlink()
    (path / CARD_MD).unlink()
    with pytest.raises(BundleError, match="model_card.md is missing"):
        verify_bundle(path)


def test_a_folder_that_is_no_bundle_says_so(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="is not a model bundle folder"):
        verify_bundle(tmp_path / "nothing")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        verify_bundle(tmp_path)


def test_writing_again_replaces_the_bundle_completely(bundle) -> None:
    path, key = bundle
    write_bundle(path, {**FILES, WEIGHTS: b"new"}, key, "run")
    assert (path / WEIGHTS).read_bytes() == b"new"
    assert verify_bundle(path).files == tuple(sorted([*FILES, SIGNER]))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model"]


def test_the_coordinator_key_pair_is_private_and_never_overwritten(tmp_path: Path) -> None:
    private, public = write_key_pair(tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert fingerprint(public.read_bytes()) == fingerprint(public_pem(load_private(private)))
    with pytest.raises(SigningKeyError, match="exists already"):
        write_key_pair(tmp_path)
    private.write_text("not a key")
    with pytest.raises(SigningKeyError, match="is not an unencrypted PEM private key"):
        load_private(private)
