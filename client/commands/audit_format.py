"""Audit entries as text, CSV or JSON, one row per entry (``medfed node audit --format``).

The CSV flattens what left the node into columns a data-protection officer can filter: the array
names with shapes, the bytes of the arrays, the example counts, the metric keys and epsilon.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

COLUMNS = (
    "seq",
    "time",
    "kind",
    "site",
    "study",
    "manifest",
    "round",
    "arrays",
    "array_bytes",
    "num_examples",
    "num_test",
    "metric_keys",
    "epsilon",
    "reason",
    "hash",
)


def _sent(entry: dict[str, Any]) -> dict[str, Any]:
    """The flattened ``details.sent`` of an entry (empty values when nothing left the node)."""
    sent = entry["details"].get("sent") or {}
    arrays = [
        f"{record}.{key}{tuple(a['shape'])}:{a['dtype']}"
        for record, items in (sent.get("arrays") or {}).items()
        for key, a in items.items()
    ]
    counts: dict[str, Any] = {}
    keys: list[str] = []
    for record in (sent.get("metrics") or {}).values():
        keys += record.get("keys", [])
        counts.update({k: v for k, v in record.items() if k != "keys"})
    return {
        "arrays": " ".join(arrays),
        "array_bytes": sent.get("array_bytes", ""),
        "num_examples": counts.get("num-examples", ""),
        "num_test": counts.get("num-test", ""),
        "metric_keys": " ".join(sorted(set(keys))),
        "epsilon": counts.get("epsilon", ""),
    }


def row(entry: dict[str, Any]) -> dict[str, Any]:
    """One CSV row of an audit entry."""
    details = entry["details"]
    reason = details.get("reason") or details.get("error") or ""
    return {
        **{
            k: entry.get(k, "")
            for k in ("seq", "time", "kind", "site", "study", "manifest", "round", "hash")
        },
        **_sent(entry),
        "reason": reason,
        "round": "" if entry["round"] is None else entry["round"],
    }


def _text(entry: dict[str, Any]) -> str:
    flat = row(entry)
    what = {
        "approve": "approved",
        "revoke": "revoked",
        "refusal": f"refused: {flat['reason']}",
        "acknowledge": f"damaged log acknowledged: {entry['details'].get('reason', '')}",
        "data-check": f"data checked: {entry['details'].get('rows_kept')} rows kept of "
        f"{entry['details'].get('rows_read')}",
    }.get(entry["kind"])
    exchange = entry["details"].get("exchange")
    if entry["kind"] == "cross-site" and exchange == "share_local":
        what = f"local-only model sent: {flat['array_bytes']} array bytes [{flat['arrays']}]"
    elif entry["kind"] == "cross-site":
        what = (
            f"scored {entry['details'].get('model_site')}'s local-only model here: "
            f"n={flat['num_examples']} metrics [{flat['metric_keys']}]"
        )
    if what is None:
        what = (
            f"sent {flat['array_bytes'] or 0} array bytes [{flat['arrays']}] "
            f"n={flat['num_examples']} metrics [{flat['metric_keys']}]"
            + (f" epsilon={flat['epsilon']}" if flat["epsilon"] != "" else "")
        )
    where = f"round {flat['round']}" if flat["round"] != "" else ""
    manifest = (entry["manifest"] or "")[:8]
    return f"{entry['seq']:>4} {entry['time']} {entry['kind']:12s} {manifest:8s} {where:9s} {what}"


def render(entries: list[dict[str, Any]], fmt: str) -> str:
    """``entries`` as ``text``, ``csv`` or ``json``."""
    if fmt == "json":
        return json.dumps(entries, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row(e) for e in entries)
        return buffer.getvalue()
    return "".join(_text(e) + "\n" for e in entries)
