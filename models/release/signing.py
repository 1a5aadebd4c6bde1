"""Ed25519 keys for signing model bundles, with ``cryptography`` (no signature code of our own).

A coordinator keeps one key pair (``medfed coordinator init`` writes ``signing.key``, readable by
its owner only, and ``signing.pub``); a simulated study signs with a key pair created for the run
whose private half is never written. Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo
public) so that ``openssl pkey -in signing.pub -pubin -text`` reads them too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_NAME, PUBLIC_NAME = "signing.key", "signing.pub"
SIGNING_KEY_ENV = "MEDFED_SIGNING_KEY"  # the ServerApp signs bundles with the key it names


class SigningKeyError(ValueError):
    """A key file cannot be used; the one-line message names it and says what to do."""


def new_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key (from the operating system's randomness)."""
    return Ed25519PrivateKey.generate()


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The public half of ``key`` as PEM bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(public: bytes) -> str:
    """``SHA256:`` and the first 16 hex digits of the SHA-256 of the raw public key bytes."""
    raw = load_public(public, "public key").public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return "SHA256:" + hashlib.sha256(raw).hexdigest()[:16]


def write_key_pair(folder: Path) -> tuple[Path, Path]:
    """Write ``signing.key`` (mode 0600) and ``signing.pub`` into ``folder``; their paths.

    Raises
    ------
    SigningKeyError
        When ``signing.key`` exists already (a key is never overwritten).
    """
    private_path, public_path = folder / PRIVATE_NAME, folder / PUBLIC_NAME
    if private_path.exists():
        raise SigningKeyError(f"{private_path} exists already; a signing key is never overwritten")
    key = new_key()
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    public_path.write_bytes(public_pem(key))
    return private_path, public_path


def load_private(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path``."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SigningKeyError(f"signing key {path} cannot be read ({exc.strerror})") from None
    except (ValueError, TypeError):
        raise SigningKeyError(f"signing key {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path} is not an Ed25519 key")
    return key


def load_public(data: bytes, where: str) -> Ed25519PublicKey:
    """The Ed25519 public key in PEM ``data`` (read from ``where``, named in errors)."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise SigningKeyError(
            f"{where} is not a PEM public key (use the coordinator's {PUBLIC_NAME})"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{where} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``data``."""
    return key.sign(data)


def signature_valid(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``public``'s signature of ``data``."""
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True
