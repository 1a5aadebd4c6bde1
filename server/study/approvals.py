"""How approvals reach the coordinator, and the coordinator's own audit log of studies.

There is no side channel: a node tells the coordinator whether it approved a study by how it
answers round 0. The ``query.stats`` message carries the study; a node that requires approval
derives the manifest hash itself and either answers (approved) or refuses with ``study not
approved: manifest <hash8> (...)``. With ``governance.approval_timeout`` > 0 the coordinator asks
the refusing nodes again every :data:`RETRY` seconds until every node approved or the timeout
passed, and writes each change of the picture to its audit log, which ``medfed status``
reads while the study waits. The study then starts with the approving nodes when there are at
least ``strategy.min_nodes`` of them; ``summary.json`` (``governance``) names the manifest, who
approved and why the others are absent.

The coordinator log (``governance.audit_file``; ``medfed run`` puts it in the coordinator folder,
``<folder of --ca>/audit.jsonl``; a simulation in ``<output_dir>/audit/coordinator.audit.jsonl``,
beside the simulated hospitals' logs) is
the same hash chain as the nodes' logs (:class:`medfed.client.chain.HashChain`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from medfed.infra.chain import ChainTampered, HashChain
from medfed.models.manifest import build_manifest, manifest_hash
from medfed.server.study.cohort import query

NOT_APPROVED = "study not approved"
RETRY = 2.0  # seconds between two round-0 queries to nodes that have not approved yet
KINDS = ("study-submitted", "approvals", "study-started", "study-end")


class CoordinatorLog(HashChain):
    """The coordinator's hash-chained log of studies."""

    noun = "coordinator audit log"
    fields = frozenset({"seq", "prev_hash", "hash", "time", "kind", "study", "manifest", "details"})

    def record(self, kind: str, study: str, manifest: str, details: dict[str, Any]) -> None:
        """Append one entry (``kind`` from :data:`KINDS`)."""
        self._append({"kind": kind, "study": study, "manifest": manifest, "details": details})


def coordinator_log(study: dict[str, Any]) -> CoordinatorLog | None:
    """The study's coordinator log, or None when the study has no output folder."""
    path = (study.get("governance") or {}).get("audit_file")
    if not path and study.get("output_dir"):
        path = Path(study["output_dir"]) / "audit" / "coordinator.audit.jsonl"
    return CoordinatorLog(path) if path else None


def reason(text: str) -> str:
    """A node's error reason as the node worded it: an approval or audit refusal without the
    exception's class name and quotes Flower's runtimes put around it."""
    found = re.search(
        r"(study not approved: manifest \w+ \(approve it with medfed node approve\)"
        r"|audit log damaged, the node refuses to work: .*\(acknowledge it with .*?"
        r"--acknowledge REASON\))",
        text,
    )
    return found.group(1) if found else text


def begin(study: dict[str, Any]) -> str:
    """Record the study's manifest hash in ``study["governance"]`` and the coordinator log."""
    governance = study.setdefault("governance", {})
    manifest = build_manifest(study)
    governance["manifest"] = manifest_hash(manifest)
    _log(
        study,
        "study-submitted",
        {
            "sites": manifest["sites"],
            "rounds": manifest["rounds"],
            "coordinator": manifest["coordinator"],
        },
    )
    return governance["manifest"]


def _log(study: dict[str, Any], kind: str, details: dict[str, Any]) -> None:
    log = coordinator_log(study)
    if log is None:
        return
    try:
        log.record(
            kind,
            str(study.get("study_id", "")),
            str((study.get("governance") or {}).get("manifest", "")),
            details,
        )
    except ChainTampered as exc:  # the study goes on; the damage is reported where it is read
        print(f"medfed: warning: {exc}", flush=True)


def stats_with_approvals(
    grid: Grid, study: dict[str, Any], node_ids: list[int], record: ConfigRecord, timeout: float
) -> list[Message]:
    """Round 0's ``query.stats`` replies, asking again the nodes that have not approved the
    study until ``governance.approval_timeout`` seconds have passed (0: ask once)."""
    wait = float((study.get("governance") or {}).get("approval_timeout") or 0)
    deadline = time.monotonic() + wait
    answered: dict[int, Message] = {}
    pending, picture = list(node_ids), None
    while True:
        for reply in query(grid, pending, "stats", record, timeout):
            answered[reply.metadata.src_node_id] = reply
        waiting = {
            nid: reason(r.error.reason or "")
            for nid, r in answered.items()
            if r.has_error() and NOT_APPROVED in (r.error.reason or "")
        }
        approved = sorted(nid for nid, r in answered.items() if not r.has_error())
        now = {
            "approved": [str(n) for n in approved],
            "not_approved": {str(n): why for n, why in waiting.items()},
        }
        if now != picture:
            picture = now
            _log(study, "approvals", now)
        if not waiting or time.monotonic() + RETRY > deadline:
            return list(answered.values())
        time.sleep(RETRY)
        pending = sorted(waiting)


def finish(
    study: dict[str, Any],
    hospitals: dict[int, dict[str, Any]],
    failures: dict[str, str],
    kind: str,
    note: str = "",
) -> None:
    """Fill ``study["governance"]`` for ``summary.json`` and log how round 0 ended.

    ``absent`` gives every site of the manifest that did not take part with the reason: the
    nodes' refusals carry no name, so when all refusing nodes gave one reason it is each absent
    site's; otherwise the node ids are listed with theirs.
    """
    governance = study.setdefault("governance", {})
    joined = sorted(h["name"] for h in hospitals.values())
    sites = build_manifest(study)["sites"]
    absent_sites = [s for s in sites if s not in joined]
    reasons = sorted(set(failures.values()))
    if absent_sites and len(reasons) == 1:
        absent: dict[str, str] = {site: reasons[0] for site in absent_sites}
    else:
        absent = {**{site: "did not take part" for site in absent_sites}, **failures}
    governance.update(approved_by=joined, absent=absent)
    _log(study, kind, {"hospitals": joined, "absent": absent, **({"note": note} if note else {})})


def end(study: dict[str, Any], stopped: str) -> None:
    """Log the study's end in the coordinator log (``stopped``: why it ended early, or "")."""
    _log(study, "study-end", {"outcome": stopped or "finished"})
