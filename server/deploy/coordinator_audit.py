"""``medfed coordinator audit DIR`` and the approvals ``medfed status DIR`` shows.

The coordinator's log (:class:`medfed.server.approvals.CoordinatorLog`, ``DIR/audit.jsonl`` for
studies submitted with ``medfed run`` from the coordinator folder) holds, per study, the manifest
hash submitted, every change in which nodes approved it while round 0 waited, how round 0 ended
(the hospitals that took part and why the others are absent) and the study's outcome.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from medfed.infra.chain import ChainTampered
from medfed.server.study.approvals import CoordinatorLog

LOG = "audit.jsonl"


def log_at(where: Path) -> CoordinatorLog:
    """The coordinator log of a coordinator folder (``DIR/audit.jsonl``) or a log file."""
    return CoordinatorLog(where / LOG if where.is_dir() else where)


def pending(where: Path) -> list[dict[str, Any]]:
    """Studies whose round 0 has not ended, with the latest approvals picture of each."""
    studies: dict[str, dict[str, Any]] = {}
    for entry in log_at(where).verify():
        key = entry["manifest"]
        if entry["kind"] == "study-submitted":
            studies[key] = {"manifest": key, "approved": [], "not_approved": {}}
        elif entry["kind"] == "approvals" and key in studies:
            studies[key].update(entry["details"])
        elif entry["kind"] in ("study-started", "study-end"):
            studies.pop(key, None)
    return list(studies.values())


def _line(entry: dict[str, Any]) -> str:
    details = entry["details"]
    if entry["kind"] == "approvals":
        text = (
            f"approved by nodes {', '.join(details['approved']) or '(none)'}; waiting for "
            f"{', '.join(details['not_approved']) or '(none)'}"
        )
    elif entry["kind"] in ("study-started", "study-end") and "hospitals" in details:
        absent = "; ".join(f"{k}: {v}" for k, v in details["absent"].items())
        text = (
            f"hospitals {', '.join(details['hospitals']) or '(none)'}"
            + (f"; absent {absent}" if absent else "")
            + (f"; {details['note']}" if details.get("note") else "")
        )
    elif entry["kind"] == "cross-site":
        text = _cross_site(details)
    else:
        text = ", ".join(f"{k} {v}" for k, v in details.items())
    head = f"{entry['seq']:>4} {entry['time']} {entry['kind']:16s} {entry['manifest'][:8]:8s}"
    return f"{head} {text}"


def _cross_site(details: dict[str, Any]) -> str:
    """One line per step of the cross-site exchange (:mod:`medfed.server.study.crosssite`)."""
    if details.get("step") == "plan":
        return f"asking {', '.join(details['ask']) or 'nobody'} for local-only models"
    if details.get("step") == "weights":
        refused = "; ".join(f"{k}: {v}" for k, v in details["not"].items())
        received = ", ".join(details["received_from"]) or "nobody"
        return f"local-only models received from {received}" + (
            f"; not from {refused}" if refused else ""
        )
    sent = "; ".join(f"{k} to {', '.join(v)}" for k, v in details.get("sent", {}).items())
    return f"local-only models sent for scoring: {sent or 'none'}"


def coordinator_audit_main(argv: list[str]) -> int:
    """``medfed coordinator audit DIR [--verify] [--format text|json]``."""
    parser = argparse.ArgumentParser(
        prog="medfed coordinator audit", description="The coordinator's log of studies."
    )
    parser.add_argument("dir", metavar="DIR", help="the coordinator folder (or a log file)")
    parser.add_argument("--verify", action="store_true", help="only verify the chain")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    log = log_at(Path(args.dir).expanduser())
    if not log.path.exists():
        print(
            f"medfed: error: {log.path}: no coordinator audit log (studies run with medfed run "
            "--ca DIR/ca.crt write it)",
            file=sys.stderr,
        )
        return 2
    try:
        entries = log.verify()
    except ChainTampered as exc:
        print(f"medfed: error: coordinator audit log tampered: {exc}", file=sys.stderr)
        return 1
    if args.verify:
        print(f"{log.path}: {len(entries)} entries, chain and head verified")
    elif args.format == "json":
        print(json.dumps(entries, indent=2))
    else:
        print("\n".join(_line(e) for e in entries))
    return 0
