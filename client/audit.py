"""The node's audit log: every use of a hospital's data, hash-chained like the privacy ledger.

One JSON-Lines file per dataset, built on the same :class:`medfed.client.chain.HashChain` as the
ledger (seq, previous hash, own hash, a head file, an exclusive lock, fsync). An entry is
``{seq, prev_hash, hash, time, kind, site, study, manifest, round, details}``; ``kind`` is one of

==================  ===========================================================================
``approve``         a manifest hash approved, with its plain-words summary and a signature
``revoke``          an approval withdrawn (the node refuses the study from its next message)
``data-check``      a dataset card checked: card, fingerprint of its files, rows read and kept
``study-start``     round 0 accepted: the study id, the rows the node uses
``round``           what left the node: array names, shapes, bytes, counts, metric keys, epsilon
``study-end``       the final evaluation answered
``refusal``         a message refused, with the reason
``cross-site``      a cross-site request answered (:mod:`.crosssite`): the local-only model sent,
                    or another hospital's model scored here; what left the node, as for a round
``acknowledge``     an operator's acknowledgement of a damaged log (the old one kept aside)
==================  ===========================================================================

The approvals in force are read from the log itself (approvals minus later revocations), so
they are exactly as tamper-evident as the rest. A damaged log (:class:`AuditTampered`) stops
the node from training until :func:`acknowledge` moves it aside, keeping every byte, and starts a
new log whose first entry records the damaged file's hash and the operator's reason.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medfed.infra.chain import ChainTampered, HashChain

SUFFIX = ".audit.jsonl"
KINDS = (
    "approve",
    "revoke",
    "data-check",
    "study-start",
    "round",
    "study-end",
    "personalise",
    "restore",
    "refusal",
    "acknowledge",
    "cross-site",
)
FIELDS = frozenset(
    {"seq", "prev_hash", "hash", "time", "kind", "site", "study", "manifest", "round", "details"}
)


class AuditTampered(ChainTampered):
    """The audit log or its head was edited, reordered or truncated; the message says where."""


class AuditLog(HashChain):
    """The audit log at ``path`` (created on the first entry)."""

    noun = "audit log"
    Tampered = AuditTampered
    fields = FIELDS

    def _check_entries(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            if entry["kind"] not in KINDS:
                raise AuditTampered(
                    f"{self.path}, line {entry['seq'] + 1}: unknown kind "
                    f"{entry['kind']!r}; the audit log was edited."
                )

    def record(
        self,
        kind: str,
        *,
        site: str = "",
        study: str = "",
        manifest: str = "",
        round: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one entry (after verifying the whole log) and return it."""
        if kind not in KINDS:
            raise ValueError(f"unknown audit entry kind {kind!r}; one of {KINDS}")
        return self._append(
            {
                "kind": kind,
                "site": site,
                "study": study,
                "manifest": manifest,
                "round": round,
                "details": details or {},
            }
        )

    def approvals(self) -> dict[str, dict[str, Any]]:
        """Manifest hash -> its approve entry, for every approval not revoked since."""
        active: dict[str, dict[str, Any]] = {}
        for entry in self.verify():
            if entry["kind"] == "approve":
                active[entry["manifest"]] = entry
            elif entry["kind"] == "revoke":
                active.pop(entry["manifest"], None)
        return active

    def find(self, prefix: str) -> str:
        """The full manifest hash of an approval (or former approval) starting with ``prefix``."""
        known = {e["manifest"] for e in self.verify() if e["kind"] in ("approve", "revoke")}
        matches = sorted(h for h in known if h.startswith(prefix.lower()))
        if len(matches) != 1:
            what = "no approved manifest" if not matches else f"{len(matches)} manifests"
            raise ValueError(
                f"{self.path}: {what} starts with {prefix!r}; `medfed node audit "
                "--dataset CARD` lists the approvals"
            )
        return matches[0]


def audit_path(
    dataset: str | Path | None = None, *, folder: str | Path | None = None, site: str = ""
) -> Path:
    """The audit log of a dataset: ``<folder>/<site>.audit.jsonl`` when a folder is given
    (a policy's ``approvals_dir``), else ``<card>.audit.jsonl`` beside the card."""
    if folder:
        return Path(folder) / f"{site}{SUFFIX}"
    if dataset is None:
        raise ValueError("an audit log needs a dataset card or a folder")
    path = Path(dataset)
    return path if path.name.endswith(SUFFIX) else path.with_name(path.name + SUFFIX)


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def acknowledge(path: Path, reason: str) -> tuple[Path, dict[str, Any]]:
    """Move a damaged audit log (and its head) aside and start a new one that records it.

    Nothing is deleted: the damaged files get a ``.damaged-<UTC time>`` suffix. Returns the new
    name of the damaged log and the new log's first entry.
    """
    log = AuditLog(path)
    try:
        log.verify()
        raise ValueError(f"{path}: the audit log verifies; there is nothing to acknowledge")
    except AuditTampered as exc:
        error = str(exc)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = path.with_name(f"{path.name}.damaged-{stamp}")
    fingerprint = file_sha256(path) if path.exists() else ""
    with log.locked():
        for source in (path, log.head_path):
            if source.exists():
                os.replace(source, source.with_name(f"{source.name}.damaged-{stamp}"))
        entry = log.record(
            "acknowledge",
            details={
                "error": error,
                "reason": reason,
                "damaged_file": str(kept),
                "damaged_sha256": fingerprint,
                "note": "approvals in the damaged log no longer count: approve again",
            },
        )
    return kept, entry
