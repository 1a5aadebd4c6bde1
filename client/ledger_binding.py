"""The ledger is bound to its dataset: a missing ledger never reads as "nothing spent".

Beside a deployed node's dataset card, ``<card>.ledger-binding.json`` records the dataset's
fingerprint (SHA-256 of its data files), where its privacy ledger is, and whether that ledger
has ever recorded a spend (set by the node at its first DP reservation, so deleting the ledger
later is still noticed). ``medfed node start`` checks it before joining: when the same data has
spent budget before and the ledger the node would use does not exist (a new ``--ledger-dir``, a
deleted file), the node refuses to start until it is pointed at the ledger or told to start a
new one with ``--new-ledger``, which is logged here and in the binding. ``medfed node ledger``
and ``medfed privacy plan`` refuse to read a missing ledger of such a dataset as zero.

Not a defence against a node operator who deletes both files on purpose (see the ledger's threat
model in :mod:`medfed.client.ledger`): it stops the honest mistake.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from medfed.infra.files import atomic_write

SUFFIX = ".ledger-binding.json"


class LedgerBindingError(RuntimeError):
    """The dataset spent budget before and its ledger is missing; the message says what to do."""


def binding_path(card: str | Path) -> Path:
    """``<card>.ledger-binding.json`` beside the dataset card."""
    card = Path(card)
    return card.with_name(card.name + SUFFIX)


def fingerprint(card: str | Path) -> str:
    """SHA-256 over the card's data files (train, then test), read in 1 MiB blocks."""
    from medfed.models.ingest.cardspec import load_card

    spec = load_card(card)
    digest = hashlib.sha256()
    for path in (spec.train, spec.test):
        if path is None:
            continue
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def read_binding(card: str | Path) -> dict[str, Any] | None:
    """The binding beside ``card``, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(binding_path(card).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _spent_elsewhere(card: Path, ledger: Path) -> dict[str, Any] | None:
    record = read_binding(card)
    if record is None or not record.get("spent") or ledger.exists():
        return None
    return record if record.get("fingerprint") == fingerprint(card) else None


def missing_ledger_error(card: str | Path, ledger: Path) -> str | None:
    """Why reading ``ledger`` as empty would be wrong (the data spent before), or None."""
    record = _spent_elsewhere(Path(card), ledger)
    if record is None:
        return None
    return (
        f"{card}: this dataset spent privacy budget before (ledger {record['ledger']}), but "
        f"there is no ledger at {ledger}; point the node at that ledger (--ledger-dir) or "
        "start a new one explicitly with `medfed node start --new-ledger`"
    )


def bind(card: str | Path, ledger: Path, *, new_ledger: bool = False) -> None:
    """Check and record that ``card``'s data uses ``ledger`` (``node start``'s preflight).

    Raises
    ------
    LedgerBindingError
        When the data spent budget before, ``ledger`` does not exist and ``new_ledger`` is
        false.
    """
    card = Path(card)
    error = missing_ledger_error(card, ledger)
    if error and not new_ledger:
        raise LedgerBindingError(error)
    record = {
        "fingerprint": fingerprint(card),
        "ledger": str(ledger),
        "spent": ledger.exists() and ledger.stat().st_size > 0,
    }
    if error:
        old = read_binding(card) or {}
        record["new_ledger"] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "previous_ledger": old.get("ledger"),
        }
        print(
            f"medfed: --new-ledger: starting a new privacy ledger at {ledger}; the spend "
            f"recorded in {old.get('ledger')} no longer counts against this node's budget",
            file=sys.stderr,
        )
    atomic_write(binding_path(card), json.dumps(record, indent=2))


def mark_spent(binding: str | Path | None) -> None:
    """Record in the binding file that its ledger now holds a spend (first reservation)."""
    if not binding:
        return
    path = Path(binding)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(record, dict) and not record.get("spent"):
        record["spent"] = True
        atomic_write(path, json.dumps(record, indent=2))
