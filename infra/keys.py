"""Keys and secret files of a federation: node key pairs, and files only their owner may read.

Both sides write secrets (the coordinator its CA and TLS keys, a hospital its node key) and both
read OpenSSH keys (the node its private key, the coordinator the public keys it registers).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class DeployError(RuntimeError):
    """A deployment step cannot go on; the message is one sentence naming the file or setting."""


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (mode 0600, also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def create_node_keys(
    folder: Path, comment: str = "medfed-node", *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``node.key`` (private, 0600) and ``node.pub`` into ``folder``; return both paths."""
    private, public = folder / "node.key", folder / "node.pub"
    if private.exists() and not force:
        raise DeployError(
            f"{private} exists already; keep it (its public key may be registered) "
            "or pass --force to replace it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" {comment}\n".encode()
    )
    return private, public


def load_ssh_key(path: Path, *, public: bool, where: str, hint: str) -> bytes:
    """The bytes of the ECDSA key in OpenSSH format at ``path`` (a ``public`` key or an
    unencrypted private one); :class:`DeployError` ``"<where>: <hint>"`` when it is anything
    else."""
    try:
        data = path.read_bytes()
        key = (
            serialization.load_ssh_public_key(data)
            if public
            else serialization.load_ssh_private_key(data, None)
        )
    except OSError as exc:
        raise DeployError(f"{where}: cannot read it ({exc.strerror})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    expected = ec.EllipticCurvePublicKey if public else ec.EllipticCurvePrivateKey
    if not isinstance(key, expected):
        raise DeployError(f"{where}: {hint}")
    return data


def check_private_key(path: Path) -> None:
    """Raise :class:`DeployError` unless ``path`` is an EC private key in OpenSSH format."""
    load_ssh_key(
        path,
        public=False,
        where=f"--key {path}",
        hint="not an unencrypted ECDSA private key in OpenSSH format; create one with "
        "`medfed node keys DIR`",
    )
