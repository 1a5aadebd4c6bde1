"""The privacy ledger: every DP-SGD spend on one hospital dataset, append-only and tamper-evident.

One JSON-Lines file per dataset on the node's disk, one entry per line. A round appends a
``reserved`` entry before training (study, task, round, noise multiplier, sample rate, steps,
delta, projected epsilon, accountant, time) and a ``committed`` entry (epsilon after) once the
reply is sent, or a ``released`` entry if training never started. A reservation that is never
closed -- the node crashed after training -- still counts as spent: :meth:`Ledger.history` is every
reservation that was not released.

Tamper evidence: each entry carries ``seq``, the previous entry's hash (``prev_hash``) and its
own ``hash``, SHA-256 of its canonical JSON (sorted keys, no spaces) or HMAC-SHA256 with the node's
key when one is given. A sidecar ``<ledger>.head`` (written atomically after each append) records
the entry count and last hash, so deleting or cutting trailing entries is detected too. Edited,
reordered, removed or truncated entries raise :class:`LedgerTampered`, and every operation
verifies the chain first, so a node refuses to train on a damaged ledger.

Threat model, honestly: without a key the chain stops accidental corruption, naive edits and
partial restores, but anyone who can write both files can recompute a consistent chain, and
deleting the ledger *and* its head together looks like a dataset that never trained. With a key
(readable only by the node's service account) forging needs the key; only deleting both files
remains undetectable locally (back the ledger up, or keep heads elsewhere). A head that lags the
file by whole entries (a crash between the two writes) and a torn last line beyond the head (a
crash mid-append, before :meth:`Ledger.reserve` returned) are repaired on the next write.

Writers hold an exclusive ``fcntl.flock`` on ``<ledger>.lock``; appends are single ``write``
calls followed by ``fsync``. :meth:`Ledger.locked` lets a node check its policy and reserve under
one lock, so two processes cannot both spend the last of a budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfed.infra.chain import GENESIS, ChainTampered, HashChain  # noqa: F401 (re-exported)

SUFFIX = ".ledger.jsonl"
STATUSES = ("reserved", "committed", "released")
_SPEND_KEYS = (
    "study",
    "task",
    "round",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "delta",
    "accountant",
)
_KEYS = {"seq", "prev_hash", "hash", "status", "ref", "epsilon", "time", "reason", *_SPEND_KEYS}


class LedgerTampered(ChainTampered):
    """The ledger or its head file was edited, reordered or truncated; the message says where."""


class LedgerError(ValueError):
    """A ledger operation that cannot apply, e.g. committing an unknown reservation."""


@dataclass(frozen=True)
class Spend:
    """Epsilon spent on a dataset, per study and composed over everything, at ``delta``."""

    total: float
    studies: dict[str, float] = field(default_factory=dict)
    rounds: dict[str, int] = field(default_factory=dict)
    delta: float | None = None
    accountant: str = "rdp"
    open_reservations: int = 0


def spent_epsilon(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """Epsilon of a spend history at ``delta``: the one function ``medfed node ledger`` and the
    node's policy check (:mod:`medfed.client.privacy_round`) both use, so they agree."""
    from medfed.models.privacy import epsilon_from_history

    return epsilon_from_history(history, delta, accountant) if history else 0.0


def ledger_path(dataset: str | Path) -> Path:
    """The ledger of a dataset (card or data file): ``<dataset>.ledger.jsonl`` next to it.

    A path that already ends in ``.ledger.jsonl`` is returned unchanged.
    """
    path = Path(dataset)
    return path if path.name.endswith(SUFFIX) else path.with_name(path.name + SUFFIX)


def _number(value: float) -> float | str:
    """JSON-safe number: non-finite values become the strings ``inf`` / ``nan``."""
    value = float(value)
    return value if math.isfinite(value) else str(value)


class Ledger(HashChain):
    """The privacy ledger at ``path`` (created on the first write); ``key`` turns on HMAC.

    The chain, head file, lock and crash repair are :class:`medfed.client.chain.HashChain`'s (the
    audit log shares them); this class adds the spend bookkeeping. One instance per process and
    file: the lock is re-entrant within an instance only.
    """

    noun = "ledger"
    Tampered = LedgerTampered
    fields = frozenset(_KEYS)

    def _check_entries(self, entries: list[dict[str, Any]]) -> None:
        closed: set[int] = set()
        for entry in entries:
            ref = entry["ref"]
            if entry["status"] == "reserved" and ref is None:
                continue
            bad = (
                entry["status"] not in STATUSES[1:]
                or not isinstance(ref, int)
                or not 0 <= ref < entry["seq"]
                or entries[ref]["status"] != "reserved"
                or ref in closed
            )
            if bad:
                raise LedgerTampered(
                    f"{self.path}, line {entry['seq'] + 1}: it closes no open "
                    "reservation; the ledger was edited."
                )
            closed.add(ref)

    def _append(
        self, fields: dict[str, Any], *, defaults: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return super()._append(fields, defaults={"reason": "", "ref": None, **(defaults or {})})

    def reserve(
        self,
        study: str,
        task: str,
        round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        delta: float,
        projected_epsilon: float,
        *,
        accountant: str = "rdp",
    ) -> int:
        """Record a round's spend before training; return the entry id for :meth:`commit`."""
        if not (noise_multiplier >= 0 and 0 < sample_rate <= 1 and steps >= 0 and 0 < delta < 1):
            raise LedgerError(
                f"Refusing to record an invalid spend (noise {noise_multiplier}, "
                f"sample rate {sample_rate}, steps {steps}, delta {delta})."
            )
        return self._append(
            {
                "status": "reserved",
                "study": str(study),
                "task": str(task),
                "round": int(round),
                "noise_multiplier": float(noise_multiplier),
                "sample_rate": float(sample_rate),
                "steps": int(steps),
                "delta": float(delta),
                "accountant": str(accountant),
                "epsilon": _number(projected_epsilon),
            }
        )["seq"]

    def _close(self, entry_id: int, status: str, epsilon: float | None, reason: str) -> None:
        with self.locked():
            entries = self._read()[0]
            open_ids = {e["seq"] for e in entries if e["status"] == "reserved"} - {
                e["ref"] for e in entries if e["ref"] is not None
            }
            if entry_id not in open_ids:
                raise LedgerError(f"{self.path}: entry {entry_id} is not an open reservation.")
            spend = {k: entries[entry_id][k] for k in _SPEND_KEYS}
            eps = entries[entry_id]["epsilon"] if epsilon is None else _number(epsilon)
            self._append(
                {**spend, "status": status, "ref": entry_id, "epsilon": eps, "reason": reason}
            )

    def commit(self, entry_id: int, epsilon_after: float) -> None:
        """Close reservation ``entry_id`` as spent, recording the epsilon after the round."""
        self._close(entry_id, "committed", epsilon_after, "")

    def release(self, entry_id: int, reason: str) -> None:
        """Close reservation ``entry_id`` as not spent: only if no training step ever ran."""
        self._close(entry_id, "released", None, reason)

    def history(self, study: str | None = None) -> list[tuple[float, float, int]]:
        """``(noise, sample_rate, steps)`` of every reservation not released (of ``study``)."""
        entries = self.verify()
        released = {e["ref"] for e in entries if e["status"] == "released"}
        return [
            (e["noise_multiplier"], e["sample_rate"], e["steps"])
            for e in entries
            if e["status"] == "reserved"
            and e["seq"] not in released
            and (study is None or e["study"] == study)
        ]

    def spent(
        self, study: str | None = None, *, delta: float | None = None, accountant: str | None = None
    ) -> Spend:
        """Epsilon per study and in total, recomputed from the history.

        ``delta`` defaults to the largest delta recorded (per study: that study's), and
        ``accountant`` to the last one recorded. ``study`` limits ``studies`` to one study.
        """
        entries = self.verify()
        released = {e["ref"] for e in entries if e["status"] == "released"}
        closed = {e["ref"] for e in entries if e["ref"] is not None}
        spends = [e for e in entries if e["status"] == "reserved" and e["seq"] not in released]
        if not spends:
            return Spend(total=0.0, delta=delta, accountant=accountant or "rdp")
        acct = accountant or spends[-1]["accountant"]

        def epsilon(rows: list[dict[str, Any]]) -> float:
            at = delta or max(r["delta"] for r in rows)
            hist = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
            return spent_epsilon(hist, at, acct)

        names = sorted({e["study"] for e in spends if study is None or e["study"] == study})
        by_study = {name: [e for e in spends if e["study"] == name] for name in names}
        return Spend(
            total=epsilon(spends),
            accountant=acct,
            studies={name: epsilon(rows) for name, rows in by_study.items()},
            rounds={name: len(rows) for name, rows in by_study.items()},
            delta=delta or max(e["delta"] for e in spends),
            open_reservations=sum(e["seq"] not in closed for e in spends),
        )
