"""Approving a study at a hospital: sign the manifest hash, check it before every message.

``medfed node approve MANIFEST --dataset CARD`` shows the manifest in plain words, asks for
confirmation and appends an ``approve`` entry to the dataset's audit log, signed with the node's
key: its ECDSA node key (``--key``, from ``medfed node keys``) or, without one, an Ed25519
approval key created beside the audit log (``<log>.key``, mode 0600; for rehearsals in
simulation). The signature covers ``{"manifest": hash, "site": name, "time": ...}`` and is
stored with the public key, so anyone holding the log can check who approved what.

:func:`check_approved` is what the node runs: the manifest hash of the study it received must be
approved in its audit log and not revoked since; otherwise it refuses with
:data:`NOT_APPROVED` (exactly ``study not approved: manifest <hash8> (approve it with medfed node
approve)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from medfed.client.audit import AuditLog
from medfed.models.manifest import canonical, sign, verify_signature  # noqa: F401

NOT_APPROVED = "study not approved: manifest {hash8} (approve it with medfed node approve)"


class NotApproved(RuntimeError):
    """The node has not approved (or has revoked) the study's manifest."""

    def __init__(self, manifest_hash: str) -> None:
        super().__init__(NOT_APPROVED.format(hash8=manifest_hash[:8]))


def _load_signing_key(key: Path | None, log: AuditLog) -> Any:
    """The node's private key (``key``), else the log's Ed25519 approval key (made once)."""
    if key is not None:
        return serialization.load_ssh_private_key(key.read_bytes(), None)
    path = log.path.with_name(log.path.name + ".key")
    if path.exists():
        return serialization.load_pem_private_key(path.read_bytes(), None)
    private = ed25519.Ed25519PrivateKey.generate()
    from medfed.infra.keys import write_private

    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(
        path,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return private


def approve(
    log: AuditLog, manifest_hash: str, site: str, summary: list[str], key: Path | None = None
) -> dict[str, Any]:
    """Append a signed ``approve`` entry for ``manifest_hash`` to ``log`` and return it."""
    from datetime import UTC, datetime

    payload = {
        "manifest": manifest_hash,
        "site": site,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    signed = sign(_load_signing_key(key, log), payload)
    return log.record(
        "approve",
        site=site,
        manifest=manifest_hash,
        details={"signed": payload, **signed, "summary": summary},
    )


def check_approved(log: AuditLog, manifest_hash: str) -> None:
    """Raise :class:`NotApproved` unless ``manifest_hash`` is approved, signed and not revoked.

    Raises :class:`medfed.client.audit.AuditTampered` when the log is damaged.
    """
    entry = log.approvals().get(manifest_hash)
    if entry is None:
        raise NotApproved(manifest_hash)
    details = entry["details"]
    if details.get("signed", {}).get("manifest") != manifest_hash or not verify_signature(
        details["signed"], details
    ):
        raise NotApproved(manifest_hash)
