"""A hospital's folder as the node view shows it: ledgers, budget, audit log, approvals, checks.

The privacy ledger is parsed here from its documented on-disk format (``medfed.client.ledger``:
one JSON object per line with ``seq``, ``prev_hash``, ``hash``, ``status`` reserved / committed /
released, ``ref``, ``study``, ``round``, ``noise_multiplier``, ``sample_rate``, ``steps``,
``delta``, ``accountant``, ``epsilon``, ``time``, ``reason``; a ``<ledger>.head`` file with the
entry count), because ``medfed.server`` may not import ``medfed.client``. Spent epsilon is
recomputed from the reservations that were not released, as the node does, with the accountant
of :mod:`medfed.models.privacy`. The view checks the chain's links (sequence numbers, previous
hashes, head count); only the node, which may hold the HMAC key, can check the hashes themselves.

Everything shown is already aggregate: spends, counts, the ``node check`` summary (which prints
aggregates only); no data row is read.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

LEDGER_SUFFIX = ".ledger.jsonl"
CHECK_SUFFIX = ".check.json"  # written by `medfed node check` beside the dataset card
SHOWN = 200  # entries of a ledger or audit log shown (the newest)


def _walk(root: Path, depth: int = 3) -> list[Path]:
    files: list[Path] = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_file():
            files.append(path)
        elif path.is_dir() and depth > 0 and not path.name.startswith("."):
            files += _walk(path, depth - 1)
    return files


def _links(path: Path, entries: list[dict[str, Any]]) -> str:
    """``""`` when the chain's links and head agree, else what is wrong (one sentence)."""
    previous = "0" * 64
    for number, entry in enumerate(entries):
        if entry.get("seq") != number or entry.get("prev_hash") != previous:
            return f"line {number + 1} is out of sequence: entries were removed or reordered"
        previous = str(entry.get("hash"))
    head = path.with_name(path.name + ".head")
    try:
        count = int(json.loads(head.read_text())["count"]) if head.exists() else None
    except (ValueError, KeyError, TypeError):
        return f"{head.name} is unreadable"
    if entries and count is None:
        return f"{head.name} is missing"
    if count is not None and count > len(entries):
        return f"the head records {count} entries but the file holds {len(entries)}"
    return ""


def _spends(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Reservations not released, per study (what counts as spent)."""
    released = {e.get("ref") for e in entries if e.get("status") == "released"}
    by_study: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if e.get("status") == "reserved" and e.get("seq") not in released:
            by_study.setdefault(str(e.get("study")), []).append(e)
    return by_study


def _epsilon(rows: list[dict[str, Any]]) -> float:
    from medfed.models.privacy import epsilon_from_history

    history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
    return epsilon_from_history(history, max(r["delta"] for r in rows), rows[-1]["accountant"])


@lru_cache(maxsize=64)
def _ledger_cached(path: str, _mtime: float, _size: int) -> dict[str, Any]:
    file = Path(path)
    entries, problem = [], ""
    for number, line in enumerate(file.read_text().splitlines()):
        try:
            entries.append(json.loads(line))
        except ValueError:
            problem = f"line {number + 1} is not valid JSON"
            break
    problem = problem or _links(file, entries)
    by_study = _spends(entries)
    every = [e for rows in by_study.values() for e in rows]
    return {
        "name": file.name.removesuffix(LEDGER_SUFFIX),
        "path": path,
        "problem": problem,
        "entries": entries[-SHOWN:][::-1],
        "count": len(entries),
        "studies": {
            s: {"epsilon": _epsilon(rows), "rounds": len(rows)} for s, rows in by_study.items()
        },
        "total": _epsilon(every) if every else 0.0,
    }


def read_ledger(path: Path) -> dict[str, Any]:
    """One ledger: newest entries first, spend per study and composed, chain problems."""
    stat = path.stat()
    return _ledger_cached(str(path), stat.st_mtime, stat.st_size)


def _policy(files: list[Path]) -> dict[str, Any] | None:
    for path in files:
        if path.suffix in (".yaml", ".yml") and "polic" in path.name:
            try:
                data = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(data, dict) and "max_epsilon_total" in data:
                return {"path": str(path), **data}
    return None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines()[-SHOWN:]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows[::-1]


def _document(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return {"file": path.name, **data} if isinstance(data, dict) else None


def load_node(root: Path) -> dict[str, Any]:
    """What the node view shows about the hospital folder ``root`` (see the module docstring)."""
    files = _walk(root)
    ledgers = [dict(read_ledger(p)) for p in files if p.name.endswith(LEDGER_SUFFIX)]
    policy = _policy(files)
    limit = (policy or {}).get("max_epsilon_total")
    for ledger in ledgers:
        ledger["budget"] = limit
        ledger["per_study"] = (policy or {}).get("max_epsilon_per_study") or None
        ledger["remaining"] = None if limit is None else max(float(limit) - ledger["total"], 0.0)
    audit = [row for p in files if "audit" in p.name and p.suffix == ".jsonl" for row in _jsonl(p)]
    approvals = [
        d
        for p in files
        if "approval" in str(p.relative_to(root)).lower() and p.suffix in (".json", ".yaml", ".yml")
        if (d := _document(p))
    ]
    checks = [d for p in files if p.name.endswith(CHECK_SUFFIX) if (d := _document(p))]
    return {
        "path": str(root),
        "ledgers": ledgers,
        "policy": policy,
        "audit": audit,
        "audit_columns": list(dict.fromkeys(k for row in audit for k in row))[:8],
        "approvals": approvals,
        "checks": checks,
    }
