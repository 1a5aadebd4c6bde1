"""``status.json``: the live state of a study, rewritten after every round.

The dashboard (:mod:`medfed.server.dashboard`) reads it while the study runs; the other run files
are written only at the end. The document::

    {"status": "running" | "finished" | "stopped" | "failed", "round": 3, "rounds": 15,
     "study_id", "task", "strategy", "engine", "privacy", "primary_metric", "higher_is_better",
     "started", "updated" (ISO times), "reason" (why it stopped or failed),
     "timeout" (seconds a round may take: a reader can tell a study whose process died),
     "budget": {site: epsilon budget or null},
     "history": [{"round": 1, "seconds": 0.4,
                  "participation": {site: [state, reason]},   # trained|missed|refused|rejected
                  "epsilon": {site: epsilon}, "global": {metric: value},
                  "hospitals": {site: {metric: value}}}, ...],
     "alerts": [{"kind", "site", "round", "message"}]}

A round's test metrics are those of the global model after that round (they arrive with the next
round's replies, so the latest round has none yet while the study runs). The file is written to a
temporary name and renamed (``os.replace``): a reader never sees half a document. ``finished`` is
written only after every other run file is on disk.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from medfed.infra.files import json_safe
from medfed.server.monitor.alerts import alert_settings, compute_alerts

FILENAME = "status.json"
LOG = logging.getLogger("medfed.alerts")
_LIVE: dict[str, StatusTracker] = {}  # study_id -> tracker, so the final write finds it


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)
    }


def round_entry(record: Any) -> dict[str, Any]:
    """The history entry of one :class:`~medfed.server.study.RoundRecord`."""
    participation: dict[str, list[str]] = {name: ["trained", ""] for name in record.train}
    for state, reasons in (
        ("missed", record.failures),
        ("refused", record.refusals),
        ("rejected", record.rejected),
    ):
        participation.update({name: [state, str(reason)] for name, reason in reasons.items()})
    return {
        "round": record.server_round,
        "seconds": round(float(record.seconds), 4),
        "participation": dict(sorted(participation.items())),
        "epsilon": {
            n: float(t["epsilon"])
            for n, t in sorted(record.train.items())
            if t.get("epsilon") is not None
        },
        "global": _finite(record.global_metrics),
        "hospitals": {n: _finite(m) for n, m in sorted(record.hospital_metrics.items())},
    }


def budgets(study: dict[str, Any], sites: list[str]) -> dict[str, float | None]:
    """Each site's epsilon budget for this study as the study's policy states it (DP-SGD only).

    The smaller of ``max_epsilon_per_study`` and ``max_epsilon_total``, with the per-hospital
    overrides of ``policy.hospitals``. In a deployment each node applies its own policy: its
    node view (``medfed dashboard --node``) shows the budget that really binds.
    """
    if (study.get("privacy") or {}).get("name") != "dpsgd":
        return {}
    policy = dict(study.get("policy") or {})
    overrides = policy.pop("hospitals", None) or {}
    found: dict[str, float | None] = {}
    for site in sites:
        merged = {**policy, **(overrides.get(site) or {})}
        limits = [
            float(v)
            for v in (merged.get("max_epsilon_per_study"), merged.get("max_epsilon_total"))
            if v is not None
        ]
        found[site] = min(limits) if limits else None
    return found


def _write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # an infinite epsilon (DP-SGD with almost no noise) is null, as in every run file
    tmp.write_text(json.dumps(json_safe(document), separators=(",", ":"), allow_nan=False))
    os.replace(tmp, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StatusTracker:
    """Keeps ``<output_dir>/status.json``, the log's alerts and the Prometheus exporter current.

    Created when the study starts (before round 0, so a taken ``metrics_port`` stops it before
    any work); :meth:`update` after every round; :func:`write_final` once the run files are
    written. ``live=False`` only writes documents (no exporter, no initial ``running`` write).
    """

    def __init__(self, study: dict[str, Any], grid: Any = None, *, live: bool = True) -> None:
        from medfed.models.schema import task_from_dict

        self.study, self.grid = study, grid
        out = study.get("output_dir")
        self.path = Path(out) / FILENAME if out else None
        self.settings = alert_settings(study)
        task = task_from_dict(study["task"], source="the study's task")
        self.head = {
            "study_id": study.get("study_id"),
            "task": task.name,
            "strategy": study["strategy"]["name"],
            "engine": study["engine"]["name"],
            "privacy": study["privacy"]["name"],
            "rounds": int(study["rounds"]),
            "primary_metric": task.primary_metric,
            "higher_is_better": task.higher_is_better,
            "started": _now(),
            "timeout": float(study["timeout"]),
        }
        self.logged: set[tuple[str, Any]] = set()
        self.metrics = None
        if live and study.get("metrics_port"):
            from medfed.server.monitor.metrics import StudyMetrics

            self.metrics = StudyMetrics(int(study["metrics_port"]))
        if live:
            _LIVE[str(study.get("study_id"))] = self
            self.update([], "running")

    def update(self, records: list[Any], status: str, reason: str = "") -> dict[str, Any]:
        """Rewrite the document from the study's round records (round 0 is not a round)."""
        history = [round_entry(r) for r in records if r.server_round > 0]
        sites = sorted({site for e in history for site in e["participation"]})
        document = {
            **self.head,
            "status": status,
            "updated": _now(),
            "reason": reason,
            "round": history[-1]["round"] if history else 0,
            "budget": budgets(self.study, sites),
            "history": history,
        }
        document["alerts"] = compute_alerts(document, self.settings)
        for alert in document["alerts"]:
            if alert["kind"] == "stopped":  # the command itself ends with that sentence
                continue
            if (alert["kind"], alert["site"]) not in self.logged:
                self.logged.add((alert["kind"], alert["site"]))
                LOG.warning("medfed alert: %s", alert["message"])
        if self.metrics is not None and history:
            nodes = len(self.grid.get_node_ids()) if self.grid is not None else None
            for entry in history:
                self.metrics.observe(entry, nodes)
        if self.path is not None:
            _write(self.path, document)
        return document

    def fail(self, records: list[Any], error: BaseException) -> None:
        """The study ended with ``error``: ``failed`` (``stopped`` for Ctrl-C)."""
        interrupted = isinstance(error, KeyboardInterrupt)
        first = (str(error).splitlines() or [""])[0]
        # the command already ends with this error in one line: the alert goes to status.json
        # and the dashboard only, not a second time to the log
        self.logged.add(("stopped", None))
        self.update(
            records,
            "stopped" if interrupted else "failed",
            "interrupted" if interrupted else f"{type(error).__name__}: {first}",
        )
        self.close()

    def close(self) -> None:
        """Stop the exporter and forget the study."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        _LIVE.pop(str(self.study.get("study_id")), None)


def write_final(result: Any) -> None:
    """The last ``status.json`` of a study whose run files are all written."""
    tracker = _LIVE.get(str(result.study.get("study_id")))
    tracker = tracker or StatusTracker(result.study, live=False)
    status = "stopped" if result.stopped else "finished"
    tracker.update(result.rounds, status, result.stopped or "")
    tracker.close()


def fail_study(study: dict[str, Any], records: list[Any], error: BaseException) -> None:
    """Record that the study ended with ``error`` (when its tracker had started)."""
    tracker = _LIVE.get(str(study.get("study_id")))
    if tracker is not None:
        tracker.fail(records, error)
