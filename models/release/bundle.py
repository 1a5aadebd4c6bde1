"""The model bundle: a folder holding everything needed to score raw rows, signed.

=====================  ==========================================================================
``weights.pt``         the final global weights (``torch.load(..., weights_only=True)``)
``preprocessing.json`` the task schema, the normalisation and imputation statistics (global, or
                       per site), the encoder's column layout and the decision threshold
``model_card.md``      what the model is for, who trained it on what, how well, under which
``model_card.json``    privacy guarantee (:mod:`medfed.models.release.model_card`)
``signer.pub``         the public key that signed the manifest (PEM, Ed25519)
``manifest.json``      the SHA-256 of every file above
``manifest.sig``       the Ed25519 signature of ``manifest.json``
=====================  ==========================================================================

A bundle is written into a hidden temporary folder and renamed into place, so a half-written
bundle never looks finished. :func:`verify_bundle` checks the signature and then every hash, and
refuses extra or missing files: a bundle either verifies completely or is not used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medfed.models.release.signing import (
    SigningKeyError,
    fingerprint,
    load_public,
    public_pem,
    sign,
    signature_valid,
)

FORMAT = "medfed-model-bundle/1"
MANIFEST, SIGNATURE, SIGNER = "manifest.json", "manifest.sig", "signer.pub"
WEIGHTS, PREPROCESSING = "weights.pt", "preprocessing.json"
CARD_JSON, CARD_MD = "model_card.json", "model_card.md"
CONTENT = (WEIGHTS, PREPROCESSING, CARD_JSON, CARD_MD)


class BundleError(ValueError):
    """A bundle is missing, damaged, tampered with or signed by another key (one line)."""


@dataclass(frozen=True)
class Verified:
    """A bundle that verified: its folder, the signer's fingerprint and what it was checked with.

    ``pinned`` is True when the signature was checked against a key the user gave (``--key``),
    False when against the key inside the bundle (integrity only, not who signed it).
    """

    path: Path
    signer: str
    signer_kind: str
    pinned: bool
    files: tuple[str, ...]

    def line(self) -> str:
        """The one line ``medfed model verify`` prints."""
        how = (
            "checked against the key given"
            if self.pinned
            else "checked against the key inside the bundle; pass --key with the coordinator's "
            "signing.pub to check who signed it"
        )
        return (
            f"OK: {self.path} verifies: {len(self.files)} files match the signed manifest, "
            f"signed by the {self.signer_kind} key {self.signer} ({how})"
        )


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def write_bundle(
    folder: Path, files: dict[str, bytes], key: Ed25519PrivateKey, signer_kind: str
) -> Path:
    """Write the bundle ``files`` (name -> bytes, the names of :data:`CONTENT`) into ``folder``.

    The manifest lists the SHA-256 of every file and of ``signer.pub``; it is signed with
    ``key``. ``signer_kind`` says whose key it is (``coordinator`` or ``run``). An existing
    bundle at ``folder`` (a resumed study finishing again) is replaced only once the new one is
    complete.
    """
    missing = sorted(set(CONTENT) - set(files))
    if missing:
        raise ValueError(f"a model bundle needs the files {missing}")
    content = {**files, SIGNER: public_pem(key)}
    manifest = {
        "format": FORMAT,
        "signer": {"kind": signer_kind, "fingerprint": fingerprint(content[SIGNER])},
        "files": {name: sha256(data) for name, data in sorted(content.items())},
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    content[MANIFEST], content[SIGNATURE] = manifest_bytes, sign(key, manifest_bytes)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, data in content.items():
        (tmp / name).write_bytes(data)
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _read(path: Path, name: str) -> bytes:
    try:
        return (path / name).read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"{path} is not a complete model bundle: {name} is missing; use the "
            "model/ folder of a finished study"
        ) from None
    except OSError as exc:
        raise BundleError(f"{path / name} cannot be read ({exc.strerror})") from None


def _manifest(path: Path, data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        if manifest["format"] != FORMAT or not isinstance(files, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{path / MANIFEST} is not a {FORMAT} manifest") from None
    return manifest


def _public_key(path: Path, key: Path | None) -> tuple[Any, bytes]:
    if key is None:
        data = _read(path, SIGNER)
        where = str(path / SIGNER)
    else:
        try:
            data = key.read_bytes()
        except OSError as exc:
            raise BundleError(f"--key {key} cannot be read ({exc.strerror})") from None
        where = f"--key {key}"
    try:
        return load_public(data, where), data
    except SigningKeyError as exc:
        raise BundleError(str(exc)) from None


def _check_files(path: Path, manifest: dict[str, Any]) -> tuple[str, ...]:
    listed = manifest["files"]
    present = {p.name for p in path.iterdir()} - {MANIFEST, SIGNATURE}
    extra = sorted(present - set(listed))
    if extra:
        raise BundleError(
            f"{path} holds file(s) {extra} that the signed manifest does not list; "
            "the bundle was changed after signing: do not use it"
        )
    for name in sorted(listed):
        if sha256(_read(path, name)) != listed[name]:
            raise BundleError(
                f"{path / name}: its SHA-256 does not match the signed manifest; "
                "the file was changed after signing: do not use this model"
            )
    unlisted = sorted(set(CONTENT) - set(listed))
    if unlisted:
        raise BundleError(
            f"{path}: the signed manifest does not list {unlisted}; not a bundle medfed wrote"
        )
    return tuple(sorted(listed))


def verify_bundle(path: str | Path, key: str | Path | None = None) -> Verified:
    """Check the signature of the manifest (with ``key``, else the bundle's own key), then every
    file's SHA-256; return what verified.

    Raises
    ------
    BundleError
        With one sentence naming the file that failed and what it means.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(
            f"{folder} is not a model bundle folder; give the model/ folder of a "
            "finished study's run directory"
        )
    manifest_bytes = _read(folder, MANIFEST)
    signature = _read(folder, SIGNATURE)
    public, public_bytes = _public_key(folder, None if key is None else Path(key))
    if not signature_valid(public, signature, manifest_bytes):
        source = f"the key {key}" if key is not None else f"the bundle's own {SIGNER}"
        raise BundleError(
            f"{folder / SIGNATURE}: the signature of {MANIFEST} does not verify "
            f"with {source}; the bundle was changed after signing or signed by "
            "another key: do not use it"
        )
    manifest = _manifest(folder, manifest_bytes)
    files = _check_files(folder, manifest)
    return Verified(
        folder,
        fingerprint(public_bytes),
        str(manifest["signer"].get("kind", "?")),
        key is not None,
        files,
    )
